"""One short search validated on held-out sources against the same search validated in-source.

Both searches run ``search run`` on the same two sources with the same trials, seed and protocol;
one with ``--cv-by source`` (each candidate scored by the mean of its held-out-source accuracies),
one without (a validation split drawn from both sources). The best trial of each (highest stored
accuracy) is then finalised the same way for both: retrained with ``search train --cv-by source``
under the same protocol, so each is scored on each source when trained on the other. Printed:
per source, the held-out accuracy, COVID-19-vs-rest sensitivity, specificity and balanced
accuracy of each best model.

    OMP_NUM_THREADS=1 python benchmarks/bench_cv_source_search.py \
        --data ../shared/data/ct-sars --data ../shared/data/ct-real --trials 3

Results: ``benchmarks/results/cv_source_search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_protocols import commit  # noqa: E402


def _search(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"search {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def _best(url: str, study: str) -> dict[str, Any]:
    import optuna

    trials = [
        t
        for t in optuna.load_study(study_name=study, storage=url).trials
        if t.user_attrs.get("status") == "complete"
    ]
    t = max(trials, key=lambda t: float(t.user_attrs["val_accuracy"]))
    a = t.user_attrs
    return {
        "trial": t.number,
        "arch_id": a["arch_id"],
        "params": a["params"],
        "macs": a["macs"],
        "stored_accuracy": a["val_accuracy"],
        "held_out": (a.get("cv") or {}).get("held_out"),
        "spec": a["spec"],
        "trials": len(trials),
    }


def _finalise(
    spec: dict[str, Any], data: list[str], out: Path, protocol: str, flags: list[str]
) -> dict[str, Any]:
    (out.parent).mkdir(parents=True, exist_ok=True)
    spec_file = out.with_suffix(".spec.json")
    spec_file.write_text(json.dumps(spec))
    args = ["train", "--arch", str(spec_file), "--cv-by", "source", "--protocol", protocol, "--out", str(out)]
    _search("--quiet", *args, *[x for d in data for x in ("--data", d)], *flags)
    m = json.loads((out / "metrics.json").read_text())
    rows = {}
    for src, metrics in m["val"]["per_source"].items():
        covid = metrics["per_class"]["COVID-19"]
        sens, spec_ = covid["sensitivity"], covid["specificity"]
        rows[src] = {
            "accuracy": metrics["accuracy"],
            "accuracy_ci": metrics["accuracy_ci"],
            "sensitivity": sens,
            "specificity": spec_,
            "balanced_accuracy": (sens + spec_) / 2 if sens is not None and spec_ is not None else None,
        }
    return {"held_out_mean": m["val_accuracy"], "per_source": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--protocol", default="proxy")
    ap.add_argument("--train-flag", action="append", default=[], help="extra training flags, e.g. --epochs=1")
    ap.add_argument("--work", default="/tmp/cv_source_search")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cv_source_search.json"))
    args = ap.parse_args()
    work = Path(args.work)
    data = [x for d in args.data for x in ("--data", d)]
    result: dict[str, Any] = {
        "commit": commit(),
        "settings": vars(args),
    }
    started = time.time()
    for name, extra in (("held_out", ["--cv-by", "source"]), ("in_source", [])):
        out = work / name
        t0 = time.time()
        _search("--quiet", "run", "--trials", str(args.trials), "--protocol", args.protocol, "--seed", "0",
                "--out", str(out), "--study", name, *data, *extra, *args.train_flag)  # fmt: skip
        best = _best(f"sqlite:///{out / 'study.db'}", name)
        best["search_seconds"] = time.time() - t0
        t0 = time.time()
        best["final"] = _finalise(
            best.pop("spec"), args.data, work / f"{name}-final", args.protocol, args.train_flag
        )
        best["final_seconds"] = time.time() - t0
        result[name] = best
        print(f"[{time.time() - started:.0f} s] {name}: {json.dumps(best)}", flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("| search validated | best trial | arch_id | params | stored accuracy % | held-out source | "
          "accuracy % | sensitivity % | specificity % | balanced accuracy % |")  # fmt: skip
    print("| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for name in ("held_out", "in_source"):
        b = result[name]
        for src, r in b["final"]["per_source"].items():
            ba = f"{r['balanced_accuracy']:.1f}" if r["balanced_accuracy"] is not None else "n/a"
            print(
                f"| {name.replace('_', '-')} | {b['trial']} | {b['arch_id']} | {b['params']:,} | "
                f"{b['stored_accuracy']:.1f} | {src} | {r['accuracy']:.1f} | {r['sensitivity']:.1f} | "
                f"{r['specificity']:.1f} | {ba} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
