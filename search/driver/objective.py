"""The real candidate evaluator of ``search run``: train on COVIDx-format data, keep everything.

The driver (``search.study``) profiles a candidate and checks its budget; this module trains the
ones within budget with ``evaluators.training.train`` under the run's training configuration and
returns every metric, the training curve and the best weights for the artifact store.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from evaluators.runs import CVConfig, RunsFailed
from search.driver.config import RunConfig
from search.driver.study import CandidateOutcome
from search.errors import RunFailed, UsageError


def majority_rates(dataset: Any) -> dict[str, float]:
    """Per split, the accuracy of always answering the most frequent class (percent): the rate a
    classifier that learned nothing reaches, printed and stored beside every accuracy."""
    out = {}
    for split in dataset.splits:
        counts = dataset.class_counts(split)
        if sum(counts):
            out[split] = 100.0 * max(counts) / sum(counts)
    return out


class TrainingEvaluator:
    """Trains one candidate per call on the run's data (loaded and cached once per worker).

    Args:
        config: the run configuration.
        on_epoch_progress: called after each epoch with ``(epoch, epochs, val_accuracy)``, for a
            progress display.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        on_epoch_progress: Callable[[int, int, float], None] | None = None,
        cache_dir: str | None = None,
        read_test: bool = False,
    ) -> None:
        from evaluators.data.covidx import load_dataset

        self.config = config
        self.dataset = load_dataset(list(config.data) or None, skip_bad=config.skip_bad)
        if config.cv.by_source and len(self.dataset.sources) < 2:
            from evaluators.settings import ConfigError

            raise ConfigError(
                f"--cv-by source needs at least two --data sources, got {len(self.dataset.sources)} "
                f"({', '.join(self.dataset.sources)})"
            )
        self.check()
        # The test split belongs to the final stage: search trials and proxy baselines are scored on
        # validation data only, so that nobody picks a candidate by its test accuracy.
        self.read_test = read_test
        self.train_config = replace(config.train, evaluate_test=read_test)
        self.cache_dir = cache_dir
        self.on_epoch_progress = on_epoch_progress
        self._tmp = tempfile.TemporaryDirectory(prefix="covidnet-nas-weights-")

    def check(self) -> None:
        """What would fail every trial (device, folds, patients), refused now: before the study
        exists, so a bad setting never reaches it (``evaluators.runs.check_runs``)."""
        from evaluators.runs import check_runs
        from evaluators.settings import ConfigError

        try:
            check_runs(self.dataset, self.config.train, self.config.cv)
        except ConfigError as e:
            raise UsageError(str(e)) from None

    def data_attrs(self) -> dict[str, Any]:
        return {
            "data_hash": self.dataset.split_hash,
            "data_sources": list(self.dataset.sources),
            "data_sizes": {k: len(v) for k, v in self.dataset.splits.items()},
            "majority_rate": majority_rates(self.dataset),
            "skipped": list(self.dataset.skipped),  # --skip-bad: what was left out, line by line
            "class_names": list(self.dataset.class_names),  # for display: tables, plots, exports
        }

    @property
    def cv(self) -> CVConfig:
        return self.config.cv

    @property
    def steps(self) -> int:
        """Steps at which ``on_epoch`` is called: epochs of one run, or runs (folds x seeds)."""
        runs = self.config.cv.runs_for(len(self.dataset.sources))
        return self.train_config.epochs if runs == 1 else runs

    def __call__(
        self, spec: Any, on_epoch: Callable[[int, float], None], parent: Any = None
    ) -> CandidateOutcome:
        """Train ``spec`` from random weights, or (``parent``: a ``search.driver.inheritance.Parent``)
        from the weights ``space.inherit`` maps from it; the mapping's report is stored."""
        from space import build

        if parent is None:
            return self.evaluate(lambda: build(spec, 3), spec.arch_id, on_epoch)
        import copy

        from space.inherit import inherit

        child, report = self.seeded(lambda: inherit((parent.spec, parent.state), spec, 3))  # type: ignore[arg-type]
        outcome = self.evaluate(lambda: copy.deepcopy(child), spec.arch_id, on_epoch)
        outcome.attrs.update(
            {
                "weights_source": parent.source,
                "inherited_share": report.share,
                "inheritance": report.to_dict(),
            }
        )
        return outcome

    def seeded(self, make: Callable[[], Any], seed: int | None = None) -> Any:
        """Build a model with the run's seed, so its initial weights do not depend on what ran before."""
        state = torch.random.get_rng_state()
        torch.manual_seed(self.train_config.seed if seed is None else seed)
        try:
            return make()
        finally:
            torch.random.set_rng_state(state)

    def evaluate(
        self,
        make: Callable[[], torch.nn.Module],
        tag: str,
        on_step: Callable[[int, float], None] | None = None,
    ) -> CandidateOutcome:
        """Measure a fresh model from ``make`` under the run's evaluation: one training run, or
        ``cv_folds`` x ``repeats`` runs. ``on_step`` sees each epoch of a single run, else each run.

        The stored accuracy is the mean over runs with its spread (``val_accuracy_uncertainty``);
        the kept weights are the first run's.
        """
        from evaluators.runs import evaluate_runs

        cv = self.cv
        epochs = self.train_config.epochs
        single = cv.runs_for(len(self.dataset.sources)) == 1

        def on_epoch(epoch: int, val_accuracy: float, row: dict[str, Any]) -> None:
            if self.on_epoch_progress is not None:
                self.on_epoch_progress(epoch, epochs, val_accuracy)
            if single and on_step is not None:
                on_step(epoch, val_accuracy)

        def on_run(run: int, val_accuracy: float) -> None:
            if not single and on_step is not None:
                on_step(run, val_accuracy)

        start = time.time()
        try:
            result = evaluate_runs(
                lambda seed: self.seeded(make, seed),
                self.dataset,
                self.train_config,
                cv,
                on_run=on_run,
                on_epoch=on_epoch,
                cache_dir=self.cache_dir,
                test_all=self.read_test,
            )
        except RunsFailed as e:
            raise RunFailed(f"training failed: {e}") from None
        first = result.first
        weights = Path(self._tmp.name) / f"{tag}.pt"
        torch.save(first.state_dict, weights)
        attrs: dict[str, Any] = {
            "val_metrics": result.val.to_dict(),
            "test_metrics": result.test.to_dict() if result.test is not None else None,
            "val_accuracy_uncertainty": result.accuracy.to_dict(),
            "test_accuracy_uncertainty": result.test_accuracy.to_dict() if result.test_accuracy else None,
            "history": list(first.history),
            "runs": [{k: v for k, v in r.items() if k != "history" or not single} for r in result.runs],
            "cv": result.cv_dict(cv),
            "best_epoch": first.best_epoch,
            "epochs_run": first.epochs_run,
            "train_wall_time_s": time.time() - start,
            "train_config": first.config.to_dict(),
            **self.data_attrs(),
        }
        return CandidateOutcome(val_accuracy=result.accuracy.mean, attrs=attrs, weights_file=str(weights))

    def train_model(
        self, model: torch.nn.Module, tag: str, on_epoch: Callable[[int, float], None] | None = None
    ) -> CandidateOutcome:
        """Train ``model`` under the run's configuration; ``tag`` names its weights file."""
        from evaluators.training import train

        epochs = self.train_config.epochs

        def hook(epoch: int, val_accuracy: float, row: dict[str, Any]) -> None:
            if self.on_epoch_progress is not None:
                self.on_epoch_progress(epoch, epochs, val_accuracy)
            if on_epoch is not None:
                on_epoch(epoch, val_accuracy)

        result = train(
            model, self.dataset, self.train_config, on_epoch=hook, cache_dir=self.cache_dir, progress=False
        )
        if not result.ok:
            raise RunFailed(f"training {result.status}: {result.reason}")
        weights = Path(self._tmp.name) / f"{tag}.pt"
        torch.save(result.state_dict, weights)
        attrs: dict[str, Any] = {
            "val_metrics": result.val.to_dict(),
            "test_metrics": result.test.to_dict() if result.test is not None else None,
            "history": list(result.history),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "train_wall_time_s": result.wall_time_s,
            "train_config": result.config.to_dict(),
            **self.data_attrs(),
        }
        return CandidateOutcome(
            val_accuracy=float(result.val.accuracy), attrs=attrs, weights_file=str(weights)
        )
