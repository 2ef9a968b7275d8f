"""The interactive Pareto plot: hand-written SVG with a few lines of inline JavaScript.

No plotting library: the page must open from disk with no server and no internet, and plotly
would add a 4 MB script to every report for hover boxes. Every point carries its facts (trial,
arch_id, params, MACs, accuracy, NetScore) in a native SVG ``<title>`` (a tooltip even with
scripts off) and in ``data-tip``, which the script shows in a box that follows the mouse; clicking
a legend entry hides or shows its group.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.collect import Collection
from reports.points import AXES, Group, front_line, groups, iso_accuracy, iso_levels, unit

W, H = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 62, 18, 16, 48

STYLE = """
.iplot { font: 12px sans-serif; position: relative; }
.iplot svg { background: #fff; border: 1px solid #ddd; max-width: 100%; height: auto; }
.iplot .pt { cursor: pointer; }
.iplot .pt:hover { stroke: #000; stroke-width: 1.5; }
.iplot .hidden { display: none; }
.iplot .legend span { display: inline-block; margin: 2px 10px 2px 0; cursor: pointer; user-select: none; }
.iplot .legend span.off { opacity: 0.35; text-decoration: line-through; }
.iplot .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
#iplot-tip { position: fixed; pointer-events: none; background: rgba(30,30,30,.92); color: #fff;
  padding: 6px 8px; border-radius: 4px; font: 12px monospace; white-space: pre; display: none; z-index: 9; }
"""

SCRIPT = """
(function () {
  var tip = document.getElementById('iplot-tip');
  document.querySelectorAll('.iplot .pt').forEach(function (el) {
    el.addEventListener('mousemove', function (ev) {
      tip.textContent = el.getAttribute('data-tip');
      tip.style.display = 'block';
      tip.style.left = (ev.clientX + 14) + 'px';
      tip.style.top = (ev.clientY + 10) + 'px';
    });
    el.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
  document.querySelectorAll('.iplot .legend span').forEach(function (item) {
    item.addEventListener('click', function () {
      var plot = item.closest('.iplot');
      var off = item.classList.toggle('off');
      plot.querySelectorAll('.grp-' + item.getAttribute('data-group')).forEach(function (g) {
        g.classList.toggle('hidden', off);
      });
    });
  });
})();
"""


@dataclass(frozen=True)
class _Scale:
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    def x(self, v: float) -> float:
        t = (math.log10(v) - math.log10(self.x_lo)) / (math.log10(self.x_hi) - math.log10(self.x_lo))
        return LEFT + t * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        t = (v - self.y_lo) / (self.y_hi - self.y_lo)
        return H - BOTTOM - t * (H - TOP - BOTTOM)


def _p(x: float, y: float) -> str:
    return f"{x:.1f},{y:.1f}"


def _marker(shape: str, x: float, y: float, size: float) -> tuple[str, str]:
    """The opening of an SVG element drawing ``shape`` at (x, y), and its tag name."""
    r = max(3.0, math.sqrt(size) / 1.6)
    if shape == "o":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}"', "circle"
    if shape == "s":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}"', "rect"
    if shape == "*":
        pts = []
        for k in range(10):
            rad = r * (1.0 if k % 2 == 0 else 0.45)
            a = math.pi / 2 + k * math.pi / 5
            pts.append(_p(x + rad * math.cos(a), y - rad * math.sin(a)))
        return f'<polygon points="{" ".join(pts)}"', "polygon"
    if shape == "^":
        d = f"M{_p(x, y - r * 1.2)} L{_p(x + r, y + r * 0.8)} L{_p(x - r, y + r * 0.8)} Z"
    elif shape == "D":
        d = f"M{_p(x, y - r)} L{_p(x + r, y)} L{_p(x, y + r)} L{_p(x - r, y)} Z"
    else:  # "x": a cross, drawn by its stroke
        d = f"M{_p(x - r, y - r)} L{_p(x + r, y + r)} M{_p(x - r, y + r)} L{_p(x + r, y - r)}"
    return f'<path d="{d}"', "path"


def _tip(r: pd.Series) -> str:
    def num(v: object, fmt: str) -> str:
        return format(float(v), fmt) if isinstance(v, (int, float)) and np.isfinite(v) else "n/a"

    lines = [
        f"{r['label']}",
        f"trial {r['number']} ({r['kind']}, {r['status']})",
        f"arch_id {r['arch_id'] or 'n/a'}",
        f"params {num(r['params'] / 1e6 if r['params'] else None, '.3f')} M",
        f"MACs {num(r['macs'] / 1e9 if r['macs'] else None, '.3f')} G",
        f"val accuracy {num(r['val_accuracy'], '.1f')} %",
        f"test accuracy {num(r['test_accuracy'], '.1f')} %",
        f"NetScore {num(r['netscore'], '.1f')}",
        f"trained: {r.get('training') or 'not recorded'}",
    ]
    if isinstance(r.get("differs"), str) and r["differs"]:
        lines.append(f"† trained differently: {r['differs']}")
    return "\n".join(lines)


def _ticks_log(lo: float, hi: float) -> list[float]:
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo <= v <= hi:
                out.append(v)
    return out


def _svg(collection: Collection, all_groups: list[Group], axis: str) -> str:
    raw = np.concatenate([g.rows[axis].to_numpy(dtype=float) for g in all_groups])
    div, unit_name = unit(axis, list(raw))
    xs = raw / div
    ys = np.concatenate([g.y[np.isfinite(g.y)] for g in all_groups] or [np.array([50.0])])
    ys = ys if len(ys) else np.array([50.0])
    majority = collection.majority_rate("val")
    if majority is not None:
        ys = np.append(ys, majority)
    sc = _Scale(xs.min() / 1.6, xs.max() * 1.6, max(0.0, ys.min() - 5), min(101.0, ys.max() + 3))
    out = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="accuracy, {axis}">']
    out += _frame(sc, f"{AXES[axis]} ({unit_name}, log scale)")
    if majority is not None:
        y = sc.y(majority)
        out.append(
            f'<line class="grp-majority" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" '
            f'stroke="#b71c1c" stroke-dasharray="6,4" data-rate="{majority:.4f}">'
            f"<title>majority class (val): {majority:.1f} %</title></line>"
        )
    measured = collection.proxy_measured
    if axis == "macs" and len(measured):
        out += _iso_lines(sc, measured, div)
    if len(collection.candidates):
        fx, fy = front_line(collection.candidates, axis)
        path = [f"M{_p(sc.x(fx[0] / div), sc.y(fy[0]))}"]
        for i in range(1, len(fx)):
            path.append(f"L{_p(sc.x(fx[i] / div), sc.y(fy[i - 1]))} L{_p(sc.x(fx[i] / div), sc.y(fy[i]))}")
        out.append(
            f'<path class="grp-front" d="{" ".join(path)}" fill="none" stroke="#1f4e8c" stroke-width="1.5"/>'
        )
    # label boxes drawn so far, and what labels keep off: the front's segments and every point
    placed: list[tuple[float, float, float, float]] = []
    if len(collection.candidates):
        for i in range(1, len(fx)):
            x0, x1, y0, y1 = sc.x(fx[i - 1] / div), sc.x(fx[i] / div), sc.y(fy[i - 1]), sc.y(fy[i])
            placed += [(x0, y0 - 1.5, x1 - x0, 3.0), (x1 - 1.5, min(y0, y1), 3.0, abs(y1 - y0))]
    for g in all_groups:
        r = max(3.0, math.sqrt(g.size) / 1.6)
        for (_, row), yv in zip(g.rows.iterrows(), g.y):
            if np.isfinite(yv):
                placed.append((sc.x(float(row[axis]) / div) - r, sc.y(float(yv)) - r, 2 * r, 2 * r))
    for g in all_groups:
        out += _points(g, sc, axis, div, placed)
    out.append("</svg>")
    return "\n".join(out)


def _frame(sc: _Scale, xlabel: str) -> list[str]:
    """Grid, ticks, the plot's border and the axis titles."""
    out = []
    for v in _ticks_log(sc.x_lo, sc.x_hi):
        x = sc.x(v)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="#eee"/>')
        out.append(
            f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" font-size="11">{v:g}</text>'
        )
    step = 5 if sc.y_hi - sc.y_lo <= 40 else 10
    for v in np.arange(math.ceil(sc.y_lo / step) * step, sc.y_hi + 1e-9, step):
        y = sc.y(float(v))
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{v:g}</text>')
    width, height = W - LEFT - RIGHT, H - TOP - BOTTOM
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{width}" height="{height}" fill="none" stroke="#999"/>')
    mid_x, mid_y = (LEFT + W - RIGHT) / 2, (TOP + H - BOTTOM) / 2
    out.append(f'<text x="{mid_x}" y="{H - 10}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(
        f'<text x="14" y="{mid_y}" text-anchor="middle" transform="rotate(-90 14 {mid_y})">'
        "validation accuracy (%)</text>"
    )
    return out


def _iso_lines(sc: _Scale, measured: pd.DataFrame, div: float) -> list[str]:
    """NetScore iso-lines at the median params of the measured models."""
    out = []
    params = float(np.median(measured["params"].to_numpy(dtype=float)))
    grid = np.geomspace(sc.x_lo * div, sc.x_hi * div, 120)
    for level in iso_levels(measured["netscore"].to_numpy(dtype=float)):
        acc = iso_accuracy(level, params, grid)
        pts = [_p(sc.x(g / div), sc.y(a)) for g, a in zip(grid, acc) if sc.y_lo <= a <= sc.y_hi]
        if len(pts) > 1:
            title = f"NetScore {level:g} at params {params / 1e6:.3f} M"
            out.append(
                f'<polyline class="grp-iso" points="{" ".join(pts)}" fill="none" stroke="#9e9e9e" '
                f'stroke-dasharray="2,3"><title>{title}</title></polyline>'
            )
    return out


LABEL_PX = 10  # font size of a point's label
CHAR_W = 0.62 * LABEL_PX  # a generous average glyph width of the sans-serif face at that size


def _box(x: float, y: float, text: str, anchor: str) -> tuple[float, float, float, float]:
    w = CHAR_W * len(text)
    left = x - w if anchor == "end" else x
    return (left, y - LABEL_PX, w, LABEL_PX * 1.3)


def _apart(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]


def _place(
    x: float, y: float, text: str, placed: list[tuple[float, float, float, float]]
) -> tuple[float, float, str]:
    """Where a point's label goes: beside the point, on the first side (and then further away)
    where its box meets no label drawn before and stays inside the plot."""
    tries = []
    for step in range(6):
        dy = step * LABEL_PX * 1.3
        tries += [(x + 7, y - 5 - dy, "start"), (x + 7, y + 14 + dy, "start"),
                  (x - 7, y - 5 - dy, "end"), (x - 7, y + 14 + dy, "end")]  # fmt: skip
    for tx, ty, anchor in tries:
        box = _box(tx, ty, text, anchor)
        inside = box[0] >= LEFT and box[0] + box[2] <= W - RIGHT and box[1] >= TOP and ty <= H - BOTTOM
        if inside and all(_apart(box, other) for other in placed):
            placed.append(box)
            return tx, ty, anchor
    placed.append(_box(x + 7, y - 5, text, "start"))
    return x + 7, y - 5, "start"


def _points(
    g: Group, sc: _Scale, axis: str, div: float, placed: list[tuple[float, float, float, float]] | None = None
) -> list[str]:
    e = html.escape
    out = [f'<g class="grp-{g.key}">']
    for (_, r), yv in zip(g.rows.iterrows(), g.y):
        x = sc.x(float(r[axis]) / div)
        y = sc.y(float(yv)) if np.isfinite(yv) else H - BOTTOM - 5
        line = g.marker == "x" or not g.filled
        fill = "none" if line else g.color
        stroke = g.color if line else ("#000" if g.key == "pareto" else "none")
        tip = e(_tip(r))
        opening, tag = _marker(g.marker, x, y, g.size)
        out.append(
            f'{opening} class="pt" fill="{fill}" stroke="{stroke}" stroke-width="1.2" '
            f'data-tip="{tip}"><title>{tip}</title></{tag}>'
        )
        if g.labelled and np.isfinite(yv):
            text = str(r["label"])
            tx, ty, anchor = _place(x, y, text, placed if placed is not None else [])
            out.append(
                f'<text class="label" x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" '
                f'font-size="{LABEL_PX}" fill="{g.color}">{e(text)}</text>'
            )
    out.append("</g>")
    return out


def _legend(all_groups: list[Group], axis: str, has_front: bool, majority: float | None = None) -> str:
    e = html.escape
    items = [(g.key, g.name, g.color) for g in all_groups]
    if has_front:
        items.append(("front", "front of the searched candidates (this plane)", "#1f4e8c"))
    if majority is not None:
        items.append(("majority", f"majority class (val): {majority:.1f} %", "#b71c1c"))
    if axis == "macs":
        items.append(("iso", "NetScore iso-lines (at median params)", "#9e9e9e"))
    spans = [f'<span data-group="{e(k)}"><i style="background:{c}"></i>{e(n)}</span>' for k, n, c in items]
    return '<div class="legend">' + "".join(spans) + "</div>"


def plot_fragment(collection: Collection, pareto_rows: pd.DataFrame) -> str:
    """Both interactive plots (accuracy against MACs and against params) as an HTML fragment."""
    all_groups = groups(collection, pareto_rows)
    parts = []
    for axis in ("macs", "params"):
        parts.append(f'<div class="iplot" id="iplot-{axis}">')
        parts.append(
            _legend(all_groups, axis, bool(len(collection.candidates)), collection.majority_rate("val"))
        )
        parts.append(_svg(collection, all_groups, axis))
        parts.append("</div>")
    return "\n".join(parts)


def page(collection: Collection, pareto_rows: pd.DataFrame) -> str:
    """``interactive.html``: the plots as a standalone page (no external resources)."""
    title = html.escape(f"{collection.study}: interactive Pareto plots")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>body{{font-family:sans-serif;margin:20px}}{STYLE}</style></head><body>"
        f"<h1>{title}</h1><p>Hover a point for its facts; click a legend entry to hide or show it.</p>"
        f'{plot_fragment(collection, pareto_rows)}<div id="iplot-tip"></div>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )
