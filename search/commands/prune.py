"""``search prune``: structured channel pruning of a trained network to a MACs target."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from search.commands._common import INHERITED, add_run_flags, parse_count, training_setup
from search.console import console, print_table

HELP = {
    "trial": "prune trial N of the search study",
    "baseline": "prune the trained baseline NAME of <study>:baselines (see `search baselines`)",
    "arch": "train NAME (ct-l, a spec .json, or a baseline) from scratch under the study's "
    "configuration, then prune it",
    "target_macs": "MACs to reach at --complexity-size (e.g. 0.97G), within 2 %%",
    "target_ratio": "fraction of the MACs to remove (e.g. 0.5)",
    "importance": "channel importance: magnitude (L2 norm), taylor (weight x gradient on training "
    "batches) or lamp (default magnitude)",
    "scope": "local: every layer loses the same fraction; global: channels ranked across layers "
    "(default: global for lamp, else local)",
    "steps": "pruning rounds, fine-tuning after each (default 3)",
    "finetune_epochs": "epochs of fine-tuning after each round (default: the study's --epochs)",
    "no_onnx_check": "skip the ONNX export parity check",
}


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.5, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (the fraction removed), got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from search.pruning.core import IMPORTANCES, SCOPES

    p = sub.add_parser(
        "prune",
        help="prune a trained network to a MACs target (torch-pruning), stored in <study>:pruned",
        description="Structured channel pruning with torch-pruning's dependency graph, in rounds with "
        "fine-tuning between them, on the study's data and training configuration. The result is "
        "stored as a trial of <study>:pruned, with the same attributes as a search trial.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--trial", metavar="N", help=HELP["trial"])
    source.add_argument("--baseline", metavar="NAME", help=HELP["baseline"])
    source.add_argument("--arch", metavar="NAME", help=HELP["arch"])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-macs", type=parse_count, metavar="M", help=HELP["target_macs"])
    target.add_argument("--target-ratio", type=_ratio, metavar="R", help=HELP["target_ratio"])
    p.add_argument("--importance", choices=IMPORTANCES, default="magnitude", help=HELP["importance"])
    p.add_argument("--scope", choices=SCOPES, default=None, help=HELP["scope"])
    p.add_argument("--steps", type=int, default=3, metavar="K", help=HELP["steps"])
    p.add_argument("--finetune-epochs", type=int, default=None, metavar="E", help=HELP["finetune_epochs"])
    p.add_argument("--no-onnx-check", action="store_true", help=HELP["no_onnx_check"])
    p.add_argument("--config", metavar="FILE.yaml", help="settings file; flags override it")
    add_run_flags(p, {"out", "storage", "study", *INHERITED})
    p.set_defaults(func=run_prune_command)


def request_from(args: argparse.Namespace) -> Any:
    from search.pruning.runs import PruneRequest

    kind = next(k for k in ("trial", "baseline", "arch") if getattr(args, k, None) is not None)
    return PruneRequest(
        source=kind,
        name=str(getattr(args, kind)),
        target_macs=args.target_macs,
        target_ratio=args.target_ratio,
        importance=args.importance,
        scope=args.scope,
        steps=args.steps,
        finetune_epochs=args.finetune_epochs,
    )


def run_prune_command(args: argparse.Namespace) -> int:
    from search.driver.artifacts import upload_weights
    from search.pruning.core import require_torch_pruning
    from search.pruning.runs import run_prune

    require_torch_pruning()
    request = request_from(args)
    setup = training_setup(args, "this pruned model is")
    config, evaluator, store, storage = setup.config, setup.evaluator, setup.store, setup.storage
    con = console()

    def on_step(step: Any) -> None:
        acc = f"val {step.finetune.val_accuracy:5.1f} %" if step.finetune is not None else ""
        con.print(
            f"round {step.step}: ratio {step.ratio:.3f}  MACs {_macs(step.macs)} "
            f"(round target {_macs(step.target_macs)})  params {step.params:,}  {acc}"
        )

    status = con.status(f"pruning ({request.origin})") if not args.quiet else contextlib.nullcontext()
    with status:
        outcome = run_prune(
            request,
            config,
            storage,
            evaluator,
            lambda trial, path: upload_weights(store, trial, path),
            on_step=on_step,
            onnx_check=not args.no_onnx_check,
        )
    print_result(outcome)
    return 0


def print_result(outcome: Any) -> None:
    a = outcome.trial.user_attrs
    src = a["source"]
    checks = a["prune_checks"]
    rows = [
        [
            "source",
            f"{src['params']:,}",
            _macs(src["macs"]),
            _pct(src.get("val_accuracy")),
            _pct(src.get("netscore"), 1),
        ],
        [
            "pruned",
            f"{a['params']:,}",
            _macs(a["macs"]),
            _pct(a["val_accuracy"]),
            _pct(a["netscore"], 1),
        ],
    ]
    print_table(
        f"{a['origin']} ({a['prune_method']}, {a['prune_scope']}), MACs at "
        f"{a['complexity_size']}x{a['complexity_size']}",
        ["model", "params", "MACs", "val acc %", "NetScore"],
        rows,
    )
    onnx = checks.get("onnx")
    onnx_text = "skipped" if onnx is None else f"max |diff| {onnx['max_abs_diff']:.2g}"
    console().print(
        f"target {_macs(a['target_macs'])} MACs: reached {_macs(a['macs'])} "
        f"({(a['macs'] / a['target_macs'] - 1) * 100:+.2f} %); outputs finite; ONNX parity {onnx_text}"
    )
    console().print(
        f"stored: trial {outcome.trial.number} of study {outcome.study!r} (arch_id {a['arch_id']})"
    )


def _pct(v: Any, digits: int = 1) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def _macs(n: int) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.2f} M"
