"""Structured channel pruning with torch-pruning's dependency graph, to a MACs target.

``prune_to_target`` shrinks a trained network in ``steps`` rounds. Each round's MACs target lies on
the geometric path from the network's MACs to the final target; the channel ratio that reaches it
is found by bisection, pruning copies of the network with torch-pruning's ``MetaPruner`` (coupled
channels, such as a stage's residual width, are removed together) and measuring each copy with
``evaluators.profile`` at the study's complexity size. A ``finetune`` callback trains the network
between rounds. The last round must land within ``tolerance`` (2 %) of the target.

Scopes: ``local`` prunes every layer by the same fraction of its channels (torch-pruning's
default); ``global`` ranks channels across layers (LAMP's setting). A COVID-Net CT bottleneck's two
inner convs are kept at one width (an ``ArchSpec`` has one ``mid_channels`` per block), so global
rounds equalise them; a block whose projection shortcut would turn into an identity is given one
channel less, so ``space.build(space.spec_of(model))`` rebuilds exactly the pruned network.

A pruned COVID-Net CT is an ``ArchSpec`` again (``as_spec``); any other network (a baseline) is
described by its per-layer channel counts (``search.pruned_models``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn

from evaluators.device import input_channels
from search.errors import RunFailed, UsageError
from search.pruning.spec_repair import equalise, is_covidnet, repair_shortcuts, tied_convs

IMPORTANCES = ("magnitude", "taylor", "lamp")
SCOPES = ("local", "global")
TOLERANCE = 0.02
MAX_LOCAL_RATIO = 0.95
MAX_GLOBAL_RATIO = 0.9
BISECTION_STEPS = 14


def require_torch_pruning() -> ModuleType:
    """``torch_pruning``, or a ``MissingExtraError`` naming the extra that installs it."""
    from evaluators.extras import require

    return require("torch_pruning", "prune")


def default_scope(importance: str) -> str:
    """LAMP is a global criterion (its scores compare layers); the others default to local."""
    return "global" if importance == "lamp" else "local"


def make_importance(name: str) -> Any:
    """torch-pruning's importance criterion called ``name``."""
    tp = require_torch_pruning()
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise UsageError(f"importance must be one of {', '.join(IMPORTANCES)}, got {name!r}")


# ----------------------------------------------------------------------------- network facts
def classifier_of(model: nn.Module) -> nn.Module:
    """The classifier layer (its outputs are the classes and are never pruned): the last Linear,
    else the last Conv2d."""
    for kind in (nn.Linear, nn.Conv2d):
        found = [m for m in model.modules() if isinstance(m, kind)]
        if found:
            return found[-1]
    raise UsageError(f"{type(model).__name__} has no Linear or Conv2d layer to prune")


def macs_of(model: nn.Module, size: int) -> int:
    """fvcore's MACs of one ``size`` x ``size`` image (``evaluators.profile``)."""
    from evaluators import profile

    return profile(model, (input_channels(model), size, size), memory=False).macs


def _clone(model: nn.Module) -> nn.Module:
    """A deep copy that keeps the gradients (Taylor importance reads them)."""
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.detach().clone()
    return twin


def accumulate_gradients(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int = 4
) -> int:
    """Sum the cross-entropy gradients of up to ``max_batches`` batches into ``model``'s ``.grad``
    (for Taylor importance). Eval mode: batch-norm statistics stay as they are. Returns the images
    used."""
    model.eval()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    seen = 0
    for i, (x, y) in enumerate(batches):
        if i >= max_batches:
            break
        loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()
        seen += int(x.shape[0])
    if seen == 0:
        raise RunFailed("Taylor importance needs at least one batch of training data, got none")
    return seen


# ----------------------------------------------------------------------------- one pruning
def prune_once(
    model: nn.Module, ratio: float, importance: Any, scope: str, example: torch.Tensor
) -> nn.Module:
    """A pruned copy of ``model``: ``ratio`` of its channels removed (per layer, or overall for the
    global scope) by ``importance``. ``model`` itself is left as it is."""
    tp = require_torch_pruning()
    twin = _clone(model)
    if ratio <= 0:
        return twin
    pruner = tp.pruner.MetaPruner(
        twin,
        example,
        importance=importance,
        global_pruning=scope == "global",
        pruning_ratio=ratio,
        max_pruning_ratio=MAX_GLOBAL_RATIO if scope == "global" else MAX_LOCAL_RATIO,
        ignored_layers=[classifier_of(twin)],
    )
    groups = list(pruner.step(interactive=True) or ())
    ties = tied_convs(twin)
    if ties:
        groups = equalise(tp, pruner.DG, importance, groups, ties)
    for g in groups:
        g.prune()
    if is_covidnet(twin):
        repair_shortcuts(tp, twin, pruner.DG, importance)
    twin.zero_grad(set_to_none=True)
    return twin


