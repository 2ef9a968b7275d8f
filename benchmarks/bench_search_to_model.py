"""The headline: from a search to models whose accuracy is real, measured against CT L and CT S.

Runs, with the toolkit's own commands (resuming whatever is already done):

1. ``search run`` of ``--trials`` candidates at the proxy fidelity (4 epochs at 64 px) with the
   default early stop (or, with ``--keep-curves``, the stop off so every trial's whole curve is kept
   for ``bench_stop_rule.py``);
2. ``search final`` of the top ``--top`` trials by NetScore and the Pareto members with at most
   CT S's MACs, with CT L, CT S and the paper's four baselines, ``--repeats`` seeds each under the
   ``final`` protocol (12 epochs at 128 px), with ``--workers`` processes sharing the models;

then reads both studies and reports, for the best found models against CT L: the MACs and params
ratios and the final accuracy difference with its 95 % interval (Welch's t over the seeds); the
same for CT S (GenSynth's answer: 3.1x fewer params, 2.15x fewer MACs, -0.2 points on COVIDx);
Kendall's tau and Spearman's rho between proxy and final accuracy over the finalised candidates
and CT L; and the CPU-hours of each stage.

    OMP_NUM_THREADS=1 python benchmarks/bench_search_to_model.py --data ../shared/data/ct-sars \
        --out runs/headline --study headline --trials 40

Results: ``benchmarks/results/search_to_model.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from benchmarks.bench_protocols import commit  # noqa: E402
from evaluators.complexity import spec_complexity  # noqa: E402
from evaluators.ranking import fidelity  # noqa: E402
from evaluators.uncertainty import t95  # noqa: E402
from space import get_reference  # noqa: E402


def search(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "search", "--quiet", *args], check=True, env=env)


def welch(a: list[float], b: list[float]) -> tuple[float, tuple[float, float] | None]:
    """mean(a) - mean(b) and its 95 % Welch interval (None with fewer than two values each)."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return ma - mb, None
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    if se2 == 0:
        return ma - mb, (ma - mb, ma - mb)
    dof = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    half = t95(max(1, math.floor(dof))) * math.sqrt(se2)
    return ma - mb, (ma - mb - half, ma - mb + half)


def cpu_hours(trials: list[Any]) -> float:
    total = 0.0
    for t in trials:
        runs = t.user_attrs.get("runs") or []
        if runs and all("cpu_seconds" in r for r in runs):
            total += sum(float(r["cpu_seconds"]) for r in runs)
        else:
            total += sum(float(h.get("cpu_seconds", 0.0)) for h in t.user_attrs.get("history") or [])
    return total / 3600


