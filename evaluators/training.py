"""Short training by the COVIDNet-CT protocol: what a candidate's accuracy is worth.

SGD with momentum 0.9, learning rate 5e-4, L2 1e-4 (as weight decay), batch size 8, class-balanced
batches, the paper's augmentations, early stopping on validation accuracy and optional cosine
decay. ``train`` reports to no driver: a search passes ``on_epoch`` and may raise from it (Optuna's
``TrialPruned``), which ``train`` lets through unchanged.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.data.augment import epoch_batches, make_batch
from evaluators.data.cache import SplitArrays, load_arrays
from evaluators.data.classes import CLASS_NAMES
from evaluators.data.covidx import CTDataset
from evaluators.data.harmonise import HARMONISE, harmonise_arrays
from evaluators.device import _parse_device, input_channels, resolve_device, seed_everything
from evaluators.evaluate import predict
from evaluators.metrics import EvalResult, compute_metrics
from evaluators.settings import ConfigError, check_bool, check_int, check_number, coerce, setting, settings_of
from evaluators.step import PRECISIONS, SWITCHES, Stepper, resolve_options, staged_batches

EpochCallback = Callable[[int, float, dict[str, Any]], None]

# Named presets of TrainConfig settings (``--protocol``); explicit settings override them.
# The recipe of the short protocols, chosen by measurement (docs/benchmarks.md, "Training
# protocols"): a higher learning rate with warm-up and cosine decay to zero, label smoothing, and
# the last epoch's averaged weights (batch norm recomputed for them) scored instead of the
# luckiest validation epoch.
_RECIPE: dict[str, Any] = {
    "lr": 0.02,
    "warmup_epochs": 0.5,
    "cosine": True,
    "label_smoothing": 0.1,
    "ema": 0.99,
    "recalibrate_bn": 512,
    "keep": "last",
    "patience": 0,
}
PROTOCOLS: dict[str, dict[str, Any]] = {
    # The CT-2 protocol as published: TrainConfig's defaults (SGD 5e-4, batch 8, best validation
    # epoch with early stopping, 512 px).
    "paper": {},
    # A short run that ranks architectures (search run's default).
    "proxy": {**_RECIPE, "epochs": 4, "image_size": 64},
    # The same recipe where CT L converges on small CT sets (search final's default): three times
    # the epochs at twice the image size.
    "final": {**_RECIPE, "epochs": 12, "image_size": 128},
}


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings; the defaults are the COVIDNet-CT paper's.

    Every field is a ``setting`` (``evaluators.settings``): its help text here is the one
    ``search train --help``, ``search run --help`` and the YAML loaders use, and a new field
    reaches every flag, config file and stored configuration without being listed again.
    """

    protocol: str = setting(
        "paper",
        "a named preset of the settings below (paper: the CT-2 protocol; proxy: a few epochs that rank "
        "architectures; final: the proxy's recipe, longer and larger); flags override it",
        choices=("paper", "proxy", "final"),
    )
    lr: float = setting(5e-4, "SGD learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(1e-4, "L2 weight (SGD weight decay)")
    batch_size: int = setting(8, "images per training batch")
    epochs: int = setting(20, "most epochs to train")
    image_size: int = setting(512, "side of the square input, a multiple of 32 (the paper: 512)")
    patience: int = setting(5, "early stopping: epochs without a better validation accuracy (0: off)")
    cosine: bool = setting(False, "cosine decay of the learning rate to zero over the run (per step)")
    warmup_epochs: float = setting(
        0.0, "linear learning-rate warm-up from zero, in epochs (fractions allowed)"
    )
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy (0: off)")
    ema: float = setting(
        0.0, "decay of an exponential moving average of the weights, validated instead of them (0: off)"
    )
    recalibrate_bn: int = setting(
        0,
        "training images (unaugmented) on which batch-norm statistics are recomputed before each "
        "validation (0: off; needed with ema, whose averaged weights do not match averaged statistics)",
    )
    keep: str = setting(
        "best",
        "which weights are kept and scored: the best validation epoch's (the paper's) or the last epoch's",
        choices=("best", "last"),
    )
    augment: bool = setting(True, "the paper's augmentations")
    exterior_exclusion: bool = setting(
        False, "replace everything outside the body box by its mean gray level"
    )
    harmonise: str = setting(
        "none",
        "intensity harmonisation from the pixels inside the body box, applied at train, evaluate and "
        "predict time: standardise (mean and std), equalise (histogram) or match (histogram matched to "
        "a fixed reference)",
        choices=HARMONISE,
    )
    balanced: bool = setting(True, "class-balanced batches")
    seed: int = setting(0, "seed of weights, batches, augmentation and dropout")
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps", outcome=False)
    precision: str = setting(
        "auto",
        "autocast precision of the training step: auto (bf16 on a CUDA GPU that has it, else fp16 "
        "with loss scaling; fp32 on the CPU and MPS), fp32, bf16, fp16",
        choices=PRECISIONS,
        outcome=False,
    )
    channels_last: str = setting(
        "auto",
        "channels_last memory format (auto: on CUDA and the CPU, where it is faster; off on MPS)",
        choices=SWITCHES,
        outcome=False,
    )
    cudnn_benchmark: str = setting(
        "auto", "cuDNN autotuning of convolutions (auto: on a CUDA GPU)", choices=SWITCHES, outcome=False
    )
    prefetch: str = setting(
        "auto",
        "gather the next batch into pinned memory while a step runs (auto: on a CUDA GPU)",
        choices=SWITCHES,
        outcome=False,
    )
    compile: bool = setting(False, "torch.compile the model (its first steps compile)", outcome=False)
    channels: int | None = setting(None, "input channels (none: from the model)", flag=False)
    eval_batch_size: int = setting(64, "images per forward pass when evaluating", flag=False, outcome=False)
    evaluate_test: bool = setting(True, "evaluate the best weights on the test split", flag=False)

    def __post_init__(self) -> None:
        for name in ("cosine", "augment", "exterior_exclusion", "balanced", "evaluate_test", "compile"):
            check_bool(name, getattr(self, name))
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing", "ema"):
            check_number(name, getattr(self, name))
        for name in (
            "batch_size",
            "epochs",
            "image_size",
            "patience",
            "seed",
            "eval_batch_size",
            "recalibrate_bn",
        ):
            check_int(name, getattr(self, name), low=None)
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (batch norm), got {self.batch_size}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"image_size must be a multiple of 32 of at least 32, got {self.image_size}")
        if self.patience < 0:
            raise ConfigError(f"patience must be 0 (off) or positive, got {self.patience}")
        if self.recalibrate_bn < 0:
            raise ConfigError(
                f"recalibrate_bn must be 0 (off) or a number of images, got {self.recalibrate_bn}"
            )
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be at least 0, got {self.warmup_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1) (0: off), got {self.ema}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.harmonise not in HARMONISE:
            raise ConfigError(f"harmonise must be one of {', '.join(HARMONISE)}, got {self.harmonise!r}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"keep must be best or last, got {self.keep!r}")
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1, 3 or null (from the model), got {self.channels!r}")
        _parse_device(self.device)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("channels_last", "cudnn_benchmark", "prefetch"):
            if getattr(self, name) not in SWITCHES:
                raise ConfigError(f"{name} must be one of {', '.join(SWITCHES)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def resolve(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from some of its fields: the named ``protocol``'s preset (``PROTOCOLS``, default
        ``paper``) first, then ``values`` (explicit settings win over the preset)."""
        protocol = values.get("protocol", "paper")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        return cls(**{**PROTOCOLS[protocol], **values, "protocol": protocol})

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> TrainConfig:
        """A config from a dict of some of its fields (YAML-typed values are checked and coerced);
        an unknown key is a ``ConfigError`` with the closest known one."""
        known = {f.name: s for f, s in zip(fields(cls), settings_of(cls))}
        values = {}
        where = f"{source}: " if source else ""
        for key, value in d.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
                raise ConfigError(f"{where}unknown training setting {key!r}{hint}")
            values[key] = coerce(known[key], value, source)
        return cls.resolve(values)


@dataclass(frozen=True)
class TrainResult:
    """The outcome of ``train``.

    Attributes:
        status: ``"complete"`` (also after early stopping) or ``"failed"`` (a NaN or infinite loss).
        reason: why it failed or stopped early ("" for a full, normal run).
        best_epoch: the epoch of the best validation accuracy (0 if none was validated).
        epochs_run: epochs completed.
        history: one dict per epoch: epoch, train_loss, train_accuracy, val_accuracy, lr, seconds
            (wall clock, training and validation) and cpu_seconds (this process's CPU time).
        val: metrics of the best epoch on the validation split (None if none was validated).
        test: metrics of the best weights on the test split (None if not evaluated or failed).
        state_dict: the best weights, as CPU tensors (empty if none was validated).
        wall_time_s: seconds the whole call took, decoding included.
        config: the settings used.
        val_predictions: the best epoch's predicted class per validation image (CPU), for
            pooling the predictions of several runs (cross-validation).
    """

    status: str
    reason: str
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    val: EvalResult | None
    test: EvalResult | None
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    wall_time_s: float
    config: TrainConfig
    val_predictions: torch.Tensor | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the weights, JSON-safe."""
        return {
            "status": self.status,
            "reason": self.reason,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "history": [dict(h) for h in self.history],
            "val": self.val.to_dict() if self.val else None,
            "test": self.test.to_dict() if self.test else None,
            "wall_time_s": self.wall_time_s,
            "config": self.config.to_dict(),
        }


class _Progress:
    """A rich progress display on stderr (epoch bar with loss, validation accuracy and ETA)."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        self.enabled, self.epochs = enabled, epochs
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.__enter__()
            self.run = self.bar.add_task("run", total=self.epochs, loss="-", val="-")
            self.epoch = self.bar.add_task("epoch", total=1, loss="-", val="-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self.bar is not None:
            self.bar.reset(self.epoch, total=steps, description=f"epoch {epoch}/{self.epochs}")

    def step(self, done: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.epoch, completed=done, loss=f"{loss:.4f}")
            self.bar.update(self.run, loss=f"{loss:.4f}")

    def end_epoch(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            val = f"{row['val_accuracy']:.1f} %"
            self.bar.update(self.run, advance=1, val=val)
            self.bar.update(self.epoch, val=val)
            self.bar.console.print(
                f"epoch {row['epoch']}/{self.epochs}: loss {row['train_loss']:.4f}, "
                f"train {row['train_accuracy']:.1f} %, val {val}, lr {row['lr']:.3g}, "
                f"{row['seconds']:.1f} s"
            )


def recalibrate_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every batch norm's running statistics as exact averages over ``batches``.

    Running statistics are an exponential average over the last ~10 steps of changing weights;
    after a short run at a high learning rate (or after averaging weights) they no longer match
    the weights, and the network in eval mode can fall to chance while in train mode it is
    accurate. This is "precise BN": reset, then one pass in train mode with a cumulative average
    (``momentum=None``), no gradients. The model's train/eval mode and momenta are restored.

    Returns:
        The number of images seen (0: no batch norm, or no batches; nothing changed then).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in norms if m.track_running_stats]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    seen = 0
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
            seen += int(x.shape[0])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    if seen == 0:  # nothing to average over: put the old statistics back
        for m, (mean, var) in zip([m for m in norms if m.track_running_stats], saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    model.train(was_training)
    return seen


def train(
    model: nn.Module,
    dataset: CTDataset,
    config: TrainConfig | None = None,
    *,
    on_epoch: EpochCallback | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``dataset``'s train split, validating after every epoch.

    The model ends on the configured device holding the weights of the best validation epoch.

    Args:
        model: a classifier over ``CLASS_NAMES`` (three outputs).
        dataset: the data (train and val splits, and test for the final evaluation).
        config: the settings (default ``TrainConfig()``, the paper's).
        on_epoch: called as ``on_epoch(epoch, val_accuracy_pct, history_row)`` after each
            epoch's validation; whatever it raises propagates unchanged.
        cache_dir: the decoded-image cache folder (default: ``evaluators.cache.default_cache_dir()``).
        progress: show a progress bar on stderr.

    Returns:
        A ``TrainResult``; a NaN or infinite loss gives ``status == "failed"`` and its ``reason``.
    """
    cfg = config or TrainConfig()
    started = time.perf_counter()
    channels = cfg.channels or input_channels(model)
    size = cfg.image_size
    train_arr = load_arrays(dataset, "train", size, channels, cache_dir, progress=progress)
    val_arr = load_arrays(dataset, "val", size, channels, cache_dir, progress=progress)

    def test_arrays() -> SplitArrays:
        return load_arrays(dataset, "test", size, channels, cache_dir, progress=progress)

    has_test = cfg.evaluate_test and "test" in dataset.splits
    return fit(
        model,
        train_arr,
        val_arr,
        cfg,
        on_epoch=on_epoch,
        progress=progress,
        test=test_arrays if has_test else None,
        started=started,
    )


def fit(
    model: nn.Module,
    train_arr: SplitArrays,
    val_arr: SplitArrays,
    config: TrainConfig | None = None,
    *,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    test: SplitArrays | Callable[[], SplitArrays] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train ``model`` on decoded arrays, validating on ``val_arr`` after every epoch.

    ``train`` is this on a dataset's train and val splits; cross-validation calls it on folds
    (``SplitArrays.subset``) so that every fold reuses the decoded-image cache. With ``ema`` the
    averaged weights are the ones validated and kept; ``keep`` says whether the best validation
    epoch's weights (the paper's early stopping) or the last epoch's are kept and scored.

    Args:
        test: the test split (or a function loading it), evaluated with the kept weights after a
            complete run; ``None`` skips it.
        started: ``time.perf_counter()`` when the caller began (decoding counts in the wall time).
    """
    cfg = config or TrainConfig()
    started = time.perf_counter() if started is None else started
    # harmonisation is a per-image map of gray levels: every split goes through the same one
    train_arr = harmonise_arrays(train_arr, cfg.harmonise)
    val_arr = harmonise_arrays(val_arr, cfg.harmonise)
    if test is not None and cfg.harmonise != "none":
        raw_test = test
        test = lambda: harmonise_arrays(raw_test() if callable(raw_test) else raw_test, cfg.harmonise)  # noqa: E731
    run = _Run(model, train_arr, cfg)
    best = _Best(keep_last=cfg.keep == "last")
    status, reason = "complete", ""
    with _Progress(progress, cfg.epochs) as bar:
        for epoch in range(1, cfg.epochs + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            stats = run.train_epoch(epoch, bar)
            if stats.failure:
                status, reason = "failed", stats.failure
                break
            scored = run.scored_model()
            run.recalibrate(scored)
            pred = predict(scored, val_arr.images, run.channels, cfg.eval_batch_size, run.device)
            val_acc = 100.0 * float((pred == val_arr.labels).double().mean())
            row = {
                "epoch": epoch,
                "train_loss": stats.loss,
                "train_accuracy": stats.accuracy,
                "val_accuracy": val_acc,
                "lr": stats.lr,
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
            }
            run.history.append(row)
            best.update(epoch, val_acc, pred, scored)
            bar.end_epoch(row)
            if on_epoch is not None:
                on_epoch(epoch, val_acc, dict(row))
            if cfg.patience and best.stale >= cfg.patience and epoch < cfg.epochs:
                reason = (
                    f"early stop after epoch {epoch}: no better validation accuracy for "
                    f"{cfg.patience} epochs (best {best.top:.2f} % at epoch {best.top_epoch})"
                )
                break
    return _result(run, best, val_arr, test, status, reason, started)


@dataclass
class _EpochStats:
    loss: float = math.nan
    accuracy: float = math.nan
    lr: float = math.nan
    failure: str = ""  # why training stopped (a NaN or infinite loss), "" if it did not


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of 0-based optimizer step ``step``: linear warm-up from zero over
    ``warmup_epochs``, then constant, or (``cosine``) cosine decay to zero at the last step."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if not cfg.cosine:
        return cfg.lr
    t = (step - warm) / max(1.0, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class _Averaged:
    """An exponential moving average of a model's weights and buffers (batch-norm statistics
    included), with the usual early ramp: decay ``min(ema, (1 + t) / (10 + t))`` at step ``t``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.steps = 0
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._others: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        if self._floats is None:  # the tensors of both state dicts, paired once
            mine, theirs = self.model.state_dict(), model.state_dict()
            pairs = [(mine[k], v) for k, v in theirs.items()]
            self._floats = (
                [a for a, b in pairs if b.dtype.is_floating_point],
                [b for a, b in pairs if b.dtype.is_floating_point],
            )
            self._others = (
                [a for a, b in pairs if not b.dtype.is_floating_point],
                [b for a, b in pairs if not b.dtype.is_floating_point],
            )
        ema, live = self._floats
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, live, alpha=1 - d)
        for a, b in zip(*self._others):
            a.copy_(b)


