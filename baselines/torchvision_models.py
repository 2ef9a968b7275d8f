"""Baselines from torchvision's model builders, randomly initialised (``weights=None``: nothing is
downloaded)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.models as tvm
from torch import nn

from baselines.registry import BaselineInfo, Published, register_baseline

IMAGENET = (3, 224, 224)


def _pair(v: tuple[int, ...]) -> tuple[int, int]:
    return (v[0], v[1])


def replace_first_conv(model: nn.Module, in_chans: int) -> nn.Module:
    """Give ``model`` a first convolution that takes ``in_chans`` channels.

    The new convolution keeps the old one's output width, kernel, stride, padding and bias, so the
    network's shape and complexity past the first layer do not change. For ``in_chans=1`` its
    weights are the old ones summed over the input channels: the network then computes on a gray
    image exactly what the 3-channel network computes on that image copied to three channels (how
    the COVID-Net CT papers feed CT slices), and it keeps the builder's initialisation scale.
    """
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d to adapt to in_chans={in_chans}")
    path, conv = found
    if conv.in_channels == in_chans:
        return model
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        _pair(conv.kernel_size),
        stride=_pair(conv.stride),
        padding=conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        dilation=_pair(conv.dilation),
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        if in_chans == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
    return model


def _torchvision(builder: Callable[..., nn.Module]) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        model = builder(weights=None, num_classes=num_classes)
        return replace_first_conv(model, in_chans) if in_chans != 3 else model

    return build


def _register(info: BaselineInfo, builder: Callable[..., nn.Module]) -> None:
    register_baseline(info)(_torchvision(builder))


_TV_DOCS = "torchvision model docs (params; 'GFLOPS' there are multiply-adds)"

_register(
    BaselineInfo(
        name="squeezenet1_0",
        display_name="SqueezeNet 1.0",
        paper_name="SqueezeNet",
        reference="Iandola et al. 2016, SqueezeNet: AlexNet-level accuracy with 50x fewer parameters",
        implementation="torchvision.models.squeezenet1_0",
        last_conv_stage="features.12",
        published=Published(1_248_424, 820_000_000, IMAGENET, 1000, _TV_DOCS),
    ),
    tvm.squeezenet1_0,
)
_register(
    BaselineInfo(
        name="squeezenet1_1",
        display_name="SqueezeNet 1.1",
        paper_name=None,
        reference="SqueezeNet v1.1 (Iandola et al., DeepScale/SqueezeNet repository)",
        implementation="torchvision.models.squeezenet1_1",
        last_conv_stage="features.12",
        published=Published(1_235_496, 350_000_000, IMAGENET, 1000, _TV_DOCS),
    ),
    tvm.squeezenet1_1,
)
_register(
    BaselineInfo(
        name="mobilenet_v2",
        display_name="MobileNetV2",
        paper_name="MobileNetV2",
        reference="Sandler et al. 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks",
        implementation="torchvision.models.mobilenet_v2",
        last_conv_stage="features.18",
        published=Published(3_504_872, 300_000_000, IMAGENET, 1000, "Sandler et al. 2018, Table 4"),
    ),
    tvm.mobilenet_v2,
)
_register(
    BaselineInfo(
        name="efficientnet_b0",
        display_name="EfficientNet-B0",
        paper_name="EfficientNet-B0",
        reference="Tan & Le 2019, EfficientNet: Rethinking Model Scaling for CNNs",
        implementation="torchvision.models.efficientnet_b0",
        last_conv_stage="features.8",
        published=Published(5_288_548, 390_000_000, IMAGENET, 1000, "Tan & Le 2019, Table 2"),
    ),
    tvm.efficientnet_b0,
)
