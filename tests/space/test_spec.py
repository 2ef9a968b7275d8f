from __future__ import annotations

import json
from dataclasses import replace

import optuna
import pytest

from space import ArchSpec, BlockSpec, SpecError, StageSpec, StemSpec, get_reference, load_spec, sample


def _sampled(n: int, seed: int = 0) -> list[ArchSpec]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample(trial))
        study.tell(trial, 0.0)
    return out


def test_json_round_trip_over_sampled_specs() -> None:
    specs = _sampled(250)
    assert len({s.arch_id for s in specs}) > 240  # the space is large: almost no repeats
    for spec in specs:
        again = ArchSpec.from_json(spec.to_json())
        assert again == spec
        assert again.arch_id == spec.arch_id
        assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_arch_id_is_short_stable_and_ignores_the_name() -> None:
    spec = get_reference("ct-l")
    assert len(spec.arch_id) == 10
    assert spec.arch_id == get_reference("ct-l").arch_id
    assert replace(spec, name="other").arch_id == spec.arch_id
    assert get_reference("ct-s").arch_id != spec.arch_id
    assert spec.to_dict()["schema_version"] == 1


def _block(**kw: object) -> BlockSpec:
    args: dict[str, object] = {"out_channels": 32, "mid_channels": 16}
    args.update(kw)
    return BlockSpec(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out_channels": -4}, "out_channels must be between 1 and 8192, got -4"),
        ({"mid_channels": 0}, "mid_channels must be between 1 and 8192, got 0"),
        ({"kernel_size": 4}, "kernel_size must be one of 3, 5, 7, got 4"),
        ({"type": "inception"}, "type must be one of bottleneck, basic, got 'inception'"),
        ({"conv": "separable"}, "conv must be one of dense, grouped, depthwise, got 'separable'"),
        ({"stride": 3}, "stride must be one of 1, 2, got 3"),
        ({"conv": "grouped", "groups": 3}, "groups must divide mid_channels=16, got 3"),
        ({"conv": "dense", "groups": 2}, "groups must be 1 for a dense conv, got 2"),
        ({"se_channels": 17}, "se_channels must be 0 (off) or at most 16, got 17"),
    ],
)
def test_invalid_blocks_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as e:
        _block(**kwargs)
    assert str(e.value) == message


def test_errors_from_dict_carry_the_field_path() -> None:
    d = get_reference("ct-s").to_dict()
    d["stages"][1]["blocks"][0]["kernel_size"] = 4
    with pytest.raises(
        SpecError, match=r"^stages\[1\]\.blocks\[0\]\.kernel_size must be one of 3, 5, 7, got 4$"
    ):
        ArchSpec.from_dict(d)
    d = get_reference("ct-s").to_dict()
    d["stages"][0]["blocks"][1]["out_channels"] = -8
    with pytest.raises(SpecError, match=r"^stages\[0\]\.blocks\[1\]\.out_channels must be between"):
        ArchSpec.from_dict(d)
    d = get_reference("ct-s").to_dict()
    d["stages"][2]["blocks"][0]["type"] = "unknown"
    with pytest.raises(SpecError, match=r"^stages\[2\]\.blocks\[0\]\.type must be one of bottleneck, basic"):
        ArchSpec.from_dict(d)
    d = get_reference("ct-s").to_dict()
    d["stem"]["colour"] = 1
    with pytest.raises(SpecError, match=r"^stem\.colour is not a known field"):
        ArchSpec.from_dict(d)
    d = get_reference("ct-s").to_dict()
    del d["stages"][0]["blocks"][0]["mid_channels"]
    with pytest.raises(SpecError, match=r"^stages\[0\]\.blocks\[0\]\.mid_channels is required$"):
        ArchSpec.from_dict(d)
    d = get_reference("ct-s").to_dict()
    d["schema_version"] = 99
    with pytest.raises(SpecError, match="schema_version must be 1"):
        ArchSpec.from_dict(d)


def test_cross_block_rules() -> None:
    with pytest.raises(SpecError, match="must hold at least one block"):
        StageSpec(())
    with pytest.raises(
        SpecError, match=r"stages\[0\]\.blocks\[0\]\.mid_channels must equal the block's input"
    ):
        ArchSpec(
            stem=StemSpec(16),
            stages=(
                StageSpec((BlockSpec(out_channels=32, mid_channels=32, type="basic", conv="depthwise"),)),
            ),
        )


def test_load_spec_names_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = get_reference("ct-l").to_dict()
    d["stages"][3]["blocks"][2]["kernel_size"] = 4
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(SpecError, match=r"bad.json: stages\[3\]\.blocks\[2\]\.kernel_size"):
        load_spec(str(f))
    good = tmp_path / "good.json"
    good.write_text(get_reference("ct-s").to_json())
    assert load_spec(str(good)) == get_reference("ct-s")
    with pytest.raises(SpecError, match="missing.json: no such spec file"):
        load_spec(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SpecError, match="broken.json: not valid JSON"):
        load_spec(str(tmp_path / "broken.json"))
