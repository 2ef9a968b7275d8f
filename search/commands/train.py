"""``search train``: train one architecture by the COVIDNet-CT protocol, write its weights and metrics.

Settings resolve as everywhere in the toolkit: ``TrainConfig`` defaults (the paper's), then an
optional YAML file (``--config``), then flags. The run's folder receives ``metrics.json``
(history, validation and test metrics overall and per source, the resolved settings, the data's
provenance), ``weights.pt`` (a state dict, ``torch.load(..., weights_only=True)``), ``spec.json``
and ``config.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from search.commands.evaluate import check_size, data_flags, load_data, print_metrics
from search.console import console, err_console
from search.errors import RunFailed, UsageError

# flag -> TrainConfig field, for the flags that set one
_FLAGS = {
    "epochs": "epochs",
    "image_size": "image_size",
    "batch_size": "batch_size",
    "lr": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "patience": "patience",
    "seed": "seed",
    "device": "device",
    "cosine": "cosine",
    "augment": "augment",
    "exterior_exclusion": "exterior_exclusion",
    "balanced": "balanced",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one architecture (paper protocol) and evaluate it",
        description="Train a spec by the COVIDNet-CT protocol (SGD, balanced batches, augmentation, "
        "early stopping) and write metrics.json, weights.pt, spec.json and config.yaml.",
    )
    p.add_argument(
        "--arch", required=True, metavar="NAME|SPEC.json", help="a reference spec (ct-l, ct-s) or a file"
    )
    data_flags(p)
    p.add_argument("--config", metavar="FILE.yaml", help="training settings (TrainConfig fields); flags win")
    p.add_argument("--epochs", type=int, help="most epochs (default 20)")
    p.add_argument("--image-size", type=int, help="input side, a multiple of 32 (default 512, the paper's)")
    p.add_argument("--batch-size", type=int, help="default 8")
    p.add_argument("--lr", type=float, help="learning rate (default 5e-4)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, help="L2 weight (default 1e-4)")
    p.add_argument(
        "--patience", type=int, help="early stopping: epochs without a better val accuracy (0: off)"
    )
    p.add_argument("--seed", type=int, help="seed of weights, batches and augmentation (default 0)")
    p.add_argument("--device", help="auto (default: CUDA when available), cpu, cuda, cuda:N or mps")
    p.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=None, help="cosine lr decay")
    p.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=None, help="the paper's augmentation"
    )
    p.add_argument(
        "--exterior-exclusion",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replace what lies outside the body box by its mean",
    )
    p.add_argument(
        "--balanced", action=argparse.BooleanOptionalAction, default=None, help="class-balanced batches"
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/train/<arch>-<time>)")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of tables")
    p.set_defaults(func=run_train)


def resolve_config(args: argparse.Namespace) -> Any:
    """TrainConfig from defaults, then ``--config``, then flags; errors name the flag or file."""
    from evaluators.training import TrainConfig

    values: dict[str, Any] = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{path}: must be a mapping of training settings, got {type(loaded).__name__}")
        try:
            TrainConfig.from_dict(loaded)
        except (ValueError, TypeError) as e:
            raise UsageError(f"{path}: {e}") from None
        values.update(loaded)
    flags = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    values.update(flags)
    try:
        return TrainConfig.from_dict(values)
    except ValueError as e:
        text = str(e)
        for flag, field in _FLAGS.items():
            if field in flags and text.startswith(field + " "):
                raise UsageError("--" + flag.replace("_", "-") + text[len(field) :]) from None
        raise UsageError(f"{args.config}: {text}" if args.config else text) from None


def _versions() -> dict[str, str]:
    import torch
    import torchvision

    try:
        from importlib.metadata import version

        own = version("covidnet-nas")
    except Exception:
        own = "unknown"
    return {
        "covidnet_nas": own,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run_train(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from evaluators.training import resolve_device, seed_everything, train
    from space import build, load_spec

    cfg = resolve_config(args)
    check_size(cfg.image_size)
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    spec = load_spec(args.arch)
    dataset = load_data(args)
    label = spec.name or spec.arch_id
    out = Path(args.out) if args.out else Path("runs") / "train" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(spec.to_json() + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    seed_everything(cfg.seed)
    model = build(spec, 3)
    params = sum(p.numel() for p in model.parameters())
    quiet = bool(getattr(args, "quiet", False))
    if not quiet:
        err_console().print(
            f"training {label} (arch_id {spec.arch_id}, {params:,} params) on "
            f"{', '.join(dataset.sources)}: {len(dataset.splits['train'])} train / "
            f"{len(dataset.splits['val'])} val / {len(dataset.splits['test'])} test images, "
            f"{cfg.image_size} px, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, {device}"
        )
    result = train(model, dataset, cfg, cache_dir=args.cache_dir, progress=not quiet)

    if result.state_dict:
        tmp = out / "weights.pt.tmp"
        torch.save(result.state_dict, tmp)
        os.replace(tmp, out / "weights.pt")
    else:  # nothing was validated: no weights, and none left over from an earlier run in --out
        (out / "weights.pt").unlink(missing_ok=True)
    metrics = {
        "arch": {"name": spec.name, "arch_id": spec.arch_id, "params": params},
        **result.to_dict(),
        "device": str(device),
        "data": {"given": [str(d) for d in args.data] if args.data else None, **dataset.summary()},
        "versions": _versions(),
    }
    _write_json(out / "metrics.json", metrics)
    if not result.ok:
        raise RunFailed(f"{result.reason} (metrics in {out / 'metrics.json'})")
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    final = result.test if result.test is not None else result.val
    split = "test" if result.test is not None else "val"
    if final is not None:
        print_metrics(final, f"{label} on {split}, best epoch {result.best_epoch} of {result.epochs_run}")
    if result.reason:
        console().print(result.reason)
    console().print(
        f"wrote {out}/metrics.json, weights.pt, spec.json, config.yaml ({result.wall_time_s:.1f} s)"
    )
    return 0
