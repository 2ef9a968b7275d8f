"""``search run --workers N``: N worker processes on one study, started and stopped together.

Each worker is ``search run`` itself (the same arguments, less ``--workers``/``--devices``) in a
child process: its share of the CPU threads in ``OMP_NUM_THREADS``, its GPU in
``CUDA_VISIBLE_DEVICES`` (one of ``--devices``, round robin), its number in
``COVIDNET_NAS_WORKER``. The workers meet only in the study storage, so it must be one that
several processes may write: PostgreSQL (or another server database) or a journal file; SQLite is
refused. The parent prints every worker's trial lines, prefixed with the worker's number, under
one progress bar over the study's finished trials, and on Ctrl-C passes the interrupt on to all of
them and waits for each to mark its running trial and exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.errors import UsageError

WORKER_ENV = "COVIDNET_NAS_WORKER"
STOP_SECONDS = 60.0  # how long an interrupted worker may take to mark its trial and exit


def check_storage(url: str, workers: int) -> None:
    """``UsageError`` where ``url`` cannot take ``workers`` concurrent writers (SQLite)."""
    if workers > 1 and url.startswith("sqlite:"):
        raise UsageError(
            f"--workers {workers} needs a storage several processes can write: SQLite ({url}) cannot; "
            "use --storage postgresql://user@host/db or --storage journal:FILE.log"
        )


def parse_devices(text: str | None) -> list[str]:
    """``--devices 0,1,3`` as CUDA device ids; ``all``: every visible GPU; None or "": none."""
    if not text:
        return []
    if text == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise UsageError("--devices all: no CUDA GPU is visible here")
        return [str(i) for i in range(n)]
    ids = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() for t in ids):
        raise UsageError(f"--devices must be GPU numbers separated by commas (0,1,2) or 'all', got {text!r}")
    return ids


@dataclass(frozen=True)
class WorkerPlan:
    """One worker: its number, its environment changes and the command it runs."""

    index: int
    env: dict[str, str]
    argv: list[str]


def plan_workers(argv: Sequence[str], workers: int, threads: int, devices: Sequence[str]) -> list[WorkerPlan]:
    """The ``workers`` child processes for ``search run`` arguments ``argv`` (launcher flags removed)."""
    base = [sys.executable, "-m", "search", *strip_launcher_flags(argv)]
    plans = []
    for i in range(workers):
        env = {WORKER_ENV: str(i), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env["PYTHONUNBUFFERED"] = "1"
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[i % len(devices)]
        plans.append(WorkerPlan(i, env, base))
    return plans


def strip_launcher_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--workers N`` / ``--devices D`` (either ``--flag value`` or ``--flag=value``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workers", "--devices"):
            skip = True
            continue
        if a.startswith(("--workers=", "--devices=")):
            continue
        out.append(a)
    return out


def run_workers(
    plans: Sequence[WorkerPlan],
    on_line: Callable[[int, str], None],
    *,
    stagger: Callable[[], bool] | None = None,
) -> list[int]:
    """Run the workers to the end; their output lines go to ``on_line(worker, line)``.

    The first worker starts alone until ``stagger()`` is true (its study exists), so that only
    one creates the study and enqueues the prototype. Ctrl-C (``KeyboardInterrupt``) sends SIGINT
    to every worker, waits up to ``STOP_SECONDS`` for them, kills what is left and re-raises.
    Returns the workers' exit codes.
    """
    procs: list[subprocess.Popen[str]] = []
    readers: list[threading.Thread] = []

    def start(p: WorkerPlan) -> None:
        proc = subprocess.Popen(
            p.argv,
            env={**os.environ, **p.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the workers through the parent only
        )
        procs.append(proc)
        t = threading.Thread(target=_pump, args=(proc, p.index, on_line), daemon=True)
        t.start()
        readers.append(t)

    try:
        start(plans[0])
        if len(plans) > 1 and stagger is not None:
            while not stagger() and procs[0].poll() is None:
                time.sleep(0.5)
        for p in plans[1:]:
            start(p)
        codes = [proc.wait() for proc in procs]
    except KeyboardInterrupt:
        stop_all(procs)
        raise
    for t in readers:
        t.join(timeout=5)
    return codes


def stop_all(procs: Sequence[subprocess.Popen[str]], seconds: float = STOP_SECONDS) -> None:
    """SIGINT to each running worker, then SIGKILL to any still running after ``seconds``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.time() + seconds
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pump(proc: subprocess.Popen[str], index: int, on_line: Callable[[int, str], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        on_line(index, line.rstrip("\n"))
