"""Structured pruning to a MACs target on random tensors: the pruning and rebuild core, no data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from baselines import create_baseline
from evaluators import profile
from evaluators.extras import MissingExtraError
from search.errors import RunFailed, UsageError
from search.pruning.checkpoints import (
    apply_channel_config,
    as_spec,
    channel_config,
    load_checkpoint,
    save_checkpoint,
)
from search.pruning.core import (
    accumulate_gradients,
    fit_ratio,
    make_importance,
    prune_once,
    prune_to_target,
    require_torch_pruning,
    step_targets,
    target_from,
    within,
)
from space import ArchSpec, BlockSpec, StageSpec, StemSpec, build, get_reference, spec_of

SIZE = 64


def _batches(n: int = 2, size: int = SIZE, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 3, size, size, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)
    ]


def _one_epoch(model: nn.Module, step: int) -> dict[str, Any]:
    """One epoch of SGD over a handful of random tensors: the fine-tuning of a real run, in small."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for x, y in _batches(2, seed=step):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {"step": step}


def _macs(model: nn.Module, size: int = SIZE) -> int:
    return profile(model, (3, size, size), memory=False).macs


def test_ct_l_pruned_to_the_ct_s_budget_is_an_archspec_that_rebuilds_exactly() -> None:
    ct_l = build(get_reference("ct-l"))
    target = _macs(build(get_reference("ct-s")))
    seen: list[int] = []
    result = prune_to_target(
        ct_l, target, size=SIZE, steps=2, finetune=_one_epoch, on_step=lambda s: seen.append(s.step)
    )
    assert seen == [1, 2] and [s.finetune for s in result.steps] == [{"step": 1}, {"step": 2}]
    assert result.macs_before == _macs(ct_l) and result.macs == _macs(result.model)
    assert abs(result.macs - target) <= 0.02 * target
    assert result.steps[0].target_macs > result.steps[1].target_macs == target
    assert sum(p.numel() for p in ct_l.parameters()) == result.params_before  # the source is untouched

    spec, rebuilt = as_spec(result.model)
    assert isinstance(spec, ArchSpec) and spec == ArchSpec.from_json(spec.to_json())
    fresh = build(spec)
    p_fresh, p_pruned = profile(fresh, (3, SIZE, SIZE)), profile(result.model, (3, SIZE, SIZE))
    assert (p_fresh.params, p_fresh.macs) == (p_pruned.params, p_pruned.macs)
    fresh.load_state_dict(result.model.state_dict())  # strict: every name and shape fits
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), result.model.eval()(x))
        assert torch.equal(rebuilt(x), result.model(x))
    # one width per bottleneck, and the stages narrower than CT L's
    assert [st.out_channels for st in spec.stages] < [st.out_channels for st in get_reference("ct-l").stages]


