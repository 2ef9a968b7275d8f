"""Does the sampler beat random search? Hypervolume after the same number of trials.

Runs the real search (``SearchDriver`` + ``TrainingEvaluator``: real training on the bundled
data) for each sampler and seed, each in its own SQLite study, and compares the hypervolume of
(validation accuracy, params, MACs) after ``--trials`` trials. Every study starts with the same CT L
prototype trial; objectives are normalised by CT L's params and MACs at 512 px (reference point
(1, 2, 2), see ``reports.pareto``), identical for all runs.

    python benchmarks/bench_sampler_hypervolume.py --trials 10 --epochs 2 --image-size 32

Prints a table and writes benchmarks/results/sampler_hypervolume.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna

from evaluators import profile
from reports.pareto import Normaliser, hypervolume
from search.driver.config import RunConfig
from search.driver.objective import TrainingEvaluator
from search.driver.study import SearchDriver, best_netscore, complete_candidates, pareto_trials
from space import build, get_reference

RESULTS = Path(__file__).resolve().parent / "results" / "sampler_hypervolume.json"


def one_run(sampler: str, seed: int, args: argparse.Namespace, normaliser: Normaliser) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-hv-") as tmp:
        config = RunConfig.make(
            out=tmp,
            study=f"{sampler}-{seed}",
            trials=args.trials,
            sampler=sampler,
            seed=seed,
            epochs=args.epochs,
            image_size=args.image_size,
            startup_trials=args.startup_trials,
            complexity_size=512,
        )
        evaluator = TrainingEvaluator(config, cache_dir=args.cache_dir)
        start = time.time()
        driver = SearchDriver(config, evaluator)
        driver.run()
        trials = driver.study.get_trials(deepcopy=False)
        points = [
            (t.user_attrs["val_accuracy"], t.user_attrs["params"], t.user_attrs["macs"])
            for t in complete_candidates(trials)
        ]
        return {
            "sampler": sampler,
            "seed": seed,
            "hypervolume": hypervolume(points, normaliser),
            "best_netscore": best_netscore(trials),
            "pareto_size": len(pareto_trials(trials)),
            "trained": driver.trained,
            "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "seconds": time.time() - start,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--startup-trials", type=int, default=4)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samplers", default="tpe,random")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ct_l = profile(build(get_reference("ct-l")), (3, 512, 512), memory=False)
    normaliser = Normaliser(float(ct_l.params), float(ct_l.macs), "CT L at 512 px")
    rows = []
    for sampler in args.samplers.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = one_run(sampler, seed, args, normaliser)
            rows.append(row)
            print(
                f"{sampler:<7} seed {seed}: hypervolume {row['hypervolume']:.4f}  best NetScore "
                f"{row['best_netscore']:.1f}  Pareto {row['pareto_size']}  ({row['seconds']:.0f} s)",
                flush=True,
            )
    summary = {}
    print(
        f"\nhypervolume after {args.trials} trials "
        f"({args.epochs} epochs at {args.image_size} px, bundled data)"
    )
    print(f"{'sampler':<8} {'mean':>8} {'std':>8} {'per seed':<30} {'best NetScore (mean)':>22}")
    for sampler in args.samplers.split(","):
        hv = [r["hypervolume"] for r in rows if r["sampler"] == sampler]
        ns = [r["best_netscore"] for r in rows if r["sampler"] == sampler]
        summary[sampler] = {"mean": statistics.mean(hv), "std": statistics.stdev(hv) if len(hv) > 1 else 0.0}
        per_seed = ", ".join(f"{v:.4f}" for v in hv)
        print(
            f"{sampler:<8} {summary[sampler]['mean']:8.4f} {summary[sampler]['std']:8.4f} {per_seed:<30} "
            f"{statistics.mean(ns):22.1f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"config": vars(args), "normaliser": normaliser.describe(), "runs": rows, "summary": summary},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
