from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.cli import main
from tests.conftest import shared_dataset
from tests.evaluators.test_data import write_dataset


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path / "cache"))


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(
        [sys.executable, "-m", "search", *argv], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_train_then_evaluate_reproduces_the_test_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["--quiet", "train", "--arch", "ct-s", "--epochs", "1", "--image-size", "32", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "confusion matrix" in printed.out and "ct-s on test" in printed.out and printed.err == ""
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "spec.json", "weights.pt"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["config"]["image_size"] == 32
    assert metrics["data"]["sources"]["ct-sars-mini"]["counts"]["test"] == [24, 0, 26]
    assert metrics["data"]["given"] is None and len(metrics["data"]["split_hash"]) == 64
    assert metrics["test"]["per_class"]["Pneumonia"]["sensitivity"] is None
    state = torch.load(out / "weights.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())

    assert (
        main(["evaluate", "--arch", str(out / "spec.json"), "--weights", str(out / "weights.pt"), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == metrics["test"]
    # the table form, on another split, with the image size given explicitly
    assert main(["evaluate", "--arch", "ct-s", "--weights", str(out / "weights.pt"), "--split", "val",
                 "--image-size", "32"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "confusion matrix" in table and "n/a" in table and "ct-s on val" in table


def test_two_sources_report_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_dataset(tmp_path / "north")
    b = write_dataset(tmp_path / "south", size=(64, 64))
    out = tmp_path / "run"
    argv = ["--quiet", "train", "--arch", "ct-s", "--data", str(a), "--data", str(b), "--epochs", "1",
            "--image-size", "32", "--out", str(out), "--no-augment", "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "north" in table and "south" in table and "all" in table
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["test"]["per_source"]) == {"north", "south"}
    assert set(m["val"]["per_source"]) == {"north", "south"}
    assert m["config"]["augment"] is False and m["config"]["seed"] == 3
    assert m["data"]["given"] == [str(a), str(b)]


def test_config_file_then_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nlr: 1e-3\ncosine: true\nimage_size: 64\n")
    out = tmp_path / "run"
    argv = [
        "train",
        "--arch",
        "ct-s",
        "--config",
        str(cfg),
        "--image-size",
        "32",
        "--out",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout is the JSON alone, progress on stderr
    assert printed == json.loads((out / "metrics.json").read_text())
    c = printed["config"]
    assert (c["epochs"], c["lr"], c["cosine"], c["image_size"]) == (1, 1e-3, True, 32)
    assert "lr: 0.001" in (out / "config.yaml").read_text()


def test_progress_bar_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["train", "--arch", "ct-s", "--epochs", "1", "--image-size", "32", "--out", str(tmp_path)]) == 0
    )
    printed = capsys.readouterr()
    assert "epoch 1/1: loss" in printed.err and "wrote" in printed.out
    assert main(["--quiet", "train", "--arch", "ct-s", "--epochs", "1", "--image-size", "32",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    assert capsys.readouterr().err == ""


def bad_data(tmp_path: Path) -> Path:
    root = write_dataset(tmp_path / "bad")
    with (root / "train.txt").open("a") as f:
        f.write("train_0.png 5 0 0 48 40\n")
    return root


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--arch", "ct-s", "--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["train", "--arch", "ct-s", "--image-size", "100"], "--image-size must be a multiple of 32"),
        (["train", "--arch", "ct-s", "--lr", "-1"], "--lr must be positive, got -1.0"),
        (["train", "--arch", "ct-s", "--device", "gpu"], "--device must be auto, cpu, cuda"),
        (["train", "--arch", "ct-m"], "unknown reference spec 'ct-m'"),
        (["train", "--arch", "ct-s", "--data", "{tmp}/nowhere"], "nowhere: no such data folder"),
        (["train", "--arch", "ct-s", "--data", "{bad}"], "train.txt line 7: class must be 0, 1 or 2, got 5"),
        (
            ["train", "--arch", "ct-s", "--config", "{tmp}/c.yaml"],
            "c.yaml: unknown key 'epoch'; did you mean 'epochs'?",
        ),
        (["evaluate", "--arch", "ct-s", "--weights", "{tmp}/w.pt"], "w.pt: no such weights file"),
        (
            ["evaluate", "--arch", "ct-s", "--weights", "{tmp}/junk.pt"],
            "junk.pt: not a weights file torch can load",
        ),
        (["evaluate", "--arch", "ct-l", "--weights", "{tmp}/tiny.pt"], "tiny.pt does not fit ct-l"),
        (["evaluate", "--arch", "ct-s", "--weights", "{tmp}/ok.pt"], "--image-size is needed"),
        (
            ["evaluate", "--arch", "ct-s", "--weights", "{tmp}/ok.pt", "--image-size", "48"],
            "--image-size must",
        ),
    ],
)
def test_usage_and_data_errors_are_one_line_exit_2(
    tmp_path: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text("epoch: 3\n")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    torch.save({"w": torch.zeros(1)}, tmp_path / "tiny.pt")
    if "{tmp}/ok.pt" in argv:
        from space import build, get_reference

        torch.save(build(get_reference("ct-s")).state_dict(), tmp_path / "ok.pt")
    subs = {"{tmp}": str(tmp_path), "{bad}": str(bad_data(tmp_path))}
    argv = [subs.get(a, a.replace("{tmp}", str(tmp_path))) for a in argv]
    assert main(["--quiet", *argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert lines[0].startswith("search: error: ") and "Traceback" not in err


def test_bad_data_in_a_fresh_process(tmp_path: Path) -> None:
    """What a user sees: one line, exit code 2, no traceback."""
    r = run_cli("train", "--arch", "ct-s", "--data", str(bad_data(tmp_path)))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"search: error: {tmp_path / 'bad' / 'train.txt'} line 7: class must be 0, 1 or 2, got 5; "
        "--skip-bad skips bad lines"
    ]


def test_skip_bad_lists_and_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = bad_data(tmp_path)
    assert main(["--quiet", "train", "--arch", "ct-s", "--data", str(root), "--skip-bad", "--epochs", "1",
                 "--image-size", "32", "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "skipped " in err and "train.txt line 7: class must be 0, 1 or 2, got 5" in err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(m["data"]["skipped"]) == 1


def test_failed_run_exits_1_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quiet", "train", "--arch", "ct-s", "--lr", "1e30", "--epochs", "2", "--image-size", "32",
                 "--out", str(tmp_path / "run")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "the training loss became" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_done_when_commands_on_the_shared_data(tmp_path: Path) -> None:
    """The issue's acceptance commands, on ../shared/data (skipped where it is absent)."""
    real, sars = shared_dataset("ct-real"), shared_dataset("ct-sars")
    out = tmp_path / "real"
    r = run_cli("train", "--arch", "ct-s", "--data", str(real), "--epochs", "2", "--image-size", "64",
                "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_cli("evaluate", "--arch", str(out / "spec.json"), "--weights", str(out / "weights.pt"),
                "--data", str(real), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads((out / "metrics.json").read_text())["test"]
    out2 = tmp_path / "both"
    r = run_cli("train", "--arch", "ct-s", "--data", str(sars), "--data", str(real), "--epochs", "1",
                "--image-size", "64", "--out", str(out2))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ct-sars" in r.stdout and "ct-real" in r.stdout
    assert set(json.loads((out2 / "metrics.json").read_text())["test"]["per_source"]) == {
        "ct-sars",
        "ct-real",
    }
