"""Params and MACs of every registered baseline, at 224x224x3 with 1000 classes (the usual
reference point, with the published figures beside) and at 512x512x3 with 3 classes (the COVID-Net
CT-2 paper's setting, with NetScore at the paper's 99.0 % accuracy).

Prints a Markdown table and writes JSON (default: benchmarks/results/baseline_complexity.json).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/baseline_complexity.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from baselines import baseline_info, baseline_names, create_baseline
from evaluators import netscore, profile

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "baseline_complexity.json"
# The accuracy the CT-2 paper reports for its best networks (MobileNetV2, EfficientNet-B0 CT-2).
PAPER_ACCURACY = 99.0


def measure(name: str) -> dict[str, Any]:
    """Params and MACs of baseline ``name`` at 224/1000 and 512/3, and the published figures."""
    info = baseline_info(name)
    row: dict[str, Any] = {"name": name, "display_name": info.display_name}
    for key, size, classes in (("imagenet", 224, 1000), ("ct", 512, 3)):
        torch.manual_seed(0)
        start = time.perf_counter()
        model = create_baseline(name, num_classes=classes)
        p = profile(model, (3, size, size), memory=False)
        # What papers count: convolutions and linear layers (fvcore adds batch norm and pooling).
        conv_linear = sum(
            p.by_module.get(n, 0) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        )
        row[key] = {
            "input_size": [3, size, size],
            "num_classes": classes,
            "params": p.params,
            "macs": p.macs,
            "conv_linear_macs": conv_linear,
            "flops": p.flops,
            "unsupported_ops": p.unsupported_ops,
            "seconds": round(time.perf_counter() - start, 2),
        }
    row["ct"]["netscore_at_99"] = round(netscore(PAPER_ACCURACY, row["ct"]["params"], row["ct"]["macs"]), 2)
    pub = info.published
    row["published"] = (
        None
        if pub is None
        else {
            "params": pub.params,
            "macs": pub.macs,
            "input_size": list(pub.input_size),
            "num_classes": pub.num_classes,
            "source": pub.source,
        }
    )
    return row


def _pct(ours: int, published: int) -> str:
    return f"{100 * (ours / published - 1):+.1f} %"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of ``rows`` (from ``measure``)."""
    lines = [
        "| baseline | params 224/1000 | MACs 224/1000 (conv + linear) | published params / MACs (ours vs) "
        "| params 512/3 | MACs 512/3 | NetScore if a = 99.0 |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        im, ct, pub = r["imagenet"], r["ct"], r["published"]
        if pub is None:
            published = "-"
        else:
            at = "224/1000" if pub["num_classes"] == 1000 else f"{pub['input_size'][1]}/{pub['num_classes']}"
            ref = im if pub["num_classes"] == 1000 else ct
            published = (
                f"{pub['params'] / 1e6:.3f} M ({_pct(ref['params'], pub['params'])}) / "
                f"{pub['macs'] / 1e9:.3f} G ({_pct(ref['macs'], pub['macs'])}) at {at}"
            )
        lines.append(
            f"| {r['display_name']} (`{r['name']}`) | {im['params'] / 1e6:.3f} M "
            f"| {im['macs'] / 1e9:.3f} G ({im['conv_linear_macs'] / 1e9:.3f} G) "
            f"| {published} | {ct['params'] / 1e6:.3f} M | {ct['macs'] / 1e9:.3f} G "
            f"| {ct['netscore_at_99']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated baseline names (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or baseline_names()
    # torch.jit (under fvcore) warns of its deprecation on every trace.
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_grad_enabled(False)
    rows = [measure(n) for n in names]
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/baseline_complexity.py",
        "counter": "fvcore FlopCountAnalysis via evaluators.profile (MACs; counts batch norm too)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "paper_accuracy_pct": PAPER_ACCURACY,
        "baselines": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
