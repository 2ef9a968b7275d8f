"""``search export``: a chosen trial rebuilt from the study, verified, and written as files.

A trial's model is rebuilt from what the study stores (its ``spec``, or a baseline's ``builder``)
and its stored weights are loaded; nothing is re-trained. The export writes, into one folder:

* ``model.onnx``: dynamic batch axis, opset ``OPSET``, with metadata (image size, class names,
  arch_id) so ``search predict`` needs nothing else;
* ``weights.pt``: the state dict; ``spec.json``: the ``ArchSpec`` (a baseline: its registry name);
* ``model.json``: the model card (complexity, NetScore, metrics with intervals, training
  configuration, data hash, seed, library versions, ONNX parity and CPU latency).

Before anything is kept, ``onnx.checker`` must pass and ONNX Runtime must match PyTorch on real
images of the study's data (``PARITY_ATOL`` on the logits, the same predicted classes). Files are
written into a hidden temporary folder beside the destination and renamed at the end, so a failed
export leaves no half-written folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
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

from search.errors import RunFailed, UsageError
from search.model_card import file_facts, library_versions, model_card
from search.onnx_export import (
    OPSET,
    PARITY_ATOL,
    ExportFailed,
    Parity,
    check_parity,
    export_onnx,
    study_images,
)
from search.study import complete_candidates, pareto_trials

FORMATS = ("onnx", "pt", "json")
PICKS = ("best-netscore", "most-accurate", "smallest-macs", "pareto")
T = TypeVar("T")
__all__ = [
    "FORMATS",
    "OPSET",
    "PARITY_ATOL",
    "PICKS",
    "ExportFailed",
    "ExportOptions",
    "ExportResult",
    "Parity",
    "build_from",
    "check_parity",
    "description_of",
    "export_onnx",
    "export_trial",
    "find_baseline",
    "find_trial",
    "library_versions",
    "load_exported",
    "load_trial_model",
    "pick_trials",
    "rebuild",
    "study_images",
    "write_atomically",
]


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
    rtol: float = 0.0
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
    from search.baseline_runs import baselines_study_name

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


# ----------------------------------------------------------------------------- rebuilding
def description_of(trial: FrozenTrial) -> dict[str, Any]:
    """What rebuilds the trial's network: ``{"spec": ...}`` or ``{"baseline": name, ...}``."""
    a = trial.user_attrs
    builder = a.get("builder") or {}
    if a.get("spec"):
        return {"spec": a["spec"], "num_classes": int(builder.get("num_classes", 3))}
    if builder.get("baseline"):
        return dict(builder)
    raise UsageError(
        f"trial {trial.number} stores neither a spec nor a baseline builder; it cannot be rebuilt"
    )


def build_from(description: dict[str, Any]) -> nn.Module:
    """A freshly initialised network from ``description_of`` (or a ``spec.json``'s contents: a
    bare ``ArchSpec`` dict is accepted too)."""
    from space import ArchSpec, build

    if "baseline" in description:
        from baselines import create_baseline

        return create_baseline(
            str(description["baseline"]),
            num_classes=int(description.get("num_classes", 3)),
            in_chans=int(description.get("in_chans", 3)),
        )
    spec = description.get("spec", description)
    return build(ArchSpec.from_dict(spec), int(description.get("num_classes", 3)))


def channels_of(description: dict[str, Any]) -> int:
    """Input channels of the network ``description`` rebuilds (without building it)."""
    if "baseline" in description:
        return int(description.get("in_chans", 3))
    spec = description.get("spec", description)
    return int((spec.get("stem") or {}).get("in_channels", 3))


