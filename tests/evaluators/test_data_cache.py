from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluators.data import cache as cache_mod
from evaluators.data.cache import CACHE_ENV, default_cache_dir, load_arrays, margin_for
from evaluators.data.covidx import DatasetError, load_dataset
from tests.evaluators.test_data import lines, write_dataset


def quadrants(path: Path, w: int = 64, h: int = 48) -> None:
    """Four flat quadrants: 10 top-left, 80 top-right, 160 bottom-left, 240 bottom-right."""
    arr = np.empty((h, w), dtype=np.uint8)
    arr[: h // 2, : w // 2], arr[: h // 2, w // 2 :] = 10, 80
    arr[h // 2 :, : w // 2], arr[h // 2 :, w // 2 :] = 160, 240
    Image.fromarray(arr).save(path)


@pytest.fixture
def quad_data(tmp_path: Path) -> Path:
    """Train images cropped to each quadrant, so the crop's gray level shows the box was honoured."""
    root = tmp_path / "quad"
    boxes = [(0, 0, 32, 24), (32, 0, 64, 24), (0, 24, 32, 48), (32, 24, 64, 48), (0, 0, 64, 48)]
    (root / "images").mkdir(parents=True)
    for i in range(len(boxes)):
        quadrants(root / "images" / f"q{i}.png")
    (root / "train.txt").write_text(
        "".join(f"q{i}.png {i % 3} {' '.join(map(str, b))}\n" for i, b in enumerate(boxes))
    )
    write_dataset(root, {"val": lines(2, "v", (64, 48)), "test": lines(2, "t", (64, 48))}, size=(64, 48))
    return root


def test_crop_to_box_and_resize(quad_data: Path, tmp_path: Path) -> None:
    d = load_dataset([quad_data])
    a = load_arrays(d, "train", 32, cache_dir=tmp_path / "c")
    assert a.images.shape == (5, 32, 32) and a.images.dtype == torch.uint8
    assert a.canvas.shape == (5, 32 + 2 * margin_for(32), 32 + 2 * margin_for(32))
    assert a.labels.tolist() == [0, 1, 2, 0, 1] and a.labels.dtype == torch.int64
    assert a.filenames == tuple(f"q{i}.png" for i in range(5)) and a.sources == ("quad",) * 5
    for i, value in enumerate((10, 80, 160, 240)):
        inner = a.images[i, 2:-2, 2:-2]  # the border may blend with the neighbouring quadrant
        assert torch.all(inner == value), (i, inner.unique())
    whole = a.images[4].float()
    assert whole[:14, :14].mean() == 10 and whole[-14:, -14:].mean() == 240  # not flipped or rotated
    # the margin around a quadrant box shows the real neighbours; the whole-image box has none
    m = a.margin
    assert a.valid[0].tolist() == [m, m, a.canvas.shape[2], a.canvas.shape[1]]
    assert a.valid[4].tolist() == [m, m, m + 32, m + 32]
    assert a.canvas[0, m + 5, -1] == 80 and a.canvas[0, -1, m + 5] == 160
    assert a.exterior[4] == 0 and a.exterior[0] == round((80 + 160 + 240) / 3)


def test_batch_channels_and_range(quad_data: Path, tmp_path: Path) -> None:
    a = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=tmp_path / "c")
    x3 = a.batch([0, 3], channels=3)
    x1 = a.batch([0, 3], channels=1)
    assert x3.shape == (2, 3, 32, 32) and x1.shape == (2, 1, 32, 32) and x3.dtype == torch.float32
    assert torch.equal(x3[:, 0], x3[:, 2]) and torch.equal(x3[:, :1], x1)
    assert x3.min() >= 0 and x3.max() <= 1 and abs(float(x3[1, 0, 16, 16]) - 240 / 255) < 1e-6
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        load_arrays(load_dataset([quad_data]), "train", 32, channels=2, cache_dir=tmp_path / "c")


def test_second_load_reads_the_cache(
    quad_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = load_dataset([quad_data])
    first = load_arrays(d, "train", 32, cache_dir=tmp_path / "c")
    assert not first.from_cache and len(first.cache_files) == 1 and first.cache_files[0].is_file()

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache holds the images")

    monkeypatch.setattr(cache_mod, "_decode", no_decoding)
    second = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=tmp_path / "c")
    assert second.from_cache and torch.equal(second.canvas, first.canvas)
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_changed_label_file_or_image_invalidates(quad_data: Path, tmp_path: Path) -> None:
    c = tmp_path / "c"
    a = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c)
    assert load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c).from_cache
    # a changed box in the label file
    text = (quad_data / "train.txt").read_text().replace("q0.png 0 0 0 32 24", "q0.png 0 32 0 64 24")
    (quad_data / "train.txt").write_text(text)
    b = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c)
    assert not b.from_cache and torch.all(b.images[0, 2:-2, 2:-2] == 80)
    assert b.cache_files != a.cache_files
    # a rewritten image (new content, new size on disk and mtime)
    Image.fromarray(np.full((48, 64), 123, dtype=np.uint8)).save(quad_data / "images" / "q4.png")
    e = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c)
    assert not e.from_cache and torch.all(e.images[4] == 123)
    # only the modification time changed
    st = (quad_data / "images" / "q1.png").stat()
    os.utime(quad_data / "images" / "q1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c).from_cache
    # another image size is another entry
    assert not load_arrays(load_dataset([quad_data]), "train", 64, cache_dir=c).from_cache
    assert load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c).from_cache


