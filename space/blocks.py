"""The residual blocks an ``ArchSpec`` can name, registered by their ``BlockSpec.type``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from space.registry import Registry
from space.spec import BlockSpec

BlockFactory = Callable[[int, BlockSpec], nn.Module]
BLOCKS: Registry[BlockFactory] = Registry("block type")


def conv_groups(conv: str, groups: int, channels: int) -> int:
    """The ``groups`` argument of a spatial conv over ``channels`` inputs."""
    return channels if conv == "depthwise" else groups


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: global pool, 1x1 conv down to ``hidden``, ReLU, 1x1 conv up, sigmoid."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean((2, 3), keepdim=True)
        w = torch.sigmoid(self.fc2(self.act(self.fc1(w))))
        return x * w


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class Bottleneck(nn.Module):
    """1x1 reduce (or expand), kxk spatial conv, optional SE, 1x1 project, residual add, ReLU."""

    def __init__(self, in_ch: int, spec: BlockSpec) -> None:
        super().__init__()
        mid, out, k = spec.mid_channels, spec.out_channels, spec.kernel_size
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(
            mid,
            mid,
            k,
            stride=spec.stride,
            padding=k // 2,
            groups=conv_groups(spec.conv, spec.groups, mid),
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, spec.se_channels) if spec.se_channels else nn.Identity()
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = _shortcut(in_ch, out, spec.stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.se(y)))
        return self.act(y + self.shortcut(x))


class Basic(nn.Module):
    """Two kxk convs (ResNet's basic block), optional SE on the output, residual add, ReLU."""

    def __init__(self, in_ch: int, spec: BlockSpec) -> None:
        super().__init__()
        mid, out, k = spec.mid_channels, spec.out_channels, spec.kernel_size
        self.conv1 = nn.Conv2d(
            in_ch,
            mid,
            k,
            stride=spec.stride,
            padding=k // 2,
            groups=conv_groups(spec.conv, spec.groups, in_ch),
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(
            mid, out, k, padding=k // 2, groups=conv_groups(spec.conv, spec.groups, mid), bias=False
        )
        self.bn2 = nn.BatchNorm2d(out)
        self.se = SqueezeExcite(out, spec.se_channels) if spec.se_channels else nn.Identity()
        self.shortcut = _shortcut(in_ch, out, spec.stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.se(self.bn2(self.conv2(y)))
        return self.act(y + self.shortcut(x))


BLOCKS.register("bottleneck", Bottleneck)
BLOCKS.register("basic", Basic)
