"""NASNet-A in PyTorch, written from Zoph et al., "Learning Transferable Architectures for Scalable
Image Recognition" (CVPR 2018): Figure 4 (the NASNet-A normal and reduction cells), section 4.2 and
appendix A (the ImageNet macroarchitecture, separable convs applied twice, factorized reduction).

No maintained library ships NASNet-A for PyTorch; this module is the project's own implementation.
``nasnet_a_mobile`` is the paper's "NASNet-A (4 @ 1056)" of Table 2 (5.3 M params, 564 M
multiply-adds at 224x224x3 with 1000 classes).

The network, for ``N`` normal cells per stack and ``F`` filters (penultimate width ``24 F``):

* stem: 3x3 conv, stride 2, no padding, 32 filters, batch norm;
* two reduction cells with ``F / 4`` and ``F / 2`` filters (the "ImageNet stem");
* ``N`` normal cells (``F``), reduction (``2 F``), ``N`` normal (``2 F``), reduction (``4 F``),
  ``N`` normal (``4 F``); a normal cell outputs ``6 x`` its filters, a reduction cell ``4 x``;
* ReLU, global average pooling, dropout, one linear layer.

Every cell reads the two previous cells' outputs, ``h_i`` (the last) and ``h_{i-1}``. Before the
cell's operations, ``h_i`` goes through ReLU, 1x1 conv and batch norm to the cell's filters; ``h_{i-1}``
goes through a factorized reduction where its resolution is twice ``h_i``'s, else through ReLU,
1x1 conv and batch norm where its width differs. The auxiliary head (a training aid in the paper)
and drop-path are left out: neither enters the published complexity of the mobile model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.registry import BaselineInfo, Published, register_baseline

# The paper's implementation uses batch norm with epsilon 1e-3.
BN_EPS = 1e-3


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class ReLUConvBN(nn.Sequential):
    """ReLU, 1x1 convolution, batch norm: how a cell brings an input to its width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False), _bn(out_channels))


class SeparableStack(nn.Sequential):
    """A NASNet separable convolution: (ReLU, depthwise ``k x k``, pointwise 1x1, batch norm)
    applied twice, the stride on the first depthwise conv only (paper, appendix A.4)."""

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [
                # Not in place: a cell's inputs feed several operations.
                nn.ReLU(inplace=i > 0),
                nn.Conv2d(
                    channels,
                    channels,
                    kernel_size,
                    stride=stride if i == 0 else 1,
                    padding=kernel_size // 2,
                    groups=channels,
                    bias=False,
                ),
                nn.Conv2d(channels, channels, 1, bias=False),
                _bn(channels),
            ]
        super().__init__(*layers)