class _Run:
    """One training run's state: device, optimizer, schedule, averaged weights, generator, history."""

    def __init__(self, model: nn.Module, train_arr: SplitArrays, cfg: TrainConfig) -> None:
        self.model, self.train_arr, self.cfg = model, train_arr, cfg
        self.device = resolve_device(cfg.device)
        self.channels = cfg.channels or input_channels(model)
        seed_everything(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        model.to(self.device)
        self.options = resolve_options(
            self.device, cfg.precision, cfg.channels_last, cfg.cudnn_benchmark, cfg.prefetch, cfg.compile
        )
        self.stepper = Stepper(model, self.device, self.options)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.averaged = _Averaged(model, cfg.ema) if cfg.ema > 0 else None
        self._bn_images: torch.Tensor | None = None
        self.step = 0
        self.history: list[dict[str, Any]] = []
        # .item() syncs a GPU: look at the loss less often there
        self.check_every = 1 if self.device.type == "cpu" else 20
        self.acc_dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS: no float64

    def recalibrate(self, model: nn.Module) -> None:
        """Recompute ``model``'s batch-norm statistics on ``recalibrate_bn`` training images spread
        over the split (unaugmented, the same ones every epoch), if set."""
        n = min(self.cfg.recalibrate_bn, len(self.train_arr))
        if n <= 0:
            return
        if self._bn_images is None:
            index = torch.linspace(0, len(self.train_arr) - 1, n).round().long().unique()
            self._bn_images = self.train_arr.images[index]
        from evaluators.data.cache import to_float

        batches = (
            to_float(chunk.to(self.device, non_blocking=True), self.channels)
            for chunk in self._bn_images.split(self.cfg.eval_batch_size)
        )
        recalibrate_batch_norm(model, batches)

    def scored_model(self) -> nn.Module:
        """The network that is validated and kept: the averaged one with ``ema``, else the model."""
        return self.averaged.model if self.averaged is not None else self.model

    def train_epoch(self, epoch: int, bar: _Progress) -> _EpochStats:
        """One pass over class-balanced batches of the training split."""
        cfg, model, arr, dev = self.cfg, self.model, self.train_arr, self.device
        model.train()
        batches = epoch_batches(arr.labels, cfg.batch_size, cfg.balanced, self.generator)
        bar.start_epoch(epoch, len(batches))
        first_lr = learning_rate(cfg, self.step, len(batches))
        loss_sum = torch.zeros((), dtype=self.acc_dtype, device=dev)
        correct = torch.zeros((), dtype=torch.long, device=dev)
        seen = 0
        st = self.stepper
        staged = staged_batches(arr.canvas, arr.labels, batches, dev, self.options.prefetch)
        for step, (idx, rows, y) in enumerate(staged, start=1):
            lr = learning_rate(cfg, self.step, len(batches))
            for group in self.opt.param_groups:
                group["lr"] = lr
            x = make_batch(
                arr,
                idx,
                channels=self.channels,
                device=dev,
                augment=cfg.augment,
                exterior_exclusion=cfg.exterior_exclusion,
                generator=self.generator,
                staged=rows,
            )
            with st.autocast():
                logits = st.forward(st.inputs(x))
                if step == 1 and epoch == 1:
                    _check_outputs(logits)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            st.backward_step(loss, self.opt)
            self.step += 1
            if self.averaged is not None:
                self.averaged.update(model)
            loss_sum += loss.detach() * idx.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += idx.numel()
            if step % self.check_every == 0 or step == len(batches):
                running = float(loss_sum) / seen
                if not math.isfinite(running):
                    return _EpochStats(
                        failure=f"the training loss became {running} at epoch {epoch}, step {step} "
                        f"(lr {lr:g}); training stopped"
                    )
                bar.step(step, running)
        return _EpochStats(float(loss_sum) / seen, 100.0 * int(correct) / seen, first_lr)


def _check_outputs(logits: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] != len(CLASS_NAMES):
        raise ValueError(
            f"the model must output {len(CLASS_NAMES)} class scores per image, "
            f"got shape {tuple(logits.shape)}"
        )


@dataclass
class _Best:
    """The kept epoch (the best validation epoch, or with ``keep_last`` the latest) with its
    accuracy, predictions and weights (CPU copies), and the best accuracy seen for early stopping."""

    keep_last: bool = False
    accuracy: float = -1.0
    epoch: int = 0
    predictions: torch.Tensor | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    top: float = -1.0
    top_epoch: int = 0
    stale: int = 0

    def update(self, epoch: int, accuracy: float, predictions: torch.Tensor, model: nn.Module) -> None:
        better = accuracy > self.top
        if better:
            self.top, self.top_epoch, self.stale = accuracy, epoch, 0
        else:
            self.stale += 1
        if better or self.keep_last:
            self.accuracy, self.epoch, self.predictions = accuracy, epoch, predictions
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _result(
    run: _Run,
    best: _Best,
    val_arr: SplitArrays,
    test: SplitArrays | Callable[[], SplitArrays] | None,
    status: str,
    reason: str,
    started: float,
) -> TrainResult:
    """The model holding the kept weights, and the metrics of those weights on val (and test)."""
    cfg, model = run.cfg, run.model
    if best.state:
        model.load_state_dict(best.state)
    val = None
    if best.predictions is not None:
        val = compute_metrics(val_arr.labels, best.predictions, len(CLASS_NAMES), val_arr.sources, cfg.seed)
    test_result = None
    if status == "complete" and cfg.evaluate_test and test is not None:
        test_arr = test() if callable(test) else test
        pred = predict(model, test_arr.images, run.channels, cfg.eval_batch_size, run.device)
        test_result = compute_metrics(test_arr.labels, pred, len(CLASS_NAMES), test_arr.sources, cfg.seed)
    return TrainResult(
        status=status,
        reason=reason,
        best_epoch=best.epoch,
        epochs_run=len(run.history),
        history=run.history,
        val=val,
        test=test_result,
        state_dict=best.state,
        wall_time_s=time.perf_counter() - started,
        config=cfg,
        val_predictions=best.predictions.cpu() if best.predictions is not None else None,
    )
