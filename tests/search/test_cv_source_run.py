"""``--cv-by source`` through ``search run`` and ``search train``, and the report's per-source table."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from search.cli import main
from tests.evaluators.test_cv_source import _write_source


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("src")
    return [
        _write_source(root, "a", {"train": 8, "val": 4, "test": 2}, brightness_is_cue=True),
        _write_source(root, "b", {"train": 8, "val": 4, "test": 2}, brightness_is_cue=False),
    ]


TINY = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]


def test_search_run_stores_held_out_sources_and_the_report_shows_them(
    sources: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path / "cache"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    data = [x for d in sources for x in ("--data", str(d))]
    argv = ["--quiet", "run", "--trials", "1", *TINY, "--complexity-size", "32", *data]
    where = ["--storage", url, "--study", "s", "--out", str(tmp_path)]
    assert main([*argv, "--cv-by", "source", "--cv-score", "worst", *where]) == 0
    (trial,) = optuna.load_study(study_name="s", storage=url).trials
    a = trial.user_attrs
    held = a["cv"]["held_out"]
    assert list(held) == ["a", "b"] and a["cv"]["optimised"] == "worst of held-out sources"
    assert a["val_accuracy"] == pytest.approx(min(v["mean"] for v in held.values()))
    assert [r["held_out"] for r in a["runs"]] == ["a", "b"]
    assert main(["--quiet", "report", *where]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "held out a (%)" in md and "held out b (%)" in md and "worst (%) (optimised)" in md


def test_search_train_prints_one_held_out_accuracy_per_source_and_their_mean(
    sources: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path / "cache"))
    data = [x for d in sources for x in ("--data", str(d))]
    out = tmp_path / "t"
    assert main(["train", "--arch", "ct-s", *TINY, *data, "--cv-by", "source", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    held = m["cv"]["held_out"]
    for name, u in held.items():
        assert f"{name}" in text and f"{u['mean']:.2f}" in text
    mean = sum(u["mean"] for u in held.values()) / 2
    assert f"mean (stored) │      {mean:.2f}" in text or f"mean {mean:.2f} %" in text
    assert m["val_accuracy"] == pytest.approx(mean)


def test_cv_by_source_with_one_source_is_a_usage_error(
    sources: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--arch", "ct-s", *TINY, "--data", str(sources[0]), "--cv-by", "source"]
    assert main([*argv, "--out", str(tmp_path / "t")]) == 2
    assert "--cv-by source needs at least two --data sources, got 1 (a)" in capsys.readouterr().err


def test_search_final_keeps_the_searchs_harmonisation_and_held_out_sources() -> None:
    import argparse

    from search.commands.final import final_config

    stored = {"data": ["a", "b"], "harmonise": "match", "cv_by": "source", "cv_score": "worst", "epochs": 4}
    final = final_config(argparse.Namespace(config=None), stored)
    assert final.train.harmonise == "match" and final.cv.by_source and final.cv.score == "worst"
    assert final.train.protocol == "final" and final.train.epochs == 12
    override = final_config(argparse.Namespace(config=None, cv_by="patient", harmonise="none"), stored)
    assert override.train.harmonise == "none" and not override.cv.by_source
