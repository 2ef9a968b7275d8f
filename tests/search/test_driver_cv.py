"""The search with folds and seeds: a candidate whose first fold is far below the front stops there,
the driver stores the uncertainty, and one fold and one seed are exactly the plain evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from evaluators import netscore
from evaluators.uncertainty import Uncertain
from search.driver.config import RunConfig
from search.driver.study import CandidateOutcome, SearchDriver
from space import ArchSpec, get_reference, to_params


class PlanEvaluator:
    """A stand-in for ``TrainingEvaluator``: each candidate's fold accuracies come from ``plan`` in
    call order, reported one fold a step."""

    def __init__(self, plan: list[list[float]]) -> None:
        self.plan = plan
        self.reported: list[list[int]] = []

    def __call__(self, spec: ArchSpec, on_epoch: Callable[[int, float], None]) -> CandidateOutcome:
        values = self.plan[len(self.reported)]
        self.reported.append([])
        for fold, acc in enumerate(values, start=1):
            self.reported[-1].append(fold)
            on_epoch(fold, acc)  # may raise TrialPruned
        u = Uncertain.of(values)
        return CandidateOutcome(val_accuracy=u.mean, attrs={"val_accuracy_uncertainty": u.to_dict()})


class FoldsEvaluator(PlanEvaluator):
    """As ``TrainingEvaluator`` with ``--cv-folds 3``: its ``steps`` are the three folds."""

    steps = 3


def _config(tmp_path: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "out": str(tmp_path),
        "study": "cv",
        "complexity_size": 64,
        "trials": 3,
        "epochs": 1,
        "heartbeat": 5,
        "prune_warmup": 1,
        "prune_margin": 5.0,
        "cv_folds": 3,
    }
    base.update(kw)
    return RunConfig.make(**base)


def test_a_candidate_whose_first_fold_is_far_below_the_front_stops_after_it(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # CT L (the prototype), then CT L again twice: same params and MACs, so the first is a finished
    # candidate dominating the others on size; only their accuracy decides.
    ev = FoldsEvaluator([[90.0, 92.0, 88.0], [60.0, 95.0, 95.0], [87.0, 86.0, 89.0]])
    driver = SearchDriver(_config(tmp_path), ev, distinct=False)  # CT L three times
    for _ in range(2):
        driver.study.enqueue_trial(to_params(get_reference("ct-l")))
    driver.run()
    first, far, near = driver.study.trials
    assert ev.reported == [[1, 2, 3], [1], [1, 2, 3]]  # the far one ran one fold of three
    assert far.state.name == "PRUNED" and far.user_attrs["stopped_at_epoch"] == 1
    assert far.user_attrs["stopped_val_accuracy"] == 60.0
    assert far.user_attrs["history"] == [{"epoch": 1, "val_accuracy": 60.0}]  # kept, stopped early too
    assert near.state.name == "COMPLETE"  # within the margin: all folds run
    # what a finished candidate stores: the mean, every fold, the interval, NetScore at its ends
    a = first.user_attrs
    assert a["val_accuracy"] == pytest.approx(90.0) and a["val_accuracy_uncertainty"]["values"] == [
        90,
        92,
        88,
    ]
    lo, hi = a["val_accuracy_uncertainty"]["ci"]
    assert a["netscore_ci"] == pytest.approx(
        [netscore(lo, a["params"], a["macs"]), netscore(hi, a["params"], a["macs"])]
    )
    assert a["netscore_ci"][0] < a["netscore"] < a["netscore_ci"][1]


def test_without_steps_the_last_epoch_is_the_last_step(tmp_path: Path) -> None:
    """The same plan with an evaluator that does not say it reports folds: one epoch is the last
    step, so nothing can be pruned; ``steps`` is what lets folds be pruned."""

    ev = PlanEvaluator([[90.0, 92.0, 88.0], [60.0, 95.0, 95.0], [87.0, 86.0, 89.0]])
    driver = SearchDriver(_config(tmp_path), ev, distinct=False)  # CT L three times
    for _ in range(2):
        driver.study.enqueue_trial(to_params(get_reference("ct-l")))
    driver.run()
    assert [t.state.name for t in driver.study.trials] == ["COMPLETE"] * 3


def test_training_evaluator_steps_are_runs_with_folds(tmp_path: Path) -> None:
    from search.driver.objective import TrainingEvaluator

    assert TrainingEvaluator(_config(tmp_path, cv_folds=1, epochs=4)).steps == 4
    assert TrainingEvaluator(_config(tmp_path, cv_folds=3, repeats=2, epochs=4)).steps == 6


def test_search_run_with_one_fold_and_one_seed_stores_the_plain_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`search run --trials 1` trains the CT L prototype; its stored attributes are those of plain
    training with the run's settings."""
    from evaluators.data.covidx import load_dataset
    from evaluators.training import train
    from search.cli import main
    from search.driver.artifacts import load_weights
    from space import build

    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path / "cache"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    argv = [
        "--quiet",
        "run",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--complexity-size",
        "64",
    ]
    assert main([*argv, "--storage", url, "--study", "one", "--out", str(tmp_path)]) == 0
    study = optuna.load_study(study_name="one", storage=url)
    (trial,) = study.trials
    a = trial.user_attrs
    assert a["origin"] == "prototype:ct-l" and a["status"] == "complete"

    cfg = replace(RunConfig.make(epochs=1, image_size=32, complexity_size=64).train, evaluate_test=False)
    torch.manual_seed(cfg.seed)
    plain = train(build(get_reference("ct-l"), 3), load_dataset(), cfg, progress=False)
    assert plain.val is not None and plain.test is None
    assert a["val_accuracy"] == plain.val.accuracy
    # a search trial keeps the test split for the final stage
    assert a["val_metrics"] == plain.val.to_dict() and a["test_metrics"] is None
    untimed = [{k: v for k, v in h.items() if "seconds" not in k} for h in plain.history]
    assert [{k: v for k, v in h.items() if "seconds" not in k} for h in a["history"]] == untimed
    u = a["val_accuracy_uncertainty"]
    assert u["values"] == [plain.val.accuracy] and u["std"] is None
    assert u["ci"] == list(plain.val.accuracy_ci) and u["method"] == "bootstrap over images"
    assert a["cv"]["folds"] == 1 and a["cv"]["fold_sizes"] == [] and len(a["runs"]) == 1
    assert a["netscore"] == netscore(plain.val.accuracy, a["params"], a["macs"])
    stored = load_weights(study, trial)
    assert stored.keys() == plain.state_dict.keys()
    assert all(torch.equal(stored[k], plain.state_dict[k]) for k in stored)


def test_the_stopping_rule_under_folds_compares_the_running_mean(tmp_path: Path) -> None:
    """A candidate with folds 100 then 80 has a mean of 90 after two: not 5 points below the
    finished CT L's 90, so it runs on, although its second fold alone (80) is 10 points below."""
    ev = FoldsEvaluator([[90.0, 90.0, 90.0], [100.0, 80.0, 90.0], [70.0, 80.0, 90.0]])
    driver = SearchDriver(_config(tmp_path, prune_warmup=2), ev, distinct=False)
    for _ in range(2):
        driver.study.enqueue_trial(to_params(get_reference("ct-l")))
    driver.run()
    assert ev.reported == [[1, 2, 3], [1, 2, 3], [1, 2]]
    stopped = driver.study.trials[2]
    assert stopped.state.name == "PRUNED" and stopped.user_attrs["stopped_val_accuracy"] == 75.0
    assert "mean of its 2 runs" in stopped.user_attrs["stop_reason"]
