"""``search explain``: the explainability audit of one model: overlays, a grid and the share of
attribution inside the body box, stored with the trial when the model is a study's."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from search.commands._common import add_run_flags, config_from_args
from search.console import console, print_table
from search.errors import UsageError

HELP = {
    "model": "an export folder of `search export` (spec.json + weights.pt; model.json gives the input size)",
    "trial": "trial number N of the study (--out/--storage, --study)",
    "baseline": "a trained baseline of the study, by registry name (e.g. covidnet_ct_l)",
    "images": "image files to explain (8-bit CT slices); boxes from --labels, else estimated",
    "labels": "COVIDx label file giving the --images' classes and body boxes",
    "data": "COVIDx-format data folder (repeatable; default: the data the model was trained on)",
    "split": "split of --data to explain (default test)",
    "n": "images of the split, classes taken in turn (default 8)",
    "method": "gradcam (last convolutional stage) or integrated-gradients (default gradcam)",
    "steps": "integration steps of integrated gradients (default 32)",
    "image_size": "input side (default: the training image size the trial or model.json records)",
    "out_dir": "where overlays/, grid.png and explain.json go "
    "(default OUT/explain/trial-N-METHOD, or runs/explain/<folder>-METHOD)",
    "device": "auto, cpu, cuda or cuda:N (default cpu)",
    "no_store": "do not keep the summary with the trial",
    "json": "print the summary as JSON",
}


def register(sub: argparse._SubParsersAction) -> None:
    from evaluators.data.covidx import SPLITS
    from evaluators.explain import METHODS

    p = sub.add_parser("explain", help="explainability audit: does a model look inside the body box?")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="DIR", help=HELP["model"])
    which.add_argument("--trial", type=int, metavar="N", help=HELP["trial"])
    which.add_argument("--baseline", metavar="NAME", help=HELP["baseline"])
    add_run_flags(p, {"out", "storage", "study", "artifacts"})
    images = p.add_mutually_exclusive_group()
    images.add_argument("--images", nargs="+", metavar="IMAGE", help=HELP["images"])
    images.add_argument("--data", action="append", metavar="DIR", dest="data_dirs", help=HELP["data"])
    p.add_argument("--labels", metavar="FILE", help=HELP["labels"])
    p.add_argument("--split", choices=SPLITS, default="test", help=HELP["split"])
    p.add_argument("--n", type=int, default=8, metavar="K", help=HELP["n"])
    p.add_argument("--method", choices=METHODS, default="gradcam", help=HELP["method"])
    p.add_argument("--steps", type=int, default=None, metavar="N", help=HELP["steps"])
    # dests apart from RunConfig's image_size/device, which config_from_args would read as overrides
    p.add_argument("--image-size", type=int, metavar="N", dest="size", help=HELP["image_size"])
    p.add_argument("--out-dir", metavar="DIR", help=HELP["out_dir"])
    p.add_argument("--device", default="cpu", dest="run_device", help=HELP["device"])
    p.add_argument("--no-store", action="store_true", help=HELP["no_store"])
    p.add_argument("--json", action="store_true", help=HELP["json"])
    p.set_defaults(func=run_explain_command)


def _open_study(args: argparse.Namespace) -> tuple[Any, Any]:
    from search.driver.storage import load_existing_study

    config = config_from_args(args)
    return load_existing_study(config.storage, config.out_dir, config.study)


def _check(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.size is not None and args.size < 8:
        raise UsageError(f"--image-size must be at least 8, got {args.size}")
    if args.labels and not args.images:
        raise UsageError("--labels goes with --images (a --data folder has its own label files)")


def run_explain_command(args: argparse.Namespace) -> int:
    import optuna

    from evaluators.explain import inputs_from_files
    from evaluators.extras import MissingExtraError
    from search.audit import (
        load_exported,
        load_trial,
        run_explain,
        split_inputs,
        store_summary,
        write_explanations,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check(args)
    study = trial = None
    if args.model:
        loaded = load_exported(args.model, args.size)
        default_out = Path("runs/explain") / f"{_slug(Path(args.model).resolve().name)}-{args.method}"
    else:
        from search.export.bundle import find_baseline, find_trial

        storage, study = _open_study(args)
        if args.baseline:
            study, trial = find_baseline(storage, study.study_name, args.baseline)
        else:
            trial = find_trial(study, args.trial)
        loaded = load_trial(study, trial, getattr(args, "artifacts", None), args.size)
        default_out = config_from_args(args).out_dir / "explain" / f"trial-{trial.number}-{args.method}"
        if args.baseline:
            default_out = default_out.with_name(f"{args.baseline}-{args.method}")
    if args.images:
        inputs = inputs_from_files(args.images, args.labels)
        source = f"{len(inputs)} files" + (f" with boxes from {args.labels}" if args.labels else "")
    else:
        inputs, source = split_inputs(args.data_dirs or loaded.data_dirs, args.split, args.n)
    out_dir = Path(args.out_dir) if args.out_dir else default_out
    try:
        results, summary = _with_progress(args, loaded, inputs, source, run_explain)
    except MissingExtraError as e:
        raise UsageError(str(e)) from e
    run = write_explanations(loaded, results, summary, out_dir)
    stored = None
    if study is not None and trial is not None and not args.no_store:
        stored = store_summary(study, trial, summary)
    if args.json:
        print(json.dumps(json.loads(run.json_path.read_text())["summary"], indent=2))
        return 0
    _print(loaded.name, run, stored)
    return 0


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"


def _with_progress(args: argparse.Namespace, loaded: Any, inputs: Any, source: str, run: Any) -> Any:
    from search.console import progress_bar

    quiet = bool(getattr(args, "quiet", False)) or bool(args.json)
    with progress_bar(quiet=quiet) as progress:
        task = progress.add_task(f"explaining ({args.method})", total=len(inputs))
        return run(
            loaded,
            inputs,
            method=args.method,
            source=source,
            steps=args.steps,
            device=args.run_device,
            on_image=lambda _: progress.advance(task),
        )


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _print(name: str, run: Any, stored: str | None) -> None:
    from evaluators.explain import order_most_outside

    s = run.summary
    rows = [
        [
            i,
            r.name,
            "" if r.label is None else r.to_dict()["label_name"],
            r.to_dict()["predicted_name"],
            f"{r.probability:.2f}",
            _pct(r.share_inside),
            "mostly outside" if r.mostly_outside else "",
        ]
        for i, r in enumerate(order_most_outside(run.results), start=1)
    ]
    print_table(
        f"{name}: {s.method}, share of positive attribution inside the body box (most outside first)",
        ["#", "image", "true", "predicted", "prob", "inside", ""],
        rows,
    )
    con = console()
    acc = "" if s.accuracy is None else f"; accuracy on whole slices {s.accuracy:.1f} %"
    con.print(
        f"mean share inside {_pct(s.mean_share_inside)} (a uniform map: {_pct(s.mean_box_fraction)}); "
        f"{s.n_mostly_outside} of {s.n} images mostly outside{acc}"
    )
    if s.boxes_fill_images:
        con.print("note: the body boxes cover the whole slices, so nothing lies outside them to detect")
    con.print(f"written: {run.out_dir} (overlays/, grid.png, explain.json)")
    if stored:
        con.print(f"stored with the trial: study attr {stored}")
