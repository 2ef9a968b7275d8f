"""Reading CT scans for ``search data prepare``: DICOM series (pydicom) and NIfTI volumes (nibabel).

A scan is one DICOM series (the slice files of one folder, split by SeriesInstanceUID) or one NIfTI
file under the ``--scans`` folder. Its patient is the first path component under that folder
(``scans/P001/...`` or ``scans/P001.nii.gz``). Slices come out axial, in Hounsfield units, ordered
from inferior to superior and shown the radiological way (the patient's right on the image's left,
anterior at the top), whatever the storage order.

Everything that can be checked from headers is checked by :func:`find_scans`, before any pixel is
read, so a bad file is reported in seconds, not after an hour of work.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from evaluators.extras import require as _require
from space.errors import UserInputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Sidecar files that scan folders often hold (reports, tables, previews): not slices, not read.
IGNORED_SUFFIXES = frozenset(
    {".txt", ".csv", ".tsv", ".json", ".md", ".xml", ".pdf", ".png", ".jpg", ".jpeg", ".html", ".log"}
    | {".yaml", ".yml", ".zip", ".py"}
)
IGNORED_NAMES = frozenset({"DICOMDIR", "Thumbs.db"})
_RESCALE_TAGS = ("RescaleSlope", "RescaleIntercept")
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient")
MIN_AXIAL_COSINE = 0.9  # slice normal within about 25 degrees of the body axis (gantry tilt)


def require(module: str, extra: str = "prepare") -> ModuleType:
    """``evaluators.extras.require`` with this module's extra as the default."""
    return _require(module, extra)


class PrepareError(UserInputError, ValueError):
    """Bad input to ``search data prepare``; the message names the file, line, patient or column."""


@dataclass(frozen=True)
class BadItem:
    """Something of the input that cannot be used.

    Attributes:
        item: what it is: a file, a scan (``scan P001 (scans/P001)``), a labels line.
        reason: why it cannot be used.
        source: the scan folder or NIfTI scan id under ``--scans`` it belongs to, if any, so that
            its label is not reported a second time as a label without a scan.
    """

    item: str
    reason: str
    source: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"item": self.item, "reason": self.reason}


class BadScanError(Exception):
    """Raised while reading pixels; ``whole_scan`` says whether the rest of the scan is lost too."""

    def __init__(self, bad: BadItem, whole_scan: bool) -> None:
        super().__init__(str(bad))
        self.bad = bad
        self.whole_scan = whole_scan


@dataclass(frozen=True)
class _SliceHeader:
    path: Path
    series_uid: str
    series_number: int | None
    orientation: tuple[float, ...]
    position: tuple[float, float, float]
    rows: int
    cols: int
    slope: float
    intercept: float


@dataclass
class Scan:
    """One scan, found and checked, whose slices are read on demand.

    Attributes:
        scan_id: its path under ``--scans`` (no ``.nii``/``.nii.gz``), plus ``#<series>`` where a
            folder holds several series.
        patient: the first path component under ``--scans``.
        kind: ``"dicom"`` or ``"nifti"``.
        path: the series folder or the NIfTI file.
        n_slices: axial slices, indexed ``0 .. n_slices - 1`` from inferior to superior.
        shape: ``(rows, cols)`` of a slice.
        warnings: doubts found while reading (values that do not look like Hounsfield units).
    """

    scan_id: str
    patient: str
    kind: str
    path: Path
    n_slices: int
    shape: tuple[int, int]
    warnings: list[str] = field(default_factory=list)
    _headers: tuple[_SliceHeader, ...] = field(default=(), repr=False)
    _volume: Any = field(default=None, repr=False)

    def read_slice(self, index: int) -> np.ndarray:
        """Slice ``index`` in Hounsfield units, float32 ``(rows, cols)``, radiological view.

        Raises:
            BadScanError: pixel data that cannot be decoded.
        """
        if self.kind == "dicom":
            return _read_dicom_slice(self._headers[index])
        if self._volume is None:
            self._volume = self._load_nifti()
        return np.ascontiguousarray(self._volume[::-1, ::-1, index].T, dtype=np.float32)

    def release(self) -> None:
        """Drop a loaded volume (NIfTI scans are read whole, once)."""
        self._volume = None

    def _load_nifti(self) -> np.ndarray:
        nib = require("nibabel")
        try:
            img = nib.load(str(self.path))
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            reason = f"unreadable NIfTI file: {' '.join(str(e).split())}"
            raise BadScanError(BadItem(str(self.path), reason), whole_scan=True) from e
        data = data.reshape(data.shape[:3])
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
        )
        data = nib.orientations.apply_orientation(data, transform)
        lo, hi = float(np.min(data)), float(np.max(data))
        if lo >= 0:
            self.warnings.append(
                f"{self.path}: values {lo:g} to {hi:g}, none negative: not Hounsfield units? "
                "(air is about -1000 HU)"
            )
        return data


