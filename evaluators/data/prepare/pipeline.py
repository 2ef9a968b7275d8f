"""From CT scans (DICOM series, NIfTI volumes) and a table of diagnoses to a COVIDx CT dataset.

``prepare_dataset(PrepareConfig(scans=..., labels=..., out=...))`` writes::

    OUT/images/<patient>_<scan>_<slice>.png   8-bit slices through the lung window
    OUT/train.txt val.txt test.txt             "filename class xmin ymin xmax ymax" a line
    OUT/summary.json                           counts per split and class, skipped items, settings

``<patient>`` is the patient id with every character outside ``A-Z a-z 0-9 . -`` replaced by
``-``, ``<scan>`` the scan's number within the patient (0, 1, ...) and ``<slice>`` the slice index
from inferior to superior, four digits. The split is by patient, stratified by class.

All input is checked before any pixel is read; bad input stops the run with a message naming
every bad file, scan and labels line, unless ``skip_bad`` is set, in which case it is left out and
listed in the summary. Output is written to a hidden temporary folder beside ``out`` and renamed at
the end: a failed run leaves ``out`` as it was. An existing ``out`` is replaced only with
``overwrite``, and only if this module made it (it holds its marker file ``.covidnet-nas-prepared``).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evaluators.data.classes import CLASS_KEYS
from evaluators.data.covidx import SPLITS
from evaluators.data.patients import split_patients
from evaluators.data.prepare.labels import (
    LabeledScan,
    assign_labels,
    read_labels,
    read_slice_list,
)
from evaluators.data.prepare.scans import BadItem, BadScanError, PrepareError, find_scans
from evaluators.data.prepare.slices import BODY_THRESHOLD, find_body, resize_hu, window_to_uint8
from evaluators.files import write_folder_atomically

SUMMARY_NAME = "summary.json"
# What marks a folder as this module's own: --overwrite replaces a folder only if it holds this file
# with this content (any tool may write a summary.json; none writes this by chance).
MARKER_NAME = ".covidnet-nas-prepared"
MARKER_TEXT = "written by covidnet-nas `search data prepare`; --overwrite may replace this folder\n"
IMAGES_DIR = "images"
_TOOL = "search data prepare"
_SKIP_HINT = "pass --skip-bad to leave them out"
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class PrepareConfig:
    """Everything one preparation run depends on; validated on construction.

    Attributes:
        scans: folder of scans, one top-level entry (folder or NIfTI file) per patient.
        labels: ``labels.csv`` (see :mod:`evaluators.ct_labels`).
        out: the dataset folder to write.
        window_level, window_width: the HU window mapped to 0-255 (COVIDx CT: -600, 1500).
        slice_step: keep every ``slice_step``-th slice, starting from the first.
        slices_csv: keep only the slices listed here (excludes ``slice_step`` > 1).
        split: train, val and test shares of each class's slices, summing to 1.
        seed: seed of the patient split.
        size: square PNG size in pixels; ``None`` keeps each scan's own size.
        min_lung_fraction: drop slices whose body is less than this share air and lung.
        body_threshold: HU above which a pixel counts as body.
        skip_bad: leave bad input out (and list it) instead of stopping.
        overwrite: replace an ``out`` this module made before.
    """

    scans: Path
    labels: Path
    out: Path
    window_level: float = -600.0
    window_width: float = 1500.0
    slice_step: int = 1
    slices_csv: Path | None = None
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    size: int | None = None
    min_lung_fraction: float = 0.0
    body_threshold: float = BODY_THRESHOLD
    skip_bad: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("scans", "labels", "out", "slices_csv"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "split", tuple(float(f) for f in self.split))
        if not math.isfinite(self.window_width) or self.window_width <= 0:
            raise PrepareError(f"--window-width must be positive, got {self.window_width:g}")
        if not math.isfinite(self.window_level):
            raise PrepareError(f"--window-level must be a number, got {self.window_level}")
        if self.slice_step < 1:
            raise PrepareError(f"--slice-step must be at least 1, got {self.slice_step}")
        if self.slices_csv is not None and self.slice_step != 1:
            raise PrepareError("--slice-step and --slices-csv exclude each other; give one")
        if (
            len(self.split) != 3
            or any(not 0 <= f <= 1 for f in self.split)
            or abs(sum(self.split) - 1) > 1e-6
        ):
            raise PrepareError(f"--split must be three shares from 0 to 1 summing to 1, got {self.split}")
        if self.split[0] <= 0:
            raise PrepareError(f"--split must give train a share above 0, got {self.split}")
        if self.size is not None and self.size < 8:
            raise PrepareError(f"--size must be at least 8 pixels, got {self.size}")
        if not 0 <= self.min_lung_fraction < 1:
            raise PrepareError(f"--min-lung-fraction must be from 0 to below 1, got {self.min_lung_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def parse_split(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` (or percentages ``"70,15,15"``) to three shares summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise PrepareError(f"--split must be three numbers like 0.7,0.15,0.15, got {text!r}") from None
    if len(parts) != 3:
        raise PrepareError(f"--split must be three numbers like 0.7,0.15,0.15, got {text!r}")
    if abs(sum(parts) - 100) < 1e-6:
        parts = tuple(p / 100 for p in parts)
    return parts  # type: ignore[return-value]


@dataclass(frozen=True)
class PrepareSummary:
    """What a run wrote and left out; ``to_dict()`` is ``summary.json``.

    Attributes:
        counts: ``{split: {class name or "total": {"patients", "scans", "slices"}}}``, with an
            ``"all"`` split over the three.
        patients: ``{patient: {"class", "split", "scans", "slices", "file_prefix"}}``.
        dropped_slices: ``{"no_body": n, "little_lung": n}``: slices chosen but not written.
        skipped: bad input left out (only with ``skip_bad``).
        ignored_files: sidecar files under ``scans`` that were not read (reports, tables).
        warnings: doubts that did not stop the run.
    """

    config: PrepareConfig
    counts: dict[str, dict[str, dict[str, int]]]
    patients: dict[str, dict[str, Any]]
    dropped_slices: dict[str, int]
    skipped: tuple[BadItem, ...] = ()
    ignored_files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    label_files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "tool": _TOOL,
            "format": "COVIDx CT: images/ + <split>.txt lines 'filename class xmin ymin xmax ymax'",
            "classes": list(CLASS_KEYS),
            "window": {"level": c.window_level, "width": c.window_width},
            "size": c.size,
            "slice_selection": {"slices_csv": str(c.slices_csv)} if c.slices_csv else {"step": c.slice_step},
            "min_lung_fraction": c.min_lung_fraction,
            "body_threshold": c.body_threshold,
            "split": dict(zip(SPLITS, c.split)),
            "seed": c.seed,
            "label_files": dict(self.label_files),
            "counts": self.counts,
            "dropped_slices": dict(self.dropped_slices),
            "skipped": [b.to_dict() for b in self.skipped],
            "ignored_files": list(self.ignored_files),
            "warnings": list(self.warnings),
            "patients": self.patients,
            "config": c.to_dict(),
        }


def file_prefix(patient: str) -> str:
    """The patient id as it appears in file names: ``A-Z a-z 0-9 . -`` kept, the rest ``-``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", patient).strip("-.") or "patient"


