"""Training protocols compared: CT S and CT L under ``paper`` and ``proxy`` (and variants), several seeds.

For each protocol, network and seed: the stored accuracy (what the search ranks by: the kept
epoch's validation accuracy), the test accuracy of the kept weights, the per-epoch validation
curve (its largest swing between epochs) and the CPU time. Summaries: mean and std over seeds, and
the seed-to-seed rank agreement of the two networks (the share of seed pairs in which the stored
accuracies order CT S and CT L the same way).

    OMP_NUM_THREADS=1 python benchmarks/bench_protocols.py --data ../shared/data/ct-sars \
        --protocol paper --protocol proxy --seeds 0 1 2 --epochs 4 --image-size 64

Variants of a preset: ``--protocol proxy:lr=0.05,batch_size=32`` (settings after the colon
override the preset). Results: ``benchmarks/results/protocols.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluators.data.covidx import load_dataset  # noqa: E402
from evaluators.device import seed_everything  # noqa: E402
from evaluators.settings import coerce, flagged  # noqa: E402
from evaluators.training import TrainConfig, train  # noqa: E402
from space import build, get_reference  # noqa: E402


def parse_protocol(text: str) -> tuple[str, dict[str, Any]]:
    """``proxy:lr=0.05,batch_size=32`` -> ("proxy:lr=0.05,batch_size=32", {...settings})."""
    name, _, rest = text.partition(":")
    known = flagged(TrainConfig)
    values: dict[str, Any] = {"protocol": name}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        s = known[key]
        value: Any = raw
        if s.type is bool:
            value = raw.lower() in ("1", "true", "yes", "on")
        elif s.type is int:
            value = int(raw)
        elif s.type is float:
            value = float(raw)
        values[key] = coerce(s, value)
    return text, values


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


def run_one(net: str, values: dict[str, Any], seed: int, args: argparse.Namespace, dataset: Any) -> dict:
    cfg = TrainConfig.resolve(
        {**values, "epochs": args.epochs, "image_size": args.image_size, "seed": seed, "device": "cpu"}
    )
    seed_everything(seed)
    model = build(get_reference(net), 3)
    c0 = time.process_time()
    r = train(model, dataset, cfg, progress=False)
    curve = [h["val_accuracy"] for h in r.history]
    return {
        "net": net,
        "seed": seed,
        "status": r.status,
        "stored_accuracy": r.val.accuracy if r.val else None,
        "test_accuracy": r.test.accuracy if r.test else None,
        "kept_epoch": r.best_epoch,
        "val_curve": curve,
        "largest_swing": max((abs(a - b) for a, b in itertools.pairwise(curve)), default=0.0),
        "train_accuracy_last": r.history[-1]["train_accuracy"] if r.history else None,
        "cpu_seconds": time.process_time() - c0,
        "config": cfg.to_dict(),
    }


def rank_agreement(rows: list[dict]) -> float | None:
    """Share of seed pairs whose stored accuracies order CT S and CT L the same way."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["net"]] = r["stored_accuracy"]
    signs = [np.sign(v["ct-l"] - v["ct-s"]) for v in by_seed.values() if {"ct-l", "ct-s"} <= set(v)]
    pairs = list(itertools.combinations(signs, 2))
    return float(np.mean([a == b for a, b in pairs])) if pairs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a COVIDx-format folder (e.g. ../shared/data/ct-sars)")
    ap.add_argument("--protocol", action="append", required=True, help="paper, proxy or proxy:key=value,...")
    ap.add_argument("--nets", nargs="+", default=["ct-s", "ct-l"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "protocols.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset([args.data])
    protocols = [parse_protocol(p) for p in args.protocol]
    results: dict[str, list[dict]] = {}
    for name, values in protocols:
        for net in args.nets:
            for seed in args.seeds:
                row = run_one(net, values, seed, args, dataset)
                results.setdefault(name, []).append(row)
                print(
                    f"{name:<40} {net:<5} seed {seed}: stored {row['stored_accuracy']:.1f}  "
                    f"test {row['test_accuracy']:.1f}  curve {[round(v, 1) for v in row['val_curve']]}  "
                    f"{row['cpu_seconds']:.0f} s CPU",
                    flush=True,
                )
    summary = []
    for name, rows in results.items():
        for net in args.nets:
            mine = [r for r in rows if r["net"] == net]
            stored = np.array([r["stored_accuracy"] for r in mine])
            test = np.array([r["test_accuracy"] for r in mine])
            summary.append(
                {
                    "protocol": name,
                    "net": net,
                    "stored_mean": float(stored.mean()),
                    "stored_std": float(stored.std(ddof=1)) if len(stored) > 1 else None,
                    "test_mean": float(test.mean()),
                    "test_std": float(test.std(ddof=1)) if len(test) > 1 else None,
                    "largest_swing_mean": float(np.mean([r["largest_swing"] for r in mine])),
                    "cpu_seconds_mean": float(np.mean([r["cpu_seconds"] for r in mine])),
                    "rank_agreement": rank_agreement(rows),
                }
            )
    print()
    print(
        f"{'protocol':<40} {'net':<5} {'stored':>13} {'test':>13} {'swing':>6} {'CPU s':>6} {'rank agr.':>9}"
    )
    for s in summary:
        sd = f"{s['stored_std']:.1f}" if s["stored_std"] is not None else "-"
        td = f"{s['test_std']:.1f}" if s["test_std"] is not None else "-"
        ra = f"{s['rank_agreement']:.2f}" if s["rank_agreement"] is not None else "-"
        print(
            f"{s['protocol']:<40} {s['net']:<5} {s['stored_mean']:6.1f} +- {sd:>4} "
            f"{s['test_mean']:6.1f} +- {td:>4} {s['largest_swing_mean']:6.1f} "
            f"{s['cpu_seconds_mean']:6.0f} {ra:>9}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "commit": commit(),
                "settings": dict(vars(args)),
                "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1},
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
