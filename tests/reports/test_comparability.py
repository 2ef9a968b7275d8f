"""The comparability rule: rows and points trained differently from the search's trials are marked
(a distinct marker and a footnote) and the trade-off table does not compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from reports.build import build_report
from tests.reports.studies import BASELINES, fill_study


@pytest.fixture(scope="module")
def unlike(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("unlike")
    url = f"sqlite:///{root / 'study.db'}"
    fill_study(url, baseline_epochs=2)  # the search's trials were trained for 1 epoch
    return root / "report", build_report(url, "t", root / "report")


def test_table_rows_trained_differently_are_marked_with_a_footnote(unlike: tuple[Path, Any]) -> None:
    out, report = unlike
    t3 = pd.read_csv(out / "table3.csv").set_index("model")
    for _, display, *_ in BASELINES:
        assert f"{display} †" in t3.index
        assert t3.loc[f"{display} †", "training"] == "2 epochs, 32 px"
    assert "CT L (prototype, #0)" in t3.index  # trained like the search: unmarked
    note = report.tables[0].note
    assert "† trained differently" in note and "MobileNetV2: epochs 2 (search 1)" in note
    for table in report.tables[1:3]:  # Tables 4-5 carry the same marks
        assert "MobileNetV2 †" in {r["label"] for r in table.rows} and "†" in table.note


def test_tradeoff_table_does_not_compare_unlike_baselines(unlike: tuple[Path, Any]) -> None:
    _, report = unlike
    trade = next(t for t in report.tables if t.name == "tradeoff")
    assert len(trade.rows) == len(BASELINES)
    for row in trade.rows:
        assert row["baseline"].endswith(" †")
        assert row["candidate"].startswith("not compared") and "acc" not in row
    assert "epochs 2 (search 1)" in trade.note


def test_plots_draw_unlike_points_apart_and_say_why(unlike: tuple[Path, Any]) -> None:
    out, _ = unlike
    page = (out / "index.html").read_text()
    assert "baseline, trained differently †" in page  # the interactive legend
    assert 'class="grp-baseline-unlike"' in page and 'class="grp-baseline"' not in page
    assert "† trained differently: epochs 2 (search 1)" in page  # each point's tip
    assert 'class="note footnote"' in page and "MobileNetV2: epochs 2 (search 1)" in page
    assert "baseline, trained differently †" in (out / "pareto_macs.svg").read_text()


def test_like_baselines_are_compared_and_unmarked(built: tuple[Path, str, Any]) -> None:
    _, _, report = built
    trade = next(t for t in report.tables if t.name == "tradeoff")
    assert not any("†" in str(r.get("baseline")) for r in trade.rows)
    assert any(r.get("candidate") not in (None, "none") and "acc" in r for r in trade.rows)
    assert "†" not in report.tables[0].note


def test_without_baselines_the_tradeoff_table_says_what_to_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fill_study(url, baselines=False)
    report = build_report(url, "t", tmp_path / "report")
    trade = next(t for t in report.tables if t.name == "tradeoff")
    assert [r["baseline"] for r in trade.rows] == ["none trained"]
    assert "search baselines" in trade.to_html()
