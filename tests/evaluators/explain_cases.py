"""Synthetic CT-like slices for the explainability audit's tests, and a tiny trainable network.

A slice is ``SIZE x SIZE``: dark padding (gray 8), a round "body" (gray 100, noisy) whose
bounding box is ``BOX``, and inside the body one bright lesion, a filled disk or a ring of about the
same number of pixels (so neither class is "more bright stuff": each has evidence of its own).

* ``clean``: the lesion's shape gives the class (disk: COVID-19, ring: Normal); nothing outside
  the body differs between classes.
* ``marked``: the lesion's shape is drawn at random, independent of the class, and a bright mark
  in the padding above or below the body gives the class away (a square: COVID-19, a bar:
  Normal). The mark is then the only information, so a model that is accurate on these images
  must have read the padding: the audit has to say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from evaluators.training import recalibrate_batch_norm
from space import ArchSpec, BlockSpec, CovidNetCT, StageSpec, StemSpec, build

SIZE = 32
BOX = (6, 6, 26, 26)  # the body's bounding box: the disk of radius 10 centred at (16, 16)
CLASSES = (0, 2)  # Normal, COVID-19


def tiny_spec() -> ArchSpec:
    """Two basic blocks on a stride-1 stem: a 16 x 16 last stage at 32 px (Grad-CAM can localise)."""
    return ArchSpec(
        name="tiny",
        stem=StemSpec(out_channels=8, kernel_size=3, stride=1, pool=False, in_channels=1),
        stages=(
            StageSpec((BlockSpec(16, 8, type="basic"),)),
            StageSpec((BlockSpec(16, 8, type="basic", stride=2),)),
        ),
    )


def make_slices(n: int, marked: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 slices ``(n, SIZE, SIZE)`` and their classes, alternating Normal / COVID-19."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    body = (xx + 0.5 - 16) ** 2 + (yy + 0.5 - 16) ** 2 <= 100
    images, labels = [], []
    for i in range(n):
        label = CLASSES[i % 2]
        img = rng.normal(8, 4, (SIZE, SIZE))
        img[body] = rng.normal(100, 10, int(body.sum()))
        disk = label == 2 if not marked else bool(rng.random() < 0.5)
        lx, ly = (int(v) for v in rng.integers(12, 21, 2))
        d2 = (xx - lx) ** 2 + (yy - ly) ** 2
        img[(d2 <= 8) if disk else ((d2 >= 6) & (d2 <= 16))] = 240
        if marked:
            y0 = int(rng.integers(0, 2)) + (0 if rng.random() < 0.5 else 26)
            x0 = int(rng.integers(0, 24))
            if label == 2:
                img[y0 : y0 + 4, x0 : x0 + 4] = 255
            else:
                img[y0 + 1 : y0 + 3, x0 : x0 + 8] = 255
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(label)
    return np.stack(images), np.asarray(labels)


def train_tiny(
    images: np.ndarray, labels: np.ndarray, epochs: int = 14, seed: int = 0, lr: float = 1e-2
) -> CovidNetCT:
    """``tiny_spec`` trained with Adam on whole slices (no crop), deterministically, until it
    classifies its own training slices without error in eval mode.

    Batch norm's running statistics are recomputed after training (``recalibrate_batch_norm``):
    after 14 epochs at this learning rate the running averages lag the weights, and without the
    recalibration the eval-mode network sat at chance for some seeds and installs while the same
    weights in train mode were 100 % right. Training goes on (up to 3x ``epochs``) while a
    training slice is still misclassified, so the audit tests always get a model that solved its
    data; ``AssertionError`` if none did.
    """
    torch.manual_seed(seed)
    model = build(tiny_spec(), 3)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.from_numpy(images).float()[:, None] / 255.0
    y = torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, 3 * epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 16):
            idx = order[i : i + 16]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch >= epochs:
            recalibrate_batch_norm(model, x.split(16))
            model.eval()
            with torch.no_grad():
                if bool((model(x).argmax(1) == y).all()):
                    return model
    raise AssertionError(f"train_tiny: {3 * epochs} epochs did not fit {len(x)} training slices")


def write_slices(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "s") -> list[Path]:
    """PNG files of ``images`` and a COVIDx label file ``test.txt`` (box ``BOX``) beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, lines = [], []
    for i, (img, label) in enumerate(zip(images, labels)):
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
        lines.append(f"{path.name} {int(label)} {' '.join(str(v) for v in BOX)}")
    (folder / "test.txt").write_text("\n".join(lines) + "\n")
    return paths
