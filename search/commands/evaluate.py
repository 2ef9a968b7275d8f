"""``search evaluate``: the metrics of trained weights on a split, as a table or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from evaluators.settings import ConfigError
from search.commands._common import (
    check_size,
    data_flags,
    load_data,
    print_metrics,
)
from search.console import console
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics of trained weights on a data split",
        description="Accuracy, per-class sensitivity/PPV/specificity/NPV/F1, confusion matrix and "
        "bootstrap intervals of trained weights, overall and per data source.",
    )
    p.add_argument("--arch", metavar="NAME|SPEC.json", help="the spec the weights belong to")
    p.add_argument("--weights", metavar="WEIGHTS.pt", help="a state dict (search train's)")
    p.add_argument(
        "--model",
        metavar="MODEL.onnx|DIR",
        help="instead of --arch/--weights: an exported model (search export), model.onnx or its folder",
    )
    data_flags(p)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="default test")
    p.add_argument(
        "--image-size",
        type=int,
        help="input side (default: the image_size in metrics.json or config.yaml beside the weights)",
    )
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: as trained, or 64)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, help="bootstrap seed (default: the training seed, or 0)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run_evaluate)


def _beside(weights: Path) -> dict[str, Any]:
    """The training settings written next to ``weights`` (metrics.json, else config.yaml); ``{}``
    where neither is there or readable."""
    metrics = weights.with_name("metrics.json")
    if metrics.is_file():
        try:
            return dict(json.loads(metrics.read_text()).get("config") or {})
        except (json.JSONDecodeError, AttributeError):
            return {}
    config = weights.with_name("config.yaml")
    if config.is_file():
        from search.commands.train import file_settings
        from search.driver.config import read_yaml

        try:
            return read_yaml(config, file_settings())
        except UsageError:
            return {}
    return {}


def run_evaluate(args: argparse.Namespace) -> int:
    from evaluators.device import resolve_device
    from evaluators.evaluate import evaluate
    from search.export.load import read_weights_file, rebuild
    from search.pruning.checkpoints import WeightsMismatch
    from space import load_spec

    if args.model:
        if args.arch or args.weights:
            raise UsageError("--model replaces --arch and --weights; give one or the other")
        return _evaluate_exported(args)
    if not (args.arch and args.weights):
        raise UsageError("give --arch and --weights, or --model (an exported model)")
    weights = Path(args.weights)
    spec = load_spec(args.arch)
    state = read_weights_file(weights)
    try:
        model = rebuild({"spec": spec.to_dict()}, state, f"the architecture {args.arch}")
    except WeightsMismatch as e:
        raise UsageError(f"{weights} does not fit {args.arch}: {e}") from None
    trained = _beside(weights)
    size = args.image_size if args.image_size is not None else trained.get("image_size")
    if size is None:
        raise UsageError(f"--image-size is needed: no metrics.json or config.yaml beside {weights}")
    check_size(int(size))
    batch = args.batch_size if args.batch_size is not None else int(trained.get("eval_batch_size", 64))
    if batch < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch}")
    seed = args.seed if args.seed is not None else int(trained.get("seed", 0))
    device = args.device or "auto"
    try:
        resolve_device(device)
    except ConfigError as e:
        raise UsageError(f"--{e}") from None
    dataset = load_data(args, splits=(args.split,))
    result = evaluate(
        model,
        dataset,
        args.split,
        int(size),
        batch_size=batch,
        device=device,
        cache_dir=args.cache_dir,
        seed=seed,
        harmonise=str(trained.get("harmonise") or "none"),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_metrics(
            result,
            f"{spec.name or spec.arch_id} on {args.split} ({', '.join(dataset.sources)}), {size} px",
            dataset.class_names,
        )
        console().print(f"weights {weights}   arch_id {spec.arch_id}")
    return 0


def _evaluate_exported(args: argparse.Namespace) -> int:
    """``--model``: an exported model, scored on the same pixels and with the same metrics (and
    bootstrap seed, from its model card) as training, so a trial's stored metrics are reproduced."""
    from evaluators.inference import evaluate_classifier
    from search.export.load import load_classifier, read_card

    classifier = load_classifier(args.model, image_size=args.image_size)
    if args.image_size is not None and args.image_size != classifier.image_size:
        raise UsageError(
            f"--image-size {args.image_size} differs from the model's input {classifier.image_size}"
        )
    card = read_card(args.model)
    seed = args.seed if args.seed is not None else int(card.get("seed") or 0)
    batch = args.batch_size if args.batch_size is not None else 64
    if batch < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch}")
    dataset = load_data(args, splits=(args.split,))
    result = evaluate_classifier(
        classifier, dataset, args.split, batch_size=batch, cache_dir=args.cache_dir, seed=seed
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        name = card.get("name") or card.get("arch_id") or Path(args.model).name
        sources = ", ".join(dataset.sources)
        print_metrics(
            result, f"{name} on {args.split} ({sources}), {classifier.image_size} px", classifier.class_names
        )
        console().print(f"model {classifier.source} ({classifier.runtime})", markup=False)
        if classifier.harmonise != "none":
            console().print(f"harmonisation {classifier.harmonise} (from the export)", markup=False)
    return 0
