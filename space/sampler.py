"""The microarchitecture search space over the fixed COVID-Net CT macroarchitecture.

``sample(trial)`` is the only place in the toolkit that calls Optuna's ``suggest_*``. Labels are
flat and hierarchical (``stem_width``, ``s2_depth``, ``s2_width``, ``s2_b1_mid``, ``s2_b1_kernel``,
``s2_b1_conv``, ``s2_b1_se``), stages and blocks counted from 1. ``to_params(spec)`` is the inverse:
the parameter dict that makes ``sample`` return ``spec``, for ``study.enqueue_trial`` and
``optuna.trial.FixedTrial``.

Fixed (the macroarchitecture): a 7x7 stride-2 stem with a 3x3/2 max pool, four stages of
bottleneck residual blocks, the first block of stages 2-4 downsampling by 2, global average
pooling, one linear layer. Searched (the microarchitecture): the stem width, each stage's depth
and output width, and for each block its bottleneck width, kernel size, dense / grouped /
depthwise spatial conv, and squeeze-excitation on or off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from space.errors import UserInputError
from space.spec import ArchSpec, BlockSpec, HeadSpec, StageSpec, StemSpec


class TrialLike(Protocol):
    """The part of ``optuna.trial.Trial`` (and ``FixedTrial``) that ``sample`` uses."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1

    def contains(self, value: int) -> bool:
        return self.low <= value <= self.high and (value - self.low) % self.step == 0


NUM_STAGES = 4
STEM_WIDTH = IntRange(16, 64, 8)
DEPTH = (IntRange(1, 4), IntRange(1, 5), IntRange(1, 6), IntRange(1, 4))
WIDTH = (IntRange(16, 128, 16), IntRange(32, 256, 16), IntRange(64, 384, 16), IntRange(128, 640, 16))
MID = (IntRange(8, 64, 8), IntRange(8, 128, 8), IntRange(16, 192, 8), IntRange(32, 256, 8))
KERNELS = (3, 5, 7)
CONVS = ("dense", "grouped", "depthwise")
SE = (False, True)
MAX_GROUPS = 8


def grouped_groups(mid: int) -> int:
    """Groups of a "grouped" conv over ``mid`` channels: a power of two in [2, 8], about 8 channels
    a group (``mid`` is a multiple of 8, so it always divides)."""
    g = 2
    while g * 2 <= min(MAX_GROUPS, mid // 8):
        g *= 2
    return g


def se_channels_for(mid: int) -> int:
    """Hidden width of the squeeze-excitation of a block with ``mid`` bottleneck channels."""
    return max(8, mid // 4)


def _suggest(trial: TrialLike, name: str, r: IntRange) -> int:
    return int(trial.suggest_int(name, r.low, r.high, step=r.step))


def sample(trial: TrialLike) -> ArchSpec:
    """Sample one valid ``ArchSpec`` from the space."""
    stem = StemSpec(out_channels=_suggest(trial, "stem_width", STEM_WIDTH))
    stages = []
    for s in range(1, NUM_STAGES + 1):
        depth = _suggest(trial, f"s{s}_depth", DEPTH[s - 1])
        width = _suggest(trial, f"s{s}_width", WIDTH[s - 1])
        blocks = []
        for b in range(1, depth + 1):
            p = f"s{s}_b{b}_"
            mid = _suggest(trial, p + "mid", MID[s - 1])
            conv = str(trial.suggest_categorical(p + "conv", CONVS))
            blocks.append(
                BlockSpec(
                    out_channels=width,
                    mid_channels=mid,
                    kernel_size=int(trial.suggest_categorical(p + "kernel", KERNELS)),
                    stride=2 if (b == 1 and s > 1) else 1,
                    conv=conv,
                    groups=grouped_groups(mid) if conv == "grouped" else 1,
                    se_channels=se_channels_for(mid) if trial.suggest_categorical(p + "se", SE) else 0,
                )
            )
        stages.append(StageSpec(tuple(blocks)))
    return ArchSpec(stem=stem, stages=tuple(stages), head=HeadSpec())


class NotInSpaceError(UserInputError, ValueError):
    """A spec that the search space cannot produce."""


def to_params(spec: ArchSpec) -> dict[str, Any]:
    """The parameters for which ``sample`` returns ``spec`` (up to its ``name``).

    Raises:
        NotInSpaceError: naming the first field outside the space.
    """
    params: dict[str, Any] = {}

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise NotInSpaceError(f"{spec.name or spec.arch_id} is outside the search space: {what}")

    st = spec.stem
    need(
        (st.kernel_size, st.stride, st.pool, st.in_channels) == (7, 2, True, 3),
        "stem must be 7x7/2 + pool, 3 channels",
    )
    need(STEM_WIDTH.contains(st.out_channels), f"stem.out_channels={st.out_channels} not in {STEM_WIDTH}")
    params["stem_width"] = st.out_channels
    need(len(spec.stages) == NUM_STAGES, f"needs {NUM_STAGES} stages, has {len(spec.stages)}")
    need(spec.head == HeadSpec(), "head must be the default (no dropout)")
    for s, stage in enumerate(spec.stages, start=1):
        need(
            DEPTH[s - 1].contains(len(stage.blocks)),
            f"stage {s} depth {len(stage.blocks)} not in {DEPTH[s - 1]}",
        )
        params[f"s{s}_depth"] = len(stage.blocks)
        width = stage.blocks[0].out_channels
        need(WIDTH[s - 1].contains(width), f"stage {s} width {width} not in {WIDTH[s - 1]}")
        params[f"s{s}_width"] = width
        for b, block in enumerate(stage.blocks, start=1):
            p = f"s{s}_b{b}_"
            where = f"stages[{s - 1}].blocks[{b - 1}]"
            need(block.type == "bottleneck", f"{where}.type must be bottleneck")
            need(block.out_channels == width, f"{where}.out_channels differs from the stage width")
            need(
                block.stride == (2 if (b == 1 and s > 1) else 1),
                f"{where}.stride breaks the macroarchitecture",
            )
            need(
                MID[s - 1].contains(block.mid_channels),
                f"{where}.mid_channels={block.mid_channels} not in {MID[s - 1]}",
            )
            need(block.kernel_size in KERNELS, f"{where}.kernel_size not in {KERNELS}")
            if block.conv == "grouped":
                need(block.groups == grouped_groups(block.mid_channels), f"{where}.groups is not the space's")
            se = block.se_channels != 0
            if se:
                need(
                    block.se_channels == se_channels_for(block.mid_channels),
                    f"{where}.se_channels is not the space's",
                )
            params[p + "mid"] = block.mid_channels
            params[p + "conv"] = block.conv
            params[p + "kernel"] = block.kernel_size
            params[p + "se"] = se
    return params


def contains(spec: ArchSpec) -> bool:
    """Whether the search space can produce ``spec``."""
    try:
        to_params(spec)
    except NotInSpaceError:
        return False
    return True