# ----------------------------------------------------------------------------- to a target
@dataclass
class PruneStep:
    """One round: the channel ratio found for the round's MACs target, and what it gave."""

    step: int
    ratio: float
    target_macs: int
    macs: int
    params: int
    seconds: float
    finetune: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "ratio": round(self.ratio, 6),
            "target_macs": self.target_macs,
            "macs": self.macs,
            "params": self.params,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class PruneResult:
    """The pruned network and how it got there."""

    model: nn.Module
    importance: str
    scope: str
    target_macs: int
    macs_before: int
    params_before: int
    macs: int
    params: int
    steps: list[PruneStep]

    @property
    def macs_ratio(self) -> float:
        """Fraction of the MACs removed."""
        return 1.0 - self.macs / self.macs_before


def step_targets(macs_before: int, target: int, steps: int) -> list[int]:
    """The MACs target of each round: a geometric path from ``macs_before`` to ``target``."""
    return [round(macs_before * (target / macs_before) ** (k / steps)) for k in range(1, steps + 1)]


def _next_ratio(lo: float, m_lo: int, hi: float, m_hi: int | None, aim: float) -> float:
    """The next ratio to try between ``lo`` (MACs ``m_lo`` above the target) and ``hi`` (``m_hi`` at
    or below it; ``None``: not tried yet). MACs are taken as proportional to ``(1 - r)^2`` (a
    layer's MACs scale with its input and its output width); the guess stays inside the middle
    80 % of the bracket, so the bracket always shrinks."""
    if m_hi is None:
        guess = 1 - (1 - lo) * math.sqrt(aim / m_lo)
    else:
        a, b, t = math.sqrt(m_lo), math.sqrt(m_hi), math.sqrt(aim)
        guess = lo + (hi - lo) * (a - t) / (a - b) if a > b else (lo + hi) / 2
    width = hi - lo
    return min(max(guess, lo + 0.1 * width), hi - 0.1 * width)


def fit_ratio(
    model: nn.Module,
    target: int,
    size: int,
    importance: Any,
    scope: str,
    example: torch.Tensor,
    *,
    tolerance: float = TOLERANCE,
    final: bool = True,
    current: int | None = None,
) -> tuple[nn.Module, float, int]:
    """The pruned copy of ``model`` whose MACs come closest to ``target`` from below (a safeguarded
    bisection on the channel ratio). Returns the copy, its ratio and its MACs.

    Raises:
        RunFailed: ``final`` and no ratio lands within ``tolerance`` of ``target``.
    """
    current = macs_of(model, size) if current is None else current
    if current <= target:
        return _clone(model), 0.0, current
    limit = MAX_GLOBAL_RATIO if scope == "global" else MAX_LOCAL_RATIO
    # A ratio finer than half a channel of the widest layer changes no width.
    resolution = 0.5 / max(getattr(m, "out_channels", 0) for m in model.modules() if isinstance(m, nn.Conv2d))
    aim = target * (1 - tolerance / 4)  # the middle of the window accepted below the target
    below: tuple[nn.Module, float, int] | None = None
    above: tuple[nn.Module, float, int] = (model, 0.0, current)
    for i in range(BISECTION_STEPS):
        if below is not None and i % 2:
            r = (above[1] + below[1]) / 2  # bisect every other try: MACs jump where many widths change
        else:
            hi, m_hi = (below[1], below[2]) if below else (limit, None)
            r = _next_ratio(above[1], above[2], hi, m_hi, aim)
        twin = prune_once(model, r, importance, scope, example)
        m = macs_of(twin, size)
        if m <= target:
            if below is None or m > below[2] or (m == below[2] and r < below[1]):
                below = (twin, r, m)
        elif r > above[1]:
            above = (twin, r, m)
        if not final and abs(m - target) <= tolerance * target:
            return twin, r, m  # an intermediate round needs no precision
        if below is not None and (
            below[2] >= target * (1 - tolerance / 2) or below[1] - above[1] < resolution
        ):
            break
    tried = [o for o in (below, above) if o is not None and o[1] > 0]
    options = [o for o in tried if abs(o[2] - target) <= tolerance * target]
    if options:
        return options[0]
    if not final and tried:
        return min(tried, key=lambda o: abs(o[2] - target))
    near = ", ".join(f"{o[2]:,}" for o in tried) or "none"
    raise RunFailed(
        f"no channel ratio reaches {target:,} MACs within {tolerance:.0%} (nearest: {near}); "
        "try more --steps or another --target-macs"
    )


