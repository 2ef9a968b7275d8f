"""Intensity harmonisation (``--harmonise``): the maps themselves, and one setting applied the same
way by training, ``search evaluate --model``, ``search predict`` and the exported ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from evaluators.data.harmonise import HARMONISE, apply, harmonise_pixels, luts, reference

BUNDLED = Path(__file__).resolve().parents[2] / "evaluators" / "data" / "bundled" / "ct-sars-mini"


def _images(n: int) -> list[str]:
    return [str(p) for p in sorted((BUNDLED / "images").glob("*.png"))[:: 215 // n][:n]]


# ------------------------------------------------------------------------- the maps
def test_standardise_puts_the_box_mean_at_mid_gray_and_ignores_brightness() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(40, 120, (2, 16, 16)).astype(np.uint8)
    img[1] = img[0] + 60  # the same picture, brighter
    out = harmonise_pixels(img, "standardise").astype(float)
    assert abs(out[0].mean() - 128) < 1.5
    assert np.array_equal(out[0], out[1])  # a brightness shift is gone


@pytest.mark.parametrize("method", ["equalise", "match"])
def test_histogram_methods_undo_a_monotone_contrast_change(method: str) -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 200, (1, 32, 32)).astype(np.float64)
    img = np.concatenate([base, np.sqrt(base / 200) * 120 + 30]).round().astype(np.uint8)
    out = harmonise_pixels(img, method).astype(float)
    # a monotone map of gray levels changes nothing that equalisation or matching sees
    assert np.abs(out[0] - out[1]).mean() < 4
    if method == "equalise":
        assert out[0].min() == 0 and out[0].max() == 255


def test_match_maps_the_reference_onto_itself() -> None:
    ref = reference().numpy()
    img = np.interp(np.linspace(0, 1, 64 * 64), np.linspace(0, 1, len(ref)), ref).round()
    img = img.astype(np.uint8).reshape(1, 64, 64)
    out = harmonise_pixels(img, "match")
    assert np.abs(out.astype(float) - img).mean() < 3


def test_only_the_box_decides_the_map() -> None:
    from evaluators.data.cache import SplitArrays
    from evaluators.data.harmonise import harmonise_arrays

    rng = np.random.default_rng(2)
    canvas = torch.from_numpy(rng.integers(0, 256, (2, 12, 12)).astype(np.uint8))
    canvas[1, 2:10, 2:10] = canvas[0, 2:10, 2:10]  # same box (margin 2, size 8), other border
    arr = SplitArrays(
        canvas,
        torch.zeros(2, 4, dtype=torch.int32),
        torch.tensor([10, 200], dtype=torch.uint8),
        torch.zeros(2, dtype=torch.long),
        ("a", "a"),
        ("x", "y"),
        8,
        2,
    )
    for method in HARMONISE:
        out = harmonise_arrays(arr, method)
        assert torch.equal(out.images[0], out.images[1]), method
        table = luts(arr.images, method)
        assert torch.equal(out.exterior, apply(arr.exterior.view(-1, 1), table).view(-1))
        assert torch.equal(out.images, torch.from_numpy(harmonise_pixels(arr.images.numpy(), method)))
    with pytest.raises(ValueError, match="harmonise must be one of none, standardise"):
        harmonise_pixels(arr.images.numpy(), "zscore")


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    pytest.importorskip("onnxruntime")
    from search.cli import main

    root = tmp_path_factory.mktemp("harm")
    mp = pytest.MonkeyPatch()
    mp.setenv("COVIDNET_NAS_CACHE", str(root / "cache"))
    out = root / "run"
    argv = ["--quiet", "run", "--trials", "1", "--epochs", "1", "--image-size", "32"]
    argv += ["--complexity-size", "32", "--batch-size", "16", "--data", str(BUNDLED), "--device", "cpu"]
    assert (
        main([*argv, "--harmonise", "equalise", "--exterior-exclusion", "--out", str(out), "--study", "h"])
        == 0
    )
    exp = root / "exp"
    args = ["export", "--out", str(out), "--study", "h", "--pick", "best-netscore", "--export-dir", str(exp)]
    assert main([*args, "--latency-repeats", "0"]) == 0
    study = optuna.load_study(study_name="h", storage=f"sqlite:///{out / 'study.db'}")
    yield {"folder": exp, "trial": study.trials[0]}
    mp.undo()


def test_the_setting_is_stored_in_the_config_the_card_and_the_onnx_model(exported: dict) -> None:
    from evaluators.inference import onnx_classifier

    trial, folder = exported["trial"], exported["folder"]
    assert trial.user_attrs["train_config"]["harmonise"] == "equalise"
    card = json.loads((folder / "model.json").read_text())
    assert (
        card["input"]["harmonise"] == "equalise" and "harmonise (equalise" in card["input"]["preprocessing"]
    )
    assert onnx_classifier(folder / "model.onnx").harmonise == "equalise"


def test_predict_and_onnx_inference_apply_it_identically(
    exported: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from evaluators.inference import body_box, crop_resize, load_gray, softmax, to_input
    from search.cli import main
    from search.export.load import build_from

    folder = exported["folder"]
    files = _images(8)
    got = {}
    for name in ("model.onnx", "spec.json"):
        capsys.readouterr()
        assert main(["predict", "--json", "--model", str(folder / name), *files]) == 0
        got[name] = json.loads(capsys.readouterr().out)
    onnx_p = np.array([list(g["probabilities"].values()) for g in got["model.onnx"]])
    torch_p = np.array([list(g["probabilities"].values()) for g in got["spec.json"]])
    assert np.abs(onnx_p - torch_p).max() < 1e-4
    # and both are the harmonised model: PyTorch by hand on equalised crops
    model = build_from(json.loads((folder / "spec.json").read_text()))
    model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    model.eval()
    raw = np.stack([crop_resize(f, body_box(load_gray(f)), 32) for f in files])
    with torch.no_grad():
        want = softmax(model(torch.from_numpy(to_input(harmonise_pixels(raw, "equalise"), 3))).numpy())
        plain = softmax(model(torch.from_numpy(to_input(raw, 3))).numpy())
    assert np.abs(onnx_p - want).max() < 1e-4
    assert np.abs(plain - want).max() > 1e-3  # the harmonisation changed what the model sees


def test_evaluate_model_reproduces_the_harmonised_training_metrics(
    exported: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.cli import main

    trial, folder = exported["trial"], exported["folder"]
    for model in (folder / "model.onnx", folder):
        capsys.readouterr()
        assert (
            main(["evaluate", "--model", str(model), "--split", "val", "--json", "--data", str(BUNDLED)]) == 0
        )
        assert json.loads(capsys.readouterr().out) == trial.user_attrs["val_metrics"]


@pytest.mark.parametrize("method", [m for m in HARMONISE if m != "none"])
def test_several_sources_and_subsets_are_harmonised_like_each_alone(tmp_path: Path, method: str) -> None:
    """Two --data sources are an index view over two memory maps (cache.Rows), not one tensor:
    each image is still mapped by its own box's table, as it is when its source is alone."""
    from evaluators.data.cache import concat_arrays, load_arrays
    from evaluators.data.covidx import load_dataset
    from evaluators.data.harmonise import harmonise_arrays
    from tests.evaluators.test_data import lines, write_dataset

    dirs = [
        write_dataset(
            tmp_path / name,
            {"train": lines(4, name), "val": lines(2, name + "v"), "test": lines(2, name + "t")},
        )
        for name in ("a", "b")
    ]
    cache = tmp_path / "cache"
    both = load_arrays(load_dataset(dirs), "train", 32, 1, cache)
    alone = [load_arrays(load_dataset([d]), "train", 32, 1, cache) for d in dirs]
    pooled = harmonise_arrays(concat_arrays([both, both]).subset([0, 5, 7]), method)
    by_source = torch.cat([harmonise_arrays(a, method).canvas for a in alone])
    assert torch.equal(pooled.canvas[:], by_source[[0, 5, 7]])
    assert torch.equal(harmonise_arrays(both, method).canvas[:], by_source)
