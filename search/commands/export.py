"""``search export``: write chosen trials as verified ONNX, weights, spec and a model card."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from search.console import console, err_console, print_table
from search.errors import UsageError

HELP = {
    "out": "the search's output folder, as in search run and search report (its study.db is read unless "
    "--storage is given; default runs/search)",
    "storage": "Optuna storage URL of the study (default: RUN/study.db)",
    "artifacts": "artifact store holding the weights (default: the one the study records)",
    "export_dir": "destination folder (with --pick pareto: one subfolder per member; default runs/export)",
    "format": "comma-separated files to write: onnx (model.onnx), pt (weights.pt), json (spec.json); "
    "model.json is always written",
    "data": "data folder for the parity images (default: the study's data); repeatable",
}


def register(sub: argparse._SubParsersAction) -> None:
    from search.export.bundle import PICKS
    from search.export.onnx import PARITY_ATOL, PARITY_RTOL, flag_number

    p = sub.add_parser("export", help="export trials as ONNX + weights + model card, verified")
    where = p.add_argument_group("where the study is")
    where.add_argument("--out", metavar="DIR", help=HELP["out"])
    # the old spelling: --run RUN [--out DEST] (then --out is the destination, as it was)
    where.add_argument("--run", metavar="DIR", help=argparse.SUPPRESS)
    where.add_argument("--storage", metavar="URL", help=HELP["storage"])
    where.add_argument("--study", default="covidnet-ct", metavar="NAME", help="study name")
    where.add_argument("--artifacts", metavar="LOCATION", help=HELP["artifacts"])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, metavar="N", help="export trial number N")
    which.add_argument("--pick", choices=PICKS, help="choose among the completed, feasible trials")
    which.add_argument("--baseline", metavar="NAME", help="export a trained baseline of the study")
    which.add_argument(
        "--pruned",
        type=int,
        metavar="N",
        help="export channel-pruned model N (trial N of <study>:pruned, made by search prune)",
    )
    p.add_argument("--export-dir", metavar="DIR", help=HELP["export_dir"])
    p.add_argument("--format", default="onnx,pt,json", metavar="LIST", help=HELP["format"])
    p.add_argument("--overwrite", action="store_true", help="replace existing export folders")
    p.add_argument("--data", action="append", metavar="DIR", help=HELP["data"])
    p.add_argument("--parity-images", type=int, default=16, metavar="N", help="images compared (default 16)")
    p.add_argument(
        "--atol",
        type=float,
        default=PARITY_ATOL,
        metavar="X",
        help=f"parity: absolute tolerance on logits ({flag_number(PARITY_ATOL)})",
    )
    p.add_argument(
        "--rtol",
        type=float,
        default=PARITY_RTOL,
        metavar="X",
        help=f"parity: tolerance per unit of logit ({flag_number(PARITY_RTOL)})",
    )
    p.add_argument("--latency-repeats", type=int, default=20, metavar="N", help="timed runs (0: no latency)")
    p.add_argument("--latency-warmup", type=int, default=3, metavar="N", help="untimed runs before timing")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for the latency runs")
    p.add_argument("--json", action="store_true", help="print the exports as JSON")
    p.set_defaults(func=run_export)


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from search.driver.storage import load_existing_study

    return load_existing_study(args.storage, args.run_dir, args.study, dir_flag=args.run_flag)


def _open_pruned(args: argparse.Namespace) -> tuple[Any, Any]:
    """``<study>:pruned``, where ``search prune`` stores its channel-pruned models."""
    from search.driver.storage import load_existing_study

    try:
        return load_existing_study(args.storage, args.run_dir, f"{args.study}:pruned", dir_flag=args.run_flag)
    except UsageError as e:
        raise UsageError(f"{e} (channel-pruned models are made by search prune)") from None


def run_export(args: argparse.Namespace) -> int:
    from evaluators.extras import MissingExtraError

    _where(args)
    try:
        return _run_export(args)
    except MissingExtraError as e:  # a missing optional dependency is a setup problem: one line, exit 2
        raise UsageError(str(e)) from None


def _where(args: argparse.Namespace) -> None:
    """The run folder and the destination: ``--out RUN --export-dir DEST`` as the other commands
    name the run folder; the old ``--run RUN [--out DEST]`` still works (and says so once)."""
    if args.run is not None:
        if args.export_dir is not None and args.out is not None:
            raise UsageError(
                "--run and --out name the same thing with --export-dir: give --out RUN --export-dir DEST"
            )
        args.run_dir, args.run_flag = args.run, "--run"
        args.dest = args.export_dir or args.out or "runs/export"
        err_console().print(
            "search export: --run is the old spelling; use --out RUN --export-dir DEST as search run and "
            "search report do",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        return
    args.run_dir, args.run_flag = args.out or "runs/search", "--out"
    args.dest = args.export_dir or "runs/export"


def _run_export(args: argparse.Namespace) -> int:
    import optuna

    from search.export.bundle import ExportOptions, export_trial, find_baseline, find_trial, pick_trials
    from search.export.load import channels_of, description_of, image_size_of
    from search.export.onnx import ExportFailed, study_images

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    for name, value, low in (
        ("--parity-images", args.parity_images, 1),
        ("--latency-repeats", args.latency_repeats, 0),
        ("--latency-warmup", args.latency_warmup, 0),
    ):
        if value < low:
            raise UsageError(f"{name} must be at least {low}, got {value}")
    if args.atol < 0 or args.rtol < 0:
        raise UsageError(f"--atol and --rtol must be at least 0, got {args.atol:g} and {args.rtol:g}")
    options = ExportOptions(
        formats=formats,
        atol=args.atol,
        rtol=args.rtol,
        latency_repeats=args.latency_repeats,
        latency_warmup=args.latency_warmup,
        threads=args.threads,
        overwrite=args.overwrite,
    )
    storage, study = _open_pruned(args) if args.pruned is not None else _open(args)
    source_study = study
    if args.baseline:
        source_study, trial = find_baseline(storage, args.study, args.baseline)
        chosen = [trial]
    elif args.pruned is not None:
        chosen = [find_trial(study, args.pruned)]
    elif args.trial is not None:
        chosen = [find_trial(study, args.trial)]
    else:
        chosen = pick_trials(study.get_trials(deepcopy=False), args.pick)
    out = Path(args.dest)
    many = args.pick == "pareto"
    targets = [
        (t, out / f"trial-{t.number}-{t.user_attrs.get('arch_id', 'model')}" if many else out) for t in chosen
    ]
    if not args.overwrite:
        taken = [str(d) for _, d in targets if d.exists()]
        if taken:
            verb = "exists" if len(taken) == 1 else "exist"
            raise UsageError(f"{', '.join(taken)} already {verb}; pass --overwrite or choose another --out")

    data_dirs = args.data or (study.user_attrs.get("run_config") or {}).get("data") or None
    con = console()
    results, failures = [], []
    images_by_size: dict[tuple[int, int], tuple[Any, str]] = {}
    for trial, dest in targets:
        label = f"trial {trial.number} ({trial.user_attrs.get('arch_id', '?')})"
        spinner = (
            con.status(f"exporting {label}") if not (args.quiet or args.json) else contextlib.nullcontext()
        )
        try:
            with spinner:
                images, source = None, ""
                if "onnx" in formats:
                    size = image_size_of(source_study, trial)
                    channels = channels_of(description_of(trial))
                    if (size, channels) not in images_by_size:
                        images_by_size[size, channels] = study_images(
                            data_dirs, size, channels, count=args.parity_images
                        )
                    images, source = images_by_size[size, channels]
                result = export_trial(
                    source_study, trial, dest, images, options, artifacts=args.artifacts, images_source=source
                )
        except ExportFailed as e:
            failures.append((trial.number, str(e)))
            err_console().print(f"{label}: export failed: {e}")
            continue
        results.append(result)
        if not args.json:
            _print_one(result)
    if many and results:
        index = [{"trial": r.number, "arch_id": r.arch_id, "folder": r.out_dir.name} for r in results]
        (out / "pareto.json").write_text(json.dumps(index, indent=2) + "\n")
    if args.json:
        print(
            json.dumps(
                [_summary(r) for r in results] + [{"trial": n, "error": e} for n, e in failures], indent=2
            )
        )
    elif len(results) > 1:
        _print_table(results)
    return 1 if failures else 0


def _summary(r: Any) -> dict[str, Any]:
    c = r.card
    return {
        "trial": r.number,
        "arch_id": r.arch_id,
        "out": str(r.out_dir),
        "params": c.get("params"),
        "macs": c.get("macs"),
        "netscore": c.get("netscore"),
        "parity": c.get("parity"),
        "latency": c.get("latency"),
    }


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "torch": "PyTorch eager"}


def _print_one(r: Any) -> None:
    c = r.card
    con = console()
    con.print(
        f"trial {r.number} ({r.arch_id}) -> {r.out_dir}: {', '.join(sorted([*c['files'], 'model.json']))}",
        markup=False,
    )
    parity = c.get("parity")
    if parity:
        same = "same classes" if parity["same_class"] else f"{parity['mismatched']} classes differ"
        con.print(
            f"  ONNX parity: max |ONNX Runtime - PyTorch| {parity['max_abs_diff']:.1e} on "
            f"{parity['images']} images (tolerance {_tolerance(parity)}), {same}"
        )
    lat = c.get("latency")
    if lat:
        size = "x".join(str(v) for v in lat["input_size"])
        threads = f"{lat['threads']} thread" + ("s" if lat["threads"] != 1 else "")
        con.print(f"  CPU latency at {size}, {threads}, ms per batch (median / p90):")
        for runtime in dict.fromkeys(s["runtime"] for s in lat["stats"]):
            parts = [
                f"batch {s['batch_size']}: {s['median_ms']:.2f} / {s['p90_ms']:.2f}"
                for s in lat["stats"]
                if s["runtime"] == runtime
            ]
            con.print(f"    {RUNTIME_NAMES.get(runtime, runtime):<14} " + ",  ".join(parts))


def _tolerance(parity: dict[str, Any]) -> str:
    rtol = parity.get("rtol") or 0
    return f"{parity['atol']:g}" + (f" + {rtol:g} x |logit|" if rtol else "")


def _print_table(results: list[Any]) -> None:
    rows = []
    for r in results:
        c = r.card
        lat = c.get("latency") or {}
        ratio = (lat.get("onnxruntime_over_torch") or {}).get("1")
        rows.append(
            [
                r.number,
                r.arch_id,
                f"{(c.get('val_accuracy') or 0):.1f}",
                f"{(c.get('params') or 0):,}",
                f"{(c.get('macs') or 0) / 1e9:.3f} G",
                f"{(c.get('parity') or {}).get('max_abs_diff', float('nan')):.1e}",
                f"{ratio:.2f}" if ratio else "-",
            ]
        )
    print_table(
        f"exported to {results[0].out_dir.parent}",
        ["trial", "arch_id", "val acc %", "params", "MACs", "max diff", "ORT/torch"],
        rows,
    )
