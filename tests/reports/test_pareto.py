"""Dominance, fronts, hypervolume and NetScore iso-lines against brute force and hand computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from evaluators import netscore
from reports.pareto import (
    REFERENCE,
    Normaliser,
    dominates,
    front_2d,
    hypervolume,
    hypervolume_bruteforce,
    hypervolume_history,
    hypervolume_min,
    pareto_indices,
)
from reports.points import iso_accuracy, iso_levels


def _brute_front(points: list[tuple[float, float, float]]) -> list[int]:
    out = []
    for i, p in enumerate(points):
        beaten = False
        for q in points:
            if q[0] >= p[0] and q[1] <= p[1] and q[2] <= p[2] and q != p:
                beaten = True
        if not beaten:
            out.append(i)
    return out


def test_pareto_indices_match_brute_force_and_the_search_driver() -> None:
    from search.driver.study import pareto_front

    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(1, 12))
        # coarse values so that ties and duplicates occur
        pts = [
            (float(rng.integers(60, 70)), float(rng.integers(1, 6)), float(rng.integers(1, 6)))
            for _ in range(n)
        ]
        assert pareto_indices(pts) == _brute_front(pts)
        assert pareto_indices(pts) == pareto_front(pts)


def test_dominates_needs_one_strict_improvement() -> None:
    assert dominates((90.0, 1.0, 1.0), (89.0, 1.0, 1.0))
    assert not dominates((90.0, 1.0, 1.0), (90.0, 1.0, 1.0))
    assert not dominates((90.0, 1.0, 2.0), (89.0, 1.0, 1.0))


def test_front_2d_is_the_staircase() -> None:
    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 3.0]
    ys = [90.0, 70.0, 80.0, 69.0, 79.0, 85.0]
    assert front_2d(xs, ys) == [1, 5, 0]


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_hypervolume_matches_inclusion_exclusion(dim: int) -> None:
    rng = np.random.default_rng(dim)
    ref = [1.0, 1.2, 1.1][:dim]
    for _ in range(150):
        n = int(rng.integers(1, 8))
        pts = rng.random((n, dim)) * 1.3  # some beyond the reference point
        if rng.random() < 0.3:
            pts = np.round(pts, 1)  # ties
        assert hypervolume_min(pts, ref) == pytest.approx(hypervolume_bruteforce(pts, ref), abs=1e-12)


def test_hypervolume_by_hand() -> None:
    # two boxes of 1x1x1 and 2x1x1 overlapping in 1x1x1: 2
    assert hypervolume_min([[0, 1, 1], [1, 0, 1]], [2, 2, 2]) == pytest.approx(3.0)
    assert hypervolume_min([[0.5, 0.5, 0.5]], [1, 1, 1]) == pytest.approx(0.125)
    assert hypervolume_min([[1.5, 0, 0]], [1, 1, 1]) == 0.0


def test_hypervolume_agrees_with_optunas_private_implementation() -> None:
    hv = pytest.importorskip("optuna._hypervolume")
    rng = np.random.default_rng(7)
    pts = rng.random((20, 3))
    ref = np.array([1.1, 1.1, 1.1])
    assert hypervolume_min(pts, ref) == pytest.approx(hv.compute_hypervolume(pts, ref), rel=1e-9)


def test_normalised_hypervolume_and_its_history() -> None:
    norm = Normaliser(1_000_000, 1_000_000_000, "test")
    pts = [(50.0, 1_000_000, 1_000_000_000), (80.0, 3_000_000, 500_000_000), (70.0, 500_000, 500_000_000)]
    # one model at 50 % with the reference's size: 0.5 x 1 x 1
    assert hypervolume(pts[:1], norm) == pytest.approx(0.5 * 1.0 * 1.0)
    assert REFERENCE == (1.0, 2.0, 2.0)
    history = hypervolume_history(pts, norm)
    direct = [hypervolume(pts[: k + 1], norm) for k in range(len(pts))]
    assert history == pytest.approx(direct)
    assert all(b >= a for a, b in itertools.pairwise(history))


def test_iso_lines_have_the_netscore_they_claim() -> None:
    params = 450_000
    macs = np.array([1e8, 5e8, 9.7e8, 3e9])
    acc = iso_accuracy(83.3, params, macs)
    for a, m in zip(acc, macs):
        if a <= 100:
            assert netscore(float(a), params, float(m)) == pytest.approx(83.3)
    # the paper's CT-2 S: 98.3 % at 0.45 M params and 0.97 G MACs is on the 83.30 line
    assert iso_accuracy(netscore(98.3, 450_000, 970_000_000), 450_000, np.array([970_000_000]))[
        0
    ] == pytest.approx(98.3)


def test_iso_levels_are_round_and_span_the_scores() -> None:
    levels = iso_levels([71.3, 74.9, 80.2, 88.8])
    steps = set(np.diff(levels))
    assert len(steps) == 1 and steps.pop() in (1.0, 2.0, 5.0, 10.0, 20.0)
    assert levels[0] <= 71.3 and levels[-1] >= 88.8
    assert iso_levels([]) == []
