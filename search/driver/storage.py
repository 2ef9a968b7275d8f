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
# Connections a worker keeps open to PostgreSQL/MySQL, and how many more it opens while busy.
POOL_SIZE = 2
POOL_OVERFLOW = 2


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
        if path.is_dir():
            raise UsageError(f"--storage {url}: {path} is a folder; name the journal file in it")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise UsageError(f"--storage {url}: cannot open the journal file ({e.strerror or e})") from None
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
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}}
        if db is not None
        # A worker needs a connection for the trial loop, one for the heartbeat thread and one
        # held by the study lock: 2 kept open, 2 more while busy (N workers: at most 4 N of the
        # server's max_connections, PostgreSQL's default 100). pool_pre_ping replaces a
        # connection the server dropped instead of failing a trial.
        else {"pool_pre_ping": True, "pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    )
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


def with_retry(what: str, url: str, call: Any, attempts: int = 5, first_delay: float = 1.0) -> Any:
    """``call()``, retried with exponential backoff (and jitter) while the storage refuses a
    connection (PostgreSQL's "too many clients", a server restarting), which Optuna wraps in
    ``StorageInternalError``; after ``attempts`` tries, one line naming the storage and the cause.
    """
    for attempt in range(attempts):
        try:
            return call()
        except optuna.exceptions.StorageInternalError as e:
            cause = e.__cause__ or e.__context__ or e
            reason = " ".join(str(cause).split())[:300]
            if attempt == attempts - 1:
                raise UsageError(
                    f"cannot {what} in {redact(url)} after {attempts} tries: {reason} (PostgreSQL: "
                    "raise max_connections, or run fewer workers; each holds up to "
                    f"{POOL_SIZE + POOL_OVERFLOW} connections)"
                ) from None
            delay = first_delay * 2**attempt * (0.5 + random.random())
            logger.warning("%s: %s; retrying in %.1f s", what, reason, delay)
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


def artifact_store(location: str, *, create: bool = True, create_parents: bool = True) -> Any:
    """An Optuna artifact store: a folder (local or shared filesystem) or ``s3://bucket/prefix``.

    Args:
        create: make the folder if it is missing (``False`` for readers: a missing folder is a
            one-line error that suggests ``--artifacts``, e.g. after the run folder moved).
        create_parents: make missing parent folders too. ``search run`` passes ``False`` for an
            explicit ``--artifacts``, so that a shared mount that is not there is an error instead
            of a local folder of the same name that no other worker sees.
    """
    if location.startswith("s3://"):
        try:
            from optuna.artifacts import Boto3ArtifactStore
        except ImportError as e:  # pragma: no cover - depends on boto3
            raise UsageError(f"an s3:// artifact store needs boto3: {e}") from None
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise UsageError(f"--artifacts {location}: expected s3://bucket or s3://bucket/prefix")
        store = Boto3ArtifactStore(bucket)
        return PrefixedStore(store, prefix) if prefix.strip("/") else store
    path = Path(location)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--artifacts {location}: is a file, not a folder")
    if not path.exists():
        if not create:
            raise UsageError(
                f"no artifact folder at {location} (the weights of this study); if the run folder "
                "moved, pass --artifacts NEW_PLACE"
            )
        if not create_parents and not path.parent.is_dir():
            raise UsageError(
                f"--artifacts {location}: its parent folder {path.parent} does not exist (a shared "
                "mount that is not there?); create it, or pass another --artifacts"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--artifacts {location}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK) and create:
        raise UsageError(f"--artifacts {location}: the folder is not writable")
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def probe_store(store: Any, location: str) -> None:
    """Write and remove a small artifact, so that a store that cannot be reached or written is
    found before the first trial trains (not after it, at upload)."""
    import io
    import uuid

    key = f"covidnet-nas-probe-{uuid.uuid4().hex}"
    try:
        store.write(key, io.BytesIO(b"probe"))
        store.remove(key)
    except Exception as e:
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise UsageError(f"--artifacts {location}: cannot write to the artifact store ({reason})") from None


class PrefixedStore:
    """An artifact store whose artifacts live under ``prefix/`` of another (``s3://bucket/prefix``:
    Optuna's ``Boto3ArtifactStore`` takes a bucket only)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}"

    def open_reader(self, artifact_id: str) -> Any:
        return self.store.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self._key(artifact_id))


def same_store(a: str, b: str) -> bool:
    """Whether two ``--artifacts`` locations name one store (folders compared resolved)."""
    if a.startswith("s3://") or b.startswith("s3://"):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


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
