from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("OMP_NUM_THREADS", "2")
# The tests use the 215-slice bundled subset where no --data is given (the package's own default,
# the full 2,481-slice ct-sars, is what users get; tests/evaluators/test_data.py checks it).
os.environ.setdefault(
    "COVIDNET_NAS_DEFAULT_DATA",
    str(Path(__file__).resolve().parents[1] / "evaluators" / "data" / "bundled" / "ct-sars-mini"),
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """A dataset from ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not (path / "train.txt").is_file():
        pytest.skip(f"{path} is absent: the full {name} dataset lives beside the repository only")
    return path
