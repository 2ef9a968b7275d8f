"""Bad input to ``prepare_dataset``: every case named in its message, ``skip_bad`` lists it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from evaluators.data.prepare import pipeline as prepare_module
from evaluators.data.prepare.pipeline import PrepareConfig, prepare_dataset
from evaluators.data.prepare.scans import PrepareError, require
from evaluators.extras import MissingExtraError
from tests.evaluators.prepare_cases import (
    CT_SMALL,
    body_volume,
    ct_small,
    nib,
    pydicom,
    set_pixels,
    write_labels,
    write_nifti,
    write_series,
)

GOOD_LABELS = "patient,class\nG1,normal\nG2,pneumonia\nG3,covid-19\nG4,covid-19\n"


def _good(scans: Path) -> None:
    for patient in ("G1", "G2", "G3", "G4"):
        write_series(scans / patient, 2)


def _edit_one(folder: Path, edit: Callable[[object], None], n: int = 2) -> Path:
    """A series of ``n`` slices whose first file (position order) gets ``edit``."""
    paths = write_series(folder, n)
    ds = pydicom.dcmread(paths[0])
    edit(ds)
    ds.save_as(paths[0])
    return paths[0]


def _truncated(scans: Path) -> str:
    path = write_series(scans / "B", 2)[0]
    path.write_bytes(CT_SMALL.read_bytes()[:5000])
    return f"{path}: unreadable DICOM file: truncated or damaged"


def _truncated_in_pixels(scans: Path) -> str:
    # cut inside the pixel data: the header is whole, so only the element's length against the
    # file tells (found at the header check, before any pixel of any scan is read)
    path = write_series(scans / "B", 2)[0]
    path.write_bytes(path.read_bytes()[:-2000])
    return f"{path}: unreadable DICOM file: truncated inside its pixel data ("


def _not_dicom(scans: Path) -> str:
    write_series(scans / "B", 2)
    (scans / "B" / "scanner-notes").write_text("operator notes, no DICOM here\n" * 20)
    return f"{scans / 'B' / 'scanner-notes'}: not a DICOM file"


def _no_image(scans: Path) -> str:
    def edit(ds: object) -> None:
        del ds.PixelData, ds.Rows, ds.Columns  # type: ignore[attr-defined]
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # type: ignore[attr-defined]

    path = _edit_one(scans / "B", edit)
    return f"{path}: a DICOM file without an image (Basic Text SR Storage)"


def _no_rescale(scans: Path) -> str:
    def edit(ds: object) -> None:
        del ds.RescaleIntercept  # type: ignore[attr-defined]

    path = _edit_one(scans / "B", edit)
    return f"{path}: missing rescale tag RescaleIntercept: its pixels cannot be converted to Hounsfield units"


def _no_position(scans: Path) -> str:
    def edit(ds: object) -> None:
        del ds.ImagePositionPatient  # type: ignore[attr-defined]

    path = _edit_one(scans / "B", edit)
    return f"{path}: missing ImagePositionPatient: the slice cannot be placed in its series"


def _mixed_orientations(scans: Path) -> str:
    def edit(ds: object) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # type: ignore[attr-defined]

    _edit_one(scans / "B", edit, n=3)
    return (
        f"scan B ({scans / 'B'}): mixed orientations (ImageOrientationPatient): "
        "2 slices [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 1 slice [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]"
    )


def _not_axial(scans: Path) -> str:
    def edit(ds: object, i: int) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # type: ignore[attr-defined]

    write_series(scans / "B", 2, edit=edit)
    orientation = "[1.0, 0.0, 0.0, 0.0, 0.0, -1.0]"
    return f"scan B ({scans / 'B'}): not an axial series (ImageOrientationPatient {orientation})"


def _mixed_sizes(scans: Path) -> str:
    def edit(ds: object) -> None:
        set_pixels(ds, ds.pixel_array[::2, ::2])  # type: ignore[attr-defined]

    _edit_one(scans / "B", edit, n=3)
    return f"scan B ({scans / 'B'}): mixed image sizes: 2 slices 128x128, 1 slice 64x64"


def _same_position(scans: Path) -> str:
    write_series(scans / "B", 3, dz=0.0)
    return f"scan B ({scans / 'B'}): IM0001.dcm and IM0002.dcm are at the same position (z = -75.7)"


def _dicom_in_root(scans: Path) -> str:
    (scans / "loose.dcm").write_bytes(CT_SMALL.read_bytes())
    return f"{scans}: DICOM files directly in the --scans folder"


def _bad_nifti(scans: Path) -> str:
    (scans / "B.nii.gz").write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    return f"{scans / 'B.nii.gz'}: unreadable NIfTI file"


def _four_d_nifti(scans: Path) -> str:
    write_nifti(scans / "B.nii", body_volume()[:, :, :2])
    series = scans / "C.nii"  # three volumes over time
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2, 3), dtype=np.int16), np.eye(4)), str(series))
    return f"{series}: not a 3-D volume: shape (8, 8, 2, 3)"


def _same_scan_id(scans: Path) -> str:
    write_series(scans / "B", 2)
    write_nifti(scans / "B.nii.gz", body_volume()[:, :, :2])
    return f"scan B: two scans have this id ({scans / 'B'} and {scans / 'B.nii.gz'}); rename one"


def _unlabeled(scans: Path) -> str:
    write_series(scans / "P9", 2)
    return f"patient P9: has no label in {scans.parent / 'labels.csv'} ({scans / 'P9'})"


def _label_without_scan(scans: Path) -> str:
    write_series(scans / "B", 2)
    return f"{scans.parent / 'labels.csv'} line 7: patient 'G5' has no scan"


B = "B,normal\n"
# name -> (what makes the input bad, the label rows beyond GOOD_LABELS)
CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "truncated DICOM": (_truncated, B),
    "DICOM truncated inside its pixel data": (_truncated_in_pixels, B),
    "not DICOM": (_not_dicom, B),
    "DICOM without an image": (_no_image, B),
    "missing rescale tag": (_no_rescale, B),
    "missing position": (_no_position, B),
    "mixed orientations": (_mixed_orientations, B),
    "not axial": (_not_axial, B),
    "mixed sizes": (_mixed_sizes, B),
    "same position": (_same_position, B),
    "DICOM in the scans folder": (_dicom_in_root, ""),
    "unreadable NIfTI": (_bad_nifti, B),
    "not a 3-D NIfTI": (_four_d_nifti, B + "C,normal\n"),
    "two scans with one id": (_same_scan_id, B),
    "scan without a label": (_unlabeled, ""),
    "label without a scan": (_label_without_scan, B + "G5,pneumonia\n"),
}


def _tree(tmp_path: Path, name: str) -> tuple[PrepareConfig, str]:
    make_bad, extra_labels = CASES[name]
    scans = tmp_path / "scans"
    _good(scans)
    expected = make_bad(scans)
    write_labels(tmp_path / "labels.csv", GOOD_LABELS + extra_labels)
    return PrepareConfig(scans=scans, labels=tmp_path / "labels.csv", out=tmp_path / "out"), expected


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_input_is_named_and_skip_bad_lists_it(name: str, tmp_path: Path) -> None:
    config, expected = _tree(tmp_path, name)
    with pytest.raises(PrepareError) as e:
        prepare_dataset(config)
    message = str(e.value)
    assert message.startswith("1 bad input (pass --skip-bad to leave them out): ") and expected in message, (
        message
    )
    assert not config.out.exists() and not list(tmp_path.glob(".out.*"))

    summary = prepare_dataset(PrepareConfig(**{**config.__dict__, "skip_bad": True}))
    assert len(summary.skipped) == 1 and expected in str(summary.skipped[0]), summary.skipped
    assert {"G1", "G2", "G3", "G4"} <= set(summary.patients)
    skipped = json.loads((config.out / "summary.json").read_text())["skipped"]
    assert [f"{s['item']}: {s['reason']}" for s in skipped] == [str(s) for s in summary.skipped]


def test_all_bad_inputs_are_listed_at_once(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    _good(scans)
    _no_rescale(scans)
    _unlabeled(scans)
    write_labels(tmp_path / "labels.csv", GOOD_LABELS + "B,normal\nP09,normal")
    with pytest.raises(PrepareError, match=r"^3 bad inputs \(pass --skip-bad to leave them out\): ") as e:
        prepare_dataset(PrepareConfig(scans=scans, labels=tmp_path / "labels.csv", out=tmp_path / "out"))
    assert "missing rescale tag RescaleIntercept" in str(e.value)
    assert "patient P9: has no label" in str(e.value)
    assert "line 7: patient 'P09' has no scan; did you mean 'P9'?" in str(e.value)


def test_pixel_data_cut_short_is_named_at_the_header_check(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    _good(scans)
    path = write_series(scans / "B", 2)[1]
    path.write_bytes(CT_SMALL.read_bytes()[:30000])  # the header is whole, the pixel data cut short
    write_labels(tmp_path / "labels.csv", GOOD_LABELS + "B,normal")
    config = PrepareConfig(scans=scans, labels=tmp_path / "labels.csv", out=tmp_path / "out")
    # found from the element's length before any pixel is read (it used to surface mid-way)
    with pytest.raises(
        PrepareError, match=r"truncated inside its pixel data \([\d,]+ of its 32,768 bytes\)"
    ) as e:
        prepare_dataset(config)
    assert str(e.value).startswith("1 bad input (pass --skip-bad") and f"{path}: " in str(e.value)
    assert not config.out.exists() and not list(tmp_path.glob(".out.*"))
    summary = prepare_dataset(PrepareConfig(**{**config.__dict__, "skip_bad": True}))
    assert [s.item for s in summary.skipped] == [str(path)]
    assert summary.patients["B"]["slices"] == 1  # the other slice of the series is kept


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "labels.csv: empty; the first line must name the columns"),
        (
            "patient,dx\nG1,normal",
            "labels.csv: no 'class' column (columns: patient, dx; accepted: class, label",
        ),
        ("id,class\nG1,normal", "labels.csv: no 'patient' or 'scan' column (columns: id, class"),
        (
            "patient,class\nG1,normal\nG2,flu",
            "labels.csv line 3, column class: 'flu' is not a class (normal, pneumonia",
        ),
        (
            "patient,class\nG1,normal\nG1,normal",
            "labels.csv line 3: patient 'G1' is listed twice (first on line 2)",
        ),
        ("patient,class\n,normal", "labels.csv line 2, column patient: empty patient id"),
        ("patient,class\nG1,normal,extra", "labels.csv line 2: 3 fields, the header has 2"),
        ("patient,class\n", "labels.csv: no rows under the header"),
        ("patient,label,class\nG1,0,0", "labels.csv: columns label and class both mean 'class'; keep one"),
    ],
)
def test_labels_file_errors_name_the_line_and_column(text: str, expected: str, tmp_path: Path) -> None:
    _good(tmp_path / "scans")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(PrepareError) as e:
        prepare_dataset(
            PrepareConfig(scans=tmp_path / "scans", labels=tmp_path / "labels.csv", out=tmp_path / "o")
        )
    assert expected in str(e.value)


def test_missing_files_and_folders(tmp_path: Path) -> None:
    _good(tmp_path / "scans")
    write_labels(tmp_path / "labels.csv", GOOD_LABELS)
    with pytest.raises(PrepareError, match="--labels .*nope.csv: no such file"):
        prepare_dataset(
            PrepareConfig(scans=tmp_path / "scans", labels=tmp_path / "nope.csv", out=tmp_path / "o")
        )
    with pytest.raises(PrepareError, match="--scans .*nowhere: no such folder"):
        prepare_dataset(
            PrepareConfig(scans=tmp_path / "nowhere", labels=tmp_path / "labels.csv", out=tmp_path / "o")
        )


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("G1,0\nG11,1", "slices.csv line 3: scan 'G11' is not among the scans; did you mean 'G1'?"),
        ("G1,0\nG2,2", "slices.csv line 3: slice 2 is outside scan 'G2' (slices 0 to 1)"),
        ("G1,first", "slices.csv line 2, column slice: 'first' is not a slice index"),
    ],
)
def test_slices_csv_errors(rows: str, expected: str, tmp_path: Path) -> None:
    _good(tmp_path / "scans")
    write_labels(tmp_path / "labels.csv", GOOD_LABELS)
    write_labels(tmp_path / "slices.csv", "scan,slice\n" + rows)
    with pytest.raises(PrepareError) as e:
        prepare_dataset(
            PrepareConfig(
                scans=tmp_path / "scans",
                labels=tmp_path / "labels.csv",
                out=tmp_path / "o",
                slices_csv=tmp_path / "slices.csv",
            )
        )
    assert expected in str(e.value)


@pytest.fixture
def inputs(tmp_path: Path) -> PrepareConfig:
    _good(tmp_path / "scans")
    write_labels(tmp_path / "labels.csv", GOOD_LABELS)
    return PrepareConfig(scans=tmp_path / "scans", labels=tmp_path / "labels.csv", out=tmp_path / "out")


def test_rerun_refuses_without_overwrite_and_replaces_with_it(inputs: PrepareConfig) -> None:
    first = prepare_dataset(inputs)
    before = {p.name: p.stat().st_mtime_ns for p in (inputs.out / "images").iterdir()}
    with pytest.raises(PrepareError, match="already holds files; pass --overwrite to replace it"):
        prepare_dataset(PrepareConfig(**{**inputs.__dict__, "seed": 5}))
    assert {p.name: p.stat().st_mtime_ns for p in (inputs.out / "images").iterdir()} == before
    (inputs.out / "images" / "stale.png").write_bytes(b"old")
    again = prepare_dataset(PrepareConfig(**{**inputs.__dict__, "overwrite": True}))
    assert again.patients == first.patients and not (inputs.out / "images" / "stale.png").exists()
    assert sorted(p.name for p in inputs.out.parent.iterdir() if p.name.startswith(".")) == []


def test_overwrite_replaces_only_a_prepared_folder(inputs: PrepareConfig) -> None:
    inputs.out.mkdir()
    (inputs.out / "thesis.docx").write_text("years of work")
    with pytest.raises(
        PrepareError, match="holds files that search data prepare did not write .no .covidnet-nas-prepared"
    ):
        prepare_dataset(PrepareConfig(**{**inputs.__dict__, "overwrite": True}))
    assert (inputs.out / "thesis.docx").read_text() == "years of work"
    # a summary.json (any tool's), or a marker of other content, does not make the folder ours
    (inputs.out / "summary.json").write_text("{}")
    (inputs.out / ".covidnet-nas-prepared").write_text("mine\n")
    with pytest.raises(PrepareError, match="did not write"):
        prepare_dataset(PrepareConfig(**{**inputs.__dict__, "overwrite": True}))
    assert (inputs.out / "thesis.docx").read_text() == "years of work"
    for f in ("summary.json", ".covidnet-nas-prepared"):
        (inputs.out / f).unlink()
    (inputs.out / "thesis.docx").unlink()
    prepare_dataset(inputs)  # an empty folder is fine
    assert (inputs.out / "train.txt").is_file()


def test_out_inside_or_around_scans_is_refused(inputs: PrepareConfig) -> None:
    with pytest.raises(PrepareError, match="is inside --scans"):
        prepare_dataset(PrepareConfig(**{**inputs.__dict__, "out": inputs.scans / "G1" / "out"}))
    with pytest.raises(PrepareError, match="contains --scans"):
        prepare_dataset(PrepareConfig(**{**inputs.__dict__, "out": inputs.scans.parent, "overwrite": True}))


def test_a_crash_leaves_nothing_and_keeps_the_old_output(
    inputs: PrepareConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def failing(hu: np.ndarray, threshold: float) -> None:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk on fire")
        return real(hu, threshold)

    real = prepare_module.find_body
    monkeypatch.setattr(prepare_module, "find_body", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_dataset(inputs)
    assert sorted(p.name for p in inputs.out.parent.iterdir()) == ["labels.csv", "scans"]

    monkeypatch.setattr(prepare_module, "find_body", real)
    first = prepare_dataset(inputs)
    calls.clear()
    monkeypatch.setattr(prepare_module, "find_body", failing)
    with pytest.raises(RuntimeError):
        prepare_dataset(PrepareConfig(**{**inputs.__dict__, "overwrite": True, "seed": 9}))
    assert json.loads((inputs.out / "summary.json").read_text())["patients"] == first.patients
    assert sorted(p.name for p in inputs.out.parent.iterdir()) == ["labels.csv", "out", "scans"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"window_width": 0}, "--window-width must be positive, got 0"),
        ({"slice_step": 0}, "--slice-step must be at least 1, got 0"),
        ({"slice_step": 2, "slices_csv": "s.csv"}, "--slice-step and --slices-csv exclude each other"),
        ({"split": (0.5, 0.3, 0.3)}, "--split must be three shares from 0 to 1 summing to 1"),
        ({"split": (0, 0.5, 0.5)}, "--split must give train a share above 0"),
        ({"size": 4}, "--size must be at least 8 pixels, got 4"),
        ({"min_lung_fraction": 1.0}, "--min-lung-fraction must be from 0 to below 1, got 1.0"),
    ],
)
def test_config_errors(changes: dict, expected: str) -> None:
    with pytest.raises(PrepareError) as e:
        PrepareConfig(scans=Path("s"), labels=Path("l.csv"), out=Path("o"), **changes)
    assert expected in str(e.value)


def test_parse_split() -> None:
    assert prepare_module.parse_split("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert prepare_module.parse_split("70,15,15") == (0.7, 0.15, 0.15)
    with pytest.raises(PrepareError, match="--split must be three numbers like 0.7,0.15,0.15, got '0.7,0.3'"):
        prepare_module.parse_split("0.7,0.3")


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(
        MissingExtraError, match=r"install the \[prepare\] extra: pip install '\.\[prepare\]'"
    ):
        require("pydicom")
    assert ct_small() is not None  # the module-level import in the helpers was made before
