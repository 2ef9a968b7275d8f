"""Inherited against from-scratch proxies at (at most) equal CPU, both against the final ranking.

The same N architectures (sampled, seeded, from the default space) plus CT L and CT S are scored
three ways: trained from scratch for E epochs (the ``proxy`` protocol); inheriting the weights of
a CT L prototype trained once under the same protocol for E epochs (``space.inherit``) and
fine-tuned for E' < E epochs, the prototype's CPU counted once in that proxy's total; and by
zero-cost scores at initialisation (synflow, NASWOT, params as the control). Every architecture is
then trained under the final protocol, and each proxy's Kendall tau and Spearman rho against the
final test accuracy are reported with bootstrap intervals (``bench_proxy_fidelity.py`` does the
training; this script fixes the comparison and adds the zero-cost scores).

    OMP_NUM_THREADS=1 python benchmarks/bench_inherit.py --data ../shared/data/ct-sars --n 20

Results: ``benchmarks/results/inherit.json`` (resumable with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import bench_proxy_fidelity  # noqa: E402
from benchmarks.zero_cost import naswot, params, synflow  # noqa: E402
from evaluators.data.cache import load_arrays  # noqa: E402
from evaluators.data.covidx import load_dataset  # noqa: E402
from evaluators.ranking import fidelity  # noqa: E402
from space import ArchSpec, build  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument(
        "--epochs", type=int, default=4, help="E: the scratch proxy's (and the prototype's) epochs"
    )
    ap.add_argument("--finetune-epochs", type=int, default=3, help="E': the inherited proxy's epochs")
    ap.add_argument("--final-seeds", nargs="+", type=int, default=[0])
    ap.add_argument(
        "--final", default="final", help="the final protocol string (e.g. final:image_size=64 on a busy CPU)"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inherit.json"))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    scratch = f"proxy:epochs={args.epochs}"
    inherited = f"inherit:proxy:epochs={args.finetune_epochs}"
    argv = [
        "--data", args.data, "--n", str(args.n), "--proxy", scratch, "--proxy", inherited,
        "--prototype-epochs", str(args.epochs), "--final", args.final, "--final-seeds",
        *map(str, args.final_seeds), "--out", args.out,
    ]  # fmt: skip
    if args.resume:
        argv.append("--resume")
    sys.argv = [sys.argv[0], *argv]
    bench_proxy_fidelity.main()

    # zero-cost scores at initialisation for the same architectures
    out = Path(args.out)
    result = json.loads(out.read_text())
    dataset = load_dataset([args.data], splits=("train",))
    arrays = load_arrays(dataset, "train", 64, 3)
    images = arrays.batch(torch.linspace(0, len(arrays) - 1, 64).round().long().tolist(), 3)
    rows = [r for r in result["models"].values() if r.get("final")]
    finals = [sum(f["test_accuracy"] for f in r["final"]) / len(r["final"]) for r in rows]
    zero: dict[str, list[float]] = {"synflow": [], "naswot": [], "params": []}
    torch.manual_seed(0)
    for r in rows:
        model = build(ArchSpec.from_dict(r["spec"]), 3)
        zero["synflow"].append(synflow(model, (3, 64, 64)))
        zero["naswot"].append(naswot(model, images))
        zero["params"].append(params(model))
        r["zero_cost"] = {k: v[-1] for k, v in zero.items()}
    result["zero_cost"] = {k: fidelity(v, finals) for k, v in zero.items()}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    for name, f in result["zero_cost"].items():
        t = f["kendall_tau"]
        ci = f"[{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]" if t["ci"] else ""
        print(f"zero-cost {name:<8} Kendall tau {t['value']:.2f} {ci}  (n={f['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
