"""Accuracies measured over several runs (folds x seeds): mean, spread, every value and a 95 % interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------------------ uncertainty
# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96).
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(dof: int) -> float:
    return _T95[dof - 1] if dof <= len(_T95) else 1.96


@dataclass(frozen=True)
class Uncertain:
    """A measured accuracy (percent) with its spread over runs.

    Attributes:
        mean: the mean over ``values``.
        std: sample standard deviation (``None`` for one value).
        values: one value per fold and seed, in run order.
        ci: 95 % interval: Student's t over the runs when there are several; for a single run the
            bootstrap interval over its images (``single_run_ci``), when given.
        method: how ``ci`` was computed ("t over N runs", "bootstrap over images" or "none").
    """

    mean: float
    std: float | None
    values: tuple[float, ...]
    ci: tuple[float, float] | None
    method: str

    @classmethod
    def of(cls, values: Sequence[float], single_run_ci: Sequence[float] | None = None) -> Uncertain:
        vals = tuple(float(v) for v in values)
        if not vals:
            raise ValueError("an Uncertain needs at least one value")
        mean = sum(vals) / len(vals)
        if len(vals) == 1:
            ci = (float(single_run_ci[0]), float(single_run_ci[1])) if single_run_ci else None
            return cls(mean, None, vals, ci, "bootstrap over images" if ci else "none")
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        half = t95(len(vals) - 1) * std / math.sqrt(len(vals))
        return cls(mean, std, vals, (mean - half, mean + half), f"t over {len(vals)} runs")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "values": list(self.values),
            "ci": list(self.ci) if self.ci else None,
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Uncertain:
        ci = d.get("ci")
        return cls(float(d["mean"]), d.get("std"), tuple(d["values"]), tuple(ci) if ci else None, d["method"])

    def overlaps(self, other: Uncertain) -> bool:
        """Whether the two 95 % intervals overlap (a difference that is not significant)."""
        if self.ci is None or other.ci is None:
            return True
        return self.ci[0] <= other.ci[1] and other.ci[0] <= self.ci[1]
