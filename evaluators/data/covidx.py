"""COVIDx CT data: label files, image lookup and validation with errors that name the line.

The format (Gunraj et al., COVIDx CT): one label file per split, one image a line,
``filename class xmin ymin xmax ymax``; classes 0 = Normal, 1 = Pneumonia, 2 = COVID-19; the box
is the body region in pixels of the stored image, ``xmin``/``ymin`` inclusive and ``xmax``/``ymax``
exclusive. Label files are ``train.txt``/``val.txt``/``test.txt`` or the official
``train_COVIDx_CT-2A.txt``/...; images lie next to them or in a subfolder (``images/``,
``2A_images/``, ...).

Several folders ("sources", e.g. cohorts) load as one dataset: their splits are concatenated and
every sample keeps the name of its source, so metrics can be reported per source.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from evaluators.data.classes import CLASS_NAMES, CLASSES_FILE, NUM_CLASSES
from space.errors import UserInputError

SPLITS = ("train", "val", "test")

_LABEL_FILE = re.compile(r"^(train|val|test)(_.+)?\.txt$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PROBE = 20  # filenames tried when choosing the image folder


class DatasetError(UserInputError, ValueError):
    """Bad data: the message names the file and, for a label line, the line number."""


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        source: name of the data folder it came from (unique within a dataset).
        path: the image file.
        filename: the name as written in the label file.
        label: class index into ``CLASS_NAMES``.
        box: ``(xmin, ymin, xmax, ymax)``, min inclusive, max exclusive, in image pixels.
        label_file: the label file that lists it.
        line: its 1-based line number there.
    """

    source: str
    path: Path
    filename: str
    label: int
    box: tuple[int, int, int, int]
    label_file: Path
    line: int


@dataclass(frozen=True)
class CTDataset:
    """The splits of one or more data folders, concatenated in the order the folders were given.

    Attributes:
        splits: ``"train"``, ``"val"``, ``"test"`` (those loaded) to their samples.
        sources: source names, in order.
        skipped: one message per line skipped with ``skip_bad``.
        split_hash: SHA-256 over the label-file contents of all sources (provenance).
        dirs: the data folder of each source.
        label_files: per source, per split, the label file read.
        class_names: the classes' names for display, in label order: the data folders'
            ``classes.txt`` where they have one (they must agree), else COVIDx CT's.
    """

    splits: dict[str, tuple[Sample, ...]]
    sources: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    split_hash: str = ""
    dirs: tuple[Path, ...] = ()
    label_files: dict[str, dict[str, Path]] = field(default_factory=dict)
    class_names: tuple[str, ...] = CLASS_NAMES

    def split(self, name: str) -> tuple[Sample, ...]:
        """The samples of split ``name`` (a ``DatasetError`` naming the loaded ones otherwise)."""
        if name not in self.splits:
            raise DatasetError(f"split must be one of {', '.join(self.splits)}, got {name!r}")
        return self.splits[name]

    def class_counts(self, split: str, source: str | None = None) -> tuple[int, ...]:
        """Images per class in ``split`` (of one ``source``, or of all)."""
        counts = [0] * NUM_CLASSES
        for s in self.split(split):
            if source is None or s.source == source:
                counts[s.label] += 1
        return tuple(counts)

    def summary(self) -> dict[str, Any]:
        """A JSON-safe description: sources, folders, counts per split and class, hash, skips."""
        return {
            "sources": {
                name: {
                    "dir": str(d),
                    "counts": {sp: list(self.class_counts(sp, name)) for sp in self.splits},
                }
                for name, d in zip(self.sources, self.dirs)
            },
            "counts": {sp: list(self.class_counts(sp)) for sp in self.splits},
            "class_names": list(self.class_names),
            "split_hash": self.split_hash,
            "skipped": list(self.skipped),
        }


DEFAULT_DATA_ENV = "COVIDNET_NAS_DEFAULT_DATA"


