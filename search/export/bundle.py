"""``search export``: a chosen trial rebuilt from the study, verified, and written as files.

A trial's model is rebuilt from what the study stores (its ``spec``, or a baseline's ``builder``)
and its stored weights are loaded; nothing is re-trained. The export writes, into one folder:

* ``model.onnx``: dynamic batch axis, opset ``OPSET``, with metadata (image size, class names,
  arch_id) so ``search predict`` needs nothing else;
* ``weights.pt``: the state dict; ``spec.json``: the ``ArchSpec`` (a baseline: its registry name);
* ``model.json``: the model card (complexity, NetScore, metrics with intervals, training
  configuration, data hash, seed, library versions, ONNX parity and CPU latency).

Before anything is kept, ``onnx.checker`` must pass and ONNX Runtime must match PyTorch on real
images of the study's data (``PARITY_ATOL`` + ``PARITY_RTOL`` x |logit|, the same predicted
classes). Files are written into a hidden temporary folder beside the destination and renamed at
the end, so a failed export leaves no half-written folder.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from evaluators.device import input_channels
from evaluators.files import write_folder_atomically
from search.driver.study import complete_candidates, pareto_trials
from search.errors import UsageError
from search.export.card import file_facts, library_versions, model_card
from search.export.load import description_of, image_size_of, load_trial_model
from search.export.onnx import (
    OPSET,
    PARITY_ATOL,
    PARITY_RTOL,
    ExportFailed,
    check_parity,
    export_onnx,
)

FORMATS = ("onnx", "pt", "json")
PICKS = ("best-netscore", "most-accurate", "smallest-macs", "pareto")
T = TypeVar("T")


@dataclass(frozen=True)
class ExportOptions:
    """How ``export_trial`` writes and checks one model.

    Attributes:
        formats: any of ``onnx`` (model.onnx), ``pt`` (weights.pt), ``json`` (spec.json); the
            model card is always written. Without ``onnx`` there is no parity check and only
            PyTorch latency.
        opset: ONNX opset.
        atol: largest allowed absolute difference between ONNX Runtime's and PyTorch's logits.
        rtol: added tolerance per unit of PyTorch's logit (0: the check is absolute).
        latency_repeats: timed calls per runtime and batch size (0: no latency).
        latency_warmup: untimed calls before timing.
        latency_batches: batch sizes timed.
        threads: CPU threads for the latency runs (default: torch's).
        overwrite: replace an existing destination folder.
    """

    formats: tuple[str, ...] = FORMATS
    opset: int = OPSET
    atol: float = PARITY_ATOL
    rtol: float = PARITY_RTOL
    latency_repeats: int = 20
    latency_warmup: int = 3
    latency_batches: tuple[int, ...] = (1, 8)
    threads: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise UsageError(f"formats must be among {', '.join(FORMATS)}, got {','.join(self.formats)!r}")


@dataclass(frozen=True)
class ExportResult:
    """One exported model: the trial, where its files are, and its model card."""

    number: int
    arch_id: str
    out_dir: Path
    card: dict[str, Any] = field(repr=False)


# ----------------------------------------------------------------------------- choosing trials
def pick_trials(trials: Sequence[FrozenTrial], pick: str) -> list[FrozenTrial]:
    """The completed, feasible trials ``pick`` chooses (one, or the whole Pareto set)."""
    if pick not in PICKS:
        raise UsageError(f"--pick must be one of {', '.join(PICKS)}, got {pick!r}")
    cands = complete_candidates(trials)
    if not cands:
        raise UsageError("the study has no completed, feasible trial to export")
    if pick == "pareto":
        return sorted(pareto_trials(trials), key=lambda t: t.number)
    a = lambda t: t.user_attrs  # noqa: E731
    key: Callable[[FrozenTrial], Any] = {
        "best-netscore": lambda t: (-float(a(t)["netscore"]), t.number),
        "most-accurate": lambda t: (-float(a(t)["val_accuracy"]), int(a(t)["macs"]), t.number),
        "smallest-macs": lambda t: (int(a(t)["macs"]), -float(a(t)["val_accuracy"]), t.number),
    }[pick]
    return [min(cands, key=key)]


def find_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of ``study``; it must be complete and have stored weights."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UsageError(f"study {study.study_name!r} has no trial {number} (it has {len(trials)} trials)")
    t = trials[number]
    if t.user_attrs.get("status") != "complete":
        status = t.user_attrs.get("status") or t.state.name.lower()
        raise UsageError(
            f"trial {number} of study {study.study_name!r} is {status}; only completed ones export"
        )
    return t


def find_baseline(storage: Any, study_name: str, name: str) -> tuple[optuna.Study, FrozenTrial]:
    """The latest completed training of baseline ``name`` in ``<study>:baselines``."""
    from search.driver.baselines import baselines_study_name

    bname = baselines_study_name(study_name)
    try:
        study = optuna.load_study(study_name=bname, storage=storage)
    except KeyError:
        raise UsageError(f"no baselines for study {study_name!r}: run `search baselines` first") from None
    done = [
        t
        for t in complete_candidates(study.get_trials(deepcopy=False))
        if t.user_attrs.get("baseline") == name
    ]
    if not done:
        known = sorted({t.user_attrs.get("baseline", "?") for t in complete_candidates(study.trials)})
        raise UsageError(
            f"baseline {name!r} has no completed training in {bname!r}; trained: {', '.join(known) or 'none'}"
        )
    return study, done[-1]


# ----------------------------------------------------------------------------- writing
def write_atomically(out: Path, writer: Callable[[Path], T], *, overwrite: bool = False) -> T:
    """``evaluators.files.write_folder_atomically``, refusing an existing ``out`` unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    return write_folder_atomically(out, writer)


def class_names_of(study: optuna.Study, trial: FrozenTrial | None = None) -> tuple[str, ...]:
    """The class names the training data gave (its ``classes.txt``; stored with each trial and
    with the study's data), else COVIDx CT's: what an export's predictions are called."""
    from evaluators.data.classes import CLASS_NAMES

    names = (trial.user_attrs.get("class_names") if trial is not None else None) or (
        study.user_attrs.get("data") or {}
    ).get("class_names")
    return tuple(names) if names and len(names) == len(CLASS_NAMES) else CLASS_NAMES


def export_trial(
    study: optuna.Study,
    trial: FrozenTrial,
    out: str | Path,
    images: torch.Tensor | None,
    options: ExportOptions | None = None,
    *,
    artifacts: str | None = None,
    images_source: str = "",
) -> ExportResult:
    """Export one trial into the folder ``out`` (see the module docstring).

    Args:
        study: the study holding the trial (a search study or ``<study>:baselines``).
        trial: a completed trial with stored weights.
        out: the destination folder (must not exist unless ``options.overwrite``).
        images: real images for the parity check, float32 ``(N, C, S, S)`` preprocessed as in
            training; required when ONNX is written.
        options: formats, tolerance and latency settings.
        artifacts: the artifact store, if not the one the study records.
        images_source: where the images came from, for the card.

    Raises:
        ExportFailed: the ONNX checker or the parity check failed (nothing is written).
    """
    options = options or ExportOptions()
    started = time.time()
    model = load_trial_model(study, trial, artifacts)
    size = image_size_of(study, trial)
    channels = input_channels(model)
    input_size = (channels, size, size)
    card = model_card(
        study,
        trial,
        description_of(trial),
        image_size=size,
        channels=channels,
        class_names=class_names_of(study, trial),
    )
    with_onnx = "onnx" in options.formats
    if with_onnx and (images is None or images.ndim != 4 or tuple(images.shape[1:]) != input_size):
        shape = None if images is None else tuple(images.shape)
        raise UsageError(
            f"the parity check needs images of shape (N, {channels}, {size}, {size}), got {shape}"
        )

    def write(tmp: Path) -> dict[str, Any]:
        onnx_path = tmp / "model.onnx"
        if with_onnx:
            assert images is not None
            _write_onnx(model, onnx_path, input_size, images, options, card, study, trial, images_source)
        else:
            card["onnx"] = card["parity"] = None
        card["latency"] = _latency(model, onnx_path if with_onnx else None, input_size, options)
        _write_weights_and_spec(model, trial, tmp, options.formats, card)
        card["versions"] = library_versions()
        card["exported_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        card["export_seconds"] = round(time.time() - started, 3)
        card["files"] = {p.name: file_facts(p) for p in sorted(tmp.iterdir())}
        (tmp / "model.json").write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
        return card

    written = write_atomically(Path(out), write, overwrite=options.overwrite)
    return ExportResult(trial.number, str(card["arch_id"]), Path(out), written)


def _write_onnx(
    model: nn.Module,
    path: Path,
    input_size: tuple[int, int, int],
    images: torch.Tensor,
    options: ExportOptions,
    card: dict[str, Any],
    study: optuna.Study,
    trial: FrozenTrial,
    images_source: str,
) -> None:
    """``model.onnx`` with its metadata, checked against PyTorch on ``images`` (``ExportFailed``)."""
    meta = {
        "image_size": str(input_size[1]),
        "class_names": json.dumps(
            list((card.get("input") or {}).get("class_names") or class_names_of(study))
        ),
        "arch_id": str(card["arch_id"]),
        "study": study.study_name,
        "trial": str(trial.number),
        "harmonise": str((card.get("input") or {}).get("harmonise", "none")),
    }
    export_onnx(model, path, input_size, opset=options.opset, metadata=meta)
    parity = check_parity(path, model, images, atol=options.atol, rtol=options.rtol, source=images_source)
    if not parity.passed:
        raise ExportFailed(f"trial {trial.number}: {parity.failure()}; nothing written")
    card["onnx"] = {"opset": options.opset, "dynamic_batch": True, "checker": "passed"}
    card["parity"] = parity.to_dict()


def _latency(
    model: nn.Module, onnx_path: Path | None, input_size: tuple[int, int, int], options: ExportOptions
) -> dict[str, Any] | None:
    if options.latency_repeats <= 0:
        return None
    from evaluators.latency import measure_latency

    latency = measure_latency(
        model,
        onnx_path,
        input_size,
        batch_sizes=options.latency_batches,
        warmup=options.latency_warmup,
        repeats=options.latency_repeats,
        threads=options.threads,
    )
    return latency.to_dict()


def _write_weights_and_spec(
    model: nn.Module, trial: FrozenTrial, tmp: Path, formats: Sequence[str], card: dict[str, Any]
) -> None:
    """``weights.pt`` (a state dict; a pruned baseline's channel counts too) and ``spec.json``."""
    if "pt" in formats:
        if trial.user_attrs.get("pruned_config"):  # a pruned baseline: channel counts + state dict
            from search.pruning.checkpoints import checkpoint

            torch.save(checkpoint(model, str(trial.user_attrs["builder"]["baseline"])), tmp / "weights.pt")
        else:
            torch.save(model.state_dict(), tmp / "weights.pt")
    if "json" in formats:
        desc = card["architecture"]
        body = desc.get("spec", desc)
        (tmp / "spec.json").write_text(json.dumps(body, indent=2) + "\n")


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, (set, tuple)):
        return list(v)
    return str(v)
