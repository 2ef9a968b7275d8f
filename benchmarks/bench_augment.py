"""Batched against per-image augmentation: images/s at several sizes and batch sizes.

Both run side by side in the same process and on the same canvases (the paper's augmentations,
with exterior exclusion's fill), alternating repeats (each at least 0.25 s of calls) so that load
from other processes falls on both alike; the table reports each one's median images/s and the
median of the per-repeat ratios.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_augment --sizes 64 256 512 --batches 8 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench_protocols import commit
from evaluators.data.augment import augment_batch, augment_canvas
from evaluators.data.cache import margin_for

RESULTS = Path(__file__).parent / "results"


def _canvases(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(seed)
    m = margin_for(size)
    side = size + 2 * m
    low = torch.rand((n, 1, max(side // 8, 2), max(side // 8, 2)), generator=g) * 255
    canvas = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear")[:, 0]
    valid = torch.tensor([[0, 0, side, side]] * n, dtype=torch.int32)
    fill = torch.randint(0, 256, (n,), generator=g, dtype=torch.int64).to(torch.uint8)
    return canvas.round().to(torch.uint8), valid, fill, m


def _rate(fn, canvas, valid, fill, m, size, device, least: float = 0.25) -> float:
    """Images/s of ``fn`` over repeated calls lasting at least ``least`` seconds."""
    gen = torch.Generator().manual_seed(1)
    done = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    while True:
        fn(canvas, valid, fill, m, size, gen)
        done += canvas.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - t >= least:
            return done / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_augment.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    started = time.perf_counter()
    for size in args.sizes:
        for batch in args.batches:
            canvas, valid, fill, m = _canvases(batch, size)
            canvas, valid, fill = canvas.to(device), valid, fill.to(device)
            per, bat = [], []
            augment_batch(canvas, valid, fill, m, size, torch.Generator().manual_seed(0))  # warm-up
            for _ in range(args.repeats):
                per.append(_rate(augment_canvas, canvas, valid, fill, m, size, device))
                bat.append(_rate(augment_batch, canvas, valid, fill, m, size, device))
            row = {
                "size": size,
                "batch": batch,
                "per_image_img_s": statistics.median(per),
                "batched_img_s": statistics.median(bat),
            }
            row["ratio"] = statistics.median(b / p for b, p in zip(bat, per))
            rows.append(row)
            print(
                f"{size:5d} px  batch {batch:3d}: per-image {row['per_image_img_s']:9.1f} img/s  "
                f"batched {row['batched_img_s']:9.1f} img/s  ratio {row['ratio']:5.2f}x",
                flush=True,
            )
    out = {
        "commit": commit(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
