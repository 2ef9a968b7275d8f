"""Inference on CT slices a user brings: automatic body crop, resize, class probabilities.

The crop follows what the official COVID-Net CT repository does for inference on slices without a
box (``data_utils.auto_body_crop``): blur, Otsu threshold over the non-black pixels, erode, keep the
largest connected region and crop to its bounding box. Connected regions are found here with numpy
(runs of foreground pixels per row, joined across rows with a union-find), so no image library
beyond Pillow is needed.

Models run through ONNX Runtime (``OnnxClassifier``, the ``[onnx]`` extra) or PyTorch
(``TorchClassifier``); both take float32 batches ``(N, C, H, W)`` of pixels divided by 255.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from evaluators.data.classes import CLASS_NAMES
from evaluators.extras import MissingExtraError
from evaluators.extras import require as _require
from space.errors import UserInputError

METADATA_PREFIX = "covidnet_nas."  # keys of the ONNX model's metadata_props written by the export
_GAUSS5 = None  # the 5-tap kernel, built on first use


def require(module: str, extra: str = "onnx") -> ModuleType:
    """``evaluators.extras.require`` with this module's extra as the default."""
    return _require(module, extra)


# ----------------------------------------------------------------------------- body crop
def _gaussian_kernel5() -> np.ndarray:
    # OpenCV's GaussianBlur with ksize 5 and sigma 0 uses sigma = 0.3 * ((5 - 1) / 2 - 1) + 0.8 = 1.1.
    global _GAUSS5
    if _GAUSS5 is None:
        x = np.arange(-2, 3, dtype=np.float64)
        k = np.exp(-(x**2) / (2 * 1.1**2))
        _GAUSS5 = k / k.sum()
    return _GAUSS5


def gaussian_blur5(image: np.ndarray) -> np.ndarray:
    """A 5x5 Gaussian blur (sigma 1.1) with mirrored borders, rounded back to ``uint8``."""
    k = _gaussian_kernel5()
    x = np.pad(image.astype(np.float64), 2, mode="reflect")
    h, w = image.shape
    rows = sum(k[i] * x[:, i : i + w] for i in range(5))
    out = sum(k[i] * rows[i : i + h, :] for i in range(5))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of 8-bit values: foreground is ``values > threshold``."""
    hist = np.bincount(values.ravel().astype(np.uint8), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    s0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (s0[-1] * w0 - s0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between))


def erode(mask: np.ndarray, size: int = 7) -> np.ndarray:
    """Binary erosion with a ``size x size`` square (separable); outside the image counts as set."""
    r = size // 2
    out = mask.astype(bool)
    for axis in (0, 1):
        padded = np.pad(out, [(r, r) if a == axis else (0, 0) for a in (0, 1)], constant_values=True)
        n = out.shape[axis]
        acc = np.ones_like(out)
        for i in range(size):
            acc &= padded[i : i + n, :] if axis == 0 else padded[:, i : i + n]
        out = acc
    return out


def _row_runs(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """``(row, start, end)`` of every run of set pixels, row by row (end exclusive)."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows_s, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return list(zip(rows_s.tolist(), starts.tolist(), ends.tolist()))


def largest_region_box(mask: np.ndarray) -> tuple[tuple[int, int, int, int], int] | None:
    """The bounding box ``(xmin, ymin, xmax, ymax)`` and pixel count of the largest 8-connected region.

    Returns ``None`` for an empty mask. Runs in consecutive rows belong to one region when they
    overlap or touch diagonally; a union-find joins them.
    """
    runs = _row_runs(mask)
    if not runs:
        return None
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev: list[int] = []  # run indices of the previous row
    cur: list[int] = []
    row = -2
    for i, (r, s, e) in enumerate(runs):
        if r != row:
            prev = cur if r == row + 1 else []
            cur, row, j = [], r, 0
        # runs are sorted by start within a row: walk the previous row's runs alongside
        while j < len(prev) and runs[prev[j]][2] < s:  # ends (exclusive) before s: no touch
            j += 1
        k = j
        while k < len(prev) and runs[prev[k]][1] <= e:  # starts at most one past our end
            a, b = find(i), find(prev[k])
            if a != b:
                parent[a] = b
            k += 1
        cur.append(i)
    stats: dict[int, list[int]] = {}
    for i, (r, s, e) in enumerate(runs):
        st = stats.setdefault(find(i), [0, s, r, e, r + 1])
        st[0] += e - s
        st[1], st[2] = min(st[1], s), min(st[2], r)
        st[3], st[4] = max(st[3], e), max(st[4], r + 1)
    area, x0, y0, x1, y1 = max(stats.values(), key=lambda st: st[0])
    return (x0, y0, x1, y1), area


