from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from evaluators.data.augment import Augmentation, epoch_batches, exclude_exterior, make_batch
from evaluators.data.cache import load_arrays
from evaluators.data.covidx import CTDataset, load_dataset
from evaluators.device import input_channels, resolve_device
from evaluators.training import TrainConfig, TrainResult, train
from space import ArchSpec, BlockSpec, StageSpec, StemSpec, build
from tests.evaluators.test_data_cache import quad_data  # noqa: F401 - fixture

SIZE = 32


def tiny_spec() -> ArchSpec:
    return ArchSpec(
        name="tiny",
        stem=StemSpec(out_channels=8),
        stages=(
            StageSpec((BlockSpec(out_channels=16, mid_channels=8, stride=1),)),
            StageSpec((BlockSpec(out_channels=24, mid_channels=8, stride=2),)),
        ),
    )


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build(tiny_spec())


@pytest.fixture(scope="module")
def data() -> CTDataset:
    return load_dataset()


def quick(**kw: object) -> TrainConfig:
    base = {"epochs": 2, "image_size": SIZE, "device": "cpu", "patience": 0}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


# --- configuration -------------------------------------------------------------------------------


def test_defaults_are_the_papers() -> None:
    c = TrainConfig()
    assert (c.lr, c.momentum, c.weight_decay, c.batch_size) == (5e-4, 0.9, 1e-4, 8)
    assert c.balanced and c.augment and not c.cosine and not c.exterior_exclusion
    assert c.image_size == 512 and c.device == "auto" and c.patience > 0


