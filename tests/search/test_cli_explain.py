"""``search explain`` on an export-like folder and on a study's trial; bad inputs are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch

from search.cli import main
from space import build
from tests.evaluators.explain_cases import BOX, make_slices, tiny_spec, write_slices

pytest.importorskip("captum")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """What `search export --format pt,json` writes, minus the model card: spec.json + weights.pt."""
    folder = tmp_path / "export"
    folder.mkdir()
    torch.manual_seed(0)
    model = build(tiny_spec(), 3)
    (folder / "spec.json").write_text(tiny_spec().to_json())
    torch.save(model.state_dict(), folder / "weights.pt")
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A COVIDx-format folder with a test split of 6 synthetic slices (box ``BOX``)."""
    folder = tmp_path / "data"
    write_slices(folder, *make_slices(6, marked=True, seed=4))
    return folder


def _err_line(capsys: Any) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_explain_an_export_folder_writes_overlays_grid_and_summary(
    exported: Path, data: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "explained"
    argv = ["explain", "--model", str(exported), "--image-size", "32", "--data", str(data), "--n", "4"]
    assert main(["--quiet", *argv, "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean share inside" in printed and str(out) in printed.replace("\n", "")
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.name[:4] for p in overlays] == ["001-", "002-", "003-", "004-"]
    assert all(p.read_bytes()[:8] == PNG for p in [*overlays, out / "grid.png"])
    doc = json.loads((out / "explain.json").read_text())
    s = doc["summary"]
    assert doc["method"] == s["method"] == "gradcam" and doc["image_size"] == 32
    assert s["n"] == 4 and len(s["images"]) == 4 and s["mean_box_fraction"] == pytest.approx(400 / 1024)
    shares = [i["share_inside"] for i in doc["images"]]
    assert shares == sorted(shares)  # most attribution outside first
    assert s["mean_share_inside"] == pytest.approx(sum(shares) / 4)
    assert all(i["box"] == list(BOX) and i["box_source"] == "labels" for i in doc["images"])
    assert {i["label_name"] for i in doc["images"]} == {"Normal", "COVID-19"}  # classes in turn


def test_explain_files_with_and_without_a_label_file(
    exported: Path, data: Path, tmp_path: Path, capsys: Any
) -> None:
    (exported / "model.json").write_text(json.dumps({"input": {"image_size": 32}}))  # as the export writes
    images = [str(data / "s000.png"), str(data / "s001.png")]
    common = ["explain", "--model", str(exported), "--images", *images, "--json"]
    argv = [*common, "--labels", str(data / "test.txt"), "--method", "integrated-gradients"]
    assert main([*argv, "--out-dir", str(tmp_path / "a")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["method"] == "integrated-gradients" and s["n"] == 2 and s["accuracy"] is not None
    assert main([*common, "--out-dir", str(tmp_path / "b")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["accuracy"] is None  # no label file: classes unknown
    doc = json.loads((tmp_path / "b" / "explain.json").read_text())
    assert {i["box_source"] for i in doc["images"]} == {"estimated"}


def test_bad_inputs_are_one_line_usage_errors(
    exported: Path, data: Path, tmp_path: Path, capsys: Any
) -> None:
    def error(*argv: str) -> str:
        assert main(["--quiet", "explain", *argv, "--out-dir", str(tmp_path / "o")]) == 2
        return _err_line(capsys)

    assert "no such model folder" in error("--model", str(tmp_path / "nope"))
    onnx_only = tmp_path / "onnx"
    onnx_only.mkdir()
    (onnx_only / "model.onnx").write_bytes(b"x")
    assert "attribution needs PyTorch" in error("--model", str(onnx_only))
    model = ["--model", str(exported), "--image-size", "32"]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert "bad.png: not an image" in error(*model, "--images", str(bad))
    assert "missing.png: no such file" in error(*model, "--images", str(tmp_path / "missing.png"))
    assert "bad.png is not listed in the label file" in error(
        *model, "--images", str(bad), "--labels", str(data / "test.txt")
    )
    assert "pass --image-size N" in error("--model", str(exported), "--data", str(data))
    assert "--n must be at least 1" in error(*model, "--n", "0")
    assert "no study database" in error("--trial", "0", "--out", str(tmp_path / "norun"))
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- a study's trial
@pytest.fixture
def run_dir(tmp_path: Path, data: Path) -> Path:
    """A search folder (study.db, artifacts/) with one completed trial of ``tiny_spec`` and stored
    weights, recorded the way `search run` records them; a second trial has no weights."""
    from search.driver.artifacts import upload_weights
    from search.driver.storage import artifact_store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = tmp_path / "run"
    run.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{run / 'study.db'}", study_name="covidnet-ct")
    study.set_user_attr("artifacts", str(run / "artifacts"))
    study.set_user_attr("run_config", {"data": [str(data)], "image_size": 32})
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(build(tiny_spec(), 3).state_dict(), weights)
    for with_weights in (True, False):
        trial = study.ask()
        for k, v in {
            "spec": tiny_spec().to_dict(),
            "arch_id": tiny_spec().arch_id,
            "status": "complete",
            "train_config": {"image_size": 32},
        }.items():
            trial.set_user_attr(k, v)
        if with_weights:
            trial.set_user_attr(
                "weights_artifact_id",
                upload_weights(artifact_store(str(run / "artifacts")), trial, str(weights)),
            )
        study.tell(trial, 1.0)
    return run


def test_explain_a_trial_stores_the_summary_with_it(run_dir: Path, capsys: Any) -> None:
    assert main(["--quiet", "explain", "--trial", "0", "--out", str(run_dir), "--n", "4"]) == 0
    out = run_dir / "explain" / "trial-0-gradcam"
    assert (out / "grid.png").is_file() and len(list((out / "overlays").glob("*.png"))) == 4
    assert "explain_summary:0" in capsys.readouterr().out
    study = optuna.load_study(study_name="covidnet-ct", storage=f"sqlite:///{run_dir / 'study.db'}")
    from search.audit import stored_summaries

    stored = stored_summaries(study, study.trials[0])
    assert list(stored) == ["gradcam"] and stored["gradcam"]["n"] == 4
    assert stored["gradcam"]["source"].startswith("4 images of the test split of")
    assert main(["--quiet", "explain", "--trial", "1", "--out", str(run_dir)]) == 2
    assert "trial 1 of study 'covidnet-ct' has no stored weights" in _err_line(capsys)


def test_report_hook_draws_a_grid_and_a_table_row(run_dir: Path, tmp_path: Path) -> None:
    from reports.explain_grid import explain_table
    from search.audit import explain_for_report, report_explainer

    storage = f"sqlite:///{run_dir / 'study.db'}"
    study = optuna.load_study(study_name="covidnet-ct", storage=storage)
    grid, summary = explain_for_report(study, study.trials[0], None, 3, tmp_path / "rep")
    assert grid.read_bytes()[:8] == PNG and summary.n == 3
    assert "explain_summary:0" not in study.user_attrs  # a report only reads

    rows = pd.DataFrame(
        [
            {
                "study": "covidnet-ct",
                "number": 0,
                "role": "Pareto, best NetScore",
                "label": "trial 0",
                "arch_id": "a",
                "test_accuracy": 91.0,
                "val_accuracy": 88.0,
            },
            {
                "study": "covidnet-ct",
                "number": 1,
                "role": "CT L (prototype)",
                "label": "CT L",
                "arch_id": "b",
                "test_accuracy": 80.0,
                "val_accuracy": 79.0,
            },
            {
                "study": "covidnet-ct:baselines",
                "number": 0,
                "role": "baseline",
                "label": "MobileNetV2",
                "arch_id": "c",
                "test_accuracy": 85.0,
                "val_accuracy": 84.0,
            },
        ]
    )
    skipped: list[str] = []
    entries = report_explainer(storage, "covidnet-ct", n=2, on_skip=skipped.append)(rows, tmp_path / "rep")
    assert [(e.number, e.role) for e in entries] == [(0, "best NetScore")]
    assert skipped == [
        "explainability audit of trial 1 skipped: trial 1 of study 'covidnet-ct' has no stored weights"
    ]
    table = explain_table(entries)
    assert entries[0].grid in table.to_html() and f"]({entries[0].grid})" in table.to_markdown()
    assert table.csv_frame()["test acc %"].tolist() == [91.0]
