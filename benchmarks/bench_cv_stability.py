"""How stable is a candidate's accuracy? One train/val split against the 5-fold mean, over seeds.

Trains two fixed architectures (``ct-s`` and ``ct-l`` by default) with ``--seeds`` training seeds
each, twice per seed: once on the plain train/val split (one validation accuracy), once as
``--folds`` patient-grouped folds of train+val (the mean over the folds; the fold assignment is
fixed, as in a search). Both go through ``evaluators.crossval.evaluate_runs``, the search's own
evaluation. For each protocol it prints the spread of the accuracy over the seeds (std, min-max)
and how often the two architectures swap rank between two seeds (pairs of seeds whose winners
differ).

ct-real has no ``patients.csv``: the patient is approximated by the source figure of a picture
(``--patient-regex``, default ``CT_REAL_REGEX``: a COVID paper's page and figure, a PIIS article,
a MedPix/crawled picture number), since its README's patient ids are not in the folder.

    OMP_NUM_THREADS=1 python benchmarks/bench_cv_stability.py   # about 15 min on one CPU core

Prints a table and writes benchmarks/results/cv_stability.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from evaluators.data.covidx import load_dataset
from evaluators.runs import CVConfig, evaluate_runs
from evaluators.training import TrainConfig
from space import build, get_reference

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ct-real"
RESULTS = ROOT / "benchmarks" / "results" / "cv_stability.json"
CT_REAL_REGEX = r"^(ucsd_covid_PIIS\d+|ucsd_covid_.*?-p\d+-\d+|ucsd_noncovid_[^_]+)"


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def rank_swaps(a: list[float], b: list[float]) -> dict[str, int]:
    """Pairs of seeds (i < j) under which ``a`` and ``b`` come out in opposite orders."""
    signs = [(x > y) - (x < y) for x, y in zip(a, b)]
    pairs = list(itertools.combinations(range(len(signs)), 2))
    return {
        "pairs": len(pairs),
        "swaps": sum(signs[i] * signs[j] < 0 for i, j in pairs),
        "ties": sum(s == 0 for s in signs),
        "a_wins": sum(s > 0 for s in signs),
        "b_wins": sum(s < 0 for s in signs),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--archs", default="ct-s,ct-l", help="two reference specs")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patient-regex", default=CT_REAL_REGEX)
    p.add_argument("--patients", default=None, help="a filename,patient CSV (overrides the regex)")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args()
    if not (args.data / "train.txt").is_file():
        print(f"skipped: {args.data} is absent (the real CT set lives in ../shared/data/ct-real only)")
        return 0
    warnings.filterwarnings("ignore")
    dataset = load_dataset([args.data])
    archs = args.archs.split(",")
    if len(archs) != 2:
        p.error(f"--archs needs two names, got {args.archs!r}")
    cv = CVConfig(folds=args.folds, patient_regex=args.patient_regex, patients_csv=args.patients)
    protocols = {"single split": CVConfig(), f"{args.folds}-fold mean": cv}
    runs: list[dict[str, Any]] = []
    grouping: dict[str, Any] | None = None
    start = time.time()
    for arch in archs:
        spec = get_reference(arch)

        def make(seed: int) -> torch.nn.Module:
            torch.manual_seed(seed)
            return build(spec, 3)  # noqa: B023 - called within this iteration

        for seed in range(args.seeds):
            cfg = TrainConfig(
                epochs=args.epochs, image_size=args.image_size, seed=seed, patience=0, evaluate_test=False
            )
            for name, c in protocols.items():
                t0 = time.time()
                res = evaluate_runs(make, dataset, cfg, c, cache_dir=args.cache_dir)
                if c.folds > 1 and grouping is None:
                    grouping = res.cv_dict(c)
                row = {
                    "arch": arch,
                    "seed": seed,
                    "protocol": name,
                    "accuracy": res.accuracy.mean,
                    "values": list(res.accuracy.values),
                    "ci": list(res.accuracy.ci) if res.accuracy.ci else None,
                    "seconds": time.time() - t0,
                }
                runs.append(row)
                print(
                    f"{arch} seed {seed} {name:<14} {row['accuracy']:6.2f} %  "
                    f"[{', '.join(f'{v:.1f}' for v in row['values'])}]  ({row['seconds']:.0f} s)",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for name in protocols:
        per_arch = {
            a: [r["accuracy"] for r in runs if r["arch"] == a and r["protocol"] == name] for a in archs
        }
        summary[name] = {
            **{a: spread(v) for a, v in per_arch.items()},
            "rank": rank_swaps(per_arch[archs[0]], per_arch[archs[1]]),
        }
    print(
        f"\nvalidation accuracy over {args.seeds} training seeds on {args.data.name} "
        f"({args.epochs} epochs at {args.image_size} px)"
    )
    head = f"{'protocol':<14} {'arch':<6} {'mean %':>7} {'std':>6} {'min-max':>13}"
    print(head + f"  {'rank swaps (seed pairs)':>24}")
    for name in protocols:
        s = summary[name]
        for i, a in enumerate(archs):
            x = s[a]
            swaps = f"{s['rank']['swaps']} of {s['rank']['pairs']}" if i == 0 else ""
            print(
                f"{name:<14} {a:<6} {x['mean']:7.2f} {x['std']:6.2f} "
                f"{x['min']:6.2f}-{x['max']:6.2f}  {swaps:>24}"
            )
    seconds = time.time() - start
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    RESULTS.write_text(
        json.dumps(
            {
                "config": config,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "grouping": grouping,
                "runs": runs,
                "summary": summary,
                "seconds": seconds,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
