"""Open a local page in headless Chromium and report what a person would see go wrong.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on file descriptors 3 and 4), so the standard library is enough: no
Selenium, no websocket client. Console errors, uncaught exceptions and failed loads (a missing
image is a ``Log.entryAdded`` error) are collected while the page loads, then a script run in the
page reports on its images, tables and plots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE = """JSON.stringify({
  title: document.title,
  images: Array.from(document.images).map(i => ({
    src: i.getAttribute('src') || (i.getAttribute('srcset') || '').split(' ')[0],
    ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth,
    shown: i.getBoundingClientRect().width})),
  viewport: window.innerWidth,
  setup: document.querySelectorAll('#setup table tr').length,
  labels: Array.from(document.querySelectorAll('.iplot svg')).map(svg =>
    Array.from(svg.querySelectorAll('text.label')).map(t => {
      const b = t.getBoundingClientRect();
      return {text: t.textContent, x: b.left, y: b.top, w: b.width, h: b.height};
    })),
  tables: document.querySelectorAll('table.data').length,
  points: document.querySelectorAll('.iplot .pt').length,
  tips: Array.from(document.querySelectorAll('.iplot .pt')).filter(p => p.getAttribute('data-tip')).length,
  bodyText: document.body ? document.body.innerText.length : 0,
  hover: (() => {
    const p = document.querySelector('.iplot .pt');
    const tip = document.getElementById('iplot-tip');
    if (!p || !tip) return null;
    p.dispatchEvent(new MouseEvent('mousemove', {clientX: 20, clientY: 20, bubbles: true}));
    return {display: tip.style.display, text: tip.textContent};
  })(),
})"""


def find_browser() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What the page showed: console errors, failed loads, and the probe's answer."""

    errors: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    loaded: bool = False


class _Pipe:
    def __init__(self, browser: str, profile: str) -> None:
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def wire() -> None:  # in the child: the protocol's fds are 3 (commands) and 4 (replies)
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--allow-file-access-from-files",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._next

    def _read_one(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the browser")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError("the browser closed the pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
        want = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_one(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return True
        while time.monotonic() < deadline:
            try:
                msg = self._read_one(deadline)
            except TimeoutError:
                return False
            self.events.append(msg)
            if msg.get("method") == method:
                return True
        return False

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._w)
            os.close(self._r)


def check_page(
    path: Path, browser: str, settle: float = 1.0, timeout: float = 60.0, width: int = 1280
) -> PageCheck:
    """Load ``path`` (a local file) in a window ``width`` CSS pixels wide (device scale 1) and return
    its console errors, failed loads and probe."""
    out = PageCheck()
    with tempfile.TemporaryDirectory(prefix="report-browser-") as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.call(f"{domain}.enable", session=session)
            metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
            pipe.call("Emulation.setDeviceMetricsOverride", metrics, session=session)
            pipe.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
            out.loaded = pipe.wait_event("Page.loadEventFired", timeout)
            time.sleep(settle)  # late console messages
            result = pipe.call(
                "Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session
            )
            out.probe = json.loads(result["result"]["value"])
        finally:
            pipe.close()
    for e in pipe.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.errors.append(
                f"exception: {details.get('exception', {}).get('description') or details.get('text')}"
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            out.errors.append("console.error: " + " ".join(texts))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
    return out


def overlaps(boxes: list[dict[str, Any]], slack: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of drawn label boxes (``x``, ``y``, ``w``, ``h``) that intersect."""
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            apart_x = a["x"] + a["w"] <= b["x"] + slack or b["x"] + b["w"] <= a["x"] + slack
            apart_y = a["y"] + a["h"] <= b["y"] + slack or b["y"] + b["h"] <= a["y"] + slack
            if not (apart_x or apart_y):
                out.append((a["text"], b["text"]))
    return out
