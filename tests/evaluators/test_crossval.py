"""``evaluate_runs``: one plain run is exactly ``train``; folds are patient-disjoint, cover train+val
once and never read the test split; every run's value and the interval are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import evaluators.runs as crossval
from evaluators.data.covidx import load_dataset
from evaluators.data.patients import group_samples, make_folds
from evaluators.runs import CVConfig, evaluate_runs
from evaluators.training import TrainConfig, train
from space import build, get_reference

FAST = TrainConfig(epochs=1, image_size=32, patience=0)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path / "cache"))


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(get_reference("ct-s"), 3)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_fold_one_seed_is_exactly_train() -> None:
    ds = load_dataset()
    res = evaluate_runs(make_model, ds, FAST)
    plain = train(make_model(FAST.seed), ds, FAST, progress=False)
    assert plain.ok and plain.val is not None and plain.test is not None
    assert res.accuracy.mean == plain.val.accuracy and res.accuracy.values == (plain.val.accuracy,)
    assert res.val.to_dict() == plain.val.to_dict()
    assert res.test is not None and res.test.to_dict() == plain.test.to_dict()
    assert _same_weights(res.first.state_dict, plain.state_dict)
    assert [h["val_accuracy"] for h in res.first.history] == [h["val_accuracy"] for h in plain.history]
    # one run: the interval is the bootstrap one over its images, as the plain evaluation reports it
    assert res.accuracy.std is None and res.accuracy.method == "bootstrap over images"
    assert res.accuracy.ci == tuple(plain.val.accuracy_ci)
    assert res.grouping is None and res.fold_sizes == []
    assert [(r["fold"], r["repeat"], r["seed"]) for r in res.runs] == [(0, 0, 0)]
    assert res.cv_dict(CVConfig())["folds"] == 1


def test_repeats_train_with_successive_seeds_and_keep_the_first() -> None:
    ds = load_dataset()
    res = evaluate_runs(make_model, ds, FAST, CVConfig(repeats=2))
    assert [r["seed"] for r in res.runs] == [0, 1]
    plain = train(make_model(0), ds, FAST, progress=False)
    assert _same_weights(res.first.state_dict, plain.state_dict)
    assert res.accuracy.values[0] == plain.val.accuracy  # type: ignore[union-attr]
    assert len(res.accuracy.values) == 2 and res.accuracy.method == "t over 2 runs"
    assert res.val.n == 2 * len(ds.split("val"))  # both runs' predictions pooled
    assert res.test is not None  # the first run's test metrics, as plain training gives them


def test_folds_are_patient_disjoint_cover_train_val_once_and_skip_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = load_dataset()
    seen_splits: list[str] = []
    fitted: list[tuple[list[tuple[str, str]], list[tuple[str, str]]]] = []
    real_load, real_fit = crossval.load_arrays, crossval.fit

    def load(dataset: Any, split: str, *a: Any, **kw: Any) -> Any:
        seen_splits.append(split)
        return real_load(dataset, split, *a, **kw)

    def fit(model: Any, train_arr: Any, val_arr: Any, *a: Any, **kw: Any) -> Any:
        keys = [list(zip(arr.sources, arr.filenames)) for arr in (train_arr, val_arr)]
        fitted.append((keys[0], keys[1]))
        assert kw.get("test") is None
        return real_fit(model, train_arr, val_arr, *a, **kw)

    monkeypatch.setattr(crossval, "load_arrays", load)
    monkeypatch.setattr(crossval, "fit", fit)
    cv = CVConfig(folds=3)
    res = evaluate_runs(make_model, ds, FAST, cv)

    assert "test" not in seen_splits and res.test is None
    samples = [*ds.split("train"), *ds.split("val")]
    everything = {(s.source, s.filename) for s in samples}
    g = group_samples(samples, dirs=dict(zip(ds.sources, ds.dirs)))
    patient = {(s.source, s.filename): p for s, p in zip(samples, g.patients)}
    assert len(fitted) == 3
    held_out = [set(v) for _, v in fitted]
    assert sorted(len(v) for v in held_out) == sorted(res.fold_sizes)
    assert sum(res.fold_sizes) == len(everything) == sum(len(v) for v in held_out)
    assert set().union(*held_out) == everything  # every train+val image is validated exactly once
    for train_keys, val_keys in fitted:
        assert set(train_keys) == everything - set(val_keys)
        assert not {patient[k] for k in train_keys} & {patient[k] for k in val_keys}
    # the folds are make_folds' on the same grouping
    labels = [s.label for s in samples]
    want = sorted(len(f) for f in make_folds(labels, g.patients, 3, seed=cv.fold_seed))
    assert sorted(res.fold_sizes) == want

    # stored per fold, with the spread and the interval
    acc = res.accuracy
    assert [r["fold"] for r in res.runs] == [1, 2, 3] and len(acc.values) == 3
    assert acc.values == tuple(r["val_accuracy"] for r in res.runs)
    assert acc.std is not None and acc.ci is not None and acc.ci[0] <= acc.mean <= acc.ci[1]
    assert acc.method == "t over 3 runs"
    assert res.val.n == len(everything)  # out-of-fold predictions pooled
    d = res.cv_dict(cv)
    assert d["fold_sizes"] == res.fold_sizes and d["grouping"]["from_csv"] == len(everything)
    assert d["grouping"]["warning"] is None


def test_on_run_sees_every_run_and_may_stop_them() -> None:
    ds = load_dataset()
    seen: list[tuple[int, float]] = []

    class Stop(Exception):
        pass

    def on_run(run: int, acc: float) -> None:
        seen.append((run, acc))
        if run == 2:
            raise Stop

    with pytest.raises(Stop):
        evaluate_runs(make_model, ds, FAST, CVConfig(folds=3), on_run=on_run)
    assert [r for r, _ in seen] == [1, 2]
