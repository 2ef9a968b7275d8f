"""Two kinds of failure: a user's mistake is one line and exit 2; a bug shows its traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cli import main


def _run(tmp_path: Path, *extra: str) -> list[str]:
    return ["--quiet", "run", "--out", str(tmp_path / "run"), "--trials", "1", "--epochs", "1", *extra]


def test_an_internal_key_error_is_a_bug_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.driver import study

    def broken(self: object) -> None:
        raise KeyError("val_accuracy")  # e.g. a stored attribute the driver expected

    monkeypatch.setattr(study.SearchDriver, "run", broken)
    code = main(_run(tmp_path, "--image-size", "32"))
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err and "KeyError: 'val_accuracy'" in err
    assert "internal error: this is a bug" in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--data", "{tmp}/nowhere"], "nowhere: no such data folder"),
        (["--image-size", "100"], "image_size must be a multiple of 32"),
        (["--cv-folds", "2", "--patient-regex", "(("], "patient_regex is not a valid regular expression"),
        (["--device", "gpu"], "device must be auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_a_user_input_error_is_one_line_and_exit_2(
    tmp_path: Path, extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_run(tmp_path, *[a.replace("{tmp}", str(tmp_path)) for a in extra]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in lines[0], lines


def test_an_unknown_registry_name_is_a_user_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "show", "ct-m"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search: error: unknown reference spec 'ct-m'") and "'" not in err[-1]


@pytest.mark.parametrize(
    "error",
    [
        "sqlite",  # what Optuna raises when SQLite cannot commit on a full disk
        "oserror",  # a weights file or report written to a full disk
    ],
)
def test_a_full_disk_is_said_as_such_not_as_a_commit_error(
    error: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno
    import sqlite3

    from optuna.exceptions import StorageInternalError

    import search.commands.run as run_cmd

    def full(args: object) -> int:
        if error == "sqlite":
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as e:
                raise StorageInternalError("An exception is raised during the commit.") from e
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/search/weights.pt")

    monkeypatch.setattr(run_cmd, "run_search", full)
    assert main(["run"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the disk is full" in lines[0] and "commit" not in lines[0], lines
    assert "run the same command again" in lines[0]


def test_another_storage_error_keeps_its_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from optuna.exceptions import StorageInternalError

    import search.commands.run as run_cmd

    def broken(args: object) -> int:
        raise StorageInternalError("An exception is raised during the commit.")

    monkeypatch.setattr(run_cmd, "run_search", broken)
    assert main(["run"]) == 1
    err = capsys.readouterr().err
    assert "disk is full" not in err and "during the commit" in err


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-params", "1e400"), ("--max-macs", "inf"), ("--max-macs", "nan")]
)
def test_a_budget_that_is_not_a_finite_count_is_one_line(
    tmp_path: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--out", str(tmp_path), flag, value])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in lines[0]
    assert f"argument {flag}: must be a positive finite count" in lines[0] and value in lines[0]
    assert not (tmp_path / "study.db").exists()