def prune_to_target(
    model: nn.Module,
    target_macs: int,
    *,
    size: int,
    importance: str = "magnitude",
    scope: str | None = None,
    steps: int = 3,
    tolerance: float = TOLERANCE,
    finetune: Callable[[nn.Module, int], Any] | None = None,
    gradients: Callable[[nn.Module], Any] | None = None,
    example_size: int = 64,
    on_step: Callable[[PruneStep], None] | None = None,
) -> PruneResult:
    """Prune ``model`` (trained) to ``target_macs`` at ``size`` px in ``steps`` rounds.

    Args:
        model: the network; it is not modified (rounds work on copies).
        target_macs: MACs of one ``size`` x ``size`` image to reach, within ``tolerance``.
        size: the complexity size (the study's ``complexity_size``).
        importance: ``magnitude``, ``taylor`` or ``lamp``.
        scope: ``local`` or ``global``; default ``default_scope(importance)``.
        steps: pruning rounds.
        finetune: ``finetune(model, step)`` trains the pruned network in place after each round;
            its return value is kept in ``PruneStep.finetune``.
        gradients: ``gradients(model)`` fills ``.grad`` before each round (Taylor importance),
            e.g. ``lambda m: accumulate_gradients(m, batches)``.
        example_size: input size of the graph trace (any size the network accepts).
        on_step: called after each round (after its fine-tuning).

    Raises:
        UsageError: a bad argument. RunFailed: the target cannot be met within ``tolerance``.
    """
    if importance not in IMPORTANCES:
        raise UsageError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    scope = scope or default_scope(importance)
    if scope not in SCOPES:
        raise UsageError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be an integer of at least 1, got {steps!r}")
    if importance == "taylor" and gradients is None:
        raise UsageError("Taylor importance needs gradients: pass gradients=... (a few training batches)")
    from evaluators import count_params

    imp = make_importance(importance)
    current = _clone(model).cpu()
    before = macs_of(current, size)
    if not 0 < target_macs < before:
        raise UsageError(
            f"target_macs must be between 0 and the network's {before:,} MACs, got {target_macs:,}"
        )
    example = torch.zeros(1, input_channels(current), example_size, example_size)
    records: list[PruneStep] = []
    for k, goal in enumerate(step_targets(before, target_macs, steps), start=1):
        start = time.time()
        if gradients is not None and importance == "taylor":
            gradients(current)
            current.cpu()
        last = k == steps
        current, ratio, macs = fit_ratio(
            current,
            goal,
            size,
            imp,
            scope,
            example,
            tolerance=tolerance,
            final=last,
            current=records[-1].macs if records else before,
        )
        step = PruneStep(k, ratio, goal, macs, count_params(current), time.time() - start)
        if finetune is not None:
            step.finetune = finetune(current, k)
            current.cpu()
        records.append(step)
        if on_step is not None:
            on_step(step)
    return PruneResult(
        model=current.eval(),
        importance=importance,
        scope=scope,
        target_macs=target_macs,
        macs_before=before,
        params_before=count_params(model),
        macs=records[-1].macs,
        params=count_params(current),
        steps=records,
    )


def target_from(macs_before: int, target_macs: int | None, target_ratio: float | None) -> int:
    """The MACs target: ``target_macs``, or ``macs_before`` less ``target_ratio`` of it."""
    if (target_macs is None) == (target_ratio is None):
        raise UsageError("give exactly one of --target-macs and --target-ratio")
    if target_ratio is not None:
        if not 0 < target_ratio < 1:
            raise UsageError(
                f"--target-ratio is the fraction of MACs to remove, in (0, 1); got {target_ratio}"
            )
        return round(macs_before * (1 - target_ratio))
    assert target_macs is not None
    if not 0 < target_macs < macs_before:
        raise UsageError(
            f"--target-macs must be below the network's {macs_before:,} MACs, got {target_macs:,}"
        )
    return int(target_macs)


def is_finite(model: nn.Module, images: torch.Tensor) -> bool:
    with torch.no_grad():
        return bool(torch.isfinite(model.eval()(images)).all())


def within(macs: int, target: int, tolerance: float = TOLERANCE) -> bool:
    """Whether ``macs`` lies within ``tolerance`` (a fraction) of ``target``."""
    return abs(macs - target) <= tolerance * target
