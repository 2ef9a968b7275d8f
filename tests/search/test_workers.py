"""Real `search run` worker processes: resume, two workers on PostgreSQL, a worker killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.driver.artifacts import load_weights
from space import ArchSpec, build, get_reference

PG_URL = os.environ.get("COVIDNET_NAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FAST = ["--epochs", "1", "--image-size", "32", "--complexity-size", "64", "--batch-size", "16", "--quiet"]
ITEM4_ATTRS = (
    "spec",
    "arch_id",
    "params",
    "macs",
    "flops",
    "netscore",
    "val_metrics",
    "test_metrics",
    "history",
    "wall_time_s",
    "train_config",
    "data_hash",
    "weights_artifact_id",
)


def _search(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "search", *args], capture_output=True, text=True, env=env, **kw
    )


def _popen(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "search", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_run_stores_everything_and_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = _search("run", "--trials", "3", "--storage", url, "--study", "t", "--out", str(tmp_path), *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "search report" in r.stdout
    study = optuna.load_study(study_name="t", storage=url)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].user_attrs["arch_id"] == get_reference("ct-l").arch_id
    for t in trials:
        missing = [k for k in ITEM4_ATTRS if k not in t.user_attrs]
        assert not missing, missing
        assert t.user_attrs["status"] == "complete"
        assert study.user_attrs["run_config"]["epochs"] == 1
    # weights load into the stored architecture, without pickle
    t0 = trials[1]
    model = build(ArchSpec.from_dict(t0.user_attrs["spec"]), 3)
    model.load_state_dict(load_weights(study, t0))
    assert (tmp_path / "config.yaml").is_file()

    r = _search("run", "--trials", "5", "--storage", url, "--study", "t", "--out", str(tmp_path), *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="t", storage=url)
    assert len(study.trials) == 5
    assert [t.user_attrs["arch_id"] for t in study.trials[:3]] == [t.user_attrs["arch_id"] for t in trials]


def _pg_available() -> bool:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(PG_URL)
        with engine.connect():
            pass
    except Exception:
        return False
    return True


@pytest.mark.postgres
def test_two_workers_share_one_postgres_study(tmp_path: Path) -> None:
    if not _pg_available():
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL} (.ci/run starts it)")
    study_name = f"two-workers-{uuid.uuid4().hex[:8]}"
    common = ["run", "--trials", "6", "--storage", PG_URL, "--study", study_name, "--heartbeat", "5", *FAST]
    workers = [
        _popen(*common, "--out", str(tmp_path / f"w{i}"), "--artifacts", str(tmp_path / "art"))
        for i in range(2)
    ]
    try:
        outs = [w.communicate(timeout=480)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outs
        study = optuna.load_study(study_name=study_name, storage=PG_URL)
        trials = study.trials
        finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(finished) == 6 and len(trials) == 6
        assert len({t.number for t in trials}) == 6
        # both workers contributed: each printed at least one finished-trial line
        for out in outs:
            assert any(line.startswith("#") for line in out.splitlines()), out
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        optuna.delete_study(study_name=study_name, storage=PG_URL)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_worker_killed_mid_trial_is_failed_and_retried(tmp_path: Path, kind: str) -> None:
    # journal storage has no heartbeat of Optuna's: the driver's own must free the killed trial
    url = f"sqlite:///{tmp_path / 'k.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'k.log'}"
    args = [
        "run",
        "--trials",
        "3",
        "--storage",
        url,
        "--study",
        "k",
        "--out",
        str(tmp_path),
        "--heartbeat",
        "2",
    ]
    # A resume must train as the study did (other settings are refused), so both runs use these.
    # --prune-warmup 4: no trial is stopped early (a stopped trial is not COMPLETE, which this counts)
    slow = [
        *[
            "--epochs",
            "4",
            "--image-size",
            "32",
            "--complexity-size",
            "64",
            "--batch-size",
            "8",
            "--prune-warmup",
            "4",
            "--quiet",
        ]
    ]
    worker = _popen(*args, *slow)
    if kind == "sqlite":
        storage: Any = optuna.storages.RDBStorage(url)
    else:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "k.log")))
    deadline = time.time() + 240
    killed_number = None
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name="k", storage=storage)
        except KeyError:
            time.sleep(0.5)
            continue
        states = [t.state for t in study.trials]
        done = states.count(optuna.trial.TrialState.COMPLETE)
        running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        if done >= 1 and running and running[0].user_attrs.get("arch_id"):
            killed_number = running[0].number
            os.kill(worker.pid, signal.SIGKILL)
            break
        time.sleep(0.3)
    worker.wait(timeout=30)
    assert killed_number is not None, "the worker never reached a second trial"
    before = {t.number: t.user_attrs.get("arch_id") for t in study.trials if t.state.name == "COMPLETE"}

    r = _search(*args, *slow, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="k", storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed_number] == "FAIL"
    assert sum(s == "COMPLETE" for s in states.values()) == 3
    after = {t.number: t.user_attrs.get("arch_id") for t in study.trials if t.state.name == "COMPLETE"}
    assert all(after[n] == a for n, a in before.items())  # completed trials intact
    # the lost trial's parameters were retried
    lost = next(t for t in study.trials if t.number == killed_number)
    assert any(
        t.params == lost.params and t.state.name == "COMPLETE"
        for t in study.trials
        if t.number > killed_number
    )


def test_journal_storage_runs_resumes_and_reports_status(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    args = ["run", "--storage", url, "--study", "j", "--out", str(tmp_path), *FAST]
    assert _search(*args, "--trials", "2").returncode == 0
    r = _search(*args, "--trials", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed" in r.stdout
    s = _search("status", "--storage", url, "--study", "j", "--json")
    assert s.returncode == 0, s.stderr
    status = json.loads(s.stdout)
    assert status["counts"]["complete"] == 3 and status["pareto"]
    assert {p["number"] for p in status["pareto"]} <= {0, 1, 2}


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_marks_the_running_trial_and_prints_the_resume_command(
    tmp_path: Path, sig: int, code: int, word: str
) -> None:
    url = f"sqlite:///{tmp_path / 'i.db'}"
    args = ["run", "--trials", "3", "--storage", url, "--study", "i", "--out", str(tmp_path)]
    worker = _popen(*args, "--epochs", "30", "--image-size", "64", "--complexity-size", "64", "--quiet")
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name="i", storage=url)
            if any(t.state.name == "RUNNING" and t.user_attrs.get("arch_id") for t in study.trials):
                break
        except KeyError:
            pass
        time.sleep(0.3)
    time.sleep(1.0)  # inside the training loop
    worker.send_signal(sig)
    out = worker.communicate(timeout=60)[0]
    assert worker.returncode == code, out
    # printed as it can be run: this test started it as `python -m search`
    assert word in out and f"resume with: {sys.executable} -m search run --trials 3" in out
    assert "finished trial" in out and "stopped early)" in out
    study = optuna.load_study(study_name="i", storage=url)
    assert study.trials[0].state.name == "FAIL" and study.trials[0].user_attrs["status"] == "interrupted"
    # its parameters wait for the next run (the prototype, CT L, is not lost)
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs["origin"] == "prototype:ct-l"
