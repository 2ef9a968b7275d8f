"""Pruned networks as data: an ``ArchSpec`` for COVID-Net CT, channel counts for any other baseline.

A pruned COVID-Net CT network is an ``ArchSpec`` again (``as_spec``): it is stored, rebuilt and
exported exactly like a searched candidate. A pruned baseline outside the space (MobileNetV2, ...)
is stored as its registry name plus ``channel_config``: the channel counts of every convolution,
batch norm and linear layer, by module path. ``build_pruned_baseline`` rebuilds the network from
those counts, so its weights travel as a plain state dict in a checkpoint that
``torch.load(weights_only=True)`` reads; a pickled module is never written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import RunFailed, UsageError

CHECKPOINT_FORMAT = "covidnet-nas/pruned-baseline/1"


# ----------------------------------------------------------------------------- COVID-Net CT
def as_spec(model: nn.Module) -> tuple[Any, nn.Module]:
    """The ``ArchSpec`` of a pruned COVID-Net CT network and that spec rebuilt with ``space.build``
    holding the pruned weights.

    Raises:
        RunFailed: the pruned layers fit no ``ArchSpec``, or the rebuilt network's layers differ.
    """
    from space import CovidNetCT, build, spec_of

    if not isinstance(model, CovidNetCT):
        raise RunFailed(f"only a COVID-Net CT network is an ArchSpec, got a {type(model).__name__}")
    try:
        spec = spec_of(model)
    except ValueError as e:
        raise RunFailed(f"the pruned network is no ArchSpec: {e}") from None
    rebuilt = build(spec, int(model.num_classes))
    load_exact(rebuilt, model.state_dict(), f"the rebuilt spec {spec.arch_id}")
    return spec, rebuilt.eval()


class WeightsMismatch(RunFailed):
    """Stored weights whose tensor names or shapes differ from the network they are loaded into."""


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model``; ``WeightsMismatch`` names how many tensors differ, and which."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatch(f"{what}: the weights are not a state dict of tensors")
    mine = model.state_dict()
    diff = [k for k in mine.keys() | state.keys() if k not in mine or k not in state]
    diff += [k for k in mine.keys() & state.keys() if mine[k].shape != state[k].shape]
    if diff:
        shown = ", ".join(sorted(diff)[:4])
        raise WeightsMismatch(f"{what} does not match the weights ({len(diff)} tensors differ: {shown})")
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- any baseline
def channel_config(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The channel counts of every Conv2d, BatchNorm2d and Linear layer, by module path (JSON)."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {
                "type": "Conv2d",
                "in_channels": m.in_channels,
                "out_channels": m.out_channels,
                "groups": m.groups,
            }
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = {"type": "BatchNorm2d", "num_features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features}
    return out


def _resized(m: nn.Module, c: dict[str, Any], where: str) -> nn.Module:
    kind = type(m).__name__
    if c.get("type") != kind:
        raise UsageError(f"pruned config {where}: the layer is a {kind}, the config says {c.get('type')!r}")
    try:
        if isinstance(m, nn.Conv2d):
            return nn.Conv2d(
                int(c["in_channels"]),
                int(c["out_channels"]),
                m.kernel_size,  # type: ignore[arg-type]
                stride=m.stride,  # type: ignore[arg-type]
                padding=m.padding,  # type: ignore[arg-type]
                dilation=m.dilation,  # type: ignore[arg-type]
                groups=int(c["groups"]),
                bias=m.bias is not None,
                padding_mode=m.padding_mode,
            )
        if isinstance(m, nn.BatchNorm2d):
            return nn.BatchNorm2d(
                int(c["num_features"]),
                eps=m.eps,
                momentum=m.momentum,
                affine=m.affine,
                track_running_stats=m.track_running_stats,
            )
        if isinstance(m, nn.Linear):
            return nn.Linear(int(c["in_features"]), int(c["out_features"]), bias=m.bias is not None)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"pruned config {where}: bad channel counts {c!r} ({e})") from None
    raise UsageError(f"pruned config {where}: a {kind} cannot be resized")  # pragma: no cover


def apply_channel_config(model: nn.Module, config: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace ``model``'s layers by ones with the channel counts of ``config`` (in place; the new
    layers hold fresh weights until a state dict is loaded)."""
    modules = dict(model.named_modules())
    for name, c in config.items():
        if name not in modules:
            raise UsageError(
                f"pruned config names a layer {name!r} that {type(model).__name__} does not have"
            )
        new = _resized(modules[name], c, name)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def build_pruned_baseline(
    name: str, config: dict[str, dict[str, Any]], num_classes: int = 3, in_chans: int = 3
) -> nn.Module:
    """Baseline ``name`` with the channel counts of ``config`` (``channel_config`` of the pruned
    network); load the pruned state dict into it."""
    from baselines import create_baseline

    return apply_channel_config(create_baseline(name, num_classes=num_classes, in_chans=in_chans), config)


