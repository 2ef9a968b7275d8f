"""Static pictures (PNG and SVG, matplotlib): the Pareto fronts and the search's progress."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.collect import Collection
from reports.figures import DPI, pyplot, styled
from reports.points import AXES, Group, front_line, groups, iso_accuracy, iso_levels, unit
from reports.progress import Progress

FORMATS = ("png", "svg")


def _save(fig, out_dir: Path, stem: str) -> list[Path]:  # type: ignore[no-untyped-def]
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


@styled()
def pareto_plot(
    collection: Collection, pareto_rows: pd.DataFrame, axis: str, out_dir: Path, stem: str
) -> list[Path]:
    """Validation accuracy against ``axis`` (``"macs"`` or ``"params"``), log scale.

    Every trial is a point (groups from ``reports.points``); over-budget candidates, never trained,
    sit on the bottom edge; the 2-D non-dominated front of the searched candidates is a step line;
    baselines, CT L and pruned models are labelled; on the MACs plot, NetScore iso-lines at the
    median params of the measured models.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    all_groups = groups(collection, pareto_rows)
    measured = collection.proxy_measured
    accs = measured["val_accuracy"].to_numpy(dtype=float)
    finite = [g.y[np.isfinite(g.y)] for g in all_groups]
    ys = np.concatenate([accs, *finite]) if len(accs) or finite else np.array([50.0])
    majority = collection.majority_rate("val")
    if majority is not None:
        ys = np.append(ys, majority)
    y_lim = (max(0.0, float(np.nanmin(ys)) - 5.0), min(101.0, float(np.nanmax(ys)) + 3.0))
    xs_all = np.concatenate([g.rows[axis].to_numpy(dtype=float) for g in all_groups])
    scale, unit_name = unit(axis, list(xs_all))
    if len(collection.candidates):
        _front(ax, collection.candidates, axis, scale)
    if axis == "macs" and len(measured):
        x_lim = (float(xs_all.min()) / 1.6, float(xs_all.max()) * 1.6)
        _iso_lines(ax, measured, y_lim, x_lim, scale)
    if majority is not None:
        majority_line(ax, majority, "val")
    labels: list[Any] = []
    for g in all_groups:
        labels += _scatter(ax, g, axis, scale)
    _axes(ax, collection, axis, (xs_all.min() / scale / 1.6, xs_all.max() / scale * 1.6), y_lim, unit_name)
    declutter(fig, labels)
    paths = _save(fig, out_dir, stem)
    plt.close(fig)
    return paths


def majority_line(ax: Any, rate: float, split: str) -> None:
    """The chance level: a dashed line at the majority-class rate of ``split``."""
    ax.axhline(rate, ls="--", color="#b71c1c", lw=1.0, alpha=0.7, zorder=1,
               label=f"majority class ({split}): {rate:.1f} %")  # fmt: skip


def _front(ax: Any, candidates: pd.DataFrame, axis: str, scale: float) -> None:
    """The 2-D non-dominated front of the searched candidates as a step line, from its first to its
    last member (never beyond: past the last member nothing was found)."""
    fx, fy = front_line(candidates, axis)
    ax.step(
        fx / scale,
        fy,
        where="post",
        color="#1f4e8c",
        lw=1.4,
        alpha=0.8,
        zorder=2,
        label="front of the searched candidates (this plane)",
    )


# where a point's label may go, in points from the point: right-above first, then the other sides,
# then further away
OFFSETS = [(dx, dy) for step in range(6) for dx, dy in ((5, 4 + 9 * step), (5, -11 - 9 * step),
           (-5, 4 + 9 * step), (-5, -11 - 9 * step))]  # fmt: skip


