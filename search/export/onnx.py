"""ONNX for ``search export``: the export itself, ``onnx.checker``, and parity with PyTorch on real
images of the study's data.

The TorchScript exporter (``dynamo=False``) is used: on this project's CPUs it is about 25x faster
than the dynamo exporter and matched PyTorch as exactly in ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search.errors import RunFailed

OPSET = 18
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-5  # plus this much per unit of logit: float32 rounding scales with the logit


class ExportFailed(RunFailed):
    """An export that did not pass its checks (nothing was written)."""


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against PyTorch on the same images.

    An image passes where every logit differs by at most ``atol + rtol * |PyTorch's logit|`` and the
    predicted class is the same. The export's defaults are ``atol`` 1e-4 and ``rtol`` 1e-5 (as
    ``numpy.allclose``): for a trained classifier's logits (a few units) that is about 1e-4, while a
    barely trained network with logits of 50-500 (float32 rounding alone then reaches 1e-4) is not
    refused for rounding.

    Attributes:
        max_abs_diff: the largest absolute difference between the two models' logits.
        max_abs_logit: the largest absolute logit of PyTorch's (the scale of the comparison).
        excess: the largest ``|diff| - (atol + rtol * |logit|)``; at most 0 when within tolerance.
        mismatched: images whose predicted class differs.
        images: images compared.
        atol: the absolute tolerance.
        rtol: the relative tolerance.
        source: where the images came from.
    """

    max_abs_diff: float
    max_abs_logit: float
    excess: float
    mismatched: int
    images: int
    atol: float
    rtol: float = 0.0
    source: str = ""

    @property
    def passed(self) -> bool:
        return self.excess <= 0.0 and self.mismatched == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_abs_logit": self.max_abs_logit,
            "same_class": self.mismatched == 0,
            "mismatched": self.mismatched,
            "images": self.images,
            "atol": self.atol,
            "rtol": self.rtol,
            "passed": self.passed,
            "source": self.source,
        }

    def failure(self) -> str:
        """Why the check failed, in one sentence (empty when it passed)."""
        if self.passed:
            return ""
        tol = f"{self.atol:g}" + (f" + {self.rtol:g} x |logit|" if self.rtol else "")
        text = (
            f"ONNX Runtime differs from PyTorch by up to {self.max_abs_diff:.3g} (tolerance {tol}), "
            f"{self.mismatched} of {self.images} predicted classes differ"
        )
        if self.mismatched == 0 and self.max_abs_diff <= 1e-4 * self.max_abs_logit:
            # a difference this small against the logits is what float32 rounding gives
            text += (
                f"; the logits reach {self.max_abs_logit:.3g}, where float32 rounding alone is about "
                f"{self.max_abs_logit * 6e-8:.1g}: "
                f"--rtol {flag_number(max(1e-5, 10 * self.rtol))} scales the tolerance with them"
            )
        return text


def study_images(
    data_dirs: Sequence[str] | None,
    image_size: int,
    channels: int,
    *,
    count: int = 16,
    split: str = "val",
    cache_dir: str | None = None,
) -> tuple[torch.Tensor, str]:
    """Real images for the parity check: ``count`` images spread over ``split`` of the study's data,
    preprocessed as training evaluates them (``evaluators.cache.load_arrays``).

    Args:
        data_dirs: the study's data folders (its run configuration's ``data``); empty or ``None``
            for the bundled data.
        image_size: the side the model takes.
        channels: the model's input channels.

    Returns:
        The float32 batch ``(N, channels, S, S)`` and a description of where it came from.
    """
    from evaluators.data.cache import load_arrays
    from evaluators.data.covidx import load_dataset

    dataset = load_dataset(list(data_dirs) if data_dirs else None, splits=(split,))
    arrays = load_arrays(dataset, split, image_size, channels, cache_dir)
    n = min(count, len(arrays))
    index = sorted({int(i) for i in np.linspace(0, len(arrays) - 1, n).round()})
    where = ", ".join(str(d) for d in dataset.dirs)
    return arrays.batch(index, channels), f"{len(index)} images of the {split} split of {where}"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int],
    *,
    opset: int = OPSET,
    metadata: dict[str, str] | None = None,
) -> None:
    """Export ``model`` to ONNX with a dynamic batch axis (TorchScript exporter: ``dynamo=False``
    is about 25x faster here and matches as exactly), then check it with ``onnx.checker``."""
    from evaluators.inference import METADATA_PREFIX, require

    onnx = require("onnx")
    model = model.eval()
    dummy = torch.zeros(1, *input_size)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    proto.producer_name = "covidnet-nas"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportFailed(f"onnx.checker rejected the exported model: {str(e).splitlines()[0]}") from None
    onnx.save(proto, str(path))


def flag_number(x: float) -> str:
    """A tolerance as a user types it on the command line: ``1e-05`` as ``1e-5``, 0.0001 as ``1e-4``."""
    if 0 < x < 1e-3:
        return np.format_float_scientific(x, trim="-", exp_digits=1)
    return f"{x:g}"


def check_parity(
    onnx_path: str | Path,
    model: nn.Module,
    images: torch.Tensor,
    *,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
    source: str = "",
) -> Parity:
    """Run ``images`` (float32 ``(N, C, H, W)``) through ONNX Runtime and PyTorch and compare."""
    from evaluators.inference import ort_session

    session = ort_session(onnx_path)
    x = images.detach().float().contiguous()
    onnx_logits = np.asarray(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], np.float64)
    with torch.inference_mode():
        torch_logits = model.eval()(x).double().numpy()
    diff = np.abs(onnx_logits - torch_logits)
    excess = float((diff - (atol + rtol * np.abs(torch_logits))).max())
    mismatched = int((onnx_logits.argmax(1) != torch_logits.argmax(1)).sum())
    return Parity(
        float(diff.max()),
        float(np.abs(torch_logits).max()),
        excess,
        mismatched,
        int(x.shape[0]),
        atol,
        rtol,
        source,
    )
