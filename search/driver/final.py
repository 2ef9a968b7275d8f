"""The final stage (``search final``): what the search found, retrained at full fidelity.

A search scores candidates with a short proxy. Real NAS then retrains the chosen architectures
properly; here the chosen trials of a study, CT L (the prototype), CT S and the paper's four
baselines are trained under one *final* training configuration into the companion study
``<study>:final``, whose test split is read here and only here. Each model is one trial; the
stored figures are the mean over the final runs (seeds, or folds x seeds) with their 95 % interval.
``search report`` puts them beside the proxy figures and measures the proxy's fidelity (how well
the proxy's ranking predicts the final one).

The stage is resumable and distributed like ``search run``: models are claimed under the study
lock, a model already finished under the same final configuration is not trained again, a
running trial sends heartbeats and a dead worker's trial goes stale and is retried. The attrs it
stores are the contract with ``reports`` (see docs/architecture.md, "The final stage").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search.driver.baselines import config_key
from search.driver.baselines import find_done as find_proxy_baseline
from search.driver.config import RunConfig
from search.driver.storage import optuna_quiet, study_lock
from search.driver.study import (
    OBJECTIVES,
    Heartbeat,
    complete_candidates,
    fail_stale_journal_trials,
    pareto_trials,
)
from search.errors import RunFailed, UsageError

logger = logging.getLogger(__name__)

SUFFIX = ":final"
KIND_FINAL = "final"
# The CT-2 paper's four comparison networks (it cites SqueezeNet 1.0).
FINAL_BASELINES = ("squeezenet1_0", "mobilenet_v2", "efficientnet_b0", "nasnet_a_mobile")
ROLES = ("candidate", "prototype", "reference", "baseline")


def final_study_name(study: str) -> str:
    return study + SUFFIX


@dataclass(frozen=True)
class FinalEntry:
    """One model of the final stage.

    Attributes:
        key: what identifies it within the stage (``trial:17``, ``baseline:mobilenet_v2``).
        role: ``candidate``, ``prototype`` (CT L), ``reference`` (CT S) or ``baseline``.
        display_name: how tables name it.
        description: what rebuilds it (``{"spec": ...}`` or a baseline's builder).
        source_trial: the search trial it came from (candidates and the prototype).
        baseline: its registry name (CT L, CT S and the baselines).
        proxy_val_accuracy: its proxy accuracy (the search trial's, or the proxy baseline's).
    """

    key: str
    role: str
    display_name: str
    description: dict[str, Any]
    source_trial: int | None = None
    baseline: str | None = None
    proxy_val_accuracy: float | None = None


# ------------------------------------------------------------------ choosing what is finalised
def pick_candidates(
    trials: Sequence[FrozenTrial],
    *,
    pareto: bool = False,
    top: int = 0,
    numbers: Sequence[int] = (),
    pareto_max_macs: int | None = None,
) -> list[FrozenTrial]:
    """The search trials to finalise, in the order given: ``numbers``, then the top ``top`` by
    NetScore, then the Pareto set (of those with at most ``pareto_max_macs`` MACs, if given); an
    architecture chosen twice is finalised once. The prototype (CT L) is always finalised apart."""
    done = complete_candidates(trials)
    by_number = {t.number: t for t in trials}
    chosen: list[FrozenTrial] = []
    for n in numbers:
        t = by_number.get(n)
        if t is None:
            raise UsageError(f"the search study has no trial {n} (it has {len(trials)} trials)")
        if t not in done:
            status = t.user_attrs.get("status") or t.state.name.lower()
            raise UsageError(f"trial {n} is {status}; only completed, trained trials can be finalised")
        chosen.append(t)
    if top:
        chosen += sorted(done, key=lambda t: -float(t.user_attrs["netscore"]))[:top]
    if pareto or pareto_max_macs is not None:
        front = pareto_trials(trials)
        if pareto_max_macs is not None:
            front = [t for t in front if int(t.user_attrs["macs"]) <= pareto_max_macs]
        chosen += sorted(front, key=lambda t: int(t.user_attrs["macs"]))
    out, seen = [], set()
    for t in chosen:
        arch = t.user_attrs["arch_id"]
        if arch not in seen and not _is_prototype(t):
            seen.add(arch)
            out.append(t)
    return out


def _is_prototype(t: FrozenTrial) -> bool:
    return str(t.user_attrs.get("origin", "")).startswith("prototype:")


def plan_entries(
    search: optuna.Study,
    candidates: Sequence[FrozenTrial],
    baselines: Sequence[str],
    proxy_baselines: optuna.Study | None,
    proxy_key: str | None,
) -> list[FinalEntry]:
    """The models of the stage: the chosen candidates, CT L (the search's prototype trial, or the
    reference spec when the study has none), CT S and ``baselines``."""
    from baselines import baseline_info
    from space import get_reference

    entries = [
        FinalEntry(
            key=f"trial:{t.number}",
            role="candidate",
            display_name=f"trial {t.number}",
            description={"spec": t.user_attrs["spec"], "num_classes": 3},
            source_trial=t.number,
            proxy_val_accuracy=float(t.user_attrs["val_accuracy"]),
        )
        for t in candidates
    ]
    proto = next(
        (t for t in complete_candidates(search.get_trials(deepcopy=False)) if _is_prototype(t)), None
    )
    entries.append(
        FinalEntry(
            key="prototype",
            role="prototype",
            display_name="CT L",
            description={"spec": get_reference("ct-l").to_dict(), "num_classes": 3},
            source_trial=proto.number if proto is not None else None,
            baseline="covidnet_ct_l",
            proxy_val_accuracy=float(proto.user_attrs["val_accuracy"]) if proto is not None else None,
        )
    )

    def proxy_of(name: str) -> float | None:
        if proxy_baselines is None or proxy_key is None:
            return None
        done = find_proxy_baseline(proxy_baselines, name, proxy_key)
        return float(done.user_attrs["val_accuracy"]) if done is not None else None

    entries.append(
        FinalEntry(
            key="reference",
            role="reference",
            display_name="CT S",
            description={"spec": get_reference("ct-s").to_dict(), "num_classes": 3},
            baseline="covidnet_ct_s",
            proxy_val_accuracy=proxy_of("covidnet_ct_s"),
        )
    )
    for name in baselines:
        entries.append(
            FinalEntry(
                key=f"baseline:{name}",
                role="baseline",
                display_name=baseline_info(name).display_name,
                description={"baseline": name, "num_classes": 3, "in_chans": 3},
                baseline=name,
                proxy_val_accuracy=proxy_of(name),
            )
        )
    return entries


# ------------------------------------------------------------------ the study
def open_final_study(
    storage: BaseStorage, url: str, search_study: str, final: RunConfig, data: dict[str, Any]
) -> optuna.Study:
    """``<study>:final``, created (under the study lock) on first use with the final
    configuration; a later run with another final configuration is refused, naming what differs."""
    name = final_study_name(search_study)
    names, directions = OBJECTIVES["pareto"]
    with study_lock(storage, url, name):
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, load_if_exists=True
        )
        if "kind" not in study.user_attrs:
            with optuna_quiet():
                study.set_metric_names(["final_accuracy", *names[1:]])
            study.set_user_attr("kind", KIND_FINAL)
            study.set_user_attr("search_study", search_study)
            study.set_user_attr("artifacts", final.artifacts_dir)
            study.set_user_attr("final_config", final.to_dict())
            study.set_user_attr("data", data)
            return study
    stored = study.user_attrs.get("final_config") or {}
    mine = final.training_dict()
    differs = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in mine.items() if k in stored and stored[k] != v]
    if differs:
        raise UsageError(
            f"study {name!r} was trained under another final configuration ({'; '.join(differs)}); "
            f"finish it with its settings, or finalise under another --study"
        )
    return study


@dataclass
class FinalOutcome:
    entry: FinalEntry
    trial: FrozenTrial | None
    skipped: bool
    error: str | None = None


def run_final(
    final: RunConfig,
    entries: Sequence[FinalEntry],
    study: optuna.Study,
    storage: BaseStorage,
    evaluator: Any,
    upload: Callable[[Any, str], str] | None,
    *,
    on_done: Callable[[FinalOutcome], None] | None = None,
    poll_seconds: float = 2.0,
) -> list[FinalOutcome]:
    """Train every entry not yet finished in ``study``; wait for other workers' running ones.

    Args:
        evaluator: a ``search.driver.objective.TrainingEvaluator`` on the final configuration that
            reads the test split (``read_test=True``).
        upload: stores a weights file for a trial, returning the artifact id.
    """
    key = config_key(final, evaluator.data_attrs()["data_hash"])
    outcomes: list[FinalOutcome] = []
    reported: set[str] = set()
    while True:
        with study_lock(storage, final.storage_url, study.study_name):
            with optuna_quiet():
                optuna.storages.fail_stale_trials(study)
            # journal storage: the driver's own heartbeat (a failed entry is simply run again)
            fail_stale_journal_trials(study, final.heartbeat, max_retry=0)
            trials = study.get_trials(deepcopy=False)
            done = {t.user_attrs.get("key"): t for t in trials if _finished(t, key)}
            running = {t.user_attrs.get("key") for t in trials if t.state == TrialState.RUNNING}
            todo = [e for e in entries if e.key not in done and e.key not in running]
            trial = None
            if todo:
                entry = todo[0]
                with optuna_quiet():
                    trial = study.ask()
                trial.set_user_attr("key", entry.key)
                trial.set_user_attr("config_key", key)
        for e in entries:
            if e.key in done and e.key not in reported:
                reported.add(e.key)
                outcome = FinalOutcome(e, done[e.key], skipped=True)
                outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)
        if trial is None:
            if not running & {e.key for e in entries}:
                return outcomes
            time.sleep(poll_seconds)  # another worker still trains some; stay until it is done
            continue
        outcome = _train_entry(entry, trial, study, storage, final, evaluator, upload)
        reported.add(entry.key)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)


def _finished(t: FrozenTrial, key: str) -> bool:
    return t.state == TrialState.COMPLETE and t.user_attrs.get("config_key") == key


def _train_entry(
    entry: FinalEntry,
    trial: optuna.Trial,
    study: optuna.Study,
    storage: BaseStorage,
    final: RunConfig,
    evaluator: Any,
    upload: Callable[[Any, str], str] | None,
) -> FinalOutcome:
    from evaluators import netscore
    from evaluators.complexity import profile
    from search.driver.study import netscore_interval
    from search.export.load import build_from

    size = final.complexity_size
    model = build_from(entry.description)
    prof = profile(model, (3, size, size))
    attrs: dict[str, Any] = {
        "kind": KIND_FINAL,
        "role": entry.role,
        "source_trial": entry.source_trial,
        "baseline": entry.baseline,
        "display_name": entry.display_name,
        "proxy_val_accuracy": entry.proxy_val_accuracy,
        "params": prof.params,
        "macs": prof.macs,
        "flops": prof.flops,
        "complexity_size": size,
    }
    spec = getattr(model, "spec", None)
    if spec is not None:
        attrs["spec"], attrs["arch_id"] = spec.to_dict(), spec.arch_id
    else:
        attrs["builder"], attrs["arch_id"] = dict(entry.description), str(entry.baseline)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    start = time.time()
    with Heartbeat(storage, trial._trial_id, final.heartbeat):
        try:
            result = evaluator.evaluate(lambda: build_from(entry.description), entry.key.replace(":", "-"))
        except KeyboardInterrupt:
            trial.set_user_attr("status", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except (RunFailed, RuntimeError, ValueError) as e:
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
            study.tell(trial, state=TrialState.FAIL)
            logger.warning("final training of %s failed: %s", entry.display_name, e)
            return FinalOutcome(entry, None, skipped=False, error=str(e))
    a = result.attrs
    tested = a.get("test_accuracy_uncertainty")
    accuracy = tested if tested else a["val_accuracy_uncertainty"]
    final_acc = float(accuracy["mean"])
    runs = [{k: v for k, v in r.items() if k != "history"} for r in a.get("runs", [])]
    stored = {
        **{k: v for k, v in a.items() if k not in ("runs", "test_accuracy_uncertainty")},
        "runs": runs,
        "val_accuracy": result.val_accuracy,
        "final_split": "test" if tested else "val",
        "final_accuracy": final_acc,
        "final_accuracy_uncertainty": accuracy,
        "final_netscore": netscore(max(final_acc, 1e-3), prof.params, prof.macs),
        "final_netscore_ci": netscore_interval(
            {"val_accuracy_uncertainty": accuracy}, prof.params, prof.macs
        ),
    }
    for k, v in stored.items():
        trial.set_user_attr(k, v)
    if result.weights_file and upload is not None:
        trial.set_user_attr("weights_artifact_id", upload(trial, result.weights_file))
    trial.set_user_attr("status", "complete")
    trial.set_user_attr("wall_time_s", time.time() - start)
    frozen = study.tell(trial, [final_acc, float(prof.params), float(prof.macs)])
    return FinalOutcome(entry, frozen, skipped=False)


__all__ = [
    "FINAL_BASELINES",
    "KIND_FINAL",
    "ROLES",
    "SUFFIX",
    "FinalEntry",
    "FinalOutcome",
    "final_study_name",
    "open_final_study",
    "pick_candidates",
    "plan_entries",
    "run_final",
]
