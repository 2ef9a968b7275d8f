"""Loading an exported model for inference: an ONNX file, an export folder, or ``spec.json`` with
``weights.pt`` (run through PyTorch).

``load_classifier`` returns an ``evaluators.inference.Classifier`` for ``search predict`` and
``search evaluate --model``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    from evaluators.inference import CLASS_NAMES, onnx_classifier, torch_classifier

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
    from search.export import input_channels, load_exported

    wpath = Path(weights) if weights else path.parent / "weights.pt"
    net = load_exported(path, wpath)
    card = read_card(path)
    size = image_size or (card.get("input") or {}).get("image_size")
    if not size:
        raise UsageError(f"no model.json beside {path} says the input size; pass --image-size N")
    class_names = (card.get("input") or {}).get("class_names") or names
    return make(net, int(size), input_channels(net), class_names, source=f"{path} + {wpath}")