def test_config_round_trip_and_unknown_keys() -> None:
    c = TrainConfig(epochs=3, cosine=True, seed=7, channels=1)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict({"lr": "1e-3"}).lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ValueError, match="unknown training setting 'epoch'; did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(AttributeError):
        c.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lr": 0}, "lr must be positive, got 0"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"image_size": 100}, "image_size must be a multiple of 32 of at least 32, got 100"),
        ({"patience": -1}, "patience must be 0"),
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"augment": "yes"}, "augment must be true or false"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        ({"channels": 2}, "channels must be 1, 3 or null"),
    ],
)
def test_config_validation(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_input_channels() -> None:
    assert input_channels(tiny_model()) == 3
    assert input_channels(nn.Sequential(nn.Conv2d(1, 4, 3))) == 1


# --- batches -------------------------------------------------------------------------------------


def test_balanced_batches_two_classes() -> None:
    labels = torch.tensor([0] * 20 + [2] * 5)
    batches = epoch_batches(labels, 8, True, torch.Generator().manual_seed(0))
    assert len(batches) == math.ceil(25 / 8)
    for b in batches:
        assert Counter(labels[b].tolist()) == {0: 4, 2: 4}
    drawn = torch.cat(batches)
    minority = Counter(drawn[labels[drawn] == 2].tolist())
    assert set(minority) == set(range(20, 25)) and set(minority.values()) <= {3, 4}  # over-sampled
    majority = drawn[labels[drawn] == 0].tolist()
    assert len(majority) == len(set(majority)) == 16  # no repeats while the class lasts


def test_balanced_batches_three_classes_share_the_remainder() -> None:
    labels = torch.tensor([0] * 30 + [1] * 6 + [2] * 12)
    batches = epoch_batches(labels, 8, True, torch.Generator().manual_seed(1))
    assert len(batches) == 6
    total: Counter[int] = Counter()
    for b in batches:
        c = Counter(labels[b].tolist())
        assert set(c) == {0, 1, 2} and max(c.values()) - min(c.values()) <= 1 and sum(c.values()) == 8
        total.update(c)
    assert total == {0: 16, 1: 16, 2: 16}  # the extra image rotates over the classes


def test_unbalanced_batches_cover_every_image_once() -> None:
    labels = torch.tensor([0] * 12 + [2] * 5)
    batches = epoch_batches(labels, 8, False, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(17))
    assert [b.numel() for b in batches] == [8, 9]  # a last batch of one joins the one before


def test_batches_are_seeded() -> None:
    labels = torch.tensor([0] * 9 + [1] * 4 + [2] * 7)
    a = epoch_batches(labels, 4, True, torch.Generator().manual_seed(5))
    b = epoch_batches(labels, 4, True, torch.Generator().manual_seed(5))
    c = epoch_batches(labels, 4, True, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


# --- augmentation --------------------------------------------------------------------------------

NONE = Augmentation(prob=1.0, jitter=0, rotation=0, shear=0, flip=False, shift=0, scale=0)


def arrays(quad: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_arrays(load_dataset([quad]), "train", SIZE, cache_dir=tmp_path / "c")


def test_augmented_batch_shape_range_and_seed(quad_data: Path, tmp_path: Path) -> None:  # noqa: F811
    a = arrays(quad_data, tmp_path)
    idx = torch.arange(5)

    def batch(seed: int) -> torch.Tensor:
        return make_batch(a, idx, augment=True, generator=torch.Generator().manual_seed(seed))

    x = batch(0)
    assert x.shape == (5, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, batch(0)) and not torch.equal(x, batch(1))
    plain = make_batch(a, idx, augment=False)
    assert torch.equal(plain, a.batch(idx))
    none = make_batch(a, idx, augment=True, generator=torch.Generator(), magnitudes=NONE)
    assert torch.allclose(none, plain)  # zero magnitudes: the box crop itself


def test_flip_and_intensity(quad_data: Path, tmp_path: Path) -> None:  # noqa: F811
    a = arrays(quad_data, tmp_path)
    idx = torch.tensor([4])  # the whole quadrant image: 10 top-left, 240 bottom-right
    flip = Augmentation(prob=1.0, jitter=0, rotation=0, shear=0, flip=True, shift=0, scale=0)
    x = make_batch(a, idx, augment=True, generator=torch.Generator(), magnitudes=flip)
    assert torch.allclose(x, a.batch(idx).flip(-1))
    light = Augmentation(prob=1.0, jitter=0, rotation=0, shear=0, flip=False, shift=15, scale=0.1)
    g = torch.Generator().manual_seed(0)
    p = a.batch(idx, channels=1)[0, 0] * 255
    changed = 0
    for _ in range(8):
        y = make_batch(a, idx, augment=True, generator=g, magnitudes=light, channels=1)[0, 0] * 255
        tr, bl = float(y[4, -4]), float(y[-4, 4])  # gray levels 80 and 160 before (never clipped)
        scale = (bl - tr) / 80
        shift = tr - 80 * scale
        assert 0.9 - 1e-4 <= scale <= 1.1 + 1e-4 and -15 - 1e-3 <= shift <= 15 + 1e-3
        # one affine change of every gray level, clipped to 0-255
        assert torch.allclose(y, (p * scale + shift).clamp(0, 255), atol=1e-3)
        changed += not torch.allclose(y, p)
    assert changed >= 6


def test_rotation_and_shear_move_pixels(quad_data: Path, tmp_path: Path) -> None:  # noqa: F811
    a = arrays(quad_data, tmp_path)
    idx = torch.tensor([4])
    geo = Augmentation(prob=1.0, jitter=0, rotation=20, shear=0.2, flip=False, shift=0, scale=0)
    x = make_batch(a, idx, augment=True, generator=torch.Generator().manual_seed(3), magnitudes=geo)
    assert not torch.allclose(x, a.batch(idx))
    assert float(x.min()) == 0.0  # corners rotated in from outside take the fill (0)


def test_box_jitter_and_exterior_exclusion(quad_data: Path, tmp_path: Path) -> None:  # noqa: F811
    a = arrays(quad_data, tmp_path)
    idx = torch.zeros(16, dtype=torch.long)  # the top-left quadrant (10), neighbours 80 / 160 / 240
    jitter = Augmentation(prob=1.0, jitter=0.075, rotation=0, shear=0, flip=False, shift=0, scale=0)
    g = torch.Generator().manual_seed(0)
    x = make_batch(a, idx, augment=True, generator=g, magnitudes=jitter, channels=1) * 255
    assert float(x.max()) > 30  # growing boxes show the real neighbouring quadrants
    assert float(x.min()) >= 10 - 1e-3  # jitter stays inside the image: no padding appears
    g = torch.Generator().manual_seed(0)
    y = make_batch(a, idx, augment=True, generator=g, magnitudes=jitter, channels=1, exterior_exclusion=True)
    exterior = float(a.exterior[0])  # the mean outside the box, (80 + 160 + 240) / 3
    assert float(y.max()) * 255 <= exterior + 1e-3 and float(y.max()) * 255 > 30
    c = exclude_exterior(a.canvas[:1], a.exterior[:1], a.margin, SIZE)
    m = a.margin
    assert torch.equal(c[0, m : m + SIZE, m : m + SIZE], a.images[0])
    assert int(c[0, 0, 0]) == int(a.exterior[0]) and int(c[0, -1, -1]) == int(a.exterior[0])


# --- training ------------------------------------------------------------------------------------


def test_train_on_the_bundled_data(data: CTDataset, tmp_path: Path) -> None:
    model = tiny_model()
    r = train(model, data, quick(), cache_dir=tmp_path, progress=False)
    assert isinstance(r, TrainResult) and r.status == "complete" and r.reason == ""
    assert r.epochs_run == 2 and [h["epoch"] for h in r.history] == [1, 2]
    assert set(r.history[0]) >= {"epoch", "train_loss", "val_accuracy", "lr", "seconds"}
    assert r.best_epoch == max(r.history, key=lambda h: h["val_accuracy"])["epoch"]
    assert r.val is not None and r.val.n == 48
    assert r.val.accuracy == pytest.approx(r.history[r.best_epoch - 1]["val_accuracy"])
    assert r.test is not None and r.test.n == 50 and r.test["Pneumonia"].sensitivity is None
    assert all(t.device.type == "cpu" for t in r.state_dict.values())
    assert all(torch.equal(v, r.state_dict[k]) for k, v in model.state_dict().items())  # holds the best
    assert r.config == quick() and r.wall_time_s > 0
    assert r.to_dict()["val"]["n"] == 48 and "state_dict" not in r.to_dict()


def test_same_seed_same_result(data: CTDataset, tmp_path: Path) -> None:
    cfg = quick(epochs=1, seed=3)
    a = train(tiny_model(3), data, cfg, cache_dir=tmp_path, progress=False)
    b = train(tiny_model(3), data, cfg, cache_dir=tmp_path, progress=False)
    timing = {"seconds", "cpu_seconds"}
    strip = [{k: v for k, v in h.items() if k not in timing} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k not in timing} for h in b.history]
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.test == b.test
    c = train(tiny_model(3), data, quick(epochs=1, seed=4), cache_dir=tmp_path, progress=False)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


class _Poisoned(nn.Module):
    """A tiny model whose outputs turn to NaN after ``good`` training steps."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good, self.calls = good, 0
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.mean((2, 3)))
        if self.training:
            self.calls += 1
            if self.calls > self.good:
                out = out * float("nan")
        return out


def test_nan_loss_fails_cleanly(data: CTDataset, tmp_path: Path) -> None:
    r = train(_Poisoned(0), data, quick(), cache_dir=tmp_path, progress=False)
    assert r.status == "failed" and not r.ok
    assert "the training loss became nan at epoch 1, step 1" in r.reason
    assert r.val is None and r.test is None and r.state_dict == {} and r.history == []
    steps = math.ceil(117 / 8)
    model = _Poisoned(steps + 2)  # epoch 1 is fine, epoch 2 breaks at step 3
    r = train(model, data, quick(epochs=3), cache_dir=tmp_path, progress=False)
    assert r.status == "failed" and "epoch 2, step 3" in r.reason
    assert r.epochs_run == 1 and r.best_epoch == 1 and r.val is not None and r.test is None
    assert torch.isfinite(model.fc.weight).all()  # back to the weights of epoch 1


def test_on_epoch_is_called_and_its_exceptions_propagate(data: CTDataset, tmp_path: Path) -> None:
    calls = []

    class Pruned(Exception):
        pass

    stop = Pruned("prune me")

    def hook(epoch: int, acc: float, row: dict) -> None:
        calls.append((epoch, acc, row))
        if epoch == 2:
            raise stop

    with pytest.raises(Pruned) as err:
        train(tiny_model(), data, quick(epochs=4), on_epoch=hook, cache_dir=tmp_path, progress=False)
    assert err.value is stop
    assert [c[0] for c in calls] == [1, 2]
    assert all(c[1] == c[2]["val_accuracy"] for c in calls)


class _Constant(nn.Module):
    """Always predicts Normal; its one weight gets no gradient, so nothing ever improves."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3) + 0 * self.w * x.mean()


def test_early_stopping_on_validation_accuracy(data: CTDataset, tmp_path: Path) -> None:
    r = train(
        _Constant(), data, quick(epochs=6, patience=2, augment=False), cache_dir=tmp_path, progress=False
    )
    assert r.status == "complete" and r.epochs_run == 3 and r.best_epoch == 1
    assert "early stop after epoch 3" in r.reason


def test_cosine_decay_and_channels(data: CTDataset, tmp_path: Path) -> None:
    model = build(
        ArchSpec(stem=StemSpec(out_channels=8, in_channels=1), stages=tiny_spec().stages, name="gray")
    )
    r = train(model, data, quick(epochs=3, cosine=True, lr=0.01), cache_dir=tmp_path, progress=False)
    lrs = [h["lr"] for h in r.history]
    assert lrs[0] == 0.01 and lrs[0] > lrs[1] > lrs[2] > 0


def test_wrong_head_is_an_error(data: CTDataset, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"must output 3 class scores per image, got shape \(8, 2\)"):
        train(model, data, quick(), cache_dir=tmp_path, progress=False)


def test_progress_bar_output(data: CTDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train(tiny_model(), data, quick(epochs=1, augment=False), cache_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1: loss" in err and "val" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_gpu(data: CTDataset, tmp_path: Path) -> None:
    r = train(tiny_model(), data, quick(device="cuda"), cache_dir=tmp_path, progress=False)
    assert r.status == "complete" and all(t.device.type == "cpu" for t in r.state_dict.values())


def test_recalibrate_batch_norm_sets_exact_statistics_and_restores_mode() -> None:
    from evaluators.training import recalibrate_batch_norm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    model.eval()
    x = torch.randn(12, 1, 4, 4) * 3 + 5
    seen = recalibrate_batch_norm(model, x.split(4))
    assert seen == 12 and not model.training
    bn = model[1]
    assert bn.momentum == 0.1  # restored
    with torch.no_grad():
        feats = model[0](x)
    # the cumulative average of three equal batches' means is the mean over all 12 images
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    # no batches: the statistics are kept
    before = bn.running_mean.clone()
    assert recalibrate_batch_norm(model, []) == 0
    assert torch.equal(bn.running_mean, before)


# --- protocols: the training loop learns, the schedule and the averaging are what they say -------
def _separable(root: Path, n: dict[str, int]) -> CTDataset:
    """Two classes anyone can tell apart: dark slices with noise (Normal) and bright ones (COVID-19)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for split, count in n.items():
        lines = []
        for i in range(count):
            label = 2 * (i % 2)
            level = 200 if label else 50
            img = np.clip(rng.normal(level, 25, (40, 40)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "images" / f"{split}{i}.png")
            lines.append(f"{split}{i}.png {label} 0 0 40 40\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return load_dataset([root])


@pytest.mark.parametrize("protocol", ["paper", "proxy"])
def test_training_learns_a_separable_set_in_three_epochs(protocol: str, tmp_path: Path) -> None:
    """A training loop that does not step (or steps the wrong way) fails this under either preset."""
    ds = _separable(tmp_path / "sep", {"train": 192, "val": 48, "test": 48})
    cfg = TrainConfig.resolve({"protocol": protocol, "epochs": 3, "image_size": 32, "device": "cpu"})
    assert cfg.protocol == protocol and cfg.epochs == 3
    before = train(
        tiny_model(),
        ds,
        cfg.__class__.resolve({**cfg.to_dict(), "lr": 1e-12}),
        cache_dir=tmp_path / "c",
        progress=False,
    )
    r = train(tiny_model(), ds, cfg, cache_dir=tmp_path / "c", progress=False)
    assert r.ok and r.val is not None and r.val.accuracy >= 95.0, r.history
    assert before.val is not None and before.val.accuracy < 80.0  # the same loop without learning


def test_presets_resolve_and_explicit_settings_win() -> None:
    from evaluators.training import PROTOCOLS

    paper = TrainConfig.resolve({"protocol": "paper"})
    assert paper == TrainConfig()  # the paper's protocol is TrainConfig's defaults
    proxy = TrainConfig.resolve({"protocol": "proxy", "epochs": 7})
    assert proxy.epochs == 7 and proxy.lr == PROTOCOLS["proxy"]["lr"] and proxy.keep == "last"
    assert TrainConfig.from_dict({"protocol": "proxy", "lr": "1e-3"}).lr == 1e-3
    with pytest.raises(ValueError, match="protocol must be one of paper, proxy, final"):
        TrainConfig.resolve({"protocol": "fast"})


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    from evaluators.training import learning_rate

    cfg = TrainConfig(lr=0.1, epochs=2, warmup_epochs=0.5, cosine=True)
    lrs = [learning_rate(cfg, step, 10) for step in range(20)]
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # linear from zero over 5 steps
    assert lrs[5] == pytest.approx(0.1) and all(a > b for a, b in itertools.pairwise(lrs[5:]))
    assert learning_rate(cfg, 20, 10) == pytest.approx(0.0, abs=1e-12)  # the end of the run
    flat = TrainConfig(lr=0.1, epochs=2)
    assert {learning_rate(flat, s, 10) for s in range(20)} == {0.1}


def test_averaged_weights_follow_the_ema_formula() -> None:
    from evaluators.training import _Averaged

    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    nn.init.zeros_(model[0].weight)
    avg = _Averaged(model, decay=0.5)
    expected = torch.zeros(1, 2)
    for t in range(1, 4):
        with torch.no_grad():
            model[0].weight.fill_(float(t))
        model[1].num_batches_tracked += 1
        avg.update(model)
        d = min(0.5, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * t
        assert torch.allclose(avg.model[0].weight, expected)
    assert avg.model[1].num_batches_tracked == 3  # integer buffers are copied, not averaged


def test_keep_last_scores_the_last_epoch_and_best_the_best(tmp_path: Path) -> None:
    ds = _separable(tmp_path / "sep", {"train": 64, "val": 32, "test": 32})
    base = {"epochs": 3, "image_size": 32, "device": "cpu", "patience": 0, "lr": 0.05}
    last = train(tiny_model(), ds, TrainConfig(**base, keep="last"), cache_dir=tmp_path / "c", progress=False)
    best = train(tiny_model(), ds, TrainConfig(**base, keep="best"), cache_dir=tmp_path / "c", progress=False)
    curve = [h["val_accuracy"] for h in best.history]
    assert [h["val_accuracy"] for h in last.history] == curve  # the same run, scored two ways
    assert last.best_epoch == 3 and last.val is not None and last.val.accuracy == curve[-1]
    assert (
        best.val is not None and best.val.accuracy == max(curve) and curve[best.best_epoch - 1] == max(curve)
    )
