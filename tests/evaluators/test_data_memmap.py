"""The memory-mapped cache: canvases in a raw file, folds and pooled sources as index views."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from evaluators.data import cache as cache_mod
from evaluators.data.cache import Rows, concat_arrays, load_arrays, margin_for
from evaluators.data.covidx import load_dataset
from tests.evaluators.test_data import write_dataset
from tests.evaluators.test_data_cache import quad_data  # noqa: F401 - fixture


def test_rows_read_like_the_tensor_they_index() -> None:
    a = torch.arange(5 * 4 * 4, dtype=torch.uint8).view(5, 4, 4)
    b = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 4, 4) + 100
    whole = torch.cat([a, b])
    r = Rows.concat([a, b])
    assert r.shape == (8, 4, 4) and len(r) == 8 and r.dtype == torch.uint8
    assert torch.equal(r[:], whole) and torch.equal(r[2:7], whole[2:7]) and torch.equal(r[6], whole[6])
    idx = torch.tensor([7, 0, 5, 5, 2])
    assert torch.equal(r[idx], whole[idx])
    assert torch.equal(r[6, 1:3, 2], whole[6, 1:3, 2]) and torch.equal(r[idx, 0], whole[idx, 0])
    sub = r.subset(torch.tensor([6, 1, 3])).subset(torch.tensor([2, 0]))  # a fold of a fold
    assert torch.equal(sub[:], whole[torch.tensor([3, 6])])
    crop = sub.cropped(1, 2)
    assert crop.shape == (2, 2, 2) and torch.equal(crop[:], whole[torch.tensor([3, 6])][:, 1:3, 1:3])
    assert sub.parts[0] is a and sub.parts[1] is b  # views of the same tensors, no copy


def test_the_cache_is_a_memory_map_and_folds_are_views(quad_data: Path, tmp_path: Path) -> None:  # noqa: F811
    c = tmp_path / "c"
    first = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c)
    side = 32 + 2 * margin_for(32)
    data = first.cache_files[0].with_suffix(".canvas")
    assert data.stat().st_size == len(first) * side * side  # raw canvases beside the metadata
    second = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c)
    assert second.from_cache and torch.equal(second.canvas, first.canvas)
    # a change on disk shows through the map: the tensor is the file, not a copy of it
    raw = bytearray(data.read_bytes())
    raw[0] = (raw[0] + 1) % 256
    data.write_bytes(bytes(raw))
    again = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c)
    assert int(again.canvas[0, 0, 0]) == raw[0]
    fold = again.subset(torch.tensor([3, 1]), split="fold1")
    assert isinstance(fold.canvas, Rows) and fold.canvas.parts[0] is again.canvas
    assert torch.equal(fold.images[0], again.images[3]) and torch.equal(fold.batch([1]), again.batch([1]))
    assert fold.labels.tolist() == again.labels[torch.tensor([3, 1])].tolist()
    pooled = concat_arrays([again, fold])
    assert isinstance(pooled.canvas, Rows) and len(pooled) == len(again) + 2
    assert torch.equal(pooled.images[len(again) + 1], again.images[1])


def test_a_truncated_canvas_file_is_rebuilt(quad_data: Path, tmp_path: Path) -> None:  # noqa: F811
    c = tmp_path / "c"
    a = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c)
    expected = a.canvas.clone()
    del a  # (a rebuild replaces the file by rename, so open maps stay valid; this test truncates it)
    data = tmp_path / "c"
    data = next(data.glob("*.canvas"))
    data.write_bytes(data.read_bytes()[:-10])
    b = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=c)
    assert not b.from_cache and torch.equal(expected, b.canvas[:])


def test_the_builder_decodes_in_chunks(
    quad_data: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache_mod, "CHUNK", 2)
    writes: list[int] = []
    real = cache_mod._decode_into

    def spy(samples, image_size, workers, sink, label=""):  # type: ignore[no-untyped-def]
        class Sink:
            def write(self, b: bytes) -> None:
                writes.append(len(b))
                sink.write(b)

        return real(
            samples, image_size, workers, Sink() if not isinstance(sink, torch.Tensor) else sink, label
        )

    monkeypatch.setattr(cache_mod, "_decode_into", spy)
    a = load_arrays(load_dataset([quad_data]), "train", 32, cache_dir=tmp_path / "c")
    side = 32 + 2 * margin_for(32)
    assert len(writes) == -(-len(a) // 2) and max(writes) <= 2 * side * side
    ref = load_arrays(load_dataset([quad_data]), "train", 32, use_cache=False)
    assert torch.equal(a.canvas[:], ref.canvas) and torch.equal(a.valid, ref.valid)


def test_several_sources_are_one_view(tmp_path: Path, quad_data: Path) -> None:  # noqa: F811
    other = write_dataset(tmp_path / "other")
    a = load_arrays(load_dataset([quad_data, other]), "test", 32, cache_dir=tmp_path / "c")
    assert isinstance(a.canvas, Rows) and len(a.canvas.parts) == 2
    alone = load_arrays(load_dataset([other]), "test", 32, cache_dir=tmp_path / "c")
    assert torch.equal(a.canvas[2:], alone.canvas[:])


def test_image_checks_are_cached_by_manifest(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from evaluators.data import covidx

    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path / "cache"))
    data = write_dataset(tmp_path / "d")
    opened: list[Path] = []
    real = covidx._image_check
    monkeypatch.setattr(covidx, "_image_check", lambda p, *a: opened.append(p) or real(p, *a))
    first = load_dataset([data])
    n = len(opened)
    assert n == sum(len(v) for v in first.splits.values())
    again = load_dataset([data])
    assert len(opened) == n and again.splits == first.splits  # stat only, no file opened
    img = data / "images" / "train_0.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    load_dataset([data])
    assert len(opened) == 2 * n  # one image changed: the manifest differs, all are checked again
    for entry in (tmp_path / "cache" / "checks").glob("*.json"):
        entry.write_text("{not json")
    load_dataset([data])
    assert len(opened) == 3 * n  # a broken entry is ignored
