"""A synthetic COVIDx-CT-format dataset of any size: gray PNG slices with a body box each.

Each image is a bright ellipse (the body) on a dark background with smooth texture, written in
parallel processes; label files ``train.txt`` / ``val.txt`` / ``test.txt`` list
``file class xmin ymin xmax ymax`` (80 / 10 / 10 %, the three classes in turn).

    python -m benchmarks.make_synthetic_covidx --out /tmp/syn --count 20000 --size 512
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _image(args: tuple[Path, int, int]) -> tuple[str, tuple[int, int, int, int]]:
    folder, i, size = args
    from PIL import Image

    rng = np.random.default_rng(i)
    low = rng.random((size // 16, size // 16)).astype(np.float32)
    texture = np.asarray(
        Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    )
    y, x = np.mgrid[0:size, 0:size]
    cx, cy = size / 2 + rng.uniform(-0.05, 0.05) * size, size / 2 + rng.uniform(-0.05, 0.05) * size
    rx, ry = size * rng.uniform(0.3, 0.42), size * rng.uniform(0.25, 0.38)
    body = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    img = np.where(body, 90 + texture * 0.5, 10 + texture * 0.05).astype(np.uint8)
    name = f"syn_{i:06d}.png"
    Image.fromarray(img).save(folder / name, compress_level=1)
    box = (int(cx - rx), int(cy - ry), int(cx + rx) + 1, int(cy + ry) + 1)
    return name, tuple(max(0, min(size, v)) for v in box)  # type: ignore[return-value]


def make(out: Path, count: int, size: int, processes: int = 2) -> Path:
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(processes) as pool:
        rows = list(pool.map(_image, [(images, i, size) for i in range(count)], chunksize=64))
    n_train, n_val = int(count * 0.8), int(count * 0.1)
    parts = {"train": rows[:n_train], "val": rows[n_train : n_train + n_val], "test": rows[n_train + n_val :]}
    for split, part in parts.items():
        lines = [f"{name} {k % 3} {b[0]} {b[1]} {b[2]} {b[3]}\n" for k, (name, b) in enumerate(part)]
        (out / f"{split}.txt").write_text("".join(lines))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args(argv)
    make(args.out, args.count, args.size, args.processes)
    print(f"{args.count} images of {args.size} px in {args.out}")


if __name__ == "__main__":
    main()
