"""A report of a short real `search run` on the bundled data: what it trained is what it reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search.driver.study import pareto_trials

FAST = ["--epochs", "1", "--image-size", "32", "--complexity-size", "64", "--batch-size", "16"]


def _search(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "search", "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_report_of_a_real_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    where = ["--storage", url, "--study", "real", "--out", str(tmp_path)]
    r = _search("run", "--trials", "3", *where, *FAST)
    if r.returncode != 0:
        pytest.fail(f"search run failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    r = _search("report", *where)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "report"
    assert (out / "index.html").is_file()

    trials = optuna.load_study(study_name="real", storage=url).trials
    by_number = {t.number: t.user_attrs for t in trials}
    t3 = pd.read_csv(out / "table3.csv")
    front = {t.number for t in pareto_trials(trials)}
    assert set(t3.loc[t3["role"].str.contains("Pareto"), "trial"]) == front
    assert "CT L (prototype, #0)" in set(t3["model"])
    macs_col = next(c for c in t3.columns if c.startswith("MACs ("))
    div = 1e9 if macs_col == "MACs (G)" else 1e6
    chance = t3["model"] == "majority class (constant)"  # the chance row: no trial of its own
    assert chance.sum() == 1
    for _, row in t3[~chance].iterrows():
        a = by_number[int(row["trial"])]
        assert row["params (M)"] == pytest.approx(a["params"] / 1e6, abs=1e-6)
        assert row[macs_col] == pytest.approx(a["macs"] / div, abs=1e-6)
        assert row["val accuracy (%)"] == pytest.approx(a["val_accuracy"])
        if a.get("test_metrics") is None:  # search trials keep the test split for the final stage
            assert pd.isna(row["test accuracy (%)"]) or row["test accuracy (%)"] == "n/a"
            continue
        assert row["test accuracy (%)"] == pytest.approx(a["test_metrics"]["accuracy"])
        lo, hi = a["test_metrics"]["accuracy_ci"]
        assert row["test accuracy (%) 95% CI low"] == pytest.approx(lo)
        assert row["test accuracy (%) 95% CI high"] == pytest.approx(hi)
    t4 = pd.read_csv(out / "table4.csv", keep_default_na=False)
    # the bundled data has no pneumonia images: undefined, never 0
    assert set(t4["sensitivity Pneumonia (%)"]) == {"n/a"}
    assert len(pd.read_csv(out / "trials.csv")) == len(trials)
