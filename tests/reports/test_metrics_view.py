"""The report's one reader of stored metrics, on a real ``EvalResult.to_dict()`` and on odd input."""

from __future__ import annotations

import pytest

from reports.metric_views import read_metrics
from tests.reports.studies import metrics_dict


def test_reads_a_real_eval_result_with_an_absent_class() -> None:
    metrics = pytest.importorskip("evaluators.metrics")
    # no pneumonia image and none predicted: its sensitivity and PPV are undefined
    y_true = [0] * 10 + [2] * 10
    y_pred = [0] * 8 + [2] * 2 + [2] * 9 + [0]
    stored = metrics.compute_metrics(y_true, y_pred, 3, seed=0).to_dict()
    view = read_metrics(stored)
    assert view is not None
    assert view.accuracy == pytest.approx(85.0)
    assert view.cls("Pneumonia").sensitivity is None and view.cls("Pneumonia").ppv is None
    assert view.cls("Pneumonia").specificity == pytest.approx(100.0)
    assert view.cls("COVID-19").sensitivity == pytest.approx(90.0)
    assert view.cls("Normal").ppv == pytest.approx(8 / 9 * 100)
    lo, hi = view.accuracy_ci or (None, None)
    assert lo is not None and hi is not None and lo <= 85.0 <= hi
    assert view.covid_sensitivity_ci == tuple(stored["covid_sensitivity_ci"])


def test_reads_the_stored_layout_and_tolerates_missing_parts() -> None:
    stored = metrics_dict([[5, 0, 1], [0, 0, 0], [2, 0, 4]], (50.0, 90.0), None)
    view = read_metrics(stored)
    assert view is not None and view.covid_sensitivity_ci is None
    assert view.accuracy_ci == (50.0, 90.0)
    assert read_metrics(None) is None
    assert read_metrics({}) is None
    partial = read_metrics({"accuracy": 71.5})  # an older or foreign layout: what is there is read
    assert partial is not None and partial.accuracy == 71.5 and partial.cls("COVID-19").sensitivity is None
