"""CPU latency of ONNX Runtime against PyTorch eager, batch 1, for COVID-Net CT L, the ``ct-s``
reference and the baseline networks at 224 and 512 px (3 classes, random weights: latency does not
depend on the weights).

Each model is exported as ``search export`` does (``torch.onnx.export(dynamo=False)``, opset 18,
dynamic batch axis), checked against PyTorch on one random input, then timed with
``evaluators.latency.measure_latency`` (the statistics of a model card), the two runtimes
alternating call by call so that load from other processes falls on both alike.
Prints a Markdown table and writes JSON (default: benchmarks/results/latency.json).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_latency.py --threads 1

On a shared machine ``--threads 1`` keeps the figures meaningful: with more intra-op threads than
idle cores, PyTorch's OpenMP threads wait for each other at every layer (one of them is always
descheduled), and eager latency grows tenfold or more while ONNX Runtime's pool degrades gently.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latency.json"
BASELINES = ("squeezenet1_0", "squeezenet1_1", "mobilenet_v2", "efficientnet_b0", "nasnet_a_mobile")
SIZES = (224, 512)


def models() -> list[tuple[str, str, Any]]:
    """``(key, display name, builder)`` for every network benchmarked."""
    from baselines import baseline_info, create_baseline
    from space import build, get_reference

    out: list[tuple[str, str, Any]] = [
        ("ct-l", "COVID-Net CT L (`ct-l`)", lambda: build(get_reference("ct-l"), 3)),
        ("ct-s", "COVID-Net CT S (`ct-s`)", lambda: build(get_reference("ct-s"), 3)),
    ]
    for name in BASELINES:
        out.append(
            (name, f"{baseline_info(name).display_name} (`{name}`)", lambda n=name: create_baseline(n, 3, 3))
        )
    return out


def measure(model: nn.Module, size: int, warmup: int, repeats: int, threads: int) -> dict[str, Any]:
    """Export ``model`` at ``size`` px, check it, and time both runtimes at batch 1."""
    from evaluators.latency import measure_latency
    from search.export.onnx import check_parity, export_onnx

    model.eval()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(model, path, (3, size, size))
        export_s = time.perf_counter() - start
        torch.manual_seed(0)
        parity = check_parity(path, model, torch.rand(1, 3, size, size))
        lat = measure_latency(
            model,
            path,
            (3, size, size),
            batch_sizes=(1,),
            warmup=warmup,
            repeats=repeats,
            threads=threads,
            interleave=True,  # other processes' load falls on both runtimes alike
        )
    ort, eager = lat.get("onnxruntime", 1), lat.get("torch", 1)
    return {
        "size": size,
        "onnxruntime_median_ms": ort.median_ms,
        "onnxruntime_p90_ms": ort.p90_ms,
        "torch_median_ms": eager.median_ms,
        "torch_p90_ms": eager.p90_ms,
        "onnxruntime_min_ms": ort.min_ms,
        "torch_min_ms": eager.min_ms,
        "ratio": ort.median_ms / eager.median_ms,
        "ratio_of_minima": ort.min_ms / eager.min_ms,
        "parity_max_abs_diff": parity.max_abs_diff,
        "parity_max_abs_logit": parity.max_abs_logit,  # random weights: float32 rounding scales with it
        "export_seconds": round(export_s, 2),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of ``rows``: one line per network and size; ratio = ONNX Runtime / eager."""
    lines = [
        "| network | params | size | ONNX Runtime ms (median / fastest) "
        "| PyTorch eager ms (median / fastest) | ratio of medians | ratio of fastest |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        for size, m in r["sizes"].items():
            lines.append(
                f"| {r['display_name']} | {r['params'] / 1e6:.3f} M | {size} | "
                f"{m['onnxruntime_median_ms']:.1f} / {m['onnxruntime_min_ms']:.1f} | "
                f"{m['torch_median_ms']:.1f} / {m['torch_min_ms']:.1f} | {m['ratio']:.2f} | "
                f"{m['ratio_of_minima']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per runtime (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of both runtimes (default: torch's)"
    )
    parser.add_argument("--only", help="comma-separated keys (ct-l, ct-s, mobilenet_v2, ...)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    threads = args.threads or torch.get_num_threads()
    wanted = set(args.only.split(",")) if args.only else None
    load_before = list(os.getloadavg())  # other processes' load: the figures are wall-clock
    rows = []
    for key, display, make in models():
        if wanted is not None and key not in wanted:
            continue
        torch.manual_seed(0)
        model = make()
        row: dict[str, Any] = {
            "key": key,
            "display_name": display,
            "params": sum(p.numel() for p in model.parameters()),
            "sizes": {},
        }
        for size in SIZES:
            row["sizes"][str(size)] = measure(model, size, args.warmup, args.repeats, threads)
            m = row["sizes"][str(size)]
            diff = m["parity_max_abs_diff"]
            print(
                f"{key:<16} {size} px  ORT {m['onnxruntime_median_ms']:8.2f} ms  eager "
                f"{m['torch_median_ms']:8.2f} ms  ratio {m['ratio']:.2f}  |diff| {diff:.1e}",
                flush=True,
            )
        rows.append(row)
    print()
    print(table(rows))
    ratios = [m["ratio"] for r in rows for m in r["sizes"].values()]
    result = {
        "what": "CPU latency at batch 1, ONNX Runtime vs PyTorch eager, 3 classes, random weights",
        "threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "geometric_mean_ratio": float(np.exp(np.mean(np.log(ratios)))) if ratios else None,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "versions": _versions(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def _versions() -> dict[str, str | None]:
    from search.export.card import library_versions

    return library_versions()


if __name__ == "__main__":
    main()
