"""A spec too large to build is refused from the spec alone, before any tensor exists."""

from __future__ import annotations

import optuna
import pytest
import torch.nn as nn

from space import build
from space.references import get_reference
from space.sampler import sample, space_names
from space.spec import MAX_PARAMS, ArchSpec, SpecError


def _built_weights(spec: ArchSpec) -> int:
    model = build(spec, 3)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", ["ct-l", "ct-s"])
def test_the_count_from_the_spec_is_the_built_networks(name: str) -> None:
    spec = get_reference(name)
    assert spec.weight_count() == _built_weights(spec)


@pytest.mark.parametrize("space", space_names())
def test_the_count_holds_for_sampled_specs(space: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for seed in range(25):
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
        spec = sample(trial, space)
        assert spec.weight_count() == _built_weights(spec), spec.to_json(None)
        assert spec.weight_count() < MAX_PARAMS


def test_a_crafted_spec_of_huge_blocks_is_refused_before_building() -> None:
    d = get_reference("ct-l").to_dict()
    for stage in d["stages"]:
        for block in stage["blocks"]:
            block.update(out_channels=8192, mid_channels=8192, conv="dense", groups=1, se_channels=0)
    with pytest.raises(SpecError, match=r"stages ask for about [\d,]+ M weights .* at most 100 M"):
        ArchSpec.from_dict(d)
