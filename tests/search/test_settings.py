"""A training setting is one field in one dataclass: its flags, YAML keys and stored copies follow."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import optuna
import pytest
import yaml

from evaluators.runs import CVConfig
from evaluators.settings import ConfigError, flagged, setting, settings_of
from evaluators.training import TrainConfig
from search.cli import build_parser
from search.commands._common import add_setting_flags, given_settings
from search.commands.train import flag_settings, resolve
from search.driver.config import SETTINGS, TRAINING_KEYS, RunConfig, read_yaml
from search.errors import UsageError


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _flags(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}


def _other_value(s: object) -> object:
    """A valid value of setting ``s`` that differs from its default."""
    key, default = s.key, s.default  # type: ignore[attr-defined]
    special = {
        "device": "cpu",
        "patient_regex": r"^(\w+)-",
        "patients": "p.csv",
        "image_size": 96,
        "protocol": "final",
        "keep": "last",
        "precision": "bf16",
        "channels_last": "on",
        "cudnn_benchmark": "off",
        "prefetch": "on",
        "cv_by": "source",
        "cv_score": "worst",
        "harmonise": "standardise",
    }
    if key in special:
        return special[key]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default / 2 if default else 0.5
    raise AssertionError(f"no test value for {key}")


TRAINING_SETTINGS = [s for cls in (TrainConfig, CVConfig) for s in settings_of(cls) if s.flag]


@pytest.mark.parametrize("s", TRAINING_SETTINGS, ids=lambda s: s.key)
def test_every_training_field_reaches_flags_yaml_and_the_stored_configuration(
    s: object, tmp_path: Path
) -> None:
    key = s.key  # type: ignore[attr-defined]
    flag = s.flag_name  # type: ignore[attr-defined]
    for command in ("train", "run", "baselines"):
        assert flag in _flags(_subparser(command)), (command, flag)
    value = _other_value(s)
    # the YAML loader of search run and of search train
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({key: value}))
    assert read_yaml(tmp_path / "c.yaml") == {key: value}
    config = RunConfig.make(**read_yaml(tmp_path / "c.yaml"))
    assert config.get(key) == value
    # the stored copy (config.yaml and the study's run_config) and the training identity
    assert config.to_dict()[key] == value
    assert (key in TRAINING_KEYS) == s.outcome  # type: ignore[attr-defined]
    # search train: the flag sets the field
    args = _subparser("train").parse_args(["--arch", "ct-s", *_as_flag(flag, value)])
    args.config = None
    train, cv = resolve(args)
    part = train if s.owner is TrainConfig else cv  # type: ignore[attr-defined]
    assert getattr(part, s.name) == value  # type: ignore[attr-defined]


def _as_flag(flag: str, value: object) -> list[str]:
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [flag, str(value)]


def test_a_new_field_in_a_subclass_gets_a_flag_a_yaml_key_and_a_stored_value(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Extended(TrainConfig):
        mixup: float = setting(0.0, "mixup strength (a new setting)")

    known = flagged(Extended)
    assert "mixup" in known and set(flagged(TrainConfig)) < set(known)
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, known)
    args = parser.parse_args(["--mixup", "0.2", "--epochs", "3"])
    assert given_settings(args, known) == {"mixup": 0.2, "epochs": 3}
    (tmp_path / "x.yaml").write_text("mixup: 0.4\nlr: 1e-3\n")
    values = read_yaml(tmp_path / "x.yaml", known)
    assert values == {"mixup": 0.4, "lr": 0.001}
    cfg = Extended(**values)
    assert cfg.to_dict()["mixup"] == 0.4  # what a trial stores as train_config
    with pytest.raises(UsageError, match="unknown key 'mixupp'; did you mean 'mixup'"):
        (tmp_path / "y.yaml").write_text("mixupp: 1\n")
        read_yaml(tmp_path / "y.yaml", known)


def test_the_run_configuration_is_stored_flat_and_round_trips(tmp_path: Path) -> None:
    from search.driver.study import open_study

    config = RunConfig.make(out=str(tmp_path), epochs=2, cv_folds=3, lr=0.02, max_macs=10**9, study="s")
    study, created = open_study(config, optuna.storages.InMemoryStorage())
    assert created
    stored = study.user_attrs["run_config"]
    assert set(stored) == set(SETTINGS)
    assert RunConfig.make(**stored) == config


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="cv_folds must be an integer of at least 1, got 0"):
        RunConfig.make(cv_folds=0)
    with pytest.raises(ConfigError, match="unknown key 'epoch'; did you mean 'epochs'"):
        RunConfig.make(epoch=3)
    assert set(flag_settings()) == {s.key for s in TRAINING_SETTINGS}
