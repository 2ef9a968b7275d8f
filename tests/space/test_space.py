from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
import torch
from optuna.trial import FixedTrial

from evaluators import profile
from space import (
    BLOCKS,
    ArchSpec,
    BlockSpec,
    StageSpec,
    StemSpec,
    build,
    contains,
    get_reference,
    sample,
    spec_of,
    to_params,
)
from space.sampler import NotInSpaceError

CT_L = (1_399_380, 2.09e9)
CT_S = (447_570, 0.97e9)


@pytest.mark.parametrize(
    ("name", "target", "ptol", "mtol"), [("ct-l", CT_L, 0.02, 0.03), ("ct-s", CT_S, 0.03, 0.03)]
)
def test_reference_complexity_at_512(
    name: str, target: tuple[float, float], ptol: float, mtol: float
) -> None:
    p = profile(build(get_reference(name), 3), (3, 512, 512), memory=False)
    assert abs(p.params / target[0] - 1) <= ptol, p.params
    assert abs(p.macs / target[1] - 1) <= mtol, p.macs
    assert p.flops == 2 * p.macs


@pytest.mark.parametrize("name", ["ct-l", "ct-s"])
def test_references_replay_through_fixed_trial(name: str) -> None:
    spec = get_reference(name)
    assert contains(spec)
    assert sample(FixedTrial(to_params(spec))) == replace(spec, name="")


def test_ct_s_budget_is_reachable_and_below_ct_l() -> None:
    ct_s = profile(build(get_reference("ct-s")), (3, 64, 64), memory=False)
    ct_l = profile(build(get_reference("ct-l")), (3, 64, 64), memory=False)
    assert ct_s.params < ct_l.params / 3 and ct_s.macs < ct_l.macs / 2


def test_every_sampled_spec_builds_and_runs_at_64() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    x = torch.randn(2, 3, 64, 64)
    for _ in range(40):
        trial = study.ask()
        spec = sample(trial)
        model = build(spec, 3).eval()
        with torch.no_grad():
            y = model(x)
        assert y.shape == (2, 3) and torch.isfinite(y).all()
        assert contains(spec)
        assert sample(FixedTrial(to_params(spec))) == spec
        study.tell(trial, 0.0)


def test_outside_the_space_is_reported() -> None:
    spec = ArchSpec(stem=StemSpec(16), stages=(StageSpec((BlockSpec(out_channels=32, mid_channels=8),)),))
    with pytest.raises(NotInSpaceError, match="needs 4 stages"):
        to_params(spec)


@pytest.mark.parametrize("block_type", BLOCKS.names())
@pytest.mark.parametrize("conv", ["dense", "grouped", "depthwise"])
def test_every_block_builds_runs_and_reads_back(block_type: str, conv: str) -> None:
    mid = 32
    block = BlockSpec(
        out_channels=32,
        mid_channels=mid,
        type=block_type,
        conv=conv,
        groups=4 if conv == "grouped" else 1,
        se_channels=8,
    )
    spec = ArchSpec(
        stem=StemSpec(32, kernel_size=3),
        stages=(StageSpec((block, replace(block, stride=2))),),
    )
    model = build(spec, 3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert spec_of(model) == spec


def test_spec_of_reads_pruned_channel_counts() -> None:
    spec = get_reference("ct-s")
    model = build(spec)
    assert spec_of(model) == spec


# --- named spaces --------------------------------------------------------------------------------
def _samples(space: str, n: int, seed: int = 0) -> list[ArchSpec]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample(trial, space))
        study.tell(trial, 0.0)
    return out


def test_spaces_are_registered_and_the_default_lies_below_the_prototype() -> None:
    from space.sampler import DEFAULT_SPACE, SPACES, get_space

    assert DEFAULT_SPACE == "prototype" and set(SPACES.names()) >= {"prototype", "wide"}
    ct_l = get_reference("ct-l")
    assert contains(ct_l, "prototype") and contains(ct_l, "wide") and contains(get_reference("ct-s"))
    sp = get_space("prototype")
    for s, stage in enumerate(ct_l.stages):  # the prototype's values are the tops of the ranges
        assert sp.depth[s].high == len(stage.blocks) and sp.width[s].high == stage.out_channels
        assert sp.mid[s].high == max(b.mid_channels for b in stage.blocks)
        assert sp.width[s].low <= stage.out_channels / 4 + sp.width[s].step
    for spec in _samples("prototype", 300):
        assert spec.stem.out_channels <= ct_l.stem.out_channels
        for stage, proto in zip(spec.stages, ct_l.stages):
            assert len(stage.blocks) <= len(proto.blocks) and stage.out_channels <= proto.out_channels
            assert max(b.mid_channels for b in stage.blocks) <= max(b.mid_channels for b in proto.blocks)
    with pytest.raises(KeyError, match="unknown search space 'tiny'"):
        get_space("tiny")


def test_median_macs_of_the_default_space_is_at_most_half_of_ct_l() -> None:
    import statistics

    from evaluators.complexity import spec_complexity

    ct_l = spec_complexity(get_reference("ct-l"), 512)[1]
    default = [spec_complexity(s, 512)[1] for s in _samples("prototype", 1000)]
    wide = [spec_complexity(s, 512)[1] for s in _samples("wide", 1000)]
    assert statistics.median(default) <= ct_l / 2
    assert statistics.median(wide) > ct_l  # the first space lay above the prototype


def test_a_spec_outside_a_space_is_named() -> None:
    wide_only = _samples("wide", 50)
    outside = next(s for s in wide_only if not contains(s, "prototype"))
    with pytest.raises(NotInSpaceError, match="outside the search space 'prototype'"):
        to_params(outside, "prototype")
    assert sample(FixedTrial(to_params(outside, "wide")), "wide") == outside
