"""The baseline registry: every registered baseline builds, runs, trains and exposes its last
convolutional stage; names, arguments and metadata are checked."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from baselines import (
    BASELINES,
    BaselineInfo,
    baseline_info,
    baseline_names,
    create_baseline,
    last_conv_stage,
    register_baseline,
)
from space import CovidNetCT, build, get_reference

NAMES = baseline_names()
PAPER_NAMES = {
    "SqueezeNet",
    "MobileNetV2",
    "EfficientNet-B0",
    "NASNet-A-Mobile",
    "COVID-Net CT L",
    "COVID-Net CT S",
}


def test_the_issue_s_baselines_are_registered() -> None:
    required = {
        "squeezenet1_0",
        "squeezenet1_1",
        "mobilenet_v2",
        "efficientnet_b0",
        "nasnet_a_mobile",
        "covidnet_ct_l",
        "covidnet_ct_s",
    }
    assert required <= set(NAMES)
    assert sorted(NAMES) == NAMES


@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize("name", NAMES)
def test_every_baseline_builds_runs_and_trains_at_64px(name: str, in_chans: int) -> None:
    torch.manual_seed(0)
    model = create_baseline(name, num_classes=3, in_chans=in_chans)
    model.train()
    x = torch.randn(2, in_chans, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == [], f"parameters without a gradient: {missing[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_in_chans_1_replaces_only_the_first_conv(name: str) -> None:
    rgb = create_baseline(name, num_classes=3, in_chans=3)
    gray = create_baseline(name, num_classes=3, in_chans=1)
    first = next(m for m in rgb.modules() if isinstance(m, nn.Conv2d))
    first_gray = next(m for m in gray.modules() if isinstance(m, nn.Conv2d))
    assert (first.in_channels, first_gray.in_channels) == (3, 1)
    kh, kw = first.kernel_size
    params = [sum(p.numel() for p in m.parameters()) for m in (rgb, gray)]
    assert params[0] - params[1] == 2 * first.out_channels * kh * kw


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v2", "efficientnet_b0"])
def test_a_gray_torchvision_baseline_equals_the_rgb_one_on_a_copied_gray_image(name: str) -> None:
    torch.manual_seed(0)
    rgb = create_baseline(name, in_chans=3).eval()
    torch.manual_seed(0)
    gray = create_baseline(name, in_chans=1).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_last_conv_stage_is_the_last_convolutional_stage(name: str) -> None:
    """Grad-CAM's target: a 4-D activation that the logits depend on, after which no convolution
    runs except a 1x1 classifier conv (SqueezeNet's head)."""
    torch.manual_seed(0)
    model = create_baseline(name, num_classes=3).eval()
    target = last_conv_stage(model, name)
    order: list[nn.Module] = []
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()]
    hooks.append(target.register_forward_hook(lambda m, i, o: acts.append(o)))
    logits = model(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    (act,) = acts
    assert act.ndim == 4 and min(act.shape[2:]) >= 2
    (grad,) = torch.autograd.grad(logits[0, 0], act)
    assert grad.abs().sum() > 0
    after = order[order.index(target) + 1 :]
    late_convs = [m for m in after if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (1, 1) and c.out_channels == 3 for c in late_convs)
    if hasattr(model, "last_conv_stage"):
        assert model.last_conv_stage is target


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name: str) -> None:
    info = baseline_info(name)
    assert isinstance(info, BaselineInfo)
    assert info.name == name
    assert info.display_name and info.reference and info.implementation
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.display_name = "x"  # type: ignore[misc]


def test_the_paper_s_six_networks_are_named_as_in_the_paper() -> None:
    assert {baseline_info(n).paper_name for n in NAMES} - {None} == PAPER_NAMES
    assert baseline_info("nasnet_a_mobile").display_name == "NASNet-A-Mobile"
    assert baseline_info("covidnet_ct_l").display_name == "COVID-Net CT L"


@pytest.mark.parametrize(("name", "reference"), [("covidnet_ct_l", "ct-l"), ("covidnet_ct_s", "ct-s")])
def test_covidnet_baselines_are_the_space_s_reference_specs(name: str, reference: str) -> None:
    model = create_baseline(name, num_classes=3)
    gray = create_baseline(name, in_chans=1)
    assert isinstance(model, CovidNetCT) and isinstance(gray, CovidNetCT)
    expected = build(get_reference(reference), 3)
    assert model.spec == expected.spec
    assert [p.shape for p in model.parameters()] == [p.shape for p in expected.parameters()]
    assert gray.spec.stem.in_channels == 1


def test_an_unknown_name_lists_the_known_ones_and_suggests_the_closest() -> None:
    with pytest.raises(KeyError, match="did you mean 'mobilenet_v2'") as e:
        create_baseline("mobilenetv2")
    assert all(n in str(e.value) for n in NAMES)
    with pytest.raises(KeyError, match="unknown baseline 'resnet50'"):
        baseline_info("resnet50")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be an integer of at least 2, got 1"),
        ({"num_classes": True}, "num_classes must be an integer of at least 2, got True"),
        ({"in_chans": 2}, "in_chans must be one of 1, 3, got 2"),
    ],
)
def test_bad_arguments_state_the_rule_and_the_value(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_baseline("mobilenet_v2", **kwargs)


def test_a_duplicate_name_is_a_value_error() -> None:
    n = len(BASELINES)
    info = dataclasses.replace(baseline_info("mobilenet_v2"))
    with pytest.raises(ValueError, match="'mobilenet_v2' is already registered"):
        register_baseline(info)(lambda num_classes, in_chans: nn.Identity())
    assert len(BASELINES) == n


def test_torchvision_baselines_download_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a baseline tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    for name in ("squeezenet1_0", "squeezenet1_1", "mobilenet_v2", "efficientnet_b0"):
        create_baseline(name)
