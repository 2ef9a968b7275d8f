"""Cross-source generalisation: train on one hospital's slices, test on another's, with each
intensity harmonisation (``--harmonise``) and without.

For each network (CT S, CT L), direction (ct-sars -> ct-real, ct-real -> ct-sars), harmonisation
and seed: train on the source's train split (validated on its own val split; the proxy recipe
keeps the last epoch, so validation selects nothing), then predict every image of the *other*
source (train + val + test: none was seen in training). COVID-19 against the rest: sensitivity,
specificity and balanced accuracy (their mean), each the mean over seeds with a 95 % percentile
bootstrap interval over the target's images (one resample of images scores every seed's
predictions of those images, so the interval is of the seed mean).

    OMP_NUM_THREADS=1 python benchmarks/bench_cross_source.py \
        --source ../shared/data/ct-sars --source ../shared/data/ct-real --seeds 0 1

Results: ``benchmarks/results/cross_source.json`` (written after every run, so a partial run keeps
what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_protocols import commit  # noqa: E402
from evaluators.data.cache import concat_arrays, load_arrays  # noqa: E402
from evaluators.data.covidx import load_dataset  # noqa: E402
from evaluators.data.harmonise import HARMONISE, harmonise_arrays  # noqa: E402
from evaluators.device import seed_everything  # noqa: E402
from evaluators.evaluate import predict  # noqa: E402
from evaluators.metrics import COVID  # noqa: E402
from evaluators.training import TrainConfig, train  # noqa: E402
from space import build, get_reference  # noqa: E402

NETWORKS = {"CT S": "ct-s", "CT L": "ct-l"}


def binary(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """Sensitivity, specificity and balanced accuracy (percent) of COVID-19 against the rest."""
    pos, neg = y == COVID, y != COVID
    sens = 100.0 * float((p[pos] == COVID).mean()) if pos.any() else float("nan")
    spec = 100.0 * float((p[neg] != COVID).mean()) if neg.any() else float("nan")
    return sens, spec, (sens + spec) / 2


def summarise(y: np.ndarray, preds: list[np.ndarray], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean over seeds of sensitivity, specificity and balanced accuracy, each with a 95 % bootstrap
    interval over the images (stratified by class so both rates stay defined)."""
    point = np.array([binary(y, p) for p in preds]).mean(0)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == COVID), np.flatnonzero(y != COVID)
    draws = np.empty((resamples, 3))
    for b in range(resamples):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        draws[b] = np.array([binary(y[idx], p[idx]) for p in preds]).mean(0)
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    names = ("sensitivity", "specificity", "balanced_accuracy")
    return {n: {"mean": float(point[i]), "ci": [float(lo[i]), float(hi[i])]} for i, n in enumerate(names)}