def bundled_dir(name: str = "ct-sars") -> Path:
    """A dataset shipped with the package: ``ct-sars`` (2,481 slices at most 128 px, the default)
    or ``ct-sars-mini`` (215 of them, for tests); both CC BY-NC-SA 4.0 (see their LICENSE)."""
    return Path(__file__).resolve().parent / "bundled" / name


def default_data_dir() -> Path:
    """The data used when no ``--data`` is given: ``$COVIDNET_NAS_DEFAULT_DATA`` if set (a site's
    own default; the test suite points it at ``ct-sars-mini``), else the bundled ``ct-sars``."""
    import os

    env = os.environ.get(DEFAULT_DATA_ENV)
    return Path(env) if env else bundled_dir("ct-sars")


@dataclass
class _Source:
    name: str
    shown_dir: Path  # the folder as the user wrote it, for messages
    dir: Path
    label_files: dict[str, Path]
    variant: str


def _find_label_files(path: Path, splits: Sequence[str]) -> tuple[Path, dict[str, Path], str]:
    """The folder, its label file per split and the variant suffix (``_COVIDx_CT-2A`` or "")."""
    if path.is_file():
        m = _LABEL_FILE.match(path.name)
        if not m:
            raise DatasetError(
                f"{path}: not a label file (expected a name like train.txt or train_COVIDx_CT-2A.txt)"
            )
        folder, wanted, shown = path.parent.absolute(), m.group(2) or "", path.parent
    elif path.is_dir():
        folder, wanted, shown = path.absolute(), None, path
    else:
        raise DatasetError(f"{path}: no such data folder")
    variants: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = _LABEL_FILE.match(p.name)
        if m and p.is_file():
            variants.setdefault(m.group(2) or "", {})[m.group(1)] = p
    if wanted is not None:
        candidates = {wanted: variants.get(wanted, {})}
    else:
        candidates = variants
    complete = {v: files for v, files in candidates.items() if all(s in files for s in splits)}
    if len(complete) == 1:
        ((variant, files),) = complete.items()
        return folder, {s: files[s] for s in splits}, variant
    if len(complete) > 1:
        names = ", ".join(f"train{v}.txt" for v in complete)
        example = shown / f"train{next(iter(complete))}.txt"
        raise DatasetError(f"{shown}: several label-file sets ({names}); choose one with --data {example}")
    if not candidates or not any(candidates.values()):
        raise DatasetError(
            f"{shown}: no label files (expected train.txt, val.txt, test.txt or "
            f"train_*.txt, val_*.txt, test_*.txt)"
        )
    variant, files = max(candidates.items(), key=lambda kv: len(kv[1]))
    missing = [f"{s}{variant}.txt" for s in splits if s not in files]
    raise DatasetError(f"{shown}: missing label file {', '.join(missing)}")


def _image_folders(folder: Path, variant: str) -> list[Path]:
    """Where images may lie, most likely first: the folder itself, ``images/``, ``2A_images/``..."""
    short = variant.rsplit("-", 1)[-1].lstrip("_") if variant else ""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    first = [folder / "images"] + ([folder / f"{short}_images"] if short else [])
    named = [p for p in subdirs if p.name.endswith("images") and p not in first]
    rest = [p for p in subdirs if p not in first and p not in named]
    return [folder, *[p for p in first if p.is_dir()], *named, *rest]


def _choose_image_folder(folder: Path, variant: str, filenames: Iterable[str]) -> Path:
    probe = [f for f in filenames if _escapes(f) is None][:_PROBE]
    best, hits = folder, 0
    for cand in _image_folders(folder, variant):
        n = sum(1 for f in probe if (cand / f).is_file())
        if n > hits:
            best, hits = cand, n
        if hits == len(probe):
            break
    return best


