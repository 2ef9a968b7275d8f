"""``search run --workers N``: the launcher's plan, its refusals, and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from evaluators import device as device_mod
from search.driver.workers import (
    WORKER_ENV,
    check_storage,
    parse_devices,
    plan_workers,
    strip_launcher_flags,
)
from search.errors import UsageError

CMD = [sys.executable, "-m", "search", "run"]
SLOW = ["--epochs", "30", "--image-size", "64", "--quiet"]
FAST = ["--epochs", "2", "--image-size", "32", "--complexity-size", "64", "--batch-size", "16"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", WORKER_ENV)}
    return {**env, "PYTHONUNBUFFERED": "1"}


def test_sqlite_is_refused_for_several_workers_only() -> None:
    with pytest.raises(UsageError, match="SQLite"):
        check_storage("sqlite:///x/study.db", 2)
    check_storage("sqlite:///x/study.db", 1)
    check_storage("postgresql://u@h/db", 4)
    check_storage("journal:study.log", 4)


def test_cli_refuses_sqlite_with_one_line_and_exit_2(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "search", "run", "--workers", "2", "--trials", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers 2" in lines[0] and "SQLite" in lines[0], r.stderr
    assert not (tmp_path / "study.db").exists()


def test_plan_shares_threads_and_gpus_and_drops_launcher_flags() -> None:
    argv = ["run", "--workers", "3", "--devices=0,1", "--trials", "6", "--storage", "journal:s.log"]
    assert strip_launcher_flags(argv) == ["run", "--trials", "6", "--storage", "journal:s.log"]
    plans = plan_workers(argv, 3, 2, ["0", "1"])
    assert [p.env[WORKER_ENV] for p in plans] == ["0", "1", "2"]
    assert all(p.env["OMP_NUM_THREADS"] == "2" for p in plans)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "1", "0"]
    assert all("--workers" not in p.argv and "--devices=0,1" not in p.argv for p in plans)
    assert "CUDA_VISIBLE_DEVICES" not in plan_workers(argv, 2, 1, [])[0].env
    assert parse_devices("0, 2") == ["0", "2"] and parse_devices(None) == []
    with pytest.raises(UsageError, match="--devices"):
        parse_devices("cuda:0")


def test_thread_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 3.0, 3.0))
    assert device_mod.choose_threads(1)[0] == 1  # loaded: one thread, not two fighting for a core
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert device_mod.choose_threads(1)[0] == 2  # idle: all cores
    assert device_mod.choose_threads(2)[0] == 1  # two workers: one each
    monkeypatch.setattr(device_mod, "usable_cores", lambda: 16)
    assert device_mod.choose_threads(3)[0] == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert device_mod.choose_threads(1) == (3, "OMP_NUM_THREADS=3")


def test_two_workers_on_a_journal_study(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    r = subprocess.run(
        [
            *CMD,
            "--workers",
            "2",
            "--trials",
            "8",
            "--storage",
            url,
            "--study",
            "w",
            "--out",
            str(tmp_path),
            *FAST,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=480,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(
        study_name="w",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
        ),
    )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = [t for t in study.trials if t.state in finished]  # two epochs: the pruner may stop some
    assert len(done) == 8, r.stdout
    runtime = [t.user_attrs["runtime"] for t in done]
    assert {rt["worker"] for rt in runtime} == {"0", "1"}  # both contributed
    assert all(rt["threads"] == 1 or rt["threads"] == max(1, os.cpu_count() // 2) for rt in runtime)
    assert all(
        rt["device"] == "cpu" and rt["precision"] == "fp32" and rt["versions"]["torch"] for rt in runtime
    )
    assert "[w0] " in r.stdout and "[w1] " in r.stdout and "all 2 workers done" in r.stdout
    assert r.stdout.count("Pareto set") == 1  # one summary, from the launcher


def test_ctrl_c_stops_every_worker(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    launcher = subprocess.Popen(
        [
            *CMD,
            "--workers",
            "2",
            "--trials",
            "6",
            "--storage",
            url,
            "--study",
            "c",
            "--out",
            str(tmp_path),
            *SLOW,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
    )
    deadline = time.time() + 240
    running = 0
    while time.time() < deadline and running < 2:
        try:
            study = optuna.load_study(study_name="c", storage=storage)
            running = sum(
                1 for t in study.trials if t.state.name == "RUNNING" and t.user_attrs.get("arch_id")
            )
        except KeyError:
            pass
        time.sleep(0.5)
    assert running == 2, "both workers should be training"
    time.sleep(1.0)
    launcher.send_signal(signal.SIGINT)
    out = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 130, out
    assert (
        "interrupted: all 2 workers stopped" in out and f"resume with: {sys.executable} -m search run" in out
    )
    study = optuna.load_study(study_name="c", storage=storage)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]  # every worker marked its trial
    assert sum(1 for t in study.trials if t.user_attrs.get("status") == "interrupted") == 2
