"""Tables in the shape of the COVID-Net CT-2 paper's Tables 3-5, and the trade-off table.

Each table is written three ways: Markdown (``.md``), CSV (``.csv``, numbers unformatted, an
interval as two columns) and an HTML fragment (``.html``) that ``index.html`` includes. An undefined
value is "n/a" in all three (pandas reads "n/a" back as NaN).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluators.data.classes import CLASS_NAMES
from evaluators.uncertainty import Uncertain
from reports.metric_views import COVID, MetricsView
from reports.pareto import dominates, pareto_indices
from reports.points import unit

NA = "n/a"


@dataclass(frozen=True)
class Column:
    """A column: ``fmt`` is text, int, pct, mega (count/1e6), giga (count/1e9), score, times,
    delta (signed percentage points), ci (a ``(value, (low, high) | None)`` pair) or spread (a
    ``(mean, std | None, (low, high) | None)`` triple, shown "mean ± std [low, high]" when the std
    is given)."""

    key: str
    header: str
    fmt: str = "text"


@dataclass
class Table:
    name: str
    title: str
    note: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)

    # ----------------------------------------------------------------- cells
    def cell(self, row: dict[str, Any], col: Column) -> str:
        v = row.get(col.key)
        if col.fmt == "ci":
            value, ci = v if isinstance(v, tuple) else (v, None)
            text = _fmt(value, "pct")
            return f"{text} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci is not None and text != NA else text
        if col.fmt == "spread":
            mean, std, ci = v if isinstance(v, tuple) else (v, None, None)
            text = _fmt(mean, "pct")
            if text == NA:
                return text
            if std is None:  # one run: its interval (the bootstrap over its images), where stored
                return f"{text} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci is not None else text
            return f"{text} ± {std:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci is not None else "")
        return _fmt(v, col.fmt)

    def to_markdown(self) -> str:
        head = [c.header for c in self.columns]
        align = ["---" if c.fmt == "text" else "---:" for c in self.columns]
        lines = [f"**{self.title}**", "", _md_row(head), _md_row(align)]
        lines += [_md_row([self.cell(r, c) for c in self.columns]) for r in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        e = html.escape
        out = [
            f'<table class="data" id="{e(self.name)}">',
            f"<caption>{e(self.title)}</caption>",
            "<thead><tr>",
        ]
        out += [f"<th>{e(c.header)}</th>" for c in self.columns]
        out.append("</tr></thead><tbody>")
        for r in self.rows:
            cells = []
            for c in self.columns:
                text = self.cell(r, c)
                cls = "num" if c.fmt != "text" else "txt"
                cls += " na" if text == NA else ""
                cells.append(f'<td class="{cls}">{e(text)}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        if self.note:
            out.append(f'<p class="note">{e(self.note)}</p>')
        return "\n".join(out) + "\n"

    def csv_frame(self) -> pd.DataFrame:
        data: dict[str, list[Any]] = {}
        for c in self.columns:
            if c.fmt == "ci":
                vals, lows, highs = [], [], []
                for r in self.rows:
                    v = r.get(c.key)
                    value, ci = v if isinstance(v, tuple) else (v, None)
                    vals.append(_raw(value, "pct"))
                    lows.append(round(ci[0], 6) if ci else NA)
                    highs.append(round(ci[1], 6) if ci else NA)
                data[c.header] = vals
                data[f"{c.header} 95% CI low"] = lows
                data[f"{c.header} 95% CI high"] = highs
            elif c.fmt == "spread":
                triples = [
                    v if isinstance(v, tuple) else (v, None, None) for v in (r.get(c.key) for r in self.rows)
                ]
                data[c.header] = [_raw(m, "pct") for m, _, _ in triples]
                data[f"{c.header} std"] = [_raw(sd, "pct") for _, sd, _ in triples]
                data[f"{c.header} 95% CI low"] = [round(ci[0], 6) if ci else NA for _, _, ci in triples]
                data[f"{c.header} 95% CI high"] = [round(ci[1], 6) if ci else NA for _, _, ci in triples]
            else:
                data[c.header] = [_raw(r.get(c.key), c.fmt) for r in self.rows]
        return pd.DataFrame(data)

    def write(self, out_dir: Path) -> list[Path]:
        paths = [out_dir / f"{self.name}.{ext}" for ext in ("md", "csv", "html")]
        paths[0].write_text(self.to_markdown(), encoding="utf-8")
        self.csv_frame().to_csv(paths[1], index=False)
        paths[2].write_text(self.to_html(), encoding="utf-8")
        return paths


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not np.isfinite(v)) or v is pd.NA


def _fmt(v: Any, fmt: str) -> str:
    if _missing(v):
        return NA
    if fmt == "text":
        return str(v)
    v = float(v)
    if fmt == "int":
        return f"{int(v)}"
    if fmt in ("mega", "giga"):
        x = v / (1e6 if fmt == "mega" else 1e9)
        return f"{x:.3f}" if x >= 0.01 else f"{x:.2e}"
    if fmt == "times":
        return f"{v:.2f}x"
    if fmt == "delta":
        return f"{v:+.1f}"
    return f"{v:.1f}"  # pct, score


def _raw(v: Any, fmt: str) -> Any:
    if _missing(v):
        return NA
    if fmt == "text":
        return str(v)
    if fmt == "int":
        return int(v)
    if fmt == "mega":
        return round(float(v) / 1e6, 6)
    if fmt == "giga":
        return round(float(v) / 1e9, 6)
    return round(float(v), 6)


# ----------------------------------------------------------------------------- the tables
def _model_columns() -> list[Column]:
    return [Column("label", "model"), Column("role", "role")]


MAJORITY_LABEL = "majority class (constant)"
MARK = "†"  # a row or point trained differently from the study's search trials


def _differs(r: pd.Series | Mapping[str, Any]) -> str:
    v = r.get("differs") if hasattr(r, "get") else None
    return v if isinstance(v, str) else ""


def footnote(rows: pd.DataFrame) -> str:
    """The footnote naming the rows trained differently from the search trials ("" when none)."""
    if "differs" not in rows.columns:
        return ""
    marked = [(r["label"], r["differs"]) for _, r in rows.iterrows() if _differs(r)]
    if not marked:
        return ""
    listed = "; ".join(f"{label}: {d}" for label, d in marked)
    return f" {MARK} trained differently from the study's search trials, so not like with like: {listed}."


def table3(rows: pd.DataFrame, size: str, majority: Mapping[str, float | None] | None = None) -> Table:
    """Complexity, accuracy and NetScore (the paper's Table 3); with ``majority`` (rates by split),
    a last row for the constant classifier that always says the largest class.

    MACs and FLOPs are in G, or in M when every model is under 0.1 G (small complexity sizes).
    """
    _, macs_unit = unit("macs", list(rows["macs"]))
    macs_fmt = "giga" if macs_unit == "G" else "mega"
    t = Table(
        "table3",
        "Table 3: complexity, accuracy and NetScore",
        f"Params, MACs and FLOPs (= 2 x MACs) at {size}x{size}x3 with 3 classes. Trial: the number in "
        "its study (baselines: in the study's ':baselines' companion). NetScore from the "
        "validation accuracy (the search objective) and from the test accuracy; test accuracy with its "
        "95 % bootstrap interval. Where a model was trained more than once (--cv-folds, --repeats), "
        "its val accuracy is the mean ± standard deviation over the runs [95 % t interval].",
        [
            *_model_columns(),
            Column("training", "training"),
            Column("number", "trial", "int"),
            Column("arch_id", "arch_id"),
            Column("params", "params (M)", "mega"),
            Column("macs", f"MACs ({macs_unit})", macs_fmt),
            Column("flops", f"FLOPs ({macs_unit})", macs_fmt),
            Column("val_accuracy", "val accuracy (%)", "spread"),
            Column("test", "test accuracy (%)", "ci"),
            Column("netscore", "NetScore", "score"),
            Column("netscore_test", "NetScore (test)", "score"),
        ],
    )
    for _, r in rows.iterrows():
        view: MetricsView | None = r["test_view"]
        t.rows.append(
            {
                **_base(r),
                "training": r.get("training"),
                "number": r["number"],
                "arch_id": r["arch_id"],
                "params": r["params"],
                "macs": r["macs"],
                "flops": r["flops"],
                "val_accuracy": _spread(r),
                "test": (view.accuracy, view.accuracy_ci) if view else (None, None),
                "netscore": r["netscore"],
                "netscore_test": r["netscore_test"],
            }
        )
    t.note += footnote(rows)
    if majority and any(v is not None for v in majority.values()):
        t.rows.append(
            {
                "label": MAJORITY_LABEL,
                "role": "chance level",
                "val_accuracy": (majority.get("val"), None, None),
                "test": (majority.get("test"), None),
            }
        )
        t.note += (
            f" {MAJORITY_LABEL}: the accuracy of always predicting the largest class, what a model "
            "that learned nothing scores."
        )
    return t


def _base(r: pd.Series) -> dict[str, Any]:
    label = f"{r['label']} {MARK}" if _differs(r) else r["label"]
    return {"label": label, "role": r["role"]}


def _uncertainty(r: pd.Series) -> Uncertain | None:
    """The stored ``val_accuracy_uncertainty`` of a trial's row (``None`` when absent or unreadable)."""
    attrs = r.get("attrs")
    d = attrs.get("val_accuracy_uncertainty") if isinstance(attrs, Mapping) else None
    if not isinstance(d, Mapping):
        return None
    try:
        return Uncertain.from_dict(dict(d))
    except (KeyError, TypeError, ValueError):
        return None


def _spread(r: pd.Series) -> tuple[Any, float | None, tuple[float, float] | None]:
    """``(mean, std, ci)`` of a row's validation accuracy; std and ci only over several runs."""
    u = _uncertainty(r)
    if u is None or len(u.values) < 2 or u.std is None:
        return (r["val_accuracy"], None, None)
    return (r["val_accuracy"], float(u.std), u.ci)


def _interval(r: pd.Series) -> tuple[Any, tuple[float, float] | None]:
    u = _uncertainty(r)
    return (r["val_accuracy"], u.ci if u is not None else None)


def significance(candidate: pd.Series, baseline: pd.Series) -> str:
    """Whether a dominating candidate's validation accuracy is significantly above the baseline's:
    "yes" when the 95 % intervals of ``val_accuracy_uncertainty`` are apart, "no" when they overlap
    (``Uncertain.overlaps``), n/a where either trial stored no interval."""
    c, b = _uncertainty(candidate), _uncertainty(baseline)
    if c is None or b is None or c.ci is None or b.ci is None:
        return NA
    return "no: intervals overlap" if c.overlaps(b) else "yes"


def per_class_table(
    rows: pd.DataFrame,
    split: str,
    which: tuple[str, str],
    number: int,
    display: Sequence[str] = CLASS_NAMES,
) -> Table:
    """Per-class metrics (Table 4: sensitivity and PPV; Table 5: specificity and NPV); the columns
    name the classes as ``display`` does (the data's ``classes.txt``), in label order."""
    names = {"sensitivity": "sensitivity", "ppv": "PPV", "specificity": "specificity", "npv": "NPV"}
    shown = dict(zip(CLASS_NAMES, display))
    cols = _model_columns()
    for metric in which:
        for cls in CLASS_NAMES:
            fmt = "ci" if (metric == "sensitivity" and cls == COVID) else "pct"
            cols.append(Column(f"{metric}:{cls}", f"{names[metric]} {shown.get(cls, cls)} (%)", fmt))
    title = " and ".join(names[m] for m in which)
    t = Table(
        f"table{number}",
        f"Table {number}: per-class {title} on the {split} split",
        "Percent, one class against the rest; n/a where undefined (a class with no images, in all four "
        "metrics, or a class never predicted)."
        + (
            f" {shown.get(COVID, COVID)} sensitivity with its 95 % bootstrap interval."
            if "sensitivity" in which
            else ""
        ),
        cols,
    )
    for _, r in rows.iterrows():
        view: MetricsView | None = r[f"{split}_view"]
        row = _base(r)
        for metric in which:
            for cls in CLASS_NAMES:
                c = view.cls(cls) if view else None
                # a class with no images: every one-vs-rest metric is undefined, as in Table 4
                value = getattr(c, metric) if c is not None and c.support != 0 else None
                if metric == "sensitivity" and cls == COVID:
                    row[f"{metric}:{cls}"] = (value, view.covid_sensitivity_ci if view else None)
                else:
                    row[f"{metric}:{cls}"] = value
        t.rows.append(row)
    t.note += footnote(rows)
    return t


def held_out_table(rows: pd.DataFrame) -> Table | None:
    """Per held-out source, each model's validation accuracy (``--cv-by source``: trained on the
    other sources), with the mean and the worst over sources; the figure the search optimised is
    marked. ``None`` when no model of the study was measured that way."""
    per_model: list[tuple[pd.Series, dict[str, Uncertain], str]] = []
    for _, r in rows.iterrows():
        attrs = r.get("attrs")
        cv = attrs.get("cv") if isinstance(attrs, Mapping) else None
        held = cv.get("held_out") if isinstance(cv, Mapping) else None
        if not isinstance(held, Mapping) or not held:
            continue
        try:
            per_model.append(
                (r, {k: Uncertain.from_dict(dict(v)) for k, v in held.items()}, str(cv.get("score", "mean")))
            )
        except (KeyError, TypeError, ValueError):
            continue
    if not per_model:
        return None
    sources = list(dict.fromkeys(k for _, held, _ in per_model for k in held))
    scores = {score for _, _, score in per_model}
    mark = {s: " (optimised)" if scores == {s} else "" for s in ("mean", "worst")}
    t = Table(
        "held_out",
        "Held-out sources: validation accuracy on each source when trained on the others",
        "--cv-by source: each fold trains on every source but one and validates on that one's "
        "train+val images; percent, with the 95 % interval (t over seeds, or the bootstrap over "
        "images for one run). The search optimised the column marked (optimised).",
        [
            *_model_columns(),
            Column("number", "trial", "int"),
            *[Column(f"src:{s}", f"held out {s} (%)", "ci") for s in sources],
            Column("mean", f"mean (%){mark['mean']}", "pct"),
            Column("worst", f"worst (%){mark['worst']}", "pct"),
        ],
    )
    for r, held, _ in per_model:
        means = [u.mean for u in held.values()]
        row = {**_base(r), "number": r["number"], "mean": float(np.mean(means)), "worst": min(means)}
        for s in sources:
            u = held.get(s)
            row[f"src:{s}"] = (u.mean, u.ci) if u is not None else (None, None)
        t.rows.append(row)
    return t


def tradeoff_table(baselines: pd.DataFrame, candidates: pd.DataFrame) -> Table:
    """For each baseline, the found candidates that dominate it (the non-dominated ones among them)."""
    t = Table(
        "tradeoff",
        "Trade-off: found candidates that dominate each baseline",
        "A candidate dominates a baseline when its validation accuracy is no lower and its params and "
        "MACs no higher (one strictly). Listed: the dominating candidates not dominated by another one; "
        "'of all' counts every dominating candidate. x fewer = baseline / candidate. Accuracies with "
        "their stored 95 % intervals (t over the runs of --cv-folds/--repeats, or the bootstrap over "
        "the validation images of one run). significant: 'no' marks a dominance that is not "
        "significant, the two intervals overlapping; n/a: no stored interval.",
        [
            Column("baseline", "baseline"),
            Column("baseline_acc", "baseline val accuracy (%)", "ci"),
            Column("candidate", "dominated by"),
            Column("arch_id", "arch_id"),
            Column("acc", "val accuracy (%)", "ci"),
            Column("significant", "significant (95 % CIs apart)"),
            Column("delta", "accuracy difference (pp)", "delta"),
            Column("macs_x", "MACs: x fewer", "times"),
            Column("params_x", "params: x fewer", "times"),
            Column("count", "of all", "int"),
        ],
    )
    unlike = candidates[[bool(_differs(c)) for _, c in candidates.iterrows()]]
    candidates = candidates[[not _differs(c) for _, c in candidates.iterrows()]]
    pts = [(float(c["val_accuracy"]), float(c["params"]), float(c["macs"])) for _, c in candidates.iterrows()]
    for _, b in baselines.sort_values("macs").iterrows():
        if _differs(b):  # like with like only: a baseline trained otherwise is not compared
            t.rows.append({"baseline": f"{b['label']} {MARK}", "baseline_acc": _interval(b),
                           "candidate": f"not compared: trained differently {MARK}"})  # fmt: skip
            continue
        bp = (float(b["val_accuracy"]), float(b["params"]), float(b["macs"]))
        doms = [i for i, p in enumerate(pts) if dominates(p, bp)]
        head = {"baseline": b["label"], "baseline_acc": _interval(b), "count": len(doms)}
        if not doms:
            t.rows.append({**head, "candidate": "none"})
            continue
        best = [doms[i] for i in pareto_indices([pts[i] for i in doms])]
        for i in sorted(best, key=lambda i: pts[i][2]):
            c = candidates.iloc[i]
            t.rows.append(
                {
                    **head,
                    "candidate": c["label"],
                    "arch_id": c["arch_id"],
                    "acc": _interval(c),
                    "significant": significance(c, b),
                    "delta": pts[i][0] - bp[0],
                    "macs_x": bp[2] / pts[i][2],
                    "params_x": bp[1] / pts[i][1],
                }
            )
    t.note += footnote(pd.concat([baselines, unlike]))
    if len(unlike):
        t.note += f" Candidates marked {MARK} are left out of the comparison."
    if not len(baselines):
        t.rows.append({"baseline": "none trained", "candidate": "run `search baselines` to compare"})
        t.note += " No baselines were trained: run `search baselines` to compare against them."
    weak = sum(1 for r in t.rows if str(r.get("significant", "")).startswith("no"))
    if weak:
        t.note += (
            f" Not significant: {weak} of the {sum(1 for r in t.rows if 'acc' in r)} listed dominances "
            "(their accuracy intervals overlap the baseline's)."
        )
    return t


def summary_table(summary: dict[str, Any]) -> Table:
    """The search in numbers: trial counts, compute time, hypervolume, best NetScore."""
    t = Table("summary", "Search summary", "", [Column("what", "what"), Column("value", "value")])
    for k, v in summary.items():
        t.rows.append({"what": k, "value": v})
    return t