def target_arrays(path: str, size: int, cache: str | None) -> Any:
    ds = load_dataset([path])
    return concat_arrays([load_arrays(ds, s, size, 3, cache) for s in ds.splits], split="all")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", action="append", required=True, help="exactly two data folders")
    ap.add_argument("--network", action="append", choices=list(NETWORKS), help="default: CT S and CT L")
    ap.add_argument("--harmonise", action="append", choices=HARMONISE, help="default: all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--protocol", default="proxy")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--cache-dir")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cross_source.json"))
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the runs already in --out (same settings, other seeds) and train only the missing ones",
    )
    args = ap.parse_args(argv)
    if len(args.source) != 2:
        ap.error("give exactly two --source folders")
    networks = args.network or list(NETWORKS)
    methods = args.harmonise or list(HARMONISE)
    overrides: dict[str, Any] = {"protocol": args.protocol, "device": "cpu", "evaluate_test": False}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.image_size:
        overrides["image_size"] = args.image_size
    base = TrainConfig.resolve(overrides)
    names = [Path(s).name for s in args.source]
    data = {n: load_dataset([s]) for n, s in zip(names, args.source)}
    targets = {n: target_arrays(s, base.image_size, args.cache_dir) for n, s in zip(names, args.source)}
    runs: list[dict[str, Any]] = previous_runs(Path(args.out), base) if args.append else []
    done = {(r["network"], r["train"], r["test"], r["harmonise"], r["seed"]) for r in runs}
    result: dict[str, Any] = {
        "commit": commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "settings": {**base.to_dict(), "seeds": args.seeds, "networks": networks, "harmonise": methods},
        "sources": dict(zip(names, args.source)),
        "target_images": {n: len(t) for n, t in targets.items()},
        "runs": runs,
        "summary": [],
    }
    started = time.time()
    for seed in args.seeds:  # seeds outermost: a partial run has every cell at fewer seeds
        for net in networks:
            for src, dst in ((names[0], names[1]), (names[1], names[0])):
                for method in methods:
                    if (net, src, dst, method, seed) in done:
                        continue
                    cfg = dataclasses.replace(base, seed=seed, harmonise=method)
                    seed_everything(seed)
                    model = build(get_reference(NETWORKS[net]), 3)
                    t0 = time.process_time()
                    res = train(model, data[src], cfg, cache_dir=args.cache_dir, progress=False)
                    tgt = harmonise_arrays(targets[dst], method)
                    pred = predict(model, tgt.images, 3, 64, torch.device("cpu")).numpy()
                    y = tgt.labels.numpy()
                    sens, spec, ba = binary(y, pred)
                    runs.append(
                        {
                            "network": net,
                            "train": src,
                            "test": dst,
                            "harmonise": method,
                            "seed": seed,
                            "status": res.status,
                            "in_source_val_accuracy": res.val.accuracy if res.val else None,
                            "sensitivity": sens,
                            "specificity": spec,
                            "balanced_accuracy": ba,
                            "predictions": pred.tolist(),
                            "cpu_seconds": time.process_time() - t0,
                            "commit": result["commit"],
                        }
                    )
                    print(
                        f"[{time.time() - started:6.0f} s] seed {seed} {net} {src}->{dst} {method:<11} "
                        f"in-source val {runs[-1]['in_source_val_accuracy']:.1f} %  "
                        f"sens {sens:5.1f} spec {spec:5.1f} BA {ba:5.1f}",
                        flush=True,
                    )
                    result["summary"] = summary(runs, targets)
                    result["wall_seconds"] = time.time() - started
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    write_result(Path(args.out), result)
    print_table(result["summary"])
    return 0


def write_result(path: Path, result: dict[str, Any]) -> None:
    """The result as JSON, one line a run (each run holds thousands of predictions)."""
    head = json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1)
    runs = ",\n".join(json.dumps(r) for r in result["runs"])
    text = f'{head[:-2]},\n "runs": [\n{runs}\n ]\n}}\n'
    json.loads(text)  # a malformed file would lose the runs of an --append
    path.write_text(text)


def previous_runs(path: Path, base: TrainConfig) -> list[dict[str, Any]]:
    """The runs of an earlier result at ``path`` (``--append``), refused if trained differently."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    mine = base.to_dict()
    theirs = {k: v for k, v in old["settings"].items() if k in mine and k not in ("seed", "harmonise")}
    differ = {k: (v, mine[k]) for k, v in theirs.items() if mine[k] != v}
    if differ:
        raise SystemExit(f"--append: {path} was trained with other settings (old, new): {differ}")
    return list(old["runs"])


def summary(runs: list[dict[str, Any]], targets: dict[str, Any]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["network"], r["train"], r["test"], r["harmonise"]), []).append(r)
    out = []
    for (net, src, dst, method), rs in cells.items():
        y = targets[dst].labels.numpy()
        s = summarise(y, [np.asarray(r["predictions"]) for r in rs])
        out.append(
            {
                "network": net,
                "train": src,
                "test": dst,
                "harmonise": method,
                "seeds": [r["seed"] for r in rs],
                "in_source_val_accuracy": float(np.mean([r["in_source_val_accuracy"] for r in rs])),
                **s,
            }
        )
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    def cell(d: dict[str, Any]) -> str:
        return f"{d['mean']:5.1f} [{d['ci'][0]:5.1f}, {d['ci'][1]:5.1f}]"

    print(
        "| network | train -> test | harmonise | seeds | in-source val % | balanced acc % | "
        "sensitivity % | specificity % | vs none (BA points) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    none = {
        (r["network"], r["train"]): r["balanced_accuracy"]["mean"] for r in rows if r["harmonise"] == "none"
    }
    for r in rows:
        ref = none.get((r["network"], r["train"]))
        delta = (
            f"{r['balanced_accuracy']['mean'] - ref:+.1f}"
            if ref is not None and r["harmonise"] != "none"
            else ""
        )
        print(
            f"| {r['network']} | {r['train']} -> {r['test']} | {r['harmonise']} | {len(r['seeds'])} | "
            f"{r['in_source_val_accuracy']:.1f} | {cell(r['balanced_accuracy'])} | "
            f"{cell(r['sensitivity'])} | {cell(r['specificity'])} | {delta} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
