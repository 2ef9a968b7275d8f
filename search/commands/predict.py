"""``search predict``: class probabilities of CT slices from an exported model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from search.console import console, err_console, print_table
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify CT slices (PNG, JPEG...) with an exported model")
    p.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="model.onnx (ONNX Runtime), an export folder, or spec.json with --weights (PyTorch)",
    )
    p.add_argument(
        "--weights", metavar="FILE", help="state dict for a spec.json (default: weights.pt beside it)"
    )
    p.add_argument(
        "--runtime", choices=("onnxruntime", "torch"), help="which files of an export folder to run"
    )
    p.add_argument(
        "--image-size", type=int, metavar="N", help="input side for spec.json (default: model.json's)"
    )
    p.add_argument("--no-crop", action="store_true", help="use the whole image instead of the detected body")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass")
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads")
    p.add_argument("--json", action="store_true", help="print JSON: one object per image")
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (8-bit CT slices in the lung window)"
    )
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from evaluators.extras import MissingExtraError

    try:
        return _run_predict(args)
    except MissingExtraError as e:  # a missing optional dependency is a setup problem: one line, exit 2
        raise UsageError(str(e)) from None


def _run_predict(args: argparse.Namespace) -> int:
    from evaluators.inference import predict_files
    from search.export.load import load_classifier

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.image_size is not None and args.image_size < 8:
        raise UsageError(f"--image-size must be at least 8, got {args.image_size}")
    classifier = load_classifier(
        args.model, args.weights, image_size=args.image_size, threads=args.threads, runtime=args.runtime
    )
    predictions = predict_files(classifier, args.images, crop=not args.no_crop, batch_size=args.batch_size)
    failed = [p for p in predictions if p.error is not None]
    for p in failed:
        err_console().print(f"search predict: error: {p.error}", markup=False)
    if args.json:
        json.dump([p.to_dict() for p in predictions], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print(predictions, classifier)
    return 1 if failed else 0


def _print(predictions: list[Any], classifier: Any) -> None:
    ok = [p for p in predictions if p.error is None]
    if not ok:
        return
    names = list(classifier.class_names)
    rows = [
        [
            Path(p.file).name,
            p.class_name,
            *(f"{100 * p.probabilities[n]:.1f}" for n in names),
            ",".join(map(str, p.box)),
        ]
        for p in ok
    ]
    print_table(
        f"predictions ({classifier.runtime}, {classifier.image_size} px)",
        ["image", "class", *(f"{n} %" for n in names), "body box"],
        rows,
    )
    if len(ok) < len(predictions):
        console().print(f"{len(predictions) - len(ok)} of {len(predictions)} files could not be read")
