"""The report opened in headless Chromium: it renders with its images and without console errors.

`.ci/run` installs Debian's `chromium` when it is missing; the tests are skipped only where no
browser is installed (and say so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.reports.browser import check_page, find_browser, overlaps

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium on PATH (Debian: apt-get install -y chromium; .ci/run installs it when missing)",
)


def test_the_check_fails_on_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body>"
        '<img src="missing.png"><script>notDefined();</script></body></html>'
    )
    result = check_page(page, str(BROWSER))
    assert result.loaded
    assert any("notDefined" in e for e in result.errors), result.errors
    assert any("missing.png" in e for e in result.errors), result.errors
    [image] = result.probe["images"]
    assert (image["src"], image["ok"], image["width"]) == ("missing.png", False, 0)


def test_index_renders_with_its_images_and_no_console_errors(built: tuple[Path, str, Any]) -> None:
    out, _, _ = built
    result = check_page(out / "index.html", str(BROWSER))
    assert result.loaded
    assert result.errors == []
    probe = result.probe
    assert probe["title"] == "Search report: t"
    srcs = {i["src"] for i in probe["images"]}
    assert srcs == {"pareto_macs.png", "pareto_params.png", "progress.png"}
    assert all(i["ok"] and i["width"] > 500 for i in probe["images"]), probe["images"]
    assert probe["tables"] == 6  # setup, summary, Tables 3-5, trade-off
    assert probe["points"] > 0 and probe["tips"] == probe["points"]
    # hovering a point shows its facts
    assert probe["hover"]["display"] == "block"
    assert "arch_id" in probe["hover"]["text"] and "NetScore" in probe["hover"]["text"]


def test_interactive_page_renders_without_console_errors(built: tuple[Path, str, Any]) -> None:
    out, _, _ = built
    result = check_page(out / "interactive.html", str(BROWSER))
    assert result.loaded and result.errors == []
    assert result.probe["points"] > 0 and result.probe["hover"]["display"] == "block"


def test_the_label_check_finds_overlapping_labels(tmp_path: Path) -> None:
    page = tmp_path / "labels.html"
    page.write_text(
        '<!DOCTYPE html><html><body><div class="iplot"><svg width="300" height="100">'
        '<text class="label" x="10" y="50" font-size="10">MobileNetV2</text>'
        '<text class="label" x="30" y="53" font-size="10">CT L (prototype)</text>'
        '<text class="label" x="10" y="90" font-size="10">apart</text></svg></div></body></html>'
    )
    labels = check_page(page, str(BROWSER)).probe["labels"][0]
    assert overlaps(labels) == [("MobileNetV2", "CT L (prototype)")]


def test_at_the_pages_width_pictures_are_natural_size_labels_apart_and_setup_shown(
    built: tuple[Path, str, Any],
) -> None:
    out, _, _ = built
    probe = check_page(out / "index.html", str(BROWSER), width=1280).probe
    assert probe["viewport"] == 1280
    for image in probe["images"]:  # never shrunk: legends and axes readable without opening the SVG
        assert image["ok"] and image["shown"] >= image["width"], image
    labelled = [svg for svg in probe["labels"] if svg]
    assert len(labelled) == 2  # both interactive plots label CT L, the baselines and the pruned model
    for svg in labelled:
        assert len(svg) >= 5 and overlaps(svg) == [], svg
    assert probe["setup"] >= 15  # the setup block's rows


def test_labels_of_crowded_points_are_moved_apart(tmp_path: Path) -> None:
    """Two baselines drawn almost on CT L (the issue's CT L / CT S labels over each other)."""
    import optuna

    from reports.build import build_report
    from tests.reports.studies import add_crowded_baselines, fill_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fill_study(url)
    add_crowded_baselines(url)
    build_report(url, "t", tmp_path / "report")
    probe = check_page(tmp_path / "report" / "index.html", str(BROWSER)).probe
    for svg in probe["labels"]:
        names = {b["text"] for b in svg}
        assert {"ResNet-18", "CT S", "CT L (prototype, #0)"} <= names
        assert overlaps(svg) == [], svg
