"""The search driver's logic with cheap stand-in evaluators (no training)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from search.driver.config import RunConfig
from search.driver.study import CandidateOutcome, SearchDriver, pareto_front, pareto_prune, scored_trials
from space import ArchSpec, get_reference, to_params


class ToyEvaluator:
    """Accuracy = k * (params_M * MACs_G)^(1/4) * h(spec), so NetScore = 20 log10(k^2 h^2): its
    optimum is where h peaks (stem width 40, stage-1 depth 3), whatever the complexity."""

    def __init__(self) -> None:
        self.calls = 0
        self.seen: list[ArchSpec] = []

    @staticmethod
    def h(spec: ArchSpec) -> float:
        return math.exp(-(((spec.stem.out_channels - 40) / 16) ** 2) - (len(spec.stages[0].blocks) - 3) ** 2)

    def __call__(self, spec: ArchSpec, on_epoch: Callable[[int, float], None]) -> CandidateOutcome:
        from evaluators import profile
        from space import build

        self.calls += 1
        self.seen.append(spec)
        p = profile(build(spec), (3, 64, 64), memory=False)
        acc = min(100.0, 30.0 * (p.params / 1e6 * p.macs / 1e9) ** 0.25 * self.h(spec))
        on_epoch(1, acc)
        return CandidateOutcome(val_accuracy=acc, attrs={"toy": True})


def _config(tmp_path: Any, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "out": str(tmp_path),
        "study": "toy",
        "complexity_size": 64,
        "trials": 6,
        "epochs": 1,
        "heartbeat": 5,
    }
    base.update(kw)
    return RunConfig.make(**base)


def test_tpe_finds_the_known_optimum_of_a_toy_objective(tmp_path: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ev = ToyEvaluator()
    cfg = _config(tmp_path, objective="netscore", trials=45, startup_trials=10, seed=3, space="wide")
    driver = SearchDriver(cfg, ev)
    driver.run()
    best = driver.study.best_trial
    assert best.params["stem_width"] == 40 and best.params["s1_depth"] == 3
    assert ev.h(ArchSpec.from_dict(best.user_attrs["spec"])) == 1.0
    # TPE concentrates on the optimum: after start-up most samples are near it, unlike random.
    late = [ev.h(s) for s in ev.seen[20:]]
    assert sum(h > 0.5 for h in late) >= len(late) // 2


def test_first_trial_is_the_ct_l_prototype_and_resume_adds_exactly_the_difference(tmp_path: Any) -> None:
    ev = ToyEvaluator()
    driver = SearchDriver(_config(tmp_path, trials=3), ev)
    assert driver.created
    driver.run()
    first = driver.study.trials[0]
    assert first.params == to_params(get_reference("ct-l"))
    assert first.user_attrs["origin"] == "prototype:ct-l"
    assert first.user_attrs["arch_id"] == get_reference("ct-l").arch_id
    assert len(driver.study.trials) == 3
    again = SearchDriver(_config(tmp_path, trials=5), ev)
    assert not again.created
    again.run()
    numbers = [t.number for t in again.study.trials]
    assert numbers == [0, 1, 2, 3, 4]
    assert ev.calls == 5  # the first three were not re-run


def test_over_budget_candidates_are_never_trained(tmp_path: Any) -> None:
    ev = ToyEvaluator()
    cfg = _config(tmp_path, trials=12, max_params=250_000, sampler="random", seed=1)
    driver = SearchDriver(cfg, ev)
    driver.run()
    trials = driver.study.trials
    infeasible = [t for t in trials if t.user_attrs["status"] == "infeasible"]
    complete = [t for t in trials if t.user_attrs["status"] == "complete"]
    assert infeasible, "the budget should exclude some sampled candidates"
    assert all(t.user_attrs["params"] > 250_000 for t in infeasible)
    assert all(t.user_attrs["constraints"][0] > 0 for t in infeasible)
    assert all(t.user_attrs["params"] <= 250_000 for t in complete)
    assert ev.calls == len(complete) == driver.trained
    assert all(s.arch_id in {t.user_attrs["arch_id"] for t in complete} for s in ev.seen)


def test_pareto_front_matches_brute_force() -> None:
    pts = [(90.0, 10, 10), (91.0, 12, 9), (89.0, 5, 5), (90.0, 10, 11), (95.0, 50, 50), (89.0, 5, 5)]
    assert pareto_front(pts) == [0, 1, 2, 4, 5]


def test_pareto_prune_rule() -> None:
    cfg = RunConfig.make(epochs=4, prune_warmup=1, prune_margin=5.0)
    done = scored_trials([])
    assert not pareto_prune(1, 50.0, 100, 100, done, cfg)

    class T:  # a stand-in FrozenTrial
        state = optuna.trial.TrialState.COMPLETE
        user_attrs = {"status": "complete", "val_accuracy": 90.0, "params": 80, "macs": 90}

    done = scored_trials([T()])  # type: ignore[list-item]
    assert pareto_prune(1, 80.0, 100, 100, done, cfg)  # dominated with room to spare
    assert not pareto_prune(1, 86.0, 100, 100, done, cfg)  # within the margin
    assert not pareto_prune(1, 50.0, 70, 100, done, cfg)  # fewer params: may be on the front
    assert not pareto_prune(4, 50.0, 100, 100, done, cfg)  # last epoch: nothing left to save
    assert not pareto_prune(0, 50.0, 100, 100, done, cfg)  # warm-up


def test_objective_mismatch_on_resume_is_a_usage_error(tmp_path: Any) -> None:
    from search.errors import UsageError

    SearchDriver(_config(tmp_path, trials=1), ToyEvaluator()).run()
    with pytest.raises(UsageError, match="was created with --objective pareto"):
        SearchDriver(_config(tmp_path, trials=1, objective="netscore"), ToyEvaluator())


def test_a_worker_whose_trials_keep_failing_stops_with_the_reason(tmp_path: Any) -> None:
    from search.errors import RunFailed

    class Broken:
        calls = 0

        def __call__(self, spec: ArchSpec, on_epoch: Callable[[int, float], None]) -> CandidateOutcome:
            Broken.calls += 1
            raise RunFailed("training failed: loss is nan")

    driver = SearchDriver(_config(tmp_path, trials=10, max_failures=3), Broken())
    with pytest.raises(RunFailed, match=r"3 trials in a row failed .*loss is nan"):
        driver.run()
    assert Broken.calls == 3
    assert [t.state.name for t in driver.study.trials] == ["FAIL"] * 3
