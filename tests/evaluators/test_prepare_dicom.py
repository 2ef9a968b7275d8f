"""``prepare_dataset`` on real DICOM: pydicom's CT_small.dcm copied into synthetic patients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluators.data.prepare.pipeline import PrepareConfig, prepare_dataset
from tests.evaluators.prepare_cases import (
    AIR_STORED,
    MARKER,
    air_outside,
    ct_small,
    patient_of,
    png,
    read_split,
    set_pixels,
    write_labels,
    write_series,
)

# patient -> (class name in labels.csv, slices); two patients a class and an odd one out.
PATIENTS = {
    "P01": ("normal", 3),
    "P02": ("covid-19", 4),
    "P03": ("Pneumonia", 2),
    "P04": ("2", 3),
    "P05": ("0", 2),
    "P06": ("cp", 3),
    "P07": ("NCP", 2),
}
CLASS = {"P01": 0, "P02": 2, "P03": 1, "P04": 2, "P05": 0, "P06": 1, "P07": 2}


@pytest.fixture(scope="module")
def dicom_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dicom")
    scans = root / "scans"
    for patient, (_, n) in PATIENTS.items():
        # P02's body is cut to a rectangle of known size; P04's series sits two folders deep.
        edit = air_outside(10, 20, 118, 110) if patient == "P02" else None
        folder = scans / patient / "study1" / "CT" if patient == "P04" else scans / patient
        write_series(folder, n, edit=edit)
    (scans / "P01" / "notes.txt").write_text("a sidecar file, not a slice")
    rows = "".join(f"{p},{c},50\n" for p, (c, _) in PATIENTS.items())  # an extra column is ignored
    return scans, write_labels(root / "labels.csv", "patient,class,age\n" + rows)


@pytest.fixture(scope="module")
def prepared(dicom_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    scans, labels = dicom_inputs
    out = tmp_path_factory.mktemp("prepared") / "out"
    prepare_dataset(PrepareConfig(scans=scans, labels=labels, out=out, seed=3))
    return out


def test_layout_and_strict_format(prepared: Path) -> None:
    assert sorted(p.name for p in prepared.iterdir()) == [
        ".covidnet-nas-prepared",
        "images",
        "summary.json",
        "test.txt",
        "train.txt",
        "val.txt",
    ]
    rows = [r for split in ("train", "val", "test") for r in read_split(prepared, split)]
    assert len(rows) == sum(n for _, n in PATIENTS.values()) == len(list((prepared / "images").iterdir()))
    for name, cls, _ in rows:
        assert cls == CLASS[patient_of(name)]
    names = {name for name, _, _ in rows}
    assert {"P01_0_0000.png", "P01_0_0002.png", "P02_0_0003.png", "P04_0_0002.png"} <= names


def test_hu_windowing_matches_hand_computation(prepared: Path) -> None:
    image = png(prepared, "P01_0_0000.png")
    assert image.shape == (128, 128) and image.dtype == np.uint8
    original = ct_small().pixel_array
    # HU = stored - 1024; gray = round_half_up((HU - (-600 - 750)) * 255 / 1500), clipped to 0..255.
    hand = {
        (0, 0): (175, 85),  # -849 HU: 501 * 255 / 1500 = 85.17
        (10, 10): (224, 94),  # -800 HU: 550 * 255 / 1500 = 93.5, half up
        (30, 100): (269, 101),  # -755 HU: 595 * 255 / 1500 = 101.15
        (120, 5): (940, 215),  # -84 HU: 1266 * 255 / 1500 = 215.22
        (64, 64): (1928, 255),  # 904 HU: above level + width / 2 = 150 HU
    }
    for (row, col), (stored, gray) in hand.items():
        assert original[row, col] == stored
        assert image[row, col] == gray, (row, col)


def test_slices_are_ordered_by_position_not_file_name(prepared: Path) -> None:
    # Slice i's marker is -600 + 100 i HU: 127.5 -> 128, 144.5 -> 145, 161.5 -> 162, 178.5 -> 179.
    expected = [128, 145, 162, 179]
    for i, gray in enumerate(expected):
        assert png(prepared, f"P02_0_{i:04d}.png")[MARKER] == gray


def test_boxes(prepared: Path) -> None:
    boxes = {name: box for split in ("train", "val", "test") for name, _, box in read_split(prepared, split)}
    for name, box in boxes.items():
        # P02: air outside columns 10..117, rows 20..109, and CT_small's body reaches every edge of
        # that rectangle; the others fill the whole 128 x 128 slice.
        assert box == ((10, 20, 118, 110) if name.startswith("P02_") else (0, 0, 128, 128)), name
    image = png(prepared, "P02_0_0001.png")
    # Air, -1000 HU: 350 * 255 / 1500 = 59.5 -> 60 (the window starts at -1350 HU).
    assert (image[:20] == 60).all() and (image[:, 118:] == 60).all()


def test_no_patient_in_two_splits_and_every_split_has_patients(prepared: Path) -> None:
    members = {s: {patient_of(n) for n, _, _ in read_split(prepared, s)} for s in ("train", "val", "test")}
    assert all(members.values())
    assert not (
        members["train"] & members["val"]
        or members["train"] & members["test"]
        or members["val"] & members["test"]
    )
    assert set.union(*members.values()) == set(PATIENTS)


def test_summary_json(prepared: Path) -> None:
    d = json.loads((prepared / "summary.json").read_text())
    assert d["window"] == {"level": -600.0, "width": 1500.0}
    assert d["counts"]["all"]["total"] == {"patients": 7, "scans": 7, "slices": 19}
    assert d["counts"]["all"]["covid-19"] == {"patients": 3, "scans": 3, "slices": 9}
    for split in ("train", "val", "test"):
        assert d["counts"][split]["total"]["slices"] == len(read_split(prepared, split))
    assert d["patients"]["P04"]["scans"] == ["P04/study1/CT"]
    assert d["patients"]["P02"] == {
        "class": "covid-19",
        "split": d["patients"]["P02"]["split"],
        "scans": ["P02"],
        "slices": 4,
        "file_prefix": "P02",
    }
    assert d["skipped"] == [] and d["dropped_slices"] == {"no_body": 0, "little_lung": 0}
    assert d["ignored_files"] == [str(Path(d["config"]["scans"]) / "P01" / "notes.txt")]


def test_seed_decides_the_split_and_is_reproducible(dicom_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    scans, labels = dicom_inputs
    splits = []
    for i, seed in enumerate((0, 0, 1, 2)):
        summary = prepare_dataset(PrepareConfig(scans=scans, labels=labels, out=tmp_path / str(i), seed=seed))
        splits.append({p: v["split"] for p, v in summary.patients.items()})
    assert splits[0] == splits[1]
    assert any(s != splits[0] for s in splits[2:])


def test_size_slice_step_and_window(dicom_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    scans, labels = dicom_inputs
    config = PrepareConfig(
        scans=scans,
        labels=labels,
        out=tmp_path / "o",
        size=64,
        slice_step=2,
        window_level=-500,
        window_width=1000,
    )
    summary = prepare_dataset(config)
    assert summary.counts["all"]["total"]["slices"] == sum((n + 1) // 2 for _, n in PATIENTS.values())
    rows = {n: box for s in ("train", "val", "test") for n, _, box in read_split(config.out, s)}
    assert "P02_0_0002.png" in rows and "P02_0_0001.png" not in rows
    assert png(config.out, "P01_0_0000.png").shape == (64, 64)
    # The 10..118 x 20..110 rectangle at half size; bilinear blending may widen it by a pixel.
    x0, y0, x1, y1 = rows["P02_0_0002.png"]
    assert abs(x0 - 5) <= 1 and abs(y0 - 10) <= 1 and abs(x1 - 59) <= 1 and abs(y1 - 55) <= 1
    # Window -1000..0 HU: slice 2's marker, -400 HU, is 600 * 255 / 1000 = 153.
    assert json.loads((config.out / "summary.json").read_text())["window"] == {
        "level": -500.0,
        "width": 1000.0,
    }
    full = prepare_dataset(
        PrepareConfig(scans=scans, labels=labels, out=tmp_path / "p", window_level=-500, window_width=1000)
    )
    assert full.config.size is None
    assert png(tmp_path / "p", "P02_0_0002.png")[MARKER] == 153


def test_flipped_in_plane_orientation_gives_the_same_image(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_series(scans / "A", 2)

    def mirrored(ds: object, i: int) -> None:
        # Columns stored right-to-left, said so by a row direction of -x.
        set_pixels(ds, ds.pixel_array[:, ::-1])  # type: ignore[attr-defined]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]  # type: ignore[attr-defined]

    write_series(scans / "B", 2, edit=mirrored)

    def transposed(ds: object, i: int) -> None:
        set_pixels(ds, ds.pixel_array.T)  # type: ignore[attr-defined]
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]  # type: ignore[attr-defined]

    write_series(scans / "C", 2, edit=transposed)
    labels = write_labels(tmp_path / "labels.csv", "patient,class\nA,0\nB,1\nC,2")
    out = tmp_path / "out"
    prepare_dataset(PrepareConfig(scans=scans, labels=labels, out=out, split=(1, 0, 0)))
    names = [".covidnet-nas-prepared", "images", "summary.json", "train.txt"]
    assert sorted(p.name for p in out.iterdir()) == names
    for i in range(2):
        a = png(out, f"A_0_{i:04d}.png")
        assert np.array_equal(a, png(out, f"B_0_{i:04d}.png"))
        assert np.array_equal(a, png(out, f"C_0_{i:04d}.png"))


def test_several_series_in_a_folder_and_scan_labels(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_series(scans / "P1", 2, series_number=3)
    write_series(scans / "P1", 3, series_number=7, prefix="S7-")
    write_series(scans / "P2", 2)
    labels = write_labels(tmp_path / "labels.csv", "scan;class\nP1#3;normal\nP1#7;covid-19\nP2;normal")
    out = tmp_path / "out"
    summary = prepare_dataset(PrepareConfig(scans=scans, labels=labels, out=out, split=(0.5, 0.5, 0)))
    assert summary.patients["P1"]["scans"] == ["P1#3", "P1#7"]
    assert summary.patients["P1"]["class"] == "covid-19"  # the class of most of its slices
    rows = {n: c for s in ("train", "val") for n, c, _ in read_split(out, s)}
    assert rows == {
        "P1_0_0000.png": 0,
        "P1_0_0001.png": 0,
        "P1_1_0000.png": 2,
        "P1_1_0001.png": 2,
        "P1_1_0002.png": 2,
        "P2_0_0000.png": 0,
        "P2_0_0001.png": 0,
    }
    # P1 counts under both classes, each of its scans under its own.
    assert summary.counts["all"]["normal"] == {"patients": 2, "scans": 2, "slices": 4}
    assert summary.counts["all"]["covid-19"] == {"patients": 1, "scans": 1, "slices": 3}
    assert summary.counts["all"]["total"] == {"patients": 2, "scans": 3, "slices": 7}


def test_slices_csv_picks_slices(dicom_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    scans, labels = dicom_inputs
    chosen = write_labels(
        tmp_path / "slices.csv",
        "scan,slice\nP01,2\nP01,0\nP02,1\nP03,0\nP04/study1/CT,1\nP05,1\nP06,0\nP07,1\nP01,2",
    )
    out = tmp_path / "out"
    summary = prepare_dataset(PrepareConfig(scans=scans, labels=labels, out=out, slices_csv=chosen))
    names = sorted(n for s in ("train", "val", "test") for n, _, _ in read_split(out, s))
    assert names == [
        "P01_0_0000.png",
        "P01_0_0002.png",
        "P02_0_0001.png",
        "P03_0_0000.png",
        "P04_0_0001.png",
        "P05_0_0001.png",
        "P06_0_0000.png",
        "P07_0_0001.png",
    ]
    assert summary.to_dict()["slice_selection"] == {"slices_csv": str(chosen)}


def test_air_only_slices_are_dropped_and_counted(tmp_path: Path) -> None:
    scans = tmp_path / "scans"

    def empty_top(ds: object, i: int) -> None:
        if i == 2:
            set_pixels(ds, np.full((128, 128), AIR_STORED))

    write_series(scans / "P1", 3, edit=empty_top)
    write_series(scans / "P2", 2)
    labels = write_labels(tmp_path / "labels.csv", "patient,class\nP1,0\nP2,2")
    summary = prepare_dataset(
        PrepareConfig(scans=scans, labels=labels, out=tmp_path / "out", split=(0.5, 0.5, 0))
    )
    assert summary.dropped_slices == {"no_body": 1, "little_lung": 0}
    assert summary.patients["P1"]["slices"] == 2


def test_too_few_patients_for_the_splits_warn(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_series(scans / "P1", 2)
    write_series(scans / "P2", 2)
    labels = write_labels(tmp_path / "labels.csv", "patient,class\nP1,0\nP2,2")
    summary = prepare_dataset(PrepareConfig(scans=scans, labels=labels, out=tmp_path / "out"))
    assert summary.warnings == ("split test has no patients: too few patients for the --split shares",)
    assert (tmp_path / "out" / "test.txt").read_text() == ""


def test_linked_folders_are_followed_once(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_series(scans / "P1", 2)
    write_series(tmp_path / "elsewhere" / "P2", 3)
    (scans / "P2").symlink_to(tmp_path / "elsewhere" / "P2", target_is_directory=True)
    (scans / "P1" / "loop").symlink_to(scans, target_is_directory=True)  # a cycle: not walked twice
    labels = write_labels(tmp_path / "labels.csv", "patient,class\nP1,0\nP2,2")
    summary = prepare_dataset(
        PrepareConfig(scans=scans, labels=labels, out=tmp_path / "out", split=(0.5, 0.5, 0))
    )
    assert {p: v["slices"] for p, v in summary.patients.items()} == {"P1": 2, "P2": 3}
