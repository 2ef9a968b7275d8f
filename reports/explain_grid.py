"""Pictures and a table of the explainability audit: attribution overlays on CT slices.

``save_overlay`` draws one slice with its attribution map, its body box and the predicted class
with its probability; ``save_grid`` draws several in one PNG. ``explain_table`` is the report's
table of audited models (accuracy beside the share of attribution inside the body box), with the
grids as figures under it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.data.classes import CLASS_NAMES
from evaluators.explain import MOSTLY_OUTSIDE, ExplainSummary, ImageAttribution
from reports.figures import pyplot, srcset, styled
from reports.tables import Column, Table

GRID_DPI = 110
METHOD_NAMES = {"gradcam": "Grad-CAM", "integrated-gradients": "integrated gradients"}


def _name(index: int | None, names: Sequence[str] = CLASS_NAMES) -> str:
    if index is None:
        return "?"
    return names[index] if 0 <= index < len(names) else f"class {index}"


def heatmap_on_image(result: ImageAttribution) -> np.ndarray:
    """The attribution map resized to the slice's own pixels (bilinear), scaled to [0, 1]."""
    from PIL import Image

    h, w = result.image.shape
    heat = np.asarray(
        Image.fromarray(result.heatmap.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    heat = np.clip(heat, 0.0, None)
    top = float(heat.max())
    return heat / top if top > 0 else heat


COLORBAR_LABEL = "attribution (share of the slice's maximum)"


def _panel(ax: Any, result: ImageAttribution) -> Any:
    """Draw one slice with its overlay; returns the overlay's image (for a colour bar)."""
    from matplotlib.patches import Rectangle

    ax.imshow(result.image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    overlay = ax.imshow(
        heatmap_on_image(result), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear"
    )
    x0, y0, x1, y1 = result.box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1.0, ls="--"))
    share = "n/a" if result.share_inside is None else f"{100 * result.share_inside:.0f} %"
    truth = "" if result.label is None else f" (true {_name(result.label, result.class_names)})"
    flagged = result.mostly_outside
    predicted = _name(result.predicted, result.class_names)
    ax.set_title(
        f"{predicted} {result.probability:.2f}{truth}\ninside body: {share}",
        color="#b00020" if flagged else "black",
        fontsize=8,
    )
    ax.set_xlabel(result.name, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return overlay


def _colorbar(fig: Any, overlay: Any, axes: Any) -> None:
    bar = fig.colorbar(overlay, ax=axes, shrink=0.8, pad=0.02)
    bar.set_label(COLORBAR_LABEL, fontsize=7)
    bar.solids.set_alpha(1.0)


@styled(font_size=8)
def save_overlay(result: ImageAttribution, path: str | Path) -> Path:
    """One slice with its attribution overlay, box, prediction and share inside, as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.9, 3.5))
    _colorbar(fig, _panel(ax, result), ax)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


@styled(font_size=8)
def save_grid(
    results: Sequence[ImageAttribution], path: str | Path, title: str = "", columns: int = 4
) -> Path:
    """Several slices' overlays in one PNG (in the order given), with a title line."""
    if not results:
        raise ValueError("save_grid needs at least one result")
    plt = pyplot()
    cols = max(1, min(columns, len(results)))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.7 * cols + 0.8, 3.2 * rows + 0.4), squeeze=False, layout="constrained"
    )
    overlay = None
    for ax, result in zip(axes.flat, results):
        overlay = _panel(ax, result)
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    _colorbar(fig, overlay, axes)
    path = Path(path)
    fig.savefig(path, dpi=GRID_DPI)
    plt.close(fig)
    return path


def grid_title(model: str, summary: ExplainSummary) -> str:
    """``"<model>: Grad-CAM, 74 % of attribution inside the body box (a uniform map: 39 %)"``."""
    method = METHOD_NAMES.get(summary.method, summary.method)
    share = "n/a" if summary.mean_share_inside is None else f"{100 * summary.mean_share_inside:.0f} %"
    return (
        f"{model}: {method}, {share} of attribution inside the body box "
        f"(a uniform map: {100 * summary.mean_box_fraction:.0f} %)"
    )


