"""The report's setup block: how the study was run, so that a reader can cite and repeat it.

Everything comes from what the study stored: its ``run_config`` (protocol, training, space, sampler,
objective, seed, budget), ``data`` (sources, split sizes, hash, majority-class rates) and
``environment`` (device, threads, versions; recorded by ``search run`` from this version on), the
trials by state, and the compute spent (the trials' wall time summed, per study, in device-hours).
What a study did not store is "not recorded", never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from reports.collect import Collection, training_config
from reports.tables import Column, Table

NOT_RECORDED = "not recorded"
# what each status is called in the block (Optuna's early stop is "stopped early")
STATE_NAMES = {
    "complete": "complete",
    "stopped_early": "stopped early",
    "infeasible": "over budget",
    "failed": "failed",
    "interrupted": "interrupted",
    "running": "running",
    "waiting": "waiting",
}


def compute_seconds(rows: pd.DataFrame) -> float:
    """Training seconds of ``rows``: each trial's stored wall time, else its start-to-end span."""
    total = 0.0
    for r in rows.itertuples():
        if pd.notna(r.wall_time_s):
            total += float(r.wall_time_s)
        elif pd.notna(r.datetime_start) and pd.notna(r.datetime_complete):
            total += (r.datetime_complete - r.datetime_start).total_seconds()
    return total


def setup(collection: Collection, source: str = "") -> dict[str, Any]:
    """The setup of ``collection``'s study as a JSON-ready dict."""
    attrs = collection.study_attrs
    config = dict(attrs.get("run_config") or {})
    data = dict(attrs.get("data") or {})
    env = dict(attrs.get("environment") or {})
    counts = collection.counts()
    device_type = env.get("device_type")
    compute = {}
    for study, rows in collection.frame.groupby("study", sort=False):
        compute[str(study)] = round(compute_seconds(rows) / 3600.0, 4)
    return {
        "study": collection.study,
        "storage": source or None,
        "data": {
            "sources": data.get("data_sources") or list(config.get("data") or []) or None,
            "split_sizes": data.get("data_sizes"),
            "hash": data.get("data_hash"),
            "majority_rate": data.get("majority_rate"),
        },
        "training": training_config(config),
        "search": {
            "space": config.get("space"),
            "objective": attrs.get("objective") or config.get("objective"),
            "sampler": config.get("sampler") or ("tpe (default)" if config else None),
            "trials_budget": config.get("trials"),
            "complexity_size": config.get("complexity_size"),
            "max_params": config.get("max_params"),
            "max_macs": config.get("max_macs"),
            "early_stop": {k: config.get(k) for k in ("prune_warmup", "prune_margin") if k in config},
            "inherit": config.get("inherit"),
        },
        "seed": config.get("seed"),
        "trials_by_state": {STATE_NAMES.get(k, k): v for k, v in counts.items()},
        "environment": env or None,
        "compute_hours": {"device": device_type or "unknown", "by_study": compute},
    }


def _text(v: Any) -> str:
    if v is None or v == {} or v == []:
        return NOT_RECORDED
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def setup_table(s: Mapping[str, Any]) -> Table:
    """The setup block as a two-column table (shown first in ``index.html``)."""
    t = Table(
        "setup",
        "Setup: how this study was run",
        "From the study's stored configuration. Majority-class rate: the accuracy of always "
        "predicting the largest class (what a model that learned nothing scores). Compute: the "
        "trials' wall time summed, per study.",
        [Column("what", "what"), Column("value", "value")],
    )
    d = s["data"]
    sizes = d.get("split_sizes") or {}
    rates = d.get("majority_rate") or {}

    def add(what: str, value: Any) -> None:
        t.rows.append({"what": what, "value": _text(value) if not isinstance(value, str) else value})

    add("study", s["study"])
    if s.get("storage"):
        add("storage", s["storage"])
    add("data sources", ", ".join(d["sources"]) if d.get("sources") else NOT_RECORDED)
    add(
        "split sizes (images)",
        ", ".join(f"{k} {v}" for k, v in sizes.items()) if sizes else NOT_RECORDED,
    )
    add("data hash", (d.get("hash") or NOT_RECORDED)[:16])
    add(
        "majority-class rate (%)",
        ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) if rates else NOT_RECORDED,
    )
    tr = s["training"]
    add(
        "protocol and training",
        ", ".join(f"{k.replace('_', ' ')} {_text(v)}" for k, v in tr.items()) if tr else NOT_RECORDED,
    )
    se = s["search"]
    add("space", se.get("space"))
    add("objective", se.get("objective"))
    add("sampler", se.get("sampler"))
    add("trial budget", se.get("trials_budget"))
    add("complexity size (px)", se.get("complexity_size"))
    limits = [f"{k.replace('_', ' ')} {v}" for k in ("max_params", "max_macs") if (v := se.get(k))]
    add("constraints", ", ".join(limits) if limits else "none")
    es = se.get("early_stop") or {}
    add(
        "early stop",
        ", ".join(f"{k.replace('prune_', '')} {v}" for k, v in es.items()) if es else NOT_RECORDED,
    )
    add("seed", s.get("seed"))
    add("trials by state", ", ".join(f"{v} {k}" for k, v in s["trials_by_state"].items() if v) or "none")
    env = s.get("environment") or {}
    device = env.get("device")
    if env.get("gpu"):
        device = f"{device} ({env['gpu']})"
    add("device", device)
    add("threads", env.get("threads"))
    versions = env.get("versions") or {}
    add("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v) or NOT_RECORDED)
    ch = s["compute_hours"]
    kind = {"cpu": "CPU", "cuda": "GPU", "mps": "GPU"}.get(ch["device"], "device")
    add(
        f"compute ({kind}-hours)",
        ", ".join(f"{k} {v:.3f}" for k, v in ch["by_study"].items()) or "none",
    )
    return t
