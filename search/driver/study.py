"""The Optuna study behind ``search run``: creation, samplers, constraints, pruning and the loop.

One worker runs ``SearchDriver.run()``; many workers on one storage and study share the work. The
loop takes a study-wide lock (``search.storage.study_lock``) only around "count, then ask", so the
total never passes ``trials``; a trial left running by a killed worker goes stale after two missed
heartbeats, is marked failed and its parameters are retried by whichever worker asks next.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from search.driver.config import RunConfig
from search.driver.storage import open_storage, optuna_quiet, study_lock
from search.errors import RunFailed, UsageError

logger = logging.getLogger(__name__)

OBJECTIVES: dict[str, tuple[list[str], list[str]]] = {
    "pareto": (["val_accuracy", "params", "macs"], ["maximize", "minimize", "minimize"]),
    "netscore": (["netscore"], ["maximize"]),
}
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
KIND_SEARCH = "search"


def make_sampler(config: RunConfig, n_objectives: int) -> optuna.samplers.BaseSampler:
    name = config.sampler_name
    seed = config.train.seed
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.startup_trials)
    # The space is conditional (a stage's depth decides which block parameters exist), so
    # multivariate TPE models the parameters every trial has jointly and samples the others with
    # univariate TPE (Optuna >= 4.9 no longer warns about it per parameter); said once in the log.
    logger.info(
        "TPE: block parameters that only some depths have are sampled by univariate TPE "
        "(multivariate over the rest)"
    )
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=config.startup_trials, multivariate=True, constant_liar=True
    )


def make_pruner(config: RunConfig) -> optuna.pruners.BasePruner:
    """Median pruning for the single NetScore objective (the Pareto rule is ``ParetoPruneRule``)."""
    if config.objective != "netscore":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=max(1, config.startup_trials), n_warmup_steps=config.prune_warmup - 1
    )


def open_study(
    config: RunConfig, storage: BaseStorage | None = None, *, create: bool = True
) -> tuple[optuna.Study, bool]:
    """Load the configured study, or create it (enqueueing the CT L prototype) when ``create``.

    Returns:
        The study and whether this call created it. Of many workers starting together exactly one
        creates the study (the storage's unique study name decides), so CT L is enqueued once.
    """
    from space import get_reference, to_params

    storage = storage or open_storage(config.storage_url, config.heartbeat, config.max_retry)
    names, directions = OBJECTIVES[config.objective]
    sampler = make_sampler(config, len(directions))
    pruner = make_pruner(config)
    if create:
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=config.study,
                directions=directions,
                sampler=sampler,
                pruner=pruner,
            )
        except optuna.exceptions.DuplicatedStudyError:
            pass
        else:
            with optuna_quiet():
                study.set_metric_names(names)
            study.set_user_attr("objective", config.objective)
            study.set_user_attr("run_config", config.to_dict())
            study.set_user_attr("kind", KIND_SEARCH)
            study.enqueue_trial(
                to_params(get_reference("ct-l"), config.space), user_attrs={"origin": "prototype:ct-l"}
            )
            return study, True
    try:
        study = optuna.load_study(study_name=config.study, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise UsageError(f"no study named {config.study!r} in {config.storage_url}") from None
    stored = study.user_attrs.get("objective")
    if stored and stored != config.objective:
        raise UsageError(
            f"study {config.study!r} was created with --objective {stored}; "
            f"resume it with that objective or pick another --study"
        )
    return study, False


# ------------------------------------------------------------------------- candidates
@dataclass
class CandidateOutcome:
    """What evaluating (training) one candidate produced."""

    val_accuracy: float
    attrs: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None


class CandidateEvaluator(Protocol):
    """Trains and scores one candidate. ``on_epoch(epoch, val_accuracy)`` may raise
    ``optuna.TrialPruned``; a candidate that cannot be trained raises ``RunFailed``."""

    def __call__(self, spec: Any, on_epoch: Callable[[int, float], None]) -> CandidateOutcome: ...


@dataclass(frozen=True)
class Scored:
    """A finished, feasible candidate as the Pareto pruning rule sees it."""

    val_accuracy: float
    params: int
    macs: int


def scored_trials(trials: Sequence[FrozenTrial]) -> list[Scored]:
    out = []
    for t in trials:
        a = t.user_attrs
        if t.state == TrialState.COMPLETE and a.get("status") == "complete":
            out.append(Scored(float(a["val_accuracy"]), int(a["params"]), int(a["macs"])))
    return out


def pareto_prune(
    step: int,
    accuracy: float,
    params: int,
    macs: int,
    done: Sequence[Scored],
    config: RunConfig,
    last_step: int | None = None,
) -> bool:
    """The Pareto objective's pruning rule.

    After ``prune_warmup`` steps (epochs of one run, or runs with ``--cv-folds``/``--repeats``)
    and before the last, stop a candidate when a finished one already has no more params, no more
    MACs and a validation accuracy at least ``prune_margin`` points above this candidate's current
    accuracy: it is dominated with room to spare, so more epochs (or folds) are unlikely to put it
    on the front.
    """
    last = config.train.epochs if last_step is None else last_step
    if step < config.prune_warmup or step >= last:
        return False
    return any(
        d.params <= params and d.macs <= macs and d.val_accuracy >= accuracy + config.prune_margin
        for d in done
    )


def pareto_front(points: Sequence[tuple[float, int, int]]) -> list[int]:
    """Indices of the non-dominated points (maximise accuracy, minimise params and MACs)."""
    from reports.pareto import pareto_indices

    return pareto_indices([(float(a), float(p), float(m)) for a, p, m in points])


# ------------------------------------------------------------------------- the driver
class _Heartbeat:
    """Records a running trial's heartbeat from a background thread (ask/tell has none)."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if getattr(self._storage, "get_heartbeat_interval", lambda: None)():
            self._storage.record_heartbeat(self._trial_id)  # type: ignore[attr-defined]
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)  # type: ignore[attr-defined]
            except Exception as e:  # the next beat may reach the storage again; say so meanwhile
                logger.warning("heartbeat of trial id %s failed: %s", self._trial_id, e)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