def _marker_boxes(fig: Any) -> list[Any]:
    """The drawn boxes of every scatter marker of ``fig`` (display coordinates)."""
    from matplotlib.transforms import Bbox

    boxes = []
    for ax in fig.axes:
        for coll in ax.collections:
            offsets = coll.get_offsets()
            sizes = coll.get_sizes() if hasattr(coll, "get_sizes") else []
            if not len(offsets) or not len(sizes):
                continue
            points = coll.get_offset_transform().transform(offsets)
            for k, (x, y) in enumerate(points):
                half = (float(sizes[k % len(sizes)]) ** 0.5) / 2 * fig.dpi / 72
                if np.isfinite(x) and np.isfinite(y):
                    boxes.append(Bbox([[x - half, y - half], [x + half, y + half]]))
    return boxes


def step_boxes(fig: Any) -> list[Any]:
    """Thin boxes along every step line of ``fig`` (a front), segment by segment, in display
    coordinates: labels keep off the line too."""
    from matplotlib.transforms import Bbox

    boxes = []
    pad = 1.5 * fig.dpi / 72
    for ax in fig.axes:
        for line in ax.get_lines():
            if not str(line.get_drawstyle()).startswith("steps"):
                continue
            xy = line.get_transform().transform(line.get_xydata())
            for (x0, y0), (x1, y1) in itertools.pairwise(xy):  # "post": across, then up
                for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1))):
                    lo = (min(a[0], b[0]) - pad, min(a[1], b[1]) - pad)
                    hi = (max(a[0], b[0]) + pad, max(a[1], b[1]) + pad)
                    boxes.append(Bbox([lo, hi]))
    return boxes


def declutter(fig: Any, labels: Sequence[Any]) -> None:
    """Move each label (an annotation) to the first offset where its drawn box meets no label
    placed before it and no marker; left where it was when none is free."""
    renderer = fig.canvas.get_renderer()
    markers = _marker_boxes(fig) + step_boxes(fig)
    placed: list[Any] = []
    for t in labels:
        for dx, dy in OFFSETS:
            t.set_position((dx, dy))
            t.set_horizontalalignment("left" if dx > 0 else "right")
            box = t.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed + markers):
                break
        else:
            t.set_position(OFFSETS[0])
            t.set_horizontalalignment("left")
            box = t.get_window_extent(renderer)
        placed.append(box)


def _scatter(ax: Any, g: Group, axis: str, scale: float) -> list[Any]:
    """One group's points (never-trained ones on the bottom edge) and, if labelled, their names
    (returned, to be placed apart by ``declutter``)."""
    from matplotlib.transforms import blended_transform_factory

    bottom = blended_transform_factory(ax.transData, ax.transAxes)
    x = g.rows[axis].to_numpy(dtype=float) / scale
    drawn_on_edge = ~np.isfinite(g.y)
    kw: dict[str, Any] = {"marker": g.marker, "s": g.size, "zorder": 4, "label": g.name}
    if g.marker == "x":
        kw.update(color=g.color, linewidths=1.0)
    elif g.filled:
        kw.update(color=g.color, edgecolors="black" if g.key == "pareto" else "none", linewidths=0.6)
    else:
        kw.update(facecolors="none", edgecolors=g.color, linewidths=1.0)
    if drawn_on_edge.all():
        ax.scatter(x, np.full(len(x), 0.015), transform=bottom, clip_on=False, **kw)
    else:
        ax.scatter(x[~drawn_on_edge], g.y[~drawn_on_edge], **kw)
        if drawn_on_edge.any():
            kw.pop("label")
            ax.scatter(
                x[drawn_on_edge],
                np.full(int(drawn_on_edge.sum()), 0.015),
                transform=bottom,
                clip_on=False,
                **kw,
            )
    texts = []
    if g.labelled:
        for xi, yi, label in zip(x, g.y, g.rows["label"]):
            if np.isfinite(yi):
                texts.append(
                    ax.annotate(
                        str(label),
                        (xi, yi),
                        xytext=(5, 4),
                        textcoords="offset points",
                        fontsize=7,
                        color=g.color,
                        zorder=5,
                    )
                )
    return texts


