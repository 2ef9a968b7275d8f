"""Rebuild a bundled dataset (ct-sars, the default; ct-sars-mini, for tests) from the full ct-sars set.

The SARS-CoV-2 CT-scan dataset (Soares et al., 2020) in the COVIDx CT layout: up to
``--per-group`` slices of every group of ``ct-sars/groups.csv`` (all of them by default), evenly
spaced in scan order, each group staying in the split ct-sars gave it (so no group, i.e. no
approximate patient, is in two splits), images downscaled with Lanczos to a longer side of at most
128 px and boxes scaled to match; ``patients.csv`` names each image's group as its patient.

Usage (from the repository root)::

    python evaluators/data/bundled/make_bundled.py --source ../shared/data/ct-sars \
        --out evaluators/data/bundled/ct-sars
    python evaluators/data/bundled/make_bundled.py --source ../shared/data/ct-sars \
        --out evaluators/data/bundled/ct-sars-mini --per-group 3

Needs only Pillow. Writes ``images/``, ``train.txt``, ``val.txt``, ``test.txt``, ``groups.csv``
and ``patients.csv`` into ``--out`` (its README, LICENSE and CITATION.cff are kept).
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image

MAX_SIDE = 128
SPLITS = ("train", "val", "test")


def _pick(rows: list[dict[str, str]], k: int) -> list[dict[str, str]]:
    """``k`` rows evenly spaced over ``rows`` (all of them when there are at most ``k``)."""
    if len(rows) <= k:
        return rows
    step = len(rows) / k
    return [rows[int(step * i + step / 2)] for i in range(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="the full ct-sars folder")
    parser.add_argument("--out", type=Path, required=True, help="the bundled folder to (re)write")
    parser.add_argument("--per-group", type=int, default=0, help="slices kept per group (default 0: all)")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with (args.source / "groups.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)

    images = out / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    kept: list[dict[str, object]] = []
    for gid in sorted(groups, key=int):
        members = sorted(groups[gid], key=lambda r: int(r["source_number"]))
        (split,) = {r["split"] for r in members}  # ct-sars keeps a group in one split
        for r in _pick(members, args.per_group) if args.per_group else members:
            img = Image.open(args.source / "images" / r["file"]).convert("L")
            w, h = img.size
            scale = min(1.0, MAX_SIDE / max(w, h))
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.LANCZOS)
            sx, sy = nw / w, nh / h
            box = (
                math.floor(int(r["xmin"]) * sx),
                math.floor(int(r["ymin"]) * sy),
                min(nw, math.ceil(int(r["xmax"]) * sx)),
                min(nh, math.ceil(int(r["ymax"]) * sy)),
            )
            img.save(images / r["file"], optimize=True)
            lines[split].append(f"{r['file']} {r['class']} {' '.join(map(str, box))}")
            kept.append(
                {
                    "file": r["file"],
                    "class": r["class"],
                    "split": split,
                    "group": gid,
                    "source_file": r["source_file"],
                    "source_number": r["source_number"],
                    "xmin": box[0],
                    "ymin": box[1],
                    "xmax": box[2],
                    "ymax": box[3],
                }
            )
    for split in SPLITS:
        (out / f"{split}.txt").write_text("".join(line + "\n" for line in lines[split]))
    # class 0 of CT-SARS is "non-COVID" (patients with other lung diseases), not "Normal"
    (out / "classes.txt").write_text("non-COVID\nPneumonia\nCOVID-19\n")
    with (out / "groups.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    with (out / "patients.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "patient"])
        for k in kept:
            kind = "covid" if str(k["class"]) == "2" else "noncovid"
            writer.writerow([k["file"], f"{kind}-group-{k['group']}"])
    for split in SPLITS:
        labels = [line.split()[1] for line in lines[split]]
        print(f"{split}: {len(labels)} images, class 0: {labels.count('0')}, class 2: {labels.count('2')}")


if __name__ == "__main__":
    main()