Heartbeat = _Heartbeat  # for the other drivers that run trials of their own (search final)


@dataclass
class TrialReport:
    number: int
    state: str
    status: str
    attrs: dict[str, Any]
    seconds: float


class SearchDriver:
    """Runs trials of one study until it holds ``config.trials`` finished or running trials.

    Args:
        config: the resolved run configuration.
        evaluator: trains and scores one candidate (``search.objective.TrainingEvaluator`` in
            real runs; tests pass cheap ones).
        upload: stores a weights file for a trial and returns the artifact id.
        on_trial: called with a ``TrialReport`` after each trial this worker finishes.
    """

    def __init__(
        self,
        config: RunConfig,
        evaluator: CandidateEvaluator,
        *,
        storage: BaseStorage | None = None,
        upload: Callable[[Trial, str], str] | None = None,
        on_trial: Callable[[TrialReport], None] | None = None,
        poll_seconds: float = 2.0,
    ) -> None:
        self.config = config
        self.evaluator = evaluator
        self.storage = storage or open_storage(config.storage_url, config.heartbeat, config.max_retry)
        self.study, self.created = open_study(config, self.storage)
        self.upload = upload
        self.on_trial = on_trial
        self.poll_seconds = poll_seconds
        self.trained = 0  # candidates handed to the evaluator by this worker
        from search.driver.inheritance import ParentSource

        self.parents = ParentSource(self.study, config.inherit_from, config.artifacts)
        self.finished: list[TrialReport] = []

    # -------------------------------------------------------------- counting and asking
    def counts(self) -> dict[str, int]:
        trials = self.study.get_trials(deepcopy=False)
        out = {s.name.lower(): 0 for s in TrialState}
        for t in trials:
            out[t.state.name.lower()] += 1
        out["infeasible"] = sum(1 for t in trials if t.user_attrs.get("status") == "infeasible")
        return out

    def _next_trial(self) -> Trial | None:
        """Ask for a trial if the budget allows; wait while others' trials may still fail."""
        while True:
            with study_lock(self.storage, self.config.storage_url, self.config.study):
                with optuna_quiet():
                    optuna.storages.fail_stale_trials(self.study)
                trials = self.study.get_trials(deepcopy=False)
                counted = sum(1 for t in trials if t.state in COUNTED)
                running = sum(1 for t in trials if t.state == TrialState.RUNNING)
                if counted < self.config.trials:
                    with optuna_quiet():
                        return self.study.ask()
            if running == 0:
                return None
            # The budget is taken, but a running trial of another worker may still fail and be
            # retried; stay until it finishes so that no result is lost.
            time.sleep(self.poll_seconds)

    # -------------------------------------------------------------- one trial
    def _objective(self, trial: Trial) -> list[float]:
        from evaluators import netscore, profile
        from space import build, sample

        config = self.config
        spec = sample(trial, config.space)
        size = config.complexity_size
        prof = profile(build(spec, 3), (spec.stem.in_channels, size, size))
        constraints = (
            float(prof.params - config.max_params) if config.max_params else 0.0,
            float(prof.macs - config.max_macs) if config.max_macs else 0.0,
        )
        for key, value in {
            "kind": KIND_SEARCH,
            "spec": spec.to_dict(),
            "arch_id": spec.arch_id,
            "params": prof.params,
            "macs": prof.macs,
            "flops": prof.flops,
            "peak_activation_bytes": prof.peak_activation_bytes,
            "complexity_size": size,
            "constraints": constraints,
        }.items():
            trial.set_user_attr(key, value)
        # Constrained samplers read these (<= 0 is feasible): over-budget trials rank by violation.
        trial.set_constraint("params", constraints[0])
        trial.set_constraint("macs", constraints[1])
        if any(c > 0 for c in constraints):
            # Over budget: measured, recorded infeasible, never trained. The objective values of
            # an infeasible trial are placeholders; constrained samplers rank it by violation.
            trial.set_user_attr("status", "infeasible")
            return self._values(0.0, prof.params, prof.macs, netscore_value=0.0)

        done = scored_trials(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        last_step = int(getattr(self.evaluator, "steps", config.train.epochs))

        seen: list[dict[str, float]] = []  # what a trial stopped early keeps as its history

        def on_epoch(epoch: int, val_accuracy: float) -> None:
            seen.append({"epoch": epoch, "val_accuracy": val_accuracy})
            if config.objective == "netscore":
                trial.report(netscore(max(val_accuracy, 1e-3), prof.params, prof.macs), epoch)
                if trial.should_prune():
                    trial.set_user_attr("stopped_at_epoch", epoch)
                    trial.set_user_attr("history", seen)
                    raise optuna.TrialPruned(f"median rule at epoch {epoch}")
            elif pareto_prune(epoch, val_accuracy, prof.params, prof.macs, done, config, last_step):
                trial.set_user_attr("stopped_at_epoch", epoch)
                trial.set_user_attr("stopped_val_accuracy", val_accuracy)
                trial.set_user_attr("history", seen)
                raise optuna.TrialPruned(f"dominated by a finished candidate at epoch {epoch}")

        self.trained += 1
        parent = self._parent_for(trial)
        outcome = self.evaluator(spec, on_epoch) if parent is None else self.evaluator(spec, on_epoch, parent)
        if parent is None and config.inherit != "none":
            trial.set_user_attr("weights_source", "random initialisation (the prototype)")
        ns = netscore(max(outcome.val_accuracy, 1e-3), prof.params, prof.macs)
        for key, value in outcome.attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("val_accuracy", outcome.val_accuracy)
        trial.set_user_attr("netscore", ns)
        trial.set_user_attr("netscore_ci", netscore_interval(outcome.attrs, prof.params, prof.macs))
        if outcome.weights_file and self.upload is not None:
            trial.set_user_attr("weights_artifact_id", self.upload(trial, outcome.weights_file))
        trial.set_user_attr("status", "complete")
        return self._values(outcome.val_accuracy, prof.params, prof.macs, netscore_value=ns)

    def _parent_for(self, trial: Trial) -> Any:
        """The parent a candidate inherits from (``--inherit prototype``); ``None`` for the prototype
        itself (trained from random weights, unless ``--inherit-from`` gives its weights) and when
        inheritance is off."""
        if self.config.inherit == "none":
            return None
        is_proto = str(trial.user_attrs.get("origin", "")).startswith("prototype:")
        if is_proto and not self.config.inherit_from:
            return None
        return self.parents.get()

    def _values(self, accuracy: float, params: int, macs: int, *, netscore_value: float) -> list[float]:
        if self.config.objective == "netscore":
            return [netscore_value]
        return [accuracy, float(params), float(macs)]

    def _run_one(self, trial: Trial) -> TrialReport:
        start = time.time()
        with _Heartbeat(self.storage, trial._trial_id, self.config.heartbeat):
            try:
                values = self._objective(trial)
            except optuna.TrialPruned as e:
                # Optuna's TrialPruned is an early stop: said "stopped early" (pruning is channel pruning)
                trial.set_user_attr("status", "stopped_early")
                trial.set_user_attr("stop_reason", str(e))
                trial.set_user_attr("wall_time_s", time.time() - start)
                self.study.tell(trial, state=TrialState.PRUNED)
                state = "PRUNED"
            except KeyboardInterrupt:
                trial.set_user_attr("status", "interrupted")
                self.study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as e:
                trial.set_user_attr("status", "failed")
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
                self.study.tell(trial, state=TrialState.FAIL)
                state = "FAIL"
                if not isinstance(e, RunFailed) and _is_bug(e):
                    raise
            else:
                trial.set_user_attr("wall_time_s", time.time() - start)
                self.study.tell(trial, values)
                state = "COMPLETE"
        frozen = self.storage.get_trial(trial._trial_id)
        return TrialReport(
            trial.number, state, frozen.user_attrs.get("status", ""), frozen.user_attrs, time.time() - start
        )

    def run(self) -> list[TrialReport]:
        """Run trials until the study's budget is used; returns this worker's finished trials.

        Failed trials do not use the budget (their parameters may be retried), so a worker whose
        trials keep failing would never stop: after ``max_failures`` failures in a row it raises
        ``RunFailed`` with the last reason.
        """
        failures = 0
        while True:
            trial = self._next_trial()
            if trial is None:
                return self.finished
            report = self._run_one(trial)
            self.finished.append(report)
            if self.on_trial is not None:
                self.on_trial(report)
            failures = failures + 1 if report.state == "FAIL" else 0
            if failures >= self.config.max_failures:
                raise RunFailed(
                    f"{failures} trials in a row failed (last, trial {report.number}: "
                    f"{report.attrs.get('fail_reason', 'no reason recorded')}); completed trials are kept"
                )

    # -------------------------------------------------------------- summaries
    def best_netscore(self) -> float | None:
        return best_netscore(self.study.get_trials(deepcopy=False))

    def pareto_trials(self) -> list[FrozenTrial]:
        return pareto_trials(self.study.get_trials(deepcopy=False))


def netscore_interval(attrs: dict[str, Any], params: int, macs: int) -> list[float] | None:
    """NetScore at the ends of the stored accuracy's 95 % interval (``None`` without one)."""
    from evaluators import netscore

    ci = (attrs.get("val_accuracy_uncertainty") or {}).get("ci")
    if not ci:
        return None
    lo, hi = (min(100.0, max(1e-3, float(v))) for v in ci)
    return [netscore(lo, params, macs), netscore(hi, params, macs)]


def _is_bug(e: Exception) -> bool:
    """Errors that mean the toolkit itself is broken (re-raised), not that a candidate failed."""
    return isinstance(e, (TypeError, AttributeError, NameError, ImportError))


def complete_candidates(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "complete"]


def best_netscore(trials: Sequence[FrozenTrial]) -> float | None:
    scores = [float(t.user_attrs["netscore"]) for t in complete_candidates(trials)]
    scores = [s for s in scores if math.isfinite(s)]
    return max(scores) if scores else None


def pareto_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The feasible, completed trials on the (accuracy, params, MACs) front."""
    cands = complete_candidates(trials)
    points = [
        (float(t.user_attrs["val_accuracy"]), int(t.user_attrs["params"]), int(t.user_attrs["macs"]))
        for t in cands
    ]
    return [cands[i] for i in pareto_front(points)]


def _point(t: FrozenTrial) -> tuple[float, int, int]:
    a = t.user_attrs
    return float(a["val_accuracy"]), int(a["params"]), int(a["macs"])
