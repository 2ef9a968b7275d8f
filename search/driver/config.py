"""The configuration of a search run: defaults, then an optional YAML file, then flags.

The resolved configuration is one frozen ``RunConfig``: the search's own settings, the
``TrainConfig`` every candidate is trained with and the ``CVConfig`` that says how its accuracy is
measured. Flags, YAML keys and the stored copy (``config.yaml`` next to the run's outputs, and the
study's ``run_config`` user attr) are one flat namespace derived from the three dataclasses'
fields (``evaluators.settings``): a new training setting is one field of ``TrainConfig``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluators.runs import CVConfig
from evaluators.settings import ConfigError, Setting, check_int, coerce, flagged, parse_count, setting
from evaluators.training import TrainConfig
from search.errors import UsageError

OBJECTIVES = ("pareto", "netscore")
MAX_STUDY_NAME = 512
SAMPLERS = ("nsga2", "tpe", "random", "gp")
# What `search run` trains with unless told otherwise: the proxy protocol (a few epochs that rank
# architectures, evaluators.training.PROTOCOLS), not the paper's 20 epochs at 512 px.
RUN_TRAINING_DEFAULTS: dict[str, Any] = {"protocol": "proxy"}


def _run_training() -> TrainConfig:
    return TrainConfig.resolve(RUN_TRAINING_DEFAULTS)


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a search does.

    ``storage`` and ``artifacts`` default to ``study.db`` and ``artifacts/`` inside ``out``;
    ``data`` empty means the bundled dataset. ``train`` and ``cv`` are the training and measuring
    settings (their flags are flat: ``--epochs``, ``--cv-folds``); build one from flat settings
    with ``RunConfig.make(epochs=1, out=...)`` (the training settings start from the ``proxy``
    protocol's preset unless ``protocol`` says otherwise).
    """

    # where
    data: tuple[str, ...] = setting(
        (),
        "COVIDx-format data folder; repeat for a union of cohorts (default: the bundled data)",
        metavar="DIR",
    )
    out: str = setting("runs/search", "output folder: study.db, artifacts/, config.yaml", metavar="DIR")
    storage: str | None = setting(
        None,
        "Optuna storage URL: sqlite:///f.db (default: OUT/study.db), postgresql://..., journal:f.log",
        metavar="URL",
    )
    study: str = setting("covidnet-ct", "study name; the same storage and study resume", metavar="NAME")
    artifacts: str | None = setting(
        None,
        "artifact store for weights: a folder or s3://bucket (default OUT/artifacts)",
        metavar="LOCATION",
    )
    # what is searched and how
    space: str = setting(
        "prototype", "the search space: prototype (below CT L, the default) or wide", metavar="NAME"
    )
    trials: int = setting(12, "total trials of the study, over all workers")
    objective: str = setting("pareto", "pareto (accuracy, params, MACs) or netscore", choices=OBJECTIVES)
    sampler: str | None = setting(
        None, "the sampler: nsga2, tpe, random or gp (default tpe)", choices=SAMPLERS
    )
    max_params: int | None = setting(None, "hard budget on params (e.g. 450K, 1.2M)", parse=parse_count)
    max_macs: int | None = setting(
        None, "hard budget on MACs at --complexity-size (e.g. 0.97G)", parse=parse_count
    )
    complexity_size: int = setting(512, "input size at which params/MACs/NetScore are measured (the paper's)")
    population: int = setting(8, "NSGA-II population size")
    tpe_group: bool = setting(
        False,
        "TPE: model each group of co-occurring block parameters jointly (Optuna's group=True) "
        "instead of sampling block parameters independently",
    )
    startup_trials: int = setting(4, "random trials before TPE/GP/median pruning kick in")
    prune_warmup: int = setting(2, "epochs (or runs, with folds) before a trial may be stopped early")
    prune_margin: float = setting(
        5.0, "Pareto stopping rule: points a dominating finished trial must lead by"
    )
    skip_bad: bool = setting(False, "skip (and list) bad label lines instead of stopping")
    inherit: str = setting(
        "none",
        "none (every candidate from random weights) or prototype: candidates inherit the trained "
        "prototype's weights (trial 0, CT L, trained first) and are fine-tuned",
        choices=("none", "prototype"),
    )
    inherit_from: str | None = setting(
        None,
        "with --inherit prototype: take the prototype's weights from a weights file (.pt; spec.json "
        "beside it, else CT L) or STUDY:TRIAL in this storage instead of training trial 0",
        metavar="FILE|STUDY:N",
    )
    # distributed workers
    heartbeat: int = setting(30, "seconds between heartbeats of a running trial (a silent one is retried)")
    max_retry: int = setting(2, "retries of a trial whose worker died")
    max_failures: int = setting(3, "stop this worker after this many failed trials in a row")
    # how each candidate is trained, and how its accuracy is measured
    train: TrainConfig = field(default_factory=_run_training)
    cv: CVConfig = field(default_factory=CVConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, (list, str)):
            object.__setattr__(self, "data", tuple([self.data] if isinstance(self.data, str) else self.data))
        for name, low in (("trials", 1), ("population", 2), ("startup_trials", 0), ("prune_warmup", 1)):
            check_int(name, getattr(self, name), low)
        for name, low in (("heartbeat", 1), ("max_retry", 0), ("max_failures", 1)):
            check_int(name, getattr(self, name), low)
        check_int("complexity_size", self.complexity_size, 32)
        if self.complexity_size % 32:
            raise ConfigError(
                f"complexity_size must be a multiple of 32 of at least 32, got {self.complexity_size}"
            )
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        for name in ("max_params", "max_macs"):
            v = getattr(self, name)
            if v is not None:
                check_int(name, v)
        if not self.prune_margin >= 0:
            raise ConfigError(f"prune_margin must be at least 0, got {self.prune_margin}")
        if not self.study:
            raise ConfigError("study must be a non-empty name")
        if len(self.study) > MAX_STUDY_NAME:  # Optuna's study_name column (PostgreSQL, MySQL)
            raise ConfigError(f"study must be at most {MAX_STUDY_NAME} characters, got {len(self.study)}")
        if self.inherit_from and self.inherit != "prototype":
            raise ConfigError("inherit_from needs inherit prototype (--inherit prototype)")
        from space.sampler import SPACES

        if self.space not in SPACES:
            raise ConfigError(
                SPACES.unknown_message(self.space).replace("unknown search space", "space: unknown")
            )

    # ------------------------------------------------------------------ flat settings
    @classmethod
    def make(cls, **settings: Any) -> RunConfig:
        """A configuration from flat settings (``epochs=1, cv_folds=3, out=...``): training and
        measuring keys go to ``train`` and ``cv`` (``search run``'s training defaults first)."""
        own, train, cv = {}, dict(RUN_TRAINING_DEFAULTS), {}
        for key, value in settings.items():
            s = SETTINGS.get(key)
            if s is None:
                raise ConfigError(_unknown(key))
            target = own if s.owner is cls else train if s.owner is TrainConfig else cv
            target[s.name] = value
        return cls(**own, train=TrainConfig.resolve(train), cv=CVConfig(**cv))

    def to_dict(self) -> dict[str, Any]:
        """The flat settings (what ``config.yaml`` and the study's ``run_config`` hold)."""
        out: dict[str, Any] = {}
        for key, s in SETTINGS.items():
            value = getattr(self._part(s), s.name)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def get(self, key: str) -> Any:
        """The value of the flat setting ``key``."""
        s = SETTINGS[key]
        return getattr(self._part(s), s.name)

    def replace(self, **settings: Any) -> RunConfig:
        """A copy with some flat settings changed."""
        return RunConfig.make(**{**self.to_dict(), **settings})

    def _part(self, s: Setting) -> Any:
        return self if s.owner is RunConfig else self.train if s.owner is TrainConfig else self.cv

    def training_dict(self) -> dict[str, Any]:
        """The settings that decide how one candidate is trained and measured (not where it runs)."""
        return {key: self.get(key) for key, s in SETTINGS.items() if s.owner is not RunConfig and s.outcome}

    # ------------------------------------------------------------------ derived locations
    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def storage_url(self) -> str:
        if self.storage:
            return self.storage
        return f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    @property
    def artifacts_dir(self) -> str:
        return self.artifacts or str((self.out_dir / "artifacts").resolve())

    @property
    def sampler_name(self) -> str:
        return self.sampler or "tpe"


