"""The Optuna study behind ``search run``: creation, samplers, constraints, pruning and the loop.

One worker runs ``SearchDriver.run()``; many workers on one storage and study share the work. The
loop takes a study-wide lock (``search.storage.study_lock``) only around "count, then ask", so the
total never passes ``trials``; a trial left running by a killed worker goes stale after two missed
heartbeats, is marked failed and its parameters are retried by whichever worker asks next.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from search.driver.config import RunConfig
from search.driver.storage import open_storage, optuna_quiet, study_lock, with_retry
from search.errors import RunFailed, UsageError

logger = logging.getLogger(__name__)

OBJECTIVES: dict[str, tuple[list[str], list[str]]] = {
    "pareto": (["val_accuracy", "params", "macs"], ["maximize", "minimize", "minimize"]),
    "netscore": (["netscore"], ["maximize"]),
}
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
KIND_SEARCH = "search"
PROTOTYPE = "prototype:ct-l"


# Settings that decide what one trial's numbers mean: a study mixes no two values of any of them.
# (The training and measuring settings, ``RunConfig.training_dict()``, plus these of the search.)
STUDY_SETTINGS = ("space", "complexity_size")
# Attempts at a fresh sample when the sampler proposes an architecture the study already holds.
MAX_REDRAWS = 20


def worker_seed(seed: int) -> int:
    """The sampler seed of one worker that joins or resumes a study: derived from the run's
    ``seed`` and a token of this process, so that workers (and resumes) do not all repeat the same
    start-up draws. The worker that creates a study uses ``seed`` itself (a fresh single-worker run
    stays reproducible); the training seed is always the run's."""
    token = f"{seed}:{os.getpid()}:{time.time_ns()}:{uuid.uuid4().hex}"
    return int(hashlib.sha256(token.encode()).hexdigest()[:8], 16)


def make_sampler(
    config: RunConfig, n_objectives: int, seed: int | None = None
) -> optuna.samplers.BaseSampler:
    name = config.sampler_name
    seed = config.train.seed if seed is None else seed
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.startup_trials)
    # The space is conditional (a stage's depth decides which block parameters exist). Plain
    # multivariate TPE models the parameters every trial has (stem, depths, widths) jointly and
    # samples the block parameters independently; ``--tpe-group`` (Optuna's ``group=True``) splits
    # the trials into groups of parameters that occur together (one per combination of depths)
    # and models each jointly, but each group then learns from fewer trials (docs/benchmarks.md,
    # issue 17: it concentrated less on a toy optimum in 45 trials). Said, not silenced.
    if not config.tpe_group:
        _warn_once(
            "TPE: block parameters that only some depths have are sampled independently of the "
            "others (multivariate TPE models the parameters every candidate has); --tpe-group "
            "models each group of co-occurring parameters jointly"
        )
    with optuna_quiet():  # ``group`` is marked experimental
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=config.startup_trials,
            multivariate=True,
            group=config.tpe_group,
            constant_liar=True,
        )


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def make_pruner(config: RunConfig) -> optuna.pruners.BasePruner:
    """Median pruning for the single NetScore objective (the Pareto rule is ``ParetoPruneRule``)."""
    if config.objective != "netscore":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=max(1, config.startup_trials), n_warmup_steps=config.prune_warmup - 1
    )