def _escapes(filename: str) -> str | None:
    p = PurePosixPath(filename)
    if not filename or p.is_absolute() or filename.startswith("\\") or ".." in p.parts:
        return f"image path {filename!r} escapes the data folder"
    return None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header; ``OSError`` if it cannot be read.

    A PNG must also end with its IEND chunk, which catches truncated files without decoding; the
    size and pixel format must pass ``evaluators.data.images`` (8-bit, at most 4096 x 4096).
    """
    from evaluators.data.images import open_image

    with path.open("rb") as f:
        head = f.read(8)
        if head == _PNG_SIGNATURE:
            f.seek(0, 2)
            if f.tell() < 12 + 8:
                raise OSError("truncated PNG")
            f.seek(-12, 2)
            if f.read(12) != _PNG_TRAILER:
                raise OSError("truncated PNG (no IEND chunk at the end)")
        f.seek(0)
        with open_image(f) as img:
            w, h = img.size
    if w < 1 or h < 1:
        raise OSError(f"image has no pixels ({w}x{h})")
    return int(w), int(h)


def _inside(path: Path, root_real: Path) -> bool:
    """Whether ``path``, with its links followed, lies inside ``root_real`` (a resolved folder; a
    data folder that is itself a link to another disk is fine)."""
    try:
        path.resolve().relative_to(root_real)
    except ValueError:
        return False
    return True


def _image_check(path: Path, decoded: Any = None) -> tuple[int, int] | str:
    """The image's size, or why it cannot be used (with ``decoded``, an
    ``evaluators.data.images.DecodeChecks``: its pixel data decodes too)."""
    if not path.is_file():
        return "missing"
    try:
        size = image_size(path)
    except OSError as e:
        return str(e.strerror if getattr(e, "strerror", None) else e)
    problem = decoded.check(path) if decoded is not None else None
    return problem if problem else size


CHECKS_VERSION = 2  # 2: the check decodes the pixel data too


def _manifest(paths: Sequence[Path]) -> tuple[str, list[tuple[int, int] | None]]:
    """A SHA-256 over every image's path, size and modification time (``stat``, no open), and
    each image's ``(size, mtime_ns)`` (None where it is missing)."""
    h = hashlib.sha256(f"checks v{CHECKS_VERSION}\n".encode())
    stats: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
        h.update(f"{path}\0{stats[-1]}\n".encode())
    return h.hexdigest(), stats


def checked_images(paths: Sequence[Path], cache_dir: Path | None = None) -> list[tuple[int, int] | str]:
    """``_image_check`` of every path, cached: the results are kept in the image cache folder
    under the manifest hash of the files (path, size, mtime), so a later worker start stats each
    file instead of opening it; any changed, added or removed image changes the hash and checks
    everything again. A cache folder that cannot be written only costs the speed."""
    import json
    import logging
    import os
    import tempfile

    from evaluators.data.cachedir import default_cache_dir

    digest, _ = _manifest(paths)
    folder = (cache_dir or default_cache_dir()) / "checks"
    entry = folder / f"{digest[:32]}.json"
    try:
        stored = json.loads(entry.read_text())
        if stored.get("manifest") == digest and len(stored.get("checks", ())) == len(paths):
            return [tuple(c) if isinstance(c, list) else c for c in stored["checks"]]
    except (OSError, ValueError, AttributeError):
        pass
    from evaluators.data.images import DecodeChecks

    decoded = DecodeChecks(cache_dir)  # each image's pixels decode once (remembered in the cache folder)
    with ThreadPoolExecutor(max_workers=8) as pool:
        checks = list(pool.map(lambda p: _image_check(p, decoded), paths, chunksize=64))
    decoded.save()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=entry.name + ".", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump({"manifest": digest, "checks": checks}, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, entry)
    except OSError as e:
        logging.getLogger(__name__).info("image checks not cached (%s): %s", folder, e)
    return checks


def _parse_line(text: str) -> tuple[str, int, tuple[int, int, int, int]] | str:
    """``(filename, label, box)`` of one label line, or the problem with it."""
    parts = text.split()
    if len(parts) != 6:
        return f"expected 6 fields (filename class xmin ymin xmax ymax), got {len(parts)}"
    filename, *numbers = parts
    values = []
    for name, v in zip(("class", "xmin", "ymin", "xmax", "ymax"), numbers):
        if not re.fullmatch(r"[+-]?\d+", v):
            return f"{name} must be an integer, got {v!r}"
        values.append(int(v))
    label, *box = values
    if not 0 <= label < NUM_CLASSES:
        return f"class must be 0, 1 or 2, got {label}"
    xmin, ymin, xmax, ymax = box
    if xmax <= xmin or ymax <= ymin:
        return (
            f"box ({xmin}, {ymin}, {xmax}, {ymax}) is empty: xmax must be greater than xmin "
            f"and ymax greater than ymin"
        )
    if xmin < 0 or ymin < 0:
        return f"box ({xmin}, {ymin}, {xmax}, {ymax}) has a negative coordinate"
    escape = _escapes(filename)
    if escape:
        return escape
    return filename, label, (xmin, ymin, xmax, ymax)


