"""Fixtures of the report tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from reports.build import build_report
from tests.reports.studies import fill_study


@pytest.fixture
def filled(tmp_path: Path) -> str:
    """The storage URL of a filled study named "t"."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fill_study(url)
    return url


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Any]:
    """A report of a filled study, built once: (report folder, storage URL, ``Report``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{root / 'study.db'}"
    fill_study(url)
    report = build_report(url, "t", root / "report")
    return root / "report", url, report
