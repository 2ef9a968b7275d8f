"""Images per second of one training epoch's batches: the decoded-image cache vs decoding PNGs.

The same images in the same batch order either way (balanced batches of 8, no augmentation): the
baseline decodes each PNG, crops it to its box and resizes it, every epoch, as a plain
``Dataset.__getitem__`` would (one thread, and a thread pool over all cores); the cache decodes once
(timed separately: the one-off cost) and then batches uint8 tensors, from memory ("warm") or
after loading its file from disk ("cold": a new trial in a new process). Only the data pipeline is
timed, up to a float batch ready for the model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data_cache.py [--data DIR] [--image-size 64]

Prints a table and writes ``benchmarks/results/data_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.data.augment import epoch_batches, make_batch  # noqa: E402
from evaluators.data.cache import load_arrays, to_float  # noqa: E402
from evaluators.data.covidx import Sample, load_dataset  # noqa: E402


def decode_one(s: Sample, size: int) -> np.ndarray:
    with Image.open(s.path) as img:
        return np.asarray(img.convert("L").crop(s.box).resize((size, size), Image.BILINEAR))


def decode_epoch(
    samples: list[Sample], batches: list[torch.Tensor], size: int, pool: ThreadPoolExecutor | None
) -> int:
    n = 0
    for idx in batches:
        chosen = [samples[i] for i in idx.tolist()]
        arrays = (
            list(pool.map(lambda s: decode_one(s, size), chosen))
            if pool
            else [decode_one(s, size) for s in chosen]
        )
        x = to_float(torch.from_numpy(np.stack(arrays)), 3)
        n += x.shape[0]
    return n


def cache_epoch(arrays, batches: list[torch.Tensor]) -> int:  # type: ignore[no-untyped-def]
    n = 0
    for idx in batches:
        n += make_batch(arrays, idx, channels=3).shape[0]
    return n


def timed(fn) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    n = fn()
    return time.perf_counter() - t, n


def main() -> None:
    default = ROOT.parent / "shared" / "data" / "ct-sars"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", default=str(default) if default.is_dir() else None, help="default ../shared/data/ct-sars"
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_cache.json"))
    args = p.parse_args()

    dataset = load_dataset([args.data] if args.data else None)
    samples = list(dataset.splits["train"])
    size = args.image_size
    labels = torch.tensor([s.label for s in samples])
    batches = epoch_batches(labels, 8, True, torch.Generator().manual_seed(0))
    threads = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as cache_dir:
        build_s, _ = timed(lambda: len(load_arrays(dataset, "train", size, cache_dir=cache_dir)))
        arrays = load_arrays(dataset, "train", size, cache_dir=cache_dir)
        assert arrays.from_cache
        names = [
            "decode, 1 thread",
            f"decode, {threads} threads",
            "cache, cold (load file + epoch)",
            "cache, warm (in memory)",
        ]
        runs: dict[str, list[float]] = {name: [] for name in names}
        images = 0
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in range(args.repeats):  # interleaved, so load from other users hits all alike
                t, images = timed(lambda: decode_epoch(samples, batches, size, None))
                runs["decode, 1 thread"].append(t)
                t, _ = timed(lambda: decode_epoch(samples, batches, size, pool))
                runs[f"decode, {threads} threads"].append(t)
                t, _ = timed(
                    lambda: cache_epoch(load_arrays(dataset, "train", size, cache_dir=cache_dir), batches)
                )
                runs["cache, cold (load file + epoch)"].append(t)
                t, _ = timed(lambda: cache_epoch(arrays, batches))
                runs["cache, warm (in memory)"].append(t)

    base = statistics.median(runs["decode, 1 thread"])
    rows = []
    for name, times in runs.items():
        med = statistics.median(times)
        rows.append(
            {"pipeline": name, "epoch_s": med, "images_per_s": images / med, "speedup_vs_decode": base / med}
        )
    result = {
        "benchmark": "data_cache",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data_cache.py "
        + " ".join(sys.argv[1:]),
        "data": args.data or "bundled ct-sars-mini",
        "split": "train",
        "images_per_epoch": images,
        "image_size": size,
        "batch_size": 8,
        "repeats": args.repeats,
        "cache_build_s": build_s,
        "rows": rows,
        "machine": {
            "cpus": threads,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }
    print(f"one epoch of {images} train images at {size} px, batches of 8 (median of {args.repeats});"
          f" cache built once in {build_s:.2f} s")  # fmt: skip
    print(f"{'pipeline':<34} {'epoch s':>9} {'images/s':>11} {'vs decode':>10}")
    for r in rows:
        speedup = r["speedup_vs_decode"]
        print(f"{r['pipeline']:<34} {r['epoch_s']:>9.3f} {r['images_per_s']:>11,.0f} {speedup:>9.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
