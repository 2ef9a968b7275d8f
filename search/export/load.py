"""The one way back from storage to a network, and from an export folder to a classifier.

* ``description_of(trial)`` says what rebuilds a stored trial (its ``ArchSpec``, or a baseline's
  builder); ``rebuild(description, weights)`` builds it and loads the weights (a state dict, or a
  pruned baseline's checkpoint); ``load_trial_model`` does both from the study's artifact store.
  Export, predict, explain, pruning and reports all come through here.
* ``load_exported`` reads an export folder's ``spec.json`` + ``weights.pt``; ``load_classifier``
  returns an ``evaluators.inference.Classifier`` (ONNX Runtime, or PyTorch from ``spec.json``) for
  ``search predict`` and ``search evaluate --model``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from torch import nn

from evaluators.device import input_channels
from search.errors import UsageError

MODEL_FILES = ("model.onnx", "spec.json", "weights.pt", "model.json")


def read_card(model: str | Path) -> dict[str, Any]:
    """The model card (``model.json``) of an export folder or beside a model file; ``{}`` if none."""
    path = Path(model)
    card = path / "model.json" if path.is_dir() else path.parent / "model.json"
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_classifier(
    model: str | Path,
    weights: str | Path | None = None,
    *,
    image_size: int | None = None,
    threads: int | None = None,
    runtime: str | None = None,
) -> Any:
    """A classifier for an exported model.

    Args:
        model: ``model.onnx``; an export folder (its ``model.onnx``, else its ``spec.json`` and
            ``weights.pt``); or a ``spec.json`` (an ``ArchSpec``, or ``{"baseline": name}``).
        weights: the state dict for a ``spec.json`` (default: ``weights.pt`` beside it).
        image_size: input side for the PyTorch path (default: the ``model.json`` beside it).
        threads: ONNX Runtime intra-op threads.
        runtime: ``onnxruntime`` or ``torch`` to choose within an export folder.
    """
    from evaluators.data.classes import CLASS_NAMES
    from evaluators.inference import onnx_classifier, torch_classifier

    path = Path(model)
    if path.is_dir():
        if runtime != "torch" and (path / "model.onnx").is_file():
            return onnx_classifier(path / "model.onnx", threads)
        if (path / "spec.json").is_file():
            path = path / "spec.json"
        else:
            raise UsageError(
                f"{path}: no model.onnx or spec.json in this folder (not an export of `search export`)"
            )
    if not path.exists():
        raise UsageError(f"{path}: no such model file or folder")
    if path.suffix == ".onnx":
        return onnx_classifier(path, threads)
    if path.suffix != ".json":
        raise UsageError(f"{path}: expected model.onnx, spec.json or an export folder")
    return _torch_classifier(path, weights, image_size, torch_classifier, CLASS_NAMES)


def _torch_classifier(
    path: Path, weights: str | Path | None, image_size: int | None, make: Any, names: Any
) -> Any:
    from search.export.load import load_exported

    wpath = Path(weights) if weights else path.parent / "weights.pt"
    net = load_exported(path, wpath)
    card = read_card(path)
    size = image_size or (card.get("input") or {}).get("image_size")
    if not size:
        raise UsageError(f"no model.json beside {path} says the input size; pass --image-size N")
    class_names = (card.get("input") or {}).get("class_names") or names
    harmonise = harmonise_of(card)
    return make(
        net, int(size), input_channels(net), class_names, source=f"{path} + {wpath}", harmonise=harmonise
    )


def harmonise_of(card: dict[str, Any]) -> str:
    """The intensity harmonisation of an export's model card (``none`` for cards before it)."""
    from evaluators.data.harmonise import HARMONISE

    value = (card.get("input") or {}).get("harmonise")
    if value is None:
        value = ((card.get("training") or {}).get("config") or {}).get("harmonise", "none")
    if value not in HARMONISE:
        raise UsageError(f"model.json: unknown harmonisation {value!r} (known: {', '.join(HARMONISE)})")
    return str(value)


# ----------------------------------------------------------------------------- rebuilding
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


def image_size_of(study: optuna.Study, trial: FrozenTrial) -> int:
    """The image size the trial was trained at (its training configuration, else the run's)."""
    tc = trial.user_attrs.get("train_config") or {}
    rc = study.user_attrs.get("run_config") or {}
    return int(tc.get("image_size") or rc.get("image_size") or 512)


def rebuild(description: dict[str, Any], state: Any, what: str = "the stored network") -> nn.Module:
    """The network of ``description`` (``description_of`` or a ``spec.json``) holding ``state``, in
    eval mode: the one way back from stored weights to a network (export, predict, explain,
    pruning, reports). ``state`` is a state dict, or a pruned baseline's checkpoint (its channel
    counts and state dict, ``search.pruning.checkpoints``), which rebuilds itself.

    Raises:
        WeightsMismatch: the weights do not fit the architecture (``what`` names it).
    """
    from search.pruning.checkpoints import from_checkpoint, is_checkpoint, load_exact

    if is_checkpoint(state):
        return from_checkpoint(state).eval()
    model = build_from(description)
    load_exact(model, state, what)
    return model.eval()


def read_weights_file(path: str | Path, hint: str = "") -> Any:
    """What a weights file holds (a state dict, or a pruned baseline's checkpoint), loaded with
    ``torch.load(weights_only=True)``: no pickle runs. A missing or unreadable file is a one-line
    ``UsageError`` naming it (``hint`` is appended to "no such weights file")."""
    from search.driver.artifacts import read_weights

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such weights file{hint}")
    return read_weights(p)


def load_exported(
    spec_path: Path, weights_path: Path, architecture: dict[str, Any] | None = None
) -> nn.Module:
    """The network of an export folder's ``spec.json`` (or ``architecture``, a model card's) holding
    ``weights.pt``, in eval mode; every problem is a one-line ``UsageError`` naming the file."""
    from search.pruning.checkpoints import WeightsMismatch
    from space import SpecError

    try:
        description = json.loads(Path(spec_path).read_text())
    except ValueError as e:
        raise UsageError(f"{spec_path}: not valid JSON ({e})") from None
    if not isinstance(description, dict):
        raise UsageError(f"{spec_path}: expected a JSON object (an ArchSpec or a baseline builder)")
    state = read_weights_file(weights_path, hint=" (pass --weights FILE)")
    try:
        return rebuild(architecture or description, state)
    except SpecError as e:
        raise e.in_file(str(spec_path)) from None
    except WeightsMismatch as e:
        raise UsageError(f"{weights_path}: does not fit the architecture of {spec_path}: {e}") from None


def load_trial_model(study: optuna.Study, trial: FrozenTrial, artifacts: str | None = None) -> nn.Module:
    """The trial's network with its stored weights, in eval mode."""
    from search.driver.artifacts import load_weights

    state = load_weights(study, trial, artifacts)
    return rebuild(description_of(trial), state, f"trial {trial.number} of study {study.study_name!r}")
