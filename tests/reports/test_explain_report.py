"""The explainability audit in the report: the table beside the accuracies, and the grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluators.explain import ImageAttribution, summarize
from reports.build import build_report
from reports.explain_grid import ExplainEntry, save_grid, save_overlay


def _result(name: str, share: float, predicted: int = 2) -> ImageAttribution:
    heat = np.zeros((16, 16), dtype=np.float32)
    heat[2:6, 2:6] = 1.0
    return ImageAttribution(
        name=name,
        path=name,
        label=2,
        predicted=predicted,
        probability=0.9,
        box=(8, 8, 24, 24),
        box_source="labels",
        share_inside=share,
        box_fraction=0.25,
        method="gradcam",
        heatmap=heat,
        image=np.full((32, 32), 90, dtype=np.uint8),
    )


def test_overlay_and_grid_are_pngs(tmp_path: Path) -> None:
    results = [_result("a.png", 0.2), _result("b.png", 0.9, predicted=0), _result("c.png", 0.7)]
    for path in (save_overlay(results[0], tmp_path / "one.png"), save_grid(results, tmp_path / "g.png", "t")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_report_shows_the_audit_beside_the_accuracy(filled: str, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def explain(rows: pd.DataFrame, out: Path) -> list[ExplainEntry]:
        calls.append(list(rows["role"]))
        best = rows[rows["role"].str.contains("best NetScore")].iloc[0]
        summary = summarize([_result("a.png", 0.2), _result("b.png", 0.8)], 64, "2 test images")
        save_grid([_result("a.png", 0.2)], out / "explain_best.png")
        return [
            ExplainEntry(
                label=str(best["label"]),
                role="best NetScore",
                number=int(best["number"]),
                arch_id=str(best["arch_id"]),
                test_accuracy=float(best["test_accuracy"]),
                val_accuracy=float(best["val_accuracy"]),
                summary=summary,
                grid="explain_best.png",
            )
        ]

    out = tmp_path / "report"
    report = build_report(filled, "t", out, explain=explain)
    assert any("best NetScore" in r for r in calls[0]) and any(
        r.startswith("CT L") or ", CT L" in r for r in calls[0]
    )
    table = pd.read_csv(out / "explain.csv")
    assert table["attribution inside body %"].tolist() == [50.0]
    assert table["mostly outside"].tolist() == ["1 of 2"]
    assert table["test acc %"].notna().all()
    page = (out / "index.html").read_text()
    assert "Attribution inside the body box" in page and 'srcset="explain_best.png 1.1x"' in page
    assert "![" in (out / "report.md").read_text()
    assert out / "explain_best.png" in report.files


def test_boxes_that_are_whole_images_make_the_share_inside_na() -> None:
    from dataclasses import replace

    from reports.explain_grid import explain_table

    whole = [
        replace(_result("a.png", 1.0), box_fraction=1.0),
        replace(_result("b.png", 1.0), box_fraction=1.0),
    ]
    entry = ExplainEntry("m", "best NetScore", 1, "a", 90.0, 91.0, summarize(whole, 64, "2"), "g.png")
    table = explain_table([entry])
    assert table.rows[0]["share_inside"] is None  # not "100 % inside"
    assert "n/a" in table.to_markdown() and "audit cannot tell" in table.note


def test_attribution_pictures_have_a_colour_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import reports.explain_grid as grid

    plt = grid.pyplot()
    figures: list = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    save_grid([_result("a.png", 0.2), _result("b.png", 0.9)], tmp_path / "g.png", "t")
    save_overlay(_result("a.png", 0.2), tmp_path / "one.png")
    assert len(figures) == 2
    for fig in figures:
        assert grid.COLORBAR_LABEL in [ax.get_ylabel() for ax in fig.axes]  # the colour bar's axis
