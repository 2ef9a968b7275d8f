"""``prepare_dataset`` on NIfTI volumes written with nibabel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluators.data.prepare.pipeline import PrepareConfig, prepare_dataset
from tests.evaluators.prepare_cases import body_volume, patient_of, png, read_split, write_labels, write_nifti

# body_volume(): 48 x 40 x 5 voxels (i right, j anterior); shown radiologically, column = 47 - i
# and row = 39 - j, so the block at i 6..37, j 4..29 is the box columns 10..41, rows 10..35.
BOX = (10, 10, 42, 36)
MARKER_PIXEL = (39 - 8, 47 - 20)  # the marker voxel (i 20, j 8) as (row, col)


@pytest.fixture(scope="module")
def nifti_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nifti")
    scans = root / "scans"
    scans.mkdir()
    labels = ["patient,class"]
    for n, cls in enumerate(("normal", "pneumonia", "covid-19") * 3):
        patient = f"case {n:02d}"  # a space: file names carry "case-00"
        # Every other patient stored with reversed x and y axes (and an affine that says so).
        write_nifti(scans / f"{patient}.nii.gz", body_volume(), flip_xy=n % 2 == 1)
        labels.append(f"{patient},{cls}")
    return scans, write_labels(root / "labels.csv", "\n".join(labels))


@pytest.fixture(scope="module")
def prepared(nifti_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    scans, labels = nifti_inputs
    out = tmp_path_factory.mktemp("prepared") / "out"
    prepare_dataset(PrepareConfig(scans=scans, labels=labels, out=out, min_lung_fraction=0.05, seed=1))
    return out


def test_windowing_orientation_and_boxes(prepared: Path) -> None:
    rows = [r for split in ("train", "val", "test") for r in read_split(prepared, split)]
    # Slices 0 and 4 have no lung (fraction 0 < 0.05) and are dropped; 1..3 remain.
    assert sorted(name for name, _, _ in rows if name.startswith("case-00_")) == [
        "case-00_0_0001.png",
        "case-00_0_0002.png",
        "case-00_0_0003.png",
    ]
    assert all(box == BOX for _, _, box in rows)
    reference = png(prepared, "case-00_0_0002.png")
    assert reference.shape == (40, 48)  # rows = j (40), columns = i (48)
    # Hand computation, gray = round_half_up((HU + 1350) * 255 / 1500):
    assert reference[0, 0] == 60  # air, -1000 HU: 59.5
    assert reference[20, 20] == 85  # lung, -850 HU: 85
    assert reference[12, 12] == 230  # soft tissue, 0 HU: 229.5
    assert reference[MARKER_PIXEL] == 240  # marker, 40 + 10 * 2 = 60 HU: 239.7
    for k in (1, 2, 3):
        # The marker climbs 10 HU a slice: slices are in order, whichever way they were stored.
        expected = int(np.floor((40 + 10 * k + 1350) * 255 / 1500 + 0.5))
        for n in range(9):
            image = png(prepared, f"case-{n:02d}_0_{k:04d}.png")
            assert image[MARKER_PIXEL] == expected, (n, k)
            if k == 2:
                assert np.array_equal(image, reference), n


def test_summary_counts_drops_and_patients(prepared: Path) -> None:
    d = json.loads((prepared / "summary.json").read_text())
    assert d["dropped_slices"] == {"no_body": 0, "little_lung": 18}
    assert d["counts"]["all"]["total"] == {"patients": 9, "scans": 9, "slices": 27}
    assert d["patients"]["case 04"]["file_prefix"] == "case-04"
    # Three patients a class: one in each split, so every split sees every class.
    for split in ("train", "val", "test"):
        for cls in ("normal", "pneumonia", "covid-19"):
            assert d["counts"][split][cls]["patients"] == 1, (split, cls)
    members = [{patient_of(n) for n, _, _ in read_split(prepared, s)} for s in ("train", "val", "test")]
    assert sum(len(m) for m in members) == len(set.union(*members)) == 9


def test_flat_folder_with_scan_and_patient_columns(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    write_nifti(scans / "vol1.nii", body_volume((48, 40, 3)))
    write_nifti(scans / "sub" / "vol2.nii.gz", body_volume((48, 40, 2)))
    write_nifti(scans / "vol3.nii.gz", body_volume((48, 40, 2)))
    write_nifti(scans / "vol4.nii.gz", body_volume((48, 40, 2))[..., None])  # 4-D with one volume
    labels = write_labels(
        tmp_path / "labels.csv",
        "scan\tpatient\tdiagnosis\nvol1\tA\tcovid\nsub/vol2\tA\tcovid19\nvol3\tB\tnormal\nvol4\tC\tnormal",
    )
    out = tmp_path / "out"
    summary = prepare_dataset(PrepareConfig(scans=scans, labels=labels, out=out, split=(0.5, 0.5, 0)))
    assert summary.patients["A"]["scans"] == ["sub/vol2", "vol1"]
    assert summary.patients["A"]["slices"] == 5
    names = sorted(n for s in ("train", "val") for n, _, _ in read_split(out, s))
    assert names[:5] == ["A_0_0000.png", "A_0_0001.png", "A_1_0000.png", "A_1_0001.png", "A_1_0002.png"]
    assert not (out / "test.txt").exists()
    assert summary.patients["C"]["slices"] == 2


def test_values_that_are_not_hounsfield_units_warn(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nifti(scans / "raw.nii.gz", body_volume((48, 40, 2)) + 1024)  # stored values, no rescale
    write_nifti(scans / "hu.nii.gz", body_volume((48, 40, 2)))
    labels = write_labels(tmp_path / "labels.csv", "patient,class\nraw,0\nhu,2")
    summary = prepare_dataset(
        PrepareConfig(scans=scans, labels=labels, out=tmp_path / "out", split=(0.5, 0.5, 0))
    )
    assert len(summary.warnings) == 1
    assert "raw.nii.gz: values 24 to 1074, none negative: not Hounsfield units?" in summary.warnings[0]