def body_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """The body's box ``(xmin, ymin, xmax, ymax)`` on an 8-bit slice, min inclusive, max exclusive.

    Blur (5x5 Gaussian), Otsu threshold over the non-black pixels, 7x7 erosion (cuts the thin CT
    table and cables off the body), largest connected region. Where nothing is found (a blank
    image) the whole image is the box.
    """
    h, w = image.shape
    blurred = gaussian_blur5(image)
    nonzero = blurred[blurred > 0]
    if nonzero.size == 0:
        return 0, 0, w, h
    mask = erode(blurred > otsu_threshold(nonzero), 7)
    found = largest_region_box(mask)
    if found is None:
        return 0, 0, w, h
    return found[0]


# ----------------------------------------------------------------------------- images
class ImageError(UserInputError, ValueError):
    """An input file that is not a readable image; the message names the file."""


def load_gray(path: str | Path) -> np.ndarray:
    """A file as an 8-bit grayscale ``(H, W)`` array; ``ImageError`` naming the file otherwise."""
    from evaluators.data.images import NotAnImage, decode_gray

    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such file")
    try:
        return decode_gray(p)  # the training rule: 8-bit only, a size limit, never clipped
    except NotAnImage:
        raise ImageError(f"{p}: not an image (Pillow cannot identify the format)") from None
    except OSError as e:
        raise ImageError(f"{p}: unreadable image ({e})") from None


