"""Which trial is drawn how: the groups of points shared by the static and the interactive plots.

The ``kind`` column decides the group (search candidates, baselines, pruned models, anything a later
issue adds), the ``status`` column splits search trials into trained, stopped early and over
budget. Both plot modules draw exactly these groups, in this order, with these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.collect import KIND_BASELINE, KIND_FINAL, KIND_PRUNED, KIND_SEARCH, Collection
from reports.pareto import front_2d

AXES = {"macs": "MACs", "params": "params"}


@dataclass(frozen=True)
class Group:
    """Points drawn alike.

    Attributes:
        key: a short id (CSS class, file-safe).
        name: the legend text.
        rows: the trials.
        y: the accuracy each is drawn at (``NaN``: drawn on the bottom edge, as for over-budget
            candidates that were never trained).
        marker, color, size, filled: how it looks (matplotlib marker letters).
        labelled: whether each point gets its name written beside it.
    """

    key: str
    name: str
    rows: pd.DataFrame
    y: np.ndarray
    marker: str
    color: str
    size: float
    filled: bool = True
    labelled: bool = False


def groups(collection: Collection, pareto_rows: pd.DataFrame) -> list[Group]:
    """The groups of a collection, background first (drawn first, listed first)."""
    f = collection.frame
    search = f[(f["study"] == collection.study) & (f["kind"] == KIND_SEARCH)]
    out: list[Group] = []
    infeasible = search[
        (search["status"] == "infeasible") & search["params"].notna() & search["macs"].notna()
    ]
    if len(infeasible):
        out.append(
            Group(
                "infeasible",
                "over budget (not trained)",
                infeasible,
                np.full(len(infeasible), np.nan),
                "x",
                "#9e9e9e",
                28,
            )
        )
    stopped = search[
        (search["status"] == "stopped_early") & search["params"].notna() & search["macs"].notna()
    ]
    if len(stopped):
        acc = np.array([_stopped_accuracy(a) for a in stopped["attrs"]], dtype=float)
        out.append(Group("stopped", "stopped early", stopped, acc, "o", "#9e9e9e", 30, filled=False))
    trained = collection.candidates
    trained = trained[~trained["is_ct_l"]]
    on_front = trained.index.isin(pareto_rows.index)
    if (~on_front).any():
        rows = trained[~on_front]
        out.append(Group("candidate", "searched candidate", rows, _acc(rows), "o", "#5b8fc7", 34))
    if on_front.any():
        rows = trained[on_front]
        out.append(Group("pareto", "Pareto member (3 objectives)", rows, _acc(rows), "o", "#1f4e8c", 60))
    ct_l = f[f["is_ct_l"] & f["measured"]]
    if len(ct_l):
        out.append(Group("ct-l", "CT L (prototype)", ct_l, _acc(ct_l), "*", "#c62828", 170, labelled=True))
    pruned = f[(f["kind"] == KIND_PRUNED) & f["measured"]]
    if len(pruned):
        out.append(Group("pruned", "pruned model", pruned, _acc(pruned), "^", "#2e7d32", 70, labelled=True))
    base = f[(f["kind"] == KIND_BASELINE) & f["measured"]]
    if len(base):
        out.append(Group("baseline", "baseline", base, _acc(base), "s", "#ef6c00", 60, labelled=True))
    # the final stage's models are drawn in their own picture (reports.final), never beside proxy figures
    known = {KIND_SEARCH, KIND_BASELINE, KIND_PRUNED, KIND_FINAL}
    other = f[~f["kind"].isin(known) & f["measured"]]
    if len(other):
        out.append(Group("other", "other models", other, _acc(other), "D", "#6a1b9a", 50, labelled=True))
    return [part for g in out for part in _split_unlike(g)]


MARK = "†"


def _split_unlike(g: Group) -> list[Group]:
    """``g`` and, apart, its points trained differently from the search's trials: hollow, with
    "†" after their names (the comparability rule: never silently beside the others)."""
    if "differs" not in g.rows.columns:
        return [g]
    unlike = np.array([isinstance(d, str) and bool(d) for d in g.rows["differs"]], dtype=bool)
    if not unlike.any():
        return [g]
    rows = g.rows[unlike].copy()
    rows["label"] = [f"{label} {MARK}" for label in rows["label"]]
    marked = Group(
        f"{g.key}-unlike",
        f"{g.name}, trained differently {MARK}",
        rows,
        g.y[unlike],
        g.marker if g.marker != "x" else "o",
        g.color,
        g.size,
        filled=False,
        labelled=True,
    )
    if unlike.all():
        return [marked]
    kept = Group(
        g.key, g.name, g.rows[~unlike], g.y[~unlike], g.marker, g.color, g.size, g.filled, g.labelled
    )
    return [kept, marked]


def _acc(rows: pd.DataFrame) -> np.ndarray:
    return rows["val_accuracy"].to_numpy(dtype=float)


def _stopped_accuracy(attrs: dict) -> float:
    """The validation accuracy at which a trial was stopped, when the driver recorded it."""
    v = attrs.get("stopped_val_accuracy", attrs.get("pruned_val_accuracy"))  # the latter: older studies
    if isinstance(v, (int, float)):
        return float(v)
    history = attrs.get("history") or []
    for row in reversed(history):
        if isinstance(row, dict) and isinstance(row.get("val_accuracy"), (int, float)):
            return float(row["val_accuracy"])
    return float("nan")


def front_line(rows: pd.DataFrame, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D non-dominated front of ``rows`` in (``axis`` down, accuracy up), sorted by ``axis``."""
    xs = rows[axis].to_numpy(dtype=float)
    ys = rows["val_accuracy"].to_numpy(dtype=float)
    idx = front_2d(list(xs), list(ys))
    return xs[idx], ys[idx]


def iso_accuracy(netscore: float, params: float, macs: np.ndarray) -> np.ndarray:
    """Accuracy (%) at which a model of ``params`` and ``macs`` has NetScore ``netscore``.

    From NetScore = 20 log10(a^2 / sqrt(p_M m_G)): a = 10^(N/40) (p_M m_G)^(1/4).
    """
    return 10 ** (netscore / 40.0) * (params / 1e6 * np.asarray(macs, dtype=float) / 1e9) ** 0.25


def iso_levels(scores: Sequence[float], count: int = 4) -> list[float]:
    """About ``count`` round NetScore levels (steps of 1, 2, 5, 10 or 20) spanning the scores."""
    s = [float(v) for v in scores if np.isfinite(v)]
    if not s:
        return []
    lo, hi = min(s), max(s)
    for step in (1.0, 2.0, 5.0, 10.0, 20.0):
        if (hi - lo) / step <= count:
            break
    start = np.floor(lo / step) * step - step
    return [float(v) for v in np.arange(start, hi + step * 1.01, step)]


def unit(axis: str, values: Sequence[float]) -> tuple[float, str]:
    """The divisor and unit a column of ``axis`` (``macs``/``params``) reads best in: MACs in G,
    or in M when every value is under 0.1 G (small complexity sizes); params in M."""
    if axis == "macs":
        finite = [v for v in values if v is not None and np.isfinite(v)]
        return (1e9, "G") if not finite or max(finite) >= 1e8 else (1e6, "M")
    return 1e6, "M"
