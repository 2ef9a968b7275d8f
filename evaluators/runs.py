"""Training one architecture as K patient-grouped folds x R seeds (``--cv-folds``, ``--repeats``),
or as leave-one-source-out folds (``--cv-by source``).

``evaluate_runs`` is the one entry point for the plain and the cross-validated evaluation: with
``folds == 1`` each run trains on the train split and validates on the val split (exactly
``train``); with ``folds >= 2`` the train and val splits are pooled, split into patient-disjoint
folds, and the test split is never read. Either way the result carries the accuracy as an
``Uncertain`` (mean, standard deviation, every run's value, 95 % interval), the pooled validation
metrics and the first run's weights.

With ``by == "source"`` (several ``--data`` sources) each fold holds one source's train+val images
out: the model trains on every other source and is validated on the held-out one, so a candidate
that learned a source's look (its brightness, its crop) instead of the disease scores what it
would at another hospital. The stored accuracy is then the mean over held-out sources (``score ==
"mean"``) or the worst one (``"worst"``), and ``RunsResult.held_out`` keeps every source's value
with its interval.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluators.data.cache import SplitArrays, concat_arrays, load_arrays
from evaluators.data.classes import CLASS_NAMES
from evaluators.data.covidx import CTDataset
from evaluators.data.patients import DEFAULT_PATIENT_REGEX, Grouping, group_samples, make_folds
from evaluators.metrics import EvalResult, compute_metrics
from evaluators.settings import ConfigError, check_int, setting
from evaluators.training import TrainConfig, TrainResult, fit, train
from evaluators.uncertainty import Uncertain

RunCallback = Callable[[int, float], None]
CV_BY = ("patient", "source")
CV_SCORES = ("mean", "worst")


class RunsFailed(RuntimeError):
    """A training run ended with ``status == "failed"`` (a NaN or infinite loss)."""


@dataclass(frozen=True)
class CVConfig:
    """How many folds and seeds, and how patients are found (settings: ``evaluators.settings``)."""

    folds: int = setting(
        1, "patient-grouped folds of train+val, one training each (1: the train/val split)", key="cv_folds"
    )
    repeats: int = setting(1, "trainings with seeds S, S+1, ... per fold")
    patient_regex: str | None = setting(
        DEFAULT_PATIENT_REGEX,
        "regex whose first group is a file name's patient id (COVIDx: NCP_341 of NCP_341_1834_0022.png)",
        metavar="RX",
    )
    patients_csv: str | None = setting(
        None,
        "CSV filename,patient overriding --patient-regex (default: DATA/patients.csv if present)",
        key="patients",
        metavar="FILE.csv",
    )
    fold_seed: int = setting(0, "seed of the fold assignment", flag=False)
    by: str = setting(
        "patient",
        "what a fold holds out: patient (patient-grouped folds of --cv-folds) or source (leave one "
        "--data source out: train on the others, validate on it)",
        key="cv_by",
        choices=CV_BY,
    )
    score: str = setting(
        "mean",
        "with --cv-by source, the stored accuracy: the mean over held-out sources or the worst one",
        key="cv_score",
        choices=CV_SCORES,
    )

    def __post_init__(self) -> None:
        for name, key in (("folds", "cv_folds"), ("repeats", "repeats")):
            check_int(key, getattr(self, name))
        if self.patient_regex:
            try:
                re.compile(self.patient_regex)
            except re.error as e:
                raise ConfigError(f"patient_regex is not a valid regular expression: {e}") from None
        if self.by not in CV_BY:
            raise ConfigError(f"cv_by must be one of {', '.join(CV_BY)}, got {self.by!r}")
        if self.score not in CV_SCORES:
            raise ConfigError(f"cv_score must be one of {', '.join(CV_SCORES)}, got {self.score!r}")
        if self.by == "source" and self.folds != 1:
            raise ConfigError(
                f"cv_by source makes one fold per --data source; cv_folds must stay 1, got {self.folds}"
            )

    @property
    def by_source(self) -> bool:
        return self.by == "source"

    @property
    def runs(self) -> int:
        """Trainings of one evaluation (with ``by_source``: per source; see ``runs_for``)."""
        return self.folds * self.repeats

    def runs_for(self, sources: int) -> int:
        """Trainings of one evaluation on data of ``sources`` sources."""
        return sources * self.repeats if self.by_source else self.runs

    def fold_count(self, sources: int) -> int:
        """Folds of one evaluation on data of ``sources`` sources (1: the plain train/val split)."""
        return sources if self.by_source else self.folds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunsResult:
    """The outcome of ``evaluate_runs``.

    Attributes:
        accuracy: validation accuracy over all runs (percent).
        val: metrics of the pooled validation predictions of all runs (out-of-fold with folds).
        test: the first run's test metrics (plain evaluation only; ``None`` with folds).
        test_accuracy: test accuracy over the runs that were tested (every run with ``test_all``),
            ``None`` where none was.
        first: the first run's ``TrainResult`` (its weights are the ones kept).
        runs: per run: fold, repeat, seed, val accuracy, best epoch, epochs run, history.
        grouping: how patients were found (folds only).
        fold_sizes: images per fold (folds only).
        held_out: with ``cv.by == "source"``: each held-out source's validation accuracy over its
            repeats (one run: the bootstrap interval over its images), in source order.
        score: which figure ``accuracy`` is: ``"mean"`` over runs (and held-out sources) or the
            ``"worst"`` held-out source's.
    """

    accuracy: Uncertain
    val: EvalResult
    test: EvalResult | None
    test_accuracy: Uncertain | None
    first: TrainResult
    runs: list[dict[str, Any]]
    grouping: Grouping | None
    fold_sizes: list[int]
    held_out: dict[str, Uncertain] = dataclasses.field(default_factory=dict)
    score: str = "mean"

    def cv_dict(self, cv: CVConfig) -> dict[str, Any]:
        d: dict[str, Any] = {**cv.to_dict(), "fold_sizes": self.fold_sizes}
        if self.held_out:
            d["held_out"] = {k: v.to_dict() for k, v in self.held_out.items()}
            d["optimised"] = f"{self.score} of held-out sources"
        if self.grouping is not None:
            g = self.grouping
            d["grouping"] = {
                "patients": len(set(g.patients)),
                "from_csv": g.from_csv,
                "from_regex": g.from_regex,
                "alone": g.alone,
                "warning": g.warning,
            }
        return d


def evaluate_runs(
    make_model: Callable[[int], nn.Module],
    dataset: CTDataset,
    config: TrainConfig,
    cv: CVConfig | None = None,
    *,
    on_run: RunCallback | None = None,
    on_epoch: Any = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    test_all: bool = False,
) -> RunsResult:
    """Train ``cv.runs`` models and collect their validation accuracies.

    Args:
        make_model: builds a fresh model for a run from its seed.
        dataset: the data; with folds the train and val splits are pooled, test is not read.
        config: the training settings (its ``seed`` is the first run's).
        cv: folds, repeats and patient grouping (default: one plain run).
        on_run: called as ``on_run(run_number, val_accuracy)`` after each run (1-based); whatever
            it raises (a pruner) propagates.
        on_epoch: passed to every run's ``train``/``fit`` (``on_epoch(epoch, val_accuracy, row)``).
        cache_dir: the decoded-image cache (shared by every fold and run).
        progress: progress bars of the underlying training.
        test_all: evaluate every run on the test split, not only the first (plain split only;
            ``config.evaluate_test`` must be on): the final stage's test accuracy over seeds.
    """
    cv = cv or CVConfig()
    runs = _Runs(cv, on_run)
    if cv.by_source:
        return _source_runs(make_model, dataset, config, cv, runs, cache_dir, progress)
    if cv.folds == 1:
        for r in range(cv.repeats):
            cfg = dataclasses.replace(
                config, seed=config.seed + r, evaluate_test=config.evaluate_test and (r == 0 or test_all)
            )
            res = train(
                make_model(cfg.seed), dataset, cfg, on_epoch=on_epoch, cache_dir=cache_dir, progress=progress
            )
            val_arr = load_arrays(dataset, "val", cfg.image_size, 3, cache_dir) if res.ok else None
            runs.record(res, 0, r, val_arr)
        return runs.result(config.seed, None, [])
    grouping, pool, folds = _patient_folds(dataset, config, cv, cache_dir)
    everything = torch.arange(len(pool))
    for r in range(cv.repeats):
        for k, held_out in enumerate(folds):
            mask = torch.ones(len(pool), dtype=torch.bool)
            mask[torch.as_tensor(held_out)] = False
            cfg = dataclasses.replace(config, seed=config.seed + r, evaluate_test=False)
            val_arr = pool.subset(torch.as_tensor(held_out), split=f"fold{k + 1}")
            train_arr = pool.subset(everything[mask], split="train")
            res = fit(make_model(cfg.seed), train_arr, val_arr, cfg, progress=progress)
            runs.record(res, k + 1, r, val_arr)
    return runs.result(config.seed, grouping, [len(f) for f in folds])


def check_runs(dataset: CTDataset, config: TrainConfig, cv: CVConfig | None = None) -> None:
    """Refuse, before any training, what ``evaluate_runs`` would refuse in every run: a device
    that is not here, a patients file or regex that cannot group the images, more folds than
    patients. A search calls this before its study is created, so no trial fails for it.

    Raises:
        ConfigError: the device.
        DatasetError: the patients file, the regex or the number of folds.
    """
    from evaluators.device import resolve_device

    resolve_device(config.device)
    cv = cv or CVConfig()
    if cv.folds == 1:
        return
    samples = list(dataset.split("train")) + list(dataset.split("val"))
    patients = None
    if cv.patients_csv:
        from evaluators.data.patients import read_patients_csv

        patients = read_patients_csv(cv.patients_csv)
    dirs = dict(zip(dataset.sources, dataset.dirs))
    grouping = group_samples(samples, patient_regex=cv.patient_regex, patients=patients, dirs=dirs)
    make_folds([s.label for s in samples], list(grouping.patients), cv.folds, seed=cv.fold_seed)


def _source_runs(
    make_model: Callable[[int], nn.Module],
    dataset: CTDataset,
    config: TrainConfig,
    cv: CVConfig,
    runs: _Runs,
    cache_dir: str | Path | None,
    progress: bool,
) -> RunsResult:
    """Leave-one-source-out: per repeat and source, train on the other sources' train+val images
    and validate on the held-out source's (the test split is not read)."""
    if len(dataset.sources) < 2:
        raise ConfigError(
            f"cv_by source needs at least two --data sources, got {len(dataset.sources)} "
            f"({', '.join(dataset.sources)})"
        )
    channels = config.channels or 3
    pool = concat_arrays(
        [
            load_arrays(dataset, "train", config.image_size, channels, cache_dir),
            load_arrays(dataset, "val", config.image_size, channels, cache_dir),
        ]
    )
    src = pool.sources
    folds = [
        torch.tensor([i for i, s in enumerate(src) if s == name], dtype=torch.long)
        for name in dataset.sources
    ]
    for name, held in zip(dataset.sources, folds):
        if len(held) == 0 or len(held) == len(pool):
            raise ConfigError(f"cv_by source: source {name} has no train+val images to hold out or train on")
    for r in range(cv.repeats):
        for k, (name, held) in enumerate(zip(dataset.sources, folds)):
            rest = torch.tensor([i for i, s in enumerate(src) if s != name], dtype=torch.long)
            cfg = dataclasses.replace(config, seed=config.seed + r, evaluate_test=False)
            val_arr = pool.subset(held, split=f"held-out {name}")
            res = fit(make_model(cfg.seed), pool.subset(rest, split="train"), val_arr, cfg, progress=progress)
            runs.record(res, k + 1, r, val_arr, held_out=name)
    return runs.result(config.seed, None, [len(f) for f in folds], sources=tuple(dataset.sources))


def _patient_folds(
    dataset: CTDataset, config: TrainConfig, cv: CVConfig, cache_dir: str | Path | None
) -> tuple[Grouping, SplitArrays, list[Any]]:
    """The patients of train+val, their pooled decoded arrays and ``cv.folds`` patient-disjoint
    folds of the pool (indices)."""
    samples = list(dataset.split("train")) + list(dataset.split("val"))
    patients = None
    if cv.patients_csv:
        from evaluators.data.patients import read_patients_csv

        patients = read_patients_csv(cv.patients_csv)
    grouping = group_samples(
        samples,
        patient_regex=cv.patient_regex,
        patients=patients,
        dirs=dict(zip(dataset.sources, dataset.dirs)),
    )
    channels = config.channels or 3
    pool = concat_arrays(
        [
            load_arrays(dataset, "train", config.image_size, channels, cache_dir),
            load_arrays(dataset, "val", config.image_size, channels, cache_dir),
        ]
    )
    # load_arrays orders samples by source; match the grouping to that order
    order = {(s.source, s.filename): i for i, s in enumerate(samples)}
    pool_groups = [grouping.patients[order[(src, fn)]] for src, fn in zip(pool.sources, pool.filenames)]
    return grouping, pool, make_folds(pool.labels.tolist(), pool_groups, cv.folds, seed=cv.fold_seed)


class _Runs:
    """The runs of one evaluation as they finish: their records, results and validation predictions."""

    def __init__(self, cv: CVConfig, on_run: RunCallback | None) -> None:
        self.cv, self.on_run = cv, on_run
        self.runs: list[dict[str, Any]] = []
        self.results: list[TrainResult] = []
        self.y_true: list[torch.Tensor] = []
        self.y_pred: list[torch.Tensor] = []
        self.sources: list[str] = []
        self.images: list[str] = []  # which image each validation prediction is of

    def record(
        self,
        res: TrainResult,
        fold: int,
        repeat: int,
        val_arr: SplitArrays | None,
        held_out: str | None = None,
    ) -> None:
        if not res.ok or res.val is None:
            where = (
                f"run {len(self.runs) + 1} (fold {fold}, seed {res.config.seed})"
                if self.cv.runs > 1
                else "run"
            )
            raise RunsFailed(f"{where} {res.status}: {res.reason}")
        self.results.append(res)
        self.runs.append(
            {
                **({"held_out": held_out} if held_out is not None else {}),
                "fold": fold,
                "repeat": repeat,
                "seed": res.config.seed,
                "val_accuracy": res.val.accuracy,
                "test_accuracy": res.test.accuracy if res.test is not None else None,
                "best_epoch": res.best_epoch,
                "epochs_run": res.epochs_run,
                "cpu_seconds": sum(float(h.get("cpu_seconds", 0.0)) for h in res.history),
                "history": res.history,
            }
        )
        if res.val_predictions is not None and val_arr is not None:
            self.y_true.append(val_arr.labels)
            self.y_pred.append(res.val_predictions)
            self.sources.extend(val_arr.sources)
            self.images.extend(f"{s}/{f}" for s, f in zip(val_arr.sources, val_arr.filenames))
        if self.on_run is not None:
            self.on_run(len(self.runs), res.val.accuracy)

    def result(
        self,
        seed: int,
        grouping: Grouping | None,
        fold_sizes: list[int],
        sources: tuple[str, ...] = (),
    ) -> RunsResult:
        first = self.results[0]
        if self.y_true:
            # With --repeats an image is predicted once per seed: bootstrap over distinct images.
            val = compute_metrics(
                torch.cat(self.y_true),
                torch.cat(self.y_pred),
                len(CLASS_NAMES),
                tuple(self.sources),
                seed,
                images=self.images,
            )
        else:  # pragma: no cover - every successful run validates
            val = first.val  # type: ignore[assignment]
        single_ci = first.val.accuracy_ci if len(self.runs) == 1 and first.val is not None else None
        accuracy = Uncertain.of([r["val_accuracy"] for r in self.runs], single_run_ci=single_ci)
        held_out: dict[str, Uncertain] = {}
        for name in sources:
            mine = [(r, res) for r, res in zip(self.runs, self.results) if r.get("held_out") == name]
            ci = mine[0][1].val.accuracy_ci if len(mine) == 1 and mine[0][1].val is not None else None
            held_out[name] = Uncertain.of([r["val_accuracy"] for r, _ in mine], single_run_ci=ci)
        if held_out and self.cv.score == "worst":
            accuracy = min(held_out.values(), key=lambda u: u.mean)
        tests = [r["test_accuracy"] for r in self.runs if r["test_accuracy"] is not None]
        test_accuracy = None
        if tests:
            test_ci = first.test.accuracy_ci if len(tests) == 1 and first.test is not None else None
            test_accuracy = Uncertain.of(tests, single_run_ci=test_ci)
        return RunsResult(
            accuracy=accuracy,
            test_accuracy=test_accuracy,
            val=val,
            test=first.test,
            first=first,
            runs=self.runs,
            grouping=grouping,
            fold_sizes=fold_sizes,
            held_out=held_out,
            score=self.cv.score if held_out else "mean",
        )


__all__ = ["CVConfig", "RunsFailed", "RunsResult", "evaluate_runs"]
