"""Writing outputs so that a crash never leaves half a file or half a folder behind.

``write_folder_atomically`` builds a folder under a hidden temporary name beside its destination
and swaps it in at the end (``search data prepare``'s dataset, ``search export``'s model folder);
``write_file_atomically`` does the same for one file (metrics, weights).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def write_folder_atomically(out: str | Path, writer: Callable[[Path], T]) -> T:
    """Call ``writer(tmp)`` on a hidden folder beside ``out``, then put it in ``out``'s place.

    An existing ``out`` is moved aside first and removed only once the new folder is in place.
    On any error (or Ctrl-C) the temporary folder is removed and ``out`` is left as it was.
    Whether ``out`` may be replaced at all is the caller's decision, checked before.

    Returns:
        What ``writer`` returned.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        result = writer(tmp)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            old.rmdir()
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def write_file_atomically(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any, default: Callable[[Any], Any] | None = None) -> None:
    """``data`` as indented JSON in ``path``, written atomically."""
    text = json.dumps(data, indent=2, default=default) + "\n"
    write_file_atomically(path, lambda tmp: tmp.write_text(text))
