"""The baseline registry: name -> builder plus the metadata a report needs (timm-style
``register_model`` / ``create_model``, on ``space.registry.Registry``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from space.registry import Registry

# What the space's StemSpec allows too: CT slices are grayscale, usually copied to three channels.
IN_CHANS = (1, 3)

Builder = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class Published:
    """A network's complexity as its authors published it.

    Attributes:
        params: parameter count.
        macs: multiply-accumulates of one image (a paper's "FLOPs" halved where it counts
            a multiply-add as two operations).
        input_size: the ``(C, H, W)`` the figures are for.
        num_classes: the head's outputs the figures are for.
        source: where the figures come from.
    """

    params: int
    macs: int
    input_size: tuple[int, int, int]
    num_classes: int
    source: str


@dataclass(frozen=True)
class BaselineInfo:
    """What is known of one registered baseline, besides how to build it.

    Attributes:
        name: the registry name (``mobilenet_v2``).
        display_name: the name for tables and plots ("MobileNetV2").
        paper_name: the name in the COVID-Net CT-2 paper's tables, ``None`` if the paper has no
            such network (e.g. SqueezeNet 1.1: the paper cites the SqueezeNet paper, i.e. 1.0).
        reference: the paper that defines the architecture.
        implementation: where the module comes from (torchvision, this project).
        last_conv_stage: dotted path of the last convolutional stage, for
            ``model.get_submodule`` (Grad-CAM's usual target layer).
        published: the published complexity, ``None`` where there is none.
    """

    name: str
    display_name: str
    paper_name: str | None
    reference: str
    implementation: str
    last_conv_stage: str
    published: Published | None = None


@dataclass(frozen=True)
class _Entry:
    info: BaselineInfo
    builder: Builder


BASELINES: Registry[_Entry] = Registry("baseline")


def register_baseline(info: BaselineInfo) -> Callable[[Builder], Builder]:
    """Register a builder ``(num_classes, in_chans) -> nn.Module`` under ``info.name``.

    Used as a decorator; a duplicate name is a ``ValueError``.
    """

    def deco(builder: Builder) -> Builder:
        BASELINES.register(info.name, _Entry(info, builder))
        return builder

    return deco


def baseline_names() -> list[str]:
    """The registered baseline names, sorted."""
    return BASELINES.names()


def baseline_info(name: str) -> BaselineInfo:
    """The metadata of baseline ``name`` (``KeyError`` listing the known names otherwise)."""
    return BASELINES.get(name).info


def create_baseline(name: str, num_classes: int = 3, in_chans: int = 3) -> nn.Module:
    """A freshly initialised baseline network (random weights: nothing is downloaded).

    Args:
        name: a registered name (see ``baseline_names()``); an unknown one is a ``KeyError``
            that lists the known names and suggests the closest.
        num_classes: outputs of the classifier head (at least 2).
        in_chans: input channels, 1 (grayscale) or 3 (RGB).
    """
    entry = BASELINES.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    if isinstance(in_chans, bool) or in_chans not in IN_CHANS:
        raise ValueError(f"in_chans must be one of {', '.join(map(str, IN_CHANS))}, got {in_chans!r}")
    return entry.builder(num_classes, in_chans)


def last_conv_stage(model: nn.Module, name: str) -> nn.Module:
    """The last convolutional stage of ``model``, a network built by ``create_baseline(name)``."""
    return model.get_submodule(baseline_info(name).last_conv_stage)


__all__ = [
    "BASELINES",
    "IN_CHANS",
    "BaselineInfo",
    "Published",
    "baseline_info",
    "baseline_names",
    "create_baseline",
    "last_conv_stage",
    "register_baseline",
]