def prepare_dataset(config: PrepareConfig, progress: Progress | None = None) -> PrepareSummary:
    """Prepare a COVIDx CT dataset in ``config.out`` (see the module docstring).

    Args:
        config: what to read and write.
        progress: called as ``progress(done, total, scan_id)`` before each scan and at the end.

    Raises:
        PrepareError: bad input (without ``skip_bad``), an ``out`` that must not be replaced, or
            nothing left to write.
        MissingExtraError: pydicom, nibabel or scipy is not installed.
    """
    _check_out(config)
    rows = read_labels(config.labels)
    scans, bad, ignored = find_scans(config.scans)
    labeled, label_problems = assign_labels(scans, rows, config.labels, bad)
    bad += label_problems
    chosen: dict[str, list[int]] = {}
    if config.slices_csv is not None:
        chosen, slice_problems = read_slice_list(config.slices_csv, scans)
        bad += slice_problems
    if bad and not config.skip_bad:
        raise PrepareError(_bad_message(bad))
    prefixes = _prefixes(sorted({ls.patient for ls in labeled}))
    return write_folder_atomically(
        config.out, lambda tmp: _write(config, tmp, labeled, chosen, prefixes, bad, ignored, progress)
    )


def _write(
    config: PrepareConfig,
    tmp: Path,
    labeled: list[LabeledScan],
    chosen: dict[str, list[int]],
    prefixes: dict[str, str],
    bad: list[BadItem],
    ignored: list[Path],
    progress: Progress | None,
) -> PrepareSummary:
    (tmp / IMAGES_DIR).mkdir()
    lines: dict[str, list[tuple[str, int]]] = defaultdict(list)  # patient -> (label line, label)
    scans_of: dict[str, list[tuple[str, int]]] = defaultdict(list)  # patient -> (scan id, label)
    scan_no: dict[str, int] = defaultdict(int)
    dropped = {"no_body": 0, "little_lung": 0}
    warnings: list[str] = []
    for done, ls in enumerate(labeled):
        if progress:
            progress(done, len(labeled), ls.scan.scan_id)
        scan, number = ls.scan, scan_no[ls.patient]
        scan_no[ls.patient] += 1
        indices = (
            chosen.get(scan.scan_id, []) if config.slices_csv else range(0, scan.n_slices, config.slice_step)
        )
        written = 0
        for index in indices:
            try:
                hu = scan.read_slice(index)
            except BadScanError as e:
                if not config.skip_bad:
                    raise PrepareError(f"{e.bad} ({_SKIP_HINT})") from e
                bad.append(e.bad)
                if e.whole_scan:
                    break
                continue
            if config.size:
                hu = resize_hu(hu, config.size)
            body = find_body(hu, config.body_threshold)
            if body is None:
                dropped["no_body"] += 1
                continue
            if body.lung_fraction < config.min_lung_fraction:
                dropped["little_lung"] += 1
                continue
            name = f"{prefixes[ls.patient]}_{number}_{index:04d}.png"
            Image.fromarray(window_to_uint8(hu, config.window_level, config.window_width)).save(
                tmp / IMAGES_DIR / name
            )
            lines[ls.patient].append((f"{name} {ls.label} {' '.join(map(str, body.box))}", ls.label))
            written += 1
        scan.release()
        warnings += scan.warnings
        if written:
            scans_of[ls.patient].append((scan.scan_id, ls.label))
    if progress:
        progress(len(labeled), len(labeled), "")
    for patient in sorted({ls.patient for ls in labeled} - set(lines)):
        warnings.append(f"patient {patient}: no slices left after slice selection; not in any split")
    if not lines:
        raise PrepareError(f"no slices left to write (dropped: {dropped}); nothing was written")
    patient_class = {p: _majority([label for _, label in rows]) for p, rows in lines.items()}
    split_of = split_patients(
        {p: (patient_class[p], len(lines[p])) for p in lines}, config.split, config.seed
    )
    label_files = {}
    for i, split in enumerate(SPLITS):
        if config.split[i] > 0:
            rows = sorted(line for p in lines if split_of[p] == split for line, _ in lines[p])
            (tmp / f"{split}.txt").write_text("".join(f"{r}\n" for r in rows))
            label_files[split] = f"{split}.txt"
            if not rows:
                warnings.append(f"split {split} has no patients: too few patients for the --split shares")
    patients = {
        p: {
            "class": CLASS_KEYS[patient_class[p]],
            "split": split_of[p],
            "scans": [scan_id for scan_id, _ in scans_of[p]],
            "slices": len(lines[p]),
            "file_prefix": prefixes[p],
        }
        for p in sorted(lines)
    }
    summary = PrepareSummary(
        config=config,
        counts=_counts(lines, scans_of, split_of),
        patients=patients,
        dropped_slices=dropped,
        skipped=tuple(bad),
        ignored_files=tuple(str(p) for p in ignored),
        warnings=tuple(warnings),
        label_files=label_files,
    )
    (tmp / SUMMARY_NAME).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    (tmp / MARKER_NAME).write_text(MARKER_TEXT)
    return summary


