"""The tables ``search data prepare`` reads: diagnoses per patient or scan, and chosen slices.

``labels.csv`` has a header row with a ``class`` column (or ``label``, ``diagnosis``) and a
``patient`` column, a ``scan`` column, or both. A class is a name or a number: ``normal`` (0),
``pneumonia`` (1; also ``cp``), ``covid-19`` (2; also ``covid``, ``covid19``, ``ncp``). A patient
row labels every scan of that patient; a scan row labels one scan, and its ``patient`` column, when
present, says which patient the scan belongs to (for flat folders of NIfTI files). Other columns
are ignored.

The slices CSV has ``scan`` and ``slice`` columns: one chosen slice a row, its 0-based index from
inferior to superior (the number in the PNG's name).
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evaluators.data.prepare.scans import BadItem, PrepareError, Scan

_CLASS_ALIASES = {
    "0": 0,
    "normal": 0,
    "1": 1,
    "pneumonia": 1,
    "cp": 1,
    "2": 2,
    "covid-19": 2,
    "covid19": 2,
    "covid": 2,
    "ncp": 2,
}
_COLUMN_ALIASES = {
    "patient": ("patient", "patient_id", "patientid"),
    "scan": ("scan", "scan_id", "series"),
    "class": ("class", "label", "diagnosis"),
    "slice": ("slice", "slice_index"),
}


def parse_class(value: str) -> int | None:
    """The class id of a name or number (case and spaces ignored), or ``None``."""
    return _CLASS_ALIASES.get(value.strip().lower().replace(" ", "").replace("_", "-"))


@dataclass(frozen=True)
class LabelRow:
    """One row of ``labels.csv``: ``line`` is its 1-based line number in the file."""

    line: int
    patient: str | None
    scan: str | None
    label: int


@dataclass(frozen=True)
class LabeledScan:
    """A scan with its diagnosis and the patient it is grouped (and split) by."""

    scan: Scan
    patient: str
    label: int


def _read_table(path: Path, what: str, needed: Sequence[Sequence[str]]) -> tuple[dict[str, str], list]:
    """The rows of a CSV file with the columns it maps to each canonical name in ``needed``.

    Returns:
        ``{canonical name: column}`` and the rows as ``(line, {column: value})``.
    """
    if not path.is_file():
        raise PrepareError(f"{what} {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"{what} {path}: unreadable ({e})") from e
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise PrepareError(f"{path}: empty; the first line must name the columns")
    delimiter = max((",", ";", "\t"), key=lines[0].count)
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    columns: dict[str, str] = {}
    for name, aliases in _COLUMN_ALIASES.items():
        found = [h for h in header if h in aliases]
        if len(found) > 1:
            raise PrepareError(f"{path}: columns {' and '.join(found)} both mean '{name}'; keep one")
        if found:
            columns[name] = found[0]
    for group in needed:
        if not any(name in columns for name in group):
            raise PrepareError(
                f"{path}: no {' or '.join(repr(n) for n in group)} column "
                f"(columns: {', '.join(header)}; accepted: {', '.join(_COLUMN_ALIASES[group[0]])})"
            )
    rows = []
    for line, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise PrepareError(f"{path} line {line}: {len(values)} fields, the header has {len(header)}")
        rows.append((line, {h: v.strip() for h, v in zip(header, values)}))
    return columns, rows


def read_labels(path: Path) -> list[LabelRow]:
    """Read and check ``labels.csv``.

    Raises:
        PrepareError: no such file, a missing column, an empty id, a class that is not one, or a
            patient (scan) listed twice; the message names the file, line and column.
    """
    columns, rows = _read_table(path, "--labels", [("patient", "scan"), ("class",)])
    out: list[LabelRow] = []
    seen: dict[str, int] = {}
    key_name = "scan" if "scan" in columns else "patient"
    for line, values in rows:
        ids: dict[str, str] = {}
        for name in ("patient", "scan"):
            if name in columns:
                ids[name] = values[columns[name]]
                if not ids[name]:
                    raise PrepareError(f"{path} line {line}, column {columns[name]}: empty {name} id")
        raw = values[columns["class"]]
        label = parse_class(raw)
        if label is None:
            raise PrepareError(
                f"{path} line {line}, column {columns['class']}: {raw!r} is not a class "
                f"(normal, pneumonia, covid-19, or 0, 1, 2)"
            )
        key = ids[key_name]
        if key in seen:
            raise PrepareError(
                f"{path} line {line}: {key_name} {key!r} is listed twice (first on line {seen[key]})"
            )
        seen[key] = line
        out.append(LabelRow(line=line, patient=ids.get("patient"), scan=ids.get("scan"), label=label))
    if not out:
        raise PrepareError(f"{path}: no rows under the header")
    return out


def assign_labels(
    scans: Sequence[Scan], rows: Sequence[LabelRow], labels_path: Path, bad_items: Sequence[BadItem] = ()
) -> tuple[list[LabeledScan], list[BadItem]]:
    """Match label rows to scans: scans without a label and labels without a scan are bad items.

    Args:
        scans: the usable scans.
        rows: the rows of ``labels.csv``.
        labels_path: its path, for messages.
        bad_items: the scans and files found bad, whose labels are then not reported again.
    """
    by_scan = bool(rows) and rows[0].scan is not None
    key_of = (lambda s: s.scan_id) if by_scan else (lambda s: s.patient)
    what = "scan" if by_scan else "patient"
    row_of = {str(r.scan if by_scan else r.patient): r for r in rows}
    labeled: list[LabeledScan] = []
    bad: list[BadItem] = []
    unlabeled: dict[str, list[Scan]] = {}
    for scan in scans:
        row = row_of.get(key_of(scan))
        if row is None:
            unlabeled.setdefault(key_of(scan), []).append(scan)
            continue
        labeled.append(LabeledScan(scan=scan, patient=row.patient or scan.patient, label=row.label))
    for key, group in unlabeled.items():
        where = ", ".join(str(s.path) for s in group)
        bad.append(BadItem(f"{what} {key}", f"has no label in {labels_path} ({where})"))
    found = {key_of(s) for s in scans}
    # A label whose scan is bad is not a label without a scan: the scan is reported already.
    for b in bad_items:
        if b.source:
            found |= {b.source, b.source.split("/")[0]}
    for key, row in row_of.items():
        if key not in found and key.split("#")[0] not in found:
            close = difflib.get_close_matches(key, sorted(unlabeled), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            bad.append(BadItem(f"{labels_path} line {row.line}", f"{what} {key!r} has no scan{hint}"))
    return labeled, bad


def read_slice_list(path: Path, scans: Sequence[Scan]) -> tuple[dict[str, list[int]], list[BadItem]]:
    """Read the slices CSV: the chosen slice indices per scan id, and the rows that name no slice.

    Raises:
        PrepareError: no such file, a missing column, or a slice that is not a whole number.
    """
    columns, rows = _read_table(path, "--slices-csv", [("scan",), ("slice",)])
    n_slices = {s.scan_id: s.n_slices for s in scans}
    chosen: dict[str, set[int]] = {}
    bad: list[BadItem] = []
    for line, values in rows:
        scan_id, raw = values[columns["scan"]], values[columns["slice"]]
        try:
            index = int(raw)
        except ValueError:
            raise PrepareError(
                f"{path} line {line}, column {columns['slice']}: {raw!r} is not a slice index"
            ) from None
        if scan_id not in n_slices:
            close = difflib.get_close_matches(scan_id, sorted(n_slices), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            bad.append(BadItem(f"{path} line {line}", f"scan {scan_id!r} is not among the scans{hint}"))
        elif not 0 <= index < n_slices[scan_id]:
            bad.append(
                BadItem(
                    f"{path} line {line}",
                    f"slice {index} is outside scan {scan_id!r} (slices 0 to {n_slices[scan_id] - 1})",
                )
            )
        else:
            chosen.setdefault(scan_id, set()).add(index)
    return {k: sorted(v) for k, v in chosen.items()}, bad
