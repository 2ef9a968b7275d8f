"""``search run``: the microarchitecture search, and ``search status``: where a study stands."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from search.commands._common import (
    add_run_flags,
    config_from_args,
)
from search.console import console, err_console, print_table
from search.driver.config import RunConfig, write_yaml
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="search the microarchitecture (resumable, distributed)")
    p.add_argument("--config", metavar="FILE.yaml", help="settings file; flags override it")
    add_run_flags(p)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="start N worker processes on the study, each with its share of the CPU threads "
        "(needs --storage postgresql://... or journal:FILE.log; SQLite takes one writer)",
    )
    p.add_argument(
        "--devices",
        metavar="0,1,...",
        help="GPUs for the workers, one each in turn (CUDA_VISIBLE_DEVICES); 'all': every visible "
        "GPU (the default with --workers where CUDA is available)",
    )
    p.set_defaults(func=run_search)

    s = sub.add_parser("status", help="a study's trial counts and current Pareto set")
    add_run_flags(s, {"out", "storage", "study"})
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=run_status)


class _Display:
    """A progress bar over trials (ETA, best NetScore, Pareto size), a line per finished trial."""

    def __init__(self, total: int, epochs: int, quiet: bool) -> None:
        from search.console import progress_bar

        self.quiet = quiet
        self.progress = progress_bar(quiet=quiet, transient=False)
        self.trials = self.progress.add_task("trials", total=total)
        self.epochs = self.progress.add_task("  epochs", total=epochs, visible=False)

    def epoch(self, epoch: int, epochs: int, val_accuracy: float) -> None:
        self.progress.update(
            self.epochs,
            completed=epoch,
            total=epochs,
            visible=True,
            description=f"  epochs (val {val_accuracy:.1f} %)",
        )

    def trial_done(self, line: str, finished: int, best: float | None, pareto: int) -> None:
        self.progress.console.print(line, soft_wrap=True)
        best_text = f"{best:.1f}" if best is not None else "-"
        self.progress.update(
            self.trials,
            completed=finished,
            description=f"trials (best NetScore {best_text}, Pareto {pareto})",
        )
        self.progress.update(self.epochs, completed=0, visible=False, description="  epochs")


def trial_line(report: Any) -> str:
    a = report.attrs
    shown = (report.status or report.state.lower()).replace("_", " ")
    head = f"#{report.number:<3} {a.get('arch_id', '?'):<10} {shown:<13}"
    size = f"params {a.get('params', 0) / 1e6:5.3f} M  MACs {a.get('macs', 0) / 1e9:6.3f} G"
    if report.status == "complete":
        score = f"val {a['val_accuracy']:5.1f} %  {size}  NetScore {a['netscore']:5.1f}"
        return f"{head} {score}  ({report.seconds:.0f} s)"
    if report.status in ("stopped_early", "pruned"):
        reason = a.get("stop_reason") or a.get("prune_reason", "")
        return f"{head} {size}  {reason}  ({report.seconds:.0f} s)"
    if report.status == "reused":
        return f"{head} the architecture of trial {a.get('reused_from')}: its stored result reused"
    if report.status == "infeasible":
        return f"{head} {size}  over budget, not trained"
    return f"{head} {a.get('fail_reason', '')}"


def _resume_command() -> str:
    """The command line that resumes this run (the same arguments resume the same study)."""
    from search.console import invocation

    return f"{invocation()} " + shlex.join(sys.argv[1:])


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system or container stopping the job), handled as Ctrl-C is."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` while a search runs (main thread only), so the running
    trial is marked and queued again, as on Ctrl-C, instead of staying RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_search(args: argparse.Namespace) -> int:
    import optuna

    from search.driver.artifacts import upload_weights
    from search.driver.objective import TrainingEvaluator
    from search.driver.storage import artifact_store, probe_store, redact
    from search.driver.study import SearchDriver, best_netscore, pareto_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = config_from_args(args)
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if config.out_dir.exists() and not config.out_dir.is_dir():
        raise UsageError(f"--out {config.out}: is a file, not a folder")
    if workers > 1:
        return _run_workers(args, config, workers)
    fresh = not config.out_dir.exists()
    try:
        config.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {config.out}: cannot create the folder ({e.strerror or e})") from None
    threads_note = _set_threads()
    display = _Display(config.trials, config.train.epochs, bool(args.quiet))
    try:
        evaluator = TrainingEvaluator(config, on_epoch_progress=display.epoch)
        skipped = evaluator.dataset.skipped
        for message in skipped:  # --skip-bad: said here and stored with the study's data attrs
            err_console().print(f"search run: skipped {message}", markup=False, soft_wrap=True)
        if skipped:
            err_console().print(f"search run: skipped {len(skipped)} bad lines in all", markup=False)
        store = artifact_store(config.artifacts_dir, create_parents=config.artifacts is None)
        probe_store(store, config.artifacts_dir)  # an unreachable store fails now, not after training
        # The driver refuses a study of other settings or data before anything is written here.
        driver = SearchDriver(
            config, evaluator, upload=lambda trial, path: upload_weights(store, trial, path)
        )
    except Exception:
        if fresh and config.out_dir.is_dir() and not any(config.out_dir.iterdir()):
            config.out_dir.rmdir()  # a run refused at start leaves nothing behind
        raise
    write_yaml(config, config.out_dir / "config.yaml")  # only once the run has started
    if threads_note:
        err_console().print(threads_note, soft_wrap=True)
    if "environment" not in driver.study.user_attrs:
        from evaluators.device import environment

        driver.study.set_user_attr("environment", environment(config.train.device))
    con = console()
    verb = "created" if driver.created else "resumed"
    con.print(
        f"study {config.study!r} {verb} in {redact(config.storage_url)}; "
        f"{len(driver.study.trials)} trial{'' if len(driver.study.trials) == 1 else 's'} so far, "
        f"budget {config.trials}",
        soft_wrap=True,
    )
    t = config.train
    con.print(
        f"training: protocol {t.protocol}, {t.epochs} epochs at {t.image_size} px on "
        f"{', '.join(evaluator.dataset.sources)} ({len(evaluator.dataset.splits['train'])} train / "
        f"{len(evaluator.dataset.splits['val'])} val images); space {config.space}; "
        f"majority-class rate on val {_majority(evaluator)} (what a model that learned nothing scores)",
        soft_wrap=True,
    )

    def on_trial(report: Any) -> None:
        trials = driver.study.get_trials(deepcopy=False)
        finished = sum(1 for t in trials if t.state.is_finished() and t.state.name != "FAIL")
        display.trial_done(trial_line(report), finished, best_netscore(trials), len(pareto_trials(trials)))

    driver.on_trial = on_trial
    start = time.time()
    with display.progress, _sigterm_as_interrupt():
        try:
            driver.run()
        except KeyboardInterrupt as e:
            display.progress.stop()
            counts = driver.counts()
            how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            kept = counts["complete"] + counts["pruned"]
            err_console().print(
                f"{how}: the running trial is marked failed and queued again; "
                f"{kept} finished trial{'s are' if kept != 1 else ' is'} kept "
                f"({counts['complete']} complete, {counts['pruned']} stopped early).\n"
                f"resume with: {_resume_command()}",
                soft_wrap=True,  # a command to copy: never wrapped
                markup=False,
                highlight=False,
            )
            return 143 if isinstance(e, Terminated) else 130
    _summary(driver, config, time.time() - start)
    return 0


def _set_threads() -> str | None:
    """One worker: a sane thread count (its share of the free cores), and the line that says so
    (printed once the run has started, so a run refused at start prints only its error)."""
    import os

    from evaluators.device import choose_threads, set_threads
    from search.driver.workers import WORKER_ENV

    n, why = choose_threads(1)
    set_threads(n)
    if WORKER_ENV in os.environ:
        return None
    return f"threads: {n} ({why}; set OMP_NUM_THREADS to choose)"


def _run_workers(args: argparse.Namespace, config: RunConfig, workers: int) -> int:
    """``--workers N``: N ``search run`` processes on the study, one display, Ctrl-C stops all."""
    import re
    import threading

    from evaluators.device import choose_threads
    from search.driver.storage import redact
    from search.driver.workers import check_storage, parse_devices, plan_workers, run_workers

    check_storage(config.storage_url, workers)
    devices = parse_devices(args.devices)
    if args.devices is None and config.train.device in ("auto", "cuda"):
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    threads, why = choose_threads(workers)
    argv = [*sys.argv[1:]]
    if "--quiet" not in argv:
        argv.append("--quiet")
    plans = plan_workers(argv, workers, threads, devices)
    con = console()
    gpus = f", GPUs {','.join(devices)} in turn" if devices else ""
    con.print(
        f"{workers} workers on study {config.study!r} in {redact(config.storage_url)}: "
        f"{threads} threads each ({why}){gpus}",
        soft_wrap=True,
    )
    display = _Display(config.trials, config.train.epochs, bool(args.quiet))
    created = threading.Event()
    finished = [0]
    trial = re.compile(r"^#\d+ ")

    def on_line(worker: int, line: str) -> None:
        if worker == 0 and line.startswith("study "):
            created.set()
        if trial.match(line):
            finished[0] += 1
            display.progress.update(display.trials, completed=finished[0])
        display.progress.console.print(f"[w{worker}] {line}", soft_wrap=True, markup=False, highlight=False)

    with display.progress:
        try:
            codes = run_workers(plans, on_line, stagger=created.is_set)
        except KeyboardInterrupt:
            display.progress.stop()
            err_console().print(
                f"interrupted: all {workers} workers stopped, their running trials marked failed "
                "and queued again.\n"
                f"resume with: {_resume_command()}",
                soft_wrap=True,  # a command to copy: never wrapped
                markup=False,
                highlight=False,
            )
            return 130
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad:
        err_console().print("workers that failed: " + ", ".join(f"w{i} (exit {c})" for i, c in bad))
        return max(c for _, c in bad)
    import optuna

    from search.driver.storage import open_storage
    from search.driver.study import pareto_trials

    study = optuna.load_study(study_name=config.study, storage=open_storage(config.storage_url))
    trials = study.get_trials(deepcopy=False)
    by_worker: dict[str, int] = {}
    for t in trials:
        w = str((t.user_attrs.get("runtime") or {}).get("worker", "?"))
        by_worker[w] = by_worker.get(w, 0) + 1
    share = ", ".join(f"w{w}: {n}" for w, n in sorted(by_worker.items()))
    con.print(f"all {workers} workers done; {len(trials)} trials in the study ({share})", soft_wrap=True)
    _print_pareto(pareto_trials(trials))
    from search.console import invocation

    line = f"report:  {invocation()} report --storage {config.storage_url} --study {config.study}"
    con.print(line, soft_wrap=True)
    return 0


def _summary(driver: Any, config: RunConfig, seconds: float) -> None:
    import os

    from search.driver.study import pareto_trials
    from search.driver.workers import WORKER_ENV

    counts = driver.counts()
    con = console()
    reused = f", {counts['reused']} reused" if counts["reused"] else ""
    duplicates = f", {counts['duplicate']} repeats drawn again" if counts["duplicate"] else ""
    totals = " (the study's totals)" if os.environ.get(WORKER_ENV) is not None else ""
    trained = counts["complete"] - counts["infeasible"] - counts["reused"]
    con.print(
        f"done in {seconds:.0f} s{totals}: {trained} trained, "
        f"{counts['pruned']} stopped early, "
        f"{counts['infeasible']} over budget, {counts['fail']} failed{reused}{duplicates}"
    )
    if os.environ.get(WORKER_ENV) is not None:
        return  # one of --workers N: the launcher prints the study's summary once
    _print_pareto(pareto_trials(driver.study.get_trials(deepcopy=False)), _majority(driver.evaluator))
    from search.console import invocation

    where = ["--storage", config.storage_url] if config.storage else ["--out", config.out]
    con.print(f"results: {config.out_dir.resolve()} (study {config.study!r})", soft_wrap=True)
    # one line, shell-quoted: pasted back, it runs as printed
    report = f"{invocation()} " + shlex.join(["report", *where, "--study", config.study])
    con.print(f"report:  {report}", soft_wrap=True, markup=False, highlight=False)


def _majority(evaluator: Any) -> str:
    rate = (evaluator.data_attrs().get("majority_rate") or {}).get("val")
    return f"{rate:.1f} %" if rate is not None else "n/a"


def _print_pareto(trials: list[Any], majority: str | None = None) -> None:
    if not trials:
        console().print("no completed candidate yet")
        return
    rows = []
    for t in sorted(trials, key=lambda t: t.user_attrs["macs"]):
        a = t.user_attrs
        rows.append(
            [
                t.number,
                a["arch_id"],
                f"{a['val_accuracy']:.1f}",
                f"{a['params']:,}",
                f"{a['macs'] / 1e9:.3f} G",
                f"{a['netscore']:.1f}",
            ]
        )
    chance = f"; majority-class rate {majority}" if majority else ""
    print_table(
        f"Pareto set (validation accuracy, params, MACs{chance})",
        ["trial", "arch_id", "val acc %", "params", "MACs", "NetScore"],
        rows,
    )


def run_status(args: argparse.Namespace) -> int:
    import json

    import optuna

    from search.driver.storage import load_existing_study
    from search.driver.study import best_netscore, pareto_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = config_from_args(args)
    _, study = load_existing_study(config.storage, config.out_dir, config.study)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        name = "stopped_early" if t.state.name == "PRUNED" else t.state.name.lower()
        counts[name] = counts.get(name, 0) + 1
    counts["infeasible"] = sum(1 for t in trials if t.user_attrs.get("status") == "infeasible")
    duplicates = sum(1 for t in trials if t.user_attrs.get("status") == "duplicate")
    if duplicates:  # discarded repeats of a trained architecture, not failed candidates
        counts["duplicate"] = duplicates
        counts["fail"] = counts.get("fail", 0) - duplicates
        if not counts["fail"]:
            del counts["fail"]
    front = pareto_trials(trials)
    if args.json:
        print(
            json.dumps(
                {
                    "study": config.study,
                    "counts": counts,
                    "best_netscore": best_netscore(trials),
                    "pareto": [
                        {
                            "number": t.number,
                            **{
                                k: t.user_attrs[k]
                                for k in ("arch_id", "val_accuracy", "params", "macs", "netscore")
                            },
                        }
                        for t in front
                    ],
                },
                indent=2,
            )
        )
        return 0
    shown = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items()))
    console().print(f"study {config.study!r}: {shown}")
    _print_pareto(front)
    return 0
