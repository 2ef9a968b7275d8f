"""Pareto fronts, dominance and the hypervolume of (accuracy up, params down, MACs down).

Optuna 5 keeps its hypervolume code private (``optuna._hypervolume``), so the exact 3-objective
hypervolume is computed here by slicing: sort by the last objective and add up the 2-D areas of the
slices. A front of a search has tens of points, so the O(n^2 log n) cost is nothing.

Normalisation and reference point (stated in every report): all objectives are turned into
minimised, unit-free values

    error  = 1 - accuracy / 100            (reference 1: 0 % accuracy)
    params = params / params_ref           (reference 2: twice the reference model)
    MACs   = MACs / macs_ref               (reference 2)

with ``params_ref``/``macs_ref`` the CT L prototype's complexity when the study holds it (it is the
first trial of every search), otherwise the largest completed candidate's. A hypervolume of 1 is
then e.g. a single model at 50 % accuracy with CT L's size; 4 is the unreachable maximum.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Point3 = tuple[float, float, float]  # (accuracy %, params, MACs)
REFERENCE = (1.0, 2.0, 2.0)


def dominates(a: Point3, b: Point3) -> bool:
    """Whether ``a`` dominates ``b``: accuracy no lower, params and MACs no higher, one strictly."""
    no_worse = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
    return no_worse and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])


def pareto_indices(points: Sequence[Point3]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a non-dominated point are all kept)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def front_2d(xs: Sequence[float], accs: Sequence[float]) -> list[int]:
    """Indices of the points non-dominated in (x down, accuracy up), sorted by x (for a step line)."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -accs[i]))
    out: list[int] = []
    best = -np.inf
    for i in order:
        if accs[i] > best:
            out.append(i)
            best = accs[i]
    return out


@dataclass(frozen=True)
class Normaliser:
    """Maps (accuracy %, params, MACs) to minimised unit-free objectives (see the module doc)."""

    params_ref: float
    macs_ref: float
    source: str  # what the references are, for the report's caption

    def __call__(self, p: Point3) -> tuple[float, float, float]:
        return (1.0 - p[0] / 100.0, p[1] / self.params_ref, p[2] / self.macs_ref)

    def describe(self) -> str:
        return (
            f"objectives 1 - accuracy/100, params / {self.params_ref:,.0f}, MACs / {self.macs_ref:,.0f} "
            f"({self.source}); reference point {REFERENCE}"
        )


def hypervolume_min(points: np.ndarray | Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume of minimised points in 1-3 dimensions against ``reference``.

    Points not strictly better than the reference in every objective contribute nothing.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, len(reference))
    ref = np.asarray(reference, dtype=float)
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    d = len(ref)
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        return _hv2(pts, ref)
    if d == 3:
        pts = pts[np.argsort(pts[:, 2], kind="stable")]
        total = 0.0
        for i in range(len(pts)):
            upper = pts[i + 1, 2] if i + 1 < len(pts) else ref[2]
            depth = upper - pts[i, 2]
            if depth > 0:
                total += _hv2(pts[: i + 1, :2], ref[:2]) * depth
        return float(total)
    raise ValueError(f"hypervolume_min handles 1 to 3 objectives, got {d}")


def _hv2(pts: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by 2-D minimised points below ``ref``: a sweep over the first objective."""
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    # The staircase: points sorted by x whose y is lower than every y before them.
    corners: list[tuple[float, float]] = []
    best_y = ref[1]
    for x, y in zip(pts[order, 0], pts[order, 1]):
        if y < best_y:
            corners.append((float(x), float(y)))
            best_y = y
    area = 0.0
    for k, (x, y) in enumerate(corners):
        right = corners[k + 1][0] if k + 1 < len(corners) else ref[0]
        area += (right - x) * (ref[1] - y)
    return float(area)


def hypervolume_bruteforce(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Inclusion-exclusion over all subsets: exact, exponential; for tests on a few points."""
    pts = [np.asarray(p, dtype=float) for p in points]
    ref = np.asarray(reference, dtype=float)
    total = 0.0
    for r in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, r):
            corner = np.max(np.stack(subset), axis=0)
            side = np.clip(ref - corner, 0.0, None)
            total += (-1) ** (r + 1) * float(np.prod(side))
    return total


def hypervolume(points: Sequence[Point3], normaliser: Normaliser) -> float:
    """Hypervolume of (accuracy %, params, MACs) points under ``normaliser`` against ``REFERENCE``."""
    if not points:
        return 0.0
    return hypervolume_min([normaliser(p) for p in points], REFERENCE)


def hypervolume_history(points: Sequence[Point3], normaliser: Normaliser) -> list[float]:
    """The hypervolume after each point in order (recomputed only when the front changes)."""
    out: list[float] = []
    front: list[Point3] = []
    value = 0.0
    for p in points:
        if not any(dominates(q, p) or q == p for q in front):
            front = [q for q in front if not dominates(p, q)] + [p]
            value = hypervolume(front, normaliser)
        out.append(value)
    return out
