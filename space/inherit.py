"""Children inherit a trained parent's weights: a child ``ArchSpec`` built from a parent network.

The open stand-in for what generative synthesis does with a trained prototype (and what NVIDIA
Model Optimizer's NAS and OpenVINO NNCF's BootstrapNAS do with elastic depth, width and kernel):
``inherit(parent, child_spec)`` returns the child network with weights mapped from a trained
parent of the same macroarchitecture (stem, four stages of bottlenecks, global pool, one linear
layer). No training, no Optuna: the mapping only slices, pads and copies tensors.

The rules, per part of the network:

* **Depth.** A stage keeps the parent's first blocks; the first (downsampling) block is always
  the parent's first. Blocks the parent lacks start fresh.
* **Width.** Channels are chosen by importance and kept in their original order. A channel's
  importance is the share of the L1 mass its producers write into it plus the share its consumers
  read from it (each normalised to sum 1). Where a residual sum ties channels together (a stage's
  output width, shared by every block of the stage through identity shortcuts) one choice serves
  every tensor of the tie: it is written by the stage's output projections (each block's
  ``conv3`` and the first block's shortcut, measured by their batch norms' |gamma|, since batch
  norm divides the conv filters' scale away) and read by the later blocks' ``conv1`` and by the
  next stage's first block (or the linear head). A bottleneck's width (written by ``conv1``, read
  by ``conv3``) applies to ``conv1``'s outputs, ``conv2``'s inputs and outputs and ``conv3``'s
  inputs; the stem's is written by the stem conv and read by the first block. Batch norm is
  sliced alike (weight, bias, running mean and variance). A consumer of a tensor takes the input
  channels its producer kept.
* **Kernel.** A smaller kernel takes the centre of the parent's; a larger one is the parent's,
  zero-padded around it.
* **Conv type.** From a dense parent, a grouped child conv takes the diagonal blocks of the
  parent's (kept) kernel: output channel ``o`` of group ``g`` keeps the weights from the inputs of
  group ``g``; a depthwise child keeps the diagonal, ``w[c, c]``. A dense child of a grouped or
  depthwise parent, or a grouping the parent's does not contain, starts fresh.
* **Squeeze-excitation.** Where both have it, its two 1x1 convs are sliced by the bottleneck's
  channel choice and the hidden width by the importance of the first conv's rows; where only
  the child has it, it starts fresh.
* **Head.** The linear layer keeps the columns of the chosen last-stage features (every class).
* **Wider or deeper than the parent.** Channels and blocks the parent lacks keep ``build``'s
  initialisation (a tensor partly taken is reported ``partial``).

Whatever cannot be mapped keeps ``build``'s initialisation, and the returned ``Inheritance`` says,
per tensor, what was done and the share of the child's parameters that came from the parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from space.network import CovidNetCT, build
from space.spec import ArchSpec

# What happened to a tensor of the child.
INHERITED = "inherited"  # copied whole (same shape)
SLICED = "sliced"  # a subset of the parent's channels
KERNEL = "kernel"  # sliced, and the kernel cropped to its centre or zero-padded
DIAGONAL = "diagonal"  # a grouped/depthwise conv from a dense parent's diagonal blocks
PARTIAL = "partial"  # some channels from the parent, the ones it lacks initialised
FRESH = "fresh"  # nothing to take from the parent: build()'s initialisation


@dataclass
class Inheritance:
    """What the child took from the parent.

    Attributes:
        tensors: child state-dict key -> how it was filled (``INHERITED``, ``SLICED``, ``KERNEL``,
            ``DIAGONAL`` or ``FRESH``).
        params_inherited: parameters (not buffers) that came from the parent.
        params_total: the child's parameters.
    """

    tensors: dict[str, str] = field(default_factory=dict)
    params_inherited: int = 0
    params_total: int = 0

    @property
    def share(self) -> float:
        """The share of the child's parameters taken from the parent."""
        return self.params_inherited / self.params_total if self.params_total else 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for how in self.tensors.values():
            out[how] = out.get(how, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the per-layer report stored with a trial."""
        return {
            "share": self.share,
            "params_inherited": self.params_inherited,
            "params_total": self.params_total,
            "counts": self.counts(),
            "tensors": dict(self.tensors),
        }


def _importance(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output filter (dimension 0): how strongly a channel is written."""
    return weight.detach().abs().flatten(1).sum(1)


def _reads(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm over each input channel (dimension 1) of a consumer: how strongly it is read."""
    return weight.detach().abs().transpose(0, 1).flatten(1).sum(1)


def _both(written: torch.Tensor, read: Sequence[torch.Tensor]) -> torch.Tensor:
    """A channel's importance: the share of the L1 mass written into it plus the share its
    consumers read from it (each normalised to sum 1, so neither dominates by scale)."""
    total = written / written.sum().clamp_min(1e-12)
    reads = sum(read, torch.zeros_like(written))
    if reads.sum() > 0:
        total = total + reads / reads.sum()
    return total


def _choose(importance: torch.Tensor, k: int) -> list[int | None]:
    """The ``k`` most important indices in their original order; ``None`` where the parent has
    fewer than ``k`` (those child channels start fresh)."""
    n = importance.numel()
    top = torch.argsort(importance, descending=True, stable=True)[: min(k, n)]
    chosen: list[int | None] = [int(i) for i in sorted(top.tolist())]
    return chosen + [None] * max(0, k - n)


def _pairs(chosen: Sequence[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(child positions, parent indices) of the chosen channels that the parent has."""
    kept = [(i, o) for i, o in enumerate(chosen) if o is not None]
    return torch.tensor([i for i, _ in kept], dtype=torch.long), torch.tensor(
        [o for _, o in kept], dtype=torch.long
    )


class _Mapper:
    def __init__(self, parent: dict[str, torch.Tensor], child: nn.Module) -> None:
        self.p = parent
        self.c = child.state_dict()
        self.report = Inheritance()
        self.copied: dict[str, int] = {}  # elements taken from the parent, per child tensor

    def has(self, key: str) -> bool:
        return key in self.p

    def _done(self, key: str, how: str, elements: int, complete: bool | None = None) -> None:
        """Record how ``key`` was filled and how many of its elements came from the parent
        (``complete``: every channel was mapped, even if a padded kernel adds zeros)."""
        whole = elements == self.c[key].numel() if complete is None else complete
        self.report.tensors[key] = how if whole or how == FRESH else PARTIAL
        self.copied[key] = elements

    # ----------------------------------------------------------------- tensors
    def copy_channels(self, key: str, out: Sequence[int | None], inp: Sequence[int | None] | None) -> None:
        """``key`` (a conv or linear weight, or a 1-D tensor when ``inp`` is None) from the
        parent's, keeping output channels ``out`` (and input channels ``inp``)."""
        if not self.has(key):
            self._done(key, FRESH, 0)
            return
        src, dst = self.p[key], self.c[key]
        rows, src_rows = _pairs(out)
        if inp is None or src.dim() == 1:
            dst[rows] = src[src_rows].to(dst.dtype)
            n = int(rows.numel()) * (dst[0].numel() if dst.dim() > 1 else 1)
        else:
            cols, src_cols = _pairs(inp)
            dst[rows[:, None], cols[None, :]] = src[src_rows[:, None], src_cols[None, :]].to(dst.dtype)
            n = int(rows.numel() * cols.numel()) * (dst[0, 0].numel() if dst.dim() > 2 else 1)
        same = (
            src.shape == dst.shape
            and list(out) == list(range(src.shape[0]))
            and (inp is None or list(inp) == list(range(src.shape[1])))
        )
        self._done(key, INHERITED if same else SLICED, n)

    def bn(self, prefix: str, channels: Sequence[int | None]) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.copy_channels(f"{prefix}.{name}", channels, None)
        key = f"{prefix}.num_batches_tracked"
        if self.has(key):
            self.c[key].copy_(self.p[key])
            self._done(key, INHERITED, 1)

    def spatial(
        self,
        key: str,
        channels: Sequence[int | None],
        child_groups: int,
        parent_groups: int,
    ) -> None:
        """A bottleneck's kxk conv (``channels`` in and out): channels chosen, the kernel cropped
        or padded, a grouping taken from a dense parent's diagonal blocks."""
        if not self.has(key) or any(c is None for c in channels):
            self._done(key, FRESH, 0)
            return
        if parent_groups != 1 and child_groups != parent_groups:
            self._done(key, FRESH, 0)  # only a dense parent can give any grouping
            return
        src, dst = self.p[key], self.c[key]
        idx = torch.tensor(list(channels), dtype=torch.long)
        k = dst.shape[-1]
        per_group = dst.shape[1]  # input channels per group of the child
        if parent_groups != 1:  # the same grouping: inputs within a group keep their place
            block = src[idx]
        elif child_groups == 1:
            block = src[idx[:, None], idx[None, :]]
        else:  # diagonal blocks: output i of group g reads the inputs of group g
            g = torch.arange(len(channels)) // (len(channels) // child_groups)
            cols = idx[(g * per_group)[:, None] + torch.arange(per_group)[None, :]]
            block = src[idx[:, None], cols]
        dst.copy_(_fit_kernel(block, k).to(dst.dtype))
        how = (
            DIAGONAL if parent_groups == 1 and child_groups != 1 else KERNEL if src.shape[-1] != k else SLICED
        )
        if how == SLICED and src.shape == dst.shape and list(channels) == list(range(src.shape[0])):
            how = INHERITED
        self._done(
            key, how, dst.numel() if src.shape[-1] >= k else dst.shape[0] * dst.shape[1] * src.shape[-1] ** 2
        )

    def fresh(self, key: str) -> None:
        self._done(key, FRESH, 0)


def _fit_kernel(w: torch.Tensor, k: int) -> torch.Tensor:
    """``... x kp x kp`` kernels cropped to their centre ``k x k``, or zero-padded around to it."""
    kp = w.shape[-1]
    if k == kp:
        return w
    if k < kp:
        a = (kp - k) // 2
        return w[..., a : a + k, a : a + k]
    out = torch.zeros(*w.shape[:-2], k, k, dtype=w.dtype)
    a = (k - kp) // 2
    out[..., a : a + kp, a : a + kp] = w
    return out


def _groups(spec_block: Any) -> int:
    return spec_block.mid_channels if spec_block.conv == "depthwise" else spec_block.groups


def inherit(
    parent: CovidNetCT | tuple[ArchSpec, dict[str, torch.Tensor]],
    child_spec: ArchSpec,
    num_classes: int | None = None,
) -> tuple[CovidNetCT, Inheritance]:
    """The child network of ``child_spec`` with weights mapped from ``parent`` (see the module
    docstring), and what was inherited.

    Args:
        parent: a trained ``CovidNetCT``, or its ``(spec, state_dict)``.
        child_spec: a spec of the same macroarchitecture (bottleneck stages; the same number of
            stages and the same stem shape).
        num_classes: the child's classes (default: the parent's).

    Raises:
        ValueError: the two specs are not of one macroarchitecture (stage count, stem kernel or
            stride, input channels, block type).
    """
    if isinstance(parent, CovidNetCT):
        pspec, pstate = parent.spec, {k: v.detach().cpu() for k, v in parent.state_dict().items()}
        classes = num_classes or parent.num_classes
    else:
        pspec, pstate = parent
        classes = num_classes or int(pstate["fc.weight"].shape[0])
    _check_family(pspec, child_spec)
    child = build(child_spec, classes)
    m = _Mapper(pstate, child)
    with torch.no_grad():
        # stem: its filters' importance
        first = [
            pstate[k] for k in ("stages.0.0.conv1.weight", "stages.0.0.shortcut.0.weight") if k in pstate
        ]
        stem_out = _choose(
            _both(_importance(pstate["stem.0.weight"]), [_reads(w) for w in first]),
            child_spec.stem.out_channels,
        )
        m.copy_channels("stem.0.weight", stem_out, list(range(child_spec.stem.in_channels)))
        m.bn("stem.1", stem_out)
        prev = stem_out
        for s, (cst, pst) in enumerate(zip(child_spec.stages, pspec.stages)):
            width = _stage_width(pstate, s, pst, cst.out_channels)
            for b, cb in enumerate(cst.blocks):
                pb = pst.blocks[b] if b < len(pst.blocks) else None
                _block(m, f"stages.{s}.{b}", cb, pb, prev, width)
                prev = width
        if classes == int(pstate["fc.weight"].shape[0]):
            m.copy_channels("fc.weight", list(range(classes)), prev)
            m.copy_channels("fc.bias", list(range(classes)), None)
        else:
            m.fresh("fc.weight")
            m.fresh("fc.bias")
    child.load_state_dict(m.c)
    params = dict(child.named_parameters())
    m.report.params_total = sum(p.numel() for p in params.values())
    m.report.params_inherited = sum(m.copied.get(k, 0) for k in params)
    for key in m.c:  # what no rule touched is the initialisation
        m.report.tensors.setdefault(key, FRESH)
    return child, m.report


def _check_family(parent: ArchSpec, child: ArchSpec) -> None:
    if len(parent.stages) != len(child.stages):
        raise ValueError(f"parent has {len(parent.stages)} stages and the child {len(child.stages)}")
    ps, cs = parent.stem, child.stem
    if (ps.kernel_size, ps.stride, ps.pool, ps.in_channels) != (
        cs.kernel_size,
        cs.stride,
        cs.pool,
        cs.in_channels,
    ):
        raise ValueError("parent and child stems differ in kernel, stride, pool or input channels")
    for spec in (parent, child):
        for stage in spec.stages:
            if any(b.type != "bottleneck" for b in stage.blocks):
                raise ValueError("inheritance maps bottleneck stages only")


def _stage_width(state: dict[str, torch.Tensor], s: int, pst: Any, k: int) -> list[int | None]:
    """The stage's output channels, chosen once for the whole residual tie: written by every
    block's output projection and the first block's shortcut, read by the later blocks, the next
    stage's first block or the head."""
    # Each producer is a conv followed by batch norm, which divides its filters' scale away: what
    # a producer writes into the stream is measured by the batch norm's |gamma| (network slimming's
    # criterion), not by the conv's filter norms.
    written = torch.zeros(pst.out_channels)
    for b in range(len(pst.blocks)):
        written += state[f"stages.{s}.{b}.bn3.weight"].detach().abs()
    if f"stages.{s}.0.shortcut.1.weight" in state:
        written += state[f"stages.{s}.0.shortcut.1.weight"].detach().abs()
    readers = [f"stages.{s}.{b}.conv1.weight" for b in range(1, len(pst.blocks))]
    readers += [f"stages.{s + 1}.0.conv1.weight", f"stages.{s + 1}.0.shortcut.0.weight"]
    read = [_reads(state[r]) for r in readers if r in state]
    if f"stages.{s + 1}.0.conv1.weight" not in state:
        read.append(_reads(state["fc.weight"]))
    return _choose(_both(written, read), k)


def _block(
    m: _Mapper,
    prefix: str,
    cb: Any,
    pb: Any | None,
    inp: list[int | None],
    width: list[int | None],
) -> None:
    """One bottleneck: ``inp`` are the block input's chosen parent channels, ``width`` the stage's."""
    if pb is None:  # deeper than the parent: the block starts fresh
        for key in m.c:
            if key.startswith(prefix + "."):
                m.fresh(key)
        return
    mid = _choose(
        _both(_importance(m.p[f"{prefix}.conv1.weight"]), [_reads(m.p[f"{prefix}.conv3.weight"])]),
        cb.mid_channels,
    )
    m.copy_channels(f"{prefix}.conv1.weight", mid, inp)
    m.bn(f"{prefix}.bn1", mid)
    m.spatial(f"{prefix}.conv2.weight", mid, _groups(cb), _groups(pb))
    m.bn(f"{prefix}.bn2", mid)
    if cb.se_channels and pb.se_channels:
        hidden = _choose(
            _both(_importance(m.p[f"{prefix}.se.fc1.weight"]), [_reads(m.p[f"{prefix}.se.fc2.weight"])]),
            cb.se_channels,
        )
        m.copy_channels(f"{prefix}.se.fc1.weight", hidden, mid)
        m.copy_channels(f"{prefix}.se.fc1.bias", hidden, None)
        m.copy_channels(f"{prefix}.se.fc2.weight", mid, hidden)
        m.copy_channels(f"{prefix}.se.fc2.bias", mid, None)
    m.copy_channels(f"{prefix}.conv3.weight", width, mid)
    m.bn(f"{prefix}.bn3", width)
    if f"{prefix}.shortcut.0.weight" in m.c and m.has(f"{prefix}.shortcut.0.weight"):
        m.copy_channels(f"{prefix}.shortcut.0.weight", width, inp)
        m.bn(f"{prefix}.shortcut.1", width)


__all__ = ["DIAGONAL", "FRESH", "INHERITED", "KERNEL", "PARTIAL", "SLICED", "Inheritance", "inherit"]
