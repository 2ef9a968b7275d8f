"""The trainer's time per epoch against a plain hand-written PyTorch loop, as a ratio in one run.

Both start from the same initial weights and run the same batches (``epoch_batches`` and
``make_batch`` from one seeded generator, so the same images, augmentation draws and order), the
same SGD optimizer (lr 5e-4, momentum 0.9, weight decay 1e-4) and the same validation pass after
every epoch. The hand-written loop is what one would write without a trainer: forward, loss,
backward, step, then an accuracy over the validation images. Runs alternate (trainer, loop, loop,
trainer, ...) one epoch at a time, each from the same initial weights, and the figure is the
median of the per-pair ratios, so that load from other processes hits both alike; the first pair
is a warm-up. The check that both really computed the same thing: their training
losses must agree exactly. The trainer runs with ``progress=False`` (what the search uses) and,
in a third setting, with its progress bar.

The headline is the ratio of CPU time per epoch (``time.process_time``, one thread): on a machine
shared with other work, wall-clock epochs swing by tens of percent with the neighbours' load,
while CPU time measures the work each side does. The wall-clock ratio and the ratio of whole calls
(the trainer's setup and final metrics included, against the bare loop) are reported beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trainer_overhead.py [--data DIR] [--arch ct-s]

Prints a table and writes ``benchmarks/results/trainer_overhead.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.data.augment import epoch_batches, make_batch  # noqa: E402
from evaluators.data.cache import load_arrays  # noqa: E402
from evaluators.data.covidx import load_dataset  # noqa: E402
from evaluators.training import TrainConfig, train  # noqa: E402
from space import build, load_spec  # noqa: E402


def hand_loop(model, train_arr, val_arr, cfg: TrainConfig):  # type: ignore[no-untyped-def]
    """The plain loop: per-epoch wall seconds, CPU seconds and mean training losses."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    seconds, cpu, losses = [], [], []
    for _ in range(cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        total, seen = 0.0, 0
        for idx in epoch_batches(train_arr.labels, cfg.batch_size, cfg.balanced, gen):
            x = make_batch(train_arr, idx, augment=cfg.augment, generator=gen)
            y = train_arr.labels[idx]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(val_arr), cfg.eval_batch_size):
                x = val_arr.batch(range(i, min(i + cfg.eval_batch_size, len(val_arr))))
                correct += int((model(x).argmax(1) == val_arr.labels[i : i + cfg.eval_batch_size]).sum())
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(total / seen)
    return seconds, cpu, losses


def main() -> None:
    default = ROOT.parent / "shared" / "data" / "ct-real"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", default=str(default) if default.is_dir() else None, help="default ../shared/data/ct-real"
    )
    p.add_argument("--arch", default="ct-s")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--pairs", type=int, default=8, help="trainer/loop epoch pairs per setting (default 8)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "trainer_overhead.json"))
    args = p.parse_args()

    dataset = load_dataset([args.data] if args.data else None)
    spec = load_spec(args.arch)
    torch.manual_seed(0)
    initial = build(spec, 3)
    settings = [
        ("no augmentation", False, False),
        ("augmentation", True, False),
        ("augmentation + progress bar", True, True),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, augment, progress in settings:
            cfg = TrainConfig(
                epochs=1,
                image_size=args.image_size,
                patience=0,
                augment=augment,
                device="cpu",
                evaluate_test=False,
            )
            train_arr = load_arrays(dataset, "train", cfg.image_size, cache_dir=cache_dir)
            val_arr = load_arrays(dataset, "val", cfg.image_size, cache_dir=cache_dir)
            wall: dict[str, list[float]] = {"trainer": [], "loop": []}
            cpu: dict[str, list[float]] = {"trainer": [], "loop": []}
            call: dict[str, list[float]] = {"trainer": [], "loop": []}
            same = True
            # one warm-up pair, then pairs in ABBA order so that drifting load from other
            # processes hits both sides alike; every epoch starts from the same initial weights
            for k in range(args.pairs + 1):
                got: dict[str, tuple[float, float, float, float]] = {}
                for side in ("trainer", "loop") if k % 2 == 0 else ("loop", "trainer"):
                    model = copy.deepcopy(initial)
                    c0 = time.process_time()
                    if side == "trainer":
                        r = train(model, dataset, cfg, cache_dir=cache_dir, progress=progress)
                        h = r.history[0]
                        got[side] = (
                            h["seconds"],
                            h["cpu_seconds"],
                            time.process_time() - c0,
                            h["train_loss"],
                        )
                    else:
                        seconds, cpus, losses = hand_loop(model, train_arr, val_arr, cfg)
                        got[side] = (seconds[0], cpus[0], time.process_time() - c0, losses[0])
                same &= abs(got["trainer"][3] - got["loop"][3]) < 1e-9
                if k == 0:
                    continue
                for side in ("trainer", "loop"):
                    wall[side].append(got[side][0])
                    cpu[side].append(got[side][1])
                    call[side].append(got[side][2])

            def ratio(d: dict[str, list[float]]) -> float:
                return statistics.median(t / lp for t, lp in zip(d["trainer"], d["loop"]))

            rows.append(
                {
                    "setting": name,
                    "augment": augment,
                    "progress_bar": progress,
                    "trainer_epoch_cpu_s": statistics.median(cpu["trainer"]),
                    "loop_epoch_cpu_s": statistics.median(cpu["loop"]),
                    "cpu_ratio": ratio(cpu),
                    "overhead_pct": 100 * (ratio(cpu) - 1),
                    "trainer_epoch_wall_s": statistics.median(wall["trainer"]),
                    "loop_epoch_wall_s": statistics.median(wall["loop"]),
                    "wall_ratio": ratio(wall),
                    "whole_call_cpu_ratio": ratio(call),
                    "pair_cpu_ratios": [t / lp for t, lp in zip(cpu["trainer"], cpu["loop"])],
                    "same_losses": same,
                }
            )
    result = {
        "benchmark": "trainer_overhead",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trainer_overhead.py "
        + " ".join(sys.argv[1:]),
        "data": args.data or "bundled ct-sars-mini",
        "arch": args.arch,
        "image_size": args.image_size,
        "train_images": len(dataset.splits["train"]),
        "val_images": len(dataset.splits["val"]),
        "pairs": args.pairs,
        "rows": rows,
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }
    n_train, n_val = result["train_images"], result["val_images"]
    print(
        f"{args.arch} at {args.image_size} px, {n_train} train / {n_val} val images; one epoch (train + "
        f"validation), median over {args.pairs} trainer/loop pairs"
    )
    print(
        f"{'setting':<28} {'trainer CPU s':>13} {'loop CPU s':>10} {'CPU ratio':>9} {'wall ratio':>10} "
        f"{'call ratio':>10} {'same':>5}"
    )
    for r in rows:
        print(
            f"{r['setting']:<28} {r['trainer_epoch_cpu_s']:>13.3f} {r['loop_epoch_cpu_s']:>10.3f} "
            f"{r['cpu_ratio']:>9.3f} {r['wall_ratio']:>10.3f} {r['whole_call_cpu_ratio']:>10.3f} "
            f"{r['same_losses']!s:>5}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