def compare(row: Any, ref: Any) -> dict[str, Any]:
    a, r = row.user_attrs, ref.user_attrs
    mine = [float(v) for v in a["final_accuracy_uncertainty"]["values"]]
    theirs = [float(v) for v in r["final_accuracy_uncertainty"]["values"]]
    diff, ci = welch(mine, theirs)
    return {
        "model": a["display_name"],
        "arch_id": a.get("arch_id"),
        "params": a["params"],
        "macs": a["macs"],
        "params_ratio": r["params"] / a["params"],
        "macs_ratio": r["macs"] / a["macs"],
        "final_accuracy": a["final_accuracy"],
        "final_values": mine,
        "reference_accuracy": r["final_accuracy"],
        "difference": diff,
        "difference_ci": list(ci) if ci else None,
        "final_netscore": a["final_netscore"],
        "proxy_val_accuracy": a.get("proxy_val_accuracy"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs/headline")
    ap.add_argument("--study", default="headline")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="final-stage processes sharing the models")
    ap.add_argument(
        "--keep-curves",
        action="store_true",
        help="early stop off (--prune-warmup = epochs) so every trial's whole curve is kept for "
        "bench_stop_rule.py (default: the toolkit's default stop rule)",
    )
    ap.add_argument(
        "--no-pareto", action="store_true", help="finalise only the top trials, not the Pareto members"
    )
    ap.add_argument("--baselines", default=None, help="passed to search final (default: the four; 'none')")
    ap.add_argument(
        "--inherit", action="store_true", help="search run --inherit prototype (issue 16: against scratch)"
    )
    ap.add_argument("--artifacts", help="search run --artifacts (a copied study keeps its first store)")
    ap.add_argument("--final-epochs", type=int, help="search final --epochs (default: the protocol's 12)")
    ap.add_argument(
        "--final-image-size", type=int, help="search final --image-size (default: the final protocol's 128)"
    )
    ap.add_argument("--skip-training", action="store_true", help="only read the studies")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "search_to_model.json"))
    args = ap.parse_args()
    where = ["--out", args.out, "--study", args.study]
    ct_s_macs = spec_complexity(get_reference("ct-s"), 512)[1]
    if not args.skip_training:
        fidelity_flags = ["--epochs", str(args.epochs), "--image-size", str(args.image_size)]
        fidelity_flags += ["--seed", str(args.seed)]
        if args.keep_curves:
            fidelity_flags += ["--prune-warmup", str(args.epochs)]
        if args.inherit:
            fidelity_flags += ["--inherit", "prototype"]
        if args.artifacts:
            fidelity_flags += ["--artifacts", args.artifacts]
        search("run", "--data", args.data, *where, "--trials", str(args.trials), *fidelity_flags)
        final = ["final", *where, "--top", str(args.top), "--repeats", str(args.repeats)]
        if args.final_epochs:
            final += ["--epochs", str(args.final_epochs)]
        if args.final_image_size:
            final += ["--image-size", str(args.final_image_size)]
        if not args.no_pareto:
            final += ["--pareto-max-macs", str(ct_s_macs)]
        if args.baselines is not None:
            final += ["--baselines", args.baselines]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        workers = [
            subprocess.Popen([sys.executable, "-m", "search", "--quiet", *final], env=env)
            for _ in range(args.workers)
        ]
        if any(w.wait() != 0 for w in workers):
            raise SystemExit("search final failed; rerun to resume")

    storage = f"sqlite:///{Path(args.out).resolve() / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searched = optuna.load_study(study_name=args.study, storage=storage)
    finals = optuna.load_study(study_name=f"{args.study}:final", storage=storage)
    rows = [t for t in finals.trials if t.state.name == "COMPLETE"]
    by_role = {
        r: [t for t in rows if t.user_attrs["role"] == r] for r in ("candidate", "prototype", "reference")
    }
    ct_l, ct_s = by_role["prototype"][0], by_role["reference"][0]
    cands = by_role["candidate"]
    best_ns = max(cands, key=lambda t: t.user_attrs["final_netscore"])
    most_accurate = max(cands, key=lambda t: t.user_attrs["final_accuracy"])
    as_accurate = [
        t for t in cands if compare(t, ct_l)["difference_ci"] and compare(t, ct_l)["difference_ci"][1] >= 0
    ]
    smallest_ok = min(as_accurate, key=lambda t: t.user_attrs["macs"]) if as_accurate else None
    ranked = [t for t in [*cands, ct_l] if t.user_attrs.get("proxy_val_accuracy") is not None]
    fid = fidelity(
        [t.user_attrs["proxy_val_accuracy"] for t in ranked], [t.user_attrs["final_accuracy"] for t in ranked]
    )
    result = {
        "commit": commit(),
        "settings": dict(vars(args)),
        "search": {
            "trials": len(searched.trials),
            "complete": sum(t.user_attrs.get("status") == "complete" for t in searched.trials),
            "cpu_hours": cpu_hours(searched.trials),
            "inherited_share": [t.user_attrs.get("inherited_share") for t in searched.trials if t.number > 0],
        },
        "final": {
            "models": len(rows),
            "cpu_hours": cpu_hours(rows),
            "config": finals.user_attrs.get("final_config"),
            "rows": [
                {
                    "model": t.user_attrs["display_name"],
                    "role": t.user_attrs["role"],
                    "params": t.user_attrs["params"],
                    "macs": t.user_attrs["macs"],
                    "proxy_val_accuracy": t.user_attrs.get("proxy_val_accuracy"),
                    "final_accuracy": t.user_attrs["final_accuracy"],
                    "final_ci": t.user_attrs["final_accuracy_uncertainty"]["ci"],
                    "final_values": t.user_attrs["final_accuracy_uncertainty"]["values"],
                    "final_netscore": t.user_attrs["final_netscore"],
                }
                for t in sorted(rows, key=lambda t: t.user_attrs["macs"])
            ],
        },
        "best_netscore_vs_ct_l": compare(best_ns, ct_l),
        "most_accurate_vs_ct_l": compare(most_accurate, ct_l),
        "smallest_as_accurate_vs_ct_l": compare(smallest_ok, ct_l) if smallest_ok else None,
        "ct_s_vs_ct_l": compare(ct_s, ct_l),
        "fidelity": fid,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    header = f"{'model':<16} {'role':<10} {'params':>10} {'MACs (G)':>9} {'proxy val':>9} {'final':>6}"
    print(f"{header} {'95 % CI':>15}")
    for r in result["final"]["rows"]:
        ci = f"[{r['final_ci'][0]:.1f}, {r['final_ci'][1]:.1f}]" if r["final_ci"] else ""
        proxy = f"{r['proxy_val_accuracy']:.1f}" if r["proxy_val_accuracy"] is not None else "-"
        print(
            f"{r['model']:<16} {r['role']:<10} {r['params']:>10,} {r['macs'] / 1e9:>9.3f} {proxy:>9} "
            f"{r['final_accuracy']:>6.1f} {ci:>15}"
        )
    print()
    keys = ("best_netscore_vs_ct_l", "most_accurate_vs_ct_l", "smallest_as_accurate_vs_ct_l", "ct_s_vs_ct_l")
    for key in keys:
        c = result[key]
        if c is None:
            print(f"{key}: none")
            continue
        ci = f"[{c['difference_ci'][0]:+.1f}, {c['difference_ci'][1]:+.1f}]" if c["difference_ci"] else ""
        print(
            f"{key}: {c['model']} ({c['arch_id']}): {c['params_ratio']:.2f}x fewer params, "
            f"{c['macs_ratio']:.2f}x fewer MACs, final accuracy {c['difference']:+.1f} points vs CT L {ci}"
        )
    t, rho = fid["kendall_tau"], fid["spearman_rho"]
    print(
        f"proxy fidelity over {fid['n']} models: Kendall tau {t['value']:.2f} {t['ci']}, "
        f"Spearman rho {rho['value']:.2f} {rho['ci']}"
    )
    print(
        f"CPU-hours: search {result['search']['cpu_hours']:.2f}, final {result['final']['cpu_hours']:.2f}; "
        f"wrote {args.json}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
