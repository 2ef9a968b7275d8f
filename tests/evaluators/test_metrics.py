from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluators.evaluate import evaluate
from evaluators.metrics import EvalResult, compute_metrics


def from_confusion(cm: list[list[int]]) -> tuple[list[int], list[int]]:
    t, p = [], []
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            t += [i] * count
            p += [j] * count
    return t, p


# rows true (Normal, Pneumonia, COVID-19), columns predicted; n = 60
CM = [[20, 3, 2], [4, 10, 1], [1, 2, 17]]


def test_metrics_against_a_hand_computed_confusion_matrix() -> None:
    t, p = from_confusion(CM)
    r = compute_metrics(t, p)
    assert r.n == 60 and r.confusion_matrix == CM
    assert r.accuracy == pytest.approx(100 * 47 / 60)
    normal, pneu, covid = r["Normal"], r["Pneumonia"], r["COVID-19"]
    # Normal: TP 20, FN 5, FP 5, TN 30
    assert normal.support == 25
    assert normal.sensitivity == pytest.approx(80.0)
    assert normal.ppv == pytest.approx(80.0)
    assert normal.specificity == pytest.approx(100 * 30 / 35)
    assert normal.npv == pytest.approx(100 * 30 / 35)
    assert normal.f1 == pytest.approx(80.0)
    # Pneumonia: TP 10, FN 5, FP 5, TN 40
    assert (pneu.sensitivity, pneu.ppv) == (pytest.approx(100 * 10 / 15), pytest.approx(100 * 10 / 15))
    assert pneu.specificity == pytest.approx(100 * 40 / 45) and pneu.npv == pytest.approx(100 * 40 / 45)
    # COVID-19: TP 17, FN 3, FP 3, TN 37
    assert covid.sensitivity == pytest.approx(85.0) and covid.ppv == pytest.approx(85.0)
    assert covid.specificity == pytest.approx(100 * 37 / 40) and covid.npv == pytest.approx(100 * 37 / 40)
    assert covid.f1 == pytest.approx(85.0)
    assert r.covid_sensitivity == pytest.approx(85.0)
    assert r.macro_f1 == pytest.approx((80 + 100 * 10 / 15 + 85) / 3)
    assert r.per_source == {}


def test_asymmetric_matrix_separates_sensitivity_from_ppv() -> None:
    # COVID-19: TP 8, FN 2 (as Normal), FP 4 (Normal as COVID); Normal: TP 6, FN 4, FP 2
    t, p = from_confusion([[6, 0, 4], [0, 0, 0], [2, 0, 8]])
    c = compute_metrics(t, p)["COVID-19"]
    assert c.sensitivity == pytest.approx(80.0) and c.ppv == pytest.approx(100 * 8 / 12)
    assert c.specificity == pytest.approx(60.0) and c.npv == pytest.approx(75.0)
    assert c.f1 == pytest.approx(100 * 16 / 22)


def test_class_without_images_is_undefined_not_a_crash() -> None:
    t, p = from_confusion([[5, 0, 1], [0, 0, 0], [2, 0, 4]])
    r = compute_metrics(t, p)
    pneu = r["Pneumonia"]
    assert pneu.support == 0 and pneu.sensitivity is None and pneu.ppv is None and pneu.f1 is None
    assert pneu.specificity == 100.0 and pneu.npv == 100.0
    assert r.macro_f1 == pytest.approx((r["Normal"].f1 + r["COVID-19"].f1) / 2)
    # predicted but absent: PPV 0 and F1 0 (it counts against the macro F1), sensitivity undefined
    t2, p2 = from_confusion([[5, 1, 0], [0, 0, 0], [0, 0, 4]])
    r2 = compute_metrics(t2, p2)
    assert r2["Pneumonia"].ppv == 0.0 and r2["Pneumonia"].f1 == 0.0 and r2["Pneumonia"].sensitivity is None
    # no COVID-19 images: no interval for its sensitivity
    r3 = compute_metrics([0, 0, 1], [0, 1, 1])
    assert r3.covid_sensitivity is None and r3.covid_sensitivity_ci is None
    # every prediction one class: NPV of that class undefined
    r4 = compute_metrics([0, 2, 2], [2, 2, 2])
    assert r4["COVID-19"].npv is None and r4["Normal"].ppv is None