def _unique_names(folders: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for folder in folders:
        base = folder.name or "data"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def load_dataset(
    dirs: Sequence[str | Path] | str | Path | None = None,
    *,
    skip_bad: bool = False,
    splits: Sequence[str] = SPLITS,
) -> CTDataset:
    """Read and check the label files and images of one or more COVIDx-CT-format folders.

    Every problem names the label file and line: a malformed line, a class outside 0-2, an empty
    box or one outside the image, a missing or unreadable image, a path escaping the data folder,
    the same image listed twice (in one split or in two); and an empty split names its file.

    Args:
        dirs: data folders (or one label file each, e.g. ``.../train_COVIDx_CT-2A.txt``, to pick
            one of several label-file sets); ``None`` for the bundled default data.
        skip_bad: skip bad lines instead of failing; each skip is listed in ``skipped``.
        splits: the splits to load (all three by default).

    Raises:
        DatasetError: the first problem found, with the number of further bad lines.
    """
    if dirs is None:
        dirs = [default_data_dir()]
    elif isinstance(dirs, (str, Path)):
        dirs = [dirs]
    if not dirs:
        raise DatasetError("no data folders given")
    bad_split = [s for s in splits if s not in SPLITS]
    if bad_split or not splits:
        raise DatasetError(f"splits must be among train, val, test, got {list(splits)!r}")
    splits = tuple(dict.fromkeys(splits))

    found = []
    for d in dirs:
        shown = Path(d).expanduser()
        folder, files, variant = _find_label_files(shown, splits)
        found.append((shown, folder, files, variant))
    seen: dict[tuple[Path, ...], Path] = {}
    for shown, _, files, _ in found:
        key = tuple(f.resolve() for f in files.values())
        if key in seen:
            raise DatasetError(f"{shown}: the same data is given twice (also as {seen[key]})")
        seen[key] = shown
    names = _unique_names([folder for _, folder, _, _ in found])
    sources = [
        _Source(name, shown if shown.is_dir() else shown.parent, folder, files, variant)
        for name, (shown, folder, files, variant) in zip(names, found)
    ]

    class_names = _class_names([src.dir for src in sources], [src.shown_dir for src in sources])
    problems: list[tuple[int, int, int, str]] = []  # (source, split, line, message)
    out: dict[str, list[Sample]] = {s: [] for s in splits}
    digest = hashlib.sha256()
    for i, src in enumerate(sources):
        _load_source(i, src, splits, out, problems, digest)
    messages = [p[3] for p in sorted(problems)]
    if messages and not skip_bad:
        more = f" (and {len(messages) - 1} more bad lines)" if len(messages) > 1 else ""
        raise DatasetError(f"{messages[0]}{more}; --skip-bad skips bad lines")
    for src in sources:
        for split in splits:
            if not any(s.source == src.name for s in out[split]):
                lf = src.label_files[split]
                what = "every line was skipped" if lf.read_bytes().strip() else "no image lines"
                raise DatasetError(f"{src.shown_dir / lf.name}: empty {split} split ({what})")
    return CTDataset(
        splits={s: tuple(out[s]) for s in splits},
        sources=tuple(src.name for src in sources),
        skipped=tuple(messages),
        split_hash=digest.hexdigest(),
        dirs=tuple(src.dir for src in sources),
        label_files={src.name: dict(src.label_files) for src in sources},
        class_names=class_names,
    )


def read_class_names(folder: str | Path, shown: str | Path | None = None) -> tuple[str, ...] | None:
    """The class names of a data folder's ``classes.txt`` (one per line, in label order), or
    ``None`` where it has none.

    Raises:
        DatasetError: naming the file (and line): not UTF-8, not exactly one name per class, a
            name given twice.
    """
    path = Path(folder) / CLASSES_FILE
    where = Path(shown if shown is not None else folder) / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{where}: not UTF-8 text ({e.reason})") from None
    names = []
    for n, line in enumerate(lines, start=1):
        name = " ".join(line.split())
        if not name:
            continue
        if name in names:
            raise DatasetError(f"{where} line {n}: {name!r} names two classes; each class needs its own name")
        names.append(name)
    if len(names) != NUM_CLASSES:
        raise DatasetError(
            f"{where}: expected {NUM_CLASSES} class names, one per line in label order "
            f"(0, 1, 2; e.g. {', '.join(CLASS_NAMES)}), got {len(names)}"
        )
    return tuple(names)


def _class_names(dirs: Sequence[Path], shown: Sequence[Path]) -> tuple[str, ...]:
    """The sources' class names for display: their ``classes.txt`` (all that have one must
    agree), else COVIDx CT's names."""
    found = [(s, n) for d, s in zip(dirs, shown) if (n := read_class_names(d, s)) is not None]
    for s, n in found[1:]:
        if n != found[0][1]:
            raise DatasetError(
                f"{s / CLASSES_FILE} names the classes {', '.join(n)} but {found[0][0] / CLASSES_FILE} "
                f"names them {', '.join(found[0][1])}: sources trained together must name them alike"
            )
    return found[0][1] if found else CLASS_NAMES


def _load_source(
    index: int,
    src: _Source,
    splits: Sequence[str],
    out: dict[str, list[Sample]],
    problems: list[tuple[int, int, int, str]],
    digest: Any,
) -> None:
    """Parse and check the label files of one source, appending samples and problems."""
    shown_dir = src.shown_dir
    parsed: list[tuple[int, str, Path, int, tuple[str, int, tuple[int, int, int, int]]]] = []
    for k, split in enumerate(splits):
        lf = src.label_files[split]
        raw = lf.read_bytes()
        digest.update(f"{split}\0{len(raw)}\0".encode())
        digest.update(raw)
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the first name
        except UnicodeDecodeError as e:
            raise DatasetError(f"{shown_dir / lf.name}: not UTF-8 text ({e.reason})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            result = _parse_line(line)
            where = f"{shown_dir / lf.name} line {n}"
            if isinstance(result, str):
                problems.append((index, k, n, f"{where}: {result}"))
            else:
                parsed.append((k, split, lf, n, result))

    root = _choose_image_folder(src.dir, src.variant, (p[4][0] for p in parsed))
    paths = [root / p[4][0] for p in parsed]
    checks = checked_images(paths)

    shown_root = shown_dir / root.relative_to(src.dir)
    root_real = root.resolve()
    first_seen: dict[str, str] = {}
    for (k, split, lf, n, (filename, label, box)), path, check in zip(parsed, paths, checks):
        where = f"{shown_dir / lf.name} line {n}"
        problem = None
        if check == "missing":
            problem = f"image {filename} not found in {shown_root}"
        elif not _inside(path, root_real):
            # a symbolic link out of the data folder: refused as a textual escape ("../") is
            problem = f"image path {filename!r} is a link out of the data folder ({path.resolve()})"
        elif isinstance(check, str):
            problem = f"image {filename} is unreadable: {check}"
        elif box[2] > check[0] or box[3] > check[1]:
            w, h = check
            problem = (
                f"box {box} lies outside the {w}x{h} image {filename} (xmax at most {w}, ymax at most {h})"
            )
        else:
            key = str(PurePosixPath(filename))
            if key in first_seen:
                problem = f"image {filename} is already listed in {first_seen[key]}"
            else:
                first_seen[key] = where
        if problem:
            problems.append((index, k, n, f"{where}: {problem}"))
            continue
        first_seen[key] = where
        out[split].append(Sample(src.name, path, filename, label, box, lf, n))
