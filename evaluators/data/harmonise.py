"""Intensity harmonisation inside the body box (``--harmonise``): one gray-level map per image.

Two hospitals' slices differ in window, contrast and brightness before they differ in disease; a
network trained on one learns that look. Each method here maps an image's gray levels through a
256-entry look-up table computed from the pixels *inside its body box* only (the border, the
table, text outside the box do not count), so the same image gives the same output wherever it is
decoded:

* ``none``: the identity.
* ``standardise``: ``128 + 48 (v - mean) / std`` over the box, clipped to 0-255 (the box's mean
  at mid gray, +-2.7 standard deviations spanning the range).
* ``equalise``: histogram equalisation: ``255 (cdf(v) - cdf_min) / (n - cdf_min)`` of the box.
* ``match``: histogram matching to a fixed reference: ``v`` goes to the reference's quantile at
  the box's ``cdf(v)`` (midpoint convention). The reference is ``REFERENCE``: the pooled box
  histogram of the bundled ct-sars-mini training split at 64 px (``reference_quantiles``
  regenerates it), shipped as constants so that training, evaluation and prediction never
  depend on data being present.

The output stays uint8 gray levels, so the paper's augmentations (intensity shift +-15 levels,
scale +-10 %) and exterior exclusion (its fill, the exterior mean, goes through the same map)
work unchanged after it. Training applies it to the decoded arrays (``harmonise_arrays``, in
``evaluators.training.fit``); inference applies it to the cropped, resized pixels
(``harmonise_pixels``) before scaling to [0, 1]: ``search predict`` and ``search evaluate
--model`` read the method from the export (the ONNX metadata ``covidnet_nas.harmonise``, or the
model card's ``input.harmonise``), so it is a documented pre-step of the exported model, not part
of its graph.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from evaluators.data.cache import SplitArrays

HARMONISE = ("none", "standardise", "equalise", "match")
_REFERENCE_FILE = Path(__file__).with_name("harmonise_reference.json")
STD_CENTRE, STD_SCALE = 128.0, 48.0


@lru_cache(maxsize=1)
def reference() -> torch.Tensor:
    """The ``match`` reference: 257 gray levels, its quantiles at 0, 1/256, ..., 1."""
    q = json.loads(_REFERENCE_FILE.read_text())["quantiles"]
    return torch.tensor(q, dtype=torch.float64)


def check_method(method: str) -> str:
    if method not in HARMONISE:
        raise ValueError(f"harmonise must be one of {', '.join(HARMONISE)}, got {method!r}")
    return method


def luts(boxes: torch.Tensor, method: str) -> torch.Tensor:
    """``N x 256`` uint8 look-up tables, one per image, from its box pixels ``N x H x W`` uint8."""
    check_method(method)
    n = boxes.shape[0]
    levels = torch.arange(256, dtype=torch.float64)
    if method == "none" or n == 0:
        return levels.to(torch.uint8).expand(n, 256).clone()
    flat = boxes.reshape(n, -1).long()
    count = flat.shape[1]
    if method == "standardise":
        x = flat.double()
        mean = x.mean(1, keepdim=True)
        std = x.std(1, unbiased=False, keepdim=True).clamp_min(1.0)
        out = STD_CENTRE + STD_SCALE * (levels.view(1, -1) - mean) / std
        return out.round().clamp(0, 255).to(torch.uint8)
    offsets = (torch.arange(n) * 256).view(-1, 1)
    hist = torch.bincount((flat + offsets).reshape(-1), minlength=n * 256).view(n, 256).double()
    cdf = hist.cumsum(1)
    if method == "equalise":
        first = torch.where(hist > 0, cdf, torch.full_like(cdf, float(count))).min(1, keepdim=True).values
        den = (count - first).clamp_min(1.0)
        out = 255.0 * (cdf - first).clamp_min(0.0) / den
        return out.round().clamp(0, 255).to(torch.uint8)
    # match: the box's midpoint cdf of each level, through the reference's quantile function
    p = ((cdf - hist / 2) / count).clamp(0, 1)
    ref = reference()
    pos = p * (len(ref) - 1)
    lo = pos.floor().long().clamp(0, len(ref) - 2)
    frac = pos - lo.double()
    out = ref[lo] * (1 - frac) + ref[lo + 1] * frac
    return out.round().clamp(0, 255).to(torch.uint8)


def apply(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``images`` (``N x ...`` uint8) mapped through per-image tables ``N x 256``."""
    n = images.shape[0]
    flat = images.reshape(n, -1).long()
    return torch.gather(table, 1, flat).reshape(images.shape)


def harmonise_arrays(arrays: SplitArrays, method: str) -> SplitArrays:
    """Decoded arrays with every canvas (and exterior fill) mapped by its box's table; ``none``
    returns ``arrays`` itself."""
    if check_method(method) == "none" or len(arrays) == 0:
        return arrays
    # Several sources, folds and subsets are index views over the shared maps (``cache.Rows``):
    # gathered here, since the mapped canvases are a new tensor either way.
    table = luts(_whole(arrays.images), method)
    exterior = apply(arrays.exterior.view(-1, 1), table).view(-1)
    return dataclasses.replace(arrays, canvas=apply(_whole(arrays.canvas), table), exterior=exterior)


def _whole(x: Any) -> torch.Tensor:
    """A tensor of every row of ``x`` (a tensor already, or a ``cache.Rows`` view gathered)."""
    return x if isinstance(x, torch.Tensor) else x[:]


def harmonise_pixels(pixels: np.ndarray, method: str) -> np.ndarray:
    """Cropped, resized uint8 images ``N x S x S`` (each the box itself) harmonised, as uint8."""
    if check_method(method) == "none" or len(pixels) == 0:
        return pixels
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
    return apply(x, luts(x, method)).numpy()


def reference_quantiles(boxes: torch.Tensor) -> list[float]:
    """The 257 quantiles (0, 1/256, ..., 1) of the pooled gray levels of ``boxes``: how
    ``harmonise_reference.json`` was made (the bundled ct-sars-mini train split at 64 px)."""
    x = boxes.reshape(-1).double()
    q = torch.quantile(
        x[torch.linspace(0, len(x) - 1, min(len(x), 2_000_000)).long()],
        torch.linspace(0, 1, 257, dtype=torch.float64),
    )
    return [round(float(v), 3) for v in q]


__all__ = [
    "HARMONISE",
    "apply",
    "harmonise_arrays",
    "harmonise_pixels",
    "luts",
    "reference",
    "reference_quantiles",
]
