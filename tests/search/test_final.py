"""``search final``: the chosen candidates, CT L, CT S and the baselines retrained into <study>:final."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.cli import main

FAST = ["--image-size", "32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("final") / "run"
    argv = [
        "--quiet",
        "run",
        "--out",
        str(out),
        "--trials",
        "4",
        "--epochs",
        "1",
        "--seed",
        "1",
        "--complexity-size",
        "64",
        *FAST,
    ]
    assert main(argv) == 0
    return out


def _final(out: Path, *extra: str) -> int:
    argv = ["--quiet", "final", "--out", str(out), "--epochs", "1", "--repeats", "2", *FAST, *extra]
    return main(argv)


def test_search_trials_keep_the_test_split_for_the_final_stage(searched: Path) -> None:
    study = optuna.load_study(study_name="covidnet-ct", storage=f"sqlite:///{searched / 'study.db'}")
    done = [t for t in study.trials if t.user_attrs.get("status") == "complete"]
    assert done and all(t.user_attrs["test_metrics"] is None for t in done)
    assert all(t.user_attrs["train_config"]["evaluate_test"] is False for t in done)
    assert all(t.user_attrs["val_metrics"]["accuracy"] == t.user_attrs["val_accuracy"] for t in done)
    assert 45 < study.user_attrs["data"]["majority_rate"]["val"] < 65  # the mini set's larger class


def test_final_trains_candidates_references_and_baselines_and_resumes(
    searched: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{searched / 'study.db'}"
    assert _final(searched, "--top", "2", "--baselines", "mobilenet_v2") == 0
    out = capsys.readouterr().out
    assert "majority-class rate" in out and "CT L" in out and "MobileNetV2" in out
    search = optuna.load_study(study_name="covidnet-ct", storage=url)
    final = optuna.load_study(study_name="covidnet-ct:final", storage=url)
    assert final.user_attrs["kind"] == "final" and final.user_attrs["search_study"] == "covidnet-ct"
    assert (
        final.user_attrs["final_config"]["epochs"] == 1 and final.user_attrs["final_config"]["repeats"] == 2
    )
    rows = [t for t in final.trials if t.state.name == "COMPLETE"]
    roles = sorted(t.user_attrs["role"] for t in rows)
    assert roles == ["baseline", "candidate", "candidate", "prototype", "reference"]
    by_number = {t.number: t for t in search.trials}
    top2 = sorted(
        (t for t in search.trials if t.user_attrs.get("status") == "complete" and t.number != 0),
        key=lambda t: -t.user_attrs["netscore"],
    )[:2]
    for t in rows:
        a = t.user_attrs
        assert a["final_split"] == "test" and len(a["runs"]) == 2
        assert all(r["test_accuracy"] is not None for r in a["runs"])
        u = a["final_accuracy_uncertainty"]
        assert a["final_accuracy"] == pytest.approx(sum(r["test_accuracy"] for r in a["runs"]) / 2)
        assert u["values"] == [r["test_accuracy"] for r in a["runs"]] and u["ci"] is not None
        assert t.values == [a["final_accuracy"], a["params"], a["macs"]]
        if a["role"] in ("candidate", "prototype"):
            src = by_number[a["source_trial"]]
            assert a["proxy_val_accuracy"] == src.user_attrs["val_accuracy"]
            assert a["arch_id"] == src.user_attrs["arch_id"]
    assert {t.user_attrs["source_trial"] for t in rows if t.user_attrs["role"] == "candidate"} == {
        t.number for t in top2
    }
    # the same command again trains nothing; other final settings are refused with one line
    assert _final(searched, "--top", "2", "--baselines", "mobilenet_v2") == 0
    assert "already finalised" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="covidnet-ct:final", storage=url).trials) == len(final.trials)
    assert _final(searched, "--top", "2", "--epochs", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epochs 1 -> 2" in err[0]


def test_nothing_chosen_is_a_usage_error(searched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quiet", "final", "--out", str(searched)]) == 2
    assert "choose what to finalise" in capsys.readouterr().err
    assert main(["--quiet", "final", "--out", str(searched), "--trial", "99"]) == 2
    assert "no trial 99" in capsys.readouterr().err


def test_report_shows_the_final_stage(searched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert _final(searched, "--top", "2", "--baselines", "mobilenet_v2") == 0  # nothing new if done
    capsys.readouterr()
    assert main(["--quiet", "report", "--out", str(searched), "--explain", "0"]) == 0
    assert "proxy fidelity (Kendall tau)" in capsys.readouterr().out
    data = json.loads((searched / "report" / "report.json").read_text())
    final = data["final"]
    roles = sorted(m["role"] for m in final["models"])
    assert roles == ["baseline", "candidate", "candidate", "prototype", "reference"]
    assert all(m["runs"] == 2 and m["final_ci"] is not None for m in final["models"])
    assert final["pareto"] and set(final["pareto"]) <= {m["label"] for m in final["models"]}
    assert final["fidelity"]["n"] == 3  # two candidates and CT L
    page = (searched / "report" / "index.html").read_text()
    assert "Final stage" in page and "Kendall tau-b" in page
    for m in final["models"]:
        assert f"{m['final_accuracy']:.1f} ± {m['final_std']:.1f}" in page


def test_report_setup_block_and_majority_line_match_the_stored_configuration(searched: Path) -> None:
    import json
    import re

    assert main(["--quiet", "report", "--out", str(searched), "--explain", "0"]) == 0
    study = optuna.load_study(study_name="covidnet-ct", storage=f"sqlite:///{searched / 'study.db'}")
    config, data = study.user_attrs["run_config"], study.user_attrs["data"]
    setup = json.loads((searched / "report" / "report.json").read_text())["setup"]
    assert setup["training"]["epochs"] == config["epochs"] == 1
    assert setup["training"]["image_size"] == config["image_size"] == 32
    assert setup["seed"] == config["seed"] == 1 and setup["search"]["trials_budget"] == 4
    assert setup["data"]["split_sizes"] == data["data_sizes"] and setup["data"]["hash"] == data["data_hash"]
    assert setup["environment"]["device"] == "cpu" and setup["environment"]["threads"] >= 1
    assert setup["environment"]["versions"]["torch"]
    assert setup["trials_by_state"]["complete"] == 4
    page = (searched / "report" / "index.html").read_text()
    block = page.split('<section id="setup">')[1].split("</section>")[0]
    assert (
        f"train {data['data_sizes']['train']}" in block and "epochs 1" in block and "image size 32" in block
    )
    rate = data["majority_rate"]["val"]
    assert f"majority class (val): {rate:.1f} %" in page  # the interactive plot's line and legend
    line = re.search(r'class="grp-majority"[^>]*data-rate="([\d.]+)"', page)
    assert line and float(line.group(1)) == pytest.approx(rate, abs=1e-3)
    assert f"majority class (val): {rate:.1f} %" in (searched / "report" / "pareto_macs.svg").read_text()
    t3 = (searched / "report" / "table3.md").read_text()
    assert "| majority class (constant) | chance level |" in t3 and f"{rate:.1f}" in t3