def input_channels(model: nn.Module) -> int:
    """Input channels of a network: those of its first convolution."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def image_size_of(study: optuna.Study, trial: FrozenTrial) -> int:
    """The image size the trial was trained at (its training configuration, else the run's)."""
    tc = trial.user_attrs.get("train_config") or {}
    rc = study.user_attrs.get("run_config") or {}
    return int(tc.get("image_size") or rc.get("image_size") or 512)


def rebuild(description: dict[str, Any], state: Any) -> nn.Module:
    """The network of ``description`` (``description_of`` or a ``spec.json``) holding ``state``, in
    eval mode. ``state`` is a state dict, or a pruned baseline's checkpoint (its channel counts
    and state dict, ``search.pruned_models``), which rebuilds itself."""
    from search.pruned_models import from_checkpoint, is_checkpoint

    if is_checkpoint(state):
        return from_checkpoint(state).eval()
    model = build_from(description)
    model.load_state_dict(state)
    return model.eval()


def load_exported(
    spec_path: Path, weights_path: Path, architecture: dict[str, Any] | None = None
) -> nn.Module:
    """The network of an export folder's ``spec.json`` (or ``architecture``, a model card's) holding
    ``weights.pt``, in eval mode; every problem is a one-line ``UsageError`` naming the file."""
    from space import SpecError

    try:
        description = json.loads(Path(spec_path).read_text())
    except ValueError as e:
        raise UsageError(f"{spec_path}: not valid JSON ({e})") from None
    if not isinstance(description, dict):
        raise UsageError(f"{spec_path}: expected a JSON object (an ArchSpec or a baseline builder)")
    if not Path(weights_path).is_file():
        raise UsageError(f"{weights_path}: no such weights file (pass --weights FILE)")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{weights_path}: not a readable state dict ({e})") from None
    try:
        return rebuild(architecture or description, state)
    except SpecError as e:
        raise e.in_file(str(spec_path)) from None
    except RuntimeError as e:
        raise UsageError(
            f"{weights_path}: does not fit the architecture of {spec_path}: {str(e).splitlines()[0]}"
        ) from None


def load_trial_model(study: optuna.Study, trial: FrozenTrial, artifacts: str | None = None) -> nn.Module:
    """The trial's network with its stored weights, in eval mode."""
    from search.artifacts import load_weights

    state = load_weights(study, trial, artifacts)
    try:
        return rebuild(description_of(trial), state)
    except RuntimeError as e:
        raise RunFailed(
            f"the stored weights of trial {trial.number} do not fit its architecture: {e}"
        ) from None


# ----------------------------------------------------------------------------- writing
def write_atomically(out: Path, writer: Callable[[Path], T], *, overwrite: bool = False) -> T:
    """Call ``writer(tmp)`` on a hidden folder beside ``out``, then rename it to ``out``.

    On any error the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
        result = writer(tmp)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


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
    from evaluators.inference import CLASS_NAMES
    from evaluators.latency import measure_latency

    options = options or ExportOptions()
    started = time.time()
    model = load_trial_model(study, trial, artifacts)
    size = image_size_of(study, trial)
    channels = input_channels(model)
    input_size = (channels, size, size)
    card = model_card(
        study, trial, description_of(trial), image_size=size, channels=channels, class_names=CLASS_NAMES
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
            meta = {
                "image_size": str(size),
                "class_names": json.dumps(list(CLASS_NAMES)),
                "arch_id": str(card["arch_id"]),
                "study": study.study_name,
                "trial": str(trial.number),
            }
            export_onnx(model, onnx_path, input_size, opset=options.opset, metadata=meta)
            assert images is not None
            parity = check_parity(
                onnx_path, model, images, atol=options.atol, rtol=options.rtol, source=images_source
            )
            if not parity.passed:
                raise ExportFailed(f"trial {trial.number}: {parity.failure()}; nothing written")
            card["onnx"] = {"opset": options.opset, "dynamic_batch": True, "checker": "passed"}
            card["parity"] = parity.to_dict()
        else:
            card["onnx"] = None
            card["parity"] = None
        if options.latency_repeats > 0:
            latency = measure_latency(
                model,
                onnx_path if with_onnx else None,
                input_size,
                batch_sizes=options.latency_batches,
                warmup=options.latency_warmup,
                repeats=options.latency_repeats,
                threads=options.threads,
            )
            card["latency"] = latency.to_dict()
        else:
            card["latency"] = None
        if not with_onnx and onnx_path.exists():
            onnx_path.unlink()
        if "pt" in options.formats:
            if trial.user_attrs.get("pruned_config"):  # a pruned baseline: channel counts + state dict
                from search.pruned_models import checkpoint

                torch.save(
                    checkpoint(model, str(trial.user_attrs["builder"]["baseline"])), tmp / "weights.pt"
                )
            else:
                torch.save(model.state_dict(), tmp / "weights.pt")
        if "json" in options.formats:
            desc = card["architecture"]
            body = desc.get("spec", desc)
            (tmp / "spec.json").write_text(json.dumps(body, indent=2) + "\n")
        card["versions"] = library_versions()
        card["exported_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        card["export_seconds"] = round(time.time() - started, 3)
        card["files"] = {p.name: file_facts(p) for p in sorted(tmp.iterdir())}
        (tmp / "model.json").write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
        return card

    written = write_atomically(Path(out), write, overwrite=options.overwrite)
    return ExportResult(trial.number, str(card["arch_id"]), Path(out), written)


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, (set, tuple)):
        return list(v)
    return str(v)