def test_bootstrap_intervals_are_seeded_and_sensible() -> None:
    t, p = from_confusion(CM)
    a = compute_metrics(t, p, seed=3)
    assert a.accuracy_ci == compute_metrics(t, p, seed=3).accuracy_ci
    b = compute_metrics(t, p, seed=4)
    assert (a.accuracy_ci, a.covid_sensitivity_ci) != (b.accuracy_ci, b.covid_sensitivity_ci)
    lo, hi = a.accuracy_ci
    assert lo < a.accuracy < hi and lo >= 0 and hi <= 100
    # about +-1.96 standard errors of a proportion
    se = 100 * math.sqrt(47 / 60 * 13 / 60 / 60)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    clo, chi = a.covid_sensitivity_ci
    assert clo < 85.0 < chi
    perfect = compute_metrics([0, 1, 2, 2], [0, 1, 2, 2])
    assert perfect.accuracy_ci == (100.0, 100.0) and perfect.covid_sensitivity_ci == (100.0, 100.0)
    assert compute_metrics(t, p, bootstrap=0).accuracy_ci is None


def test_bootstrap_matches_resampling_images() -> None:
    """The multinomial shortcut has the distribution of resampling the images themselves."""
    t, p = from_confusion(CM)
    correct = np.array(t) == np.array(p)
    rng = np.random.default_rng(0)
    direct = correct[rng.integers(0, 60, size=(4000, 60))].mean(1) * 100
    lo, hi = np.percentile(direct, [2.5, 97.5])
    ours = compute_metrics(t, p, bootstrap=4000).accuracy_ci
    assert ours[0] == pytest.approx(lo, abs=2.0) and ours[1] == pytest.approx(hi, abs=2.0)


def test_per_source_metrics() -> None:
    t = [0, 0, 2, 2, 0, 2, 2]
    p = [0, 2, 2, 2, 0, 0, 0]
    src = ["a", "a", "a", "a", "b", "b", "b"]
    r = compute_metrics(t, p, sources=src)
    assert set(r.per_source) == {"a", "b"}
    assert r.per_source["a"].accuracy == 75.0 and r.per_source["b"].n == 3
    assert r.per_source["b"]["COVID-19"].sensitivity == 0.0
    assert r.per_source["a"].per_source == {}
    assert compute_metrics(t, p, sources=["a"] * 7).per_source == {}


def test_round_trip_is_json_safe() -> None:
    t, p = from_confusion([[5, 0, 1], [0, 0, 0], [2, 0, 4]])
    r = compute_metrics(t, p, sources=["x"] * 6 + ["y"] * 6, seed=1)
    text = json.dumps(r.to_dict(), allow_nan=False)
    back = EvalResult.from_dict(json.loads(text))
    assert back == r
    assert back.to_dict() == r.to_dict()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0, 1], [0]), "the same length"),
        (([], []), "zero predictions"),
        (([0, 3], [0, 1]), "y_true must hold classes 0 to 2"),
        (([0, 1], [0, -1]), "y_pred must hold classes 0 to 2"),
    ],
)
def test_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(*args)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=60))
def test_invariants(pairs: list[tuple[int, int]]) -> None:
    t, p = zip(*pairs)
    r = compute_metrics(torch.tensor(t), np.array(p), bootstrap=50)
    cm = np.array(r.confusion_matrix)
    assert cm.sum() == r.n == len(pairs)
    assert r.accuracy == pytest.approx(100 * np.trace(cm) / r.n)
    assert [m.support for m in r.per_class.values()] == cm.sum(1).tolist()
    for m in r.per_class.values():
        for v in (m.sensitivity, m.ppv, m.specificity, m.npv, m.f1):
            assert v is None or 0.0 <= v <= 100.0
    lo, hi = r.accuracy_ci
    assert lo <= hi


def test_evaluate_a_model_on_the_bundled_data(tmp_path) -> None:
    from evaluators.data.covidx import load_dataset

    class AlwaysCovid(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[1] == 1  # channels read from the first convolution
            return torch.tensor([0.0, 0.0, 1.0]).expand(x.shape[0], 3) + 0 * self.conv(x).mean()

    d = load_dataset(splits=("test",))
    r = evaluate(AlwaysCovid(), d, "test", 32, device="cpu", cache_dir=tmp_path)
    assert r.n == 50 and r.confusion_matrix == [[0, 0, 24], [0, 0, 0], [0, 0, 26]]
    assert r["COVID-19"].sensitivity == 100.0 and r["Normal"].sensitivity == 0.0
