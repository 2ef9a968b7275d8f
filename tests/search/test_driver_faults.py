"""The search driver under several workers, resumes and interruptions (cheap stand-in evaluators)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import pytest

from search.driver import study as study_mod
from search.driver.config import RunConfig
from search.driver.study import CandidateOutcome, SearchDriver
from search.errors import UsageError
from space import ArchSpec, get_reference


class Recorder:
    """Scores a candidate by its params (no training) and records what it was asked to train."""

    def __init__(self, data_hash: str = "h1", fail_first: BaseException | None = None) -> None:
        self.seen: list[str] = []
        self.data_hash = data_hash
        self.fail_first = fail_first

    def data_attrs(self) -> dict[str, Any]:
        return {"data_hash": self.data_hash, "data_sources": [f"data-{self.data_hash}"]}

    def __call__(self, spec: ArchSpec, on_epoch: Callable[[int, float], None]) -> CandidateOutcome:
        self.seen.append(spec.arch_id)
        if self.fail_first is not None:
            e, self.fail_first = self.fail_first, None
            raise e
        on_epoch(1, 50.0)
        return CandidateOutcome(val_accuracy=50.0 + len(self.seen) % 7, attrs={})


def _config(tmp_path: Any, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "out": str(tmp_path),
        "study": "f",
        "complexity_size": 64,
        "trials": 9,
        "epochs": 1,
        "heartbeat": 5,
        "startup_trials": 10,
    }
    base.update(kw)
    return RunConfig.make(**base)


def _round_robin(drivers: list[SearchDriver]) -> None:
    """Workers taking turns, one trial each, as workers started together do."""
    active = list(drivers)
    while active:
        for d in list(active):
            trial = d._next_trial()
            if trial is None:
                active.remove(d)
            else:
                d._run_one(trial)


def _complete_archs(study: optuna.Study) -> list[str]:
    return [t.user_attrs["arch_id"] for t in study.trials if t.state.name == "COMPLETE"]


def test_workers_joining_one_study_draw_distinct_architectures(tmp_path: Any) -> None:
    ev = Recorder()
    drivers = [SearchDriver(_config(tmp_path), ev) for _ in range(3)]
    assert [d.created for d in drivers] == [True, False, False]
    assert len({d.sampler_seed for d in drivers}) == 3  # training seed stays the run's: 0
    assert all(d.config.train.seed == 0 for d in drivers)
    _round_robin(drivers)
    archs = _complete_archs(drivers[0].study)
    assert len(archs) == 9 and len(set(archs)) == 9
    assert len(ev.seen) == len(set(ev.seen)) == 9  # nothing was trained twice
    # a resume adds new architectures, not copies
    again = SearchDriver(_config(tmp_path, trials=12), ev)
    again.run()
    archs = _complete_archs(again.study)
    assert len(archs) == 12 and len(set(archs)) == 12


def test_a_repeated_architecture_is_drawn_again_not_trained(tmp_path: Any, monkeypatch: Any) -> None:
    # Every worker with the run's seed (as before per-worker seeds): their draws repeat.
    monkeypatch.setattr(study_mod, "worker_seed", lambda seed: seed)
    ev = Recorder()
    drivers = [SearchDriver(_config(tmp_path, trials=6), ev) for _ in range(3)]
    _round_robin(drivers)
    study = drivers[0].study
    archs = _complete_archs(study)
    assert len(archs) == 6 and len(set(archs)) == 6
    assert len(ev.seen) == len(set(ev.seen))
    dups = [t for t in study.trials if t.user_attrs.get("status") == "duplicate"]
    assert dups, "the same seed must have proposed a repeat"
    for t in dups:
        twin = study.trials[t.user_attrs["duplicate_of"]]
        assert twin.user_attrs["arch_id"] == t.user_attrs["arch_id"]
    counts = drivers[0].counts()
    assert counts["duplicate"] == len(dups) and counts["fail"] == 0


def test_a_queued_twin_of_a_finished_trial_reuses_its_result(tmp_path: Any) -> None:
    ev = Recorder()
    driver = SearchDriver(_config(tmp_path, trials=2), ev)
    driver.run()
    first = driver.study.trials[1]
    driver.study.enqueue_trial(first.params)
    again = SearchDriver(_config(tmp_path, trials=3), ev)
    again.run()
    reused = again.study.trials[-1]
    assert reused.state.name == "COMPLETE" and reused.user_attrs["reused_from"] == first.number
    assert reused.values == first.values
    assert len(ev.seen) == 2  # not trained again
    assert again.counts()["reused"] == 1


@pytest.mark.parametrize(
    ("change", "named"),
    [({"image_size": 32}, "--image-size 64 -> 32"), ({"epochs": 2}, "--epochs 1 -> 2")],
)
def test_a_resume_with_other_training_settings_is_refused(tmp_path: Any, change: Any, named: str) -> None:
    SearchDriver(_config(tmp_path, trials=1, image_size=64), Recorder()).run()
    with pytest.raises(UsageError, match="--study NEW") as e:
        SearchDriver(_config(tmp_path, trials=2, **{"image_size": 64, **change}), Recorder())
    assert named in str(e.value) and "\n" not in str(e.value)


def test_a_resume_on_other_data_is_refused(tmp_path: Any) -> None:
    SearchDriver(_config(tmp_path, trials=1), Recorder("aaaa")).run()
    with pytest.raises(UsageError, match=r"--data data-aaaa \(hash aaaa\) -> data-bbbb \(hash bbbb\)"):
        SearchDriver(_config(tmp_path, trials=2), Recorder("bbbb"))
    SearchDriver(_config(tmp_path, trials=2, max_failures=5), Recorder("aaaa")).run()  # same data: fine


def test_an_interrupted_prototype_completes_on_resume(tmp_path: Any) -> None:
    ev = Recorder(fail_first=KeyboardInterrupt())
    driver = SearchDriver(_config(tmp_path, trials=3), ev)
    with pytest.raises(KeyboardInterrupt):
        driver.run()
    study = driver.study
    assert study.trials[0].state.name == "FAIL" and study.trials[0].user_attrs["status"] == "interrupted"
    SearchDriver(_config(tmp_path, trials=3), ev).run()
    ct_l = get_reference("ct-l").arch_id
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert [t.user_attrs["arch_id"] for t in done].count(ct_l) == 1
    assert next(t for t in done if t.user_attrs["arch_id"] == ct_l).user_attrs["origin"] == "prototype:ct-l"
    assert len(done) == 3


def test_a_failed_prototype_is_queued_again(tmp_path: Any) -> None:
    from search.errors import RunFailed

    ev = Recorder(fail_first=RunFailed("no such device"))
    driver = SearchDriver(_config(tmp_path, trials=3), ev)
    driver.run()
    ct_l = get_reference("ct-l").arch_id
    trials = driver.study.trials
    assert trials[0].state.name == "FAIL"
    assert any(t.state.name == "COMPLETE" and t.user_attrs["arch_id"] == ct_l for t in trials[1:])


def test_an_interrupted_trial_is_queued_again(tmp_path: Any) -> None:
    ev = Recorder()
    driver = SearchDriver(_config(tmp_path, trials=2), ev)
    driver.run()
    ev.fail_first = KeyboardInterrupt()
    more = SearchDriver(_config(tmp_path, trials=3), ev)
    with pytest.raises(KeyboardInterrupt):
        more.run()
    lost = more.study.trials[-2]
    assert lost.user_attrs["status"] == "interrupted"
    SearchDriver(_config(tmp_path, trials=3), ev).run()
    last = more.study.trials[-1]
    assert last.state.name == "COMPLETE" and last.params == lost.params
    assert last.user_attrs["retried_from"] == lost.number


def test_a_dead_workers_trial_on_journal_storage_does_not_block_a_rerun(tmp_path: Any) -> None:
    import threading

    url = f"journal:{tmp_path / 'study.log'}"
    cfg = _config(tmp_path, trials=2, storage=url, heartbeat=1)
    ev = Recorder()
    SearchDriver(cfg.replace(trials=1), ev).run()
    # A worker that asked for a trial and died: RUNNING, never told, no heartbeat after its start.
    dead = SearchDriver(cfg, ev)
    lost = dead._next_trial()
    assert lost is not None
    rerun = SearchDriver(cfg, ev, poll_seconds=0.1)
    worker = threading.Thread(target=rerun.run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the rerun waits for the dead worker's trial"
    trials = rerun.study.trials
    assert trials[lost.number].state.name == "FAIL"
    retried = [t for t in trials if t.number > lost.number and t.params == lost.params]
    assert retried and retried[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cv_folds": 1000}, "--cv-folds 1000 needs at least 1000 patients"),
        ({"cv_folds": 2, "patients": "/nonexistent/patients.csv"}, "cannot read the patients file"),
        ({"device": "cuda:7"}, "device 'cuda:7' asked for"),
    ],
)
def test_settings_that_would_fail_every_trial_are_refused_before_the_study(
    tmp_path: Any, settings: dict[str, Any], message: str
) -> None:
    import torch

    from search.driver.objective import TrainingEvaluator
    from space.errors import UserInputError

    if "device" in settings and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    with pytest.raises(UserInputError, match=message):
        TrainingEvaluator(_config(tmp_path, **settings))


def test_search_run_with_a_device_that_is_not_here_creates_no_study(tmp_path: Any) -> None:
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = subprocess.run(
        [sys.executable, "-m", "search", "run", "--out", str(tmp_path), "--device", "cuda", "--quiet"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 2 and "CUDA is not available" in r.stderr
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "config.yaml").exists()


def test_an_artifact_store_that_is_a_file_is_a_usage_error(tmp_path: Any) -> None:
    from search.driver.storage import artifact_store

    f = tmp_path / "not-a-folder"
    f.write_text("x")
    with pytest.raises(UsageError, match="not-a-folder: is a file, not a folder"):
        artifact_store(str(f))
    with pytest.raises(UsageError, match="cannot create the folder"):
        artifact_store(str(f / "sub"))


def test_a_worker_with_another_artifact_store_is_refused(tmp_path: Any) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    url = f"sqlite:///{tmp_path / 's.db'}"
    SearchDriver(_config(tmp_path, trials=1, storage=url, artifacts=str(tmp_path / "a")), Recorder()).run()
    with pytest.raises(UsageError, match=r"keeps its weights in .*/a, this worker's artifact store is .*/b"):
        SearchDriver(_config(tmp_path, trials=2, storage=url, artifacts=str(tmp_path / "b")), Recorder())
    # the same store, spelled otherwise, is fine; a store that moved is followed
    SearchDriver(
        _config(tmp_path, trials=1, storage=url, artifacts=str(tmp_path / "b" / ".." / "a")), Recorder()
    )
    (tmp_path / "a").rename(tmp_path / "c")
    d = SearchDriver(_config(tmp_path, trials=1, storage=url, artifacts=str(tmp_path / "c")), Recorder())
    assert d.study.user_attrs["artifacts"] == str(tmp_path / "c")


def test_a_missing_mount_is_not_created_and_a_missing_store_is_named(tmp_path: Any) -> None:
    from search.driver.storage import artifact_store

    with pytest.raises(UsageError, match="its parent folder .*/mnt does not exist"):
        artifact_store(str(tmp_path / "mnt" / "art"), create_parents=False)
    assert not (tmp_path / "mnt").exists()
    with pytest.raises(UsageError, match="no artifact folder at .*pass --artifacts"):
        artifact_store(str(tmp_path / "gone"), create=False)


def test_an_s3_prefix_is_kept(monkeypatch: Any) -> None:
    import importlib
    import io

    from search.driver.storage import PrefixedStore, artifact_store

    written: dict[str, bytes] = {}

    class FakeBoto3:
        def __init__(self, bucket: str) -> None:
            self.bucket = bucket

        def write(self, key: str, body: Any) -> None:
            written[f"{self.bucket}:{key}"] = body.read()

        def open_reader(self, key: str) -> Any:
            return io.BytesIO(written[f"{self.bucket}:{key}"])

    # optuna.artifacts is imported lazily; patch the real module
    monkeypatch.setattr(importlib.import_module("optuna.artifacts"), "Boto3ArtifactStore", FakeBoto3)
    store = artifact_store("s3://bkt/runs/one")
    assert isinstance(store, PrefixedStore)
    store.write("abc", io.BytesIO(b"w"))
    assert written == {"bkt:runs/one/abc": b"w"} and store.open_reader("abc").read() == b"w"


def test_a_refused_connection_is_retried_with_backoff_then_named(monkeypatch: Any) -> None:
    from search.driver import storage

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            try:
                raise RuntimeError("FATAL: sorry, too many clients already")
            except RuntimeError as e:
                raise optuna.exceptions.StorageInternalError(
                    "An exception is raised during the commit."
                ) from e
        return "ok"

    assert storage.with_retry("open the study", "postgresql://u:pw@h/db", flaky) == "ok" and len(calls) == 3
    calls.clear()

    def never() -> str:
        calls.clear()  # flaky fails on its first two calls: this always fails
        return flaky()

    with pytest.raises(
        UsageError,
        match=r"cannot open the study in postgresql://u:\*\*\*@h/db after 5 tries: FATAL: sorry, too many",
    ):
        storage.with_retry("open the study", "postgresql://u:pw@h/db", never)


def test_tpe_says_how_it_treats_the_conditional_space(tmp_path: Any, caplog: Any) -> None:
    import logging

    from search.driver.study import _warned, make_sampler

    _warned.clear()
    with caplog.at_level(logging.WARNING, logger="search.driver.study"):
        sampler = make_sampler(_config(tmp_path), 3)
    assert "sampled independently" in caplog.text and not sampler._group
    assert make_sampler(_config(tmp_path, tpe_group=True), 3)._group


def test_search_run_says_and_stores_what_skip_bad_skipped_and_prints_a_pasteable_report_command(
    tmp_path: Any,
) -> None:
    import shlex
    import subprocess
    import sys

    from tests.evaluators.test_data import write_dataset

    data = write_dataset(tmp_path / "data")
    with (data / "val.txt").open("a") as f:
        f.write("missing.png 0 0 0 4 4\n")
    out = tmp_path / "my run"
    r = subprocess.run(
        [sys.executable, "-m", "search", "run", "--data", str(data), "--out", str(out), "--skip-bad",
         "--trials", "1", "--epochs", "1", "--image-size", "32", "--complexity-size", "64", "--quiet"],
        capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped" in r.stderr and "val.txt line 5: image missing.png not found" in r.stderr
    study = optuna.load_study(study_name="covidnet-ct", storage=f"sqlite:///{out / 'study.db'}")
    assert any("val.txt line 5" in m for m in study.user_attrs["data"]["skipped"])
    line = next(x for x in r.stdout.splitlines() if x.startswith("report:"))
    # as it can be run: this test started it as `python -m search`
    assert shlex.split(line.split(":", 1)[1]) == [
        sys.executable,
        "-m",
        "search",
        "report",
        "--out",
        str(out),
        "--study",
        "covidnet-ct",
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--out", "FILE"], "--out FILE: is a file, not a folder"),
        (["--storage", "journal:DIR"], "is a folder; name the journal file in it"),
        (["--study", "x" * 513], "study must be at most 512 characters, got 513"),
    ],
)
def test_bad_places_and_names_are_one_line(
    tmp_path: Any, capsys: Any, flags: list[str], message: str
) -> None:
    from search.cli import main

    (tmp_path / "FILE").write_text("x")
    (tmp_path / "DIR").mkdir()
    flags = [f.replace("FILE", str(tmp_path / "FILE")).replace("DIR", str(tmp_path / "DIR")) for f in flags]
    base = ["run", "--out", str(tmp_path / "o"), "--trials", "1", "--epochs", "1", "--quiet"]
    assert main([*base, *flags]) == 2
    err = capsys.readouterr().err
    assert message.replace("FILE", str(tmp_path / "FILE")) in err and "Traceback" not in err


def test_an_artifact_store_that_cannot_be_written_is_found_before_training() -> None:
    from search.driver.storage import probe_store

    class Unreachable:
        def write(self, key: str, body: Any) -> None:
            raise ConnectionError("Could not connect to the endpoint URL")

        def remove(self, key: str) -> None:  # pragma: no cover - never reached
            pass

    with pytest.raises(UsageError, match=r"s3://b/p: cannot write to the artifact store \(Could not connect"):
        probe_store(Unreachable(), "s3://b/p")


def test_a_postgres_worker_keeps_a_small_pool_with_pre_ping() -> None:
    import os

    from search.driver.storage import POOL_OVERFLOW, POOL_SIZE, open_storage

    url = os.environ.get("COVIDNET_NAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        storage = open_storage(url, heartbeat=5)
    except UsageError as e:
        pytest.skip(f"PostgreSQL is not reachable at {url}: {e}")
    pool = storage.engine.pool
    assert (pool.size(), pool._max_overflow, pool._pre_ping) == (POOL_SIZE, POOL_OVERFLOW, True)
    assert POOL_SIZE + POOL_OVERFLOW <= 4


def test_a_failing_heartbeat_is_logged_not_swallowed(caplog: Any) -> None:
    import logging
    import time as _time

    from search.driver.study import Heartbeat

    class Flaky:
        beats = 0

        def get_heartbeat_interval(self) -> int:
            return 1

        def record_heartbeat(self, trial_id: int) -> None:
            Flaky.beats += 1
            if Flaky.beats > 1:
                raise ConnectionError("server closed the connection unexpectedly")

    beat = Heartbeat(Flaky(), 7, 0.05)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="search.driver.study"), beat:
        deadline = _time.time() + 10
        while "heartbeat of trial id 7 failed" not in caplog.text and _time.time() < deadline:
            _time.sleep(0.05)
    assert "heartbeat of trial id 7 failed: server closed the connection" in caplog.text
