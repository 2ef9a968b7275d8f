"""Opening and decoding an input image: the one rule for training, the load check and predict.

The toolkit reads 8-bit slices (what COVIDx CT holds and ``search data prepare`` writes from DICOM
or NIfTI after windowing). An image is refused, with a message that names it and says why, when:

* its pixel format is not 8-bit (16-bit, 32-bit integer or float PNG/TIFF: mode ``I;16``, ``I``,
  ``F``, ...). Mapping such values to 0-255 needs a window (which Hounsfield range is lung?), so
  no rule is guessed: the message points to ``search data prepare`` and to converting the image.
  Clipping to 255 (what Pillow's ``convert("L")`` does) would turn a slice white without a word;
* it has more than ``MAX_PIXELS`` pixels (4096 x 4096): a decompression bomb, or not a CT slice
  (a 10000 x 10000 image would take gigabytes in predict);
* its pixel data cannot be decoded (a corrupt stream behind a valid header).

``check_decodes`` decodes a file fully once and remembers, in the decoded-image cache folder, that
this file (path, size, modification time) decoded: a later load does not decode it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # a CT slice is 512 x 512; predict holds a few float copies
# Pillow modes with 8 bits per channel: converting them to gray ("L") loses no range.
EIGHT_BIT_MODES = frozenset({"1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
CHECKED_FILE = "decode-checked-v1.txt"


class NotAnImage(OSError):
    """A file Pillow cannot identify as any image format."""


def mode_problem(mode: str) -> str | None:
    """Why an image of Pillow ``mode`` is refused, or ``None``."""
    if mode in EIGHT_BIT_MODES:
        return None
    kind = {"F": "32-bit float", "I": "32-bit integer"}.get(mode, "16-bit" if "16" in mode else "not 8-bit")
    return (
        f"{kind} pixels (mode {mode}); the toolkit reads 8-bit slices and does not guess a window: "
        "convert it to 8 bits (search data prepare does so for DICOM/NIfTI, with a lung window)"
    )


def size_problem(width: int, height: int) -> str | None:
    if width * height > MAX_PIXELS:
        return (
            f"{width}x{height} pixels ({width * height / 1e6:.0f} M), above the limit of "
            f"{MAX_PIXELS / 1e6:.0f} M ({MAX_SIDE}x{MAX_SIDE}): a decompression bomb or not a CT slice"
        )
    return None


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Any]:
    """``PIL.Image.open`` with the toolkit's checks of size and mode (from the header, before any
    pixel is decoded); every problem is an ``OSError`` whose message says what is wrong."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise OSError(_bomb_text(str(e))) from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image format Pillow can read") from None
    except (ValueError, SyntaxError, EOFError) as e:  # Pillow's parsers raise these on bad headers
        raise OSError(str(e) or type(e).__name__) from None
    with img:
        w, h = img.size
        problem = size_problem(w, h) or mode_problem(img.mode)
        if problem:
            raise OSError(problem)
        yield img


def _bomb_text(message: str) -> str:
    import re

    m = re.search(r"\((\d+) pixels\)", message)
    pixels = f"{int(m.group(1)) / 1e6:.0f} M pixels" if m else "too many pixels"
    limit = f"{MAX_PIXELS / 1e6:.0f} M ({MAX_SIDE}x{MAX_SIDE})"
    return f"{pixels}, above the limit of {limit}: a decompression bomb"


def decode_gray(path: str | Path) -> np.ndarray:
    """The image as an 8-bit gray ``(H, W)`` array, by the rule above; ``OSError`` otherwise."""
    with open_image(path) as img:
        try:
            img.load()
            gray = img.convert("L") if img.mode != "L" else img
            arr = np.array(gray, dtype=np.uint8)
        except (ValueError, SyntaxError, EOFError) as e:
            raise OSError(f"corrupt pixel data ({e})") from None
        except OSError as e:
            raise OSError(f"corrupt pixel data ({e})") from None
    if arr.ndim != 2 or arr.size == 0:
        raise OSError("image has no pixels")
    return arr


# ------------------------------------------------------------------ the decode check, remembered
def _token(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


class DecodeChecks:
    """Which files decoded once already (a line per file in the cache folder)."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        if cache_dir is None:
            from evaluators.data.cachedir import default_cache_dir

            cache_dir = default_cache_dir()
        self.file = Path(cache_dir) / CHECKED_FILE
        try:
            self.known = set(self.file.read_text().split())
        except OSError:
            self.known = set()
        self.new: list[str] = []

    def check(self, path: Path) -> str | None:
        """Why ``path`` does not decode, or ``None`` (decoding it only the first time)."""
        try:
            token = _token(path)
        except OSError as e:
            return str(e.strerror or e)
        if token in self.known:
            return None
        try:
            decode_gray(path)
        except OSError as e:
            return str(e)
        self.new.append(token)
        return None

    def save(self) -> None:
        """Append the files that decoded (best effort: a read-only cache folder only costs time)."""
        if not self.new:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with os.fdopen(fd, "a") as f:
                f.write("".join(t + "\n" for t in self.new))
        except OSError:
            pass
        self.known.update(self.new)
        self.new = []
