"""``search train --cv-folds K --repeats R --patient-regex RX --patients FILE`` on the bundled data."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators.data.covidx import load_dataset
from search.cli import main

FAST = ["--arch", "ct-s", "--epochs", "1", "--image-size", "32"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path / "cache"))


def _metrics(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def _without_timings(m: dict[str, Any]) -> dict[str, Any]:
    m = dict(m)
    m.pop("wall_time_s")
    m["history"] = [{k: v for k, v in h.items() if k not in ("seconds", "cpu_seconds")} for h in m["history"]]
    return m


def test_one_fold_one_seed_writes_what_plain_training_writes(tmp_path: Path) -> None:
    plain, explicit = tmp_path / "plain", tmp_path / "explicit"
    assert main(["--quiet", "train", *FAST, "--out", str(plain)]) == 0
    assert main(["--quiet", "train", *FAST, "--cv-folds", "1", "--repeats", "1", "--out", str(explicit)]) == 0
    for out in (plain, explicit):
        assert sorted(p.name for p in out.iterdir()) == [
            "config.yaml",
            "metrics.json",
            "spec.json",
            "weights.pt",
        ]
    a, b = _metrics(plain), _metrics(explicit)
    assert "val_accuracy_uncertainty" not in b and "runs" not in b and "cv" not in b
    assert _without_timings(a) == _without_timings(b)
    assert (plain / "config.yaml").read_text() == (explicit / "config.yaml").read_text()
    wa = torch.load(plain / "weights.pt", weights_only=True)
    wb = torch.load(explicit / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_folds_and_seeds_store_every_run_and_the_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cv"
    assert main(["train", *FAST, "--cv-folds", "3", "--repeats", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    m = _metrics(out)
    u = m["val_accuracy_uncertainty"]
    runs = m["runs"]
    assert [(r["fold"], r["seed"]) for r in runs] == [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (3, 1)]
    assert u["values"] == [r["val_accuracy"] for r in runs] and len(u["values"]) == 6
    assert u["mean"] == pytest.approx(sum(u["values"]) / 6) and m["val_accuracy"] == u["mean"]
    assert u["std"] > 0 and u["ci"][0] < u["mean"] < u["ci"][1] and u["method"] == "t over 6 runs"
    ds = load_dataset()
    n = len(ds.split("train")) + len(ds.split("val"))
    assert sum(m["cv"]["fold_sizes"]) == n and len(m["cv"]["fold_sizes"]) == 3
    assert m["cv"]["grouping"]["from_csv"] == n  # the bundled patients.csv
    assert m["test"] is None and m["val"]["n"] == 2 * n  # test unread; out-of-fold predictions pooled
    assert m["weights"] == {"run": 1, "fold": 1, "seed": 0, "val_accuracy": runs[0]["val_accuracy"]}
    assert m["history"] == runs[0]["history"] and m["status"] == "complete"
    state = torch.load(out / "weights.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    # the output: every run's accuracy, mean +- std with the interval, which weights were kept
    text = " ".join(printed.out.split())
    for v in u["values"]:
        assert f"{v:.2f}" in text
    assert f"{u['mean']:.2f} +- {u['std']:.2f} % over 6 runs" in text
    assert f"95 % interval [{u['ci'][0]:.2f}, {u['ci'][1]:.2f}]" in text
    assert "weights.pt (run 1: fold 1, seed 0" in text
    err = " ".join(printed.err.split())
    assert "run 6/6 (fold 3, seed 1)" in err and "3 patient-grouped folds" in err


def test_repeats_without_folds_keep_the_test_split_of_the_first_run(tmp_path: Path) -> None:
    plain, rep = tmp_path / "plain", tmp_path / "rep"
    assert main(["--quiet", "train", *FAST, "--out", str(plain)]) == 0
    assert main(["--quiet", "train", *FAST, "--repeats", "2", "--out", str(rep)]) == 0
    a, b = _metrics(plain), _metrics(rep)
    assert b["test"] == a["test"]  # run 1 is the plain run; weights.pt are its weights
    assert b["runs"][0]["val_accuracy"] == a["val"]["accuracy"]
    assert [r["seed"] for r in b["runs"]] == [0, 1] and b["cv"]["folds"] == 1
    wa = torch.load(plain / "weights.pt", weights_only=True)
    wb = torch.load(rep / "weights.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_patients_file_overrides_the_regex_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = load_dataset()
    samples = [*ds.split("train"), *ds.split("val")]
    # three "patients" of very different sizes: the folds must be exactly these groups
    sizes = {"P1": 20, "P2": 50}
    names = [s.filename for s in samples]
    owner = {name: "P1" if i < sizes["P1"] else "P2" if i < 70 else "P3" for i, name in enumerate(names)}
    f = tmp_path / "who.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "patient"])
        w.writerows(owner.items())
    out = tmp_path / "run"
    argv = ["--quiet", "train", *FAST, "--cv-folds", "3", "--patients", str(f), "--out", str(out)]
    # a regex that would find no patient at all: the file wins
    assert main([*argv, "--patient-regex", r"^(NOPE\d+)_"]) == 0
    assert capsys.readouterr().err == ""
    m = _metrics(out)
    g = m["cv"]["grouping"]
    assert (g["patients"], g["from_csv"], g["from_regex"], g["alone"]) == (3, len(samples), 0, 0)
    assert sorted(m["cv"]["fold_sizes"]) == sorted([20, 50, len(samples) - 70])
    assert m["cv"]["patients_csv"] == str(f) and m["cv"]["patient_regex"] == r"^(NOPE\d+)_"


def test_images_without_a_patient_id_are_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "few.csv"
    ds = load_dataset()
    first = ds.split("train")[0].filename
    f.write_text(f"filename,patient\n{first},P1\n")
    out = tmp_path / "run"
    argv = ["--quiet", "train", *FAST, "--cv-folds", "2", "--patients", str(f), "--patient-regex", "^(NOPE)_"]
    assert main([*argv, "--out", str(out)]) == 0
    n = len(ds.split("train")) + len(ds.split("val"))
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert f"warning: {n - 1} of {n} images have no patient id" in err
    assert _metrics(out)["cv"]["grouping"]["alone"] == n - 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--cv-folds", "0"], "--cv-folds must be an integer of at least 1, got 0"),
        (["--repeats", "-1"], "--repeats must be an integer of at least 1, got -1"),
        (["--cv-folds", "2", "--patients", "{tmp}/nowhere.csv"], "nowhere.csv: no such patients file"),
        (["--cv-folds", "500"], "--cv-folds 500 needs at least 500 patients in train+val, found"),
        (["--cv-folds", "2", "--patient-regex", "(("], "--patient-regex is not a valid regular expression"),
    ],
)
def test_usage_errors_are_one_line_and_write_nothing(
    tmp_path: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["--quiet", "train", *FAST, *argv, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not out.exists()


def test_a_failed_run_exits_1_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["--quiet", "train", "--arch", "ct-s", "--lr", "1e30", "--epochs", "2", "--image-size", "32"]
    assert main([*argv, "--cv-folds", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "run 1 (fold 1, seed 0) failed" in err and "the training loss became" in err
    m = _metrics(out)
    assert m["status"] == "failed" and m["cv"]["folds"] == 2 and not (out / "weights.pt").exists()
