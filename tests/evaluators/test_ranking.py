"""Kendall's tau-b and Spearman's rho: hand-computed cases, ties, scipy where installed, intervals."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.ranking import correlation, fidelity, kendall_tau_b, spearman_rho


def test_by_hand() -> None:
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # pairs: (1,2)+ (1,3)+ (1,4)+ (2,3)- (2,4)+ (3,4)+ -> (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None and spearman_rho([1], [2]) is None


def test_ties_and_scipy_agree() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.integers(0, 5, 12).astype(float)
        y = x + rng.integers(-2, 3, 12)
        assert kendall_tau_b(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic)
        assert spearman_rho(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)


def test_interval_covers_the_value_and_narrows_with_more_items() -> None:
    rng = np.random.default_rng(0)
    small_x = rng.normal(size=8)
    small = correlation(small_x, small_x + rng.normal(scale=0.5, size=8), draws=500)
    big_x = rng.normal(size=200)
    big = correlation(big_x, big_x + rng.normal(scale=0.5, size=200), draws=500)
    for c in (small, big):
        assert c.ci is not None and c.ci[0] <= c.value <= c.ci[1]
    assert (big.ci[1] - big.ci[0]) < (small.ci[1] - small.ci[0])
    f = fidelity([1, 2, 3], [1, 3, 2], draws=50)
    assert f["n"] == 3 and f["kendall_tau"]["value"] == pytest.approx(1 / 3)
