"""How a training step runs on its device: precision, memory format, cuDNN autotuning, prefetch,
compilation. None of it changes what is trained (beyond rounding); all of it is about speed.

``auto`` turns each option on where it helps and off where it does not: on a CUDA GPU, bf16
autocast (fp16 with loss scaling where the GPU has no bf16), ``channels_last``, cuDNN autotuning
and a prefetch of the next batch into pinned memory; on the CPU, ``channels_last`` only (measured
1.3-1.8x faster training steps there; bf16 autocast and the prefetch thread were slower, see
docs/benchmarks.md); on MPS, none. ``torch.compile`` is never on unless asked for:
its first steps compile, which a short proxy training does not earn back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evaluators.settings import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SWITCHES = ("auto", "on", "off")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepOptions:
    """The resolved options of one training run on one device."""

    precision: str  # fp32, bf16 or fp16
    channels_last: bool
    cudnn_benchmark: bool
    prefetch: bool
    compile: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "cudnn_benchmark": self.cudnn_benchmark,
            "prefetch": self.prefetch,
            "compile": self.compile,
        }


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` as fp32, bf16 or fp16 on ``device``; an explicit choice the device cannot do is a
    ``ConfigError``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(
            "precision fp16 needs a GPU (its loss scaling is CUDA's); on the CPU use bf16 or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision bf16 asked for, but this GPU has no bf16; use fp16")
    return precision


def _switch(name: str, value: str, default: bool) -> bool:
    if value not in SWITCHES:
        raise ConfigError(f"{name} must be one of {', '.join(SWITCHES)}, got {value!r}")
    return default if value == "auto" else value == "on"


def resolve_options(
    device: torch.device,
    precision: str = "auto",
    channels_last: str = "auto",
    cudnn_benchmark: str = "auto",
    prefetch: str = "auto",
    compile: bool = False,
) -> StepOptions:
    gpu = device.type == "cuda"
    return StepOptions(
        precision=resolve_precision(precision, device),
        channels_last=_switch("channels_last", channels_last, device.type in ("cuda", "cpu")),
        cudnn_benchmark=_switch("cudnn_benchmark", cudnn_benchmark, gpu) and gpu,
        prefetch=_switch("prefetch", prefetch, gpu),
        compile=bool(compile),
    )


class Stepper:
    """Applies ``StepOptions`` to a model and its training steps."""

    def __init__(self, model: nn.Module, device: torch.device, options: StepOptions) -> None:
        self.device, self.options = device, options
        if options.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if options.channels_last:
            model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(model) if options.compile else model
        self.scaler = (
            torch.amp.GradScaler("cuda") if options.precision == "fp16" and device.type == "cuda" else None
        )

    def autocast(self) -> AbstractContextManager[Any]:
        if self.options.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.options.precision])

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    def backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()


def staged_batches(
    canvas: Any,
    labels: torch.Tensor,
    batches: Sequence[torch.Tensor],
    device: torch.device,
    prefetch: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(index, canvases, labels)`` of each batch, the tensors on ``device``.

    With ``prefetch``, a background thread gathers the next batch's canvases (from memory or a
    memory map) into pinned memory while the current step runs, and the copy to the device is
    asynchronous (``non_blocking`` from pinned memory does not wait); without it, each batch is
    gathered and copied when it is needed.
    """
    pin = prefetch and device.type == "cuda"

    def stage(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = canvas[idx]
        y = labels[idx]
        if pin:
            rows, y = rows.pin_memory(), y.pin_memory()
        return rows, y

    if not prefetch or not batches:
        for idx in batches:
            rows, y = stage(idx)
            yield idx, rows.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(stage, batches[0])
        for k, idx in enumerate(batches):
            rows, y = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(stage, batches[k + 1])
            yield idx, rows.to(device, non_blocking=True), y.to(device, non_blocking=True)
