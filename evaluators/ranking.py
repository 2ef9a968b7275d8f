"""How well one ranking predicts another: Kendall's tau-b and Spearman's rho with bootstrap intervals.

Used to measure a proxy's fidelity: do candidates that score higher after a short proxy training
also score higher after the final training? Written with numpy only (scipy is not a core
dependency); ``tests/evaluators/test_ranking.py`` checks both against hand-computed cases and
scipy where it is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties in either variable corrected); ``None`` with fewer than two points
    or when one variable is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"x and y differ in length ({len(a)} vs {len(b)})")
    if len(a) < 2:
        return None
    i, j = np.triu_indices(len(a), k=1)
    dx, dy = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n_x, n_y = float(np.count_nonzero(dx)), float(np.count_nonzero(dy))
    if n_x == 0 or n_y == 0:
        return None
    return float(np.sum(dx * dy) / math.sqrt(n_x * n_y))


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=float)
    sorted_v = v[order]
    start = 0
    for end in range(1, len(v) + 1):
        if end == len(v) or sorted_v[end] != sorted_v[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the average ranks; ``None`` as for tau."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"x and y differ in length ({len(a)} vs {len(b)})")
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return None
    return float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))


@dataclass(frozen=True)
class Correlation:
    """A rank correlation over ``n`` items with its percentile-bootstrap 95 % interval (resampling
    the items with replacement; draws where it is undefined are left out)."""

    name: str
    value: float | None
    ci: tuple[float, float] | None
    n: int
    draws: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "ci": list(self.ci) if self.ci else None,
            "n": self.n,
            "draws": self.draws,
        }


def correlation(
    x: Sequence[float],
    y: Sequence[float],
    statistic: Callable[[Sequence[float], Sequence[float]], float | None] = kendall_tau_b,
    *,
    draws: int = 2000,
    seed: int = 0,
) -> Correlation:
    """``statistic(x, y)`` and its bootstrap interval."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    value = statistic(a, b)
    rng = np.random.default_rng(seed)
    samples = []
    if len(a) >= 3:
        for _ in range(draws):
            idx = rng.integers(0, len(a), len(a))
            v = statistic(a[idx], b[idx])
            if v is not None:
                samples.append(v)
    # a correlation lies in [-1, 1]; Spearman's formula can overshoot by a rounding error
    ci = None
    if samples:
        lo, hi = np.clip(np.percentile(samples, [2.5, 97.5]), -1.0, 1.0)
        ci = (float(lo), float(hi))
    name = {kendall_tau_b: "kendall_tau_b", spearman_rho: "spearman_rho"}.get(statistic, statistic.__name__)
    return Correlation(name, value, ci, len(a), len(samples))


def fidelity(
    proxy: Sequence[float], final: Sequence[float], *, draws: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Kendall's tau-b and Spearman's rho of ``proxy`` against ``final`` accuracies, with intervals."""
    return {
        "kendall_tau": correlation(proxy, final, kendall_tau_b, draws=draws, seed=seed).to_dict(),
        "spearman_rho": correlation(proxy, final, spearman_rho, draws=draws, seed=seed).to_dict(),
        "n": len(proxy),
    }
