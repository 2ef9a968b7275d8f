"""`search export`, `search predict` and `search evaluate --model` on a 2-trial study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from search.driver.study import pareto_trials

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

BUNDLED = Path(__file__).resolve().parents[2] / "evaluators" / "data" / "bundled" / "ct-sars-mini"
SIZE = 32
FAST = ["--epochs", "1", "--image-size", str(SIZE), "--complexity-size", "64", "--batch-size", "16"]


def _search(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "search", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real 2-trial search (the CT L prototype and one sampled candidate, one epoch at 32 px on
    the bundled data), exported with ``search export --pick pareto``."""
    root = tmp_path_factory.mktemp("export")
    out = root / "run"
    r = _search("--quiet", "run", "--trials", "2", "--out", str(out), "--study", "t", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    exp = root / "exp"
    r = _search(
        "export", "--out", str(out), "--study", "t", "--pick", "pareto", "--export-dir", str(exp),
        "--latency-repeats", "3", "--latency-warmup", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return {"url": f"sqlite:///{out / 'study.db'}", "out": out, "exp": exp, "stdout": r.stdout, "root": root}


def _members(run: dict[str, Any]) -> list[tuple[Any, Path]]:
    study = optuna.load_study(study_name="t", storage=run["url"])
    front = pareto_trials(study.get_trials(deepcopy=False))
    return [(t, run["exp"] / f"trial-{t.number}-{t.user_attrs['arch_id']}") for t in front]


def _images(n: int = 6) -> list[str]:
    return [str(p) for p in sorted((BUNDLED / "images").glob("*.png"))[:: 215 // n][:n]]


# ----------------------------------------------------------------------------- export
def test_pareto_export_writes_verified_files_and_card(run: dict[str, Any]) -> None:
    members = _members(run)
    assert members
    folders = sorted(p.name for p in run["exp"].iterdir() if p.is_dir())
    assert folders == sorted(d.name for _, d in members)  # one folder per Pareto member, nothing else
    assert not [p for p in run["exp"].iterdir() if p.name.startswith(".")]  # no temporary folder left
    index = json.loads((run["exp"] / "pareto.json").read_text())
    assert [e["trial"] for e in index] == sorted(t.number for t, _ in members)
    for trial, folder in members:
        assert sorted(p.name for p in folder.iterdir()) == [
            "model.json",
            "model.onnx",
            "spec.json",
            "weights.pt",
        ]
        card = json.loads((folder / "model.json").read_text())
        a = trial.user_attrs
        assert card["arch_id"] == a["arch_id"] and card["trial"] == trial.number
        assert (card["params"], card["macs"], card["flops"]) == (a["params"], a["macs"], a["flops"])
        assert card["netscore"] == pytest.approx(a["netscore"])
        assert card["metrics"]["val"] == a["val_metrics"] and card["metrics"]["test"] == a["test_metrics"]
        assert card["metrics"]["val"]["accuracy_ci"] is not None
        assert card["data"]["data_hash"] == a["data_hash"] and card["seed"] == 0
        assert card["training"]["config"]["image_size"] == SIZE
        assert {"torch", "onnx", "onnxruntime", "optuna", "python"} <= set(card["versions"])
        assert card["exported_at"].endswith("+00:00")
        # parity on real images, within 1e-4 + 1e-5 x |logit| and the same classes
        parity = card["parity"]
        assert parity["passed"] and parity["same_class"] and parity["images"] == 16
        assert parity["atol"] == 1e-4 and parity["rtol"] == 1e-5
        assert 0 <= parity["max_abs_diff"] <= 1e-4 + 1e-5 * parity["max_abs_logit"]
        assert "val split" in parity["source"]
        # latency: both runtimes at batch 1 and 8
        lat = card["latency"]
        got = {(s["runtime"], s["batch_size"]): s for s in lat["stats"]}
        assert set(got) == {(r, b) for r in ("onnxruntime", "torch") for b in (1, 8)}
        for s in got.values():
            assert 0 < s["median_ms"] <= s["p90_ms"] and s["repeats"] == 3
        assert lat["input_size"] == [3, SIZE, SIZE] and lat["warmup"] == 1
        assert lat["onnxruntime_over_torch"]["1"] == pytest.approx(
            got["onnxruntime", 1]["median_ms"] / got["torch", 1]["median_ms"]
        )
        # the ONNX file: checker, opset, dynamic batch, metadata
        proto = onnx.load(str(folder / "model.onnx"))
        onnx.checker.check_model(proto)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["covidnet_nas.image_size"] == str(SIZE)
        assert meta["covidnet_nas.arch_id"] == a["arch_id"]
        # weights.pt is the stored state dict; spec.json the stored spec
        from search.driver.artifacts import load_weights

        study = optuna.load_study(study_name="t", storage=run["url"])
        stored = load_weights(study, trial)
        saved = torch.load(folder / "weights.pt", weights_only=True)
        assert saved.keys() == stored.keys() and all(torch.equal(saved[k], stored[k]) for k in saved)
        assert json.loads((folder / "spec.json").read_text()) == a["spec"]
    assert "ONNX parity" in run["stdout"] and "PyTorch eager" in run["stdout"]


def test_onnx_runs_at_other_batch_sizes(run: dict[str, Any]) -> None:
    from evaluators.inference import onnx_classifier

    _, folder = _members(run)[0]
    clf = onnx_classifier(folder / "model.onnx")
    for n in (1, 3, 8):
        assert clf.logits(np.zeros((n, 3, SIZE, SIZE), np.float32)).shape == (n, 3)


def test_single_pick_and_usage_errors(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.cli import main

    study = optuna.load_study(study_name="t", storage=run["url"])
    best = max(study.trials, key=lambda t: t.user_attrs["netscore"])
    dest = tmp_path / "best"
    args = [
        "export",
        "--out",
        str(run["out"]),
        "--study",
        "t",
        "--export-dir",
        str(dest),
        "--format",
        "onnx,json",
    ]
    assert main([*args, "--pick", "best-netscore", "--latency-repeats", "0"]) == 0
    card = json.loads((dest / "model.json").read_text())
    assert card["trial"] == best.number and card["latency"] is None
    assert sorted(p.name for p in dest.iterdir()) == ["model.json", "model.onnx", "spec.json"]
    capsys.readouterr()

    def error(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        return err

    assert "already exist" in error(*args, "--trial", str(best.number))  # the destination exists
    assert "no trial 99" in error(*args, "--trial", "99", "--overwrite")
    assert "no study database" in error("export", "--out", str(tmp_path / "nothing"), "--pick", "pareto")
    assert "tflite" in error(*args, "--pick", "pareto", "--format", "onnx,tflite")
    assert "no study named 'x'" in error("export", "--out", str(run["out"]), "--study", "x", "--trial", "0")


def test_the_old_spelling_run_and_out_still_exports_and_says_so(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` names the run folder as in search run and search report; ``--run RUN --out DEST``
    (what scripts of earlier versions say) still means what it meant."""
    from search.cli import main

    dest = tmp_path / "old"
    old = ["export", "--run", str(run["out"]), "--study", "t", "--out", str(dest), "--format", "json"]
    assert main([*old, "--pick", "best-netscore", "--latency-repeats", "0"]) == 0
    assert (dest / "model.json").is_file()
    assert "--run is the old spelling" in capsys.readouterr().err
    both = ["export", "--run", str(run["out"]), "--out", str(dest), "--export-dir", str(dest)]
    assert main([*both, "--pick", "best-netscore"]) == 2
    assert "give --out RUN --export-dir DEST" in capsys.readouterr().err


def test_failed_parity_leaves_no_folder(run: dict[str, Any], tmp_path: Path) -> None:
    from search.export.bundle import ExportOptions, export_trial
    from search.export.onnx import ExportFailed, study_images

    study = optuna.load_study(study_name="t", storage=run["url"])
    trial = study.trials[0]
    images, _ = study_images(None, SIZE, 3, count=4)
    dest = tmp_path / "strict"
    with pytest.raises(ExportFailed, match="differs from PyTorch"):
        export_trial(study, trial, dest, images, ExportOptions(atol=1e-30, rtol=0.0, latency_repeats=0))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin


# ----------------------------------------------------------------------------- predict
def test_predict_gives_the_pytorch_models_classes(run: dict[str, Any]) -> None:
    from evaluators.inference import body_box, crop_resize, load_gray, softmax, to_input
    from search.export.load import build_from

    _, folder = _members(run)[0]
    files = _images(8)
    r = _search("predict", "--json", "--model", str(folder / "model.onnx"), *files)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    # the PyTorch model from spec.json + weights.pt, on the same crops
    model = build_from(json.loads((folder / "spec.json").read_text()))
    model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    model.eval()
    x = to_input(np.stack([crop_resize(f, body_box(load_gray(f)), SIZE) for f in files]), 3)
    with torch.no_grad():
        probs = softmax(model(torch.from_numpy(x)).numpy())
    assert [g["file"] for g in got] == files
    assert [g["label"] for g in got] == probs.argmax(1).tolist()
    for g, p in zip(got, probs):
        assert list(g["probabilities"].values()) == pytest.approx(
            p.tolist(), abs=1e-4
        )  # the export's parity bound
        # the bundled data names its classes (classes.txt): CT-SARS's class 0 is not "Normal"
        assert g["class"] == ["non-COVID", "Pneumonia", "COVID-19"][g["label"]]
    # the same through PyTorch from spec.json + weights.pt
    r = _search("predict", "--json", "--model", str(folder / "spec.json"), *files)
    assert r.returncode == 0, r.stderr
    assert [g["label"] for g in json.loads(r.stdout)] == [g["label"] for g in got]


def test_predict_names_bad_files_and_predicts_the_others(run: dict[str, Any], tmp_path: Path) -> None:
    _, folder = _members(run)[0]
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(Path(_images(1)[0]).read_bytes()[:200])
    good = _images(2)
    files = [good[0], str(text), str(tmp_path / "missing.png"), str(truncated), good[1]]
    r = _search("predict", "--json", "--model", str(folder), *files)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert [o["file"] for o in out] == files
    assert "label" in out[0] and "label" in out[4]
    for o, bad in zip(out[1:4], files[1:4]):
        assert bad in o["error"] and "label" not in o
        assert bad in r.stderr
    assert "not an image" in out[1]["error"] and "no such file" in out[2]["error"]
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_model_reproduces_the_stored_metrics(
    run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from search.cli import main

    for trial, folder in _members(run):
        for split, model in (("test", folder / "model.onnx"), ("val", folder)):
            capsys.readouterr()
            assert main(["evaluate", "--model", str(model), "--split", split, "--json"]) == 0
            got = json.loads(capsys.readouterr().out)
            if split == "val":
                assert got == trial.user_attrs["val_metrics"]  # confusion matrix, intervals, all of it
            else:  # search trials keep the test split for the final stage; evaluate reads it
                assert trial.user_attrs["test_metrics"] is None and got["n"] == 50
    capsys.readouterr()
    assert main(["evaluate", "--model", str(folder), "--arch", "ct-s"]) == 2
    assert "--model replaces --arch" in capsys.readouterr().err
    assert main(["evaluate", "--split", "val"]) == 2
    assert "give --arch and --weights, or --model" in capsys.readouterr().err
