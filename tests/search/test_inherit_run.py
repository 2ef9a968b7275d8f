"""``search run --inherit prototype``: candidates start from the trained prototype's weights."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from search.cli import main
from space import get_reference

FAST = ["--epochs", "1", "--image-size", "32", "--complexity-size", "64", "--batch-size", "16"]
PG_URL = os.environ.get("COVIDNET_NAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _check_inherited(trials: list[optuna.trial.FrozenTrial]) -> None:
    proto = [t for t in trials if t.user_attrs.get("origin") == "prototype:ct-l"]
    assert len(proto) == 1 and proto[0].number == 0  # CT L is trained once, as trial 0
    assert proto[0].user_attrs["arch_id"] == get_reference("ct-l").arch_id
    assert proto[0].user_attrs["weights_source"].startswith("random initialisation")
    for t in trials:
        if t.number == 0 or t.user_attrs.get("status") != "complete":
            continue
        a = t.user_attrs
        assert a["weights_source"] == "prototype trial 0"
        assert 0.0 < a["inherited_share"] <= 1.0
        assert a["inheritance"]["share"] == a["inherited_share"]
        assert set(a["inheritance"]["tensors"].values()) <= {
            "inherited", "sliced", "kernel", "diagonal", "partial", "fresh"
        }  # fmt: skip


def test_candidates_record_their_weight_source_and_inherited_share(tmp_path: Path) -> None:
    argv = ["--quiet", "run", "--out", str(tmp_path), "--trials", "4", "--inherit", "prototype", *FAST]
    assert main(argv) == 0
    study = optuna.load_study(study_name="covidnet-ct", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 4
    _check_inherited(study.trials)
    assert study.user_attrs["run_config"]["inherit"] == "prototype"


def test_inherit_from_a_weights_file_and_bad_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from space import build

    weights = tmp_path / "ct-l.pt"
    torch.manual_seed(0)
    torch.save(build(get_reference("ct-l")).state_dict(), weights)
    out = tmp_path / "run"
    argv = ["--quiet", "run", "--out", str(out), "--trials", "2", "--inherit", "prototype", *FAST]
    assert main([*argv, "--inherit-from", str(weights)]) == 0
    study = optuna.load_study(study_name="covidnet-ct", storage=f"sqlite:///{out / 'study.db'}")
    assert {t.user_attrs["weights_source"] for t in study.trials} == {str(weights)}
    capsys.readouterr()
    assert main(["--quiet", "run", "--out", str(tmp_path / "r2"), "--inherit-from", str(weights), *FAST]) == 2
    assert "inherit_from needs inherit prototype" in capsys.readouterr().err


@pytest.mark.postgres
def test_a_second_worker_uses_the_stored_prototype(tmp_path: Path) -> None:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(PG_URL).connect():
            pass
    except Exception:
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL} (.ci/run starts it)")
    study_name = f"inherit-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "-m",
        "search",
        "--quiet",
        "run",
        "--storage",
        PG_URL,
        "--study",
        study_name,
        "--inherit",
        "prototype",
    ]
    common += ["--artifacts", str(tmp_path / "artifacts"), *FAST]
    try:
        a = [sys.executable, *common, "--out", str(tmp_path / "a"), "--trials", "2"]
        first = subprocess.run(a, env=env, capture_output=True, text=True)
        assert first.returncode == 0, first.stdout + first.stderr
        # another worker (another process, another output folder) joins and adds two candidates
        b = [sys.executable, *common, "--out", str(tmp_path / "b"), "--trials", "4"]
        second = subprocess.run(b, env=env, capture_output=True, text=True)
        assert second.returncode == 0, second.stdout + second.stderr
        study = optuna.load_study(study_name=study_name, storage=PG_URL)
        assert len(study.trials) == 4
        _check_inherited(study.trials)
    finally:
        optuna.delete_study(study_name=study_name, storage=PG_URL)
