"""How often would the search's early-stopping rule stop a trial that belonged on the front?

Replays a finished study that ran with stopping off (``search run --prune-warmup E``, E the epochs:
every trial trained to the end, its per-epoch validation accuracy in ``history``). For each warm-up
k, each trial is replayed in trial order against the trials finished before it, with the rule
``search.driver.study.pareto_prune`` uses: stopped at the first epoch >= k (before the last) where a
finished trial has no more params, no more MACs and a validation accuracy ``--margin`` points above.
A stop is *wrong* when the trial, trained to the end, is on the study's final Pareto front (or
within ``--slack`` points of it at its params and MACs). Reported per k: trials stopped, wrong
stops, and the share of training epochs saved.

    python benchmarks/bench_stop_rule.py --storage sqlite:///runs/headline/study.db --study headline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from benchmarks.bench_protocols import commit  # noqa: E402
from search.driver.config import RunConfig  # noqa: E402
from search.driver.study import Scored, pareto_prune, pareto_trials  # noqa: E402


def replay(trials: list[Any], warmup: int, margin: float, epochs: int) -> dict[str, Any]:
    cfg = RunConfig.make(prune_warmup=warmup, prune_margin=margin, epochs=epochs)
    done: list[Scored] = []
    stops = []
    for t in trials:
        a = t.user_attrs
        curve = [h["val_accuracy"] for h in a["history"]]
        stop_at = None
        for epoch, acc in enumerate(curve, start=1):
            if pareto_prune(epoch, acc, int(a["params"]), int(a["macs"]), done, cfg, len(curve)):
                stop_at = epoch
                break
        if stop_at is not None:
            stops.append((t.number, stop_at))
        done.append(Scored(float(a["val_accuracy"]), int(a["params"]), int(a["macs"])))
    return {"warmup": warmup, "stops": stops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--margin", type=float, default=5.0, help="the rule's margin (default 5 points)")
    ap.add_argument("--slack", type=float, default=1.0, help="points below the front still counted as on it")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stop_rule.json"))
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("status") == "complete"
    ]
    trials.sort(key=lambda t: t.number)
    epochs = max(len(t.user_attrs["history"]) for t in trials)
    front = pareto_trials(trials)
    near: set[int] = set()
    for t in trials:  # on the front, or within --slack points of a member that dominates it otherwise
        a = t.user_attrs
        better = [
            f.user_attrs["val_accuracy"]
            for f in front
            if f.user_attrs["params"] <= a["params"] and f.user_attrs["macs"] <= a["macs"]
        ]
        if not better or max(better) - a["val_accuracy"] <= args.slack:
            near.add(t.number)
    rows = []
    for k in range(1, epochs):
        r = replay(trials, k, args.margin, epochs)
        wrong = [n for n, _ in r["stops"] if n in near]
        saved = sum(epochs - e for _, e in r["stops"])
        rows.append(
            {
                "warmup": k,
                "stopped": len(r["stops"]),
                "wrong": len(wrong),
                "wrong_trials": wrong,
                "wrong_share_of_stops": len(wrong) / len(r["stops"]) if r["stops"] else 0.0,
                "epochs_saved_share": saved / (epochs * len(trials)),
            }
        )
    print(f"{len(trials)} trials trained to the end ({epochs} epochs), {len(near)} on or near the front")
    print(f"{'warm-up':>7} {'stopped':>8} {'wrong':>6} {'wrong %':>8} {'epochs saved':>13}")
    for r in rows:
        print(
            f"{r['warmup']:>7} {r['stopped']:>8} {r['wrong']:>6} {100 * r['wrong_share_of_stops']:>7.0f}% "
            f"{100 * r['epochs_saved_share']:>12.0f}%"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"commit": commit(), "settings": dict(vars(args)), "trials": len(trials), "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
