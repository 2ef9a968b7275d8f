"""Building a report folder from a study storage: collect, compute fronts, draw, tabulate, link.

``build_report`` is what ``search report`` calls; it only reads the storage (a report never
trains) and writes::

    index.html            everything on one page (opens from disk, no server, no internet)
    interactive.html      the hover plots on their own
    pareto_macs.{png,svg} pareto_params.{png,svg} progress.{png,svg}
    table3.* table4.* table5.* tradeoff.*   (.md, .csv, .html each)
    final_pareto_macs.{png,svg} final_pareto_params.{png,svg}   (when ``<study>:final`` exists)
    final.* final_front.* final_tradeoff.* fidelity.*           (the final stage's tables)
    report.md             the tables in one Markdown file
    trials.csv            one row per trial, every stored attribute flattened
    progress.csv          hypervolume and best NetScore per finished trial
    report.json           the summary in numbers, the Pareto trial numbers, the reference point
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.storages import BaseStorage

from reports import html as html_page
from reports import interactive
from reports.collect import KIND_BASELINE, KIND_PRUNED, Collection, collect, trials_table
from reports.explain_grid import ExplainEntry, explain_table
from reports.final import FinalStage, final_json, final_plot, final_stage, final_tables
from reports.pareto import pareto_indices
from reports.plots import pareto_plot, progress_plot
from reports.progress import Progress, progress
from reports.setup import compute_seconds, setup, setup_table
from reports.tables import (
    Table,
    footnote,
    held_out_table,
    per_class_table,
    summary_table,
    table3,
    tradeoff_table,
)
from space.errors import UserInputError

SPLITS = ("test", "val")


class NoCompletedTrials(UserInputError, RuntimeError):
    """The study has no trained, feasible candidate yet: there is nothing to report."""


@dataclass
class Report:
    """What ``build_report`` wrote and found."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    pareto_numbers: list[int] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    final: FinalStage | None = None
    final_tables: list[Table] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)

    @property
    def index(self) -> Path:
        return self.out_dir / "index.html"


def pareto_rows(collection: Collection) -> pd.DataFrame:
    """The search's Pareto members (validation accuracy up, params and MACs down), by MACs."""
    cands = collection.candidates
    pts = [(float(r.val_accuracy), float(r.params), float(r.macs)) for r in cands.itertuples()]
    return cands.iloc[pareto_indices(pts)].sort_values(["macs", "params"])


def table_rows(collection: Collection, front: pd.DataFrame) -> pd.DataFrame:
    """The rows of Tables 3-5: Pareto members, the best-NetScore candidate, CT L, baselines, pruned
    models; each with its ``role``."""
    cands = collection.candidates
    best = cands.loc[cands["netscore"].astype(float).idxmax()] if len(cands) else None
    roles: dict[Any, list[str]] = {}
    for idx in front.index:
        roles.setdefault(idx, []).append("Pareto")
    if best is not None:
        roles.setdefault(best.name, []).append("best NetScore")
    f = collection.frame
    for idx in f.index[f["is_ct_l"] & f["measured"]]:
        roles.setdefault(idx, []).append("CT L (prototype)")
    for kind, role in ((KIND_PRUNED, "pruned"), (KIND_BASELINE, "baseline")):
        rows = f[(f["kind"] == kind) & f["measured"]].sort_values("macs")
        for idx in rows.index:
            roles.setdefault(idx, []).append(role)
    out = f.loc[list(roles)].copy()
    out["role"] = [", ".join(roles[i]) for i in out.index]
    return out


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def summarise(collection: Collection, front: pd.DataFrame, prog: Progress) -> dict[str, Any]:
    search = collection.search
    counts = collection.counts()
    compute = compute_seconds(search)
    elapsed = search["elapsed_s"].dropna()
    cands = collection.candidates
    best = cands.loc[cands["netscore"].astype(float).idxmax()]
    return {
        "study": collection.study,
        "objective": collection.study_attrs.get("objective", "n/a"),
        "trials": len(search),
        **{f"trials {k.replace('_', ' ')}": v for k, v in counts.items()},
        "compute time (sum over trials)": _duration(compute),
        "compute seconds": round(compute, 1),
        "wall time (first start to last finish)": _duration(
            float(elapsed.max()) if len(elapsed) else math.nan
        ),
        "Pareto members": len(front),
        "best NetScore": f"{best['netscore']:.2f} (trial {best['number']}, {best['arch_id']})",
        "hypervolume": round(prog.final_hypervolume, 6),
        "baselines": int(((collection.frame["kind"] == KIND_BASELINE) & collection.frame["measured"]).sum()),
    }


