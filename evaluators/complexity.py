"""Instant profiles of a network: params, MACs, FLOPs, peak activation memory, and NetScore.

fvcore counts one multiply-add as one "flop"; here that count is called ``macs`` everywhere and
``flops`` is always ``2 * macs`` (the convention of the COVID-Net CT papers' "FLOPs").
"""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass(frozen=True)
class Profile:
    """The complexity of one network at one input size.

    Attributes:
        params: number of parameters (all of them, trainable or not).
        macs: multiply-accumulates of one forward pass of one image (fvcore's total).
        flops: ``2 * macs``.
        unsupported_ops: operators fvcore could not count, with how often each occurred.
        peak_activation_bytes: the most bytes held at once by tensors created during one forward
            pass of one image without autograd (weights excluded).
        by_module: MACs per named submodule ("" is the whole network), from fvcore.
        input_size: the ``(C, H, W)`` profiled.
    """

    params: int
    macs: int
    flops: int
    unsupported_ops: dict[str, int]
    peak_activation_bytes: int
    input_size: tuple[int, int, int]
    by_module: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self, with_modules: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "params": self.params,
            "macs": self.macs,
            "flops": self.flops,
            "unsupported_ops": dict(self.unsupported_ops),
            "peak_activation_bytes": self.peak_activation_bytes,
            "input_size": list(self.input_size),
        }
        if with_modules:
            d["by_module"] = dict(self.by_module)
        return d


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_input_size(input_size: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_size) != 3 or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_size
    ):
        raise ValueError(f"input_size must be three positive integers (C, H, W), got {input_size!r}")
    return (int(input_size[0]), int(input_size[1]), int(input_size[2]))


def count_macs(
    model: nn.Module, input_size: tuple[int, int, int]
) -> tuple[int, dict[str, int], dict[str, int]]:
    """fvcore's MAC count of one image: (total, unsupported ops, MACs by module)."""
    with warnings.catch_warnings():  # fvcore's import scripts a loss with the deprecated torch.jit
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    x = torch.zeros(1, *input_size, device=_device_of(model))
    # fvcore logs every unsupported op and traced-module warning; keep them in the result instead.
    # Tracing warns (TracerWarning, FutureWarning) about internals that do not change the count.
    fv_logger = logging.getLogger("fvcore")
    level = fv_logger.level
    fv_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, (x,))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
            unsupported = {str(k): int(v) for k, v in Counter(analysis.unsupported_ops()).items()}
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
    finally:
        fv_logger.setLevel(level)
    return total, unsupported, by_module


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created under it and the peak of their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if key not in self._refs:
                    self._refs[key] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self._refs[key] += 1
                weakref.finalize(t, self._release, key, nbytes)
        return out