def open_study(
    config: RunConfig,
    storage: BaseStorage | None = None,
    *,
    create: bool = True,
    data: dict[str, Any] | None = None,
    join_seed: int | None = None,
) -> tuple[optuna.Study, bool]:
    """Load the configured study, or create it when ``create``.

    Creating the study and setting its attrs happen under the study lock, so a second worker never
    sees a half-made study; the CT L prototype is enqueued by the driver before each ask until it
    has finished (``SearchDriver._ensure_prototype``).

    Args:
        data: the run's data description (``TrainingEvaluator.data_attrs()``); stored at creation
            and compared on resume (its ``data_hash``).
        join_seed: the sampler seed if the study exists already (default ``worker_seed``).

    Returns:
        The study and whether this call created it. Of many workers starting together exactly one
        creates the study (the storage's unique study name decides).

    Raises:
        UsageError: the study was created with another objective, other training settings or
            other data: one line naming each difference (old -> new).
    """
    storage = storage or open_storage(config.storage_url, config.heartbeat, config.max_retry)
    names, directions = OBJECTIVES[config.objective]
    pruner = make_pruner(config)
    if create:
        with study_lock(storage, config.storage_url, config.study):
            try:
                study = optuna.create_study(
                    storage=storage,
                    study_name=config.study,
                    directions=directions,
                    sampler=make_sampler(config, len(directions)),
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
                study.set_user_attr("artifacts", config.artifacts_dir)
                if data is not None:
                    study.set_user_attr("data", data)
                return study, True
    seed = worker_seed(config.train.seed) if join_seed is None else join_seed
    sampler = make_sampler(config, len(directions), seed)
    try:
        study = optuna.load_study(study_name=config.study, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise UsageError(f"no study named {config.study!r} in {config.storage_url}") from None
    logger.info("joining study %r with sampler seed %d", config.study, seed)
    stored = study.user_attrs.get("objective")
    if stored and stored != config.objective:
        raise UsageError(
            f"study {config.study!r} was created with --objective {stored}; "
            f"resume it with that objective or pick another --study"
        )
    check_same_settings(study, config, data)
    check_same_store(study, config)
    return study, False


def check_same_store(study: optuna.Study, config: RunConfig) -> None:
    """Refuse a worker whose artifact store is not the study's: its weights would be where no
    export or report looks (every worker of a study writes to one store)."""
    from search.driver.storage import same_store

    stored = study.user_attrs.get("artifacts")
    new = config.artifacts_dir
    if not stored or same_store(str(stored), new):
        return
    moved = not str(stored).startswith("s3://") and not Path(stored).exists() and Path(new).is_dir()
    if moved:  # the run folder (or the store) was moved: the study follows it
        logger.warning("study %r: artifact store %s is gone; using %s from now on", config.study, stored, new)
        study.set_user_attr("artifacts", new)
        return
    raise UsageError(
        f"study {config.study!r} keeps its weights in {stored}, this worker's artifact store is "
        f"{new}: pass --artifacts {stored} (one store for every worker of a study)"
    )


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def settings_differences(
    stored: dict[str, Any], config: RunConfig, stored_data: dict[str, Any] | None, data: dict[str, Any] | None
) -> list[str]:
    """``"--image-size 32 -> 64"`` for each training setting (and the data hash) in which ``config``
    differs from a study's stored ``run_config`` (keys the stored copy lacks are not compared)."""
    new = config.to_dict()
    out = []
    for key in (*config.training_dict(), *STUDY_SETTINGS):
        if key in stored and _norm(stored[key]) != _norm(new.get(key)):
            out.append(f"{_flag(key)} {_text(stored[key])} -> {_text(new.get(key))}")
    old_hash = (stored_data or {}).get("data_hash")
    new_hash = (data or {}).get("data_hash")
    if old_hash and new_hash and old_hash != new_hash:
        old_src = ", ".join((stored_data or {}).get("data_sources") or []) or "?"
        new_src = ", ".join((data or {}).get("data_sources") or []) or "?"
        out.append(f"--data {old_src} (hash {old_hash}) -> {new_src} (hash {new_hash})")
    return out


def check_same_settings(study: optuna.Study, config: RunConfig, data: dict[str, Any] | None) -> None:
    """Refuse to add trials to ``study`` under other training settings or other data."""
    diffs = settings_differences(
        study.user_attrs.get("run_config") or {}, config, study.user_attrs.get("data"), data
    )
    if diffs:
        raise UsageError(
            f"study {config.study!r} was run with other settings ({'; '.join(diffs)}): its trials "
            "would not be comparable; resume with the study's settings (its run_config), or start "
            "a new study with --study NEW"
        )


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


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
        if getattr(self._storage, "get_heartbeat_interval", lambda: None)() or _is_journal(self._storage):
            self._record()
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def _record(self) -> None:
        if _is_journal(self._storage):
            record_journal_heartbeat(self._storage, self._trial_id)
        else:
            self._storage.record_heartbeat(self._trial_id)  # type: ignore[attr-defined]

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._record()
            except Exception as e:  # the next beat may reach the storage again; say so meanwhile
                logger.warning("heartbeat of trial id %s failed: %s", self._trial_id, e)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# Journal storage has no heartbeat of Optuna's: the driver records its own (a trial system attr)
# and fails, then retries, a running trial silent for two intervals (``fail_stale_journal_trials``).
HEARTBEAT_ATTR = "covidnet_nas:heartbeat"


def _is_journal(storage: BaseStorage) -> bool:
    from optuna.storages import JournalStorage

    return isinstance(storage, JournalStorage)


def record_journal_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


def fail_stale_journal_trials(study: optuna.Study, heartbeat: int, max_retry: int) -> list[int]:
    """Fail the running trials of a journal-storage study whose last heartbeat (or start) is more
    than two ``heartbeat`` intervals old, and queue their parameters again (up to ``max_retry``
    times, as Optuna's ``RetryFailedTrialCallback`` does for relational storages).

    Returns:
        The numbers of the trials failed.
    """
    from optuna.storages import RetryFailedTrialCallback

    storage = study._storage
    if not _is_journal(storage):
        return []
    now = time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        start = t.datetime_start.timestamp() if t.datetime_start else now
        last = max(float(t.system_attrs.get(HEARTBEAT_ATTR, start)), start)
        if now - last <= 2 * heartbeat:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass
    for t in failed:
        logger.warning(
            "trial %d sent no heartbeat for %.0f s (its worker stopped): failed and queued again",
            t.number,
            now - float(t.system_attrs.get(HEARTBEAT_ATTR, now)),
        )
        with optuna_quiet():
            RetryFailedTrialCallback(max_retry=max_retry)(study, storage.get_trial(t._trial_id))
    return [t.number for t in failed]


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
        distinct: train each architecture once (``_distinct``); ``False`` trains queued repeats
            too (to measure how much one architecture's accuracy varies).
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
        distinct: bool = True,
    ) -> None:
        self.config = config
        self.distinct = distinct
        self.evaluator = evaluator
        self.storage = storage or open_storage(config.storage_url, config.heartbeat, config.max_retry)
        data_attrs = getattr(evaluator, "data_attrs", None)
        data = data_attrs() if callable(data_attrs) else None
        join_seed = worker_seed(config.train.seed)
        self.study, self.created = with_retry(
            "open the study",
            config.storage_url,
            lambda: open_study(config, self.storage, data=data, join_seed=join_seed),
        )
        self.sampler_seed = config.train.seed if self.created else join_seed
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
        # Discarded repeats of a trained architecture are not failures of a candidate.
        out["duplicate"] = sum(1 for t in trials if t.user_attrs.get("status") == "duplicate")
        out["fail"] -= out["duplicate"]
        out["reused"] = sum(1 for t in trials if "reused_from" in t.user_attrs)
        return out

    def _next_trial(self) -> Trial | None:
        """Ask for a trial if the budget allows; wait while others' trials may still fail.

        Under the study lock: the prototype is re-queued if it has not finished, and the trial's
        architecture is sampled and checked against the study's (``_distinct``), so no two workers
        train the same ``arch_id``.
        """
        while True:
            with study_lock(self.storage, self.config.storage_url, self.config.study):
                with optuna_quiet():
                    optuna.storages.fail_stale_trials(self.study)
                fail_stale_journal_trials(self.study, self.config.heartbeat, self.config.max_retry)
                trials = self.study.get_trials(deepcopy=False)
                counted = sum(1 for t in trials if t.state in COUNTED)
                running = sum(1 for t in trials if t.state == TrialState.RUNNING)
                if counted < self.config.trials:
                    self._ensure_prototype(trials)
                    trial = self._distinct()
                    if trial is not None:
                        return trial
                    continue  # a queued twin took its stored result: count again
            if running == 0:
                return None
            # The budget is taken, but a running trial of another worker may still fail and be
            # retried; stay until it finishes so that no result is lost.
            time.sleep(self.poll_seconds)

    def _ensure_prototype(self, trials: Sequence[FrozenTrial]) -> None:
        """Queue the CT L prototype unless one is queued, running or finished (not failed): a
        prototype lost to a Ctrl-C, a kill or a failure is tried again."""
        from space import get_reference, to_params

        alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        if any(t.state in alive and t.user_attrs.get("origin") == PROTOTYPE for t in trials):
            return
        failed = [t.number for t in trials if t.user_attrs.get("origin") == PROTOTYPE]
        if failed:
            logger.warning("the CT L prototype (trial %s) did not finish; queued again", failed[-1])
        self.study.enqueue_trial(
            to_params(get_reference("ct-l"), self.config.space), user_attrs={"origin": PROTOTYPE}
        )

    def _distinct(self) -> Trial | None:
        """A new trial whose architecture no trial of the study has trained, is training or has
        queued (by ``arch_id``; called under the study lock).

        A sampled duplicate is discarded (told failed, ``status`` "duplicate", ``duplicate_of``)
        and a new sample drawn; a queued one (fixed parameters) or one still a duplicate after
        ``MAX_REDRAWS`` draws reuses the stored result of a finished twin (``reused_from``) and
        ``None`` is returned (the budget is counted again).
        """
        from space import sample

        taken = self._arch_ids() if self.distinct else {}
        for attempt in range(MAX_REDRAWS + 1):
            with optuna_quiet():
                trial = self.study.ask()
            if _is_journal(self.storage):  # alive from the start, before the heartbeat thread
                record_journal_heartbeat(self.storage, trial._trial_id)
            spec = sample(trial, self.config.space)
            twin = taken.get(spec.arch_id)
            trial.set_user_attr("arch_id", spec.arch_id)
            trial.set_user_attr("sampler_seed", self.sampler_seed)
            if twin is None:
                return trial
            system = self.storage.get_trial_system_attrs(trial._trial_id)
            queued = "fixed_params" in system or "failed_trial" in system
            if queued or attempt == MAX_REDRAWS:
                if twin.state == TrialState.COMPLETE:
                    self._reuse(trial, twin)
                    return None
                return trial  # its twin has not finished: train it (a retried or enqueued trial)
            trial.set_user_attr("status", "duplicate")
            trial.set_user_attr("duplicate_of", twin.number)
            self.study.tell(trial, state=TrialState.FAIL)
            logger.info(
                "trial %d repeated trial %d (%s); drawing again", trial.number, twin.number, spec.arch_id
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _arch_ids(self) -> dict[str, FrozenTrial]:
        """The study's architectures that are finished, running or queued, by ``arch_id``."""
        from optuna.trial import FixedTrial

        from space import sample

        out: dict[str, FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.FAIL:
                continue
            arch = t.user_attrs.get("arch_id")
            if arch is None and t.state == TrialState.WAITING:
                fixed = t.system_attrs.get("fixed_params")
                try:
                    arch = sample(FixedTrial(fixed), self.config.space).arch_id if fixed else None
                except Exception:  # a queued trial of another space: it is not a twin of any
                    arch = None
            if arch is not None and (arch not in out or t.state == TrialState.COMPLETE):
                out[arch] = t
        return out

    def _reuse(self, trial: Trial, twin: FrozenTrial) -> None:
        """Finish ``trial`` with the stored result of its finished twin (no training)."""
        skip = {"origin", "arch_id", "sampler_seed"}
        for key, value in twin.user_attrs.items():
            if key not in skip:
                trial.set_user_attr(key, value)
        trial.set_user_attr("reused_from", twin.number)
        self.study.tell(trial, list(twin.values))
        logger.info("trial %d is trial %d's architecture: its result is reused", trial.number, twin.number)
        attrs = self.storage.get_trial(trial._trial_id).user_attrs
        report = TrialReport(trial.number, "COMPLETE", "reused", attrs, 0.0)
        self.finished.append(report)
        if self.on_trial is not None:
            self.on_trial(report)

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
            "runtime": self._runtime(),
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
        # With folds or repeats a step is one run, and a finished candidate's accuracy is its mean
        # over runs: compare like with like, the running mean of this candidate's runs so far
        # (one fold alone spreads by 8-19 points, more than the margin).
        by_runs = config.cv.by_source or config.cv.runs > 1
        runs_so_far: list[float] = []

        seen: list[dict[str, float]] = []  # what a trial stopped early keeps as its history

        def on_epoch(epoch: int, val_accuracy: float) -> None:
            seen.append({"epoch": epoch, "val_accuracy": val_accuracy})
            runs_so_far.append(val_accuracy)
            accuracy = sum(runs_so_far) / len(runs_so_far) if by_runs else val_accuracy
            if config.objective == "netscore":
                trial.report(netscore(max(accuracy, 1e-3), prof.params, prof.macs), epoch)
                if trial.should_prune():
                    trial.set_user_attr("stopped_at_epoch", epoch)
                    trial.set_user_attr("history", seen)
                    raise optuna.TrialPruned(f"median rule at epoch {epoch}")
            elif pareto_prune(epoch, accuracy, prof.params, prof.macs, done, config, last_step):
                trial.set_user_attr("stopped_at_epoch", epoch)
                trial.set_user_attr("stopped_val_accuracy", accuracy)
                trial.set_user_attr("history", seen)
                what = f"mean of its {len(runs_so_far)} runs" if by_runs else f"epoch {epoch}"
                raise optuna.TrialPruned(f"dominated by a finished candidate at {what}")

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

    def _runtime(self) -> dict:
        """This worker's device, precision, threads and library versions (``runtime`` attr)."""
        import os

        from evaluators.device import runtime_info
        from search.driver.workers import WORKER_ENV

        t = self.config.train
        info = runtime_info(
            t.device,
            t.precision,
            channels_last=t.channels_last,
            cudnn_benchmark=t.cudnn_benchmark,
            prefetch=t.prefetch,
            compile=t.compile,
        )
        info["versions"]["optuna"] = optuna.__version__
        info["worker"] = os.environ.get(WORKER_ENV, "0")
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            info["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
        return info

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
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (``search.commands.run``)
                trial.set_user_attr("status", "interrupted")
                self.study.tell(trial, state=TrialState.FAIL)
                self._requeue(trial)
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

    def _requeue(self, trial: Trial) -> None:
        """Queue an interrupted trial's parameters again (its origin kept), so that the next run
        trains what this one did not finish."""
        attrs = {"retried_from": trial.number}
        origin = trial.user_attrs.get("origin")
        if origin is not None:
            attrs["origin"] = origin
        self.study.enqueue_trial(trial.params, user_attrs=attrs)

    def run(self) -> list[TrialReport]:
        """Run trials until the study's budget is used; returns this worker's finished trials.

        Failed trials do not use the budget (their parameters may be retried), so a worker whose
        trials keep failing would never stop: after ``max_failures`` failures in a row it raises
        ``RunFailed`` with the last reason.
        """
        failures = 0
        while True:
            # A refused connection (e.g. "too many clients") is waited out, then named in one line.
            trial = with_retry("ask for a trial", self.config.storage_url, self._next_trial)
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
    """Completed, trained candidates (a trial that reused a twin's result is its twin's copy)."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.user_attrs.get("status") == "complete"
        and "reused_from" not in t.user_attrs
    ]


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
