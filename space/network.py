"""``build(spec)``: an ``ArchSpec`` made into a PyTorch module, and back (``spec_of``)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from space.blocks import BLOCKS, Basic, Bottleneck, SqueezeExcite
from space.spec import ArchSpec, BlockSpec, StageSpec, StemSpec


class CovidNetCT(nn.Module):
    """The COVID-Net CT macroarchitecture: stem, four (or more) stages of residual blocks, global
    average pooling, one linear layer."""

    def __init__(self, spec: ArchSpec, num_classes: int = 3) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
        self.spec = spec
        self.num_classes = num_classes
        st = spec.stem
        layers: list[nn.Module] = [
            nn.Conv2d(
                st.in_channels,
                st.out_channels,
                st.kernel_size,
                stride=st.stride,
                padding=st.kernel_size // 2,
                bias=False,
            ),
            nn.BatchNorm2d(st.out_channels),
            nn.ReLU(inplace=True),
        ]
        if st.pool:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*layers)
        channels = st.out_channels
        stages = []
        for stage in spec.stages:
            blocks = []
            for block in stage.blocks:
                blocks.append(BLOCKS.get(block.type)(channels, block))
                channels = block.out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.head.dropout) if spec.head.dropout else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    @property
    def last_conv_stage(self) -> nn.Module:
        """The last convolutional stage (Grad-CAM's usual target)."""
        return self.stages[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.fc(self.dropout(x))


def build(spec: ArchSpec, num_classes: int = 3) -> CovidNetCT:
    """A freshly initialised network for ``spec`` with a ``num_classes`` head."""
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"build() needs an ArchSpec, got {type(spec).__name__}")
    return CovidNetCT(spec, num_classes)


def spec_of(model: CovidNetCT) -> ArchSpec:
    """The ``ArchSpec`` of ``model`` as its layers are now, read from the weight shapes.

    After structured pruning the channel counts differ from ``model.spec``; this returns the spec
    that rebuilds the pruned network exactly. Raises ``ValueError`` where the pruned layers no
    longer fit any ``ArchSpec`` (e.g. the two inner convs of a bottleneck pruned to different
    widths).
    """
    stem_conv = model.stem[0]
    stem = replace(model.spec.stem, out_channels=stem_conv.out_channels)
    stages = []
    for s, (stage_spec, stage) in enumerate(zip(model.spec.stages, model.stages, strict=True)):
        blocks = []
        for b, (block_spec, block) in enumerate(zip(stage_spec.blocks, stage, strict=True)):
            where = f"stages[{s}].blocks[{b}]"
            se_channels = block.se.fc1.out_channels if isinstance(block.se, SqueezeExcite) else 0
            if isinstance(block, Bottleneck):
                mid = block.conv1.out_channels
                if block.conv2.out_channels != mid:
                    raise ValueError(
                        f"{where}: the spatial conv has {block.conv2.out_channels} output channels "
                        f"but its input has {mid}; a bottleneck keeps them equal"
                    )
                out = block.conv3.out_channels
            elif isinstance(block, Basic):
                mid, out = block.conv1.out_channels, block.conv2.out_channels
            else:  # pragma: no cover - every registered block is handled above
                raise ValueError(f"{where}: unknown block module {type(block).__name__}")
            conv2 = block.conv2
            groups = 1 if block_spec.conv == "depthwise" else conv2.groups
            blocks.append(
                replace(
                    block_spec,
                    out_channels=out,
                    mid_channels=mid,
                    groups=groups,
                    se_channels=se_channels,
                )
            )
        stages.append(StageSpec(tuple(blocks)))
    return replace(model.spec, stem=stem, stages=tuple(stages))


__all__ = ["BlockSpec", "CovidNetCT", "StemSpec", "build", "spec_of"]