def peak_activation_bytes(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """The most bytes held at once by tensors created in one forward pass (batch 1, no autograd).

    The input image itself counts; parameters and buffers do not.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            mode = _LiveBytes()
            with mode:
                x = torch.zeros(1, *input_size, device=_device_of(model))
                y = model(x)
                del x, y
            return int(mode.peak)
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def profile(
    model: nn.Module, input_size: tuple[int, int, int] = (3, 512, 512), memory: bool = True
) -> Profile:
    """Params, MACs, FLOPs, unsupported ops and peak activation memory of ``model``.

    Args:
        model: any module taking one ``(N, C, H, W)`` tensor.
        input_size: ``(C, H, W)`` of one image.
        memory: also measure peak activation memory (one extra forward pass).
    """
    size = _check_input_size(tuple(input_size))
    was_training = model.training
    model.eval()
    try:
        macs, unsupported, by_module = count_macs(model, size)
    finally:
        model.train(was_training)
    return Profile(
        params=count_params(model),
        macs=macs,
        flops=2 * macs,
        unsupported_ops=unsupported,
        peak_activation_bytes=peak_activation_bytes(model, size) if memory else 0,
        input_size=size,
        by_module=by_module,
    )


def netscore(accuracy_pct: float, params: int | float, macs: int | float) -> float:
    """NetScore (Wong, 2018): ``20 log10(a^2 / (sqrt(p) * sqrt(m)))``.

    Args:
        accuracy_pct: top-1 accuracy in percent (0-100].
        params: parameter count (raw, converted to millions here).
        macs: multiply-accumulates (raw, converted to billions here).
    """
    if not (isinstance(accuracy_pct, (int, float)) and math.isfinite(accuracy_pct)):
        raise ValueError(f"accuracy_pct must be a finite number, got {accuracy_pct!r}")
    if not 0 < accuracy_pct <= 100:
        raise ValueError(f"accuracy_pct must be in (0, 100] percent, got {accuracy_pct}")
    if params <= 0 or macs <= 0:
        raise ValueError(f"params and macs must be positive counts, got {params} and {macs}")
    p = params / 1e6
    m = macs / 1e9
    return 20.0 * math.log10(accuracy_pct**2 / (math.sqrt(p) * math.sqrt(m)))


# ------------------------------------------------------------------ analytic counts of an ArchSpec
def _out(h: int, k: int, stride: int) -> int:
    """Output side of a conv (or the stem's pool) with padding ``k // 2``."""
    return (h + 2 * (k // 2) - k) // stride + 1


def spec_complexity(spec: Any, image_size: int = 512, num_classes: int = 3) -> tuple[int, int]:
    """``(params, MACs)`` of ``space.build(spec, num_classes)`` at ``image_size``, computed from the
    spec alone, exactly as ``profile`` counts them (fvcore: convolutions and linear layers, batch
    norm as 2 per element, global pooling 1 per element; the residual adds and max pooling are not
    counted), in microseconds instead of a traced forward pass. ``tests/evaluators/test_complexity.py``
    checks it against ``profile`` on sampled specs."""
    st = spec.stem
    params = st.in_channels * st.out_channels * st.kernel_size**2 + 2 * st.out_channels
    h = _out(image_size, st.kernel_size, st.stride)
    macs = st.out_channels * st.in_channels * st.kernel_size**2 * h * h + 2 * st.out_channels * h * h
    if st.pool:
        h = _out(h, 3, 2)
    c = st.out_channels
    for stage in spec.stages:
        for b in stage.blocks:
            p, m, h_out = _block(b, c, h)
            params, macs, h, c = params + p, macs + m, h_out, b.out_channels
    macs += c * h * h + c * num_classes  # global average pool, linear
    params += c * num_classes + num_classes
    return params, macs


def _conv(c_in: int, c_out: int, k: int, groups: int, h_out: int, bn: bool = True) -> tuple[int, int]:
    w = c_out * (c_in // groups) * k * k
    return w + (2 * c_out if bn else 0), w * h_out * h_out + (2 * c_out * h_out * h_out if bn else 0)


def _block(b: Any, c_in: int, h: int) -> tuple[int, int, int]:
    """Params, MACs and output side of one residual block (``space.blocks``)."""
    k, s, mid, out = b.kernel_size, b.stride, b.mid_channels, b.out_channels
    h2 = _out(h, k, s)
    parts = []
    if b.type == "bottleneck":
        g = mid if b.conv == "depthwise" else b.groups
        parts += [_conv(c_in, mid, 1, 1, h), _conv(mid, mid, k, g, h2), _conv(mid, out, 1, 1, h2)]
        se_on = mid
    else:  # basic
        g1 = c_in if b.conv == "depthwise" else b.groups
        g2 = mid if b.conv == "depthwise" else b.groups
        parts += [_conv(c_in, mid, k, g1, h2), _conv(mid, out, k, g2, h2)]
        se_on = out
    if b.se_channels:  # two 1x1 convs with bias on the pooled vector
        hid = b.se_channels
        parts.append((se_on * hid + hid + hid * se_on + se_on, 2 * se_on * hid))
    if s != 1 or c_in != out:
        parts.append(_conv(c_in, out, 1, 1, h2))
    return sum(p for p, _ in parts), sum(m for _, m in parts), h2