def checkpoint(model: nn.Module, baseline: str, num_classes: int = 3, in_chans: int = 3) -> dict[str, Any]:
    """What a pruned baseline's weights file holds: plain data and tensors only."""
    return {
        "format": CHECKPOINT_FORMAT,
        "baseline": baseline,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "config": channel_config(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The pruned baseline of a ``checkpoint`` dict, weights loaded, in eval mode."""
    if not is_checkpoint(ckpt):
        raise UsageError(f"not a pruned-baseline checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    model = build_pruned_baseline(
        str(ckpt["baseline"]), ckpt["config"], int(ckpt["num_classes"]), int(ckpt["in_chans"])
    )
    load_exact(model, ckpt["state_dict"], f"baseline {ckpt['baseline']!r} rebuilt from its config")
    return model.eval()


def save_checkpoint(path: str | Path, model: nn.Module, baseline: str, num_classes: int = 3) -> None:
    from evaluators.device import input_channels

    torch.save(checkpoint(model, baseline, num_classes, input_channels(model)), str(path))


def load_checkpoint(path: str | Path) -> nn.Module:
    """A pruned baseline from its weights file (``torch.load(weights_only=True)``: no pickle)."""
    from search.driver.artifacts import read_weights

    return from_checkpoint(read_weights(path))


def stored_form(model: nn.Module, baseline: str | None, weights: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Write the pruned ``model``'s weights file to ``weights``; return the network rebuilt from
    what is stored and the trial attrs that describe it.

    A COVID-Net CT: its ``ArchSpec`` (named ``<name>-pruned``) and a state dict. Any other
    baseline: ``pruned_config``, a ``builder`` and a checkpoint (``checkpoint``).
    """
    from baselines import baseline_info
    from evaluators.device import input_channels

    if getattr(model, "spec", None) is not None:
        spec, rebuilt = as_spec(model)
        spec = replace(spec, name=f"{spec.name}-pruned" if spec.name else "pruned")
        rebuilt.spec = spec
        torch.save(rebuilt.state_dict(), weights)
        attrs: dict[str, Any] = {"spec": spec.to_dict(), "arch_id": spec.arch_id, "display_name": spec.name}
        if baseline:
            attrs["baseline"] = baseline
            attrs["display_name"] = f"{baseline_info(baseline).display_name} (pruned)"
        return rebuilt, attrs
    if baseline is None:
        raise RunFailed(f"a pruned {type(model).__name__} is neither a COVID-Net CT nor a named baseline")
    ckpt = checkpoint(model, baseline, num_classes=3, in_chans=input_channels(model))
    torch.save(ckpt, weights)
    rebuilt = from_checkpoint(torch.load(weights, map_location="cpu", weights_only=True))
    digest = hashlib.sha1(json.dumps(ckpt["config"], sort_keys=True).encode()).hexdigest()[:10]
    attrs = {
        "baseline": baseline,
        "display_name": f"{baseline_info(baseline).display_name} (pruned)",
        "builder": {"baseline": baseline, "num_classes": 3, "in_chans": ckpt["in_chans"], "pruned": True},
        "pruned_config": ckpt["config"],
        "arch_id": f"{baseline}-p{digest}",
    }
    return rebuilt, attrs
