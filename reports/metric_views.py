"""Reading the stored metrics dicts (``EvalResult.to_dict()``) into what the tables show.

This is the one place that knows the layout of ``val_metrics`` / ``test_metrics``; every other
module of ``reports`` goes through ``read_metrics``. Values are percent, as the paper reports them;
an undefined value (a class with no images, e.g. pneumonia in the bundled data) is ``None`` and is
shown as "n/a", never as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evaluators.data.classes import CLASS_NAMES

COVID = CLASS_NAMES[2]
CLASS_METRICS = ("sensitivity", "ppv", "specificity", "npv")


@dataclass(frozen=True)
class ClassView:
    """One class's metrics in percent (``None`` where undefined)."""

    sensitivity: float | None = None
    ppv: float | None = None
    specificity: float | None = None
    npv: float | None = None
    support: int | None = None


@dataclass(frozen=True)
class MetricsView:
    """What a report reads of one split's ``EvalResult``.

    Attributes:
        accuracy: percent.
        accuracy_ci: the 95 % bootstrap interval of the accuracy, or ``None``.
        covid_sensitivity_ci: the 95 % bootstrap interval of the COVID-19 sensitivity, or ``None``.
        per_class: class name -> ``ClassView``.
        macro_f1: percent, or ``None``.
        n: number of images evaluated, or ``None``.
    """

    accuracy: float | None
    accuracy_ci: tuple[float, float] | None = None
    covid_sensitivity_ci: tuple[float, float] | None = None
    per_class: dict[str, ClassView] = field(default_factory=dict)
    macro_f1: float | None = None
    n: int | None = None

    def cls(self, name: str) -> ClassView:
        return self.per_class.get(name, ClassView())


def read_metrics(stored: Mapping[str, Any] | None) -> MetricsView | None:
    """A ``MetricsView`` of a stored ``EvalResult.to_dict()``; ``None`` when nothing is stored."""
    if not stored or not isinstance(stored, Mapping):
        return None
    try:
        from evaluators.metrics import EvalResult
    except ImportError:  # the evaluators' metrics module is optional to a report
        return _from_dict(stored)
    try:
        result = EvalResult.from_dict(dict(stored))
    except (KeyError, TypeError, ValueError):
        return _from_dict(stored)
    return _from_result(result)


def _from_result(result: Any) -> MetricsView:
    per_class = {}
    for name, c in dict(getattr(result, "per_class", {}) or {}).items():
        per_class[str(name)] = ClassView(
            sensitivity=_num(getattr(c, "sensitivity", None)),
            ppv=_num(getattr(c, "ppv", None)),
            specificity=_num(getattr(c, "specificity", None)),
            npv=_num(getattr(c, "npv", None)),
            support=_int(getattr(c, "support", None)),
        )
    return MetricsView(
        accuracy=_num(getattr(result, "accuracy", None)),
        accuracy_ci=_interval(getattr(result, "accuracy_ci", None)),
        covid_sensitivity_ci=_interval(getattr(result, "covid_sensitivity_ci", None)),
        per_class=per_class,
        macro_f1=_num(getattr(result, "macro_f1", None)),
        n=_int(getattr(result, "n", None)),
    )


def _from_dict(d: Mapping[str, Any]) -> MetricsView:
    per_class = {}
    raw = d.get("per_class") or {}
    if isinstance(raw, Mapping):
        for name, c in raw.items():
            if isinstance(c, Mapping):
                per_class[str(name)] = ClassView(
                    sensitivity=_num(c.get("sensitivity")),
                    ppv=_num(c.get("ppv")),
                    specificity=_num(c.get("specificity")),
                    npv=_num(c.get("npv")),
                    support=_int(c.get("support")),
                )
    return MetricsView(
        accuracy=_num(d.get("accuracy")),
        accuracy_ci=_interval(d.get("accuracy_ci")),
        covid_sensitivity_ci=_interval(d.get("covid_sensitivity_ci")),
        per_class=per_class,
        macro_f1=_num(d.get("macro_f1")),
        n=_int(d.get("n")),
    )


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _interval(v: Any) -> tuple[float, float] | None:
    if isinstance(v, Mapping):
        v = (v.get("low", v.get("lo")), v.get("high", v.get("hi")))
    if isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = _num(v[0]), _num(v[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None