def _majority(labels: list[int]) -> int:
    return int(np.bincount(labels).argmax())


def _counts(
    lines: Mapping[str, list[tuple[str, int]]],
    scans_of: Mapping[str, list[tuple[str, int]]],
    split_of: Mapping[str, str],
) -> dict[str, dict[str, dict[str, int]]]:
    """Patients, scans and slices per split and class; a patient or scan counts under each class
    it has slices of."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for split in (*SPLITS, "all"):
        per: dict[str, dict[str, int]] = {}
        for key in (*CLASS_KEYS, "total"):
            members = [p for p in lines if split in ("all", split_of[p])]
            if key != "total":
                members = [p for p in members if any(CLASS_KEYS[label] == key for _, label in lines[p])]
            per[key] = {
                "patients": len(members),
                "scans": sum(
                    1 for p in members for _, label in scans_of[p] if key in ("total", CLASS_KEYS[label])
                ),
                "slices": sum(
                    1 for p in members for _, label in lines[p] if key in ("total", CLASS_KEYS[label])
                ),
            }
        counts[split] = per
    return counts


def _prefixes(patients: list[str]) -> dict[str, str]:
    prefixes = {p: file_prefix(p) for p in patients}
    seen: dict[str, str] = {}
    for p, prefix in prefixes.items():
        if prefix in seen:
            raise PrepareError(
                f"patients {seen[prefix]!r} and {p!r} both become {prefix!r} in file names; rename one"
            )
        seen[prefix] = p
    return prefixes


def _bad_message(bad: list[BadItem], shown: int = 12) -> str:
    lines = [str(b) for b in bad[:shown]]
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    noun = "input" if len(bad) == 1 else "inputs"
    return f"{len(bad)} bad {noun} ({_SKIP_HINT}): " + "; ".join(lines) + more


def _check_out(config: PrepareConfig) -> None:
    out, scans = config.out.resolve(), config.scans.resolve()
    if out == scans or scans in out.parents:
        raise PrepareError(f"--out {config.out} is inside --scans {config.scans}; choose a folder outside it")
    if out in scans.parents:
        raise PrepareError(f"--out {config.out} contains --scans {config.scans}; choose another folder")
    if not config.out.exists():
        return
    if not config.out.is_dir():
        raise PrepareError(f"--out {config.out} is a file, not a folder")
    if not any(config.out.iterdir()):
        return
    if not config.overwrite:
        raise PrepareError(
            f"--out {config.out} already holds files; pass --overwrite to replace it (nothing was written)"
        )
    if not _is_ours(config.out):
        raise PrepareError(
            f"--out {config.out} holds files that {_TOOL} did not write (no {MARKER_NAME} of its own); "
            "--overwrite replaces only a folder it made: choose another --out"
        )


def _is_ours(folder: Path) -> bool:
    marker = folder / MARKER_NAME
    try:
        return marker.is_file() and not marker.is_symlink() and marker.read_text() == MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False