class FactorizedReduction(nn.Module):
    """Halves the resolution of a cell input without losing half of its pixels (paper, appendix A):
    two 1x1 convs of stride 2, the second on the input shifted by one pixel, concatenated, then
    batch norm. Used where the previous-but-one cell has twice the current resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.relu = nn.ReLU()
        self.path1 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.path2 = nn.Conv2d(in_channels, out_channels - half, 1, bias=False)
        self.bn = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        a = self.path1(x[:, :, ::2, ::2])
        # Shift by one pixel (drop the first row and column, pad one at the end) and subsample:
        # path 2 sees the pixels path 1 skips, and both give ceil(H / 2) x ceil(W / 2).
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        b = self.path2(shifted[:, :, ::2, ::2])
        return self.bn(torch.cat([a, b], dim=1))


def _op(name: str, channels: int, stride: int) -> nn.Module:
    if name.startswith("sep"):
        return SeparableStack(channels, int(name[3:]), stride)
    if name == "avg3":
        # The paper's pools use SAME padding, which averages over the valid pixels only.
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "max3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "identity" and stride == 1:
        return nn.Identity()
    raise ValueError(f"unknown NASNet operation {name!r} with stride {stride}")


@dataclass(frozen=True)
class CellPlan:
    """A NASNet cell as data: five blocks, each ``(op_a, input_a, op_b, input_b)``, adding the two
    operation outputs, then the concatenation of the hidden states listed in ``concat``.

    Hidden states: 0 is ``h_{i-1}`` (the previous-but-one cell), 1 is ``h_i`` (the previous cell),
    2-6 are the outputs of blocks 1-5. In a reduction cell operations on states 0 and 1 have
    stride 2.
    """

    blocks: tuple[tuple[str, int, str, int], ...]
    concat: tuple[int, ...]
    reduction: bool


# NASNet-A, the paper's Figure 4 (left): the normal cell. Output: 6 x filters.
NORMAL_A = CellPlan(
    blocks=(
        ("sep5", 1, "sep3", 0),
        ("sep5", 0, "sep3", 0),
        ("avg3", 1, "identity", 0),
        ("avg3", 0, "avg3", 0),
        ("sep3", 1, "identity", 1),
    ),
    concat=(0, 2, 3, 4, 5, 6),
    reduction=False,
)

# NASNet-A, the paper's Figure 4 (right): the reduction cell. Output: 4 x filters.
REDUCTION_A = CellPlan(
    blocks=(
        ("sep5", 1, "sep7", 0),
        ("max3", 1, "sep7", 0),
        ("avg3", 1, "sep5", 0),
        ("identity", 3, "avg3", 2),
        ("sep3", 2, "max3", 1),
    ),
    concat=(3, 4, 5, 6),
    reduction=True,
)


class Cell(nn.Module):
    """One NASNet cell built from a ``CellPlan``.

    Args:
        plan: the cell's blocks and output concatenation.
        prev_channels: width of ``h_{i-1}``.
        channels: width of ``h_i``.
        filters: the cell's filters (width of every block output).
        prev_reduced: ``h_{i-1}`` has twice the resolution of ``h_i`` (factorized reduction).
    """

    def __init__(
        self, plan: CellPlan, prev_channels: int, channels: int, filters: int, prev_reduced: bool
    ) -> None:
        super().__init__()
        self.plan = plan
        if prev_reduced:
            self.prep_prev: nn.Module = FactorizedReduction(prev_channels, filters)
        elif prev_channels != filters:
            self.prep_prev = ReLUConvBN(prev_channels, filters)
        else:
            self.prep_prev = nn.Identity()
        self.prep = ReLUConvBN(channels, filters)
        ops = []
        for op_a, in_a, op_b, in_b in plan.blocks:
            for op, src in ((op_a, in_a), (op_b, in_b)):
                stride = 2 if plan.reduction and src < 2 else 1
                ops.append(_op(op, filters, stride))
        self.ops = nn.ModuleList(ops)
        self.out_channels = filters * len(plan.concat)

    def forward(self, prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        states = [self.prep_prev(prev), self.prep(x)]
        for b, (_, in_a, _, in_b) in enumerate(self.plan.blocks):
            states.append(self.ops[2 * b](states[in_a]) + self.ops[2 * b + 1](states[in_b]))
        return torch.cat([states[i] for i in self.plan.concat], dim=1)


class NASNetA(nn.Module):
    """NASNet-A for ImageNet-sized inputs (the paper's ImageNet macroarchitecture).

    Args:
        num_classes: outputs of the linear head.
        in_chans: input channels (3 for RGB, 1 for grayscale).
        cells_per_stack: ``N``, normal cells between reductions (4 in the mobile model).
        filters: ``F``, the first stack's filters; the penultimate layer has ``24 F`` channels
            (44 -> 1056 in the mobile model). Must be a multiple of 4 (the stem cells use ``F / 4``).
        stem_filters: filters of the stem's 3x3 conv (32 in the paper).
        dropout: dropout before the linear head (0.5 in the paper's mobile model).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        cells_per_stack: int = 4,
        filters: int = 44,
        stem_filters: int = 32,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("in_chans", in_chans),
            ("cells_per_stack", cells_per_stack),
            ("filters", filters),
            ("stem_filters", stem_filters),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if filters % 4:
            raise ValueError(f"filters must be a multiple of 4 (stem cells use filters / 4), got {filters}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_filters, 3, stride=2, padding=0, bias=False), _bn(stem_filters)
        )
        # (plan, filters) in order: the two stem reduction cells, then the three stacks.
        layout = [(REDUCTION_A, filters // 4), (REDUCTION_A, filters // 2)]
        for stack in range(3):
            if stack:
                layout.append((REDUCTION_A, filters * 2**stack))
            layout += [(NORMAL_A, filters * 2**stack)] * cells_per_stack
        # The stem's output is both inputs of the first cell.
        prev_ch, ch = stem_filters, stem_filters
        prev_reduced = False
        cells = []
        for plan, cell_filters in layout:
            cell = Cell(plan, prev_ch, ch, cell_filters, prev_reduced)
            cells.append(cell)
            prev_ch, ch = ch, cell.out_channels
            prev_reduced = plan.reduction
        self.cells = nn.ModuleList(cells)
        self.num_features = ch
        # Not in place: Grad-CAM hooks the last cell's output.
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(ch, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def last_conv_stage(self) -> nn.Module:
        """The last cell (Grad-CAM's usual target)."""
        return self.cells[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        prev = x
        for cell in self.cells:
            prev, x = x, cell(prev, x)
        return self.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def nasnet_a_mobile(num_classes: int = 1000, in_chans: int = 3) -> NASNetA:
    """NASNet-A (4 @ 1056), the paper's mobile model: N = 4, 44 filters, 1056 penultimate."""
    return NASNetA(num_classes=num_classes, in_chans=in_chans, cells_per_stack=4, filters=44)


@register_baseline(
    BaselineInfo(
        name="nasnet_a_mobile",
        display_name="NASNet-A-Mobile",
        paper_name="NASNet-A-Mobile",
        reference="Zoph et al. 2018, Learning Transferable Architectures for Scalable Image Recognition",
        implementation="baselines.nasnet (this project, from the paper)",
        last_conv_stage="cells.15",
        published=Published(5_300_000, 564_000_000, (3, 224, 224), 1000, "Zoph et al. 2018, Table 2"),
    )
)
def _build(num_classes: int, in_chans: int) -> nn.Module:
    return nasnet_a_mobile(num_classes, in_chans)


__all__ = ["NORMAL_A", "REDUCTION_A", "Cell", "CellPlan", "NASNetA", "nasnet_a_mobile"]
