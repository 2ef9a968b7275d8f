"""What several commands share: the run-configuration flags, the data flags and loader, metric
tables, and the setup of commands that train beside a search (baselines, prune)."""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, fields
from typing import Any

from search.console import err_console, print_table
from search.driver.config import OBJECTIVES, SAMPLERS, TRAINING_KEYS, RunConfig, resolve
from search.errors import UsageError

# ------------------------------------------------------------------ run-configuration flags
HELP = {
    "data": "COVIDx-format data folder; repeat for a union of cohorts (default: the bundled data)",
    "out": "output folder: study.db, artifacts/, config.yaml (default runs/search)",
    "storage": "Optuna storage URL: sqlite:///f.db (default: OUT/study.db), postgresql://..., journal:f.log",
    "study": "study name; the same storage and study resume",
    "artifacts": "artifact store for weights: a folder or s3://bucket (default OUT/artifacts)",
    "trials": "total trials of the study, over all workers",
    "objective": "pareto (accuracy, params, MACs) or netscore",
    "sampler": "override the sampler: nsga2, tpe, random or gp (default tpe)",
    "seed": "seed of the sampler and of training",
    "max_params": "hard budget on params (e.g. 450K, 1.2M)",
    "max_macs": "hard budget on MACs at --complexity-size (e.g. 0.97G)",
    "complexity_size": "input size at which params/MACs/NetScore are measured (default 512, the paper's)",
    "population": "NSGA-II population size",
    "startup_trials": "random trials before TPE/GP/median pruning kick in",
    "prune_warmup": "epochs before a trial may be pruned",
    "prune_margin": "Pareto pruning: accuracy points a dominating finished trial must lead by",
    "epochs": "training epochs per candidate",
    "image_size": "training image size (a multiple of 32)",
    "batch_size": "batch size",
    "lr": "SGD learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay",
    "patience": "early stopping: epochs without a better val accuracy",
    "cosine": "cosine learning-rate decay",
    "augment": "the paper's augmentations",
    "exterior_exclusion": "replace the background outside the body box by its mean",
    "device": "auto, cpu, cuda or cuda:N",
    "skip_bad": "skip (and list) bad label lines instead of stopping",
    "heartbeat": "seconds between heartbeats of a running trial (a silent one is failed and retried)",
    "max_retry": "retries of a trial whose worker died",
    "max_failures": "stop this worker after this many failed trials in a row",
    "cv_folds": "patient-grouped folds of train+val per candidate (1: the plain train/val split)",
    "repeats": "trainings with different seeds per fold",
    "patient_regex": "regex whose first group is the patient id in a file name (default: COVIDx's NCP_341)",
    "patients": "CSV filename,patient overriding --patient-regex (default: DATA/patients.csv if present)",
}


def parse_count(text: str) -> int:
    """``450000``, ``450K``, ``1.2M``, ``0.97G`` -> an integer count."""
    t = text.strip().upper().replace(",", "").replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(t[-1:], 1.0)
    number = t[:-1] if t[-1:] in "KMG" else t
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count such as 450000, 450K, 1.2M or 0.97G, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return round(value)


def add_run_flags(p: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """One flag per ``RunConfig`` field (``--max-params`` for ``max_params``), defaults suppressed
    so that only flags given on the command line override the config file."""
    hints = typing.get_type_hints(RunConfig)
    for f in fields(RunConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": HELP.get(f.name, "")}
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        if f.name == "data":
            p.add_argument(flag, action="append", metavar="DIR", **kw)
        elif base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name in ("max_params", "max_macs"):
            p.add_argument(flag, type=parse_count, metavar="N", **kw)
        elif f.name == "objective":
            p.add_argument(flag, choices=OBJECTIVES, **kw)
        elif f.name == "sampler":
            p.add_argument(flag, choices=SAMPLERS, **kw)
        elif base in (int, float):
            p.add_argument(flag, type=base, metavar="N" if base is int else "X", **kw)
        else:
            p.add_argument(flag, metavar=f.name.split("_")[-1].upper(), **kw)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if "data" in overrides:
        overrides["data"] = tuple(overrides["data"])
    return resolve(getattr(args, "config", None), overrides)


# ------------------------------------------------------------------ data and metrics
def data_flags(p: argparse.ArgumentParser) -> None:
    """``--data`` (repeatable), ``--skip-bad`` and ``--cache-dir``, shared with ``search train``."""
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="a COVIDx-CT-format folder (or one of its train_*.txt to pick a label-file set); "
        "repeat for several sources; default: the bundled ct-sars-mini",
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


def print_metrics(result: Any, title: str) -> None:
    """Overall and per-source summary rows, then the per-class table and confusion matrix."""
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
            [m.name, m.support, fmt(m.sensitivity), fmt(m.ppv), fmt(m.specificity), fmt(m.npv), fmt(m.f1)]
            for m in result.per_class.values()
        ],
    )
    names = list(result.class_names)
    print_table(
        "confusion matrix (rows: true class, columns: predicted)",
        ["true \\ predicted", *names],
        [[names[i], *row] for i, row in enumerate(result.confusion_matrix)],
    )


# ------------------------------------------------------------------ training beside a search
INHERITED = (*TRAINING_KEYS, "complexity_size", "data", "artifacts", "device", "skip_bad")


def study_training_config(args: argparse.Namespace, storage: Any) -> tuple[RunConfig, list[str]]:
    """The search study's configuration for what decides training; flags override it (with a
    warning listing what differs, since the baselines are then not on the search's scale)."""
    import optuna

    flags = config_from_args(args)
    given = {f.name for f in fields(RunConfig)} & set(vars(args))
    try:
        stored = optuna.load_study(study_name=flags.study, storage=storage).user_attrs.get("run_config", {})
    except KeyError:
        stored = {}
    settings = {k: v for k, v in stored.items() if k in INHERITED}
    if "data" in settings:
        settings["data"] = tuple(settings["data"])
    differs = [k for k in given & set(settings) if getattr(flags, k) != settings[k]]
    merged = {**settings, **{k: getattr(flags, k) for k in given}, "study": flags.study}
    if flags.storage:
        merged["storage"] = flags.storage
    merged["out"] = flags.out
    return RunConfig(**merged), sorted(differs)


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
            f"warning: {', '.join(differs)} differ from study {config.study!r}'s search trials; "
            f"{what} not on the search's scale"
        )
    return TrainingSetup(storage, config, TrainingEvaluator(config), artifact_store(config.artifacts_dir))
