"""The bootstrap over distinct images when each image is predicted several times (--repeats)."""

from __future__ import annotations

import numpy as np

from evaluators.metrics import compute_metrics


def _width(ci: tuple[float, float] | None) -> float:
    assert ci is not None
    return ci[1] - ci[0]


def test_repeated_predictions_of_one_image_do_not_narrow_the_interval() -> None:
    rng = np.random.default_rng(0)
    n, repeats = 200, 4
    t = rng.integers(0, 3, n)
    p = np.where(rng.random(n) < 0.8, t, (t + 1) % 3)  # 80 % correct
    once = compute_metrics(t, p, seed=1)
    names = [f"img{i}" for i in range(n)]
    # the same predictions four times (four seeds that agree): as much evidence as once
    counted = compute_metrics(np.tile(t, repeats), np.tile(p, repeats), seed=1)
    grouped = compute_metrics(np.tile(t, repeats), np.tile(p, repeats), seed=1, images=names * repeats)
    assert grouped.accuracy == counted.accuracy == once.accuracy
    assert _width(counted.accuracy_ci) < 0.6 * _width(once.accuracy_ci)  # the old, sqrt(4) too narrow
    assert abs(_width(grouped.accuracy_ci) - _width(once.accuracy_ci)) < 0.15 * _width(once.accuracy_ci)
    assert abs(_width(grouped.covid_sensitivity_ci) - _width(once.covid_sensitivity_ci)) < 0.2 * _width(
        once.covid_sensitivity_ci
    )


def test_distinct_images_keep_the_exact_multinomial_bootstrap() -> None:
    t = np.array([0, 1, 2, 2, 1, 0, 2, 2])
    p = np.array([0, 1, 2, 1, 1, 0, 2, 0])
    a = compute_metrics(t, p, seed=3)
    b = compute_metrics(t, p, seed=3, images=[str(i) for i in range(8)])
    assert a.accuracy_ci == b.accuracy_ci and a.covid_sensitivity_ci == b.covid_sensitivity_ci
