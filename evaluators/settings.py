"""Settings declared once, as dataclass fields: their flags, YAML keys and stored copies follow.

A configuration class (``evaluators.training.TrainConfig``, ``evaluators.runs.CVConfig``,
``search.driver.config.RunConfig``) declares each setting with ``setting(default, "help")``. The
field's metadata says how the outside world sees it:

* ``key``: its name in YAML files, in the stored run configuration and (with ``-`` for ``_``) on
  the command line; the field name unless given (``CVConfig.folds`` is ``cv_folds``);
* ``flag``: whether it is a user-facing setting at all (``False``: internal, e.g. the evaluation
  batch size);
* ``outcome``: whether it changes what training produces (``False`` for the device): the settings
  that decide "trained the same way" (a baseline's ``config_key``, a resumed study's check);
* ``choices``, ``parse`` (a text-to-value function for counts such as ``450K``), ``metavar``.

``settings_of(cls)`` lists them as ``Setting`` records; ``coerce`` checks a YAML value against the
field's type; the CLI builds its flags from the same records (``search.commands._common``). Adding
a setting is therefore one field in one dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from space.errors import UserInputError


class ConfigError(UserInputError, ValueError):
    """A setting with a value it cannot take; the message names the setting and the value."""


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    key: str | None = None,
    flag: bool = True,
    outcome: bool = True,
    choices: Sequence[Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field that is a setting (see the module docstring)."""
    meta = {
        "setting": True,
        "help": help,
        "key": key,
        "flag": flag,
        "outcome": outcome,
        "choices": tuple(choices) if choices is not None else None,
        "parse": parse,
        "metavar": metavar,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One setting of a configuration class.

    Attributes:
        key: its outside name (YAML key, stored key; ``--key-with-dashes`` on the command line).
        name: the dataclass field's name.
        owner: the configuration class that declares it.
        type: the base type: ``bool``, ``int``, ``float``, ``str`` or ``tuple`` (of paths).
        optional: whether ``None`` is allowed.
        default: the field's default (``MISSING`` when it has none).
    """

    key: str
    name: str
    owner: type
    type: type
    optional: bool
    default: Any
    help: str
    flag: bool
    outcome: bool
    choices: tuple[Any, ...] | None
    parse: Callable[[str], Any] | None
    metavar: str | None

    @property
    def flag_name(self) -> str:
        return "--" + self.key.replace("_", "-")


def settings_of(cls: type) -> list[Setting]:
    """The settings ``cls`` declares with ``setting(...)``, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("setting"):
            continue
        kind = hints[f.name]
        union = typing.get_origin(kind) in (typing.Union, types.UnionType)
        args = typing.get_args(kind) if union else ()
        optional = type(None) in args
        # unwrap Optional only: tuple[str, ...] keeps its origin (a repeatable flag), not str
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        base = typing.get_origin(base) or base
        default = f.default
        if default is MISSING and f.default_factory is not MISSING:
            default = f.default_factory()
        m = f.metadata
        out.append(
            Setting(
                key=m["key"] or f.name,
                name=f.name,
                owner=cls,
                type=base,
                optional=optional,
                default=default,
                help=m["help"],
                flag=m["flag"],
                outcome=m["outcome"],
                choices=m["choices"],
                parse=m["parse"],
                metavar=m["metavar"],
            )
        )
    return out


def flagged(cls: type) -> dict[str, Setting]:
    """The user-facing settings of ``cls`` by key."""
    return {s.key: s for s in settings_of(cls) if s.flag}


def coerce(s: Setting, value: Any, source: str = "") -> Any:
    """``value`` (as YAML typed it) checked against the setting's type; ``ConfigError`` naming
    ``source`` (a file) and the key otherwise."""
    where = f"{source}: " if source else ""
    if value is None:
        if s.optional:
            return None
        raise ConfigError(f"{where}{s.key} must not be empty")
    if s.parse is not None and isinstance(value, str):
        try:
            return s.parse(value)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}{s.key}: {e}") from None
    if s.type is tuple:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}{s.key} must be a path or a list of paths, got {value!r}")
    if s.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{s.key} must be true or false, got {value!r}")
        return value
    if s.type is int:
        if isinstance(value, float) and value.is_integer() and s.parse is not None:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{s.key} must be an integer, got {value!r}")
        return value
    if s.type is float:
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}{s.key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}{s.key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}{s.key} must be a string, got {value!r}")
    if s.choices is not None and value not in s.choices:
        raise ConfigError(f"{where}{s.key} must be one of {', '.join(map(str, s.choices))}, got {value!r}")
    return value


# ------------------------------------------------------------------ checks for __post_init__
def check_int(key: str, value: Any, low: int | None = 1) -> None:
    """``value`` is an integer (of at least ``low``, unless ``low`` is ``None``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        at_least = f" of at least {low}" if low is not None else ""
        raise ConfigError(f"{key} must be an integer{at_least}, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{key} must be an integer of at least {low}, got {value!r}")


def check_number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")


def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def parse_count(text: str) -> int:
    """``450000``, ``450K``, ``1.2M``, ``0.97G`` -> an integer count (``ValueError`` otherwise)."""
    t = str(text).strip().upper().replace(",", "").replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(t[-1:], 1.0)
    number = t[:-1] if t[-1:] in "KMG" else t
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"expected a count such as 450000, 450K, 1.2M or 0.97G, got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value >= 2**63:
        raise ValueError(f"must be a positive finite count below 2**63, got {text!r}")
    return round(value)
