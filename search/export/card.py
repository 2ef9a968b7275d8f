"""The model card (``model.json``) of an exported trial, from what the study stores."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

CARD_VERSION = 1


def library_versions() -> dict[str, str | None]:
    """Versions of what produced and runs the export."""
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "optuna",
        "numpy",
        "covidnet-nas",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def file_facts(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def model_card(
    study: optuna.Study,
    trial: FrozenTrial,
    architecture: dict[str, Any],
    *,
    image_size: int,
    channels: int,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """The model card of a trial from what the study stores; the export adds its own facts (files,
    ONNX, parity, latency, versions, time).

    Args:
        study: the study holding the trial.
        trial: the exported trial.
        architecture: what rebuilds the network (``search.export.description_of``).
        image_size: the side the model takes.
        channels: its input channels.
        class_names: one name per output.
    """
    a = trial.user_attrs
    tc = a.get("train_config") or {}
    harmonise = tc.get("harmonise", "none")
    preprocessing = (
        "crop to the body box, resize (bilinear) to image_size, gray repeated to every channel, divide by 255"
    )
    if harmonise != "none":
        preprocessing = (
            f"crop to the body box, resize (bilinear) to image_size, harmonise ({harmonise}: "
            "evaluators.data.harmonise.harmonise_pixels, a per-image gray-level map from the box's "
            "pixels; search predict and search evaluate --model apply it), gray repeated to every "
            "channel, divide by 255"
        )
    rc = study.user_attrs.get("run_config") or {}
    return {
        "card_version": CARD_VERSION,
        "name": a.get("display_name") or (a.get("spec") or {}).get("name") or a.get("arch_id"),
        "kind": a.get("kind", "search"),
        "study": study.study_name,
        "trial": trial.number,
        "arch_id": a.get("arch_id"),
        "origin": a.get("origin") or a.get("baseline"),
        "architecture": architecture,
        "params": a.get("params"),
        "macs": a.get("macs"),
        "flops": a.get("flops"),
        "complexity_size": a.get("complexity_size"),
        "peak_activation_bytes": a.get("peak_activation_bytes"),
        "netscore": a.get("netscore"),
        "val_accuracy": a.get("val_accuracy"),
        "metrics": {"val": a.get("val_metrics"), "test": a.get("test_metrics")},
        "input": {
            "shape": ["batch", channels, image_size, image_size],
            "image_size": image_size,
            "channels": channels,
            "preprocessing": preprocessing,
            "harmonise": harmonise,
            "class_names": list(class_names),
        },
        "training": {
            "config": tc,
            "best_epoch": a.get("best_epoch"),
            "epochs_run": a.get("epochs_run"),
            "train_wall_time_s": a.get("train_wall_time_s"),
            "history": a.get("history"),
        },
        "data": {
            "data_hash": a.get("data_hash"),
            "data_sources": a.get("data_sources"),
            "data_sizes": a.get("data_sizes"),
            "data_dirs": rc.get("data"),
        },
        "seed": tc.get("seed", rc.get("seed")),
    }
