"""Proxy fidelity: does a short proxy training rank architectures as a longer final training does?

N architectures sampled (seeded) from a search space, plus CT L and CT S, are each trained under
every given proxy protocol (one seed) and under a final protocol (several seeds). Reported: Kendall's
tau-b and Spearman's rho of each proxy's stored accuracy against the final test accuracy (mean over
the final seeds), with bootstrap 95 % intervals, and the CPU time of each stage.

    OMP_NUM_THREADS=1 python benchmarks/bench_proxy_fidelity.py --data ../shared/data/ct-sars \
        --n 8 --proxy proxy --proxy paper:epochs=4,image_size=64 --final final --final-seeds 0

Results: ``benchmarks/results/proxy_fidelity.json`` (or ``--out``); written after every model, so
an interrupted run keeps what it measured and ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_protocols import commit, parse_protocol  # noqa: E402
from evaluators.complexity import spec_complexity  # noqa: E402
from evaluators.data.covidx import load_dataset  # noqa: E402
from evaluators.device import seed_everything  # noqa: E402
from evaluators.ranking import fidelity  # noqa: E402
from evaluators.training import TrainConfig, train  # noqa: E402
from space import ArchSpec, build, get_reference  # noqa: E402
from space.sampler import sample  # noqa: E402


def architectures(space: str, n: int, seed: int) -> list[tuple[str, ArchSpec]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = [("ct-l", get_reference("ct-l")), ("ct-s", get_reference("ct-s"))]
    for _ in range(n):
        trial = study.ask()
        spec = sample(trial, space)
        study.tell(trial, 0.0)
        out.append((spec.arch_id, spec))
    return out


def train_once(
    spec: ArchSpec, values: dict[str, Any], seed: int, dataset: Any, parent: Any = None
) -> dict[str, Any]:
    """One training of ``spec`` (from random weights, or inheriting from ``parent``:
    ``(spec, state_dict)`` of a trained prototype) and what it scored."""
    cfg = TrainConfig.resolve({**values, "seed": seed, "device": "cpu"})
    seed_everything(seed)
    c0 = time.process_time()
    share = None
    if parent is None:
        model = build(spec, 3)
    else:
        from space.inherit import inherit

        model, report = inherit(parent, spec, 3)
        share = report.share
    r = train(model, dataset, cfg, progress=False)
    return {
        "inherited_share": share,
        "seed": seed,
        "status": r.status,
        "stored_accuracy": r.val.accuracy if r.val else None,
        "test_accuracy": r.test.accuracy if r.test else None,
        "val_curve": [h["val_accuracy"] for h in r.history],
        "cpu_seconds": time.process_time() - c0,
        "state_dict": r.state_dict if parent is None and spec.name == "ct-l" else None,
    }


class Prototypes:
    """Trained prototypes (CT L) per inherit proxy, trained once; their CPU time is counted once."""

    def __init__(self) -> None:
        self.parents: dict[str, Any] = {}
        self.cpu: dict[str, float] = {}

    def get(self, name: str, values: dict[str, Any], seed: int, dataset: Any) -> Any:
        if name not in self.parents:
            spec = get_reference("ct-l")
            row = train_once(spec, values, seed, dataset)
            self.parents[name] = (spec, row.pop("state_dict"))
            self.cpu[name] = row["cpu_seconds"]
        return self.parents[name]


def split_inherit(name: str) -> tuple[bool, str]:
    """``inherit:proxy:epochs=3`` -> (True, "proxy:epochs=3")."""
    return (True, name[len("inherit:") :]) if name.startswith("inherit:") else (False, name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--space", default="prototype")
    ap.add_argument("--n", type=int, default=8, help="sampled architectures (besides CT L and CT S)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampled architectures")
    ap.add_argument("--proxy", action="append", required=True, help="a protocol string (see bench_protocols)")
    ap.add_argument("--final", default="final", help="the final protocol string")
    ap.add_argument("--final-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--proxy-seed", type=int, default=1, help="the proxies' training seed (not a final seed)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "proxy_fidelity.json"))
    ap.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    ap.add_argument(
        "--prototype-epochs",
        type=int,
        default=4,
        help="epochs of the prototype of inherit: proxies (default 4)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset([args.data])
    archs = architectures(args.space, args.n, args.seed)
    proxies = [(p, parse_protocol(split_inherit(p)[1])[1]) for p in args.proxy]
    final_name, final_values = parse_protocol(args.final)
    protos = Prototypes()
    out = Path(args.out)
    rows: dict[str, dict[str, Any]] = {}
    if args.resume and out.is_file():
        stored = json.loads(out.read_text())
        rows = stored.get("models", {})
        protos.cpu.update(stored.get("prototype_cpu_seconds", {}))

    def save() -> None:
        summary = {}
        done = [r for r in rows.values() if "final" in r]
        finals = [sum(f["test_accuracy"] for f in r["final"]) / len(r["final"]) for r in done]
        for name, _ in proxies:
            xs = [r["proxy"][name]["stored_accuracy"] for r in done]
            summary[name] = fidelity(xs, finals) if len(done) >= 2 else None
            if summary[name] is not None:
                runs = [r["proxy"][name] for r in rows.values() if name in r["proxy"]]
                summary[name]["mean_proxy_accuracy"] = sum(x["stored_accuracy"] for x in runs) / len(runs)
                cpu = sum(x["cpu_seconds"] for x in runs) + protos.cpu.get(name, 0.0)
                summary[name]["cpu_hours"] = cpu / 3600  # the prototype's training counted once
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "commit": commit(),
                    "settings": dict(vars(args)),
                    "final_protocol": final_name,
                    "summary": summary,
                    "prototype_cpu_seconds": protos.cpu,
                    "models": rows,
                },
                indent=2,
            )
            + "\n"
        )

    for arch_id, spec in archs:
        row = rows.setdefault(arch_id, {"spec": spec.to_dict(), "proxy": {}})
        row["params"], row["macs"] = spec_complexity(spec, 512, 3)
        for name, values in proxies:
            if name not in row["proxy"]:
                parent = None
                if split_inherit(name)[0]:
                    # the prototype trains under the protocol the children are fine-tuned with,
                    # with the epochs of the scratch proxy (--prototype-epochs)
                    base = {**values, "epochs": args.prototype_epochs}
                    parent = protos.get(name, base, args.proxy_seed, dataset)
                got = train_once(spec, values, args.proxy_seed, dataset, parent)
                got.pop("state_dict", None)
                row["proxy"][name] = got
                save()
        if "final" not in row:
            row["final"] = [train_once(spec, final_values, s, dataset) for s in args.final_seeds]
            for f in row["final"]:
                f.pop("state_dict", None)
            save()
        finals = [f["test_accuracy"] for f in row["final"]]
        proxies_text = "  ".join(f"{n}: {row['proxy'][n]['stored_accuracy']:.1f}" for n, _ in proxies)
        print(
            f"{arch_id:<10} {row['macs'] / 1e9:6.3f} G MACs  {proxies_text}  final test "
            f"{sum(finals) / len(finals):.1f} (seeds {[round(v, 1) for v in finals]})",
            flush=True,
        )
    save()
    summary = json.loads(out.read_text())["summary"]
    print()
    for name, f in summary.items():
        if f is None:
            continue
        t, r = f["kendall_tau"], f["spearman_rho"]
        tci = f"[{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]" if t["ci"] else ""
        rci = f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" if r["ci"] else ""
        print(
            f"{name:<40} Kendall tau {t['value']:.2f} {tci}   "
            f"Spearman rho {r['value']:.2f} {rci}  (n={f['n']})"
        )
    for name, _ in proxies:
        cpu = sum(r["proxy"][name]["cpu_seconds"] for r in rows.values() if name in r["proxy"])
        cpu += protos.cpu.get(name, 0.0)
        mean = sum(r["proxy"][name]["stored_accuracy"] for r in rows.values() if name in r["proxy"]) / len(
            rows
        )
        print(f"{name:<40} mean proxy accuracy {mean:.1f} %, CPU {cpu / 3600:.3f} h (prototype included)")
    cpu_f = sum(f["cpu_seconds"] for r in rows.values() for f in r.get("final", []))
    print(f"CPU: final {cpu_f / 3600:.2f} h; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
