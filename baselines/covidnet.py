"""COVID-Net CT L and S as baselines: the space's reference specs (reconstructions calibrated to
the published complexity; see ``space.references``) built with ``space.build``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from baselines.registry import BaselineInfo, Published, register_baseline
from space import build, get_reference

_CT2 = "Gunraj et al. 2022, COVID-Net CT-2 (Front. Med.)"
_CT512 = (3, 512, 512)


def _covidnet(reference: str) -> Callable[[int, int], nn.Module]:
    def builder(num_classes: int, in_chans: int) -> nn.Module:
        spec = get_reference(reference)
        if in_chans != spec.stem.in_channels:
            spec = replace(spec, stem=replace(spec.stem, in_channels=in_chans))
        return build(spec, num_classes)

    return builder


register_baseline(
    BaselineInfo(
        name="covidnet_ct_l",
        display_name="COVID-Net CT L",
        paper_name="COVID-Net CT L",
        reference=f"Gunraj et al. 2020, COVIDNet-CT; {_CT2}",
        implementation="space reference spec 'ct-l' (reconstruction)",
        last_conv_stage="stages.3",
        published=Published(1_399_380, 2_090_000_000, _CT512, 3, f"{_CT2}: 4.18 G FLOPs = 2.09 G MACs"),
    )
)(_covidnet("ct-l"))

register_baseline(
    BaselineInfo(
        name="covidnet_ct_s",
        display_name="COVID-Net CT S",
        paper_name="COVID-Net CT S",
        reference=_CT2,
        implementation="space reference spec 'ct-s' (reconstruction)",
        last_conv_stage="stages.3",
        published=Published(447_570, 970_000_000, _CT512, 3, f"{_CT2}: 1.94 G FLOPs = 0.97 G MACs"),
    )
)(_covidnet("ct-s"))