def test_corrupt_cache_file_is_rebuilt(quad_data: Path, tmp_path: Path) -> None:
    d = load_dataset([quad_data])
    a = load_arrays(d, "train", 32, cache_dir=tmp_path / "c")
    a.cache_files[0].write_bytes(b"garbage")
    b = load_arrays(d, "train", 32, cache_dir=tmp_path / "c")
    assert not b.from_cache and torch.equal(a.canvas, b.canvas)
    assert load_arrays(d, "train", 32, cache_dir=tmp_path / "c").from_cache


def test_cache_dir_from_environment(quad_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    a = load_arrays(load_dataset([quad_data]), "val", 32)
    assert a.cache_files[0].parent == tmp_path / "env-cache"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "covidnet-nas"


def test_concurrent_workers_share_one_entry(quad_data: Path, tmp_path: Path) -> None:
    d = load_dataset([quad_data])
    results: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(load_arrays(d, "train", 32, cache_dir=tmp_path / "c").canvas)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    assert all(torch.equal(r, results[0]) for r in results)
    assert len(list((tmp_path / "c").glob("*.pt"))) == 1 and not list((tmp_path / "c").glob("*.tmp"))


def test_several_sources_are_cached_apart(quad_data: Path, tmp_path: Path) -> None:
    other = write_dataset(tmp_path / "other")
    d = load_dataset([quad_data, other])
    a = load_arrays(d, "test", 32, cache_dir=tmp_path / "c")
    assert a.sources == ("quad",) * 2 + ("other",) * 4 and len(a.cache_files) == 2
    alone = load_arrays(load_dataset([other]), "test", 32, cache_dir=tmp_path / "c")
    assert alone.from_cache and torch.equal(alone.canvas, a.canvas[2:])


def test_image_broken_after_loading_names_its_line(quad_data: Path, tmp_path: Path) -> None:
    d = load_dataset([quad_data])
    path = quad_data / "images" / "q2.png"
    data = path.read_bytes()
    path.write_bytes(data[:60] + bytes(len(data) - 72) + data[-12:])  # header and IEND intact, pixels not
    with pytest.raises(DatasetError, match=r"train.txt line 3: image q2.png is unreadable"):
        load_arrays(d, "train", 32, cache_dir=tmp_path / "c")


def test_without_cache(quad_data: Path, tmp_path: Path) -> None:
    a = load_arrays(load_dataset([quad_data]), "val", 32, cache_dir=tmp_path / "c", use_cache=False)
    assert not a.from_cache and a.cache_files == () and not (tmp_path / "c").exists()
