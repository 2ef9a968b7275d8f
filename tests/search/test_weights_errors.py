"""Weights that cannot be read: one line naming the trial or file; a report skips that model."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from search.driver.artifacts import load_weights, read_weights
from search.driver.storage import artifact_store
from search.errors import UsageError
from tests.reports.studies import fill_study


def _truncated_weights(tmp_path: Path) -> Path:
    f = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(64, 64)}, f)
    f.write_bytes(f.read_bytes()[:200])
    return f


def _study_with_truncated_trial0(tmp_path: Path) -> tuple[str, optuna.Study]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store_dir = tmp_path / "artifacts"
    with _truncated_weights(tmp_path).open("rb") as f:
        artifact_store(str(store_dir)).write("trial0-weights", f)
    study = fill_study(url, search_attrs={0: {"weights_artifact_id": "trial0-weights"}})
    study.set_user_attr("artifacts", str(store_dir))
    return url, study


def test_a_truncated_file_is_one_line_naming_it_with_torchs_whole_reason(tmp_path: Path) -> None:
    f = _truncated_weights(tmp_path)
    with pytest.raises(UsageError) as e:
        read_weights(f)
    text = str(e.value)
    assert text.startswith(f"{f}: not a weights file torch can load") and "\n" not in text


def test_a_trials_unreadable_weights_name_the_trial_and_artifact(tmp_path: Path) -> None:
    _, study = _study_with_truncated_trial0(tmp_path)
    trial = optuna.load_study(study_name="t", storage=study._storage).trials[0]
    with pytest.raises(
        UsageError, match=r"the weights of trial 0 of study 't' \(artifact .+\): not a weights"
    ):
        load_weights(study, trial)


def test_a_report_skips_a_model_whose_weights_cannot_be_read_and_says_so(tmp_path: Path) -> None:
    from reports.build import build_report
    from search.audit import report_explainer

    url, _ = _study_with_truncated_trial0(tmp_path)
    skipped: list[str] = []
    explain = report_explainer(url, "t", n=2, on_skip=skipped.append)
    report = build_report(url, "t", tmp_path / "report", explain=explain)
    assert (tmp_path / "report" / "index.html").is_file() and report.files
    assert any(
        line.startswith("explainability audit of trial 0 skipped") and "weights" in line for line in skipped
    )
