"""The decoded-image cache: every image decoded, cropped to its box and resized once, kept as uint8.

Decoding and cropping PNGs every epoch would dominate a search, so each (source, split) is decoded
once per image size into one file under the cache folder and reused by every later trial and
worker. The file's name holds a SHA-256 key over the label file, the image size and each image's
name, label, box, size on disk and modification time, so a changed label file or image makes a new
entry instead of reading a stale one. Files are written under a temporary name and renamed, so a
concurrent reader never sees half a file; a lock file (where the OS has ``fcntl``) lets a second
worker wait for the first one's decode instead of repeating it.

Each image is stored on a *canvas* a little larger than the box (a margin of 7.5 % of the image
size on every side, the paper's box-jitter range), so that box jitter can show the real pixels
around the box without decoding again. ``SplitArrays.images`` is the box itself: the canvas's
centre, exactly the box resized to ``image_size`` x ``image_size``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators.data.cachedir import CACHE_ENV as CACHE_ENV  # re-exported: the cache's variable
from evaluators.data.cachedir import default_cache_dir
from evaluators.data.covidx import CTDataset, DatasetError, Sample

CACHE_VERSION = 2  # 2: the canvases in a raw memory-mapped file beside a small metadata file
CHUNK = 256  # images decoded at a time while building: the builder holds one chunk, not the split
JITTER = 0.075  # the paper's box jitter, +-7.5 % of the box size: the canvas margin


def margin_for(image_size: int) -> int:
    """Canvas margin (pixels on each side) for ``image_size``: room for the box jitter."""
    return math.ceil(image_size * JITTER)


class Rows:
    """Rows ``index`` of one or more ``N x H x W`` tensors (memory maps), gathered when read.

    What a fold, a subset or several sources pooled together are: an index over the shared
    decoded images, never a copy of them. Reading (``rows[key]``, with an int, a slice or an
    index tensor first, then any further indices) gathers just those rows into a new tensor;
    ``shape``, ``dtype`` and ``len`` are the view's.
    """

    def __init__(
        self,
        parts: Sequence[torch.Tensor],
        index: torch.Tensor | None = None,
        crop: tuple[int, int] | None = None,
    ) -> None:
        if not parts:
            raise ValueError("Rows needs at least one tensor")
        self.parts = tuple(parts)
        sizes = [int(p.shape[0]) for p in self.parts]
        self.offsets = torch.tensor([0, *sizes]).cumsum(0)
        total = int(self.offsets[-1])
        self.index = torch.arange(total) if index is None else torch.as_tensor(index, dtype=torch.long)
        self.crop = crop  # (start, size): rows show [start : start + size] of each image axis

    @property
    def shape(self) -> torch.Size:
        h, w = self.parts[0].shape[1:]
        if self.crop is not None:
            h = w = self.crop[1]
        return torch.Size((int(self.index.shape[0]), h, w))

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, key: Any) -> torch.Tensor:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        picked = self.index[first]
        single = picked.ndim == 0
        out = self._gather(picked.reshape(-1))
        if self.crop is not None:
            a, n = self.crop
            out = out[:, a : a + n, a : a + n]
        if single:
            out = out[0]
        if not rest:
            return out
        return out[rest] if single else out[(slice(None), *rest)]

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0][rows]
        part = torch.searchsorted(self.offsets[1:], rows, right=True)
        out = torch.empty((rows.numel(), *self.parts[0].shape[1:]), dtype=self.dtype)
        for k in part.unique().tolist():
            sel = torch.nonzero(part == k).flatten()
            out[sel] = self.parts[k][rows[sel] - self.offsets[k]]
        return out

    def subset(self, index: torch.Tensor | Sequence[int]) -> Rows:
        return Rows(self.parts, self.index[torch.as_tensor(index, dtype=torch.long)], self.crop)

    def cropped(self, start: int, size: int) -> Rows:
        return Rows(self.parts, self.index, (start, size))

    def contiguous_tensor(self) -> torch.Tensor:
        """All rows as one tensor (a copy: for tests and small splits)."""
        return self[:]

    @staticmethod
    def concat(items: Sequence[torch.Tensor | Rows]) -> Rows:
        """Several tensors or views as one view (their row order, one after the other)."""
        parts: list[torch.Tensor] = []
        index: list[torch.Tensor] = []
        for item in items:
            base = sum(int(p.shape[0]) for p in parts)
            if isinstance(item, Rows):
                if item.crop is not None:
                    raise ValueError("cannot concatenate cropped rows")
                index.append(item.index + base)
                parts.extend(item.parts)
            else:
                index.append(torch.arange(int(item.shape[0])) + base)
                parts.append(item)
        return Rows(parts, torch.cat(index))


@dataclass(frozen=True)
class SplitArrays:
    """One split, decoded: uint8 images ready to be batched.

    Attributes:
        canvas: ``N x (S + 2m) x (S + 2m)`` uint8: the box resized to ``S`` x ``S`` in the centre,
            with a margin ``m`` of what surrounds it in the image (edge pixels beyond it).
        valid: ``N x 4`` int32 ``(x0, y0, x1, y1)``: the part of the canvas inside the image.
        exterior: ``N`` uint8: mean gray level of the image outside its box (0 where the box is
            the whole image), the fill of exterior exclusion.
        labels: ``N`` int64 class indices.
        sources: source name of each image.
        filenames: file name of each image as the label file gives it.
        image_size: ``S``.
        margin: ``m``.
        split: the split's name.
        cache_files: the cache files read or written (one per source).
        from_cache: whether every part was read from the cache rather than decoded.
    """

    canvas: torch.Tensor | Rows
    valid: torch.Tensor
    exterior: torch.Tensor
    labels: torch.Tensor
    sources: tuple[str, ...]
    filenames: tuple[str, ...]
    image_size: int
    margin: int
    split: str = ""
    cache_files: tuple[Path, ...] = ()
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def images(self) -> torch.Tensor | Rows:
        """``N x S x S`` uint8: each image cropped to its box and resized (a view of the canvas)."""
        m, s = self.margin, self.image_size
        if isinstance(self.canvas, Rows):
            return self.canvas.cropped(m, s)
        return self.canvas[:, m : m + s, m : m + s]

    def batch(
        self, index: torch.Tensor | Sequence[int], channels: int = 3, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Images ``index`` as a float ``N x channels x S x S`` tensor in [0, 1] on ``device``."""
        idx = torch.as_tensor(index, dtype=torch.long)
        x = self.images[idx].to(device, non_blocking=True)
        return to_float(x, channels)

    def subset(self, index: torch.Tensor | Sequence[int], split: str | None = None) -> SplitArrays:
        """The images ``index`` as a split of their own (cross-validation folds): the canvases are
        an index view (``Rows``) over the same decoded images, never a copy; the small per-image
        fields are gathered."""
        idx = torch.as_tensor(index, dtype=torch.long)
        picks = idx.tolist()
        canvas = self.canvas.subset(idx) if isinstance(self.canvas, Rows) else Rows([self.canvas], idx)
        return dataclasses.replace(
            self,
            canvas=canvas,
            valid=self.valid[idx],
            exterior=self.exterior[idx],
            labels=self.labels[idx],
            sources=tuple(self.sources[i] for i in picks),
            filenames=tuple(self.filenames[i] for i in picks),
            split=self.split if split is None else split,
        )


