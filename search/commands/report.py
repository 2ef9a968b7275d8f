"""``search report``: Pareto fronts, paper-style tables and the search's progress, from the storage."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from search.commands._common import add_run_flags, config_from_args
from search.console import console, print_table
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="Pareto fronts, Tables 3-5 against the baselines, search progress (HTML, PNG/SVG, MD, CSV)",
    )
    add_run_flags(p, {"out", "storage", "study"})
    p.add_argument("--report-dir", metavar="DIR", help="folder the report is written to (default OUT/report)")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="split whose per-class metrics Tables 4-5 show (default test)",
    )
    p.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="K",
        help="opt-in explainability audit of the best-NetScore candidate and CT L on K test images each "
        "(the [explain] extra; default 0: none)",
    )
    p.add_argument(
        "--explain-method",
        choices=("gradcam", "integrated-gradients"),
        default="gradcam",
        help="attribution method of the audit (default gradcam)",
    )
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    import optuna

    from reports.build import NoCompletedTrials, build_report
    from reports.collect import StudyNotFound
    from search.driver.storage import is_journal, journal_path, open_storage, redact, sqlite_path

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = config_from_args(args)
    url = config.storage_url
    db = sqlite_path(url)
    if db is not None and not db.is_file():
        hint = "; pass --out or --storage" if not config.storage else ""
        raise UsageError(f"no study database at {db}{hint}")
    if is_journal(url) and not journal_path(url).is_file():
        raise UsageError(f"no journal file at {journal_path(url)}")
    storage = open_storage(url)
    out_dir = Path(args.report_dir) if args.report_dir else config.out_dir / "report"
    if args.explain < 0:
        raise UsageError(f"--explain must be at least 0, got {args.explain}")
    explain = None
    if args.explain:
        from search.audit import report_explainer
        from search.console import err_console

        explain = report_explainer(
            storage,
            config.study,
            n=args.explain,
            method=args.explain_method,
            on_skip=lambda line: err_console().print(f"search report: {line}", markup=False),
        )
    quiet = bool(getattr(args, "quiet", False))
    con = console()
    status = con.status(f"building the report of {config.study!r}") if not quiet else contextlib.nullcontext()
    try:
        with status:
            report = build_report(
                storage, config.study, out_dir, split=args.split, source=redact(url), explain=explain
            )
    except (StudyNotFound, NoCompletedTrials) as e:
        raise UsageError(str(e)) from None
    s = report.summary
    counts = ", ".join(
        f"{s[f'trials {k}']} {k}"
        for k in ("complete", "stopped early", "infeasible", "failed", "running")
        if s.get(f"trials {k}")
    )
    compute = s["compute time (sum over trials)"]
    con.print(f"study {config.study!r}: {s['trials']} trials ({counts}); compute {compute}")
    con.print(
        f"Pareto members {s['Pareto members']} (trials {', '.join(map(str, report.pareto_numbers))}); "
        f"best NetScore {s['best NetScore']}; hypervolume {s['hypervolume']:.4f}"
    )
    if report.final is not None:
        con.print(
            f"final stage: {s['final stage']}; final Pareto: {s['final Pareto members']}; "
            f"proxy fidelity (Kendall tau) {s['proxy fidelity (Kendall tau, proxy vs final)']}",
            soft_wrap=True,
        )
    if not quiet:
        _print_table3(report.tables[0])
    con.print(f"report: {report.index.resolve()}")
    return 0


def _print_table3(table: Any) -> None:
    """The report's Table 3 in the terminal, without the columns a terminal has no room for."""
    cols = [c for c in table.columns if c.key not in ("arch_id", "number", "flops", "netscore_test")]
    rows = [[table.cell(r, c) for c in cols] for r in table.rows]
    print_table(f"{table.title} (also table3.md / .csv / .html)", [c.header for c in cols], rows)