def find_scans(root: Path) -> tuple[list[Scan], list[BadItem], list[Path]]:
    """Find and check every scan under ``root``.

    Args:
        root: the ``--scans`` folder.

    Returns:
        The usable scans sorted by id, the bad items (files and scans, each with its reason), and
        the sidecar files that were not read (see ``IGNORED_SUFFIXES``).
    """
    if not root.is_dir():
        raise PrepareError(f"--scans {root}: no such folder")
    scans: list[Scan] = []
    bad: list[BadItem] = []
    ignored: list[Path] = []
    visited: set[str] = set()
    # Linked folders are followed (data is often linked in), each real folder once.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        visited.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in visited
        )
        folder = Path(dirpath)
        dicom_files: list[Path] = []
        for name in sorted(filenames):
            path = folder / name
            if name.startswith("."):
                continue
            if name.lower().endswith(NIFTI_SUFFIXES):
                _add(_nifti_scan(root, path), scans, bad)
            elif name in IGNORED_NAMES or path.suffix.lower() in IGNORED_SUFFIXES:
                ignored.append(path)
            else:
                dicom_files.append(path)
        if dicom_files:
            found, problems = _dicom_scans(root, folder, dicom_files)
            scans.extend(found)
            bad.extend(problems)
    scans.sort(key=lambda s: s.scan_id)
    by_id: dict[str, list[Scan]] = defaultdict(list)
    for scan in scans:
        by_id[scan.scan_id].append(scan)
    for scan_id, same in by_id.items():
        if len(same) > 1:
            paths = " and ".join(sorted(str(s.path) for s in same))
            bad.append(BadItem(f"scan {scan_id}", f"two scans have this id ({paths}); rename one", scan_id))
            scans = [s for s in scans if s.scan_id != scan_id]
    return scans, bad, ignored


def _add(result: Scan | BadItem, scans: list[Scan], bad: list[BadItem]) -> None:
    (scans if isinstance(result, Scan) else bad).append(result)  # type: ignore[arg-type]


