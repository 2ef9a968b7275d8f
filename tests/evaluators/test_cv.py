from __future__ import annotations

from pathlib import Path

import pytest

from evaluators.data.covidx import DatasetError, Sample, default_data_dir, load_dataset
from evaluators.data.patients import group_samples, make_folds, read_patients_csv
from evaluators.uncertainty import Uncertain, t95


def _sample(name: str, label: int = 0, source: str = "a") -> Sample:
    return Sample(source, Path(name), name, label, (0, 0, 8, 8), Path("train.txt"), 1)


def test_default_regex_reads_covidx_patient_ids() -> None:
    g = group_samples(
        [_sample("NCP_341_1834_0022.png"), _sample("NCP_341_1834_0023.png"), _sample("CP_12_3204_0031.png")]
    )
    assert g.patients == ("a/NCP_341", "a/NCP_341", "a/CP_12")
    assert g.from_regex == 3 and g.alone == 0 and g.warning is None


def test_images_without_an_id_are_alone_with_a_warning() -> None:
    g = group_samples([_sample("scan.png"), _sample("other.png")], patient_regex=r"^(P\d+)-")
    assert g.patients == ("a/image:scan.png", "a/image:other.png")
    assert g.alone == 2 and "2 of 2 images have no patient id" in (g.warning or "")


def test_patients_csv_overrides_the_regex(tmp_path: Path) -> None:
    f = tmp_path / "patients.csv"
    f.write_text("filename,patient\nNCP_341_1834_0022.png,P7\n")
    g = group_samples(
        [_sample("NCP_341_1834_0022.png"), _sample("NCP_341_1834_0023.png")], dirs={"a": tmp_path}
    )
    assert g.patients == ("a/P7", "a/NCP_341") and g.from_csv == 1 and g.from_regex == 1
    g = group_samples([_sample("x.png")], patients={"x.png": "Q"})
    assert g.patients == ("a/Q",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,who\nx.png,P\n", "line 1: needs the columns 'filename' and 'patient'"),
        ("filename,patient\nx.png,\n", "line 2: filename and patient must both be given"),
        ("filename,patient\nx.png,P\nx.png,Q\n", "line 3: x.png is mapped to two patients"),
    ],
)
def test_bad_patients_csv(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "patients.csv"
    f.write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_patients_csv(f)


def test_folds_are_patient_disjoint_cover_everything_once_and_are_balanced() -> None:
    ds = load_dataset()
    samples = list(ds.split("train")) + list(ds.split("val"))
    g = group_samples(samples, dirs=dict(zip(ds.sources, ds.dirs)))
    assert g.from_csv == len(samples)  # the bundled data ships patients.csv
    labels = [s.label for s in samples]
    folds = make_folds(labels, g.patients, 5, seed=0)
    all_idx = sorted(i for f in folds for i in f.tolist())
    assert all_idx == list(range(len(samples)))
    patient_fold = {}
    for k, f in enumerate(folds):
        for i in f.tolist():
            assert patient_fold.setdefault(g.patients[i], k) == k
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= max(sizes) // 2
    for f in folds:  # every fold has both classes present in the data
        assert {labels[i] for i in f.tolist()} == {0, 2}
    assert [f.tolist() for f in make_folds(labels, g.patients, 5, seed=0)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in make_folds(labels, g.patients, 5, seed=1)] != [f.tolist() for f in folds]


def test_too_few_patients_for_k() -> None:
    with pytest.raises(DatasetError, match="--cv-folds 3 needs at least 3 patients"):
        make_folds([0, 1], ["p", "q"], 3)


def test_uncertain_statistics() -> None:
    u = Uncertain.of([80.0, 84.0, 82.0])
    assert u.mean == pytest.approx(82.0)
    assert u.std == pytest.approx(2.0)
    half = t95(2) * 2.0 / 3**0.5
    assert u.ci == pytest.approx((82.0 - half, 82.0 + half))
    assert Uncertain.from_dict(u.to_dict()) == u
    one = Uncertain.of([75.0], single_run_ci=(70.0, 80.0))
    assert one.std is None and one.ci == (70.0, 80.0) and one.method == "bootstrap over images"
    assert not Uncertain.of([90.0, 91.0, 90.5]).overlaps(Uncertain.of([70.0, 71.0, 70.5]))
    assert Uncertain.of([80.0, 90.0]).overlaps(Uncertain.of([85.0, 86.0]))
    assert default_data_dir().is_dir()
