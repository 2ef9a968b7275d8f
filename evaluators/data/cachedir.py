"""Where the decoded-image cache lives: one place, read by the cache itself (``cache.py``) and by
the checks it keeps beside the images (``covidx.checked_images``, ``images.DecodeChecks``), so that
neither of those imports the cache module (which imports them)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "COVIDNET_NAS_CACHE"


def default_cache_dir() -> Path:
    """``$COVIDNET_NAS_CACHE``, else ``$XDG_CACHE_HOME/covidnet-nas``, else ``~/.cache/covidnet-nas``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "covidnet-nas"
