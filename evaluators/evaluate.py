"""A trained network's predictions and metrics on a split of a dataset."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from evaluators.data.classes import CLASS_NAMES
from evaluators.data.covidx import CTDataset
from evaluators.metrics import EvalResult, compute_metrics


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    channels: int = 3,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Predicted classes (CPU int64) of uint8 ``N x S x S`` images, in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    from evaluators.data.cache import to_float

    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, images.shape[0], batch_size):
            x = to_float(images[i : i + batch_size].to(device, non_blocking=True), channels)
            out.append(model(x).argmax(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def evaluate(
    model: nn.Module,
    dataset: CTDataset,
    split: str,
    image_size: int,
    *,
    channels: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    cache_dir: Any = None,
    seed: int = 0,
    harmonise: str = "none",
) -> EvalResult:
    """The metrics of ``model`` on ``split`` of ``dataset`` at ``image_size``.

    Args:
        model: a classifier over ``CLASS_NAMES``; moved to ``device``.
        dataset: the loaded data.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: the side the model was trained at.
        channels: input channels (default: read from the model's first convolution).
        batch_size: images per forward pass.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        cache_dir: the decoded-image cache folder (default: ``evaluators.cache.default_cache_dir()``).
        seed: seed of the bootstrap intervals.
        harmonise: the intensity harmonisation the model was trained with
            (``evaluators.data.harmonise``).
    """
    from evaluators.data.cache import load_arrays
    from evaluators.device import input_channels, resolve_device

    dev = resolve_device(device)
    channels = channels or input_channels(model)
    from evaluators.data.harmonise import harmonise_arrays

    arrays = harmonise_arrays(load_arrays(dataset, split, image_size, channels, cache_dir), harmonise)
    model.to(dev)
    pred = predict(model, arrays.images, channels, batch_size, dev)
    return compute_metrics(arrays.labels, pred, len(CLASS_NAMES), arrays.sources, seed)
