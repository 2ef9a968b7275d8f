"""Parts of export and inference: body crop, trial picks, atomic writes, loading, baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from evaluators.inference import body_box, erode, largest_region_box, otsu_threshold
from search.errors import UsageError
from search.export.bundle import pick_trials, write_atomically
from search.export.onnx import Parity


# ----------------------------------------------------------------------------- body crop
def _slice() -> np.ndarray:
    """A synthetic 8-bit slice: a body (ellipse) with two dark lungs, a thin CT table below it,
    and a bright speck in a corner."""
    h, w = 200, 240
    y, x = np.mgrid[:h, :w]
    img = np.zeros((h, w), np.uint8)
    body = ((x - 120) / 90.0) ** 2 + ((y - 90) / 60.0) ** 2 <= 1  # x 30..210, y 30..150
    img[body] = 150
    for cx in (85, 155):
        img[((x - cx) / 25.0) ** 2 + ((y - 90) / 35.0) ** 2 <= 1] = 20
    img[165:167, 10:230] = 200  # the table: 2 px thin, erased by the erosion
    img[5:9, 5:9] = 255  # a speck
    return img


def test_body_box_finds_the_body_not_the_table() -> None:
    x0, y0, x1, y1 = body_box(_slice())
    # the body spans x 30..210, y 30..150; the 7x7 erosion shrinks it by 3 px a side
    assert abs(x0 - 33) <= 2 and abs(x1 - 208) <= 2
    assert abs(y0 - 33) <= 2 and abs(y1 - 148) <= 2


def test_body_box_of_a_blank_image_is_the_whole_image() -> None:
    assert body_box(np.zeros((20, 30), np.uint8)) == (0, 0, 30, 20)


def test_largest_region_and_erosion_match_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.uniform(0.1, 0.7)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        got = largest_region_box(mask)
        if n == 0:
            assert got is None
            continue
        sizes = np.bincount(labels.ravel())[1:]
        assert got is not None and got[1] == sizes.max()
        boxes = []
        for k in np.flatnonzero(sizes == sizes.max()) + 1:
            ys, xs = np.nonzero(labels == k)
            boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        assert got[0] in boxes
        assert (erode(mask, 3) == ndimage.binary_erosion(mask, np.ones((3, 3)), border_value=1)).all()


def test_otsu_splits_two_modes() -> None:
    values = np.array([50] * 100 + [60] * 50 + [200] * 100 + [190] * 30, np.uint8)
    t = otsu_threshold(values)
    assert 60 <= t < 190


# ----------------------------------------------------------------------------- picks
def _trial(number: int, acc: float, params: int, macs: int, ns: float, status: str = "complete") -> Any:
    t = create_trial(
        values=[acc, params, macs],
        state=TrialState.COMPLETE,
        user_attrs={"status": status, "val_accuracy": acc, "params": params, "macs": macs, "netscore": ns},
    )
    t.number = number
    return t


def test_pick_trials() -> None:
    trials = [
        _trial(0, 90.0, 1000, 500, 70.0),
        _trial(1, 80.0, 100, 50, 75.0),
        _trial(2, 95.0, 2000, 900, 60.0),
        _trial(3, 99.0, 10, 10, 99.0, status="infeasible"),  # placeholders: never picked
        _trial(4, 85.0, 1500, 800, 65.0),  # dominated by trial 0
    ]
    assert [t.number for t in pick_trials(trials, "best-netscore")] == [1]
    assert [t.number for t in pick_trials(trials, "most-accurate")] == [2]
    assert [t.number for t in pick_trials(trials, "smallest-macs")] == [1]
    assert [t.number for t in pick_trials(trials, "pareto")] == [0, 1, 2]
    with pytest.raises(UsageError, match="no completed, feasible trial"):
        pick_trials(trials[3:4], "pareto")


# ----------------------------------------------------------------------------- writing
def test_write_atomically(tmp_path: Path) -> None:
    out = tmp_path / "model"

    def fails(tmp: Path) -> None:
        (tmp / "model.onnx").write_text("half")
        raise RuntimeError("checker failed")

    with pytest.raises(RuntimeError):
        write_atomically(out, fails)
    assert list(tmp_path.iterdir()) == []
    assert write_atomically(out, lambda tmp: (tmp / "a").write_text("1")) == 1
    with pytest.raises(UsageError, match="already exists"):
        write_atomically(out, lambda tmp: None)
    write_atomically(out, lambda tmp: (tmp / "b").write_text("2"), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in out.iterdir()] == ["b"]


def test_parity_failure_explains_large_logits() -> None:
    ok = Parity(5e-5, 1.0, -5e-5, 0, 4, 1e-4)
    assert ok.passed and ok.failure() == ""
    big = Parity(3e-4, 560.0, 2e-4, 0, 4, 1e-4)
    assert not big.passed and "--rtol 1e-5" in big.failure()
    assert "1 of 4 predicted classes differ" in Parity(1e-6, 2.0, -1e-4, 1, 4, 1e-4).failure()


def test_load_classifier_errors(tmp_path: Path) -> None:
    from search.export.load import load_classifier
    from space import get_reference

    with pytest.raises(UsageError, match="no such model"):
        load_classifier(tmp_path / "nope.onnx")
    with pytest.raises(UsageError, match="no model.onnx or spec.json"):
        load_classifier(tmp_path)
    spec = tmp_path / "spec.json"
    spec.write_text(get_reference("ct-s").to_json())
    with pytest.raises(UsageError, match="no such weights file"):
        load_classifier(spec)
    from space import build

    torch.save(build(get_reference("ct-s")).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(UsageError, match="--image-size"):
        load_classifier(spec)
    clf = load_classifier(spec, image_size=32)
    assert clf.runtime == "torch" and clf.logits(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 3)
    torch.save(build(get_reference("ct-l")).state_dict(), tmp_path / "other.pt")
    with pytest.raises(UsageError, match="does not fit"):
        load_classifier(spec, tmp_path / "other.pt", image_size=32)


# ----------------------------------------------------------------------------- baselines
def test_export_a_trained_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    from baselines import create_baseline
    from evaluators import profile
    from search.cli import main
    from search.driver.artifacts import upload_weights
    from search.driver.baselines import open_baselines_study
    from search.driver.config import RunConfig
    from search.driver.storage import artifact_store, open_storage

    config = RunConfig.make(out=str(tmp_path / "run"), study="t", image_size=32)
    storage = open_storage(config.storage_url)
    search_study = optuna.create_study(storage=storage, study_name="t", directions=["maximize"])
    search_study.set_user_attr("run_config", config.to_dict())
    study = open_baselines_study(storage, "t", str(tmp_path / "artifacts"))
    study.set_user_attr("artifacts", config.artifacts_dir)
    torch.manual_seed(0)
    model = create_baseline("squeezenet1_1", num_classes=3, in_chans=3)
    prof = profile(model, (3, 64, 64))
    trial = study.ask()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    for k, v in {
        "kind": "baseline",
        "baseline": "squeezenet1_1",
        "display_name": "SqueezeNet 1.1",
        "builder": {"baseline": "squeezenet1_1", "num_classes": 3, "in_chans": 3},
        "arch_id": "squeezenet1_1",
        "params": prof.params,
        "macs": prof.macs,
        "flops": prof.flops,
        "val_accuracy": 50.0,
        "netscore": 40.0,
        "train_config": {"image_size": 32, "seed": 0},
        "weights_artifact_id": upload_weights(artifact_store(config.artifacts_dir), trial, str(weights)),
        "status": "complete",
    }.items():
        trial.set_user_attr(k, v)
    study.tell(trial, [50.0, float(prof.params), float(prof.macs)])

    out = tmp_path / "exp"
    base = ["export", "--out", config.out, "--study", "t", "--export-dir", str(out), "--latency-repeats", "1"]
    assert main([*base, "--baseline", "squeezenet1_1"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["kind"] == "baseline" and card["name"] == "SqueezeNet 1.1"
    assert card["parity"]["passed"] and card["parity"]["max_abs_diff"] <= 1e-4
    assert json.loads((out / "spec.json").read_text())["baseline"] == "squeezenet1_1"
    # the PyTorch path rebuilds it from spec.json, with the size from model.json
    from search.export.load import load_classifier

    clf = load_classifier(out, runtime="torch")
    assert clf.runtime == "torch" and clf.image_size == 32
    capsys.readouterr()
    assert main([*base, "--overwrite", "--baseline", "mobilenet_v2"]) == 2
    assert "trained: squeezenet1_1" in capsys.readouterr().err


def test_a_missing_extra_names_it() -> None:
    from evaluators.extras import MissingExtraError
    from evaluators.inference import require

    with pytest.raises(MissingExtraError, match=r"install the \[onnx\] extra: pip install '\.\[onnx\]'"):
        require("covidnet_nas_no_such_module")
    assert require("numpy") is np


def test_predict_without_onnxruntime_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from search.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    assert main(["predict", "--model", str(model), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "install the [onnx] extra: pip install '.[onnx]'" in err and len(err.strip().splitlines()) == 1
