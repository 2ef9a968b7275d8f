"""The command line has no surprises: typos get a suggestion from the right subcommand, flags are
never abbreviated, and ``search --version`` prints the version."""

from __future__ import annotations

import pytest

import search
from search.cli import main


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_a_typo_gets_the_closest_flag_and_the_subcommands_help(capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage_error(["run", "--trails", "3"], capsys)
    assert "did you mean --trials?" in line and "search run --help" in line
    assert line.startswith("search: error: unrecognized arguments: --trails 3")


def test_a_prefix_of_a_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage_error(["run", "--epoch", "2"], capsys)
    assert "unrecognized arguments: --epoch 2" in line and "did you mean --epochs?" in line


def test_nested_subcommands_name_themselves_and_errors_share_one_prefix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "(see search space show --help)" in _usage_error(["space", "show", "--nope"], capsys)
    line = _usage_error(["run", "--trials"], capsys)
    assert line.startswith("search: error: argument --trials") and "search run --help" in line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"search (covidnet-nas) {search.__version__}"


def test_follow_up_commands_are_printed_as_they_can_be_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    import sys

    from search.console import invocation

    monkeypatch.setattr(sys, "argv", ["/some/venv/bin/search", "run"])
    monkeypatch.setenv("PATH", "/usr/bin")  # the environment is not activated
    assert invocation() == "/some/venv/bin/search"
    monkeypatch.setattr(sys, "argv", ["/x/search/__main__.py", "run"])
    assert invocation() == f"{sys.executable} -m search"


def test_a_run_refused_at_start_leaves_no_config_behind(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    out = Path(str(tmp_path)) / "run"
    missing = Path(str(tmp_path)) / "no-such-data"
    assert main(["--quiet", "run", "--out", str(out), "--data", str(missing), "--trials", "1"]) == 2
    assert "no-such-data" in capsys.readouterr().err
    assert not (out / "config.yaml").exists() and not out.exists()


def test_the_explainability_audit_is_opt_in() -> None:
    from search.cli import build_parser

    assert build_parser().parse_args(["report"]).explain == 0
