"""Inputs for the ``search data prepare`` tests: DICOM series made from pydicom's real CT slice
``CT_small.dcm`` (128 x 128, RescaleIntercept -1024, slope 1), small NIfTI volumes, and a strict
reader of the COVIDx CT label files the preparation writes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
INTERCEPT = -1024  # CT_small's RescaleIntercept (slope 1): HU = stored - 1024
AIR_STORED = 24  # -1000 HU
MARKER = (100, 64)  # (row, col) inside the body where a series marks each slice's position
Edit = Callable[[object, int], None]


def ct_small() -> object:
    return pydicom.dcmread(CT_SMALL)


def set_pixels(ds: object, stored: np.ndarray) -> None:
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.int16).tobytes()  # type: ignore[attr-defined]
    ds.Rows, ds.Columns = stored.shape  # type: ignore[attr-defined]


def write_series(
    folder: Path,
    n: int,
    *,
    series_uid: str | None = None,
    series_number: int = 1,
    edit: Edit | None = None,
    dz: float = 5.0,
    prefix: str = "IM",
) -> list[Path]:
    """``n`` copies of CT_small as one axial series, positions z = -75.7 + dz * i.

    File names run against the position order (the first file is the top slice), so a reader
    that orders by name instead of position gets the slices backwards. Slice ``i`` carries a
    marker at ``MARKER``: HU -600 + 100 * i.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    paths = []
    for i in range(n):
        ds = ct_small()
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = series_number
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.135803, -179.035797, -75.7 + dz * i]
        stored = ds.pixel_array.copy()
        stored[MARKER] = -600 + 100 * i - INTERCEPT
        set_pixels(ds, stored)
        if edit is not None:
            edit(ds, i)
        path = folder / f"{prefix}{n - i:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def air_outside(x0: int, y0: int, x1: int, y1: int) -> Edit:
    """An edit that makes everything outside columns x0..x1-1, rows y0..y1-1 air (-1000 HU)."""

    def edit(ds: object, i: int) -> None:
        stored = ds.pixel_array.copy()  # type: ignore[attr-defined]
        inside = np.zeros(stored.shape, dtype=bool)
        inside[y0:y1, x0:x1] = True
        stored[~inside] = AIR_STORED
        set_pixels(ds, stored)

    return edit


def write_labels(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def write_nifti(path: Path, hu: np.ndarray, *, flip_xy: bool = False, zooms: tuple = (0.7, 0.7, 5.0)) -> Path:
    """``hu`` (i: towards the patient's right, j: anterior, k: superior) as a NIfTI volume.

    ``flip_xy`` stores the same anatomy with the first two axes reversed and an affine that says
    so (LPS-like storage); a reader that honours the affine gives identical slices.
    """
    affine = np.diag([*zooms, 1.0])
    data = hu
    if flip_xy:
        data = hu[::-1, ::-1, :]
        affine = affine.copy()
        affine[0, 0], affine[1, 1] = -zooms[0], -zooms[1]
        affine[0, 3], affine[1, 3] = (hu.shape[0] - 1) * zooms[0], (hu.shape[1] - 1) * zooms[1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.int16), affine), str(path))
    return path


def body_volume(
    shape: tuple[int, int, int] = (48, 40, 5), lung_slices: tuple[int, ...] = (1, 2, 3)
) -> np.ndarray:
    """Air with a soft-tissue block (0 HU) at i 6..37, j 4..29, and, on ``lung_slices``, a lung
    (-850 HU) at i 12..27, j 10..23 inside it: lung fraction 16 * 14 / (32 * 26) = 0.269."""
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[6:38, 4:30, :] = 0
    for k in (k for k in lung_slices if k < shape[2]):
        hu[12:28, 10:24, k] = -850
    hu[20, 8, :] = 40 + 10 * np.arange(shape[2])  # marks slice order and the patient's right
    return hu


_LINE = re.compile(r"^(?P<name>[A-Za-z0-9.-]+_\d+_\d{4}\.png) (?P<cls>[012]) (\d+) (\d+) (\d+) (\d+)$")


def read_split(out: Path, split: str) -> list[tuple[str, int, tuple[int, int, int, int]]]:
    """A label file, checked strictly: the line grammar, single spaces, a file in images/ for every
    line, a non-empty box inside that image. Returns ``(name, class, box)`` per line."""
    rows = []
    text = (out / f"{split}.txt").read_text()
    assert text == "" or text.endswith("\n")
    for number, line in enumerate(text.splitlines(), start=1):
        m = _LINE.match(line)
        assert m, f"{split}.txt line {number}: {line!r}"
        box = tuple(int(v) for v in m.groups()[2:])
        with Image.open(out / "images" / m["name"]) as image:
            assert image.mode == "L" and image.format == "PNG"
            width, height = image.size
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height, (line, image.size)
        rows.append((m["name"], int(m["cls"]), box))  # type: ignore[arg-type]
    return rows


def png(out: Path, name: str) -> np.ndarray:
    with Image.open(out / "images" / name) as image:
        return np.asarray(image)


def patient_of(name: str) -> str:
    return name.split("_")[0]
