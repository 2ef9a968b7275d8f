"""CPU latency of PyTorch eager and ONNX Runtime (few repetitions: these check behaviour, not speed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from evaluators.latency import LatencyResult, LatencyStats, measure_latency, summarize, time_calls


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def test_time_calls_warms_up_then_times_each_call() -> None:
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(times) == 5 and all(t >= 0 for t in times)


def test_summarize_median_and_p90() -> None:
    s = summarize("torch", 1, [i / 1000 for i in range(1, 11)])  # 1..10 ms
    assert s.median_ms == pytest.approx(5.5) and s.p90_ms == pytest.approx(9.1)
    assert s.mean_ms == pytest.approx(5.5) and s.repeats == 10


def test_torch_and_onnxruntime_at_batch_1_and_8(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from search.export.onnx import export_onnx

    model = _tiny()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, (3, 16, 16))
    result = measure_latency(model, path, (3, 16, 16), warmup=1, repeats=3, threads=1)
    assert {(s.runtime, s.batch_size) for s in result.stats} == {
        (r, b) for r in ("onnxruntime", "torch") for b in (1, 8)
    }
    for s in result.stats:
        assert 0 < s.min_ms <= s.median_ms <= s.p90_ms and s.repeats == 3
    assert result.threads == 1 and result.input_size == (3, 16, 16) and result.warmup == 1
    ratio = result.ratio(8)
    assert ratio == pytest.approx(result.get("onnxruntime", 8).median_ms / result.get("torch", 8).median_ms)
    d = result.to_dict()
    assert d["device"] == "cpu" and len(d["stats"]) == 4 and d["onnxruntime_over_torch"]["8"] == ratio
    assert torch.get_num_threads() >= 1  # restored after the run


def test_torch_only_and_frozen_result() -> None:
    result = measure_latency(_tiny(), None, (3, 8, 8), batch_sizes=(2,), warmup=0, repeats=2)
    assert [(s.runtime, s.batch_size) for s in result.stats] == [("torch", 2)]
    assert result.ratio(2) is None
    with pytest.raises(KeyError, match="onnxruntime at batch 2"):
        result.get("onnxruntime", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.threads = 4  # type: ignore[misc]
    assert isinstance(result, LatencyResult) and isinstance(result.stats[0], LatencyStats)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        measure_latency(_tiny(), None, (3, 8, 8), repeats=0)
    with pytest.raises(ValueError, match="needs a model, an ONNX file or both"):
        measure_latency(None, None, (3, 8, 8))


def test_interleaved_runs_time_both_runtimes_alike(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from search.export.onnx import export_onnx

    model = _tiny()
    export_onnx(model, tmp_path / "m.onnx", (3, 8, 8))
    result = measure_latency(
        model, tmp_path / "m.onnx", (3, 8, 8), batch_sizes=(1,), warmup=1, repeats=4, interleave=True
    )
    assert [(s.runtime, s.batch_size, s.repeats) for s in result.stats] == [
        ("onnxruntime", 1, 4),
        ("torch", 1, 4),
    ]
    assert result.ratio(1) is not None and result.stats[0].to_dict()["min_ms"] > 0
    assert result.interleaved and result.to_dict()["interleaved"] is True
