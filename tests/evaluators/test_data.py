from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluators.data.classes import CLASS_NAMES
from evaluators.data.covidx import DatasetError, default_data_dir, load_dataset
from tests.conftest import shared_dataset

Line = tuple[str, int, int, int, int, int]


def write_image(
    path: Path, size: tuple[int, int] = (48, 40), value: int | None = None, seed: int = 0
) -> None:
    """A small 8-bit grayscale PNG (random texture, or one gray ``value``)."""
    w, h = size
    if value is None:
        arr = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    else:
        arr = np.full((h, w), value, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_dataset(
    root: Path,
    splits: dict[str, Sequence[Line]] | None = None,
    *,
    names: dict[str, str] | None = None,
    image_dir: str = "images",
    size: tuple[int, int] = (48, 40),
) -> Path:
    """A COVIDx-CT-format folder: label files per split and a PNG for every line's file name."""
    if splits is None:
        splits = {
            split: [(f"{split}_{i}.png", i % 2 * 2, 0, 0, size[0], size[1]) for i in range(n)]
            for split, n in (("train", 6), ("val", 4), ("test", 4))
        }
    names = names or {s: f"{s}.txt" for s in splits}
    for k, (split, lines) in enumerate(splits.items()):
        (root / names[split]).parent.mkdir(parents=True, exist_ok=True)
        (root / names[split]).write_text("".join(" ".join(map(str, line)) + "\n" for line in lines))
        for i, line in enumerate(lines):
            target = root / image_dir / line[0]
            if ".." not in line[0] and not line[0].startswith("/") and not target.exists():
                write_image(target, size, seed=100 * k + i)
    return root


def lines(n: int, prefix: str, size: tuple[int, int] = (48, 40)) -> list[Line]:
    return [(f"{prefix}{i}.png", i % 2 * 2, 0, 0, size[0], size[1]) for i in range(n)]


def test_bundled_default_data() -> None:
    d = load_dataset()
    assert d.sources == ("ct-sars-mini",)
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 117, "val": 48, "test": 50}
    assert d.class_counts("train") == (63, 0, 54)  # no pneumonia in this source
    assert len(d.split_hash) == 64 and d.skipped == ()
    root = default_data_dir()
    for name in ("LICENSE", "CITATION.cff", "README.md", "groups.csv"):
        assert (root / name).is_file(), name
    assert "CC BY-NC-SA 4.0" in (root / "LICENSE").read_text()
    # group-disjoint: no group of groups.csv in two splits, and groups.csv agrees with the label files
    with (root / "groups.csv").open() as f:
        rows = list(csv.DictReader(f))
    split_of = {s.filename: name for name, samples in d.splits.items() for s in samples}
    assert {r["file"]: r["split"] for r in rows} == split_of
    groups: dict[str, set[str]] = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in groups.values())
    sizes = [Image.open(s.path).size for s in d.splits["train"][:20]]
    assert max(max(s) for s in sizes) <= 128
    assert CLASS_NAMES == ("Normal", "Pneumonia", "COVID-19")


def test_short_names_images_beside_the_label_files(tmp_path: Path) -> None:
    write_dataset(tmp_path / "cohort", image_dir=".")
    d = load_dataset([tmp_path / "cohort"])
    s = d.splits["train"][1]
    assert (s.source, s.filename, s.label, s.box, s.line) == ("cohort", "train_1.png", 2, (0, 0, 48, 40), 2)
    assert s.path == (tmp_path / "cohort" / "train_1.png").absolute()
    assert s.label_file.name == "train.txt"


def test_official_names_and_image_subfolder(tmp_path: Path) -> None:
    names = {s: f"{s}_COVIDx_CT-2A.txt" for s in ("train", "val", "test")}
    write_dataset(tmp_path / "COVIDx", names=names, image_dir="2A_images")
    d = load_dataset([str(tmp_path / "COVIDx")])
    assert d.splits["val"][0].path.parent.name == "2A_images"
    assert d.label_files["COVIDx"]["test"].name == "test_COVIDx_CT-2A.txt"