def _collect() -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for cls in (RunConfig, TrainConfig, CVConfig):
        for key, s in flagged(cls).items():
            if key in out:  # pragma: no cover - a programming error in the dataclasses
                raise AssertionError(f"setting {key!r} is declared twice")
            out[key] = s
    return out


# Every flat setting of a run, by key: RunConfig's own, then TrainConfig's, then CVConfig's.
SETTINGS: dict[str, Setting] = _collect()
TRAINING_KEYS = tuple(RunConfig().training_dict())


def _unknown(key: str, known: list[str] | None = None) -> str:
    names = sorted(known or SETTINGS)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
    return f"unknown key {key!r}{hint}"


def read_yaml(path: str | Path, settings: dict[str, Setting] | None = None) -> dict[str, Any]:
    """The settings of a YAML config file (keys as the flag names, with ``_`` or ``-``); unknown
    keys and wrong types are ``UsageError``s naming the file (and the line, for bad YAML).

    Args:
        settings: the keys this file may hold (default: a search run's, ``SETTINGS``).
    """
    known = SETTINGS if settings is None else settings
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{p}: must be a mapping of settings, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UsageError(f"{p}: {_unknown(str(key), list(known))}")
        try:
            out[name] = coerce(known[name], value, str(p))
        except ConfigError as e:
            raise UsageError(str(e)) from None
    return out


def resolve(config_file: str | None, overrides: dict[str, Any]) -> RunConfig:
    """Defaults, then ``config_file``, then ``overrides`` (flags given on the command line)."""
    settings: dict[str, Any] = {}
    if config_file:
        settings.update(read_yaml(config_file))
    settings.update(overrides)
    try:
        return RunConfig.make(**settings)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def write_yaml(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


__all__ = [
    "OBJECTIVES",
    "RUN_TRAINING_DEFAULTS",
    "SAMPLERS",
    "SETTINGS",
    "TRAINING_KEYS",
    "RunConfig",
    "read_yaml",
    "resolve",
    "write_yaml",
]
