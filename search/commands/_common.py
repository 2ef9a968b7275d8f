"""What several commands share: the run-configuration flags, the data flags and loader, metric
tables, and the setup of commands that train beside a search (baselines, prune)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluators.settings import Setting, parse_count
from search.console import err_console, print_table
from search.driver.config import SETTINGS, TRAINING_KEYS, RunConfig, resolve
from search.errors import UsageError


# ------------------------------------------------------------------ setting flags
def count_type(text: str) -> int:
    """argparse's type for counts such as ``450K`` (``evaluators.settings.parse_count``)."""
    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def add_setting_flags(
    p: argparse.ArgumentParser,
    settings: dict[str, Setting],
    only: set[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per setting (``--max-params`` for ``max_params``), derived from its dataclass field.

    Defaults are suppressed in the parsed namespace, so that only the flags given on the command
    line override a config file; the help shows the value used when neither sets it (``defaults``
    overrides the field's own default, e.g. ``search run``'s training defaults).
    """
    for key, s in settings.items():
        if only is not None and key not in only:
            continue
        default = (defaults or {}).get(key, s.default)
        text = s.help + (f" (default {_show(default)})" if s.type is not tuple else "")
        kw: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": text}
        if s.type is tuple:
            p.add_argument(s.flag_name, action="append", metavar=s.metavar or "DIR", **kw)
        elif s.type is bool:
            p.add_argument(s.flag_name, action=argparse.BooleanOptionalAction, **kw)
        elif s.parse is not None:
            p.add_argument(s.flag_name, type=count_type, metavar=s.metavar or "N", **kw)
        elif s.choices is not None:
            p.add_argument(s.flag_name, choices=s.choices, **kw)
        elif s.type in (int, float):
            p.add_argument(
                s.flag_name, type=s.type, metavar=s.metavar or ("N" if s.type is int else "X"), **kw
            )
        else:
            p.add_argument(s.flag_name, metavar=s.metavar or key.split("_")[-1].upper(), **kw)


def given_settings(args: argparse.Namespace, settings: dict[str, Setting]) -> dict[str, Any]:
    """The settings given as flags (``add_setting_flags`` suppresses the others)."""
    out = {k: v for k, v in vars(args).items() if k in settings}
    for key, value in out.items():
        if settings[key].type is tuple:
            out[key] = tuple(value)
    return out


def add_run_flags(p: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """The flags of a search run's settings (``search.driver.config.SETTINGS``)."""
    add_setting_flags(p, SETTINGS, only, RunConfig().to_dict())


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return resolve(getattr(args, "config", None), given_settings(args, SETTINGS))


# ------------------------------------------------------------------ data and metrics
def data_flags(p: argparse.ArgumentParser) -> None:
    """``--data`` (repeatable), ``--skip-bad`` and ``--cache-dir``, shared with ``search train``."""
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="a COVIDx-CT-format folder (or one of its train_*.txt to pick a label-file set); "
        "repeat for several sources; default: the bundled ct-sars (2,481 slices)",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip bad label lines, listing each, instead of failing"
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="decoded-image cache (default: $COVIDNET_NAS_CACHE or ~/.cache/covidnet-nas)",
    )


def load_data(args: argparse.Namespace, splits: tuple[str, ...] = ("train", "val", "test")) -> Any:
    """The dataset the flags name (the bundled one without ``--data``); skips are reported."""
    from evaluators.data.covidx import load_dataset

    dataset = load_dataset(args.data, skip_bad=args.skip_bad, splits=splits)
    for message in dataset.skipped:
        warn(f"skipped {message}")
    if dataset.skipped:
        warn(f"skipped {len(dataset.skipped)} bad lines in all")
    return dataset


def warn(text: str) -> None:
    from search.console import err_console

    err_console().print(text, markup=False, soft_wrap=True)


def check_size(size: int, flag: str = "--image-size") -> int:
    if size < 32 or size % 32:
        raise UsageError(f"{flag} must be a multiple of 32 of at least 32, got {size}")
    return size


def fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def fmt_ci(ci: Any) -> str:
    return "" if not ci else f"({ci[0]:.1f}-{ci[1]:.1f})"


def print_metrics(result: Any, title: str, names: Sequence[str] | None = None) -> None:
    """Overall and per-source summary rows, then the per-class table and confusion matrix (classes
    shown as ``names``, the data's ``classes.txt`` names, where given)."""
    covid = result.class_names[2] if len(result.class_names) > 2 else None
    rows = []
    for name, r in [("all", result), *result.per_source.items()]:
        c = r.per_class.get(covid) if covid else None
        rows.append(
            [
                name,
                r.n,
                f"{fmt(r.accuracy)} {fmt_ci(r.accuracy_ci)}".strip(),
                f"{fmt(c.sensitivity) if c else 'n/a'} {fmt_ci(r.covid_sensitivity_ci)}".strip(),
                fmt(c.ppv) if c else "n/a",
                fmt(r.macro_f1),
            ]
        )
    print_table(
        title,
        [
            "source",
            "images",
            "accuracy % (95% CI)",
            "COVID-19 sensitivity % (95% CI)",
            "COVID-19 PPV %",
            "macro F1 %",
        ],
        rows,
    )
    print_table(
        "per class (all sources; n/a: undefined, e.g. a class with no images)",
        ["class", "support", "sensitivity %", "PPV %", "specificity %", "NPV %", "F1 %"],
        [
            [shown, m.support, fmt(m.sensitivity), fmt(m.ppv), fmt(m.specificity), fmt(m.npv), fmt(m.f1)]
            for shown, m in zip(names or list(result.per_class), result.per_class.values())
        ],
    )
    names = list(names or result.class_names)
    print_table(
        "confusion matrix (rows: true class, columns: predicted)",
        ["true \\ predicted", *names],
        [[names[i], *row] for i, row in enumerate(result.confusion_matrix)],
    )


# ------------------------------------------------------------------ training beside a search
# What a command training beside a search takes from the search study (flags may override it).
# how a step runs (not what it trains): inherited like the device
STEP_KEYS = ("precision", "channels_last", "cudnn_benchmark", "prefetch", "compile")
INHERITED = (*TRAINING_KEYS, "complexity_size", "data", "artifacts", "device", *STEP_KEYS, "skip_bad")


def study_training_config(args: argparse.Namespace, storage: Any) -> tuple[RunConfig, list[str]]:
    """The search study's configuration for what decides training; flags override it (with a
    warning listing what differs, since the baselines are then not on the search's scale)."""
    import optuna

    flags = config_from_args(args)
    given = set(given_settings(args, SETTINGS))
    try:
        stored = optuna.load_study(study_name=flags.study, storage=storage).user_attrs.get("run_config", {})
    except KeyError:
        stored = {}
    settings = {k: v for k, v in stored.items() if k in INHERITED}
    if "data" in settings:
        settings["data"] = tuple(settings["data"])
    differs = [k for k in given & set(settings) if flags.get(k) != settings[k]]
    merged = {**settings, **{k: flags.get(k) for k in given}, "study": flags.study}
    if flags.storage:
        merged["storage"] = flags.storage
    merged["out"] = flags.out
    return RunConfig.make(**merged), sorted(differs)


@dataclass
class TrainingSetup:
    """What a command that trains beside a search needs: the storage, the resolved configuration,
    an evaluator on the study's data and the artifact store."""

    storage: Any
    config: RunConfig
    evaluator: Any
    store: Any


def training_setup(args: argparse.Namespace, what: str) -> TrainingSetup:
    """Open the storage, take the search study's training configuration (flags override it, with
    a warning naming what differs, since ``what`` is then not on the search's scale)."""
    import optuna

    from search.driver.objective import TrainingEvaluator
    from search.driver.storage import artifact_store, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = config_from_args(args)
    probe.out_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(probe.storage_url)
    config, differs = study_training_config(args, storage)
    if differs:
        err_console().print(
            f"warning: {', '.join(differs)} differ from the search trials of study {config.study!r}; "
            f"{what} not on the search's scale"
        )
    return TrainingSetup(storage, config, TrainingEvaluator(config), artifact_store(config.artifacts_dir))
