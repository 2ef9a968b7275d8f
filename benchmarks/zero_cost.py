"""Zero-cost scores of an untrained network: a look at an architecture before any training.

* ``synflow`` (Tanaka et al. 2020, as a NAS proxy in Abdelfattah et al. 2021): with every weight
  replaced by its absolute value and an all-ones input, the sum over parameters of
  ``|theta * dR/dtheta|`` where ``R`` is the sum of the outputs (in float64, batch norm in eval).
* ``naswot`` (Mellor et al. 2021): for a batch of real images, the binary ReLU activation codes
  ``c`` of each image; ``K = sum over ReLUs of c c^T + (1 - c)(1 - c)^T``; the score is
  ``log |det K|``: networks whose units separate images score higher.
* ``params``: the parameter count, the control any zero-cost score must beat.

Here for measurement only (``bench_inherit.py``); nothing ships as a search filter unless it
ranks clearly better than ``params``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def synflow(model: nn.Module, input_size: tuple[int, int, int]) -> float:
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    out = net(torch.ones(1, *input_size, dtype=torch.float64))
    out.sum().backward()
    return float(sum((p * p.grad).abs().sum().item() for p in net.parameters() if p.grad is not None))


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    net = copy.deepcopy(model).eval()
    n = images.shape[0]
    k = torch.zeros(n, n, dtype=torch.float64)
    handles = []

    def hook(_: nn.Module, __: Any, out: torch.Tensor) -> None:
        c = (out.detach().flatten(1) > 0).double()
        k.add_(c @ c.t() + (1 - c) @ (1 - c).t())

    for m in net.modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(images)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if sign > 0 else float("-inf")


def params(model: nn.Module) -> float:
    return float(sum(p.numel() for p in model.parameters()))
