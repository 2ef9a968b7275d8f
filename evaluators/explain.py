"""The explainability audit: does a model decide from the body, or from padding, table and marks?

The COVID-Net CT-2 paper audits its models with GSInquire (proprietary); this is the open version
with two attribution methods, both computed by captum (the ``[explain]`` extra):

* ``gradcam``: Grad-CAM on the last convolutional stage (``CovidNetCT.last_conv_stage``, or the
  stage a baseline's registry names), ReLU'd and upsampled bilinearly to the input size. Coarse
  where the stage is small (2 x 2 at 64 px for CT L, 16 x 16 at 512 px).
* ``integrated-gradients``: integrated gradients from a black image, summed over channels, then
  averaged over a small box (``smoothing_kernel``: one cell of a stride-32 feature map) before
  negatives are zeroed. Pixel-level gradients alternate in sign over any texture; clipping each
  pixel would count that noise as evidence wherever the image is bright (in a model that reads
  only a padding mark, half the positive mass landed in the body), while the smoothed map keeps
  what pushes the class locally. Pixels equal to the baseline (pure black padding) get no
  attribution by construction; anything brighter (a table, a burnt-in mark, a label) does.

Both explain the predicted class. What is measured is the share of the *positive* attribution
that falls inside the body box, against its share of the image area (``box_fraction``: what a
uniform map would give).

The view: training crops each slice to its body box, so the model never sees what lies outside.
An audit of "inside versus outside" needs the outside, so the model is run here on the *whole*
slice, resized to the training image size like a training crop is (bilinear, divided by 255,
gray repeated to every channel), and the box is mapped into that input. The body therefore
appears smaller than in training and predictions can differ from the cropped test predictions;
the summary's ``accuracy`` is the accuracy on this view, so a reader sees how far it moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evaluators.data.classes import CLASS_NAMES
from evaluators.device import input_channels
from evaluators.inference import ImageError, body_box, load_gray, require
from space.errors import UserInputError

METHODS = ("gradcam", "integrated-gradients")
MOSTLY_OUTSIDE = 0.5  # an image whose share inside is below this is flagged
IG_STEPS = 32
SUMMARY_IMAGES = 10  # images kept in a summary (most outside first); explain.json keeps all
WHOLE_IMAGE = 0.98  # boxes covering this share of the slices on average leave nothing outside


class ExplainError(UserInputError, ValueError):
    """Bad input to the audit (an image, a box, a method); the message names it."""


def require_captum() -> ModuleType:
    """``captum.attr``, or an error naming the extra that installs it."""
    return require("captum.attr", extra="explain")


@dataclass(frozen=True)
class ExplainInput:
    """One slice to explain.

    Attributes:
        name: what reports call it (the label file's name, or the file name).
        path: the image file.
        box: the body box ``(xmin, ymin, xmax, ymax)`` in image pixels, max exclusive.
        label: the true class, where known.
        box_source: ``labels`` (a label file) or ``estimated`` (``evaluators.inference.body_box``).
    """

    name: str
    path: Path
    box: tuple[int, int, int, int]
    label: int | None = None
    box_source: str = "labels"


def inputs_from_samples(samples: Sequence[Any], n: int | None = None) -> list[ExplainInput]:
    """``n`` samples of a split (``evaluators.data.Sample``), classes taken in turn in label-file
    order, so a few images still show every class; all of them where ``n`` is ``None``."""
    if n is not None and n < 1:
        raise ExplainError(f"n must be at least 1, got {n}")
    by_class: dict[int, list[Any]] = {}
    for s in samples:
        by_class.setdefault(int(s.label), []).append(s)
    queues = [by_class[c] for c in sorted(by_class)]
    picked: list[Any] = []
    depth = 0
    while any(depth < len(q) for q in queues) and (n is None or len(picked) < n):
        for q in queues:
            if depth < len(q) and (n is None or len(picked) < n):
                picked.append(q[depth])
        depth += 1
    return [ExplainInput(s.filename, Path(s.path), tuple(s.box), int(s.label)) for s in picked]


def read_label_file(path: str | Path) -> dict[str, tuple[int, tuple[int, int, int, int]]]:
    """File name -> ``(class, box)`` from a COVIDx label file (``filename class xmin ymin xmax ymax``)."""
    p = Path(path)
    if not p.is_file():
        raise ExplainError(f"{p}: no such label file")
    out: dict[str, tuple[int, tuple[int, int, int, int]]] = {}
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            label, x0, y0, x1, y1 = (int(v) for v in parts[1:])
        except ValueError:
            raise ExplainError(
                f"{p} line {n}: expected 'filename class xmin ymin xmax ymax', got {line.strip()!r}"
            ) from None
        out[Path(parts[0]).name] = (label, (x0, y0, x1, y1))
    return out


def inputs_from_files(paths: Sequence[str | Path], labels: str | Path | None = None) -> list[ExplainInput]:
    """Image files to explain; boxes and classes from ``labels`` (a COVIDx label file), else the body
    box is estimated as ``search predict`` does and the class is unknown."""
    table = read_label_file(labels) if labels is not None else None
    out = []
    for path in paths:
        p = Path(path)
        if table is not None:
            if p.name not in table:
                raise ExplainError(f"{p.name} is not listed in the label file {labels}")
            label, box = table[p.name]
            out.append(ExplainInput(p.name, p, box, label, "labels"))
        else:
            out.append(ExplainInput(p.name, p, body_box(_read(p)), None, "estimated"))
    return out


# ----------------------------------------------------------------------------- the measurement
def _read(path: Path) -> np.ndarray:
    try:
        return load_gray(path)
    except ImageError as e:
        raise ExplainError(str(e)) from None


def scale_box(box: Sequence[int], width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """``box`` in the pixels of a ``width x height`` image, mapped into the ``size x size`` input."""
    x0, y0, x1, y1 = box
    sx, sy = size / width, size / height
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def box_mask(box: Sequence[float], size: int) -> np.ndarray:
    """``size x size`` booleans: the pixels whose centres lie inside ``box`` (input pixels)."""
    centres = np.arange(size) + 0.5
    x0, y0, x1, y1 = box
    cols = (centres >= x0) & (centres < x1)
    rows = (centres >= y0) & (centres < y1)
    return rows[:, None] & cols[None, :]


def share_inside(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """The share of the positive attribution inside ``mask``; ``None`` where there is none at all."""
    positive = np.clip(heatmap.astype(np.float64), 0.0, None)
    total = float(positive.sum())
    if not total > 0 or not math.isfinite(total):
        return None
    return float(positive[mask].sum() / total)


def to_model_input(gray: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """A whole slice as the model's ``(1, channels, size, size)`` float input in [0, 1]."""
    from PIL import Image

    image = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
    resized = np.asarray(image, dtype=np.float32)
    x = torch.from_numpy(resized / np.float32(255.0))[None, None]
    return x.expand(1, channels, size, size).contiguous()


def smoothing_kernel(size: int) -> int:
    """Side of the box filter applied to integrated gradients at input side ``size``: one cell of a
    stride-32 feature map, odd, at least 3 (3 at 32-64 px, 5 at 128, 17 at 512)."""
    return max(3, (size // 32) | 1)


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    method: str,
    layer: nn.Module | None = None,
    steps: int = IG_STEPS,
) -> np.ndarray:
    """The attribution map ``(H, W)`` of ``x`` (one image) for class ``target``, negatives zeroed."""
    attr = require_captum()
    if method == "gradcam":
        if layer is None:
            raise ExplainError("Grad-CAM needs the layer to explain (the last convolutional stage)")
        cam = attr.LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
        up = attr.LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
        heat = up[0, 0]
    elif method == "integrated-gradients":
        ig = attr.IntegratedGradients(model)
        out = ig.attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=steps, internal_batch_size=min(steps, 16)
        )
        signed = out.detach().sum(1, keepdim=True)
        k = smoothing_kernel(int(x.shape[-1]))
        heat = F.avg_pool2d(signed, k, stride=1, padding=k // 2, count_include_pad=False)[0, 0]
    else:
        raise ExplainError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return np.clip(heat.float().cpu().numpy(), 0.0, None)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ImageAttribution:
    """The audit of one slice.

    Attributes:
        name: the image's name; path: its file.
        label: the true class (``None`` where unknown); predicted: the class explained.
        probability: the predicted class's softmax probability on the whole-slice view.
        box: the body box in image pixels; box_source: where it came from.
        share_inside: share of the positive attribution inside the box (``None``: no positive
            attribution anywhere).
        box_fraction: the box's share of the image area.
        method: ``gradcam`` or ``integrated-gradients``.
        heatmap: the attribution map at the model's input size (not serialised).
        image: the slice as read, 8-bit gray (not serialised).
    """

    name: str
    path: str
    label: int | None
    predicted: int
    probability: float
    box: tuple[int, int, int, int]
    box_source: str
    share_inside: float | None
    box_fraction: float
    method: str
    heatmap: np.ndarray = field(repr=False, compare=False)
    image: np.ndarray = field(repr=False, compare=False)
    class_names: tuple[str, ...] = field(default=CLASS_NAMES, repr=False, compare=False)

    @property
    def mostly_outside(self) -> bool:
        return self.share_inside is not None and self.share_inside < MOSTLY_OUTSIDE

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "label": self.label,
            "label_name": None if self.label is None else _class_name(self.label, self.class_names),
            "predicted": self.predicted,
            "predicted_name": _class_name(self.predicted, self.class_names),
            "probability": self.probability,
            "correct": None if self.label is None else self.label == self.predicted,
            "box": list(self.box),
            "box_source": self.box_source,
            "share_inside": self.share_inside,
            "box_fraction": self.box_fraction,
            "mostly_outside": self.mostly_outside,
            "method": self.method,
        }


def _class_name(index: int, names: Sequence[str] = CLASS_NAMES) -> str:
    """A class's display name (the data's ``classes.txt`` names, where the model records them)."""
    return names[index] if 0 <= index < len(names) else f"class {index}"


@dataclass(frozen=True)
class ExplainSummary:
    """The audit of a set of slices (a split, or the files given).

    Attributes:
        method: the attribution method; image_size: the side the model ran at.
        n: images explained; n_scored: those with any positive attribution.
        mean_share_inside, median_share_inside: over the scored images (``None`` if none).
        mean_box_fraction: the mean share of the image area inside the box (a uniform map's score).
        n_mostly_outside: images whose share inside is below ``MOSTLY_OUTSIDE``.
        accuracy: percent correct on the whole-slice view, over images with a known class.
        source: what was explained (a split of a data folder, or files).
        images: per image ``name``, ``share_inside``, ``predicted_name``, ``probability``,
            ``label_name``, most attribution outside first (at most ``SUMMARY_IMAGES``).
    """

    method: str
    image_size: int
    n: int
    n_scored: int
    mean_share_inside: float | None
    median_share_inside: float | None
    mean_box_fraction: float
    n_mostly_outside: int
    accuracy: float | None
    source: str = ""
    images: tuple[Mapping[str, Any], ...] = ()

    @property
    def boxes_fill_images(self) -> bool:
        """Whether the boxes cover (nearly) the whole slices: nothing lies outside, the audit cannot
        tell anything (the bundled data's boxes are its whole, already cropped, images)."""
        return self.mean_box_fraction >= WHOLE_IMAGE

    @property
    def mostly_outside(self) -> list[str]:
        """Names of the listed images where most attribution falls outside the box."""
        return [
            str(i["name"])
            for i in self.images
            if i.get("share_inside") is not None and i["share_inside"] < MOSTLY_OUTSIDE
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "image_size": self.image_size,
            "n": self.n,
            "n_scored": self.n_scored,
            "mean_share_inside": self.mean_share_inside,
            "median_share_inside": self.median_share_inside,
            "mean_box_fraction": self.mean_box_fraction,
            "n_mostly_outside": self.n_mostly_outside,
            "mostly_outside_threshold": MOSTLY_OUTSIDE,
            "accuracy": self.accuracy,
            "source": self.source,
            "images": [dict(i) for i in self.images],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExplainSummary:
        keys = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in keys}
        kw["images"] = tuple(dict(i) for i in d.get("images", ()))
        return cls(**kw)


def order_most_outside(results: Sequence[ImageAttribution]) -> list[ImageAttribution]:
    """Most attribution outside the box first; images without positive attribution last."""
    return sorted(results, key=lambda r: (r.share_inside is None, r.share_inside or 0.0, r.name))


def summarize(
    results: Sequence[ImageAttribution], image_size: int, source: str = "", keep: int = SUMMARY_IMAGES
) -> ExplainSummary:
    """The summary over ``results`` (one method)."""
    if not results:
        raise ExplainError("no images were explained")
    methods = {r.method for r in results}
    if len(methods) != 1:
        raise ExplainError(f"a summary covers one method, got {', '.join(sorted(methods))}")
    shares = [r.share_inside for r in results if r.share_inside is not None]
    labelled = [r for r in results if r.label is not None]
    listed = [
        {
            "name": r.name,
            "share_inside": r.share_inside,
            "predicted_name": _class_name(r.predicted, r.class_names),
            "probability": r.probability,
            "label_name": None if r.label is None else _class_name(r.label, r.class_names),
        }
        for r in order_most_outside(results)[:keep]
    ]
    return ExplainSummary(
        method=methods.pop(),
        image_size=image_size,
        n=len(results),
        n_scored=len(shares),
        mean_share_inside=float(np.mean(shares)) if shares else None,
        median_share_inside=float(np.median(shares)) if shares else None,
        mean_box_fraction=float(np.mean([r.box_fraction for r in results])),
        n_mostly_outside=sum(r.mostly_outside for r in results),
        accuracy=100.0 * sum(r.label == r.predicted for r in labelled) / len(labelled) if labelled else None,
        source=source,
        images=tuple(listed),
    )


def explain_images(
    model: nn.Module,
    inputs: Sequence[ExplainInput],
    *,
    method: str = "gradcam",
    image_size: int,
    layer: nn.Module | None = None,
    steps: int = IG_STEPS,
    device: str | torch.device = "cpu",
    on_image: Callable[[ImageAttribution], None] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> list[ImageAttribution]:
    """Explain each slice's predicted class and measure the share of attribution inside its box.

    Args:
        model: the classifier (put in eval mode here).
        inputs: the slices with their boxes.
        method: one of ``METHODS``.
        image_size: the side the model runs at (its training image size).
        layer: Grad-CAM's layer; default ``model.last_conv_stage``.
        steps: integration steps of integrated gradients.
        device: where the model runs.
        on_image: called after each image (progress).
        class_names: the classes' display names (the training data's ``classes.txt``).
    """
    if method not in METHODS:
        raise ExplainError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if steps < 1:
        raise ExplainError(f"steps must be at least 1, got {steps}")
    require_captum()
    if method == "gradcam" and layer is None:
        layer = getattr(model, "last_conv_stage", None)
        if layer is None:
            raise ExplainError(f"{type(model).__name__} has no last_conv_stage; pass the layer for Grad-CAM")
    model = model.eval().to(device)
    channels = input_channels(model)
    results = []
    for item in inputs:
        gray = _read(Path(item.path))
        h, w = gray.shape
        x0, y0, x1, y1 = item.box
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ExplainError(f"{item.name}: box {tuple(item.box)} does not lie inside the {w}x{h} image")
        x = to_model_input(gray, image_size, channels).to(device)
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1)[0].cpu()
        predicted = int(probs.argmax())
        heat = attribute(model, x, predicted, method, layer, steps)
        mask = box_mask(scale_box(item.box, w, h, image_size), image_size)
        result = ImageAttribution(
            name=item.name,
            path=str(item.path),
            label=item.label,
            predicted=predicted,
            probability=float(probs[predicted]),
            box=(int(x0), int(y0), int(x1), int(y1)),
            box_source=item.box_source,
            share_inside=share_inside(heat, mask),
            box_fraction=(x1 - x0) * (y1 - y0) / (w * h),
            method=method,
            heatmap=heat,
            image=gray,
            class_names=tuple(class_names),
        )
        results.append(result)
        if on_image is not None:
            on_image(result)
    return results


__all__ = [
    "IG_STEPS",
    "METHODS",
    "MOSTLY_OUTSIDE",
    "ExplainError",
    "ExplainInput",
    "ExplainSummary",
    "ImageAttribution",
    "attribute",
    "box_mask",
    "explain_images",
    "inputs_from_files",
    "inputs_from_samples",
    "order_most_outside",
    "read_label_file",
    "require_captum",
    "scale_box",
    "share_inside",
    "summarize",
    "to_model_input",
]