def crop_resize(path: str | Path, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The image at ``path`` cropped to ``box`` and resized to ``size x size`` as ``uint8``, exactly as
    training's data pipeline renders a box (``evaluators.cache.render``), so inference sees the
    same pixels training did."""
    from evaluators.data.cache import margin_for, render

    canvas, _, _ = render(Path(path), box, size)
    m = margin_for(size)
    return np.ascontiguousarray(canvas[m : m + size, m : m + size])


def to_input(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Stacked ``uint8`` images ``(N, H, W)`` to a model's float32 input ``(N, C, H, W)`` in [0, 1]."""
    x = pixels.astype(np.float32)[:, None] / np.float32(255.0)
    return np.ascontiguousarray(np.repeat(x, channels, axis=1))


# ----------------------------------------------------------------------------- classifiers
@dataclass
class Classifier:
    """What a model needs to classify slices: a logits function and its input description.

    Attributes:
        logits: float32 ``(N, C, H, W)`` -> float32 ``(N, classes)``.
        image_size: the side the model takes.
        channels: input channels (the gray slice is repeated).
        class_names: one name per output.
        runtime: ``onnxruntime`` or ``torch``.
        source: the file(s) it was loaded from.
        harmonise: the intensity harmonisation the model was trained with, applied to the
            cropped, resized pixels before they are scaled (``evaluators.data.harmonise``).
    """

    logits: Callable[[np.ndarray], np.ndarray]
    image_size: int
    channels: int
    class_names: tuple[str, ...] = CLASS_NAMES
    runtime: str = ""
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    harmonise: str = "none"


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` (``threads`` intra-op threads, default: its own)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_classifier(path: str | Path, threads: int | None = None) -> Classifier:
    """A ``Classifier`` running ``path`` in ONNX Runtime; its input size and class names come from
    the input shape and the metadata the export writes."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such ONNX model")
    try:
        session = ort_session(p, threads)
    except MissingExtraError:
        raise
    except Exception as e:
        raise ImageError(f"{p}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None
    inp = session.get_inputs()[0]
    shape = list(inp.shape)
    meta = {
        k[len(METADATA_PREFIX) :]: v
        for k, v in session.get_modelmeta().custom_metadata_map.items()
        if k.startswith(METADATA_PREFIX)
    }
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ImageError(f"{p}: expected an input of shape (N, C, H, W) with fixed C, H, W, got {shape}")
    names = tuple(json.loads(meta["class_names"])) if "class_names" in meta else CLASS_NAMES
    name = inp.name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0])

    from evaluators.data.harmonise import HARMONISE

    harmonise = meta.get("harmonise", "none")
    if harmonise not in HARMONISE:
        raise ImageError(
            f"{p}: unknown harmonisation {harmonise!r} in its metadata (known: {', '.join(HARMONISE)})"
        )
    return Classifier(run, int(shape[2]), int(shape[1]), names, "onnxruntime", str(p), meta, harmonise)


def torch_classifier(
    model: Any,
    image_size: int,
    channels: int,
    class_names: Sequence[str] = CLASS_NAMES,
    source: str = "",
    harmonise: str = "none",
) -> Classifier:
    """A ``Classifier`` running a PyTorch module in eval mode without autograd."""
    import torch

    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()

    return Classifier(run, image_size, channels, tuple(class_names), "torch", source, harmonise=harmonise)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z.astype(np.float64))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- predicting files
@dataclass(frozen=True)
class Prediction:
    """The class of one image file, or why it could not be read (``error`` set, the rest empty).

    Attributes:
        file: the file as given.
        label: predicted class index (-1 on error).
        class_name: its name.
        probabilities: class name -> probability.
        box: the body box used for the crop, ``(xmin, ymin, xmax, ymax)`` in the file's pixels.
        error: the reason the file was not predicted, naming it.
    """

    file: str
    label: int = -1
    class_name: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    box: tuple[int, int, int, int] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "label": self.label,
            "class": self.class_name,
            "probabilities": dict(self.probabilities),
            "box": list(self.box) if self.box else None,
        }


def predict_files(
    classifier: Classifier, files: Sequence[str | Path], *, crop: bool = True, batch_size: int = 8
) -> list[Prediction]:
    """Classify image files; a file that cannot be read gets a ``Prediction`` with ``error`` set
    and does not stop the others. Results are in the order of ``files``."""
    from evaluators.data.harmonise import harmonise_pixels  # torch, imported where it is used

    out: list[Prediction | None] = [None] * len(files)
    ready: list[tuple[int, np.ndarray, tuple[int, int, int, int]]] = []
    for i, f in enumerate(files):
        try:
            gray = load_gray(f)
            box = body_box(gray) if crop else (0, 0, gray.shape[1], gray.shape[0])
            pixels = crop_resize(f, box, classifier.image_size)
        except ImageError as e:
            out[i] = Prediction(str(f), error=str(e))
            continue
        except (OSError, ValueError) as e:
            out[i] = Prediction(str(f), error=f"{f}: unreadable image ({e})")
            continue
        ready.append((i, pixels, box))
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        pixels = harmonise_pixels(np.stack([c[1] for c in chunk]), classifier.harmonise)
        x = to_input(pixels, classifier.channels)
        probs = softmax(classifier.logits(x))
        for (i, _, box), p in zip(chunk, probs):
            label = int(np.argmax(p))
            out[i] = Prediction(
                str(files[i]),
                label,
                classifier.class_names[label],
                {n: float(v) for n, v in zip(classifier.class_names, p)},
                tuple(int(v) for v in box),  # type: ignore[arg-type]
            )
    return [p for p in out if p is not None]


# ----------------------------------------------------------------------------- evaluating on a split
def evaluate_classifier(
    classifier: Classifier,
    dataset: Any,
    split: str,
    *,
    batch_size: int = 64,
    cache_dir: Any = None,
    seed: int = 0,
) -> Any:
    """The metrics of ``classifier`` on ``split`` of ``dataset``, computed as training evaluates a
    model: the same decoded pixels (``evaluators.cache.load_arrays`` at the classifier's input
    size), the same scaling, and ``evaluators.metrics.compute_metrics`` with the same bootstrap
    ``seed``, so the metrics a trial stored are reproduced on the same split.

    Returns:
        An ``evaluators.metrics.EvalResult``.
    """
    from evaluators.data.cache import load_arrays, to_float
    from evaluators.data.harmonise import harmonise_arrays
    from evaluators.metrics import compute_metrics

    arrays = load_arrays(dataset, split, classifier.image_size, classifier.channels, cache_dir)
    arrays = harmonise_arrays(arrays, classifier.harmonise)
    preds = []
    for start in range(0, len(arrays), batch_size):
        x = to_float(arrays.images[start : start + batch_size], classifier.channels)
        preds.append(classifier.logits(x.numpy()).argmax(1))
    pred = np.concatenate(preds) if preds else np.empty(0, np.int64)
    return compute_metrics(arrays.labels, pred, len(classifier.class_names), arrays.sources, seed)
