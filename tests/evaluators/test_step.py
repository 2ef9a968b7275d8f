"""Step options: what ``auto`` means per device, refusals, and that they change speed only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluators.settings import ConfigError
from evaluators.step import resolve_options, staged_batches
from evaluators.training import TrainConfig, train
from tests.evaluators.test_training import data, quick, tiny_model  # noqa: F401 - fixture


def test_auto_on_the_cpu_is_channels_last_only() -> None:
    o = resolve_options(torch.device("cpu"))
    assert (o.precision, o.channels_last, o.cudnn_benchmark, o.prefetch, o.compile) == (
        "fp32",
        True,
        False,
        False,
        False,
    )
    assert not resolve_options(torch.device("cpu"), channels_last="off").channels_last
    on = resolve_options(torch.device("cpu"), "bf16", "on", "on", "on")
    assert on.precision == "bf16" and on.channels_last and on.prefetch
    assert not on.cudnn_benchmark  # cuDNN is a GPU library
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_options(torch.device("cpu"), "fp16")
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(precision="half")
    with pytest.raises(ConfigError, match="prefetch must be one of"):
        TrainConfig(prefetch="yes")


def test_prefetch_gives_the_same_batches() -> None:
    canvas = torch.arange(10 * 4 * 4, dtype=torch.uint8).view(10, 4, 4)
    labels = torch.arange(10)
    batches = [torch.tensor([3, 1]), torch.tensor([0, 9, 4]), torch.tensor([7])]
    dev = torch.device("cpu")
    a = list(staged_batches(canvas, labels, batches, dev, prefetch=False))
    b = list(staged_batches(canvas, labels, batches, dev, prefetch=True))
    assert len(a) == len(b) == 3
    for (i1, c1, y1), (i2, c2, y2), idx in zip(a, b, batches):
        assert torch.equal(y1, y2)
        assert torch.equal(i1, idx) and torch.equal(i2, idx)
        assert torch.equal(c1, canvas[idx]) and torch.equal(c2, canvas[idx]) and torch.equal(y2, labels[idx])


def test_options_change_speed_not_what_is_trained(data, tmp_path: Path) -> None:  # noqa: F811
    base = train(tiny_model(), data, quick(), cache_dir=tmp_path, progress=False)
    same = train(tiny_model(), data, quick(prefetch="on"), cache_dir=tmp_path, progress=False)
    assert all(torch.equal(v, same.state_dict[k]) for k, v in base.state_dict.items())  # bit for bit
    cl = train(tiny_model(), data, quick(channels_last="off"), cache_dir=tmp_path, progress=False)
    assert cl.status == "complete"
    close = [
        torch.allclose(v.float(), cl.state_dict[k].float(), atol=1e-3) for k, v in base.state_dict.items()
    ]
    assert all(close)  # channels_last (the CPU default) or not: the same sums in another order
    bf = train(tiny_model(), data, quick(precision="bf16"), cache_dir=tmp_path, progress=False)
    assert bf.status == "complete" and all(v.dtype != torch.bfloat16 for v in bf.state_dict.values())
    assert any(not torch.equal(v, bf.state_dict[k]) for k, v in base.state_dict.items())  # bf16 did run
