"""``search data prepare``: CT scans (DICOM series, NIfTI volumes) to a COVIDx CT dataset;
``search data cache``: decode a dataset into the memory-mapped image cache, once per node."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from search.console import console, print_table
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare datasets in the COVIDx CT format")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    dsub.required = True

    q = dsub.add_parser(
        "prepare",
        help="DICOM series and NIfTI volumes + a labels CSV -> PNG slices, boxes, patient splits",
        description=(
            "Read every DICOM series (one folder per series, patients as top-level folders) and NIfTI "
            "volume under --scans, window the axial slices to 8-bit PNGs, find each slice's body box "
            "and write train.txt/val.txt/test.txt in the COVIDx CT format, split by patient."
        ),
    )
    q.add_argument(
        "--scans", type=Path, required=True, metavar="DIR", help="one folder or .nii(.gz) per patient"
    )
    q.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="CSV",
        help="columns patient and/or scan, and class (normal, pneumonia, covid-19 or 0-2)",
    )
    q.add_argument("--out", type=Path, required=True, metavar="DIR", help="the dataset folder to write")
    q.add_argument(
        "--window-level", type=float, default=-600.0, metavar="HU", help="HU window level (default -600)"
    )
    q.add_argument(
        "--window-width", type=float, default=1500.0, metavar="HU", help="HU window width (default 1500)"
    )
    pick = q.add_mutually_exclusive_group()
    pick.add_argument("--slice-step", type=int, default=1, metavar="K", help="every K-th slice (default 1)")
    pick.add_argument("--slices-csv", type=Path, metavar="CSV", help="only these slices: columns scan, slice")
    q.add_argument(
        "--min-lung-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="drop slices whose body is less than F air/lung, e.g. 0.05 (default 0: keep all)",
    )
    q.add_argument(
        "--split",
        default="0.7,0.15,0.15",
        metavar="T,V,T",
        help="train,val,test shares (default 0.7,0.15,0.15)",
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the patient split (default 0)")
    q.add_argument("--size", type=int, metavar="N", help="resize slices to N x N (default: keep their size)")
    q.add_argument(
        "--skip-bad", action="store_true", help="leave bad input out and list it, instead of stopping"
    )
    q.add_argument("--overwrite", action="store_true", help="replace an --out this command wrote before")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.set_defaults(func=run_prepare)

    c = dsub.add_parser(
        "cache",
        help="decode a dataset into the image cache (once per node, before launching workers)",
        description=(
            "Decode every split of --data at --image-size into the decoded-image cache (a memory-mapped "
            "file per source and split, built a chunk at a time), so that workers started afterwards "
            "only map it. Already cached splits are checked and kept."
        ),
    )
    c.add_argument(
        "--data",
        type=Path,
        action="append",
        metavar="DIR",
        help="dataset folder (repeatable; default: the bundled data)",
    )
    c.add_argument("--image-size", type=int, required=True, metavar="N", help="side of the decoded images")
    c.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="the cache folder (default $COVIDNET_NAS_CACHE or ~/.cache/covidnet-nas)",
    )
    c.add_argument(
        "--splits", default="train,val,test", metavar="S,S", help="splits to decode (default train,val,test)"
    )
    c.add_argument(
        "--workers", type=int, metavar="N", help="decoding threads (default: CPU count, at most 8)"
    )
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    import time

    from evaluators.data.cache import default_cache_dir, load_arrays
    from evaluators.data.covidx import SPLITS, load_dataset

    splits = [t.strip() for t in args.splits.split(",") if t.strip()]
    bad = [t for t in splits if t not in SPLITS]
    if bad or not splits:
        raise UsageError(f"--splits must name some of {', '.join(SPLITS)}, got {args.splits!r}")
    if args.image_size < 8:
        raise UsageError(f"--image-size must be at least 8, got {args.image_size}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    dataset = load_dataset(args.data or None)
    folder = args.cache_dir or default_cache_dir()
    rows, out = [], []
    for split in splits:
        t = time.perf_counter()
        arr = load_arrays(
            dataset, split, args.image_size, cache_dir=folder, workers=args.workers, progress=True
        )
        files = [f.with_suffix(".canvas") for f in arr.cache_files]
        size = sum(f.stat().st_size for f in files)
        seconds = time.perf_counter() - t
        state = "cached already" if arr.from_cache else "decoded"
        rows.append([split, len(arr), f"{size / 1e6:,.1f} MB", state, f"{seconds:.1f} s"])
        out.append(
            {
                "split": split,
                "images": len(arr),
                "bytes": size,
                "decoded": not arr.from_cache,
                "seconds": round(seconds, 2),
                "files": [str(f) for f in files],
            }
        )
    if args.json:
        print(json.dumps({"image_size": args.image_size, "cache_dir": str(folder), "splits": out}, indent=2))
        return 0
    print_table(
        f"image cache at {args.image_size} px in {folder}", ["split", "images", "size", "state", "time"], rows
    )
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from evaluators.data.prepare.pipeline import PrepareConfig, parse_split, prepare_dataset
    from evaluators.extras import MissingExtraError

    config = PrepareConfig(
        scans=args.scans,
        labels=args.labels,
        out=args.out,
        window_level=args.window_level,
        window_width=args.window_width,
        slice_step=args.slice_step,
        slices_csv=args.slices_csv,
        split=parse_split(args.split),
        seed=args.seed,
        size=args.size,
        min_lung_fraction=args.min_lung_fraction,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
    )
    try:
        if args.quiet or args.json:
            summary = prepare_dataset(config)
        else:
            summary = _with_progress(config, prepare_dataset)
    except MissingExtraError as e:
        raise UsageError(str(e)) from e
    d = summary.to_dict()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print_summary(d, config.out)
    return 0


def _with_progress(config: Any, prepare: Any) -> Any:
    from search.console import progress_bar

    with progress_bar(stderr=True) as bar:
        task = bar.add_task("preparing", total=None)

        def report(done: int, total: int, scan_id: str) -> None:
            bar.update(task, completed=done, total=total, description=f"preparing {scan_id}")

        return prepare(config, progress=report)


def print_summary(d: dict[str, Any], out: Path) -> None:
    """The counts table and what was dropped, skipped and ignored."""
    splits = [s for s in ("train", "val", "test") if s in d["label_files"]]
    rows = []
    for key in (*d["classes"], "total"):
        row: list[Any] = [key]
        for split in (*splits, "all"):
            c = d["counts"][split][key]
            row.append(f"{c['patients']} / {c['scans']} / {c['slices']}")
        rows.append(row)
    print_table("patients / scans / slices by class and split", ["class", *splits, "all"], rows)
    window, dropped = d["window"], d["dropped_slices"]
    files = ", ".join([*d["label_files"].values(), "summary.json"])
    con = console()
    con.print(
        f"window level {window['level']:g} HU, width {window['width']:g} HU; dropped slices: "
        f"{dropped['no_body']} without a body, {dropped['little_lung']} with little lung",
        markup=False,
        soft_wrap=True,
    )
    con.print(f"wrote {out}: images/, {files}", markup=False, soft_wrap=True)
    for title, items in (
        ("skipped", [f"{s['item']}: {s['reason']}" for s in d["skipped"]]),
        ("warnings", d["warnings"]),
    ):
        if items:
            con.print(f"{title} ({len(items)}):")
            for item in items:
                con.print(f"  {item}", markup=False, soft_wrap=True)
    if d["ignored_files"]:
        con.print(f"not read (sidecar files): {len(d['ignored_files'])}, listed in summary.json")
