"""Training the baseline networks on the same scale as a search (``search baselines``).

Baselines are stored in the search's storage, in a study named ``<study>:baselines``: one COMPLETE
trial per baseline and training configuration, with the same user attrs as a search trial plus
``kind="baseline"``, ``baseline`` (registry name) and ``display_name``, so reports and exports
treat them like any candidate. A baseline already trained under the same configuration (same
training settings, complexity size and data) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search.driver.config import RunConfig
from search.driver.storage import optuna_quiet
from search.driver.study import OBJECTIVES, netscore_interval
from search.errors import RunFailed

SUFFIX = ":baselines"
KIND_BASELINE = "baseline"


def baselines_study_name(study: str) -> str:
    return study + SUFFIX


def config_key(config: RunConfig, data_hash: str) -> str:
    """Identifies "the same training configuration": training settings, complexity size, data."""
    body = {**config.training_dict(), "complexity_size": config.complexity_size, "data_hash": data_hash}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def open_baselines_study(storage: BaseStorage, study: str, artifacts: str) -> optuna.Study:
    """The ``<study>:baselines`` study, created on first use; it records where its weights are."""
    names, directions = OBJECTIVES["pareto"]
    s = optuna.create_study(
        storage=storage, study_name=baselines_study_name(study), directions=directions, load_if_exists=True
    )
    if "kind" not in s.user_attrs:
        with optuna_quiet():
            s.set_metric_names(names)
        s.set_user_attr("kind", KIND_BASELINE)
        s.set_user_attr("search_study", study)
    if "artifacts" not in s.user_attrs:
        s.set_user_attr("artifacts", artifacts)
    return s


def find_done(study: optuna.Study, name: str, key: str) -> FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("baseline") == name and t.user_attrs.get("config_key") == key:
            return t
    return None


@dataclass
class BaselineOutcome:
    name: str
    trial: FrozenTrial | None
    skipped: bool
    error: str | None = None


def run_baselines(
    config: RunConfig,
    names: Sequence[str],
    storage: BaseStorage,
    evaluator: Any,
    upload: Callable[[Any, str], str] | None,
    on_done: Callable[[BaselineOutcome], None] | None = None,
) -> list[BaselineOutcome]:
    """Train (or skip, if done) each named baseline; returns one outcome per name.

    Args:
        evaluator: a ``search.objective.TrainingEvaluator`` (or anything with ``evaluate`` and
            ``data_attrs``).
        upload: stores a weights file for a trial, returning the artifact id.
    """
    from baselines import baseline_info, create_baseline
    from evaluators import netscore, profile

    study = open_baselines_study(storage, config.study, config.artifacts_dir)
    key = config_key(config, evaluator.data_attrs()["data_hash"])
    size = config.complexity_size
    outcomes = []
    for name in names:
        done = find_done(study, name, key)
        if done is not None:
            outcome = BaselineOutcome(name, done, skipped=True)
        else:
            info = baseline_info(name)
            model = create_baseline(name, num_classes=3, in_chans=3)  # profiled; runs build their own
            prof = profile(model, (3, size, size))
            with optuna_quiet():
                trial = study.ask()
            start = time.time()
            attrs: dict[str, Any] = {
                "kind": KIND_BASELINE,
                "baseline": name,
                "display_name": info.display_name,
                "config_key": key,
                "builder": {"baseline": name, "num_classes": 3, "in_chans": 3},
                "params": prof.params,
                "macs": prof.macs,
                "flops": prof.flops,
                "peak_activation_bytes": prof.peak_activation_bytes,
                "complexity_size": size,
                "arch_id": name,
            }
            spec = getattr(model, "spec", None)
            if spec is not None:
                attrs["spec"] = spec.to_dict()
                attrs["arch_id"] = spec.arch_id
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            try:
                result = evaluator.evaluate(
                    lambda name=name: create_baseline(name, num_classes=3, in_chans=3), name
                )
            except (RunFailed, RuntimeError, ValueError) as e:
                trial.set_user_attr("status", "failed")
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
                study.tell(trial, state=TrialState.FAIL)
                outcome = BaselineOutcome(name, None, skipped=False, error=str(e))
            except KeyboardInterrupt:
                trial.set_user_attr("status", "interrupted")
                study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                for k, v in result.attrs.items():
                    trial.set_user_attr(k, v)
                ns = netscore(max(result.val_accuracy, 1e-3), prof.params, prof.macs)
                trial.set_user_attr("val_accuracy", result.val_accuracy)
                trial.set_user_attr("netscore", ns)
                trial.set_user_attr("netscore_ci", netscore_interval(result.attrs, prof.params, prof.macs))
                if result.weights_file and upload is not None:
                    trial.set_user_attr("weights_artifact_id", upload(trial, result.weights_file))
                trial.set_user_attr("status", "complete")
                trial.set_user_attr("wall_time_s", time.time() - start)
                frozen = study.tell(trial, [result.val_accuracy, float(prof.params), float(prof.macs)])
                outcome = BaselineOutcome(name, frozen, skipped=False)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes
