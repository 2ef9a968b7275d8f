"""Patients: who each image belongs to, patient-grouped folds, and patient-level train/val/test splits.

On small CT sets one training run's validation accuracy moves by several points with the seed and
the split. Here a candidate's accuracy is a set of runs: K folds of the union of the train and val
splits, grouped by patient so that no patient is in two folds, each trained R times with different
seeds. The test split is never used. ``Uncertain`` holds the mean, standard deviation, every value
and a 95 % interval.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluators.data.covidx import SPLITS, DatasetError, Sample

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


# ------------------------------------------------------------------ patient-level splits
def split_patients(
    patients: Mapping[str, tuple[int, int]], fractions: Sequence[float], seed: int = 0
) -> dict[str, str]:
    """Assign whole patients to train/val/test, each class's slices in the given shares.

    Per class, patients are taken in a seeded random order; while the class has a patient for
    each split with a share, every smaller split first gets one patient no larger than its target
    (so every split sees every class), then each patient goes to the split furthest below its
    target. A split left empty at the end takes the smallest patient of the fullest split.

    Args:
        patients: ``{patient: (class, slices)}``.
        fractions: shares of train, val and test (a 0 share gets nobody).
        seed: seed of the random order.

    Returns:
        ``{patient: split name}``.
    """
    rng = random.Random(seed)
    active = [i for i, f in enumerate(fractions) if f > 0]
    by_class: dict[int, list[str]] = defaultdict(list)
    for pid in sorted(patients):
        by_class[patients[pid][0]].append(pid)
    assigned: dict[str, int] = {}
    for label in sorted(by_class):
        queue = by_class[label]
        rng.shuffle(queue)
        total = sum(patients[p][1] for p in queue)
        target = {i: fractions[i] * total for i in active}
        filled = dict.fromkeys(active, 0)
        if len(queue) >= len(active):
            for i in sorted(active, key=lambda i: fractions[i])[:-1]:
                fits = [p for p in queue if patients[p][1] <= target[i]]
                pid = fits[0] if fits else min(queue, key=lambda p: patients[p][1])
                queue.remove(pid)
                assigned[pid] = i
                filled[i] += patients[pid][1]
        for pid in queue:
            i = max(active, key=lambda i: (target[i] - filled[i], -i))
            assigned[pid] = i
            filled[i] += patients[pid][1]
    members: dict[int, list[str]] = {i: [p for p, s in assigned.items() if s == i] for i in active}
    for i in active:
        donor = max(active, key=lambda j: len(members[j]))
        if not members[i] and len(members[donor]) > 1:
            pid = min(members[donor], key=lambda p: (patients[p][1], p))
            members[donor].remove(pid)
            members[i].append(pid)
            assigned[pid] = i
    return {pid: SPLITS[i] for pid, i in sorted(assigned.items())}
