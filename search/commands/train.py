"""``search train``: train one architecture by the COVIDNet-CT protocol, write its weights and metrics.

Settings resolve as everywhere in the toolkit: ``TrainConfig`` defaults (the paper's), then an
optional YAML file (``--config``), then flags. The run's folder receives ``metrics.json``
(history, validation and test metrics overall and per source, the resolved settings, the data's
provenance), ``weights.pt`` (a state dict, ``torch.load(..., weights_only=True)``), ``spec.json``
and ``config.yaml``.

With ``--cv-folds K`` (K >= 2) and/or ``--repeats R`` (R >= 2) the architecture is trained K x R
times by ``evaluators.crossval.evaluate_runs`` (patient-grouped folds of train+val, the test split
unread with folds); ``metrics.json`` then also holds ``val_accuracy`` (the mean),
``val_accuracy_uncertainty`` (mean, std, every run's value, 95 % interval), ``runs`` and ``cv``,
and ``weights.pt`` is the first run's. With K = R = 1 (the default) nothing changes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from evaluators.files import write_file_atomically, write_json
from evaluators.settings import ConfigError, Setting, flagged, settings_of
from search.commands._common import (
    add_setting_flags,
    check_size,
    data_flags,
    given_settings,
    load_data,
    print_metrics,
    warn,
)
from search.console import console, err_console, print_table
from search.errors import RunFailed, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one architecture (paper protocol) and evaluate it",
        description="Train a spec by the COVIDNet-CT protocol (SGD, balanced batches, augmentation, "
        "early stopping) and write metrics.json, weights.pt, spec.json and config.yaml.",
    )
    p.add_argument(
        "--arch", required=True, metavar="NAME|SPEC.json", help="a reference spec (ct-l, ct-s) or a file"
    )
    data_flags(p)
    p.add_argument(
        "--config", metavar="FILE.yaml", help="training settings (TrainConfig and CVConfig keys); flags win"
    )
    add_setting_flags(p, flag_settings())
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/train/<arch>-<time>)")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of tables")
    p.set_defaults(func=run_train)


def flag_settings() -> dict[str, Setting]:
    """The settings ``search train`` takes as flags: every user-facing ``TrainConfig`` and
    ``CVConfig`` setting (``evaluators.settings``)."""
    from evaluators.runs import CVConfig
    from evaluators.training import TrainConfig

    return {**flagged(TrainConfig), **flagged(CVConfig)}


def file_settings() -> dict[str, Setting]:
    """The keys a ``search train --config`` file may hold: every ``TrainConfig`` field (the
    ``config.yaml`` a run writes reads back) and the ``CVConfig`` settings."""
    from evaluators.training import TrainConfig

    return {**{s.key: s for s in settings_of(TrainConfig)}, **flag_settings()}


def resolve(args: argparse.Namespace) -> tuple[Any, Any]:
    """``TrainConfig`` and ``CVConfig`` from their defaults (the paper's), then ``--config``, then
    flags; a bad value is a one-line error naming the flag or the file."""
    from evaluators.runs import CVConfig
    from evaluators.training import TrainConfig
    from search.driver.config import read_yaml

    known = file_settings()
    from_file = read_yaml(args.config, known) if args.config else {}
    flags = given_settings(args, flag_settings())
    values = {**from_file, **flags}
    parts: dict[type, dict[str, Any]] = {TrainConfig: {}, CVConfig: {}}
    for key, value in values.items():
        parts[known[key].owner][known[key].name] = value
    try:
        return TrainConfig.resolve(parts[TrainConfig]), CVConfig(**parts[CVConfig])
    except ConfigError as e:
        text = str(e)
        key = text.split(" ", 1)[0]
        if key in flags:
            raise UsageError(known[key].flag_name + text[len(key) :]) from None
        raise UsageError(f"{args.config}: {text}" if args.config and key in from_file else text) from None


def _versions() -> dict[str, str]:
    import torch
    import torchvision

    try:
        from importlib.metadata import version

        own = version("covidnet-nas")
    except Exception:
        own = "unknown"
    return {
        "covidnet_nas": own,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def run_train(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from evaluators.device import resolve_device, seed_everything
    from evaluators.training import train
    from space import build, load_spec

    cfg, cv = resolve(args)
    check_size(cfg.image_size)
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    check_cv(args, cv)
    spec = load_spec(args.arch)
    dataset = load_data(args)
    grouping = check_grouping(dataset, cv) if cv.folds > 1 else None
    label = spec.name or spec.arch_id
    out = Path(args.out) if args.out else Path("runs") / "train" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(spec.to_json() + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    seed_everything(cfg.seed)
    model = build(spec, 3)
    params = sum(p.numel() for p in model.parameters())
    quiet = bool(getattr(args, "quiet", False))
    if cv.runs > 1 or cv.by_source:
        if cv.by_source and len(dataset.sources) < 2:
            raise UsageError(
                f"--cv-by source needs at least two --data sources, got {len(dataset.sources)} "
                f"({', '.join(dataset.sources)})"
            )
        return _train_runs(args, spec, dataset, cfg, cv, grouping, out, params, str(device), quiet)
    if not quiet:
        err_console().print(
            f"training {label} (arch_id {spec.arch_id}, {params:,} params) on "
            f"{', '.join(dataset.sources)}: {len(dataset.splits['train'])} train / "
            f"{len(dataset.splits['val'])} val / {len(dataset.splits['test'])} test images, "
            f"{cfg.image_size} px, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, {device}"
        )
    result = train(model, dataset, cfg, cache_dir=args.cache_dir, progress=not quiet)

    if result.state_dict:
        write_file_atomically(out / "weights.pt", lambda tmp: torch.save(result.state_dict, tmp))
    else:  # nothing was validated: no weights, and none left over from an earlier run in --out
        (out / "weights.pt").unlink(missing_ok=True)
    metrics = {
        "arch": {"name": spec.name, "arch_id": spec.arch_id, "params": params},
        **result.to_dict(),
        "device": str(device),
        "data": {"given": [str(d) for d in args.data] if args.data else None, **dataset.summary()},
        "versions": _versions(),
    }
    write_json(out / "metrics.json", metrics)
    if not result.ok:
        raise RunFailed(f"{result.reason} (metrics in {out / 'metrics.json'})")
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    final = result.test if result.test is not None else result.val
    split = "test" if result.test is not None else "val"
    if final is not None:
        print_metrics(
            final,
            f"{label} on {split}, best epoch {result.best_epoch} of {result.epochs_run}",
            dataset.class_names,
        )
    if result.reason:
        console().print(result.reason)
    console().print(
        f"wrote {out}/metrics.json, weights.pt, spec.json, config.yaml ({result.wall_time_s:.1f} s)"
    )
    return 0


# ------------------------------------------------------------------ folds and repeated seeds
def check_cv(args: argparse.Namespace, cv: Any) -> None:
    """Warn where patient flags are given but no folds use them."""
    if cv.folds == 1 and ("patient_regex" in vars(args) or "patients" in vars(args)):
        warn("--patient-regex and --patients apply only with --cv-folds 2 or more; ignored")


def check_grouping(dataset: Any, cv: Any) -> Any:
    """The patients of train+val as ``evaluate_runs`` will find them, checked before anything is
    trained or written: a bad regex or patients file, or fewer patients than folds, is a usage
    error; images without a patient id are a warning."""
    from evaluators.data.covidx import DatasetError
    from evaluators.data.patients import group_samples, read_patients_csv

    samples = [*dataset.split("train"), *dataset.split("val")]
    if cv.patients_csv and not Path(cv.patients_csv).is_file():
        raise UsageError(f"{cv.patients_csv}: no such patients file")
    patients = read_patients_csv(cv.patients_csv) if cv.patients_csv else None
    grouping = group_samples(
        samples,
        patient_regex=cv.patient_regex,
        patients=patients,
        dirs=dict(zip(dataset.sources, dataset.dirs)),
    )
    found = len(set(grouping.patients))
    if found < cv.folds:
        raise DatasetError(
            f"--cv-folds {cv.folds} needs at least {cv.folds} patients in train+val, found {found}"
        )
    if grouping.warning:
        warn(f"warning: {grouping.warning}")
    return grouping


def _run_place(run: int, cv: Any, seed: int, sources: int = 1) -> tuple[int, int]:
    """(fold, seed) of 1-based run ``run``: ``evaluate_runs`` loops over seeds, then folds (with
    ``--cv-by source`` one fold per source)."""
    folds = cv.fold_count(sources)
    fold = 0 if folds == 1 else (run - 1) % folds + 1
    return fold, seed + (run - 1) // folds


def _train_runs(
    args: argparse.Namespace,
    spec: Any,
    dataset: Any,
    cfg: Any,
    cv: Any,
    grouping: Any,
    out: Path,
    params: int,
    device: str,
    quiet: bool,
) -> int:
    """``search train`` with K folds x R seeds: every run's accuracy, their mean, spread and interval."""
    import torch

    from evaluators.device import seed_everything
    from evaluators.runs import RunsFailed, evaluate_runs
    from space import build

    label = spec.name or spec.arch_id
    if not quiet:
        _announce_runs(spec, dataset, cfg, cv, grouping, params, device)

    def make_model(seed: int) -> Any:
        seed_everything(seed)
        return build(spec, 3)

    def on_run(run: int, val_accuracy: float) -> None:
        if not quiet:
            fold, seed = _run_place(run, cv, cfg.seed, len(dataset.sources))
            where = f"fold {fold}, " if fold else ""
            if cv.by_source:
                where = f"held out {dataset.sources[fold - 1]}, "
            err_console().print(
                f"run {run}/{cv.runs_for(len(dataset.sources))} ({where}seed {seed}): "
                f"val accuracy {val_accuracy:.2f} %"
            )

    common = {
        "arch": {"name": spec.name, "arch_id": spec.arch_id, "params": params},
        "device": device,
        "data": {"given": [str(d) for d in args.data] if args.data else None, **dataset.summary()},
        "versions": _versions(),
    }
    started = time.perf_counter()
    try:
        result = evaluate_runs(
            make_model, dataset, cfg, cv, on_run=on_run, cache_dir=args.cache_dir, progress=not quiet
        )
    except RuntimeError as e:
        # evaluate_runs stops at the first failed run ("run N (fold k, seed s) failed: ...")
        if not isinstance(e, RunsFailed) and not str(e).startswith("run "):
            raise
        (out / "weights.pt").unlink(missing_ok=True)
        failed = {"status": "failed", "reason": str(e), "config": cfg.to_dict(), "cv": cv.to_dict()}
        write_json(out / "metrics.json", {**common, **failed})
        raise RunFailed(f"{e} (metrics in {out / 'metrics.json'})") from None
    first = result.first
    write_file_atomically(out / "weights.pt", lambda tmp: torch.save(first.state_dict, tmp))
    r0 = result.runs[0]
    metrics = {
        "arch": common["arch"],
        **first.to_dict(),  # status, reason, best epoch, history: the first run's (its weights are kept)
        "val": result.val.to_dict(),  # every run's validation predictions pooled (out-of-fold with folds)
        "test": result.test.to_dict() if result.test is not None else None,
        "wall_time_s": time.perf_counter() - started,
        "val_accuracy": result.accuracy.mean,
        "val_accuracy_uncertainty": result.accuracy.to_dict(),
        "runs": result.runs,
        "cv": result.cv_dict(cv),
        "weights": {"run": 1, "fold": r0["fold"], "seed": r0["seed"], "val_accuracy": r0["val_accuracy"]},
        **{k: v for k, v in common.items() if k != "arch"},
    }
    write_json(out / "metrics.json", metrics)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    _print_runs(label, result, cv, grouping, out, metrics["wall_time_s"], dataset.class_names)
    return 0


def _announce_runs(
    spec: Any, dataset: Any, cfg: Any, cv: Any, grouping: Any, params: int, device: str
) -> None:
    runs = cv.runs_for(len(dataset.sources))
    if cv.by_source:
        where = (
            f"leave one source out ({len(dataset.sources)} sources; train on the others' train+val, "
            f"validate on the held-out one's; test not used; {cv.score} of the held-out accuracies scored)"
        )
    elif cv.folds > 1:
        n = len(dataset.splits["train"]) + len(dataset.splits["val"])
        where = (
            f"{cv.folds} patient-grouped folds of train+val ({n} images, "
            f"{len(set(grouping.patients))} patients; test not used)"
        )
    else:
        where = f"{len(dataset.splits['train'])} train / {len(dataset.splits['val'])} val images"
    err_console().print(
        f"training {spec.name or spec.arch_id} (arch_id {spec.arch_id}, {params:,} params) {runs} "
        f"times on {', '.join(dataset.sources)}: {where}, {cv.repeats} seed{'s' if cv.repeats != 1 else ''} "
        f"from {cfg.seed}, {cfg.image_size} px, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, "
        f"{device}"
    )


def _print_runs(
    label: str, result: Any, cv: Any, grouping: Any, out: Path, seconds: float, names: Any = None
) -> None:
    """Every run's accuracy, the summary with its interval, the metrics and what was written."""
    r0 = result.runs[0]
    rows = [
        [
            i,
            r.get("held_out") or r["fold"] or "-",
            r["seed"],
            f"{r['val_accuracy']:.2f}",
            r["best_epoch"],
            r["epochs_run"],
        ]
        for i, r in enumerate(result.runs, start=1)
    ]
    kind = f"{cv.folds} folds x {cv.repeats} seeds" if cv.folds > 1 else f"{cv.repeats} seeds"
    if result.held_out:
        kind = f"{len(result.held_out)} held-out sources x {cv.repeats} seeds"
    print_table(
        f"{label}: validation accuracy of each run ({kind})",
        ["run", "held out" if result.held_out else "fold", "seed", "val accuracy %", "best epoch", "epochs"],
        rows,
    )
    if result.held_out:
        print_held_out(result.held_out, result.score, f"{label}: accuracy on each held-out source")
        mean = sum(u.mean for u in result.held_out.values()) / len(result.held_out)
        worst = min(u.mean for u in result.held_out.values())
        console().print(
            f"held-out source accuracy: mean {mean:.2f} %, worst {worst:.2f} % "
            f"(the stored accuracy is the {result.score})"
        )
    console().print(f"val accuracy {describe(result.accuracy)}")
    if result.test is not None:
        print_metrics(result.test, f"{label} on test, run 1's weights (seed {r0['seed']})", names)
    else:
        print_metrics(
            result.val,
            f"{label} on val: out-of-fold predictions of all {len(result.runs)} runs pooled",
            names,
        )
    if grouping is not None and grouping.warning:
        console().print(f"warning: {grouping.warning}", markup=False)
    where = f"fold {r0['fold']}, " if r0["fold"] else ""
    if r0.get("held_out"):
        where = f"held out {r0['held_out']}, "
    console().print(
        f"wrote {out}/metrics.json, weights.pt (run 1: {where}seed {r0['seed']}, val accuracy "
        f"{r0['val_accuracy']:.2f} %), spec.json, config.yaml ({seconds:.1f} s)"
    )


def print_held_out(held_out: dict[str, Any], score: str, title: str) -> None:
    """One row per held-out source (its accuracy and interval), then the mean and the worst; the
    stored figure is marked."""
    rows = []
    for name, u in held_out.items():
        ci = f"[{u.ci[0]:.2f}, {u.ci[1]:.2f}]" if u.ci else "-"
        rows.append([name, f"{u.mean:.2f}", ci, len(u.values), u.method])
    means = [u.mean for u in held_out.values()]
    mark = {"mean": " (stored)" if score == "mean" else "", "worst": " (stored)" if score == "worst" else ""}
    rows.append([f"mean{mark['mean']}", f"{sum(means) / len(means):.2f}", "", "", ""])
    rows.append([f"worst{mark['worst']}", f"{min(means):.2f}", "", "", ""])
    print_table(title, ["held-out source", "accuracy %", "95 % interval", "runs", "interval from"], rows)


def describe(acc: Any) -> str:
    """``61.20 +- 3.40 % (std), 95 % interval [57.10, 65.30] (t over 6 runs)`` for an ``Uncertain``."""
    text = f"{acc.mean:.2f}"
    if acc.std is not None:
        text += f" +- {acc.std:.2f}"
    text += f" % over {len(acc.values)} run{'s' if len(acc.values) != 1 else ''}"
    if acc.std is not None:
        text += " (mean +- std)"
    if acc.ci is not None:
        text += f", 95 % interval [{acc.ci[0]:.2f}, {acc.ci[1]:.2f}] ({acc.method})"
    return text
