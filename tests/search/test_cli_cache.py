"""``search data cache``: decode once per node, then every worker only maps the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.evaluators.test_data import write_dataset


def _cache(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "search", "data", "cache", *args], capture_output=True, text=True, env=env
    )


def test_cache_builds_then_finds_its_files(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d")
    args = ["--data", str(data), "--image-size", "32", "--cache-dir", str(tmp_path / "c"), "--json"]
    first = _cache(*args)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert [s["split"] for s in out["splits"]] == ["train", "val", "test"]
    assert all(s["decoded"] and s["bytes"] > 0 for s in out["splits"])
    assert all(Path(f).is_file() for s in out["splits"] for f in s["files"])
    second = json.loads(_cache(*args).stdout)
    assert not any(s["decoded"] for s in second["splits"])


def test_cache_bad_split_is_one_line(tmp_path: Path) -> None:
    r = _cache("--image-size", "32", "--splits", "train,tset", "--cache-dir", str(tmp_path))
    assert r.returncode == 2 and "--splits" in r.stderr and len(r.stderr.strip().splitlines()) == 1