def _strip_nifti(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_scan(root: Path, path: Path) -> Scan | BadItem:
    result = _nifti_header(root, path)
    if isinstance(result, BadItem):
        return replace(result, source=_strip_nifti(path.relative_to(root).as_posix()))
    return result


def _nifti_header(root: Path, path: Path) -> Scan | BadItem:
    nib = require("nibabel")
    try:
        img = nib.load(str(path))
    except Exception as e:
        return BadItem(str(path), f"unreadable NIfTI file: {' '.join(str(e).split())}")
    shape = img.shape
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        return BadItem(str(path), f"not a 3-D volume: shape {tuple(shape)}")
    ornt = nib.orientations.io_orientation(img.affine)
    if np.isnan(ornt).any():
        return BadItem(str(path), "its affine has no clear axial axis (a degenerate affine)")
    ras_shape = [0, 0, 0]
    for axis in range(3):
        ras_shape[int(ornt[axis, 0])] = int(shape[axis])
    rel = path.relative_to(root)
    scan_id = _strip_nifti(rel.as_posix())
    return Scan(
        scan_id=scan_id,
        patient=_strip_nifti(rel.parts[0]),
        kind="nifti",
        path=path,
        n_slices=ras_shape[2],
        shape=(ras_shape[1], ras_shape[0]),
    )


def _read_header(path: Path) -> _SliceHeader | BadItem:
    pydicom = require("pydicom")
    errors = pydicom.errors
    try:
        try:
            ds = pydicom.dcmread(path, defer_size=1024)
        except errors.InvalidDicomError:
            # Files written without the 128-byte preamble are still DICOM; anything else is not.
            ds = pydicom.dcmread(path, defer_size=1024, force=True)
            if "SOPClassUID" not in ds:
                return BadItem(str(path), "not a DICOM file")
    except Exception as e:
        return BadItem(str(path), f"unreadable DICOM file: {' '.join(str(e).split())}")
    # pydicom reads a truncated file without complaint and returns what it got.
    if "SOPClassUID" not in ds:
        return BadItem(str(path), "unreadable DICOM file: truncated or damaged (no SOPClassUID)")
    if "PixelData" not in ds:
        if "Rows" in ds:
            return BadItem(
                str(path), "unreadable DICOM file: truncated or damaged (image tags but no pixel data)"
            )
        kind = getattr(ds.SOPClassUID, "name", None) or ds.SOPClassUID
        return BadItem(str(path), f"a DICOM file without an image ({kind})")
    short = _pixel_data_short(path, ds)
    if short:
        return BadItem(str(path), f"unreadable DICOM file: truncated inside its pixel data ({short})")
    missing = [t for t in _RESCALE_TAGS if ds.get(t) is None or ds.get(t) == ""]
    if missing:
        return BadItem(
            str(path),
            f"missing rescale tag {', '.join(missing)}: its pixels cannot be converted to Hounsfield units",
        )
    missing = [t for t in _GEOMETRY_TAGS if not ds.get(t)]
    if missing:
        return BadItem(str(path), f"missing {', '.join(missing)}: the slice cannot be placed in its series")
    try:
        number = ds.get("SeriesNumber")
        return _SliceHeader(
            path=path,
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            series_number=None if number in (None, "") else int(number),
            orientation=tuple(round(float(v), 4) for v in ds.ImageOrientationPatient),
            position=tuple(float(v) for v in ds.ImagePositionPatient),  # type: ignore[arg-type]
            rows=int(ds.Rows),
            cols=int(ds.Columns),
            slope=float(ds.RescaleSlope),
            intercept=float(ds.RescaleIntercept),
        )
    except Exception as e:
        return BadItem(str(path), f"unreadable DICOM header: {' '.join(str(e).split())}")


def _pixel_data_short(path: Path, ds: Any) -> str | None:
    """What is missing of the pixel data, judged from the header alone (no pixel is decoded): the
    element's declared length against the bytes the file holds after it, and, for uncompressed
    data, against what rows x columns x samples x frames x bits need. ``None`` where it is whole
    or cannot be judged (encapsulated, i.e. compressed, data of undefined length)."""
    try:
        raw = ds.get_item("PixelData", keep_deferred=True)
    except TypeError:  # pydicom 2: raw elements are returned as they are
        raw = ds.get_item("PixelData")
    length, tell = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if length is None or tell is None or length == 0xFFFFFFFF:
        return None
    have = path.stat().st_size - tell
    if have < length:
        return f"{max(have, 0):,} of its {length:,} bytes"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and getattr(syntax, "is_compressed", False):
        return None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames
        need *= (int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError):
        return None
    return (
        f"{length:,} bytes where its {int(ds.Rows)} x {int(ds.Columns)} image needs {need:,}"
        if length < need
        else None
    )


def _dicom_scans(root: Path, folder: Path, files: list[Path]) -> tuple[list[Scan], list[BadItem]]:
    bad: list[BadItem] = []
    series: dict[str, list[_SliceHeader]] = defaultdict(list)
    rel = folder.relative_to(root)
    source = None if rel == Path(".") else rel.as_posix()
    for path in files:
        header = _read_header(path)
        if isinstance(header, BadItem):
            bad.append(replace(header, source=source))
        else:
            series[header.series_uid].append(header)
    if rel == Path("."):
        if series:
            bad.append(
                BadItem(
                    str(folder),
                    "DICOM files directly in the --scans folder: put each patient's series in a "
                    "folder named by the patient",
                )
            )
        return [], bad
    groups = sorted(series.values(), key=lambda g: (g[0].series_number or 0, g[0].series_uid))
    numbers = [g[0].series_number for g in groups]
    unique_numbers = None not in numbers and len(set(numbers)) == len(numbers)
    scans: list[Scan] = []
    for i, headers in enumerate(groups):
        scan_id = rel.as_posix()
        if len(groups) > 1:
            scan_id += f"#{numbers[i] if unique_numbers else i + 1}"
        result = _check_series(scan_id, rel.parts[0], folder, headers)
        _add(replace(result, source=source) if isinstance(result, BadItem) else result, scans, bad)
    return scans, bad


def _check_series(scan_id: str, patient: str, folder: Path, headers: list[_SliceHeader]) -> Scan | BadItem:
    item = f"scan {scan_id} ({folder})"
    sizes = Counter((h.rows, h.cols) for h in headers)
    if len(sizes) > 1:
        return BadItem(item, "mixed image sizes: " + _counts(sizes, lambda s: f"{s[1]}x{s[0]}"))
    orientations = Counter(h.orientation for h in headers)
    if len(orientations) > 1:
        return BadItem(item, "mixed orientations (ImageOrientationPatient): " + _counts(orientations, list))
    orientation = np.array(headers[0].orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    if abs(normal[2]) < MIN_AXIAL_COSINE:
        return BadItem(
            item,
            f"not an axial series (ImageOrientationPatient {list(headers[0].orientation)}): "
            "a localizer or a reformat?",
        )
    ordered = sorted(headers, key=lambda h: h.position[2])
    for a, b in itertools.pairwise(ordered):
        if abs(a.position[2] - b.position[2]) < 1e-3:
            return BadItem(
                item, f"{a.path.name} and {b.path.name} are at the same position (z = {a.position[2]:g})"
            )
    return Scan(
        scan_id=scan_id,
        patient=patient,
        kind="dicom",
        path=folder,
        n_slices=len(ordered),
        shape=(headers[0].rows, headers[0].cols),
        _headers=tuple(ordered),
    )


def _counts(counter: Counter, fmt: Any) -> str:
    return ", ".join(f"{n} slice{'s' if n > 1 else ''} {fmt(k)}" for k, n in counter.most_common())


def _read_dicom_slice(header: _SliceHeader) -> np.ndarray:
    pydicom = require("pydicom")
    try:
        ds = pydicom.dcmread(header.path)
        stored = ds.pixel_array
    except Exception as e:
        raise BadScanError(
            BadItem(str(header.path), f"cannot decode the pixel data: {' '.join(str(e).split())}"),
            whole_scan=False,
        ) from e
    if stored.shape != (header.rows, header.cols):
        raise BadScanError(
            BadItem(str(header.path), f"pixel data of shape {stored.shape}, not one 2-D slice"),
            whole_scan=False,
        )
    hu = stored.astype(np.float32) * np.float32(header.slope) + np.float32(header.intercept)
    return _radiological(hu, header.orientation)


def _radiological(image: np.ndarray, orientation: tuple[float, ...]) -> np.ndarray:
    """Turn an axial slice so columns run to the patient's left (+x) and rows to posterior (+y).

    DICOM's patient axes are LPS; ``orientation[:3]`` is the direction in which the column index
    grows, ``orientation[3:]`` the direction in which the row index grows.
    """
    along_cols, along_rows = np.array(orientation[:3]), np.array(orientation[3:])
    if abs(along_cols[0]) < abs(along_cols[1]):  # columns run front-back: swap the image axes
        image = image.T
        along_cols, along_rows = along_rows, along_cols
    if along_cols[0] < 0:
        image = image[:, ::-1]
    if along_rows[1] < 0:
        image = image[::-1, :]
    return np.ascontiguousarray(image)
