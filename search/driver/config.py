"""The configuration of a search run: defaults, then an optional YAML file, then flags.

The resolved configuration is one frozen ``RunConfig``; it is written next to the run's outputs
(``config.yaml``) and into the study's user attrs, so a report or a resumed run knows exactly how
the candidates were trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from search.errors import UsageError

OBJECTIVES = ("pareto", "netscore")
SAMPLERS = ("nsga2", "tpe", "random", "gp")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a search does.

    Attributes mirror the ``search run`` flags (``--max-params`` is ``max_params``). ``storage``,
    ``artifacts`` default to ``study.db`` and ``artifacts/`` inside ``out``; ``data`` empty means
    the bundled dataset.
    """

    # where
    data: tuple[str, ...] = ()
    out: str = "runs/search"
    storage: str | None = None
    study: str = "covidnet-ct"
    artifacts: str | None = None
    # what is searched and how
    trials: int = 12
    objective: str = "pareto"
    sampler: str | None = None
    seed: int = 0
    max_params: int | None = None
    max_macs: int | None = None
    complexity_size: int = 512
    population: int = 8
    startup_trials: int = 4
    prune_warmup: int = 1
    prune_margin: float = 5.0
    # how each candidate is trained
    epochs: int = 4
    image_size: int = 64
    batch_size: int = 8
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    patience: int | None = None
    cosine: bool = False
    augment: bool = True
    exterior_exclusion: bool = False
    device: str = "auto"
    skip_bad: bool = False
    # how a candidate's accuracy is measured (1 and 1: one run on the train/val split)
    cv_folds: int = 1
    repeats: int = 1
    patient_regex: str = r"^(.*?_\d+)_"
    patients: str | None = None
    # distributed workers
    heartbeat: int = 30
    max_retry: int = 2
    max_failures: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.data, (list, str)):
            object.__setattr__(self, "data", tuple([self.data] if isinstance(self.data, str) else self.data))
        _positive("trials", self.trials)
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("population", self.population, low=2)
        _positive("startup_trials", self.startup_trials, low=0)
        _positive("prune_warmup", self.prune_warmup)
        _positive("heartbeat", self.heartbeat)
        _positive("max_retry", self.max_retry, low=0)
        _positive("max_failures", self.max_failures)
        _positive("cv_folds", self.cv_folds)
        _positive("repeats", self.repeats)
        for name in ("image_size", "complexity_size"):
            v = getattr(self, name)
            _positive(name, v, low=32)
            if v % 32:
                raise UsageError(f"{name} must be a multiple of 32, got {v}")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise UsageError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        for name in ("max_params", "max_macs", "patience"):
            v = getattr(self, name)
            if v is not None:
                _positive(name, v)
        if not self.lr > 0:
            raise UsageError(f"lr must be positive, got {self.lr}")
        if self.prune_margin < 0:
            raise UsageError(f"prune_margin must be at least 0, got {self.prune_margin}")
        if not self.study:
            raise UsageError("study must be a non-empty name")

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
        if self.sampler:
            return self.sampler
        return "tpe"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"] = list(self.data)
        return d

    def training_dict(self) -> dict[str, Any]:
        """The part of the configuration that decides how one candidate is trained."""
        return {k: getattr(self, k) for k in TRAINING_KEYS}


TRAINING_KEYS = (
    "epochs",
    "image_size",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "patience",
    "cosine",
    "augment",
    "exterior_exclusion",
    "seed",
    "cv_folds",
    "repeats",
    "patient_regex",
    "patients",
)


def _positive(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer of at least {low}, got {value!r}")


FIELD_TYPES = {f.name: f.type for f in fields(RunConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a YAML value against the field's type (YAML already typed it)."""
    kind = str(FIELD_TYPES[name])
    if value is None:
        if "None" in kind:
            return None
        raise UsageError(f"{source}: {name} must not be empty")
    if kind.startswith("tuple"):
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise UsageError(f"{source}: {name} must be a path or a list of paths, got {value!r}")
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise UsageError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{source}: {name} must be an integer, got {value!r}")
        return value
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{source}: {name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise UsageError(f"{source}: {name} must be a string, got {value!r}")
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML config file; unknown keys and wrong types are errors naming the file."""
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
        if name not in FIELD_TYPES:
            raise UsageError(f"{p}: unknown key {key!r}; known keys: {', '.join(sorted(FIELD_TYPES))}")
        out[name] = _coerce(name, value, str(p))
    return out


def resolve(config_file: str | None, overrides: dict[str, Any]) -> RunConfig:
    """Defaults, then ``config_file``, then ``overrides`` (flags given on the command line)."""
    settings: dict[str, Any] = {}
    if config_file:
        settings.update(read_yaml(config_file))
    unknown = set(overrides) - set(FIELD_TYPES)
    if unknown:  # pragma: no cover - a programming error in a command's flags
        raise UsageError(f"unknown settings {sorted(unknown)}")
    settings.update(overrides)
    return RunConfig(**settings)


def write_yaml(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
