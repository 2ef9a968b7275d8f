"""The final stage in the report: what ``search final`` measured, and how well the proxy predicted it.

``<study>:final`` (kind ``final``) holds the finalised candidates, CT L, CT S and the baselines,
all trained under one final configuration and scored on the test split (or out-of-fold with
folds). Its figures are never drawn beside the proxy's (they come from another training); this
module gives them their own tables and pictures:

* the final accuracies, per model the mean over its runs with a 95 % interval;
* the final Pareto front (final accuracy up, params and MACs down) over every final model;
* the trade-off of each finalised candidate against CT L, CT S and each baseline, final against
  final (like with like: one training configuration);
* the proxy's fidelity: Kendall's tau-b and Spearman's rho between the proxy accuracy and the final
  accuracy over the finalised search trials (candidates and the CT L prototype), with bootstrap
  intervals (``evaluators.ranking.fidelity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluators.uncertainty import Uncertain
from reports.collect import KIND_FINAL, Collection
from reports.figures import pyplot, styled
from reports.pareto import dominates, front_2d, pareto_indices
from reports.points import AXES, unit
from reports.tables import MAJORITY_LABEL, NA, Column, Table

# roles of the search's own trials (their proxy accuracy comes from the search itself)
SEARCHED_ROLES = ("candidate", "prototype")
ROLE_NAMES = {"candidate": "finalised candidate", "prototype": "CT L (prototype)", "reference": "CT S"}
ROLE_STYLE = {  # marker, colour, size
    "candidate": ("o", "#1f4e8c", 60),
    "prototype": ("*", "#c62828", 170),
    "reference": ("P", "#8e24aa", 90),
    "baseline": ("s", "#ef6c00", 60),
}


@dataclass
class FinalStage:
    """The final stage of a study as the report shows it.

    Attributes:
        rows: one row per finished final model, by MACs: the collection's columns plus ``role``,
            ``final_accuracy``, ``final_std``, ``final_ci``, ``final_runs``, ``final_split``,
            ``proxy_accuracy``, ``final_netscore``, ``source_trial``, ``pareto``.
        config: the stored final training configuration (``final_config``).
        fidelity: ``evaluators.ranking.fidelity`` over the searched rows (``None`` under two).
    """

    study: str
    rows: pd.DataFrame
    config: dict[str, Any]
    fidelity: dict[str, Any] | None
    majority: dict[str, float] = field(default_factory=dict)

    @property
    def front(self) -> pd.DataFrame:
        return self.rows[self.rows["pareto"]]

    @property
    def searched(self) -> pd.DataFrame:
        r = self.rows
        return r[r["role"].isin(SEARCHED_ROLES) & r["proxy_accuracy"].notna()]

    def describe(self) -> str:
        c = self.config
        runs = int(c.get("repeats", 1) or 1) * max(1, int(c.get("cv_folds", 1) or 1))
        return (
            f"protocol {c.get('protocol', '?')}, {c.get('epochs', '?')} epochs at {c.get('image_size', '?')} "
            f"px, {runs} run(s) per model"
        )


def _uncertain(a: Mapping[str, Any]) -> Uncertain | None:
    d = a.get("final_accuracy_uncertainty")
    if not isinstance(d, Mapping):
        return None
    try:
        return Uncertain.from_dict(dict(d))
    except (KeyError, TypeError, ValueError):
        return None


def final_stage(collection: Collection, draws: int = 2000) -> FinalStage | None:
    """The final stage of ``collection`` (``None`` when ``<study>:final`` holds no finished model)."""
    from evaluators.ranking import fidelity

    f = collection.frame
    rows = f[(f["kind"] == KIND_FINAL) & f["measured"]].copy()
    rows = rows[[isinstance(a.get("final_accuracy"), (int, float)) for a in rows["attrs"]]]
    if not len(rows):
        return None
    us = [_uncertain(a) for a in rows["attrs"]]
    rows["role"] = [str(a.get("role") or "other") for a in rows["attrs"]]
    rows["final_accuracy"] = [float(a["final_accuracy"]) for a in rows["attrs"]]
    rows["final_std"] = [u.std if u is not None else None for u in us]
    rows["final_ci"] = [u.ci if u is not None else None for u in us]
    rows["final_runs"] = [len(u.values) if u is not None else 1 for u in us]
    rows["final_split"] = [str(a.get("final_split") or "?") for a in rows["attrs"]]
    rows["proxy_accuracy"] = [_num(a.get("proxy_val_accuracy")) for a in rows["attrs"]]
    rows["final_netscore"] = [_num(a.get("final_netscore")) for a in rows["attrs"]]
    rows["source_trial"] = [a.get("source_trial") for a in rows["attrs"]]
    rows = rows.sort_values(["macs", "params"])
    pts = [(float(r.final_accuracy), float(r.params), float(r.macs)) for r in rows.itertuples()]
    on_front = set(pareto_indices(pts))
    rows["pareto"] = [i in on_front for i in range(len(rows))]
    name = collection.study + ":final"
    config = dict(collection.companion_attrs.get(name, {}).get("final_config") or {})
    rates = {k: collection.majority_rate(k, name) for k in ("train", "val", "test")}
    stage = FinalStage(
        collection.study, rows, config, None, {k: v for k, v in rates.items() if v is not None}
    )
    searched = stage.searched
    if len(searched) >= 2:
        stage.fidelity = fidelity(
            list(searched["proxy_accuracy"].astype(float)),
            list(searched["final_accuracy"].astype(float)),
            draws=draws,
        )
    return stage


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None


# ----------------------------------------------------------------------------- tables
def _spread(r: pd.Series) -> tuple[float, float | None, tuple[float, float] | None]:
    return (float(r["final_accuracy"]), r["final_std"], r["final_ci"])


def _role(r: pd.Series) -> str:
    role = str(r["role"])
    return ROLE_NAMES.get(role, role) + (", final Pareto" if r["pareto"] else "")


def accuracy_table(stage: FinalStage) -> Table:
    """Every final model: complexity, proxy accuracy, final accuracy with its interval, NetScore."""
    splits = sorted(set(stage.rows["final_split"]))
    t = Table(
        "final",
        "Final stage: accuracies after full training",
        f"Every model retrained under one final configuration ({stage.describe()}) in the study "
        f"'{stage.study}:final' and scored on the {'/'.join(splits)} split. Final accuracy: the mean "
        "over the model's runs ± standard deviation [95 % interval: Student's t over the runs, or the "
        "bootstrap over the images of a single run]. Proxy accuracy: the search trial's validation "
        "accuracy (for CT S and the baselines, that of ':baselines' under the search's settings, where "
        "trained). Source trial: the search trial a candidate came from.",
        [
            Column("label", "model"),
            Column("role", "role"),
            Column("source", "source trial", "int"),
            Column("params", "params (M)", "mega"),
            Column("macs", f"MACs ({unit('macs', list(stage.rows['macs']))[1]})", _macs_fmt(stage)),
            Column("proxy", "proxy val accuracy (%)", "pct"),
            Column("final", "final accuracy (%)", "spread"),
            Column("runs", "runs", "int"),
            Column("netscore", "final NetScore", "score"),
        ],
    )
    for _, r in stage.rows.iterrows():
        t.rows.append(
            {
                "label": r["label"],
                "role": _role(r),
                "source": r["source_trial"],
                "params": r["params"],
                "macs": r["macs"],
                "proxy": r["proxy_accuracy"],
                "final": _spread(r),
                "runs": r["final_runs"],
                "netscore": r["final_netscore"],
            }
        )
    split = splits[0] if len(splits) == 1 else None
    if split is not None and stage.majority.get(split) is not None:
        t.rows.append(
            {
                "label": MAJORITY_LABEL,
                "role": "chance level",
                "final": (stage.majority[split], None, None),
            }
        )
        t.note += f" {MAJORITY_LABEL}: always predicting the largest class of the {split} split."
    return t


def _macs_fmt(stage: FinalStage) -> str:
    return "giga" if unit("macs", list(stage.rows["macs"]))[1] == "G" else "mega"


def front_table(stage: FinalStage) -> Table:
    """The final Pareto front: the final models that no other final model dominates."""
    t = Table(
        "final_front",
        "Final stage: Pareto front (final accuracy, params, MACs)",
        "The final models that no other final model dominates (final accuracy no lower, params and "
        "MACs no higher, one strictly), by MACs; every model of the final stage competes.",
        [
            Column("label", "model"),
            Column("role", "role"),
            Column("params", "params (M)", "mega"),
            Column("macs", f"MACs ({unit('macs', list(stage.rows['macs']))[1]})", _macs_fmt(stage)),
            Column("final", "final accuracy (%)", "spread"),
            Column("netscore", "final NetScore", "score"),
        ],
    )
    for _, r in stage.front.iterrows():
        t.rows.append(
            {
                "label": r["label"],
                "role": ROLE_NAMES.get(str(r["role"]), str(r["role"])),
                "params": r["params"],
                "macs": r["macs"],
                "final": _spread(r),
                "netscore": r["final_netscore"],
            }
        )
    return t


def _significant(a: pd.Series, b: pd.Series) -> str:
    ua, ub = _uncertain(a["attrs"]), _uncertain(b["attrs"])
    if ua is None or ub is None or ua.ci is None or ub.ci is None:
        return NA
    return "no: intervals overlap" if ua.overlaps(ub) else "yes"


def tradeoff_table(stage: FinalStage) -> Table:
    """Each finalised candidate against CT L, CT S and each baseline, on final figures only."""
    t = Table(
        "final_tradeoff",
        "Final stage: trade-off against CT L and the baselines (final figures)",
        "Final against final: every model here was trained under the same final configuration. For "
        "each reference model (CT L, CT S, each baseline), every finalised candidate: its final "
        "accuracy minus the reference's, whether the difference is significant (the 95 % intervals "
        "apart), how many times fewer MACs and params it has, and whether it dominates the reference "
        "(accuracy no lower, params and MACs no higher, one strictly).",
        [
            Column("reference", "reference"),
            Column("ref_acc", "reference final accuracy (%)", "spread"),
            Column("candidate", "candidate"),
            Column("acc", "candidate final accuracy (%)", "spread"),
            Column("delta", "accuracy difference (pp)", "delta"),
            Column("significant", "significant (95 % intervals apart)"),
            Column("macs_x", "MACs: x fewer", "times"),
            Column("params_x", "params: x fewer", "times"),
            Column("dominates", "dominates"),
        ],
    )
    rows = stage.rows
    cands = rows[rows["role"] == "candidate"]
    order = {"prototype": 0, "reference": 1, "baseline": 2}
    refs = rows[rows["role"].isin(order)].copy()
    refs["_o"] = [order[r] for r in refs["role"]]
    for _, b in refs.sort_values(["_o", "macs"]).iterrows():
        bp = (float(b["final_accuracy"]), float(b["params"]), float(b["macs"]))
        head = {"reference": b["label"], "ref_acc": _spread(b)}
        if not len(cands):
            t.rows.append({**head, "candidate": "none finalised"})
        for _, c in cands.iterrows():
            cp = (float(c["final_accuracy"]), float(c["params"]), float(c["macs"]))
            t.rows.append(
                {
                    **head,
                    "candidate": c["label"],
                    "acc": _spread(c),
                    "delta": cp[0] - bp[0],
                    "significant": _significant(c, b),
                    "macs_x": bp[2] / cp[2],
                    "params_x": bp[1] / cp[1],
                    "dominates": "yes" if dominates(cp, bp) else "no",
                }
            )
    return t


def fidelity_table(stage: FinalStage) -> Table:
    """Kendall's tau-b and Spearman's rho of proxy against final accuracy, with their intervals."""
    n = len(stage.searched)
    t = Table(
        "fidelity",
        "Proxy fidelity: does the proxy's ranking predict the final one?",
        f"Rank correlation between the proxy (search) validation accuracy and the final accuracy over "
        f"the {n} finalised search trials (the candidates and the CT L prototype), with the 95 % "
        "percentile-bootstrap interval (models resampled with replacement; n/a under 3 models or "
        "where a statistic is undefined, e.g. tied accuracies). 1: the same order; 0: no relation; "
        "an interval that includes 0 says the proxy's ranking is not shown to predict the final one.",
        [
            Column("statistic", "statistic"),
            Column("value", "value", "text"),
            Column("ci", "95 % interval", "text"),
            Column("n", "models", "int"),
        ],
    )
    if n < 5:
        t.note += (
            f" With {n} models the bootstrap interval says little (a resample of so few models "
            "repeats their order or leaves the statistic undefined): finalise more candidates."
        )
    fid = stage.fidelity
    for key, name in (("kendall_tau", "Kendall tau-b"), ("spearman_rho", "Spearman rho")):
        c = fid.get(key) if fid else None
        value = c.get("value") if c else None
        ci = c.get("ci") if c else None
        t.rows.append(
            {
                "statistic": name,
                "value": f"{value:+.3f}" if value is not None else NA,
                "ci": f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else NA,
                "n": n,
            }
        )
    return t


def final_tables(stage: FinalStage) -> list[Table]:
    return [accuracy_table(stage), front_table(stage), tradeoff_table(stage), fidelity_table(stage)]


# ----------------------------------------------------------------------------- picture
@styled()
def final_plot(stage: FinalStage, axis: str, out_dir: Path, stem: str) -> list[Path]:
    """Final accuracy (with its 95 % interval as an error bar) against ``axis``, log scale; the
    final front's step line runs from its first to its last member."""
    from reports.plots import _save, declutter, log_ticks, majority_line

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    rows = stage.rows
    scale, unit_name = unit(axis, list(rows[axis]))
    xs = rows[axis].to_numpy(dtype=float)
    ys = rows["final_accuracy"].to_numpy(dtype=float)
    idx = front_2d(list(xs), list(ys))
    fx, fy = xs[idx], ys[idx]
    ax.step(fx / scale, fy, where="post", color="#1f4e8c", lw=1.4, alpha=0.8, zorder=2,
            label="final front (this plane)")  # fmt: skip
    labels: list[Any] = []
    for role, (marker, color, size) in ROLE_STYLE.items():
        g = rows[rows["role"] == role]
        if not len(g):
            continue
        gx, gy = g[axis].to_numpy(dtype=float) / scale, g["final_accuracy"].to_numpy(dtype=float)
        lo = [y - ci[0] if ci else 0.0 for y, ci in zip(gy, g["final_ci"])]
        hi = [ci[1] - y if ci else 0.0 for y, ci in zip(gy, g["final_ci"])]
        ax.errorbar(gx, gy, yerr=[lo, hi], fmt="none", ecolor=color, alpha=0.5, lw=1.0, zorder=3)
        edge = ["black" if p else "none" for p in g["pareto"]]
        ax.scatter(gx, gy, marker=marker, s=size, color=color, edgecolors=edge, linewidths=0.6, zorder=4,
                   label=ROLE_NAMES.get(role, role))  # fmt: skip
        for xi, yi, label in zip(gx, gy, g["label"]):
            labels.append(ax.annotate(str(label), (xi, yi), xytext=(5, 4), textcoords="offset points",
                                      fontsize=7, color=color, zorder=5))  # fmt: skip
    split = str(rows["final_split"].iloc[0])
    majority = stage.majority.get(split)
    if majority is not None:
        majority_line(ax, majority, split)
        ys = np.append(ys, majority)
    lows = [ci[0] for ci in rows["final_ci"] if ci] + list(ys)
    highs = [ci[1] for ci in rows["final_ci"] if ci] + list(ys)
    ax.set_ylim(max(0.0, min(lows) - 3.0), min(101.0, max(highs) + 3.0))
    ax.set_xscale("log")
    ax.set_xlim(xs.min() / scale / 1.6, xs.max() / scale * 1.6)
    log_ticks(ax)
    ax.set_xlabel(f"{AXES[axis]} ({unit_name}, log scale)")
    ax.set_ylabel("final accuracy (%), 95 % interval")
    ax.set_title(f"{stage.study}: final stage, accuracy against {AXES[axis]} (black edge: final Pareto)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    declutter(fig, labels)
    paths = _save(fig, out_dir, stem)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- report.json
def final_json(stage: FinalStage) -> dict[str, Any]:
    """The final stage in numbers: config, per model, the front, the fidelity."""
    models = []
    for _, r in stage.rows.iterrows():
        models.append(
            {
                "label": r["label"],
                "role": r["role"],
                "number": int(r["number"]),
                "source_trial": r["source_trial"],
                "arch_id": r["arch_id"],
                "params": int(r["params"]),
                "macs": int(r["macs"]),
                "proxy_accuracy": r["proxy_accuracy"],
                "final_accuracy": r["final_accuracy"],
                "final_std": r["final_std"],
                "final_ci": list(r["final_ci"]) if r["final_ci"] else None,
                "runs": int(r["final_runs"]),
                "split": r["final_split"],
                "final_netscore": r["final_netscore"],
                "pareto": bool(r["pareto"]),
            }
        )
    return {
        "study": f"{stage.study}:final",
        "config": stage.config,
        "models": models,
        "pareto": [m["label"] for m in models if m["pareto"]],
        "fidelity": stage.fidelity,
        "majority_rate": stage.majority,
    }