def _axes(
    ax: Any,
    collection: Collection,
    axis: str,
    x_lim: tuple[float, float],
    y_lim: tuple[float, float],
    unit_name: str,
) -> None:
    """Log x axis with 1-2-5 tick labels, limits, labels, title, grid and the legend beside."""

    size = _complexity_size(collection)
    ax.set_xscale("log")
    ax.set_xlim(*x_lim)
    log_ticks(ax)
    ax.set_ylim(*y_lim)
    where = f"at {size}x{size}x3, 3 classes" if axis == "macs" else "3-class head"
    ax.set_xlabel(f"{AXES[axis]} ({unit_name}) {where} (log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{collection.study}: validation accuracy against {AXES[axis]}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def log_ticks(ax: Any) -> None:
    """1-2-5 tick labels on a log x axis ("0.5", "1", "2"), not "5x10^-1"."""
    from matplotlib.ticker import FuncFormatter

    ticks = FuncFormatter(
        lambda v, _: f"{v:g}" if round(v / 10 ** np.floor(np.log10(v)), 6) in (1, 2, 5) else ""
    )
    ax.xaxis.set_major_formatter(ticks)
    ax.xaxis.set_minor_formatter(ticks)


def _iso_lines(  # type: ignore[no-untyped-def]
    ax, measured: pd.DataFrame, y_lim: tuple[float, float], x_lim: tuple[float, float], scale: float
) -> None:
    """Dotted lines of constant NetScore, each labelled where it leaves the plot."""
    y_lo, y_hi = y_lim
    params = float(np.median(measured["params"].to_numpy(dtype=float)))
    grid = np.geomspace(x_lim[0], x_lim[1], 200)
    scores = measured["netscore"].to_numpy(dtype=float)
    first = True
    for level in iso_levels(scores):
        acc = iso_accuracy(level, params, grid)
        inside = (acc >= y_lo) & (acc <= y_hi)
        if not inside.any():
            continue
        label = f"NetScore iso-lines (at median params {params / 1e6:.3f} M)" if first else None
        ax.plot(grid[inside] / scale, acc[inside], ls=":", color="#757575", lw=0.9, zorder=1, label=label)
        k = np.flatnonzero(inside)[-1]
        ax.annotate(
            f"NS {level:g}",
            (grid[k] / scale, acc[k]),
            fontsize=6.5,
            color="#616161",
            xytext=(-34, -10) if k == len(grid) - 1 else (4, -10),
            textcoords="offset points",
        )
        first = False


def _complexity_size(collection: Collection) -> str:
    sizes = collection.frame["complexity_size"].dropna().unique()
    return str(int(sizes[0])) if len(sizes) == 1 else "/".join(str(int(s)) for s in sorted(sizes)) or "?"


@styled()
def progress_plot(prog: Progress, out_dir: Path, stem: str = "progress") -> list[Path]:
    """Hypervolume and best NetScore against trial number and against wall time (2 x 2)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.0), sharey="row")
    for col, (frame, x, xlabel) in enumerate(
        [
            (prog.by_number, "number", "trial number"),
            (prog.by_time, "elapsed_s", "wall time since the first trial (min)"),
        ]
    ):
        xs = frame[x].to_numpy(dtype=float) / (60.0 if x == "elapsed_s" else 1.0)
        for row, (key, ylabel) in enumerate(
            [("hypervolume", "hypervolume"), ("best_netscore", "best NetScore")]
        ):
            ax = axes[row][col]
            ys = frame[key].to_numpy(dtype=float)
            if len(xs):
                ax.step(xs, ys, where="post", color="#1f4e8c", lw=1.4)
                ax.plot(xs, ys, "o", ms=3, color="#1f4e8c")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.25)
    fig.suptitle("search progress (finished trials)", fontsize=10)
    fig.text(0.5, -0.02, prog.caption(), ha="center", fontsize=7, wrap=True)
    fig.tight_layout()
    paths = _save(fig, out_dir, stem)
    plt.close(fig)
    return paths


__all__ = ["Group", "pareto_plot", "progress_plot"]
