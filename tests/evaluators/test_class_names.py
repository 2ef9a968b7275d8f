"""A data folder names its classes for display (classes.txt), used in tables and predictions."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest

from evaluators.data.classes import CLASS_NAMES
from evaluators.data.covidx import DatasetError, load_dataset
from tests.evaluators.test_data import lines, write_dataset


def _data(root: Path, classes: str | None) -> Path:
    write_dataset(root, {"train": lines(4, "a"), "val": lines(2, "b"), "test": lines(2, "c")})
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def test_a_folder_without_classes_txt_keeps_covidx_names(tmp_path: Path) -> None:
    ds = load_dataset([_data(tmp_path / "d", None)])
    assert ds.class_names == CLASS_NAMES and ds.summary()["class_names"] == list(CLASS_NAMES)


def test_classes_txt_names_the_classes_in_label_order(tmp_path: Path) -> None:
    ds = load_dataset([_data(tmp_path / "d", "non-COVID\n\nPneumonia\n  COVID-19  \n")])
    assert ds.class_names == ("non-COVID", "Pneumonia", "COVID-19")
    assert ds.summary()["class_names"] == ["non-COVID", "Pneumonia", "COVID-19"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a\nb\n", r"classes.txt: expected 3 class names, one per line in label order .* got 2"),
        ("a\nb\na\n", r"classes.txt line 3: 'a' names two classes"),
    ],
)
def test_a_bad_classes_txt_is_one_line_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(DatasetError, match=needle):
        load_dataset([_data(tmp_path / "d", text)])


def test_sources_that_name_their_classes_differently_are_refused(tmp_path: Path) -> None:
    a = _data(tmp_path / "a", "x\ny\nz\n")
    b = _data(tmp_path / "b", "p\nq\nr\n")
    with pytest.raises(DatasetError, match=r"b/classes.txt names the classes p, q, r but .*a/classes.txt"):
        load_dataset([a, b])
    assert load_dataset([a, _data(tmp_path / "c", None)]).class_names == ("x", "y", "z")


def test_the_report_tables_name_the_classes_as_the_data_does(tmp_path: Path) -> None:
    from reports.build import build_report
    from tests.reports.studies import DATA, fill_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = fill_study(url, "s")
    study.set_user_attr("data", {**DATA, "class_names": ["non-COVID", "Pneumonia", "COVID-19"]})
    build_report(url, "s", tmp_path / "r")
    header4 = list(pd.read_csv(tmp_path / "r" / "table4.csv").columns)
    assert any("non-COVID" in c for c in header4) and not any("Normal" in c for c in header4)
    assert "non-COVID" in (tmp_path / "r" / "table5.md").read_text()
    optuna.delete_study(study_name="s", storage=url)


def test_the_explainability_audit_names_the_classes_as_the_data_does(tmp_path: Path) -> None:
    import torch

    from evaluators.explain import ExplainInput, explain_images, summarize
    from space import build
    from tests.evaluators.explain_cases import BOX, SIZE, make_slices, tiny_spec, write_slices

    images, labels = make_slices(2, marked=True, seed=0)
    paths = write_slices(tmp_path, images, labels)
    torch.manual_seed(0)
    names = ("non-COVID", "Pneumonia", "COVID-19")
    inputs = [ExplainInput(p.name, p, BOX, label=int(k)) for p, k in zip(paths, labels)]
    results = explain_images(build(tiny_spec(), 3), inputs, image_size=SIZE, class_names=names)
    for r in results:
        d = r.to_dict()
        assert d["predicted_name"] == names[r.predicted] and d["label_name"] == names[r.label]
    listed = summarize(results, SIZE).to_dict()["images"]
    assert {x["label_name"] for x in listed} <= set(names) and "Normal" not in str(listed)