def test_mobilenet_v2_halved_reloads_from_channel_counts_without_pickle(tmp_path: Path) -> None:
    model = create_baseline("mobilenet_v2")
    size = 32
    before = _macs(model, size)
    result = prune_to_target(model, target_from(before, None, 0.5), size=size, steps=1)
    assert within(result.macs, before // 2)
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, result.model, "mobilenet_v2")
    raw = torch.load(path, weights_only=True)  # plain data and tensors: no pickled module
    assert raw["baseline"] == "mobilenet_v2" and raw["config"] == channel_config(result.model)
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())
    reloaded = load_checkpoint(path)
    assert _macs(reloaded, size) == result.macs
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(reloaded(x), result.model.eval()(x))


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "lamp"])
def test_every_importance_meets_the_target_on_a_spec_with_every_block_kind(importance: str) -> None:
    spec = ArchSpec(
        stem=StemSpec(out_channels=24),
        stages=(
            StageSpec((BlockSpec(32, 16, se_channels=8), BlockSpec(32, 64, conv="depthwise"))),
            StageSpec(
                (BlockSpec(48, 48, type="basic", stride=2), BlockSpec(48, 32, conv="grouped", groups=4))
            ),
            StageSpec((BlockSpec(48, 48, type="basic", stride=2, conv="depthwise", se_channels=16),)),
        ),
    )
    model = build(spec)
    before = _macs(model)
    batches = _batches()
    result = prune_to_target(
        model,
        before * 6 // 10,
        size=SIZE,
        importance=importance,
        steps=2,
        gradients=lambda m: accumulate_gradients(m, batches),
    )
    assert result.scope == ("global" if importance == "lamp" else "local")
    assert within(result.macs, before * 6 // 10)
    pruned, _ = as_spec(result.model)
    assert pruned.stages[1].blocks[1].groups == 4 and pruned.stages[1].blocks[1].mid_channels % 4 == 0
    assert all(p.grad is None for p in result.model.parameters())


def test_global_pruning_keeps_a_bottleneck_at_one_width() -> None:
    model = build(get_reference("ct-s"))
    pruned = prune_once(model, 0.4, make_importance("lamp"), "global", torch.zeros(1, 3, 32, 32))
    spec = spec_of(pruned)  # raises if conv1 and conv2 of a bottleneck differ
    assert spec.stages[3].blocks[0].groups == 8 and spec.stages[3].blocks[0].mid_channels % 8 == 0
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_a_projection_shortcut_never_becomes_an_identity() -> None:
    # 40 and 41 channels pruned by half become 20 and 20: the block would lose its projection
    spec = ArchSpec(stem=StemSpec(out_channels=40), stages=(StageSpec((BlockSpec(41, 16),)),))
    pruned = prune_once(build(spec), 0.5, make_importance("magnitude"), "local", torch.zeros(1, 3, 32, 32))
    block = pruned.stages[0][0]
    assert isinstance(block.shortcut, nn.Sequential)
    assert block.shortcut[0].in_channels != block.shortcut[0].out_channels
    as_spec(pruned)  # rebuilds with the same layers


def test_targets_and_errors() -> None:
    assert step_targets(1000, 250, 2) == [500, 250]
    assert target_from(1000, None, 0.25) == 750 and target_from(1000, 600, None) == 600
    for macs, ratio in ((None, None), (10, 0.5), (2000, None), (None, 1.5)):
        with pytest.raises(UsageError):
            target_from(1000, macs, ratio)
    model = build(get_reference("ct-s"))
    with pytest.raises(UsageError, match="importance must be one of"):
        prune_to_target(model, 10**6, size=32, importance="l1")
    with pytest.raises(UsageError, match="Taylor importance needs gradients"):
        prune_to_target(model, 10**6, size=32, importance="taylor")
    with pytest.raises(UsageError, match="steps must be"):
        prune_to_target(model, 10**6, size=32, steps=0)
    with pytest.raises(UsageError, match="target_macs must be between"):
        prune_to_target(model, 10**12, size=32)
    tiny = build(ArchSpec(stem=StemSpec(out_channels=8), stages=(StageSpec((BlockSpec(8, 4),)),)))
    with pytest.raises(RunFailed, match="no channel ratio reaches"):
        fit_ratio(tiny, 10, 32, make_importance("magnitude"), "local", torch.zeros(1, 3, 32, 32))


def test_a_channel_config_names_real_layers() -> None:
    model = create_baseline("squeezenet1_1")
    config = channel_config(model)
    with pytest.raises(UsageError, match="names a layer"):
        apply_channel_config(create_baseline("squeezenet1_1"), {"nope": config["features.0"]})
    with pytest.raises(UsageError, match="the layer is a Conv2d"):
        apply_channel_config(create_baseline("squeezenet1_1"), {"features.0": {"type": "Linear"}})


def test_missing_torch_pruning_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(MissingExtraError, match=r"install the \[prune\] extra: pip install '\.\[prune\]'"):
        require_torch_pruning()
    from search.cli import main

    assert main(["--quiet", "prune", "--arch", "ct-s", "--target-ratio", "0.5"]) == 2  # one line, exit 2
