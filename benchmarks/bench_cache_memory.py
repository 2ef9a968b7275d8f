"""Memory of the decoded-image cache: building it, and a 5-fold cross-validation reading it.

Two child processes, each measured from ``/proc/self/status`` (Linux):

* the builder: ``load_arrays`` of every split of ``--data`` at ``--image-size`` into an empty
  cache folder (decoded a chunk at a time into the memory-mapped files); its peak RSS
  (``VmHWM``) and private memory at the end (``RssAnon``);
* a cross-validation reader: train + val pooled (``concat_arrays``) and split into 5 folds
  (``SplitArrays.subset``), then for each fold every training batch gathered (``make_batch``;
  the first ``--augmented`` batches of each fold with the paper's augmentation, to keep the run
  short on a CPU) and every held-out image read once, as training and validation read them.
  Reported: private memory (``RssAnon``) and file-backed resident pages (``RssFile``: the
  cache's pages in the shared page cache, reclaimable and shared by every worker on the node)
  before and at their peak, sampled after each fold and every 200 batches.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_cache_memory --data /tmp/syn --image-size 512
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def status() -> dict[str, float]:
    """``VmHWM``, ``VmRSS``, ``RssAnon``, ``RssFile`` of this process in GB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1e6  # kB to GB
    return out


def build(data: str, size: int, cache: str) -> dict:
    from evaluators.data.cache import load_arrays
    from evaluators.data.covidx import load_dataset

    before = status()
    t = time.perf_counter()
    d = load_dataset([data])
    loaded = status()
    counts = {}
    for split in ("train", "val", "test"):
        counts[split] = len(load_arrays(d, split, size, cache_dir=cache))
    return {
        "before": before,
        "after_dataset": loaded,
        "after": status(),
        "seconds": time.perf_counter() - t,
        "images": counts,
    }


def crossval(data: str, size: int, cache: str, batch: int, folds: int, augmented: int) -> dict:
    import torch

    from evaluators.data.augment import epoch_batches, make_batch
    from evaluators.data.cache import concat_arrays, load_arrays
    from evaluators.data.covidx import load_dataset

    d = load_dataset([data])
    before = status()
    t = time.perf_counter()
    pool = concat_arrays([load_arrays(d, s, size, cache_dir=cache) for s in ("train", "val")])
    mapped = status()
    peak = dict(mapped)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(pool), generator=gen)
    parts = order.chunk(folds)
    steps = 0
    for k in range(folds):
        held = parts[k]
        rest = torch.cat([p for j, p in enumerate(parts) if j != k])
        train_arr, val_arr = pool.subset(rest, split="train"), pool.subset(held, split=f"fold{k + 1}")
        for step, idx in enumerate(epoch_batches(train_arr.labels, batch, True, gen)):
            # the first batches augmented as training does; the rest gathered (every image read)
            make_batch(train_arr, idx, augment=step < augmented, generator=gen)
            steps += 1
            if steps % 200 == 0:
                peak = {key: max(peak[key], v) for key, v in status().items()}
        for start in range(0, len(val_arr), 64):
            val_arr.images[start : start + 64].float()
        peak = {key: max(peak[key], v) for key, v in status().items()}
    return {
        "before": before,
        "after_map": mapped,
        "peak": peak,
        "after": status(),
        "steps": steps,
        "images": len(pool),
        "seconds": time.perf_counter() - t,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--cache", default="/tmp/bench-cache-memory")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the cache folder afterwards")
    ap.add_argument("--reuse", action="store_true", help="measure the reader on a kept cache, no build")
    ap.add_argument(
        "--augmented", type=int, default=50, help="batches per fold augmented (the rest only gathered)"
    )
    ap.add_argument("--child", choices=("build", "crossval"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_cache_memory.json")
    args = ap.parse_args(argv)
    if args.child == "build":
        print(json.dumps(build(args.data, args.image_size, args.cache)))
        return {}
    if args.child == "crossval":
        c = crossval(args.data, args.image_size, args.cache, args.batch_size, args.folds, args.augmented)
        print(json.dumps(c))
        return {}
    if not args.reuse:
        shutil.rmtree(args.cache, ignore_errors=True)
    common = ["--data", args.data, "--image-size", str(args.image_size), "--cache", args.cache]
    common += [
        "--batch-size",
        str(args.batch_size),
        "--folds",
        str(args.folds),
        "--augmented",
        str(args.augmented),
    ]

    def child(kind: str) -> dict:
        r = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_cache_memory", *common, "--child", kind],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(r.stdout.strip().splitlines()[-1])

    b = child("build")  # with --reuse: the cache is found, so this measures a worker's start
    size = sum(f.stat().st_size for f in Path(args.cache).glob("*.canvas"))
    print(
        f"builder: {sum(b['images'].values())} images at {args.image_size} px, cache {size / 1e9:.2f} GB, "
        f"{b['seconds']:.0f} s; peak RSS {b['after']['VmHWM']:.2f} GB "
        f"(after the dataset check {b['after_dataset']['VmHWM']:.2f} GB), private at the end "
        f"{b['after']['RssAnon']:.2f} GB",
        flush=True,
    )
    c = child("crossval")
    added_anon = c["peak"]["RssAnon"] - c["before"]["RssAnon"]
    added_file = c["peak"]["RssFile"] - c["before"]["RssFile"]
    print(
        f"{args.folds}-fold CV over {c['images']} images ({c['steps']} batches of {args.batch_size}, "
        f"{c['seconds']:.0f} s): private RSS +{added_anon:.3f} GB (before {c['before']['RssAnon']:.2f}, "
        f"peak {c['peak']['RssAnon']:.2f}); file-backed (shared page cache) +{added_file:.2f} GB; "
        f"peak RSS {c['peak']['VmHWM']:.2f} GB",
        flush=True,
    )
    from benchmarks.bench_protocols import commit  # here, not in the measured children

    out = {
        "commit": commit(),
        "data": args.data,
        "image_size": args.image_size,
        "cache_bytes": size,
        "build": b,
        "crossval": c,
        "crossval_added_private_gb": added_anon,
        "crossval_added_file_gb": added_file,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    if not args.keep:
        shutil.rmtree(args.cache, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
