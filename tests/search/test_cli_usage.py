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
