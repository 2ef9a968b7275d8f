"""ONNX export with a parity check, for pruned models: one function, easy to swap.

``search.onnx_export`` (the ``search export`` implementation) does this for exports; where it is
installed its ``export_onnx`` and ``check_parity`` are used, so a pruned model passes exactly the
check an export would apply. Otherwise a minimal TorchScript export (``dynamo=False``, the fast
exporter here) is compared with PyTorch in ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PARITY_ATOL = 1e-4
OPSET = 18


def onnx_parity(
    model: nn.Module, images: torch.Tensor, path: str | Path, atol: float = PARITY_ATOL
) -> dict[str, Any]:
    """Export ``model`` to ``path`` and compare ONNX Runtime's logits with PyTorch's on ``images``.

    Returns:
        ``max_abs_diff``, ``mismatched`` (images whose class differs), ``images``, ``atol`` and
        ``passed``.
    """
    model = model.eval()
    size = tuple(int(v) for v in images.shape[1:])
    try:
        from search.onnx_export import check_parity, export_onnx
    except ImportError:
        _export(model, path, size)
        return _compare(model, images, path, atol)
    export_onnx(model, path, size)  # type: ignore[arg-type]
    return dict(check_parity(path, model, images, atol=atol).to_dict())


def _require(module: str) -> Any:
    from evaluators.extras import require

    return require(module, "onnx")


def _export(model: nn.Module, path: str | Path, size: tuple[int, ...]) -> None:
    _require("onnx")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, *size),),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _compare(model: nn.Module, images: torch.Tensor, path: str | Path, atol: float) -> dict[str, Any]:
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images.detach().float().contiguous()
    got = np.asarray(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], np.float64)
    with torch.inference_mode():
        want = model(x).double().numpy()
    diff = float(np.abs(got - want).max())
    mismatched = int((got.argmax(1) != want.argmax(1)).sum())
    return {
        "max_abs_diff": diff,
        "mismatched": mismatched,
        "images": int(x.shape[0]),
        "atol": atol,
        "passed": diff <= atol and mismatched == 0,
    }
