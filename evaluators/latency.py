"""CPU latency of a classifier: ONNX Runtime against PyTorch eager, at several batch sizes.

Each runtime gets the same input, the same number of threads (``torch.get_num_threads()`` unless
given), warm-up runs that are not timed, then ``repeats`` timed runs; the result holds the median
and the 90th percentile in milliseconds per batch. Timings are wall-clock (``perf_counter``) on
a machine others may share, so the median is the figure to compare and the p90 shows the spread.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("onnxruntime", "torch")


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one runtime at one batch size.

    Attributes:
        runtime: ``onnxruntime`` or ``torch`` (eager).
        batch_size: images per call.
        median_ms: median milliseconds per call.
        p90_ms: 90th percentile milliseconds per call.
        mean_ms: mean milliseconds per call.
        repeats: timed calls.
        min_ms: the fastest call (the least disturbed by other load).
    """

    runtime: str
    batch_size: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    min_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "batch_size": self.batch_size,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "min_ms": self.min_ms,
            "repeats": self.repeats,
        }


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one model on CPU.

    Attributes:
        input_size: ``(C, H, W)`` of one image.
        threads: intra-op threads of both runtimes.
        warmup: untimed calls before timing, per runtime and batch size.
        stats: one entry per runtime and batch size.
        interleaved: whether the runtimes alternated call by call.
    """

    input_size: tuple[int, int, int]
    threads: int
    warmup: int
    stats: tuple[LatencyStats, ...]
    interleaved: bool = False

    def get(self, runtime: str, batch_size: int) -> LatencyStats:
        for s in self.stats:
            if s.runtime == runtime and s.batch_size == batch_size:
                return s
        raise KeyError(f"no latency measured for {runtime} at batch {batch_size}")

    def ratio(self, batch_size: int) -> float | None:
        """ONNX Runtime's median over PyTorch eager's (below 1: ONNX Runtime is faster)."""
        try:
            return self.get("onnxruntime", batch_size).median_ms / self.get("torch", batch_size).median_ms
        except KeyError:
            return None

    def to_dict(self) -> dict[str, Any]:
        batches = sorted({s.batch_size for s in self.stats})
        return {
            "device": "cpu",
            "input_size": list(self.input_size),
            "threads": self.threads,
            "warmup": self.warmup,
            "interleaved": self.interleaved,
            "stats": [s.to_dict() for s in self.stats],
            "onnxruntime_over_torch": {str(b): self.ratio(b) for b in batches},
        }


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarize(runtime: str, batch_size: int, seconds: Sequence[float]) -> LatencyStats:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return LatencyStats(
        runtime,
        batch_size,
        float(np.median(ms)),
        float(np.percentile(ms, 90)),
        float(ms.mean()),
        len(ms),
        float(ms.min()),
    )


def measure_latency(
    model: Any | None,
    onnx_path: str | Path | None,
    input_size: tuple[int, int, int],
    *,
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
    interleave: bool = False,
    seed: int = 0,
) -> LatencyResult:
    """Time a PyTorch module (eager, eval mode, no autograd) and/or its ONNX export on CPU.

    Args:
        model: the PyTorch module, or ``None`` to time ONNX Runtime only.
        onnx_path: the exported model (dynamic batch axis), or ``None`` to time PyTorch only.
        input_size: ``(C, H, W)`` of one image.
        batch_sizes: batch sizes to time.
        warmup: untimed calls before timing (first calls allocate and plan).
        repeats: timed calls per runtime and batch size.
        threads: intra-op threads for both runtimes; default ``torch.get_num_threads()``.
        interleave: alternate the runtimes call by call (ONNX Runtime, PyTorch, ONNX Runtime...)
            instead of timing one after the other, so that load from other processes on a shared
            machine falls on both alike and their ratio stays fair.
        seed: seed of the random input.
    """
    import torch

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be at least 1 and warmup at least 0, got {repeats} and {warmup}")
    if model is None and onnx_path is None:
        raise ValueError("measure_latency needs a model, an ONNX file or both")
    threads = threads or torch.get_num_threads()
    rng = np.random.default_rng(seed)
    inputs = {b: rng.random((b, *input_size), dtype=np.float32) for b in batch_sizes}
    calls: dict[str, Callable[[int], Any]] = {}
    if onnx_path is not None:
        from evaluators.inference import ort_session

        session = ort_session(onnx_path, threads)
        name = session.get_inputs()[0].name
        calls["onnxruntime"] = lambda b: session.run(None, {name: inputs[b]})
    if model is not None:
        model.eval()
        tensors = {b: torch.from_numpy(x) for b, x in inputs.items()}
        calls["torch"] = lambda b: model(tensors[b])
    times: dict[tuple[str, int], list[float]] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for b in batch_sizes:
                runs = {runtime: functools.partial(fn, b) for runtime, fn in calls.items()}
                if interleave:
                    for fn in runs.values():
                        time_calls(fn, warmup, 0)
                    for _ in range(repeats):
                        for runtime, fn in runs.items():
                            times.setdefault((runtime, b), []).extend(time_calls(fn, 0, 1))
                else:
                    for runtime, fn in runs.items():
                        times[runtime, b] = time_calls(fn, warmup, repeats)
    finally:
        torch.set_num_threads(previous)
    stats = [summarize(r, b, times[r, b]) for r in calls for b in batch_sizes]
    size = tuple(input_size)
    return LatencyResult(size, int(threads), warmup, tuple(stats), interleave)  # type: ignore[arg-type]
