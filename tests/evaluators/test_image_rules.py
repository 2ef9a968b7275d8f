"""The one image rule (evaluators.data.images): 8-bit only, a pixel limit, corrupt data named,
in the load check, in training's decode and in predict."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from evaluators.data.covidx import DatasetError, load_dataset
from tests.evaluators.test_data import write_dataset


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_16bit(path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 65535, (40, 48), dtype=np.uint16)
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")


def write_corrupt_pixels(path: Path) -> None:
    """A PNG with a valid header, CRCs and IEND whose compressed pixel stream is garbage."""
    raw = path.read_bytes()
    out, pos = [raw[:8]], 8
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos : pos + 4])
        kind, data = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + n]
        if kind == b"IDAT":
            data = data[:2] + bytes(b ^ 0x5A for b in data[2:])
        out.append(_chunk(kind, data))
        pos += 12 + n
    path.write_bytes(b"".join(out))


def write_bomb(path: Path) -> None:
    """A PNG header claiming 40000 x 40000 pixels (with a tiny stream)."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


BAD = {
    "16bit": (write_16bit, "16-bit pixels (mode I"),
    "corrupt": (write_corrupt_pixels, "corrupt pixel data"),
    "bomb": (write_bomb, "1600 M pixels, above the limit"),
}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("COVIDNET_NAS_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_image_is_named_with_file_and_line_and_skippable(tmp_path: Path, case: str) -> None:
    write, reason = BAD[case]
    root = write_dataset(tmp_path / "d")
    write(root / "images" / "train_3.png")
    with pytest.raises(DatasetError) as err:
        load_dataset([root])
    message = str(err.value)
    assert "train.txt line 4: image train_3.png is unreadable" in message and reason in message
    assert "\n" not in message
    data = load_dataset([root], skip_bad=True)
    assert [s.filename for s in data.splits["train"]] == [f"train_{i}.png" for i in (0, 1, 2, 4, 5)]
    assert len(data.skipped) == 1 and "train.txt line 4" in data.skipped[0]


def test_the_decode_check_is_remembered(tmp_path: Path, monkeypatch: Any) -> None:
    from evaluators.data import images

    root = write_dataset(tmp_path / "d")
    load_dataset([root])
    calls: list[Path] = []
    real = images.decode_gray
    monkeypatch.setattr(images, "decode_gray", lambda p: calls.append(p) or real(p))
    load_dataset([root])
    assert calls == []  # every image decoded before: not again
    (root / "images" / "val_1.png").write_bytes((root / "images" / "val_0.png").read_bytes())
    load_dataset([root])
    assert [p.name for p in calls] == ["val_1.png"]  # a changed file is checked again


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_training_decode_refuses_what_is_not_8_bit(tmp_path: Path, mode: str) -> None:
    from evaluators.data.images import decode_gray

    arr = np.full((8, 8), 300, dtype={"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
    f = tmp_path / "x.tif"
    Image.fromarray(arr).save(f)
    with pytest.raises(OSError, match=r"pixels \(mode .*search data prepare"):
        decode_gray(f)


def test_predict_names_each_bad_image_and_predicts_the_good_ones(tmp_path: Path) -> None:
    from evaluators.inference import Classifier, predict_files
    from tests.evaluators.test_data import write_image

    files = []
    for name, (write, _) in sorted(BAD.items()):
        f = tmp_path / f"{name}.png"
        write_image(f, (64, 64), seed=3)
        write(f)
        files.append(f)
    good = tmp_path / "good.png"
    write_image(good, (64, 64), seed=4)
    files.insert(1, good)
    clf = Classifier(logits=lambda x: np.tile([[0.0, 1.0, 0.0]], (len(x), 1)), image_size=32, channels=3)
    preds = predict_files(clf, files)
    assert [p.error is None for p in preds] == [False, True, False, False]
    assert preds[1].class_name is not None
    for p, (_, reason) in zip([preds[0], preds[2], preds[3]], [BAD[k] for k in sorted(BAD)]):
        assert reason in p.error and p.file in p.error


def test_a_link_out_of_the_data_folder_is_refused_like_a_textual_escape(tmp_path: Path) -> None:
    from tests.evaluators.test_data import write_image

    root = write_dataset(tmp_path / "d")
    secret = tmp_path / "elsewhere" / "secret.png"
    write_image(secret)
    (root / "images" / "val_1.png").unlink()
    (root / "images" / "val_1.png").symlink_to(secret)
    with pytest.raises(DatasetError, match=r"val.txt line 2: image path 'val_1.png' is a link out of"):
        load_dataset([root])
    # a data folder whose images folder links to another disk is fine
    (tmp_path / "disk").mkdir()
    (root / "images").rename(tmp_path / "disk" / "images")
    (root / "images").symlink_to(tmp_path / "disk" / "images")
    (tmp_path / "disk" / "images" / "val_1.png").unlink()
    write_image(tmp_path / "disk" / "images" / "val_1.png")
    assert len(load_dataset([root]).splits["val"]) == 4
