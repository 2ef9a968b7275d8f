"""NASNet-A (Zoph et al. 2018) against hand computations from the paper's description."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.nasnet import (
    NORMAL_A,
    REDUCTION_A,
    Cell,
    FactorizedReduction,
    NASNetA,
    SeparableStack,
    nasnet_a_mobile,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def sep_params(c: int, k: int) -> int:
    """Two (depthwise k x k, pointwise 1x1, batch norm) layers at width c."""
    return 2 * (c * k * k + c * c + 2 * c)


def test_separable_stack_is_applied_twice_with_the_stride_on_the_first() -> None:
    op = SeparableStack(8, 5, stride=2)
    assert n_params(op) == sep_params(8, 5)
    convs = [m for m in op if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.groups) for c in convs] == [
        ((5, 5), (2, 2), 8),
        ((1, 1), (1, 1), 1),
        ((5, 5), (1, 1), 8),
        ((1, 1), (1, 1), 1),
    ]
    assert op(torch.randn(1, 8, 15, 15)).shape == (1, 8, 8, 8)


def test_factorized_reduction_keeps_both_pixel_grids() -> None:
    red = FactorizedReduction(1, 2).eval()
    with torch.no_grad():
        red.path1.weight.fill_(1.0)
        red.path2.weight.fill_(1.0)
    x = torch.arange(1.0, 26.0).reshape(1, 1, 5, 5)
    y = red(x) * math.sqrt(1 + red.bn.eps)  # undo eval batch norm's 1 / sqrt(1 + eps)
    assert y.shape == (1, 2, 3, 3)  # ceil(5 / 2): the same as a stride-2 separable conv
    torch.testing.assert_close(y[0, 0], x[0, 0, ::2, ::2])
    # Path 2 sees the odd pixels; the shift pads the last row and column with zeros.
    expected = torch.zeros(3, 3)
    expected[:2, :2] = x[0, 0, 1::2, 1::2]
    torch.testing.assert_close(y[0, 1], expected)


def test_normal_cell_parameters_and_shape() -> None:
    f, prev_ch, ch = 8, 20, 24
    cell = Cell(NORMAL_A, prev_ch, ch, f, prev_reduced=False)
    # Preparation: ReLU-1x1-BN on both inputs; then sep5 x2, sep3 x3, pools and identities.
    expected = (prev_ch * f + 2 * f) + (ch * f + 2 * f) + 2 * sep_params(f, 5) + 3 * sep_params(f, 3)
    assert n_params(cell) == expected
    assert cell.out_channels == 6 * f
    out = cell(torch.randn(1, prev_ch, 9, 9), torch.randn(1, ch, 9, 9))
    assert out.shape == (1, 6 * f, 9, 9)


def test_reduction_cell_parameters_and_shape() -> None:
    f, prev_ch, ch = 8, 12, 24
    cell = Cell(REDUCTION_A, prev_ch, ch, f, prev_reduced=True)
    # h_{i-1} at twice the resolution: factorized reduction (two 1x1 convs of f / 2, BN of f).
    prep = (prev_ch * f + 2 * f) + (ch * f + 2 * f)
    ops = 2 * sep_params(f, 7) + 2 * sep_params(f, 5) + sep_params(f, 3)
    assert n_params(cell) == prep + ops
    assert cell.out_channels == 4 * f
    out = cell(torch.randn(1, prev_ch, 18, 18), torch.randn(1, ch, 9, 9))
    assert out.shape == (1, 4 * f, 5, 5)


def test_mobile_macroarchitecture_at_224() -> None:
    """Stem 3x3/2 (32 filters) -> 111; two reduction stem cells -> 56, 28; three stacks of four
    normal cells at 28, 14 and 7, reductions between; 1056 penultimate channels (24 x 44)."""
    model = nasnet_a_mobile().eval()
    widths = [c.out_channels for c in model.cells]
    assert widths == [44, 88] + [264] * 4 + [352] + [528] * 4 + [704] + [1056] * 4
    assert model.num_features == 1056 and model.classifier.in_features == 1056
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    sizes: list[int] = []
    hooks = [c.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for c in model.cells]
    with torch.no_grad():
        stem = model.stem(torch.zeros(1, 3, 224, 224))
        model(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert stem.shape[1:] == (32, 111, 111)
    assert sizes == [56, 28] + [28] * 4 + [14] * 5 + [7] * 5
    prepped = [type(c.prep_prev).__name__ for c in model.cells]
    # Factorized reduction exactly where h_{i-1} has twice h_i's resolution.
    reduced = [i for i, p in enumerate(prepped) if p == "FactorizedReduction"]
    assert reduced == [1, 2, 7, 12]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": 42}, "filters must be a multiple of 4"),
        ({"cells_per_stack": 0}, "cells_per_stack must be a positive integer, got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NASNetA(**kwargs)  # type: ignore[arg-type]


def test_a_smaller_nasnet_runs() -> None:
    model = NASNetA(num_classes=3, cells_per_stack=1, filters=8)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert model.num_features == 24 * 8
