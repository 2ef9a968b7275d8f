"""Patient-grouped k-fold cross-validation, repeated seeds, and accuracies with their uncertainty.

On small CT sets one training run's validation accuracy moves by several points with the seed and
the split. Here a candidate's accuracy is a set of runs: K folds of the union of the train and val
splits, grouped by patient so that no patient is in two folds, each trained R times with different
seeds. The test split is never used. ``Uncertain`` holds the mean, standard deviation, every value
and a 95 % interval.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.data import DatasetError, Sample

# COVIDx CT names carry the patient after the source prefix: NCP_341_1834_0022.png -> NCP_341,
# CP_12_3204_0031.png -> CP_12, Normal_2_1209_0000.png -> Normal_2.
DEFAULT_PATIENT_REGEX = r"^(.*?_\d+)_"
PATIENTS_FILE = "patients.csv"


@dataclass(frozen=True)
class Grouping:
    """The patient of each image and how it was found."""

    patients: tuple[str, ...]
    from_csv: int  # images whose patient came from a patients.csv
    from_regex: int  # images whose patient came from the regex
    alone: int  # images that are their own group (no mapping, no regex match)

    @property
    def warning(self) -> str | None:
        if not self.alone:
            return None
        return (
            f"{self.alone} of {len(self.patients)} images have no patient id (no patients.csv entry and "
            "no --patient-regex match): each is its own group, so slices of one patient may fall in "
            "different folds"
        )


def read_patients_csv(path: str | Path) -> dict[str, str]:
    """``filename -> patient`` from a CSV with the columns ``filename`` and ``patient``."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise DatasetError(f"{p}: cannot read the patients file ({e.strerror or e})") from None
    rows = csv.DictReader(text.splitlines())
    fields = rows.fieldnames or []
    if "filename" not in fields or "patient" not in fields:
        raise DatasetError(f"{p} line 1: needs the columns 'filename' and 'patient', got {', '.join(fields)}")
    out: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        name, patient = (row.get("filename") or "").strip(), (row.get("patient") or "").strip()
        if not name or not patient:
            raise DatasetError(f"{p} line {line}: filename and patient must both be given")
        if name in out and out[name] != patient:
            raise DatasetError(f"{p} line {line}: {name} is mapped to two patients ({out[name]}, {patient})")
        out[name] = patient
    return out


def group_samples(
    samples: Sequence[Sample],
    *,
    patient_regex: str | None = DEFAULT_PATIENT_REGEX,
    patients: dict[str, str] | None = None,
    dirs: dict[str, Path] | None = None,
) -> Grouping:
    """The patient of each sample: a ``patients`` mapping (or a ``patients.csv`` in the sample's data
    folder, from ``dirs``: source -> folder) first, then the first group of ``patient_regex``, else
    the image alone. Patient ids are prefixed with the source, so two cohorts never share one."""
    try:
        rx = re.compile(patient_regex) if patient_regex else None
    except re.error as e:
        raise DatasetError(f"--patient-regex is not a valid regular expression: {e}") from None
    per_source: dict[str, dict[str, str]] = {}
    for source, folder in (dirs or {}).items():
        f = Path(folder) / PATIENTS_FILE
        per_source[source] = read_patients_csv(f) if f.is_file() else {}
    out, n_csv, n_rx, alone = [], 0, 0, 0
    for s in samples:
        mapping = patients if patients is not None else per_source.get(s.source, {})
        pid = mapping.get(s.filename)
        if pid is not None:
            n_csv += 1
        else:
            m = rx.match(s.filename) if rx else None
            if m:
                pid = m.group(1) if m.groups() else m.group(0)
                n_rx += 1
            else:
                pid = f"image:{s.filename}"
                alone += 1
        out.append(f"{s.source}/{pid}")
    return Grouping(tuple(out), n_csv, n_rx, alone)


def make_folds(labels: Sequence[int], groups: Sequence[str], k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` patient-disjoint folds (indices), covering every image exactly once, class-balanced as
    far as whole patients allow.

    Groups are placed largest first (ties in a seeded random order), each into the fold that holds
    the fewest images of the group's majority class, then the fewest images overall.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer of at least 2, got {k!r}")
    if len(labels) != len(groups):
        raise ValueError(f"labels and groups differ in length ({len(labels)} vs {len(groups)})")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    if len(members) < k:
        raise DatasetError(f"--cv-folds {k} needs at least {k} patients in train+val, found {len(members)}")
    rng = np.random.default_rng(seed)
    names = sorted(members)
    order = rng.permutation(len(names))
    ranked = sorted((names[i] for i in order), key=lambda g: -len(members[g]))
    n_classes = max(labels) + 1 if len(labels) else 1
    per_class = np.zeros((k, n_classes), dtype=np.int64)
    folds: list[list[int]] = [[] for _ in range(k)]
    for g in ranked:
        idx = members[g]
        counts = Counter(labels[i] for i in idx)
        major = max(counts, key=lambda c: (counts[c], -c))
        f = min(range(k), key=lambda j: (per_class[j, major], per_class[j].sum(), j))
        folds[f].extend(idx)
        for c, n in counts.items():
            per_class[f, c] += n
    return [np.array(sorted(f), dtype=np.int64) for f in folds]


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
