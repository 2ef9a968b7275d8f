"""The explainability audit: the measurement by hand, and a check that the audit can fail.

The pair of tests at the end trains two tiny networks on synthetic slices (``explain_cases``): one
on slices whose class is given away by a bright mark in the padding outside the body box, one on
slices whose class is in the body only. The audit must flag the first (attribution mostly outside
the box) and score the second clearly higher inside, with both models accurate.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from baselines import baseline_names
from evaluators.explain import (
    METHODS,
    ExplainError,
    ExplainInput,
    ExplainSummary,
    box_mask,
    explain_images,
    inputs_from_files,
    inputs_from_samples,
    scale_box,
    share_inside,
    smoothing_kernel,
    summarize,
)
from tests.evaluators.explain_cases import BOX, SIZE, make_slices, train_tiny, write_slices

pytest.importorskip("captum")


def test_box_mask_and_share_by_hand() -> None:
    # a 10x10 image with box (2, 2, 8, 8) mapped to a 5x5 input: box (1, 1, 4, 4)
    box = scale_box((2, 2, 8, 8), 10, 10, 5)
    assert box == (1.0, 1.0, 4.0, 4.0)
    mask = box_mask(box, 5)
    assert mask.sum() == 9 and mask[1:4, 1:4].all()
    heat = np.zeros((5, 5))
    heat[2, 2] = 3.0  # inside
    heat[0, 0] = 1.0  # outside
    heat[4, 4] = -5.0  # negative: not counted
    assert share_inside(heat, mask) == pytest.approx(0.75)
    assert share_inside(np.zeros((5, 5)), mask) is None
    # a non-square image: x and y scale separately
    assert scale_box((0, 10, 64, 30), 64, 40, 32) == (0.0, 8.0, 32.0, 24.0)


def test_smoothing_kernel_is_one_stride_32_cell() -> None:
    assert [smoothing_kernel(s) for s in (32, 64, 128, 512)] == [3, 3, 5, 17]


def test_inputs_from_samples_take_classes_in_turn() -> None:
    samples = [
        SimpleNamespace(filename=f"{c}{i}.png", path=Path(f"{c}{i}.png"), box=(0, 0, 4, 4), label=c)
        for c, i in [(2, 0), (2, 1), (2, 2), (0, 0), (2, 3), (0, 1)]
    ]
    picked = [i.name for i in inputs_from_samples(samples, 4)]
    assert picked == ["00.png", "20.png", "01.png", "21.png"]
    assert len(inputs_from_samples(samples)) == 6
    with pytest.raises(ExplainError, match="n must be at least 1"):
        inputs_from_samples(samples, 0)


def test_summary_lists_most_outside_first_and_round_trips(tmp_path: Path) -> None:
    images, labels = make_slices(4, marked=False, seed=3)
    paths = write_slices(tmp_path, images, labels)
    torch.manual_seed(0)
    from space import build
    from tests.evaluators.explain_cases import tiny_spec

    results = explain_images(
        build(tiny_spec(), 3), inputs_from_files(paths, tmp_path / "test.txt"), image_size=SIZE
    )
    summary = summarize(results, SIZE, source="four slices")
    shares = [i["share_inside"] for i in summary.images]
    assert shares == sorted(shares)
    assert summary.n == 4 and summary.mean_box_fraction == pytest.approx(400 / 1024)
    assert ExplainSummary.from_dict(summary.to_dict()) == summary
    assert results[0].to_dict()["box"] == list(BOX)


def test_unreadable_image_and_bad_box_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    from space import build
    from tests.evaluators.explain_cases import tiny_spec

    model = build(tiny_spec(), 3)
    with pytest.raises(ExplainError, match=r"bad\.png: not an image"):
        explain_images(model, [ExplainInput("bad.png", bad, (0, 0, 4, 4))], image_size=SIZE)
    images, labels = make_slices(1, marked=False, seed=0)
    (path,) = write_slices(tmp_path, images, labels)
    with pytest.raises(ExplainError, match=r"box \(0, 0, 40, 40\) does not lie inside the 32x32 image"):
        explain_images(model, [ExplainInput(path.name, path, (0, 0, 40, 40))], image_size=SIZE)
    with pytest.raises(ExplainError, match="method must be one of"):
        explain_images(model, [], image_size=SIZE, method="lime")


# ----------------------------------------------------------------------------- can the audit fail?
@pytest.fixture(scope="module")
def audits(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """Per (data, method): the summary of the audit of a model trained on that data, on 16 held-out
    slices of the same kind."""
    torch.set_num_threads(1)
    out: dict[tuple[str, str], Any] = {}
    for kind in ("marked", "clean"):
        marked = kind == "marked"
        model = train_tiny(*make_slices(128, marked, seed=1))
        folder = tmp_path_factory.mktemp(kind)
        paths = write_slices(folder, *make_slices(16, marked, seed=2))
        inputs = inputs_from_files(paths, folder / "test.txt")
        for method in METHODS:
            out[kind, method] = summarize(explain_images(model, inputs, method=method, image_size=SIZE), SIZE)
    return out


# Measured over training seeds 0-5 (torch 2.14.1, after the batch-norm recalibration in train_tiny):
# every model 100 % accurate; seed 0 (the test's) marked 0.19 / 0.29 share inside with 16/16
# flagged, clean 0.96 / 0.92 with 0/16. The share thresholds hold for seeds 0, 1, 3 and 4; seed 2's
# integrated gradients flag only 8/16 marked images and seed 5's clean model has 0.55 inside.
@pytest.mark.parametrize("method", METHODS)
def test_audit_flags_a_model_that_reads_a_padding_mark(audits: dict, method: str) -> None:
    s = audits["marked", method]
    assert s.accuracy is not None and s.accuracy >= 90  # right decisions ...
    assert s.mean_share_inside < 0.4, s.to_dict()  # ... for the wrong reasons (uniform: 0.39)
    assert s.n_mostly_outside > s.n / 2, s.to_dict()
    assert s.images[0]["share_inside"] < 0.3  # the worst image is listed first


@pytest.mark.parametrize("method", METHODS)
def test_a_model_trained_without_marks_scores_higher_inside(audits: dict, method: str) -> None:
    clean, marked = audits["clean", method], audits["marked", method]
    assert clean.accuracy is not None and clean.accuracy >= 90
    assert clean.mean_share_inside > 0.65, clean.to_dict()
    assert clean.mean_share_inside - marked.mean_share_inside > 0.35
    assert clean.n_mostly_outside < marked.n_mostly_outside
    print(
        f"{method}: share inside, marked {marked.mean_share_inside:.3f} "
        f"({marked.n_mostly_outside}/16 mostly outside), clean {clean.mean_share_inside:.3f} "
        f"({clean.n_mostly_outside}/16); box fraction {clean.mean_box_fraction:.3f}"
    )


@pytest.mark.parametrize("name", baseline_names())
def test_gradcam_runs_on_every_baselines_registered_last_stage(name: str, tmp_path: Path) -> None:
    from baselines import create_baseline, last_conv_stage

    images, labels = make_slices(1, marked=True, seed=0)
    (path,) = write_slices(tmp_path, images, labels)
    torch.manual_seed(0)
    model = create_baseline(name, num_classes=3, in_chans=3)
    (r,) = explain_images(
        model, [ExplainInput(path.name, path, BOX)], image_size=64, layer=last_conv_stage(model, name)
    )
    assert r.heatmap.shape == (64, 64) and (r.heatmap >= 0).all()
    assert r.share_inside is None or 0.0 <= r.share_inside <= 1.0
