"""Optuna's early stop is "stopped early" in every user-facing string; "pruned" is channel pruning
only. Studies written before the rename (status "pruned", ``pruned_val_accuracy``) still read."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from reports.build import build_report
from reports.collect import collect
from reports.points import groups
from tests.reports.studies import fill_study


@pytest.mark.parametrize("old_attrs", [False, True])
def test_a_trial_stopped_early_is_drawn_as_stopped_early(tmp_path: Path, old_attrs: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fill_study(url, old_attrs=old_attrs)
    c = collect(url, "t")
    assert c.counts()["stopped_early"] == 1 and "pruned" not in c.counts()
    stopped = next(g for g in groups(c, c.candidates.iloc[:0]) if g.key == "stopped")
    assert stopped.name == "stopped early" and list(stopped.y) == [55.0]


def test_no_user_facing_pruned_for_trials_stopped_early(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fill_study(url, pruned=False, old_attrs=False)  # no channel-pruned model: "pruned" has no place
    out = tmp_path / "report"
    build_report(url, "t", out)
    for name in ("index.html", "interactive.html", "report.md", "report.json"):
        text = (out / name).read_text().lower()
        assert "pruned" not in text, name
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["trials stopped early"] == 1
    assert "stopped early" in (out / "index.html").read_text()
