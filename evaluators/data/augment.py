"""The paper's batches: class-balanced sampling and the COVIDNet-CT augmentations.

Augmentations (Gunraj et al.), each applied to an image with probability 0.5: box jitter
+-7.5 %, rotation +-20 degrees, horizontal and vertical shear +-0.2, horizontal flip, intensity
shift +-15 gray levels and intensity scale +-10 %; optionally the official repository's exterior
exclusion (everything outside the body box replaced by its mean gray level). They run on tensors
with ``torchvision.transforms.v2.functional``, on whatever device the batch is on; every random
number comes from one ``torch.Generator``, so a seed gives the same batches on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from evaluators.data.cache import SplitArrays, to_float


@dataclass(frozen=True)
class Augmentation:
    """Magnitudes of the augmentations (defaults: the COVIDNet-CT paper)."""

    prob: float = 0.5
    jitter: float = 0.075  # box corners move by up to this fraction of the box size
    rotation: float = 20.0  # degrees
    shear: float = 0.2  # shear factor (tangent of the shear angle), each axis
    flip: bool = True  # horizontal flip
    shift: float = 15.0  # gray levels
    scale: float = 0.10  # relative

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be between 0 and 1, got {self.prob}")
        for name in ("jitter", "rotation", "shear", "shift", "scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.jitter > 0.075 + 1e-9:
            # the decoded-image cache keeps a margin of 7.5 % around each box, no more
            raise ValueError(f"jitter must be at most 0.075 (the cache's margin), got {self.jitter}")


PAPER = Augmentation()


def epoch_batches(
    labels: torch.Tensor, batch_size: int, balanced: bool, generator: torch.Generator
) -> list[torch.Tensor]:
    """The batches (index tensors) of one training epoch.

    ``ceil(N / batch_size)`` batches, so an epoch shows as many images either way. Balanced:
    every batch holds an equal share of each class present in ``labels`` (shares differ by at most
    one image where ``batch_size`` is not a multiple of the class count; which classes get the
    extra image rotates), each class drawn without replacement from a shuffled order that is
    reshuffled whenever it runs out, so small classes are over-sampled and large ones see a
    different subset each epoch. Otherwise a shuffled pass over all images; a last batch of one
    image is merged into the one before (batch norm needs two).
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    n = int(labels.shape[0])
    if n == 0:
        raise ValueError("cannot make batches of zero images")
    n_batches = math.ceil(n / batch_size)
    if not balanced:
        order = torch.randperm(n, generator=generator)
        batches = list(order.split(batch_size))
        if len(batches) > 1 and batches[-1].numel() == 1:
            last = batches.pop()
            batches[-1] = torch.cat([batches[-1], last])
        return batches
    classes = torch.unique(labels).tolist()
    k = len(classes)
    pools = [torch.nonzero(labels == c).flatten() for c in classes]
    streams = [_Stream(pool, generator) for pool in pools]
    base, extra = divmod(batch_size, k)
    start = int(torch.randint(k, (1,), generator=generator))
    batches = []
    for b in range(n_batches):
        lucky = {(start + b * extra + j) % k for j in range(extra)}
        parts = [s.take(base + (1 if c in lucky else 0)) for c, s in enumerate(streams)]
        batch = torch.cat(parts)
        batches.append(batch[torch.randperm(batch.numel(), generator=generator)])
    return batches


class _Stream:
    """Indices of one class without replacement, reshuffled each time they run out."""

    def __init__(self, pool: torch.Tensor, generator: torch.Generator) -> None:
        self.pool, self.gen = pool, generator
        self.order = pool[torch.randperm(pool.numel(), generator=generator)]
        self.pos = 0

    def take(self, count: int) -> torch.Tensor:
        out = []
        while count > 0:
            if self.pos == self.order.numel():
                self.order = self.pool[torch.randperm(self.pool.numel(), generator=self.gen)]
                self.pos = 0
            got = self.order[self.pos : self.pos + count]
            self.pos += got.numel()
            count -= got.numel()
            out.append(got)
        return torch.cat(out) if out else self.pool[:0]


def exclude_exterior(canvas: torch.Tensor, exterior: torch.Tensor, margin: int, size: int) -> torch.Tensor:
    """Canvases with everything outside the box (the centre ``size`` square) set to ``exterior``."""
    inside = torch.zeros(canvas.shape[-2:], dtype=torch.bool, device=canvas.device)
    inside[margin : margin + size, margin : margin + size] = True
    fill = exterior.to(canvas.device, canvas.dtype).view(-1, 1, 1)
    return torch.where(inside, canvas, fill)


