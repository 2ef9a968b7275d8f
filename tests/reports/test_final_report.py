"""The final stage in the report: accuracies with intervals, the final front, the trade-off on final
figures and the proxy's fidelity (Kendall tau, Spearman rho)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from reports.build import build_report
from tests.reports.studies import FINAL_TAU, fill_final, fill_study


@pytest.fixture(scope="module")
def final_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("final-report")
    url = f"sqlite:///{root / 'study.db'}"
    fill_study(url)
    fill_final(url)
    return root / "report", build_report(url, "t", root / "report")


def test_report_json_holds_final_accuracies_front_and_fidelity(final_report: tuple[Path, object]) -> None:
    out, _ = final_report
    data = json.loads((out / "report.json").read_text())
    final = data["final"]
    by_label = {m["label"]: m for m in final["models"]}
    assert set(by_label) == {"trial 1", "trial 4", "trial 5", "CT L", "CT S", "MobileNetV2"}
    t4 = by_label["trial 4"]
    assert t4["final_accuracy"] == pytest.approx(88.0) and t4["final_std"] == pytest.approx(1.0)
    # Student's t over 3 runs: 88 +- 4.303 * 1 / sqrt(3)
    assert t4["final_ci"] == pytest.approx([88.0 - 2.4843, 88.0 + 2.4843], abs=1e-3)
    assert t4["proxy_accuracy"] == 84.0 and t4["runs"] == 3
    # final front over every final model: CT S (82 %, 9.5 M MACs) is the smallest and dominates
    # trial 5 (80 %); trial 1 (85 %) and trial 4 (88 %) survive, and so does CT L (86 %, 32 M MACs,
    # fewer than trial 4's 40 M).
    assert final["pareto"] == ["CT S", "trial 1", "CT L", "trial 4"]
    assert final["fidelity"]["kendall_tau"]["value"] == pytest.approx(FINAL_TAU)
    assert final["fidelity"]["n"] == 4
    assert final["fidelity"]["kendall_tau"]["ci"] is not None
    assert final["fidelity"]["spearman_rho"]["value"] == pytest.approx(0.8)
    assert data["summary"]["final Pareto members"] == "CT S, trial 1, CT L, trial 4"


def test_index_shows_final_accuracies_front_tradeoff_and_kendall_tau(
    final_report: tuple[Path, object],
) -> None:
    out, report = final_report
    page = (out / "index.html").read_text()
    assert "Final stage (full training, test split)" in page
    assert "88.0 ± 1.0 [85.5, 90.5]" in page  # trial 4's final accuracy with its interval
    assert 'id="final_front"' in page and 'id="final_tradeoff"' in page
    front = page.split('id="final_front"')[1].split("</table>")[0]
    assert all(name in front for name in ("CT S", "trial 1", "CT L", "trial 4")) and "trial 5" not in front
    assert "Kendall tau-b" in page and "+0.667" in page
    assert (out / "final_pareto_macs.png").is_file() and (out / "final_pareto_params.svg").is_file()
    # the trade-off compares final with final: trial 1 dominates MobileNetV2 (+1.0 pp, 2.5x fewer
    # params), not significantly; trial 4 is 6 pp above CT S with the intervals apart, yet larger
    trade = next(t for t in report.final_tables if t.name == "final_tradeoff")
    row = next(r for r in trade.rows if r["reference"] == "MobileNetV2" and r["candidate"] == "trial 1")
    assert row["delta"] == pytest.approx(1.0) and row["dominates"] == "yes"
    assert row["significant"].startswith("no") and row["params_x"] == pytest.approx(2_228_000 / 900_000)
    row = next(r for r in trade.rows if r["reference"] == "CT S" and r["candidate"] == "trial 4")
    assert row["delta"] == pytest.approx(6.0) and row["significant"] == "yes" and row["dominates"] == "no"
    row = next(r for r in trade.rows if r["reference"] == "CT L" and r["candidate"] == "trial 1")
    assert row["delta"] == pytest.approx(-1.0) and row["significant"].startswith("no")


def test_final_models_stay_out_of_the_proxy_plots_and_tables(final_report: tuple[Path, object]) -> None:
    out, report = final_report
    table3 = report.tables[0]
    assert not any(str(r["label"]).startswith("trial ") for r in table3.rows)
    inter = (out / "interactive.html").read_text()
    assert "final, complete" not in inter and "other models" not in inter


def test_no_final_study_no_final_section(built: tuple[Path, str, object]) -> None:
    out, _, _ = built
    assert json.loads((out / "report.json").read_text())["final"] is None
    assert "Final stage" not in (out / "index.html").read_text()
