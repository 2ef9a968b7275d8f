"""``search data prepare`` from the command line, and what it writes loading as a dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import main
from tests.evaluators.prepare_cases import write_labels, write_series

LABELS = "patient,class\nA1,normal\nA2,normal\nA3,normal\nB1,covid-19\nB2,covid-19\nB3,covid-19\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    for n, patient in enumerate(("A1", "A2", "A3", "B1", "B2", "B3")):
        write_series(root / "scans" / patient, 2 + n % 2)
    return root / "scans", write_labels(root / "labels.csv", LABELS)


def _argv(inputs: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return [
        "data",
        "prepare",
        "--scans",
        str(inputs[0]),
        "--labels",
        str(inputs[1]),
        "--out",
        str(out),
        *extra,
    ]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search", *argv], capture_output=True, text=True)


def test_prepare_prints_the_summary_table(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["--quiet", *_argv(inputs, out, "--seed", "4")]) == 0
    text = capsys.readouterr().out
    assert "patients / scans / slices by class and split" in text
    assert "covid-19" in text and "pneumonia" in text and "total" in text
    assert "window level -600 HU, width 1500 HU" in text
    assert f"wrote {out}: images/, train.txt, val.txt, test.txt, summary.json" in text
    d = json.loads((out / "summary.json").read_text())
    assert d["seed"] == 4 and d["counts"]["all"]["total"] == {"patients": 6, "scans": 6, "slices": 15}
    # Every cell of the table: patients / scans / slices.
    row = next(line for line in text.splitlines() if "total" in line)
    assert "6 / 6 / 15" in row


def test_prepare_json_and_flags(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = _argv(inputs, out, "--json", "--size", "32", "--split", "50,25,25", "--window-level", "-500")
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d == json.loads((out / "summary.json").read_text())
    assert d["size"] == 32 and d["split"] == {"train": 0.5, "val": 0.25, "test": 0.25}
    assert d["window"] == {"level": -500.0, "width": 1500.0}


def test_progress_bar_does_not_break_the_run(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    assert main(_argv(inputs, tmp_path / "out")) == 0
    assert (tmp_path / "out" / "train.txt").is_file()


def test_rerun_refuses_then_overwrites(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--quiet", *_argv(inputs, out)]) == 0
    r = _run(*_argv(inputs, out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"search: error: --out {out} already holds files; "
        "pass --overwrite to replace it (nothing was written)"
    ]
    assert main(["--quiet", *_argv(inputs, out, "--overwrite", "--seed", "1")]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 1


def test_bad_input_is_one_line_and_skip_bad_lists_it(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "labels.csv", LABELS + "C9,pneumonia\n")
    argv = [
        "data",
        "prepare",
        "--scans",
        str(inputs[0]),
        "--labels",
        str(labels),
        "--out",
        str(tmp_path / "o"),
    ]
    r = _run(*argv)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"search: error: 1 bad input (pass --skip-bad to leave them out): {labels} line 8: "
        "patient 'C9' has no scan"
    ]
    r = _run("--quiet", *argv, "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert "skipped (1):" in r.stdout and f"{labels} line 8: patient 'C9' has no scan" in r.stdout


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            ["--slice-step", "2", "--slices-csv", "s.csv"],
            "argument --slices-csv: not allowed with argument --slice-step",
        ),
        (["--split", "0.7,0.3"], "--split must be three numbers like 0.7,0.15,0.15, got '0.7,0.3'"),
        (["--window-width", "-5"], "--window-width must be positive, got -5"),
        (["--size", "abc"], "argument --size: invalid int value: 'abc'"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    inputs: tuple[Path, Path], tmp_path: Path, extra: list[str], needle: str
) -> None:
    r = _run(*_argv(inputs, tmp_path / "o", *extra))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_prepared_folder_loads_as_a_covidx_dataset(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    data = pytest.importorskip(
        "evaluators.data.covidx", reason="the COVIDx CT loader (evaluators/data/covidx.py) is absent"
    )
    out = tmp_path / "out"
    assert main(["--quiet", *_argv(inputs, out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    dataset = data.load_dataset([out])
    for split in ("train", "val", "test"):
        counts = summary["counts"][split]
        expected = tuple(counts[name]["slices"] for name in ("normal", "pneumonia", "covid-19"))
        assert dataset.class_counts(split) == expected, split
        for sample in dataset.split(split):
            assert sample.path.parent == out / "images" and sample.path.is_file()
            assert sample.box == (0, 0, 128, 128)


def test_prepared_folder_trains_one_epoch(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    from search.cli import COMMAND_MODULES

    if "search.commands.train" not in COMMAND_MODULES:
        pytest.skip("search train is not registered yet")
    out = tmp_path / "data"
    assert main(["--quiet", *_argv(inputs, out)]) == 0
    run = tmp_path / "run"
    argv = ["--quiet", "train", "--arch", "ct-s", "--data", str(out), "--epochs", "1", "--image-size", "32"]
    assert main([*argv, "--out", str(run), "--cache-dir", str(tmp_path / "cache")]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["epochs_run"] == 1 and (run / "weights.pt").is_file()
    counts = json.loads((out / "summary.json").read_text())["counts"]
    for split in ("train", "val", "test"):
        expected = [counts[split][name]["slices"] for name in ("normal", "pneumonia", "covid-19")]
        assert metrics["data"]["counts"][split] == expected


def test_missing_extra_is_a_usage_error(
    inputs: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "pydicom", None)
    assert main(["--quiet", *_argv(inputs, tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        "search: error: pydicom is not installed; install the [prepare] extra: pip install '.[prepare]'"
    )
    assert not (tmp_path / "o").exists()
