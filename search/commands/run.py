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
    head = f"#{report.number:<3} {a.get('arch_id', '?'):<10} {report.status or report.state.lower():<10}"
    size = f"params {a.get('params', 0) / 1e6:5.3f} M  MACs {a.get('macs', 0) / 1e9:6.3f} G"
    if report.status == "complete":
        score = f"val {a['val_accuracy']:5.1f} %  {size}  NetScore {a['netscore']:5.1f}"
        return f"{head} {score}  ({report.seconds:.0f} s)"
    if report.status == "pruned":
        return f"{head} {size}  {a.get('prune_reason', '')}  ({report.seconds:.0f} s)"
    if report.status == "reused":
        return f"{head} the architecture of trial {a.get('reused_from')}: its stored result reused"
    if report.status == "infeasible":
        return f"{head} {size}  over budget, not trained"
    return f"{head} {a.get('fail_reason', '')}"


def _resume_command() -> str:
    """The command line that resumes this run (the same arguments resume the same study)."""
    return "search " + shlex.join(sys.argv[1:])


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
    if config.out_dir.exists() and not config.out_dir.is_dir():
        raise UsageError(f"--out {config.out}: is a file, not a folder")
    try:
        config.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {config.out}: cannot create the folder ({e.strerror or e})") from None
    display = _Display(config.trials, config.train.epochs, bool(args.quiet))
    evaluator = TrainingEvaluator(config, on_epoch_progress=display.epoch)
    skipped = evaluator.dataset.skipped
    for message in skipped:  # --skip-bad: said here and stored with the study's data attrs
        err_console().print(f"search run: skipped {message}", markup=False, soft_wrap=True)
    if skipped:
        err_console().print(f"search run: skipped {len(skipped)} bad lines in all", markup=False)
    store = artifact_store(config.artifacts_dir, create_parents=config.artifacts is None)
    probe_store(store, config.artifacts_dir)  # an unreachable store fails now, not after training
    # The driver refuses a study of other settings or data before anything is written here.
    driver = SearchDriver(config, evaluator, upload=lambda trial, path: upload_weights(store, trial, path))
    write_yaml(config, config.out_dir / "config.yaml")
    con = console()
    verb = "created" if driver.created else "resumed"
    con.print(
        f"study {config.study!r} {verb} in {redact(config.storage_url)}; "
        f"{len(driver.study.trials)} trials so far, budget {config.trials}",
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
            err_console().print(
                f"{how}: the running trial is marked failed and queued again; "
                f"{counts['complete']} completed trials are kept.\n"
                f"resume with: {_resume_command()}",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
            return 143 if isinstance(e, Terminated) else 130
    _summary(driver, config, time.time() - start)
    return 0


def _summary(driver: Any, config: RunConfig, seconds: float) -> None:
    from search.driver.study import pareto_trials

    counts = driver.counts()
    con = console()
    reused = f", {counts['reused']} reused" if counts["reused"] else ""
    duplicates = f", {counts['duplicate']} repeats drawn again" if counts["duplicate"] else ""
    con.print(
        f"done in {seconds:.0f} s: {counts['complete'] - counts['infeasible'] - counts['reused']} trained, "
        f"{counts['pruned']} pruned, "
        f"{counts['infeasible']} over budget, {counts['fail']} failed{reused}{duplicates}"
    )
    _print_pareto(pareto_trials(driver.study.get_trials(deepcopy=False)), _majority(driver.evaluator))
    where = ["--storage", config.storage_url] if config.storage else ["--out", config.out]
    con.print(f"results: {config.out_dir.resolve()} (study {config.study!r})", soft_wrap=True)
    # one line, shell-quoted: pasted back, it runs as printed
    report = shlex.join(["search", "report", *where, "--study", config.study])
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
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
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
    console().print(f"study {config.study!r}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    _print_pareto(front)
    return 0
