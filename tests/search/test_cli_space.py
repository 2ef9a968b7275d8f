from __future__ import annotations

import json
import subprocess
import sys

import pytest

from search.cli import main


def test_show_json_reports_reference_complexity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "show", "ct-s", "--json", "--image-size", "512"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert abs(d["params"] / 447_570 - 1) <= 0.03
    assert abs(d["macs"] / 0.97e9 - 1) <= 0.03
    assert d["flops"] == 2 * d["macs"]
    assert d["arch_id"] and [s["stage"] for s in d["stages"]] == ["stem", "s1", "s2", "s3", "s4", "head"]
    assert sum(s["params"] for s in d["stages"]) == d["params"]


def test_show_table_and_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "show", "ct-l", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "arch_id" in out and "s4" in out
    assert main(["space", "sample", "--seed", "5", "--json"]) == 0
    first = capsys.readouterr().out
    assert main(["space", "sample", "--seed", "5", "--json"]) == 0
    assert capsys.readouterr().out == first
    assert json.loads(first)["stages"]


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "list", "--json", "--image-size", "64"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["ct-l", "ct-s"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["space", "show", "ct-m"], "unknown reference spec 'ct-m'; did you mean"),
        (["space", "show", "ct-l", "--image-size", "100"], "--image-size must be a multiple of 32"),
        (["space", "show", "nope.json"], "nope.json: no such spec file"),
        (["space", "frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, "-m", "search", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "search", "--debug", "space", "show", "ct-m"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_space_show_prints_the_choices_and_the_sampled_complexity() -> None:
    import json

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "search",
            "space",
            "show",
            "--space",
            "prototype",
            "--json",
            "--samples",
            "300",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["space"] == "prototype" and d["samples"] == 300 and d["references"]["ct-l"]["inside"]
    assert d["macs"]["p50"] <= d["references"]["ct-l"]["macs"] / 2
    assert d["macs"]["p0"] <= d["macs"]["p50"] <= d["macs"]["p100"]
    labels = [c["label"] for c in d["choices"]]
    assert labels[:3] == ["stem_width", "s1_depth", "s1_width"]
    r = subprocess.run(
        [sys.executable, "-m", "search", "space", "show", "--space", "wider"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "unknown search space 'wider'; did you mean 'wide'?" in r.stderr
