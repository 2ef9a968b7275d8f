"""Source-held-out evaluation (``CVConfig(by="source")``) on two synthetic sources.

Source ``a`` (three times the images of ``b``): a COVID-19 image is bright, a normal one dark, so
brightness alone predicts the class there. Source ``b``: every image has the same mid brightness,
so brightness says nothing there. In both, the class also shows as which half of the image is brighter,
but only in 65 % of the images of each class (the rest show the other half brighter).

Two models that can each see only one cue: ``shortcut`` sees the mean brightness alone, ``real``
sees the image with its mean subtracted (no brightness). Validated in-source (pooled val of both
sources), the shortcut wins: about (3 x 100 + 50) / 4 = 87.5 % against 65 %. Held out by source,
it cannot carry its cue to the other source and scores at or below chance (it answers one class
for every image of the held-out source), while the real cue
still gives about 65 %: the source-held-out figure prefers the model that will hold up elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evaluators.data.covidx import load_dataset
from evaluators.runs import CVConfig, RunsResult, evaluate_runs
from evaluators.settings import ConfigError
from evaluators.training import TrainConfig

SIZE = 32


def _write_source(root: Path, name: str, per_class: dict[str, int], brightness_is_cue: bool) -> Path:
    from PIL import Image

    folder = root / name
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    for split, n in per_class.items():
        lines = []
        for label in (0, 2):
            for i in range(n):
                covid = label == 2
                left_brighter = covid if i < round(0.65 * n) else not covid
                base = (150.0 if covid else 90.0) if brightness_is_cue else 120.0
                img = np.full((SIZE, SIZE), base) + rng.normal(0, 4, (SIZE, SIZE))
                half = slice(0, SIZE // 2) if left_brighter else slice(SIZE // 2, SIZE)
                img[:, half] += 20.0
                fname = f"{name}_{split}_{label}_{i}.png"
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / fname)
                lines.append(f"{fname} {label} 0 0 {SIZE} {SIZE}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


class _Shortcut(nn.Module):
    """Sees only the mean gray level of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x.mean((1, 2, 3)).unsqueeze(1) - 0.47) * 10)


class _Real(nn.Module):
    """Sees the left-half and right-half means with the image's own mean subtracted."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(1)
        g = g - g.mean((1, 2), keepdim=True)
        halves = torch.stack([g[:, :, : SIZE // 2].mean((1, 2)), g[:, :, SIZE // 2 :].mean((1, 2))], 1)
        return self.fc(halves * 20)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sources")
    return [
        _write_source(root, "a", {"train": 60, "val": 60, "test": 2}, brightness_is_cue=True),
        _write_source(root, "b", {"train": 20, "val": 20, "test": 2}, brightness_is_cue=False),
    ]


CFG = TrainConfig(
    epochs=6,
    image_size=SIZE,
    lr=0.2,
    batch_size=16,
    augment=False,
    patience=0,
    keep="last",
    device="cpu",
    evaluate_test=False,
)


def _score(model_cls: type[nn.Module], dirs: list[Path], cv: CVConfig, tmp_path: Path) -> RunsResult:
    ds = load_dataset(dirs)
    return evaluate_runs(lambda seed: model_cls(), ds, CFG, cv, cache_dir=tmp_path / "cache")


def test_in_source_prefers_the_shortcut_held_out_source_does_not(
    two_sources: list[Path], tmp_path: Path
) -> None:
    plain = {m: _score(m, two_sources, CVConfig(), tmp_path) for m in (_Shortcut, _Real)}
    held = {m: _score(m, two_sources, CVConfig(by="source"), tmp_path) for m in (_Shortcut, _Real)}
    # in-source: the shortcut model wins clearly (it is perfect on the larger source)
    assert plain[_Shortcut].accuracy.mean > plain[_Real].accuracy.mean + 10
    assert plain[_Shortcut].accuracy.mean > 80
    # held out by source: the shortcut is near chance on each source, the real cue holds
    short, real = held[_Shortcut], held[_Real]
    assert set(short.held_out) == {"a", "b"}
    for u in short.held_out.values():
        assert u.mean <= 55 and len(u.values) == 1 and u.ci is not None
    for u in real.held_out.values():
        assert u.mean >= 58
    assert real.accuracy.mean > short.accuracy.mean + 8
    # the stored accuracy is the mean over held-out sources; per-source values are stored
    assert short.accuracy.mean == pytest.approx(np.mean([u.mean for u in short.held_out.values()]))
    d = short.cv_dict(CVConfig(by="source"))
    assert set(d["held_out"]) == {"a", "b"} and d["by"] == "source"
    assert d["optimised"] == "mean of held-out sources"
    assert [r["held_out"] for r in short.runs] == ["a", "b"]
    assert short.fold_sizes == [240, 80]
    # the pooled held-out predictions carry per-source metrics
    assert set(short.val.per_source) == {"a", "b"}


def test_worst_score_and_repeats(two_sources: list[Path], tmp_path: Path) -> None:
    res = _score(_Real, two_sources, CVConfig(by="source", score="worst", repeats=2), tmp_path)
    assert len(res.runs) == 4 and [r["seed"] for r in res.runs] == [0, 0, 1, 1]
    worst = min(u.mean for u in res.held_out.values())
    assert res.accuracy.mean == pytest.approx(worst) and res.score == "worst"
    assert all(len(u.values) == 2 and u.method == "t over 2 runs" for u in res.held_out.values())


def test_source_folds_need_two_sources_and_no_patient_folds(two_sources: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs at least two --data sources, got 1"):
        _score(_Real, two_sources[:1], CVConfig(by="source"), tmp_path)
    with pytest.raises(ConfigError, match="cv_folds must stay 1"):
        CVConfig(by="source", folds=3)
    with pytest.raises(ConfigError, match="cv_score must be one of mean, worst"):
        CVConfig(score="best")
