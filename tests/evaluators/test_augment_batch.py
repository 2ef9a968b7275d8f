"""The batched augmentation against the per-image reference: same parameters, same images."""

from __future__ import annotations

import pytest
import torch

from evaluators.data.augment import (
    PAPER,
    Augmentation,
    augment_batch,
    augment_canvas,
    batch_params,
    image_params,
)
from evaluators.data.cache import margin_for


def canvases(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Smooth random canvases (features about 8 pixels wide, like a downsampled CT slice)."""
    g = torch.Generator().manual_seed(seed)
    m = margin_for(size)
    side = size + 2 * m
    low = torch.rand((n, 1, side // 8, side // 8), generator=g) * 255
    canvas = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear")[:, 0]
    valid = torch.tensor([[0, 0, side, side]] * n, dtype=torch.int32)
    valid[::3] = torch.tensor([m, m, side - m, side - m])  # a box that is the whole image: no room
    valid[1::3] = torch.tensor([m // 2, 1, side, side - m // 3])
    fill = torch.randint(0, 256, (n,), generator=g).to(torch.uint8)
    return canvas.round().to(torch.uint8), valid, fill, m


@pytest.mark.parametrize(
    "magnitudes", [PAPER, Augmentation(prob=0.8, jitter=0.05, rotation=10, shear=0.1, shift=5, scale=0.2)]
)
def test_parameters_identical_under_one_seed(magnitudes: Augmentation) -> None:
    n, size = 200, 48
    _, valid, _, m = canvases(n, size)
    p = batch_params(n, valid, m, size, torch.Generator().manual_seed(7), magnitudes)
    u = torch.rand((n, 11), generator=torch.Generator().manual_seed(7), dtype=torch.float64).tolist()
    for i, r in enumerate(u):
        ref = image_params(r, [int(t) for t in valid[i].tolist()], m, size, magnitudes)
        assert p.crop[i].tolist() == [ref["top"], ref["left"], ref["height"], ref["width"]], i
        assert (bool(p.rotate[i]), bool(p.shear[i]), bool(p.flip[i])) == (
            ref["rotate"],
            ref["shear"],
            ref["flip"],
        )
        assert float(p.angle[i]) == pytest.approx(ref["angle"], abs=1e-12)
        assert float(p.shear_x[i]) == pytest.approx(ref["shear_x"], abs=1e-12)
        assert float(p.shear_y[i]) == pytest.approx(ref["shear_y"], abs=1e-12)
    # every kind of parameter occurs (the draws are not degenerate)
    assert 0 < int(p.rotate.sum()) < n and 0 < int(p.flip.sum()) < n
    assert (p.crop[:, 2] != size).any() and (p.scale != 1).any() and (p.shift != 0).any()


def test_intensity_parameters_identical() -> None:
    """With no geometric change the two differ only in their intensity draws: none at all."""
    n, size = 64, 32
    canvas, valid, fill, m = canvases(n, size)
    light = Augmentation(prob=0.5, jitter=0, rotation=0, shear=0, flip=False, shift=15, scale=0.1)
    ref = augment_canvas(canvas, valid, fill, m, size, torch.Generator().manual_seed(1), light)
    out = augment_batch(canvas, valid, fill, m, size, torch.Generator().manual_seed(1), light)
    assert torch.allclose(out, ref, atol=1e-3)
    assert not torch.allclose(out, canvas[:, m : m + size, m : m + size].float(), atol=1)


def test_images_within_interpolation_tolerance() -> None:
    n, size = 96, 64
    canvas, valid, fill, m = canvases(n, size)
    ref = augment_canvas(canvas, valid, fill, m, size, torch.Generator().manual_seed(3))
    out = augment_batch(canvas, valid, fill, m, size, torch.Generator().manual_seed(3))
    p = batch_params(n, valid, m, size, torch.Generator().manual_seed(3))
    diff = (out - ref).abs()
    assert out.shape == ref.shape and float(out.min()) >= 0 and float(out.max()) <= 255
    # images with no interpolation at all (a shifted crop, a flip) are exact
    exact = ~(p.rotate | p.shear) & (p.crop[:, 2] == size) & (p.crop[:, 3] == size)
    assert exact.any() and float(diff[exact].max()) < 1e-3
    # the rest: two interpolations against one, and the one-pixel seam where fill meets the image
    assert float(diff.mean()) < 1.0
    assert all(float(d) < 2.0 for d in diff.mean((1, 2)))
    assert float(diff.flatten().quantile(0.95)) < 4.0
    # a different seed is far from the reference: the tolerance above can tell
    other = augment_batch(canvas, valid, fill, m, size, torch.Generator().manual_seed(4))
    assert float((other - ref).abs().mean()) > 5 * float(diff.mean())


def test_fill_enters_where_rotation_brings_in_the_outside() -> None:
    n, size = 8, 32
    canvas, valid, fill, m = canvases(n, size)
    turn = Augmentation(prob=1.0, jitter=0, rotation=20, shear=0, flip=False, shift=0, scale=0)
    out = augment_batch(canvas, valid, fill, m, size, torch.Generator().manual_seed(0), turn)
    p = batch_params(n, valid, m, size, torch.Generator().manual_seed(0), turn)
    for i in range(n):
        if abs(float(p.angle[i])) > 10:  # a corner pixel then lies well outside the box
            assert float(out[i, 0, 0]) == pytest.approx(float(fill[i]), abs=1e-3)
