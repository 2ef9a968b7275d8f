"""Published complexity holds for the baselines (224x224x3, 1000 classes), and the COVID-Net CT-2
paper's NetScores follow from our counts at 512x512x3 with 3 classes.

Tolerances, and why:

* Params: within 1 % of the published figure (they are rounded to three significant digits,
  e.g. 1.25 M, at most 0.4 % off); NASNet-A-Mobile within 2 % (the paper gives 5.3 M, two digits,
  and 2 % is the issue's target).
* MACs of the convolutions and linear layers alone (summed from fvcore's per-module counts):
  within 2 % of the published figure. Papers count only these layers, and their figures are
  rounded to two significant digits (0.30 G is anything from 0.295 G to 0.305 G: 1.7 %).
* fvcore's total MACs (``evaluators.profile``, what the project records): between 2 % below and
  6 % above the published figure. fvcore also counts batch norm (2 per output element in eval
  mode, scale and shift) and adaptive pooling, which the papers leave out: +4.7 % for MobileNetV2
  (0.314 G vs 0.300 G), +3.0 % for EfficientNet-B0, +0.6 % for NASNet-A-Mobile, none for SqueezeNet
  (no batch norm). NASNet-A-Mobile is held to the issue's 3 % on the total as well.
* NetScore at 512x512x3, 3 classes, a = 99.0 %: within 0.3 of the paper's 74.1 (MobileNetV2) and
  70.7 (EfficientNet-B0): the paper prints one decimal and the baselines' exact training-time
  counts are not published.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from baselines import baseline_info, baseline_names, create_baseline
from evaluators import netscore, profile


@dataclass(frozen=True)
class Counted:
    params: int
    macs: int  # fvcore's total
    conv_linear_macs: int  # convolutions and linear layers only


# The (and the reference file's) published figures at 224x224x3, 1000 classes:
# name -> (params, MACs, params tolerance).
PUBLISHED_224 = {
    "squeezenet1_0": (1.25e6, 0.82e9, 0.01),
    "squeezenet1_1": (1.24e6, 0.35e9, 0.01),
    "mobilenet_v2": (3.50e6, 0.30e9, 0.01),
    "efficientnet_b0": (5.29e6, 0.39e9, 0.01),
    "nasnet_a_mobile": (5.3e6, 0.564e9, 0.02),
}
CONV_LINEAR_TOL = 0.02
TOTAL_BELOW, TOTAL_ABOVE = 0.02, 0.06
NASNET_TOTAL_TOL = 0.03
# The CT-2 paper's NetScores (its Table 3) at its reported accuracy of 99.0 %.
PAPER_NETSCORE = {"mobilenet_v2": 74.1, "efficientnet_b0": 70.7}
PAPER_ACCURACY = 99.0


@pytest.fixture(scope="module")
def counted() -> Callable[[str, int, int], Counted]:
    """Profiles each (baseline, image size, classes) once per module (a few seconds each at 512)."""
    cache: dict[tuple[str, int, int], Counted] = {}

    def get(name: str, size: int, num_classes: int) -> Counted:
        key = (name, size, num_classes)
        if key not in cache:
            torch.manual_seed(0)
            model = create_baseline(name, num_classes=num_classes)
            p = profile(model, (3, size, size), memory=False)
            conv_linear = sum(
                p.by_module.get(n, 0)
                for n, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))
            )
            cache[key] = Counted(p.params, p.macs, conv_linear)
        return cache[key]

    return get


def test_every_baseline_with_published_imagenet_figures_is_checked() -> None:
    with_figures = {
        n
        for n in baseline_names()
        if (pub := baseline_info(n).published) is not None and pub.num_classes == 1000
    }
    assert with_figures == set(PUBLISHED_224)
    for name, (params, macs, _) in PUBLISHED_224.items():
        pub = baseline_info(name).published
        assert pub is not None and pub.input_size == (3, 224, 224)
        # The registry's figures are the same publications, possibly with more digits.
        assert pub.params == pytest.approx(params, rel=0.005)
        assert pub.macs == pytest.approx(macs, rel=0.005)


@pytest.mark.parametrize("name", sorted(PUBLISHED_224))
def test_published_complexity_at_224(name: str, counted: Callable[[str, int, int], Counted]) -> None:
    params, macs, params_tol = PUBLISHED_224[name]
    c = counted(name, 224, 1000)
    assert c.params == pytest.approx(params, rel=params_tol)
    assert c.conv_linear_macs == pytest.approx(macs, rel=CONV_LINEAR_TOL)
    assert (1 - TOTAL_BELOW) * macs <= c.macs <= (1 + TOTAL_ABOVE) * macs
    assert c.macs >= c.conv_linear_macs
    if name == "nasnet_a_mobile":
        assert c.macs == pytest.approx(macs, rel=NASNET_TOTAL_TOL)


@pytest.mark.parametrize("name", sorted(PAPER_NETSCORE))
def test_paper_netscore_follows_from_our_counts_at_512(
    name: str, counted: Callable[[str, int, int], Counted]
) -> None:
    c = counted(name, 512, 3)
    score = netscore(PAPER_ACCURACY, c.params, c.macs)
    assert score == pytest.approx(PAPER_NETSCORE[name], abs=0.3)


def test_netscore_needs_macs_at_512_not_224_nor_flops(counted: Callable[[str, int, int], Counted]) -> None:
    """The paper's 74.1 for MobileNetV2 is not reproduced at 224 px nor with FLOPs = 2 x MACs."""
    at_512 = counted("mobilenet_v2", 512, 3)
    assert abs(netscore(PAPER_ACCURACY, at_512.params, 2 * at_512.macs) - 74.1) > 2
    at_224 = counted("mobilenet_v2", 224, 1000)
    assert abs(netscore(PAPER_ACCURACY, at_224.params, at_224.macs) - 74.1) > 2