def build_report(
    storage: str | BaseStorage,
    study: str,
    out_dir: str | Path,
    *,
    split: str = "test",
    source: str = "",
    explain: Callable[[pd.DataFrame, Path], Sequence[ExplainEntry]] | None = None,
) -> Report:
    """Write the report of ``study`` into ``out_dir``: collect, compute, then write.

    Args:
        storage: an Optuna storage or its URL.
        study: the search study's name (companion studies ``study:*`` are read too).
        out_dir: the report folder (created).
        split: whose per-class metrics Tables 4-5 show: ``"test"`` or ``"val"``.
        source: where the study came from, for the page (e.g. the redacted storage URL).
        explain: the explainability audit (``search.audit.report_explainer``): called with the
            table rows and the report folder, it draws grids there and returns one entry per
            audited model (best NetScore, CT L), shown as one more table. ``None``: no audit.

    Raises:
        reports.collect.StudyNotFound: no such study.
        NoCompletedTrials: nothing trained yet.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    collection = _collect_trained(storage, study)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    front = pareto_rows(collection)
    prog = progress(collection)
    report.pareto_numbers = [int(n) for n in front["number"]]
    report.summary = summarise(collection, front, prog)
    report.setup = setup(collection, source)
    report.files += pareto_plot(collection, front, "macs", out, "pareto_macs")
    report.files += pareto_plot(collection, front, "params", out, "pareto_params")
    report.files += progress_plot(prog, out)
    report.tables = _tables(collection, front, split, out, explain, report)
    report.final = final_stage(collection)
    if report.final is not None:
        report.final_tables = final_tables(report.final)
        for axis in ("macs", "params"):
            report.files += final_plot(report.final, axis, out, f"final_pareto_{axis}")
        report.summary.update(_final_summary(report.final))
    for t in [*report.tables, *report.final_tables]:
        report.files += t.write(out)
    report.files += _write_data(collection, report, prog, split, source)
    report.files += _write_pages(collection, report, front, prog, study)
    return report


def _final_summary(stage: FinalStage) -> dict[str, Any]:
    """The summary's lines on the final stage."""
    fid = stage.fidelity or {}
    tau = (fid.get("kendall_tau") or {}).get("value")
    ci = (fid.get("kendall_tau") or {}).get("ci")
    tau_text = "n/a (under 2 finalised search trials)" if tau is None else f"{tau:+.3f}"
    if tau is not None and ci:
        tau_text += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    return {
        "final stage": f"{len(stage.rows)} models ({stage.describe()})",
        "final Pareto members": ", ".join(str(v) for v in stage.front["label"]),
        "proxy fidelity (Kendall tau, proxy vs final)": f"{tau_text} over {len(stage.searched)} models",
    }


def _collect_trained(storage: str | BaseStorage, study: str) -> Collection:
    collection = collect(storage, study)
    if not len(collection.candidates):
        counts = {k: v for k, v in collection.counts().items() if v}
        seen = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no trials"
        raise NoCompletedTrials(f"study {study!r} has no completed trial yet ({seen}); nothing to report")
    return collection


def _tables(
    collection: Collection,
    front: pd.DataFrame,
    split: str,
    out: Path,
    explain: Callable[[pd.DataFrame, Path], Sequence[ExplainEntry]] | None,
    report: Report,
) -> list[Table]:
    """Table 3 (complexity and accuracy), Tables 4-5 (per class), the trade-off table, and the
    audit's table when ``explain`` is given (its grids are added to ``report.files``)."""
    rows = table_rows(collection, front)
    sizes = rows["complexity_size"].dropna().unique()
    size = "/".join(str(int(s)) for s in sorted(sizes)) or "?"
    candidates = collection.proxy_measured[collection.proxy_measured["kind"] != KIND_BASELINE]
    baselines = collection.frame[collection.frame["measured"] & (collection.frame["kind"] == KIND_BASELINE)]
    tables: list[Table] = [
        table3(rows, size, {k: collection.majority_rate(k) for k in ("val", "test")}),
        per_class_table(rows, split, ("sensitivity", "ppv"), 4, collection.class_names),
        per_class_table(rows, split, ("specificity", "npv"), 5, collection.class_names),
        tradeoff_table(baselines, candidates),
    ]
    held_out = held_out_table(rows)
    if held_out is not None:
        tables.append(held_out)
    if explain is not None:
        entries = explain(rows, out)
        if entries:
            tables.append(explain_table(entries))
            report.files += [out / e.grid for e in entries]
    return tables


def _write_data(
    collection: Collection, report: Report, prog: Progress, split: str, source: str
) -> list[Path]:
    """``report.md``, ``trials.csv``, ``progress.csv`` and ``report.json``."""
    out = report.out_dir
    md = out / "report.md"
    tables = [*report.tables, *report.final_tables]
    md.write_text("\n".join(t.to_markdown() for t in tables), encoding="utf-8")
    trials_csv = out / "trials.csv"
    trials_table(collection).to_csv(trials_csv, index=False)
    progress_csv = out / "progress.csv"
    prog.by_number.to_csv(progress_csv, index=False)
    meta = {
        "setup": report.setup,
        "summary": report.summary,
        "pareto_trials": report.pareto_numbers,
        "hypervolume": {
            "value": prog.final_hypervolume,
            "params_ref": prog.normaliser.params_ref,
            "macs_ref": prog.normaliser.macs_ref,
            "reference_point": [1.0, 2.0, 2.0],
            "definition": prog.normaliser.describe(),
        },
        "final": final_json(report.final) if report.final is not None else None,
        "split": split,
        "source": source,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    report_json = out / "report.json"
    report_json.write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    return [md, trials_csv, progress_csv, report_json]


def _write_pages(
    collection: Collection, report: Report, front: pd.DataFrame, prog: Progress, study: str
) -> list[Path]:
    """``interactive.html`` (the hover plot alone) and ``index.html`` (everything, offline)."""
    out = report.out_dir
    inter = out / "interactive.html"
    inter.write_text(interactive.page(collection, front), encoding="utf-8")
    running = report.summary.get("trials running", 0)
    banner = (
        f"Study in progress: {running} trial(s) running; this report shows the finished ones."
        if running
        else None
    )
    index = out / "index.html"
    index.write_text(
        html_page.index_page(
            title=f"Search report: {study}",
            summary=summary_table({k: v for k, v in report.summary.items() if k != "compute seconds"}),
            setup=setup_table(report.setup),
            plot_note=footnote(collection.proxy_measured),
            banner=banner,
            tables=report.tables,
            plot_fragment=interactive.plot_fragment(collection, front),
            plot_style=interactive.STYLE,
            plot_script=interactive.SCRIPT,
            hypervolume_note=prog.caption(),
            final_tables=report.final_tables,
            downloads=["trials.csv", "progress.csv", "report.md", "report.json", "interactive.html"],
        ),
        encoding="utf-8",
    )
    return [inter, index]