def test_several_label_sets_are_ambiguous_until_one_is_chosen(tmp_path: Path) -> None:
    root = tmp_path / "COVIDx"
    write_dataset(root, names={s: f"{s}_COVIDx_CT-2A.txt" for s in ("train", "val", "test")})
    write_dataset(
        root,
        {"train": lines(3, "b"), "val": lines(2, "bv"), "test": lines(2, "bt")},
        names={s: f"{s}_COVIDx_CT-2B.txt" for s in ("train", "val", "test")},
    )
    with pytest.raises(
        DatasetError, match=r"several label-file sets \(train_COVIDx_CT-2A.txt, train_COVIDx_CT-2B"
    ):
        load_dataset([root])
    d = load_dataset([root / "train_COVIDx_CT-2B.txt"])
    assert len(d.splits["train"]) == 3


def test_several_sources_concatenate_with_unique_names(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a" / "cohort")
    b = write_dataset(
        tmp_path / "b" / "cohort", {"train": lines(2, "x"), "val": lines(2, "y"), "test": lines(3, "z")}
    )
    d = load_dataset([a, b])
    assert d.sources == ("cohort", "cohort-2")
    assert [s.source for s in d.splits["test"]] == ["cohort"] * 4 + ["cohort-2"] * 3
    assert d.dirs == (a.absolute(), b.absolute())
    assert d.summary()["sources"]["cohort-2"]["counts"]["test"] == [2, 0, 1]
    with pytest.raises(DatasetError, match="given twice"):
        load_dataset([a, a])


def test_split_hash_follows_the_label_files(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d")
    h1 = load_dataset([root]).split_hash
    assert load_dataset([root]).split_hash == h1
    text = (root / "val.txt").read_text().splitlines()
    (root / "val.txt").write_text("\n".join(reversed(text)) + "\n")
    assert load_dataset([root]).split_hash != h1


def test_empty_class_is_fine(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d")  # classes 0 and 2 only
    assert load_dataset([root]).class_counts("train") == (3, 0, 3)


def test_blank_lines_and_crlf_are_accepted(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d")
    (root / "val.txt").write_text("\r\n".join(" ".join(map(str, x)) for x in lines(4, "val_")) + "\r\n\r\n")
    assert len(load_dataset([root]).splits["val"]) == 4
    (root / "test.txt").write_bytes(b"\xef\xbb\xbf" + (root / "test.txt").read_bytes())  # a UTF-8 BOM
    assert load_dataset([root]).splits["test"][0].filename == "test_0.png"


BAD_CASES = {
    "fields": (
        "x.png 2 0 0 10",
        "train.txt line 3: expected 6 fields (filename class xmin ymin xmax ymax), got 5",
    ),
    "integer": ("train_0.png 2 0 0 4.5 10", "train.txt line 3: xmax must be an integer, got '4.5'"),
    "class": ("train_0.png 5 0 0 48 40", "train.txt line 3: class must be 0, 1 or 2, got 5"),
    "negative class": ("train_0.png -1 0 0 48 40", "train.txt line 3: class must be 0, 1 or 2, got -1"),
    "empty box": ("train_0.png 2 10 0 10 40", "train.txt line 3: box (10, 0, 10, 40) is empty"),
    "inverted box": ("train_0.png 2 0 30 48 20", "train.txt line 3: box (0, 30, 48, 20) is empty"),
    "negative box": (
        "train_0.png 2 -1 0 48 40",
        "train.txt line 3: box (-1, 0, 48, 40) has a negative coordinate",
    ),
    "outside": (
        "train_0.png 2 0 0 49 40",
        "train.txt line 3: box (0, 0, 49, 40) lies outside the 48x40 image train_0.png (xmax at most 48",
    ),
    "missing": ("ghost.png 0 0 0 10 10", "train.txt line 3: image ghost.png not found in"),
    "escape": (
        "../secret.png 0 0 0 10 10",
        "train.txt line 3: image path '../secret.png' escapes the data folder",
    ),
    "absolute": (
        "/etc/passwd 0 0 0 10 10",
        "train.txt line 3: image path '/etc/passwd' escapes the data folder",
    ),
    "twice in a split": (
        "train_1.png 2 0 0 48 40",
        "train.txt line 3: image train_1.png is already listed in",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_lines_name_file_and_line(tmp_path: Path, case: str) -> None:
    bad, message = BAD_CASES[case]
    root = write_dataset(tmp_path / "d")
    text = (root / "train.txt").read_text().splitlines()
    text.insert(2, bad)
    (root / "train.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError) as err:
        load_dataset([root])
    assert message in str(err.value)
    assert str(root / "train.txt") in str(err.value)
    assert "--skip-bad" in str(err.value)
    d = load_dataset([root], skip_bad=True)
    assert len(d.skipped) == 1 and message in d.skipped[0]
    assert len(d.splits["train"]) == 6  # the good lines all stay


def test_same_image_in_two_splits_names_both_places(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d")
    with (root / "test.txt").open("a") as f:
        f.write("train_2.png 0 0 0 48 40\n")
    with pytest.raises(
        DatasetError, match=r"test.txt line 5: image train_2.png is already listed in .*train.txt line 3"
    ):
        load_dataset([root])
    d = load_dataset([root], skip_bad=True)  # the later listing is the one skipped
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [6, 4, 4]
    assert "test.txt line 5" in d.skipped[0]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a png at all", "not an image format Pillow can read"),
        (b"", "not an image format Pillow can read"),
        ("truncate", "truncated PNG"),
    ],
)
def test_unreadable_images(tmp_path: Path, content: bytes | str, reason: str) -> None:
    root = write_dataset(tmp_path / "d")
    target = root / "images" / "val_2.png"
    if content == "truncate":
        target.write_bytes(target.read_bytes()[:-30])
    else:
        target.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(DatasetError) as err:
        load_dataset([root])
    assert "val.txt line 3: image val_2.png is unreadable" in str(err.value)
    assert reason in str(err.value)


def test_first_problem_is_reported_with_a_count_of_the_rest(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d")
    (root / "val.txt").write_text("a.png 9 0 0 1 1\nb.png 9 0 0 1 1\n" + (root / "val.txt").read_text())
    (root / "images" / "train_4.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset([root])
    text = str(err.value)
    assert "train.txt line 5: image train_4.png not found" in text and "(and 2 more bad lines)" in text


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_split(tmp_path: Path, content: str) -> None:
    root = write_dataset(tmp_path / "d")
    (root / "val.txt").write_text(content)
    with pytest.raises(DatasetError, match=r"val.txt: empty val split \(no image lines\)"):
        load_dataset([root])


def test_split_emptied_by_skipping_is_still_an_error(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d")
    (root / "test.txt").write_text("a.png 7 0 0 1 1\n")
    with pytest.raises(DatasetError, match=r"test.txt: empty test split \(every line was skipped\)"):
        load_dataset([root], skip_bad=True)


def test_missing_folder_and_label_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere: no such data folder"):
        load_dataset([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no label files"):
        load_dataset([tmp_path / "empty"])
    root = write_dataset(tmp_path / "d")
    (root / "val.txt").unlink()
    with pytest.raises(DatasetError, match="d: missing label file val.txt"):
        load_dataset([root])
    assert set(load_dataset([root], splits=("test",)).splits) == {"test"}
    with pytest.raises(DatasetError, match="not a label file"):
        load_dataset([root / "images" / "train_0.png"])


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "counts"), [("ct-sars", (1746, 369, 366)), ("ct-real", (508, 114, 122))])
def test_shared_datasets_load_cleanly(name: str, counts: tuple[int, int, int]) -> None:
    d = load_dataset([shared_dataset(name)])
    assert tuple(len(d.splits[s]) for s in ("train", "val", "test")) == counts
    assert d.skipped == () and d.class_counts("train")[1] == 0


def test_the_package_default_is_the_full_bundled_ct_sars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $COVIDNET_NAS_DEFAULT_DATA (the suite sets it to the mini set), users get all of
    ct-sars, licence and patient groups included."""
    from evaluators.data.covidx import DEFAULT_DATA_ENV, bundled_dir

    monkeypatch.delenv(DEFAULT_DATA_ENV, raising=False)
    root = default_data_dir()
    assert root == bundled_dir("ct-sars")
    d = load_dataset()
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 1746, "val": 369, "test": 366}
    assert d.class_counts("val") == (184, 0, 185)
    for name in ("LICENSE", "CITATION.cff", "README.md", "groups.csv", "patients.csv"):
        assert (root / name).is_file(), name
    assert "CC BY-NC-SA 4.0" in (root / "LICENSE").read_text()
    with (root / "groups.csv").open() as f:
        split_of_group: dict[str, set[str]] = {}
        for r in csv.DictReader(f):
            split_of_group.setdefault(f"{r['class']}/{r['group']}", set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_group.values())  # group-disjoint splits
    from PIL import Image

    sizes = [Image.open(p).size for p in sorted((root / "images").iterdir())[:50]]
    assert max(max(s) for s in sizes) <= 128
