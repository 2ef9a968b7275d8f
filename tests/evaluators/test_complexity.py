from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evaluators import netscore, profile
from space import ArchSpec, BlockSpec, StageSpec, StemSpec, build


def test_netscore_matches_the_paper() -> None:
    assert round(netscore(98.3, 450_000, 970_000_000), 2) == 83.30
    # With FLOPs instead of MACs it would not (the reference file's check).
    assert round(netscore(98.3, 450_000, 1_940_000_000), 2) == 80.29


@pytest.mark.parametrize(
    ("a", "p", "m"), [(0, 1, 1), (101, 1, 1), (50, 0, 1), (50, 1, -1), (float("nan"), 1, 1)]
)
def test_netscore_rejects_bad_input(a: float, p: int, m: int) -> None:
    with pytest.raises(ValueError):
        netscore(a, p, m)


def test_macs_of_a_hand_computable_network() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 16*16 * 8 * 3*3*3 = 55,296
        nn.Conv2d(8, 4, 1, bias=False),  # 16*16 * 4 * 8 = 8,192
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),  # 1024 * 10 = 10,240
    )
    p = profile(model, (3, 16, 16))
    assert p.macs == 55_296 + 8_192 + 10_240
    assert p.flops == 2 * p.macs
    assert p.params == 8 * 27 + 4 * 8 + 1024 * 10 + 10
    assert p.unsupported_ops == {}
    assert p.by_module["0"] == 55_296
    # Peak activations: at least the input and the largest layer output (8x16x16 float32).
    assert p.peak_activation_bytes >= 8 * 16 * 16 * 4 + 3 * 16 * 16 * 4


def test_unsupported_ops_are_recorded_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    spec = ArchSpec(
        stem=StemSpec(8, kernel_size=3), stages=(StageSpec((BlockSpec(out_channels=8, mid_channels=8),)),)
    )
    p = profile(build(spec), (3, 32, 32))
    assert p.unsupported_ops.get("aten::add", 0) >= 1
    captured = capsys.readouterr()
    assert "unsupported" not in (captured.out + captured.err).lower()


def test_profile_is_frozen_and_restores_training_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    p = profile(model, (3, 8, 8))
    assert model.training
    with pytest.raises(AttributeError):
        p.macs = 1  # type: ignore[misc]
    assert math.isclose(p.to_dict()["flops"], 2 * p.macs)


def test_profile_rejects_a_bad_input_size() -> None:
    with pytest.raises(ValueError, match="input_size must be three positive integers"):
        profile(nn.Conv2d(3, 4, 3), (3, 0, 8))
    with pytest.raises(ValueError, match="input_size"):
        profile(nn.Conv2d(3, 4, 3), (8, 8))  # type: ignore[arg-type]


def test_peak_memory_grows_with_the_input() -> None:
    model = build(
        ArchSpec(stem=StemSpec(8), stages=(StageSpec((BlockSpec(out_channels=8, mid_channels=8),)),))
    )
    small = profile(model, (3, 32, 32)).peak_activation_bytes
    large = profile(model, (3, 64, 64)).peak_activation_bytes
    assert 3.5 < large / small < 4.5
    assert torch.is_grad_enabled()


def test_spec_complexity_equals_the_profile_of_built_networks() -> None:
    import optuna

    from evaluators.complexity import spec_complexity
    from space import build, get_reference, sample
    from space.spec import ArchSpec, BlockSpec, StageSpec, StemSpec

    specs = [get_reference("ct-l"), get_reference("ct-s")]
    specs += [sample(optuna.trial.FixedTrial(p)) for p in _random_params(40)]
    # basic blocks, depthwise and grouped, SE, no pool, stride-1 stem, one input channel
    specs.append(
        ArchSpec(
            stem=StemSpec(out_channels=16, kernel_size=3, stride=1, pool=False, in_channels=1),
            stages=(
                StageSpec((BlockSpec(16, 16, type="basic", conv="depthwise", se_channels=8),)),
                StageSpec(
                    (BlockSpec(32, 32, type="basic", stride=2, conv="grouped", groups=4, kernel_size=5),)
                ),
            ),
        )
    )
    for spec in specs:
        for size, classes in ((64, 3), (96, 2)):
            prof = profile(build(spec, classes), (spec.stem.in_channels, size, size), memory=False)
            assert spec_complexity(spec, size, classes) == (prof.params, prof.macs), spec.arch_id


def _random_params(n: int) -> list[dict]:
    import optuna

    from space import sample

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
    out = []
    for _ in range(n):
        trial = study.ask()
        sample(trial)
        out.append(trial.params)
        study.tell(trial, 0.0)
    return out
