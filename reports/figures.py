"""The one way the reports draw: matplotlib without a window, and one style per picture.

The style is applied with ``matplotlib.rc_context`` around each drawing function (``styled``), not
set globally, so a picture looks the same whichever was drawn before it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# PNGs are drawn at DPI and shown at CSS_DPI (``srcset`` density DPI / CSS_DPI): a 9-inch figure is
# 900 CSS pixels wide, crisp on high-density screens, its 9-point text readable without zooming.
DPI = 150
CSS_DPI = 100


def srcset(png: str, dpi: int = DPI) -> str:
    """The ``srcset`` value showing ``png`` (drawn at ``dpi``) at CSS_DPI pixels per inch. Pages give
    it without ``src``: a ``src`` is an implicit 1x candidate that a browser may pick instead."""
    return f"{png} {dpi / CSS_DPI:g}x"


# Deterministic SVGs (ids do not change from run to run) and a small, even font.
STYLE: dict[str, Any] = {"svg.hashsalt": "covidnet-nas", "font.size": 9}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, never a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def styled(**overrides: Any) -> Callable[[F], F]:
    """Draw the decorated function's figures under ``STYLE`` (with ``overrides``, rcParams names
    with ``_`` for ``.``: ``styled(font_size=8)``)."""
    rc = {**STYLE, **{k.replace("_", "."): v for k, v in overrides.items()}}

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with pyplot().rc_context(rc):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco
