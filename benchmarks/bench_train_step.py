"""The training step's images/s with and without each step option, side by side in one run.

One training epoch (``evaluators.training``'s own loop: balanced batches, the paper's
augmentations, SGD) over synthetic canvases, for each setting: the trainer's defaults (``auto``:
on the CPU ``channels_last`` only), then each option changed by itself (``channels_last`` off,
bf16 autocast, prefetch, ``torch.compile`` with ``--compile``), and the per-image augmentation
this replaced.
Settings alternate within each repeat, in an order rotated from repeat to repeat after one
discarded run (the first run in a process pays one-time costs), so load from other processes
falls on all alike; the table gives the median images/s and the ratio to the defaults. On a
CUDA device, a hand-written AMP + ``channels_last`` loop of the same model (same batches) is
measured beside the trainer.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_train_step --size 64 --images 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import evaluators.data.augment as augment_mod
from benchmarks.bench_protocols import commit
from evaluators.data.augment import epoch_batches, make_batch
from evaluators.data.cache import SplitArrays, margin_for
from evaluators.training import TrainConfig, _Run
from space import build, get_reference

RESULTS = Path(__file__).parent / "results"


def synthetic(n: int, size: int, seed: int = 0) -> SplitArrays:
    g = torch.Generator().manual_seed(seed)
    m = margin_for(size)
    side = size + 2 * m
    low = torch.rand((n, 1, side // 8, side // 8), generator=g) * 255
    canvas = (
        torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear")[:, 0].round().to(torch.uint8)
    )
    return SplitArrays(
        canvas=canvas,
        valid=torch.tensor([[0, 0, side, side]] * n, dtype=torch.int32),
        exterior=torch.full((n,), 40, dtype=torch.uint8),
        labels=torch.arange(n) % 3,
        sources=("synthetic",) * n,
        filenames=tuple(f"{i}.png" for i in range(n)),
        image_size=size,
        margin=m,
        split="train",
    )


class _NoBar:
    def start_epoch(self, *a: Any) -> None: ...
    def step(self, *a: Any) -> None: ...


def trainer_rate(arch: str, arr: SplitArrays, cfg: TrainConfig) -> float:
    torch.manual_seed(0)
    model = build(get_reference(arch))
    run = _Run(model, arr, cfg)
    run.train_epoch(1, _NoBar())  # warm-up (compile, cuDNN autotuning, caches)
    _sync(run.device)
    t = time.perf_counter()
    run.train_epoch(2, _NoBar())
    _sync(run.device)
    return len(arr) / (time.perf_counter() - t)


def hand_rate(arch: str, arr: SplitArrays, cfg: TrainConfig, device: torch.device) -> float:
    """A hand-written loop: bf16 autocast, channels_last, the same batches and augmentation."""
    torch.manual_seed(0)
    model = build(get_reference(arch)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(0)
    torch.backends.cudnn.benchmark = True

    def epoch() -> None:
        for idx in epoch_batches(arr.labels, cfg.batch_size, True, gen):
            x = make_batch(arr, idx, device=device, augment=True, generator=gen)
            y = arr.labels[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()
    _sync(device)
    t = time.perf_counter()
    epoch()
    _sync(device)
    return len(arr) / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="ct-s")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to start)")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_train_step.json")
    args = ap.parse_args(argv)
    arr = synthetic(args.images, args.size)
    base = TrainConfig(
        protocol="proxy",
        image_size=args.size,
        batch_size=args.batch_size,
        device=args.device,
        evaluate_test=False,
    )
    on = {"precision": "fp32", "channels_last": "off", "cudnn_benchmark": "off", "prefetch": "off"}
    settings: dict[str, dict[str, Any]] = {"defaults (auto)": {}}
    if args.device != "cpu":
        settings["all off"] = on
    settings |= {
        "channels_last off": {"channels_last": "off"},
        "bf16 autocast": {"precision": "bf16"},
        "prefetch on": {"prefetch": "on"},
    }
    if args.device.startswith("cuda"):
        settings["fp16 autocast"] = {"precision": "fp16"}
        settings["cudnn_benchmark off"] = {"cudnn_benchmark": "off"}
    if args.compile:
        settings["torch.compile"] = {"compile": True}
    settings["per-image augmentation (before)"] = {}
    rates: dict[str, list[float]] = {k: [] for k in settings}
    device = torch.device(args.device)
    if device.type == "cuda":
        rates["hand-written AMP + channels_last loop"] = []
    started = time.perf_counter()
    reference = augment_mod.augment_batch
    names = list(settings)
    trainer_rate(args.arch, arr, base)  # a discarded run: the first one in a process pays one-time costs
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no setting always first
        for name in order:
            change = settings[name]
            cfg = TrainConfig(**{**base.to_dict(), **change})
            if name.startswith("per-image"):
                augment_mod.augment_batch = augment_mod.augment_canvas  # the loop it replaced
            try:
                rates[name].append(trainer_rate(args.arch, arr, cfg))
            finally:
                augment_mod.augment_batch = reference
        if device.type == "cuda":
            rates["hand-written AMP + channels_last loop"].append(hand_rate(args.arch, arr, base, device))
    ref = statistics.median(rates["defaults (auto)"])
    rows = []
    for name, r in rates.items():
        med = statistics.median(r)
        rows.append({"setting": name, "img_s": med, "ratio": med / ref, "runs": r})
        print(f"{name:40s} {med:9.1f} img/s   x{med / ref:5.2f}", flush=True)
    out = {
        "commit": commit(),
        "device": args.device,
        "arch": args.arch,
        "size": args.size,
        "images": args.images,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