def make_batch(
    arrays: SplitArrays,
    index: torch.Tensor,
    *,
    channels: int = 3,
    device: torch.device | str = "cpu",
    augment: bool = False,
    exterior_exclusion: bool = False,
    generator: torch.Generator | None = None,
    magnitudes: Augmentation = PAPER,
) -> torch.Tensor:
    """Images ``index`` of ``arrays`` as a float ``N x channels x S x S`` batch in [0, 1].

    Without ``augment`` this is the box crop (exterior exclusion then changes nothing: nothing
    outside the box is visible); with it, the paper's augmentations drawn from ``generator``.
    """
    if not augment:
        return arrays.batch(index, channels, device)
    if generator is None:
        raise ValueError("augment=True needs a generator (for reproducible batches)")
    m, s = arrays.margin, arrays.image_size
    canvas = arrays.canvas[index].to(device, non_blocking=True)
    if exterior_exclusion:
        canvas = exclude_exterior(canvas, arrays.exterior[index], m, s)
    x = augment_canvas(
        canvas,
        arrays.valid[index],
        arrays.exterior[index] if exterior_exclusion else None,
        m,
        s,
        generator,
        magnitudes,
    )
    return to_float(x, channels)


def augment_canvas(
    canvas: torch.Tensor,
    valid: torch.Tensor,
    fill: torch.Tensor | None,
    margin: int,
    size: int,
    generator: torch.Generator,
    magnitudes: Augmentation = PAPER,
) -> torch.Tensor:
    """Augmented ``N x size x size`` float images (gray levels 0-255) from uint8 canvases.

    Args:
        canvas: ``N x (size + 2 margin)^2`` uint8; the box is the centre square.
        valid: ``N x 4`` ``(x0, y0, x1, y1)`` canvas region inside the image (jitter stays in it).
        fill: per-image gray level for pixels rotated or sheared in from outside (None: 0).
        margin: the canvas margin.
        size: output side.
        generator: source of every random number.
        magnitudes: augmentation ranges and probability.
    """
    a = magnitudes
    n = canvas.shape[0]
    u = torch.rand((n, 11), generator=generator, dtype=torch.float64).tolist()
    out = torch.empty((n, size, size), dtype=torch.float32, device=canvas.device)
    for i, r in enumerate(u):
        img = canvas[i : i + 1].float()  # 1 x H x W, gray levels
        top, left, h, w = margin, margin, size, size
        if r[0] < a.prob:  # box jitter: each box edge moves by up to +-jitter of the box side
            d = [(2 * v - 1) * a.jitter * size for v in r[1:5]]
            x0, y0, x1, y1 = (int(t) for t in valid[i].tolist())
            left = max(x0, min(round(margin + d[0]), x1 - 1))
            top = max(y0, min(round(margin + d[1]), y1 - 1))
            right = min(x1, max(round(margin + size + d[2]), left + 1))
            bottom = min(y1, max(round(margin + size + d[3]), top + 1))
            h, w = bottom - top, right - left
        if (h, w) == (size, size):
            img = img[:, top : top + size, left : left + size]
        else:
            img = F.resized_crop(
                img, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True
            )
        rotate = r[5] < a.prob
        shear = r[6] < a.prob
        if rotate or shear:
            angle = (2 * r[7] - 1) * a.rotation if rotate else 0.0
            sx = math.degrees(math.atan((2 * r[8] - 1) * a.shear)) if shear else 0.0
            sy = math.degrees(math.atan((2 * r[9] - 1) * a.shear)) if shear else 0.0
            value = float(fill[i]) if fill is not None else 0.0
            img = F.affine(
                img,
                angle=angle,
                translate=[0, 0],
                scale=1.0,
                shear=[sx, sy],
                interpolation=InterpolationMode.BILINEAR,
                fill=[value],
            )
        if a.flip and r[10] < a.prob:
            img = F.horizontal_flip(img)
        out[i] = img[0]
    # intensity: independent draws for shift and scale, from a second block of random numbers
    v = torch.rand((n, 4), generator=generator, dtype=torch.float64).to(torch.float32)
    scale = torch.where(v[:, 0] < a.prob, 1 + (2 * v[:, 1] - 1) * a.scale, torch.ones(n))
    shift = torch.where(v[:, 2] < a.prob, (2 * v[:, 3] - 1) * a.shift, torch.zeros(n))
    out = out * scale.to(out.device).view(-1, 1, 1) + shift.to(out.device).view(-1, 1, 1)
    return out.clamp_(0.0, 255.0)
