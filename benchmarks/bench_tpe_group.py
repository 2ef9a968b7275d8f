"""TPE on the conditional space with and without ``group=True`` (issue 17, point 13), and random.

The toy objective of ``tests/search/test_driver.py`` (NetScore peaks at stem width 40 and stage-1
depth 3, whatever the rest): per sampler and seed, whether the best trial found the optimum and how
many of the trials after the 20th are near it (h > 0.5). Prints a table, writes JSON to
``benchmarks/results/tpe_group.json``.

    python benchmarks/bench_tpe_group.py --seeds 3 4 --trials 45
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_protocols import commit
from search.driver.study import SearchDriver
from tests.search.test_driver import ToyEvaluator, _config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    p.add_argument("--trials", type=int, default=45)
    a = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    samplers = (("tpe", {}), ("tpe --tpe-group", {"tpe_group": True}), ("random", {"sampler": "random"}))
    for name, kw in samplers:
        for seed in a.seeds:
            ev = ToyEvaluator()
            cfg = _config(
                tempfile.mkdtemp(), objective="netscore", trials=a.trials, startup_trials=10, seed=seed,
                space="wide", **kw,
            )  # fmt: skip
            start = time.time()
            d = SearchDriver(cfg, ev)
            d.run()
            best = d.study.best_trial.params
            late = [ev.h(s) for s in ev.seen[20:]]
            rows.append(
                {
                    "sampler": name,
                    "seed": seed,
                    "found_optimum": best["stem_width"] == 40 and best["s1_depth"] == 3,
                    "late_near_optimum": sum(h > 0.5 for h in late),
                    "late_trials": len(late),
                    "seconds": round(time.time() - start, 1),
                }
            )
            print(" | ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    out = Path(__file__).parent / "results" / "tpe_group.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"commit": commit(), "trials": a.trials, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
