"""Keeping a pruned COVID-Net CT inside the ``ArchSpec`` space.

torch-pruning removes coupled channels together, but two constraints of an ``ArchSpec`` are not
couplings of the graph: a bottleneck's 1x1 reduce and its (dense or grouped) spatial conv have one
width, ``mid_channels``; and a block has a projection shortcut exactly where stride or width change.
``equalise`` makes each tied pair lose as many channels (global pruning ranks them apart);
``repair_shortcuts`` removes one more channel (one per channel group) where a block's input and
output widths became equal at stride 1, so ``space.build(space.spec_of(model))`` rebuilds exactly
the pruned network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from search.errors import RunFailed


def is_covidnet(model: nn.Module) -> bool:
    from space import CovidNetCT

    return isinstance(model, CovidNetCT)


def tied_convs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
    """Pairs of convs whose output widths must stay equal: a COVID-Net CT bottleneck's 1x1 reduce
    and spatial conv (unless depthwise, which ties them already)."""
    from space.blocks import Bottleneck

    if not is_covidnet(model):
        return []
    return [
        (m.conv1, m.conv2)
        for m in model.modules()
        if isinstance(m, Bottleneck) and not (m.conv2.groups == m.conv2.in_channels == m.conv2.out_channels)
    ]


def _out_idxs(tp: ModuleType, group: Any, conv: nn.Module) -> list[int] | None:
    for dep, idxs in group:
        if dep.target.module is conv and dep.handler == tp.prune_conv_out_channels:
            return list(idxs)
    return None


def _lowest(tp: ModuleType, dg: Any, importance: Any, conv: nn.Conv2d, k: int, ch_groups: int) -> Any:
    """The group removing the ``k`` least important output channels of ``conv`` (``k`` a multiple
    of ``ch_groups``; the same positions in every channel group)."""
    channels = conv.out_channels
    full = dg.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(channels)))
    imp = importance(full)
    if ch_groups > 1:
        size = channels // ch_groups
        pos = torch.argsort(imp.view(ch_groups, size).mean(0))[: k // ch_groups]
        idxs = sorted(int(p) + g * size for g in range(ch_groups) for p in pos)
    else:
        idxs = sorted(int(i) for i in torch.argsort(imp)[:k])
    return dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs)


def equalise(
    tp: ModuleType, dg: Any, importance: Any, groups: list[Any], ties: Sequence[tuple[nn.Conv2d, nn.Conv2d]]
) -> list[Any]:
    """Make each tied pair lose the same number of channels (the smaller of the two counts)."""
    groups = list(groups)
    for a, b in ties:
        found = {}
        for conv in (a, b):
            for i, g in enumerate(groups):
                idxs = _out_idxs(tp, g, conv)
                if idxs is not None:
                    found[conv] = (i, len(idxs))
                    break
        k = min(found.get(a, (None, 0))[1], found.get(b, (None, 0))[1])
        ch_groups = b.groups if b.groups > 1 else 1
        for conv in (a, b):
            if conv not in found or found[conv][1] == k:
                continue
            i = found[conv][0]
            groups[i] = _lowest(tp, dg, importance, conv, k, ch_groups) if k else None
        groups = [g for g in groups if g is not None]
    return groups


def repair_shortcuts(tp: ModuleType, model: nn.Module, dg: Any, importance: Any) -> None:
    """A COVID-Net CT block keeps a projection shortcut only where stride or width change; where
    pruning made input and output widths equal at stride 1, remove one more output channel."""
    from space.blocks import Basic, Bottleneck

    for _ in range(64):  # each repair may create another further on; networks are shallow
        bad: nn.Conv2d | None = None
        for m in model.modules():
            if isinstance(m, (Bottleneck, Basic)) and isinstance(m.shortcut, nn.Sequential):
                proj: nn.Conv2d = m.shortcut[0]  # type: ignore[assignment]
                if proj.stride == (1, 1) and proj.in_channels == proj.out_channels:
                    bad = proj
                    break
        if bad is None:
            return
        # a grouped conv reading these channels needs every group to lose as many
        step = math.lcm(*(int(c.groups) for c in _coupled_convs(tp, dg, bad) if c.groups < c.in_channels))
        _lowest(tp, dg, importance, bad, step, step).prune()
    raise RunFailed("could not make the pruned network's shortcuts fit an ArchSpec")  # pragma: no cover


def _coupled_convs(tp: ModuleType, dg: Any, conv: nn.Conv2d) -> list[nn.Conv2d]:
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, [0])
    return [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Conv2d)] or [conv]
