"""The report opened in headless Chromium: it renders with its images and without console errors.

`.ci/run` installs Debian's `chromium` when it is missing; the tests are skipped only where no
browser is installed (and say so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.reports.browser import check_page, find_browser

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
    assert result.probe["images"] == [{"src": "missing.png", "ok": False, "width": 0}]


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
    assert probe["tables"] == 5  # summary, Tables 3-5, trade-off
    assert probe["points"] > 0 and probe["tips"] == probe["points"]
    # hovering a point shows its facts
    assert probe["hover"]["display"] == "block"
    assert "arch_id" in probe["hover"]["text"] and "NetScore" in probe["hover"]["text"]


def test_interactive_page_renders_without_console_errors(built: tuple[Path, str, Any]) -> None:
    out, _, _ = built
    result = check_page(out / "interactive.html", str(BROWSER))
    assert result.loaded and result.errors == []
    assert result.probe["points"] > 0 and result.probe["hover"]["display"] == "block"
