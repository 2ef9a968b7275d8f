"""Accuracy against MACs: CT L pruned to the CT S budget, beside the best searched candidate within
that budget and CT S trained from scratch, all on the bundled data under one training configuration.

One study holds everything, as a user's would: a short search with ``max_macs`` at CT S's MACs
(``search run``), CT L and CT S trained as baselines (``search baselines``), and CT L pruned to the
budget with each importance criterion (``search prune --baseline covidnet_ct_l``). Prints a
Markdown table and writes JSON (default: benchmarks/results/prune.json).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prune.py   # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from evaluators import profile
from search.driver.artifacts import upload_weights
from search.driver.baselines import run_baselines
from search.driver.config import RunConfig
from search.driver.objective import TrainingEvaluator
from search.driver.storage import artifact_store, open_storage
from search.driver.study import SearchDriver, complete_candidates
from search.pruning.runs import PruneRequest, run_prune
from space import build, get_reference

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "prune.json"


def _row(label: str, trial: Any, epochs: int, **extra: Any) -> dict[str, Any]:
    a = trial.user_attrs
    test = a.get("test_metrics") or {}
    return {
        "model": label,
        "study_trial": trial.number,
        "arch_id": a.get("arch_id"),
        "params": a["params"],
        "macs": a["macs"],
        "val_accuracy": a["val_accuracy"],
        "test_accuracy": test.get("accuracy"),
        "netscore": a["netscore"],
        "epochs_trained": epochs,
        **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4, help="training epochs of every network")
    p.add_argument("--trials", type=int, default=12, help="search trials added per round")
    p.add_argument("--candidates", type=int, default=6, help="search until this many are trained")
    p.add_argument("--max-trials", type=int, default=200, help="search trials at most (most are over budget)")
    p.add_argument("--steps", type=int, default=2, help="pruning rounds")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after each round")
    p.add_argument("--importances", default="magnitude,taylor,lamp")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--complexity-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", help="keep the study here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    size = args.complexity_size
    budget = profile(build(get_reference("ct-s")), (3, size, size), memory=False).macs
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        config = RunConfig.make(
            out=args.run_dir or tmp,
            study="bench-prune",
            trials=args.trials,
            epochs=args.epochs,
            image_size=args.image_size,
            complexity_size=size,
            max_macs=budget,
            seed=args.seed,
            device="cpu",
        )
        storage = open_storage(config.storage_url)
        evaluator = TrainingEvaluator(config)
        store = artifact_store(config.artifacts_dir)

        def upload(trial: Any, path: str) -> str:
            return upload_weights(store, trial, path)

        timings: dict[str, float] = {}
        t0 = time.time()
        # Most of the space lies above CT S's MACs: over-budget trials are only profiled, so the
        # trial budget grows until enough candidates within the budget have been trained.
        feasible: list[Any] = []
        total = 0
        while len(feasible) < args.candidates and total < args.max_trials:
            total = min(total + args.trials, args.max_trials)
            driver = SearchDriver(replace(config, trials=total), evaluator, storage=storage, upload=upload)
            driver.study.set_user_attr("artifacts", config.artifacts_dir)
            driver.run()
            feasible = [t for t in complete_candidates(driver.study.trials) if t.user_attrs["macs"] <= budget]
        timings["search_s"] = time.time() - t0
        best = max(
            feasible, key=lambda t: (t.user_attrs["val_accuracy"], -t.user_attrs["macs"]), default=None
        )

        t0 = time.time()
        outcomes = run_baselines(config, ["covidnet_ct_l", "covidnet_ct_s"], storage, evaluator, upload)
        timings["baselines_s"] = time.time() - t0
        failed = [f"{o.name}: {o.error}" for o in outcomes if o.trial is None]
        if failed:
            raise SystemExit(f"baseline training failed: {'; '.join(failed)}")
        trained = {o.name: o.trial for o in outcomes}
        rows = [
            _row("CT L (source of pruning)", trained["covidnet_ct_l"], args.epochs, origin="baseline"),
            _row("CT S from scratch", trained["covidnet_ct_s"], args.epochs, origin="baseline"),
        ]
        if best is not None:
            label = f"best searched within budget (trial {best.number} of {len(driver.study.trials)})"
            rows.append(_row(label, best, args.epochs, origin="search"))
        for importance in args.importances.split(","):
            t0 = time.time()
            request = PruneRequest(
                source="baseline",
                name="covidnet_ct_l",
                target_macs=budget,
                importance=importance,
                steps=args.steps,
                finetune_epochs=args.finetune_epochs,
            )
            out = run_prune(request, config, storage, evaluator, upload)
            a = out.trial.user_attrs
            rows.append(
                _row(
                    f"CT L pruned ({importance}, {a['prune_scope']})",
                    out.trial,
                    args.epochs + args.steps * args.finetune_epochs,
                    origin=a["origin"],
                    macs_vs_target_pct=100 * (a["macs"] / budget - 1),
                    onnx_max_abs_diff=a["prune_checks"]["onnx"]["max_abs_diff"],
                    prune_s=time.time() - t0,
                )
            )
        searched = {"trials": len(driver.study.trials), "trained_within_budget": len(feasible)}
    result = {
        "budget_macs": budget,
        "complexity_size": size,
        "config": {k: v for k, v in config.to_dict().items() if k not in ("out", "storage", "artifacts")},
        "steps": args.steps,
        "finetune_epochs": args.finetune_epochs,
        "search": searched,
        "rows": rows,
        "timings": {**timings, "total_s": time.time() - started},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.machine(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"budget: CT S's {budget / 1e9:.3f} G MACs at {size}x{size}x3; training at {args.image_size} px, "
        f"{args.epochs} epochs; pruning: {args.steps} rounds x {args.finetune_epochs} fine-tuning epochs; "
        f"search: {searched['trials']} trials, {searched['trained_within_budget']} trained in budget\n"
    )
    print("| model | params | MACs | val acc % | test acc % | NetScore | epochs trained |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        test = "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.1f}"
        print(
            f"| {r['model']} | {r['params'] / 1e6:.3f} M | {r['macs'] / 1e9:.3f} G | "
            f"{r['val_accuracy']:.1f} | {test} | {r['netscore']:.1f} | {r['epochs_trained']} |"
        )
    print(f"\nwrote {args.out} in {result['timings']['total_s']:.0f} s")


if __name__ == "__main__":
    main()
