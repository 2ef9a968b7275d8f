"""Weights in the study's artifact store: upload after training, download for export and reports."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, Trial

from search.driver.storage import artifact_store
from search.errors import UsageError


def store_location(study: optuna.Study, override: str | None = None) -> str:
    """Where the study's artifacts live: ``override``, else what the run recorded."""
    location = override or study.user_attrs.get("artifacts")
    if not location:
        raise UsageError(f"study {study.study_name!r} records no artifact store; pass --artifacts LOCATION")
    return str(location)


def upload_weights(
    store: Any, trial: Trial | FrozenTrial, path: str, study: optuna.Study | None = None
) -> str:
    """Upload a weights file for ``trial``; returns the artifact id."""
    kwargs: dict[str, Any] = {}
    if isinstance(trial, FrozenTrial) and study is not None:
        kwargs["storage"] = study._storage
    return optuna.artifacts.upload_artifact(
        artifact_store=store,
        file_path=path,
        study_or_trial=trial,
        mimetype="application/octet-stream",
        **kwargs,
    )


def load_weights(
    study: optuna.Study, trial: FrozenTrial, artifacts: str | None = None
) -> dict[str, torch.Tensor]:
    """The state dict stored for ``trial`` (``torch.load(weights_only=True)``: no pickle)."""
    artifact_id = trial.user_attrs.get("weights_artifact_id")
    if not artifact_id:
        raise UsageError(f"trial {trial.number} of study {study.study_name!r} has no stored weights")
    store = artifact_store(store_location(study, artifacts), create=False)
    with tempfile.TemporaryDirectory(prefix="covidnet-nas-") as tmp:
        path = Path(tmp) / "weights.pt"
        try:
            optuna.artifacts.download_artifact(
                artifact_store=store, file_path=str(path), artifact_id=artifact_id
            )
        except Exception as e:
            raise UsageError(
                f"cannot read the weights of trial {trial.number} ({artifact_id}): {e}"
            ) from None
        where = f"the weights of trial {trial.number} of study {study.study_name!r} (artifact {artifact_id})"
        return read_weights(path, where)


def read_weights(path: str | Path, what: str | None = None) -> Any:
    """What a weights file holds, by ``torch.load(weights_only=True)`` (no pickle runs): the one
    place the toolkit reads weights. A file torch cannot load (truncated, not torch's, a pickle
    that needs code) is a one-line ``UsageError`` naming ``what`` (default: the file) with torch's
    whole reason, its note on ``weights_only`` included."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = " ".join(str(e).split())
        raise UsageError(
            f"{what or path}: not a weights file torch can load with weights_only=True ({text})"
        ) from None