def concat_arrays(parts: Sequence[SplitArrays], split: str = "pool") -> SplitArrays:
    """Several decoded splits of one image size as one (e.g. train + val, pooled for folds); the
    canvases are an index view over the parts' (``Rows``), never a copy."""
    if not parts:
        raise ValueError("concat_arrays needs at least one split")
    sizes = {(p.image_size, p.margin) for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"cannot pool splits decoded at different sizes: {sorted(sizes)}")
    first = parts[0]
    return dataclasses.replace(
        first,
        canvas=Rows.concat([p.canvas for p in parts]) if len(parts) > 1 else first.canvas,
        valid=torch.cat([p.valid for p in parts]),
        exterior=torch.cat([p.exterior for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        sources=tuple(s for p in parts for s in p.sources),
        filenames=tuple(f for p in parts for f in p.filenames),
        split=split,
        cache_files=tuple(f for p in parts for f in p.cache_files),
        from_cache=all(p.from_cache for p in parts),
    )


def to_float(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``N x H x W`` (or float in 0-255) to float ``N x channels x H x W`` in [0, 1]."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    x = images.unsqueeze(1).float().div_(255.0)
    return x.expand(-1, channels, -1, -1).contiguous() if channels > 1 else x


def render(path: Path, box: tuple[int, int, int, int], image_size: int) -> tuple[np.ndarray, tuple, int]:
    """Decode one image to its canvas: ``(canvas, valid region, exterior mean)``.

    The box maps exactly onto the canvas centre ``[m, m + S)`` (bilinear, antialiased); the
    margin shows the surrounding image where there is one.
    """
    from PIL import Image

    from evaluators.data.images import decode_gray

    arr = decode_gray(path)  # the one decoding rule (8-bit only, size limit, named problems)
    h, w = arr.shape
    x0, y0, x1, y1 = box
    if x1 > w or y1 > h:
        raise OSError(f"box {box} lies outside the decoded {w}x{h} image")
    s, m = image_size, margin_for(image_size)
    bw, bh = x1 - x0, y1 - y0
    mx, my = m * bw / s, m * bh / s  # the margin in image pixels
    px, py = math.ceil(mx) + 1, math.ceil(my) + 1
    padded = Image.fromarray(np.pad(arr, ((py, py), (px, px)), mode="edge"))
    region = (x0 - mx + px, y0 - my + py, x1 + mx + px, y1 + my + py)
    size = s + 2 * m
    canvas = np.asarray(padded.resize((size, size), Image.Resampling.BILINEAR, box=region))
    valid = (
        max(0, round(m - x0 * s / bw)),
        max(0, round(m - y0 * s / bh)),
        min(size, round(m + (w - x0) * s / bw)),
        min(size, round(m + (h - y0) * s / bh)),
    )
    outside = w * h - bw * bh
    exterior = 0
    if outside:
        total = int(arr.sum(dtype=np.int64)) - int(arr[y0:y1, x0:x1].sum(dtype=np.int64))
        exterior = round(total / outside)
    return canvas, valid, exterior


def _key(samples: Sequence[Sample], label_bytes: bytes, image_size: int) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION} size={image_size} margin={margin_for(image_size)} bilinear\0".encode())
    h.update(hashlib.sha256(label_bytes).digest())
    for s in samples:
        st = s.path.stat()
        h.update(f"{s.filename}\0{s.label}\0{s.box}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` + ``.lock`` (a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename alone keeps readers safe
        yield
        return
    lock = path.with_name(path.name + ".lock")
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _canvas_path(meta: Path) -> Path:
    return meta.with_suffix(".canvas")


def _read(path: Path, key: str, n: int) -> dict | None:
    """The cache entry whose metadata is ``path`` (its canvases memory-mapped from the ``.canvas``
    file beside it), or None where it is missing, unreadable, incomplete or not ``key``'s."""
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt or foreign file is rebuilt, never trusted
        return None
    ok = (
        isinstance(d, dict)
        and d.get("key") == key
        and d.get("version") == CACHE_VERSION
        and all(isinstance(d.get(k), torch.Tensor) for k in ("valid", "exterior"))
        and d.get("n") == n
    )
    if not ok:
        return None
    side = int(d["side"])
    data = _canvas_path(path)
    if not data.is_file() or data.stat().st_size != n * side * side:
        return None
    if n == 0:
        canvas = torch.empty((0, side, side), dtype=torch.uint8)
    else:
        # copy-on-write mapping: writable for torch, pages shared with the page cache (never written)
        canvas = torch.from_numpy(np.memmap(data, dtype=np.uint8, mode="c", shape=(n, side, side)))
    return {"canvas": canvas, "valid": d["valid"], "exterior": d["exterior"]}


def _decode_into(
    samples: Sequence[Sample], image_size: int, workers: int, sink: Any, label: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``samples`` ``CHUNK`` images at a time, writing each chunk's canvases to ``sink``
    (a binary file, or an ``N x side x side`` uint8 tensor) as it is done; returns ``(valid,
    exterior)``. Memory: one chunk of canvases, never the split."""

    def one(s: Sample) -> tuple[np.ndarray, tuple, int]:
        try:
            return render(s.path, s.box, image_size)
        except (OSError, ValueError, SyntaxError) as e:
            raise DatasetError(
                f"{s.label_file} line {s.line}: image {s.filename} is unreadable: {e}"
            ) from None

    size = image_size + 2 * margin_for(image_size)
    valid = torch.empty((len(samples), 4), dtype=torch.int32)
    exterior = torch.empty(len(samples), dtype=torch.uint8)
    with contextlib.ExitStack() as stack:
        bar = task = None
        if label:
            from rich.console import Console
            from rich.progress import Progress

            bar = stack.enter_context(Progress(console=Console(stderr=True), transient=True))
            task = bar.add_task(label, total=len(samples))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers)))  # Pillow frees the GIL
        for start in range(0, len(samples), CHUNK):
            chunk = samples[start : start + CHUNK]
            buf = np.empty((len(chunk), size, size), dtype=np.uint8)
            for j, (c, v, e) in enumerate(pool.map(one, chunk)):
                buf[j] = c
                valid[start + j] = torch.tensor(v, dtype=torch.int32)
                exterior[start + j] = e
            if isinstance(sink, torch.Tensor):
                sink[start : start + len(chunk)] = torch.from_numpy(buf)
            else:
                sink.write(buf.tobytes())
            if bar is not None and task is not None:
                bar.update(task, completed=start + len(chunk))
    return valid, exterior


def _decode(samples: Sequence[Sample], image_size: int, workers: int, label: str = "") -> dict:
    """Decode into memory (no cache)."""
    size = image_size + 2 * margin_for(image_size)
    canvas = torch.empty((len(samples), size, size), dtype=torch.uint8)
    valid, exterior = _decode_into(samples, image_size, workers, canvas, label)
    return {"canvas": canvas, "valid": valid, "exterior": exterior}


def _build(
    path: Path, key: str, samples: Sequence[Sample], image_size: int, workers: int, label: str
) -> None:
    """Decode ``samples`` chunk by chunk straight into the ``.canvas`` file, then write the
    metadata ``path`` (the entry exists once its metadata does; both are renamed into place)."""
    data = _canvas_path(path)
    fd, tmp = tempfile.mkstemp(prefix=data.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            valid, exterior = _decode_into(samples, image_size, workers, f, label)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; other workers of the user's group read it
        os.replace(tmp, data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    side = image_size + 2 * margin_for(image_size)
    meta = {
        "key": key,
        "version": CACHE_VERSION,
        "image_size": image_size,
        "side": side,
        "n": len(samples),
        "valid": valid,
        "exterior": exterior,
    }
    _write(path, meta)


def _write(path: Path, d: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(d, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "data"


def load_arrays(
    dataset: CTDataset,
    split: str,
    image_size: int,
    channels: int = 3,
    cache_dir: str | Path | None = None,
    *,
    use_cache: bool = True,
    workers: int | None = None,
    progress: bool = False,
) -> SplitArrays:
    """Split ``split`` of ``dataset`` decoded at ``image_size``, from the cache where it is there.

    Args:
        dataset: the loaded dataset.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square images.
        channels: 1 or 3; only checked here (the cache is grayscale, channels are expanded at
            batch time).
        cache_dir: the cache folder; default ``default_cache_dir()``.
        use_cache: False decodes without reading or writing the cache.
        workers: decoding threads (default: the CPU count, at most 8).
        progress: show a progress bar on stderr while decoding.

    Raises:
        DatasetError: an image that cannot be decoded (naming its label file and line).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    samples = dataset.split(split)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    workers = workers or min(8, os.cpu_count() or 1)
    parts, files, all_cached = [], [], True

    def label(source: str) -> str:
        return f"decoding {source} {split} at {image_size} px" if progress else ""

    for source in dataset.sources:
        mine = [s for s in samples if s.source == source]
        if not mine:
            continue
        if not use_cache:
            parts.append(_decode(mine, image_size, workers, label(source)))
            all_cached = False
            continue
        label_bytes = dataset.label_files[source][split].read_bytes()
        key = _key(mine, label_bytes, image_size)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_safe(source)}-{split}-{image_size}px-{key[:24]}.pt"
        d = _read(path, key, len(mine))
        if d is None:
            with _locked(path):
                d = _read(path, key, len(mine))  # another worker may have written it meanwhile
                if d is None:
                    all_cached = False
                    _build(path, key, mine, image_size, workers, label(source))
                    d = _read(path, key, len(mine))
                    if d is None:  # pragma: no cover - a file system that loses what it was given
                        raise OSError(f"the cache entry {path} could not be read back after writing it")
        parts.append(d)
        files.append(path)

    def cat(name: str) -> torch.Tensor:
        return parts[0][name] if len(parts) == 1 else torch.cat([p[name] for p in parts])

    canvas = parts[0]["canvas"] if len(parts) == 1 else Rows.concat([p["canvas"] for p in parts])

    by_source = [s for source in dataset.sources for s in samples if s.source == source]
    return SplitArrays(
        canvas=canvas,
        valid=cat("valid"),
        exterior=cat("exterior"),
        labels=torch.tensor([s.label for s in by_source], dtype=torch.long),
        sources=tuple(s.source for s in by_source),
        filenames=tuple(s.filename for s in by_source),
        image_size=image_size,
        margin=margin_for(image_size),
        split=split,
        cache_files=tuple(files),
        from_cache=all_cached,
    )
