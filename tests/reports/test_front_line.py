"""The Pareto step line ends at its last member in every picture (static and interactive)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import optuna
import pytest

import reports.plots as plots
from reports.build import pareto_rows
from reports.collect import collect
from reports.interactive import plot_fragment
from reports.points import front_line
from tests.reports.studies import fill_study


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Any:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path_factory.mktemp('line') / 'study.db'}"
    fill_study(url)
    return collect(url, "t")


@pytest.mark.parametrize("axis", ["macs", "params"])
def test_static_step_line_ends_at_the_last_member(
    collection: Any, axis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, stem: drawn.append(fig) or [])
    monkeypatch.setattr(plots.pyplot(), "close", lambda fig: None)
    plots.pareto_plot(collection, pareto_rows(collection), axis, tmp_path, "p")
    ax = drawn[0].axes[0]
    line = next(ln for ln in ax.get_lines() if str(ln.get_label()).startswith("front of"))
    fx, fy = front_line(collection.candidates, axis)
    scale = 1e6
    xs = [float(v) for v in line.get_xdata()]
    assert max(xs) == pytest.approx(fx[-1] / scale)  # not a step past the last member
    assert min(xs) == pytest.approx(fx[0] / scale)
    assert float(line.get_ydata()[-1]) == pytest.approx(fy[-1])


def test_interactive_step_line_ends_at_the_last_member(collection: Any) -> None:
    page = plot_fragment(collection, pareto_rows(collection))
    for axis, svg in zip(("macs", "params"), page.split('<div class="iplot"')[1:]):
        d = re.search(r'class="grp-front" d="([^"]+)"', svg).group(1)
        xs = [float(x) for x, _ in re.findall(r"([\d.]+),([\d.]+)", d)]
        fx, _ = front_line(collection.candidates, axis)
        last = collection.candidates[collection.candidates[axis] == fx[-1]].iloc[0]
        # the point drawn for the last member: its circle's cx
        tip = re.escape(str(last["label"]))
        cx = float(re.search(r'<circle cx="([\d.]+)"[^>]*data-tip="' + tip, svg).group(1))
        assert max(xs) == pytest.approx(cx, abs=0.11)


@pytest.mark.parametrize("axis", ["macs", "params"])
def test_static_labels_of_crowded_points_do_not_overlap(
    axis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.reports.studies import add_crowded_baselines

    url = f"sqlite:///{tmp_path / 'study.db'}"
    fill_study(url)
    add_crowded_baselines(url)
    c = collect(url, "t")
    drawn: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, stem: drawn.append(fig) or [])
    monkeypatch.setattr(plots.pyplot(), "close", lambda fig: None)
    plots.pareto_plot(c, pareto_rows(c), axis, tmp_path, "p")
    fig = drawn[0]
    renderer = fig.canvas.get_renderer()
    names = {"ResNet-18", "CT S", "CT L (prototype, #0)", "MobileNetV2"}
    texts = [t for t in fig.axes[0].texts if t.get_text() in names]
    assert len(texts) == len(names)
    boxes = [t.get_window_extent(renderer) for t in texts]
    clashes = [
        (texts[i].get_text(), texts[j].get_text())
        for i in range(len(boxes))
        for j in range(i + 1, len(boxes))
        if boxes[i].overlaps(boxes[j])
    ]
    assert clashes == []
    lines = plots.step_boxes(fig)  # and none lies on the front's step line
    assert lines and not [t.get_text() for t, b in zip(texts, boxes) if any(b.overlaps(s) for s in lines)]


def test_interactive_labels_keep_off_the_front_line(tmp_path: Path) -> None:
    from reports.interactive import _apart, _box
    from tests.reports.studies import add_crowded_baselines

    url = f"sqlite:///{tmp_path / 'study.db'}"
    fill_study(url)
    add_crowded_baselines(url)
    c = collect(url, "t")
    page = plot_fragment(c, pareto_rows(c))
    for svg in page.split('<div class="iplot"')[1:]:
        d = re.search(r'class="grp-front" d="([^"]+)"', svg).group(1)
        pts = [(float(x), float(y)) for x, y in re.findall(r"([\d.]+),([\d.]+)", d)]
        segments = [
            (min(a[0], b[0]) - 1, min(a[1], b[1]) - 1, abs(a[0] - b[0]) + 2, abs(a[1] - b[1]) + 2)
            for a, b in itertools.pairwise(pts)
        ]
        labels = re.findall(
            r'<text class="label" x="([\d.]+)" y="([\d.]+)" text-anchor="(\w+)"[^>]*>([^<]+)<', svg
        )
        assert len(labels) >= 5
        for x, y, anchor, text in labels:
            box = _box(float(x), float(y), text, anchor)
            assert all(_apart(box, s) for s in segments), text
