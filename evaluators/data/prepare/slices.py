"""One axial CT slice in Hounsfield units to what COVIDx CT stores: an 8-bit windowed image and a
body box; plus how much lung a slice shows, to drop slices above or below the lungs.

The body is the largest connected region above ``body_threshold`` HU (soft tissue and bone; air
is about -1000 HU, lung -900 to -500): the CT table and stray noise are smaller, separate regions.
Connected components come from ``scipy.ndimage`` (part of the ``[prepare]`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from evaluators.data.prepare.scans import require

LUNG_WINDOW = (-600.0, 1500.0)  # level, width: COVIDx CT's lung window
BODY_THRESHOLD = -500.0
MIN_BODY_FRACTION = 0.01  # a largest region under 1 % of the slice is noise, not a body


def window_to_uint8(
    hu: np.ndarray, level: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]
) -> np.ndarray:
    """Map Hounsfield units through a window to 0-255, rounding half up.

    ``level - width / 2`` maps to 0 and ``level + width / 2`` to 255; values outside are clipped.
    With the lung window (-600, 1500): -1350 HU -> 0, -600 HU -> 128 (127.5 rounded up), 150 HU -> 255.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    # Multiply before dividing: whole HU and window values then land exactly on x.5 where they should.
    scaled = (hu.astype(np.float64) - (level - width / 2)) * 255.0 / width
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def resize_hu(hu: np.ndarray, size: int) -> np.ndarray:
    """``hu`` resized to ``size x size`` with bilinear interpolation (before windowing)."""
    if hu.shape == (size, size):
        return hu
    image = Image.fromarray(np.ascontiguousarray(hu, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


@dataclass(frozen=True)
class BodyRegion:
    """The body found on one slice.

    Attributes:
        box: ``(xmin, ymin, xmax, ymax)`` in pixels; min inclusive, max exclusive (COVIDx CT's).
        lung_fraction: the share of the body's filled outline that is below the threshold: air
            and lung inside the body. Near 0 above and below the lungs.
    """

    box: tuple[int, int, int, int]
    lung_fraction: float


def find_body(hu: np.ndarray, threshold: float = BODY_THRESHOLD) -> BodyRegion | None:
    """The largest connected region above ``threshold`` HU, or ``None`` where there is no body.

    Args:
        hu: one slice in Hounsfield units.
        threshold: HU above which a pixel is body (soft tissue, bone).
    """
    ndimage = require("scipy.ndimage")
    mask = hu > threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    if sizes[largest] < MIN_BODY_FRACTION * hu.size:
        return None
    body = labels == largest
    rows = np.flatnonzero(body.any(axis=1))
    cols = np.flatnonzero(body.any(axis=0))
    filled = ndimage.binary_fill_holes(body)
    lung = np.count_nonzero(filled & ~mask)
    return BodyRegion(
        box=(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1),
        lung_fraction=float(lung / np.count_nonzero(filled)),
    )
