"""Clinical metrics in percent, like the COVID-Net CT papers: accuracy, per class sensitivity, PPV,
specificity, NPV and F1, the confusion matrix, macro F1 and bootstrap confidence intervals.

A value whose denominator is zero (the sensitivity of a class with no images, the PPV of a class
never predicted) is ``None``, "undefined", never a crash or a silent 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from evaluators.data.classes import CLASS_NAMES

COVID = 2  # index of COVID-19 in CLASS_NAMES
BOOTSTRAP_RESAMPLES = 1000
CI_LEVEL = 95.0


def _pct(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


@dataclass(frozen=True)
class ClassMetrics:
    """One class, one-vs-rest, in percent (``None`` where the denominator is zero)."""

    name: str
    support: int
    sensitivity: float | None  # recall: TP / (TP + FN)
    ppv: float | None  # precision: TP / (TP + FP)
    specificity: float | None  # TN / (TN + FP)
    npv: float | None  # TN / (TN + FN)
    f1: float | None  # 2 TP / (2 TP + FP + FN)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "support": self.support,
            "sensitivity": self.sensitivity,
            "ppv": self.ppv,
            "specificity": self.specificity,
            "npv": self.npv,
            "f1": self.f1,
        }


@dataclass(frozen=True)
class EvalResult:
    """The metrics of one set of predictions.

    Attributes:
        n: number of images.
        accuracy: percent correct.
        per_class: class name to its ``ClassMetrics``, in class order.
        confusion_matrix: rows are true classes, columns predicted classes.
        macro_f1: mean F1 over the classes where F1 is defined (a class neither present nor
            predicted is left out; a class predicted but absent counts with F1 0).
        accuracy_ci: 95 % percentile-bootstrap interval of the accuracy.
        covid_sensitivity_ci: the same for COVID-19 sensitivity; ``None`` without COVID-19 images.
        class_names: the class names, in index order.
        per_source: the same metrics for each source, where there is more than one.
        bootstrap: resamples behind the intervals.
        seed: seed of the bootstrap.
    """

    n: int
    accuracy: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    macro_f1: float | None
    accuracy_ci: tuple[float, float] | None
    covid_sensitivity_ci: tuple[float, float] | None
    class_names: tuple[str, ...] = CLASS_NAMES
    per_source: dict[str, EvalResult] = field(default_factory=dict)
    bootstrap: int = BOOTSTRAP_RESAMPLES
    seed: int = 0

    def __getitem__(self, name: str) -> ClassMetrics:
        """The metrics of class ``name`` (e.g. ``result["COVID-19"].sensitivity``)."""
        return self.per_class[name]

    @property
    def covid_sensitivity(self) -> float | None:
        return self.per_class[self.class_names[COVID]].sensitivity if len(self.class_names) > COVID else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (no NaN: undefined values are ``None``)."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "accuracy_ci": list(self.accuracy_ci) if self.accuracy_ci else None,
            "covid_sensitivity_ci": list(self.covid_sensitivity_ci) if self.covid_sensitivity_ci else None,
            "macro_f1": self.macro_f1,
            "class_names": list(self.class_names),
            "per_class": {k: v.to_dict() for k, v in self.per_class.items()},
            "confusion_matrix": [list(r) for r in self.confusion_matrix],
            "per_source": {k: v.to_dict() for k, v in self.per_source.items()},
            "bootstrap": self.bootstrap,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """The inverse of ``to_dict``."""

        def interval(v: Any) -> tuple[float, float] | None:
            return (float(v[0]), float(v[1])) if v is not None else None

        return cls(
            n=int(d["n"]),
            accuracy=float(d["accuracy"]),
            per_class={k: ClassMetrics(**v) for k, v in d["per_class"].items()},
            confusion_matrix=[[int(x) for x in row] for row in d["confusion_matrix"]],
            macro_f1=d["macro_f1"],
            accuracy_ci=interval(d.get("accuracy_ci")),
            covid_sensitivity_ci=interval(d.get("covid_sensitivity_ci")),
            class_names=tuple(d.get("class_names", CLASS_NAMES)),
            per_source={k: cls.from_dict(v) for k, v in d.get("per_source", {}).items()},
            bootstrap=int(d.get("bootstrap", BOOTSTRAP_RESAMPLES)),
            seed=int(d.get("seed", 0)),
        )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``num_classes x num_classes`` counts, rows true, columns predicted."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _percentile_ci(values: np.ndarray) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = (100.0 - CI_LEVEL) / 2
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _bootstrap(
    cm: np.ndarray, resamples: int, seed: int
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Percentile-bootstrap intervals of accuracy and COVID-19 sensitivity.

    Resampling n images with replacement only changes how many fall in each cell of the confusion
    matrix, and those counts are multinomial; so each resample is drawn as multinomial counts,
    which is exact and costs nothing per image (a test set of 25,000 images is as fast as 50).
    """
    n = int(cm.sum())
    if n == 0 or resamples <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    correct = int(np.trace(cm))
    acc = rng.binomial(n, correct / n, size=resamples) / n * 100.0
    covid_ci = None
    if cm.shape[0] > COVID and cm[COVID].sum() > 0:
        tp = int(cm[COVID, COVID])
        fn = int(cm[COVID].sum()) - tp
        draws = rng.multinomial(n, [tp / n, fn / n, (n - tp - fn) / n], size=resamples)
        positives = draws[:, 0] + draws[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = np.where(positives > 0, draws[:, 0] / positives * 100.0, np.nan)
        covid_ci = _percentile_ci(sens)
    return _percentile_ci(acc), covid_ci


def _bootstrap_images(
    t: np.ndarray, p: np.ndarray, images: np.ndarray, resamples: int, seed: int
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Percentile-bootstrap intervals when an image is predicted several times (``--repeats``):
    the distinct images are resampled, each with all its predictions, so an image counted R times
    does not narrow the interval by sqrt(R) as if it were R independent images."""
    if t.size == 0 or resamples <= 0:
        return None, None
    _, image = np.unique(images, return_inverse=True)
    n_img = int(image.max()) + 1
    total = np.bincount(image, minlength=n_img).astype(np.float64)
    correct = np.bincount(image, weights=(t == p).astype(np.float64), minlength=n_img)
    positive = np.bincount(image, weights=(t == COVID).astype(np.float64), minlength=n_img)
    found = np.bincount(image, weights=((t == COVID) & (p == COVID)).astype(np.float64), minlength=n_img)
    rng = np.random.default_rng(seed)
    acc = np.empty(resamples)
    sens = np.empty(resamples)
    for r in range(resamples):
        pick = rng.integers(0, n_img, n_img)
        acc[r] = correct[pick].sum() / total[pick].sum() * 100.0
        pos = positive[pick].sum()
        sens[r] = found[pick].sum() / pos * 100.0 if pos > 0 else np.nan
    covid_ci = _percentile_ci(sens) if positive.sum() > 0 else None
    return _percentile_ci(acc), covid_ci


def compute_metrics(
    y_true: Sequence[int] | np.ndarray | torch.Tensor,
    y_pred: Sequence[int] | np.ndarray | torch.Tensor,
    num_classes: int = 3,
    sources: Sequence[str] | None = None,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
    images: Sequence[str] | None = None,
) -> EvalResult:
    """Metrics of predictions ``y_pred`` against labels ``y_true``.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        num_classes: number of classes.
        sources: the source of each image; with more than one distinct source, ``per_source``
            holds the metrics of each.
        seed: seed of the bootstrap (the same seed gives the same intervals).
        class_names: names of the classes (default ``CLASS_NAMES`` for 3 classes, else "0", "1"...).
        bootstrap: number of bootstrap resamples (0 for no intervals).
        images: which image each prediction is of, where one image is predicted several times
            (runs with several seeds): the bootstrap then resamples distinct images.
    """
    t = np.asarray(y_true.cpu() if isinstance(y_true, torch.Tensor) else y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred.cpu() if isinstance(y_pred, torch.Tensor) else y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {t.size} and {p.size}")
    if t.size == 0:
        raise ValueError("cannot compute metrics of zero predictions")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.min() < 0 or a.max() >= num_classes:
            raise ValueError(
                f"{name} must hold classes 0 to {num_classes - 1}, got {int(a.min())}..{int(a.max())}"
            )
    if class_names is None:
        class_names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [str(i) for i in range(num_classes)]
    names = tuple(class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names must name {num_classes} classes, got {len(names)}")
    if sources is not None and len(sources) != t.size:
        raise ValueError(f"sources must name the source of each of the {t.size} images, got {len(sources)}")

    cm = confusion_matrix(t, p, num_classes)
    n = int(t.size)
    per_class = {}
    for k, name in enumerate(names):
        tp = int(cm[k, k])
        fn = int(cm[k].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = n - tp - fn - fp
        per_class[name] = ClassMetrics(
            name=name,
            support=tp + fn,
            sensitivity=_pct(tp, tp + fn),
            ppv=_pct(tp, tp + fp),
            specificity=_pct(tn, tn + fp),
            npv=_pct(tn, tn + fn),
            f1=_pct(2 * tp, 2 * tp + fp + fn),
        )
    f1s = [m.f1 for m in per_class.values() if m.f1 is not None]
    img = np.asarray(list(images), dtype=object) if images is not None else None
    if img is not None and len(img) != t.size:
        raise ValueError(f"images must name the image of each of the {t.size} predictions, got {len(img)}")
    if img is not None and len(set(img.tolist())) < t.size:
        acc_ci, covid_ci = _bootstrap_images(t, p, img, bootstrap, seed)
    else:
        acc_ci, covid_ci = _bootstrap(cm, bootstrap, seed)
    per_source: dict[str, EvalResult] = {}
    if sources is not None:
        src = np.asarray(list(sources), dtype=object)
        distinct = list(dict.fromkeys(src.tolist()))
        if len(distinct) > 1:
            for name in distinct:
                mask = src == name
                per_source[name] = compute_metrics(
                    t[mask],
                    p[mask],
                    num_classes,
                    None,
                    seed,
                    class_names=names,
                    bootstrap=bootstrap,
                    images=img[mask].tolist() if img is not None else None,
                )
    return EvalResult(
        n=n,
        accuracy=100.0 * float(np.trace(cm)) / n,
        per_class=per_class,
        confusion_matrix=cm.tolist(),
        macro_f1=float(np.mean(f1s)) if f1s else None,
        accuracy_ci=acc_ci,
        covid_sensitivity_ci=covid_ci,
        class_names=names,
        per_source=per_source,
        bootstrap=bootstrap,
        seed=seed,
    )
