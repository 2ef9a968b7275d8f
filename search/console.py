"""Console output shared by the commands: one rich console, tables and progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from rich.console import Console
from rich.table import Table


def _width() -> int | None:
    """Piped output (logs, CI, tests) gets a wide page so tables are never cut to 80 columns."""
    return None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160


@lru_cache(maxsize=1)
def console() -> Console:
    return Console(highlight=False, width=_width())


@lru_cache(maxsize=1)
def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def progress_bar(*, quiet: bool = False, transient: bool = True, stderr: bool = False) -> Any:
    """The commands' progress bar: description, bar, done/total, ETA (``quiet`` hides it)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console() if stderr else console(),
        disable=quiet,
        transient=transient,
    )


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table with right-aligned numbers and left-aligned text."""
    table = Table(title=title, title_justify="left")
    first = rows[0] if rows else []
    for i, col in enumerate(columns):
        numeric = i < len(first) and _looks_numeric(first[i])
        table.add_column(col, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console().print(table)


def _looks_numeric(v: Any) -> bool:
    if isinstance(v, (int, float)):
        return True
    s = str(v).replace(",", "").replace("%", "").split(" ")[0]
    try:
        float(s)
    except ValueError:
        return False
    return True


def invocation() -> str:
    """How the user started ``search``, so that printed follow-up commands run as shown: ``search``
    when that is the script on PATH, the script's full path when it is not (an environment that is
    not activated), ``<python> -m search`` under ``python -m search``."""
    import os
    import shlex
    import shutil
    import sys

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "search"
    if argv0.endswith(("__main__.py", "-m")) or argv0 == "-c":
        return f"{shlex.quote(sys.executable)} -m search"
    on_path = shutil.which("search")
    if on_path and os.path.realpath(on_path) == os.path.realpath(shutil.which(argv0) or argv0):
        return "search"
    return shlex.quote(os.path.abspath(argv0)) if os.sep in argv0 else "search"
