"""``search baselines``: train the comparison networks under the search's training configuration."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from search.commands._common import (
    INHERITED,
    add_run_flags,
    training_setup,
)
from search.console import console, print_table
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baselines",
        help="train the baselines like the search's trials and compare them",
    )
    p.add_argument("--only", metavar="A,B", help="comma-separated baseline names (default: all)")
    p.add_argument("--config", metavar="FILE.yaml", help="settings file; flags override it")
    add_run_flags(p, {"out", "storage", "study", *INHERITED})
    p.set_defaults(func=run_baselines_command)


def _names(only: str | None) -> list[str]:
    from baselines import BASELINES, baseline_names

    if not only:
        return baseline_names()
    names = [n.strip() for n in only.split(",") if n.strip()]
    for n in names:
        if n not in BASELINES:
            raise UsageError(BASELINES.unknown_message(n))
    return names


def run_baselines_command(args: argparse.Namespace) -> int:
    from search.driver.artifacts import upload_weights
    from search.driver.baselines import run_baselines

    names = _names(args.only)
    setup = training_setup(args, "these baselines are")
    config, evaluator, store, storage = setup.config, setup.evaluator, setup.store, setup.storage
    con = console()

    def on_done(outcome: Any) -> None:
        if outcome.skipped:
            con.print(
                f"{outcome.name:<18} already trained under this configuration (trial {outcome.trial.number})"
            )
        elif outcome.error:
            con.print(f"{outcome.name:<18} failed: {outcome.error}")
        else:
            a = outcome.trial.user_attrs
            con.print(f"{outcome.name:<18} val {a['val_accuracy']:5.1f} %  NetScore {a['netscore']:5.1f}")

    with con.status("training baselines") if not args.quiet else contextlib.nullcontext():
        outcomes = run_baselines(
            config, names, storage, evaluator, lambda trial, path: upload_weights(store, trial, path), on_done
        )
    print_comparison([o.trial for o in outcomes if o.trial is not None])
    return 1 if any(o.error for o in outcomes) else 0


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def print_comparison(trials: list[Any]) -> None:
    """The table a user reads first: complexity, accuracy, COVID-19 sensitivity/PPV, NetScore."""
    from evaluators.metrics import EvalResult

    rows = []
    for t in sorted(trials, key=lambda t: t.user_attrs["macs"]):
        a = t.user_attrs
        test = EvalResult.from_dict(a["test_metrics"]) if a.get("test_metrics") else None
        covid = test.per_class.get("COVID-19") if test is not None else None
        rows.append(
            [
                a.get("display_name", a.get("baseline")),
                f"{a['params'] / 1e6:.3f} M",
                f"{a['macs'] / 1e9:.3f} G",
                f"{a['flops'] / 1e9:.3f} G",
                _pct(a["val_accuracy"]),
                _pct(test.accuracy if test else None),
                _pct(covid.sensitivity if covid else None),
                _pct(covid.ppv if covid else None),
                f"{a['netscore']:.1f}",
            ]
        )
    size = trials[0].user_attrs["complexity_size"] if trials else 512
    print_table(
        f"baselines (complexity at {size}x{size}x3, 3 classes; NetScore from validation accuracy)",
        [
            "model",
            "params",
            "MACs",
            "FLOPs",
            "val acc %",
            "test acc %",
            "COVID sens %",
            "COVID PPV %",
            "NetScore",
        ],
        rows,
    )
