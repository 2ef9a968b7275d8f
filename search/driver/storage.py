"""Study storages, artifact stores and the lock that keeps many workers' trial counts exact.

Storage URLs:
* ``sqlite:///path/study.db`` (the default, inside the run's output folder);
* ``postgresql://user@host:5432/db`` or ``mysql+pymysql://...`` for many workers on many machines;
* ``journal:path/study.log`` (or any path ending in ``.log``/``.jsonl``): Optuna's journal file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from search.errors import UsageError

logger = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL_PREFIX) or url.endswith((".log", ".jsonl"))


def journal_path(url: str) -> Path:
    return Path(url[len(JOURNAL_PREFIX) :] if url.startswith(JOURNAL_PREFIX) else url)


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    return None


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's warnings about the APIs this driver uses on purpose, silenced for one call.

    ``ExperimentalWarning`` for heartbeats, metric names and ``fail_stale_trials`` (stable in
    practice), and "Heartbeat of storage is supposed to be used with Study.optimize": ask/tell with
    the driver's own heartbeat thread is deliberate (``search.driver.study._Heartbeat``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def open_storage(url: str, heartbeat: int | None = None, max_retry: int = 2) -> BaseStorage:
    """An Optuna storage for ``url``; relational storages get heartbeats and failed-trial retries.

    Args:
        url: see the module docstring.
        heartbeat: seconds between a running trial's heartbeats; a trial silent for twice that
            is marked failed (a killed worker) and re-queued up to ``max_retry`` times.
        max_retry: how often a failed trial's parameters are retried.
    """
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise UsageError(
            f"--storage must be a URL (sqlite:///file.db, postgresql://..., journal:file.log), got {url!r}"
        )
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        with optuna_quiet():
            retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        kwargs = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat}
        kwargs["heartbeat_stale_trial_callback"] = retry
    engine_kwargs = {"connect_args": {"timeout": 60}} if db is not None else {"pool_pre_ping": True}
    attempts = 5
    for attempt in range(attempts):
        try:
            with optuna_quiet():
                return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError as e:
            raise UsageError(
                f"the driver for {url.split(':', 1)[0]} is not installed ({e}); "
                "for PostgreSQL: pip install '.[postgres]'"
            ) from None
        except Exception as e:
            if not type(e).__module__.startswith("sqlalchemy"):
                raise
            # Workers starting together on an empty database race to create Optuna's tables;
            # the loser sees them on the next try. A real connection problem fails every try.
            if attempt == attempts - 1:
                raise UsageError(f"cannot open storage {redact(url)}: {str(e).splitlines()[0]}") from None
            delay = 0.5 + random.random() * (attempt + 1)
            logger.info("opening %s failed (%s); retrying in %.1f s", redact(url), type(e).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def load_existing_study(
    url: str | None, run_dir: str | Path, study: str, dir_flag: str = "--out"
) -> tuple[BaseStorage, optuna.Study]:
    """An existing study, for commands that read one (status, export, explain).

    Args:
        url: the ``--storage`` URL, or ``None`` for ``run_dir/study.db``.
        run_dir: the run's output folder.
        study: the study name.
        dir_flag: the command's flag for ``run_dir``, for the message.

    Raises:
        UsageError: no database at the default place (nothing is created), or no such study
            (the message lists the studies there).
    """
    if not url:
        db = Path(run_dir) / "study.db"
        if not db.is_file():
            raise UsageError(f"no study database at {db}; pass {dir_flag} DIR or --storage URL")
        url = f"sqlite:///{db.resolve()}"
    storage = open_storage(url)
    try:
        return storage, optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UsageError(f"no study named {study!r}; studies here: {', '.join(names) or 'none'}") from None


def redact(url: str) -> str:
    """``url`` without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in cred else url
    return url


def artifact_store(location: str) -> Any:
    """An Optuna artifact store: a folder (local or shared filesystem) or ``s3://bucket/prefix``."""
    if location.startswith("s3://"):
        try:
            from optuna.artifacts import Boto3ArtifactStore
        except ImportError as e:  # pragma: no cover - depends on boto3
            raise UsageError(f"an s3:// artifact store needs boto3: {e}") from None
        bucket = location[len("s3://") :].split("/", 1)[0]
        return Boto3ArtifactStore(bucket)
    path = Path(location)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--artifacts {location}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--artifacts {location}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--artifacts {location}: the folder is not writable")
    return optuna.artifacts.FileSystemArtifactStore(str(path))


# ---------------------------------------------------------------------------------- locking
_thread_lock = threading.Lock()


@contextlib.contextmanager
def study_lock(storage: BaseStorage, url: str, study_name: str) -> Iterator[None]:
    """Serialise "count the trials, then ask for one" across workers of one study.

    PostgreSQL and MySQL use a database advisory lock (workers on many machines); SQLite and
    journal files use an ``fcntl`` lock on a file beside the database (workers on one machine or
    one shared filesystem).
    """
    key = int(hashlib.sha1(f"covidnet-nas:{study_name}".encode()).hexdigest()[:15], 16)
    with _thread_lock:
        if isinstance(storage, RDBStorage) and url.startswith(("postgresql", "mysql")):
            from sqlalchemy import text

            with storage.engine.connect() as conn:
                if url.startswith("postgresql"):
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                    try:
                        yield
                    finally:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                else:
                    conn.execute(text("SELECT GET_LOCK(:k, 600)"), {"k": str(key)})
                    try:
                        yield
                    finally:
                        conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": str(key)})
            return
        anchor = sqlite_path(url) or (journal_path(url) if is_journal(url) else None)
        if anchor is None:  # an in-memory or unknown storage: one process, the thread lock is enough
            yield
            return
        lock_file = anchor.with_name(f".{anchor.name}.{key:x}.lock")
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