# ----------------------------------------------------------------------------- the report's table
@dataclass(frozen=True)
class ExplainEntry:
    """One audited model of the report.

    Attributes:
        label: how the report names the model (e.g. ``CT L (prototype)``).
        role: its role in the report's tables (``best NetScore``, ``CT L (prototype)``).
        number: its trial number; arch_id: its architecture id.
        test_accuracy, val_accuracy: stored accuracies in percent (cropped slices).
        summary: the audit.
        grid: the grid PNG's file name, relative to the report folder.
    """

    label: str
    role: str
    number: int
    arch_id: str
    test_accuracy: float | None
    val_accuracy: float | None
    summary: ExplainSummary
    grid: str


@dataclass
class ExplainTable(Table):
    """The audit table; its HTML and Markdown also show the grids."""

    figures: list[tuple[str, str]] = field(default_factory=list)  # (png, caption)

    def to_html(self) -> str:
        e = html.escape
        figs = "".join(
            f'<figure><a href="{e(png)}"><img srcset="{e(srcset(png, GRID_DPI))}" '
            f'alt="{e(cap)}"></a>'
            f"<figcaption>{e(cap)}</figcaption></figure>"
            for png, cap in self.figures
        )
        return super().to_html() + (f'<div class="pics">{figs}</div>\n' if figs else "")

    def to_markdown(self) -> str:
        pics = "".join(f"\n![{cap}]({png})\n" for png, cap in self.figures)
        return super().to_markdown() + pics


def explain_table(entries: Sequence[ExplainEntry]) -> ExplainTable:
    """Accuracy beside the share of attribution inside the body box, one row per audited model."""
    method = entries[0].summary.method if entries else "gradcam"
    columns = [
        Column("label", "model"),
        Column("role", "role"),
        Column("number", "trial", "int"),
        Column("arch_id", "arch_id"),
        Column("test_accuracy", "test acc %", "pct"),
        Column("val_accuracy", "val acc %", "pct"),
        Column("slice_accuracy", "acc on whole slices %", "pct"),
        Column("share_inside", "attribution inside body %", "pct"),
        Column("box_fraction", "body box area %", "pct"),
        Column("flagged", "mostly outside"),
    ]
    rows: list[dict[str, Any]] = []
    figures = []
    for entry in entries:
        s = entry.summary
        rows.append(
            {
                "label": entry.label,
                "role": entry.role,
                "number": entry.number,
                "arch_id": entry.arch_id,
                "test_accuracy": entry.test_accuracy,
                "val_accuracy": entry.val_accuracy,
                "slice_accuracy": s.accuracy,
                # boxes that are the whole slices make "100 % inside" say nothing: n/a
                "share_inside": None
                if s.mean_share_inside is None or s.boxes_fill_images
                else 100 * s.mean_share_inside,
                "box_fraction": 100 * s.mean_box_fraction,
                "flagged": f"{s.n_mostly_outside} of {s.n}",
            }
        )
        figures.append((entry.grid, grid_title(entry.label, s)))
    note = (
        f"Explainability audit ({METHOD_NAMES.get(method, method)}, the open stand-in for the paper's "
        f"GSInquire) on a few test slices: each model runs on the whole slice resized to its training "
        f"size, and the share of its positive attribution inside the body box is measured. A uniform "
        f"map would score the box's share of the area; an image is flagged when under "
        f"{100 * MOSTLY_OUTSIDE:.0f} % falls inside. Accuracy on whole slices is on these few images "
        f"(the model was trained on crops)."
    )
    if any(e.summary.boxes_fill_images for e in entries):
        note += (
            " Where the box area is about 100 %, the boxes are the whole slices: the audit cannot tell, "
            "and its share inside is n/a."
        )
    return ExplainTable(
        name="explain",
        title="Attribution inside the body box (explainability audit)",
        note=note,
        columns=columns,
        rows=rows,
        figures=figures,
    )


__all__ = [
    "ExplainEntry",
    "ExplainTable",
    "explain_table",
    "grid_title",
    "heatmap_on_image",
    "save_grid",
    "save_overlay",
]
