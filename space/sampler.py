"""The microarchitecture search spaces over the fixed COVID-Net CT macroarchitecture.

``sample(trial, space)`` is the only place in the toolkit that calls Optuna's ``suggest_*``.
Labels are flat and hierarchical (``stem_width``, ``s2_depth``, ``s2_width``, ``s2_b1_mid``,
``s2_b1_kernel``, ``s2_b1_conv``, ``s2_b1_se``), stages and blocks counted from 1.
``to_params(spec, space)`` is the inverse: the parameter dict that makes ``sample`` return ``spec``,
for ``study.enqueue_trial`` and ``optuna.trial.FixedTrial``.

Fixed (the macroarchitecture): a 7x7 stride-2 stem with a 3x3/2 max pool, four stages of
bottleneck residual blocks, the first block of stages 2-4 downsampling by 2, global average
pooling, one linear layer. Searched (the microarchitecture): the stem width, each stage's depth
and output width, and for each block its bottleneck width, kernel size, dense / grouped /
depthwise spatial conv, and squeeze-excitation on or off.

Spaces are registered by name (``SPACES``):

* ``prototype`` (the default): derived from the CT L prototype. Every stage's depth and width,
  every block's bottleneck width and the stem width are at most CT L's and go down to about a
  quarter of them (values counted down from CT L's in fixed steps, so CT L itself is inside);
  kernel, conv type and squeeze-excitation as in ``wide``. Its samples are smaller than CT L.
* ``wide``: the first space of the toolkit, wider and deeper than CT L in every stage (its random
  samples had 2.2-6.4 G MACs at 512 px against CT L's 2.06 G).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from space.errors import UserInputError
from space.registry import Registry
from space.spec import ArchSpec, BlockSpec, HeadSpec, StageSpec, StemSpec, grouped_groups, se_channels_for


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

    @property
    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def __str__(self) -> str:
        return f"{self.low}-{self.high}" + (f" step {self.step}" if self.step != 1 else "")


NUM_STAGES = 4
KERNELS = (3, 5, 7)
CONVS = ("dense", "grouped", "depthwise")
SE = (False, True)


@dataclass(frozen=True)
class SearchSpace:
    """The choices of one search space: ranges per stage (4 stages) and the per-block choices."""

    name: str
    description: str
    stem_width: IntRange
    depth: tuple[IntRange, ...]
    width: tuple[IntRange, ...]
    mid: tuple[IntRange, ...]
    kernels: tuple[int, ...] = KERNELS
    convs: tuple[str, ...] = CONVS
    se: tuple[bool, ...] = SE

    def choices(self) -> list[dict[str, Any]]:
        """One row per searched choice: label, values, count of values."""
        rows: list[dict[str, Any]] = [{"label": "stem_width", "values": str(self.stem_width)}]
        for s in range(NUM_STAGES):
            rows.append({"label": f"s{s + 1}_depth", "values": str(self.depth[s])})
            rows.append({"label": f"s{s + 1}_width", "values": str(self.width[s])})
            rows.append({"label": f"s{s + 1}_b*_mid", "values": str(self.mid[s])})
        rows.append({"label": "s*_b*_kernel", "values": ", ".join(map(str, self.kernels))})
        rows.append({"label": "s*_b*_conv", "values": ", ".join(self.convs)})
        rows.append({"label": "s*_b*_se", "values": "off, on"})
        return rows


SPACES: Registry[SearchSpace] = Registry("search space")
DEFAULT_SPACE = "prototype"


def get_space(space: str | SearchSpace = DEFAULT_SPACE) -> SearchSpace:
    """A registered space by name (``UnknownNameError`` listing the known ones), or ``space`` itself."""
    return space if isinstance(space, SearchSpace) else SPACES.get(space)


def space_names() -> list[str]:
    return SPACES.names()


def _down(high: int, step: int, floor: int = 8) -> IntRange:
    """``high`` and the values below it in ``step``s, down to about a quarter of ``high``."""
    low = high - step * math.floor((high - high / 4) / step)
    while low < floor:
        low += step
    return IntRange(low, high, step)


def derive_below(prototype: ArchSpec, name: str, description: str) -> SearchSpace:
    """The space below ``prototype`` (a spec of this macroarchitecture): each stage's depth from
    ``ceil(depth / 4)`` to its depth; widths counted down from the prototype's in steps of
    ``8 * ceil(width / 256)``; bottleneck widths (the largest of the stage's blocks) and the stem
    in steps of 8; each down to about a quarter."""
    stages = prototype.stages
    return SearchSpace(
        name=name,
        description=description,
        stem_width=_down(prototype.stem.out_channels, 8),
        depth=tuple(IntRange(max(1, math.ceil(len(st.blocks) / 4)), len(st.blocks)) for st in stages),
        width=tuple(_down(st.out_channels, 8 * math.ceil(st.out_channels / 256), 16) for st in stages),
        mid=tuple(_down(max(b.mid_channels for b in st.blocks), 8) for st in stages),
    )


WIDE = SearchSpace(
    name="wide",
    description="the first space: wider and deeper than CT L in every stage",
    stem_width=IntRange(16, 64, 8),
    depth=(IntRange(1, 4), IntRange(1, 5), IntRange(1, 6), IntRange(1, 4)),
    width=(IntRange(16, 128, 16), IntRange(32, 256, 16), IntRange(64, 384, 16), IntRange(128, 640, 16)),
    mid=(IntRange(8, 64, 8), IntRange(8, 128, 8), IntRange(16, 192, 8), IntRange(32, 256, 8)),
)
SPACES.register("wide", WIDE)


def _register_prototype() -> None:
    from space.references import get_reference

    SPACES.register(
        DEFAULT_SPACE,
        derive_below(
            get_reference("ct-l"),
            DEFAULT_SPACE,
            "below the CT L prototype: every depth and width at most CT L's, down to about a quarter",
        ),
    )


def _suggest(trial: TrialLike, name: str, r: IntRange) -> int:
    return int(trial.suggest_int(name, r.low, r.high, step=r.step))


def sample(trial: TrialLike, space: str | SearchSpace = DEFAULT_SPACE) -> ArchSpec:
    """Sample one valid ``ArchSpec`` from ``space`` (a registered name or a ``SearchSpace``)."""
    sp = get_space(space)
    stem = StemSpec(out_channels=_suggest(trial, "stem_width", sp.stem_width))
    stages = []
    for s in range(1, NUM_STAGES + 1):
        depth = _suggest(trial, f"s{s}_depth", sp.depth[s - 1])
        width = _suggest(trial, f"s{s}_width", sp.width[s - 1])
        blocks = []
        for b in range(1, depth + 1):
            p = f"s{s}_b{b}_"
            mid = _suggest(trial, p + "mid", sp.mid[s - 1])
            conv = str(trial.suggest_categorical(p + "conv", sp.convs))
            blocks.append(
                BlockSpec(
                    out_channels=width,
                    mid_channels=mid,
                    kernel_size=int(trial.suggest_categorical(p + "kernel", sp.kernels)),
                    stride=2 if (b == 1 and s > 1) else 1,
                    conv=conv,
                    groups=grouped_groups(mid) if conv == "grouped" else 1,
                    se_channels=se_channels_for(mid) if trial.suggest_categorical(p + "se", sp.se) else 0,
                )
            )
        stages.append(StageSpec(tuple(blocks)))
    return ArchSpec(stem=stem, stages=tuple(stages), head=HeadSpec())


class NotInSpaceError(UserInputError, ValueError):
    """A spec that the search space cannot produce."""


def to_params(spec: ArchSpec, space: str | SearchSpace = DEFAULT_SPACE) -> dict[str, Any]:
    """The parameters for which ``sample(trial, space)`` returns ``spec`` (up to its ``name``).

    Raises:
        NotInSpaceError: naming the first field outside the space.
    """
    sp = get_space(space)
    params: dict[str, Any] = {}

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise NotInSpaceError(
                f"{spec.name or spec.arch_id} is outside the search space {sp.name!r}: {what}"
            )

    st = spec.stem
    need(
        (st.kernel_size, st.stride, st.pool, st.in_channels) == (7, 2, True, 3),
        "stem must be 7x7/2 + pool, 3 channels",
    )
    need(
        sp.stem_width.contains(st.out_channels), f"stem.out_channels={st.out_channels} not in {sp.stem_width}"
    )
    params["stem_width"] = st.out_channels
    need(len(spec.stages) == NUM_STAGES, f"needs {NUM_STAGES} stages, has {len(spec.stages)}")
    need(spec.head == HeadSpec(), "head must be the default (no dropout)")
    for s, stage in enumerate(spec.stages, start=1):
        need(
            sp.depth[s - 1].contains(len(stage.blocks)),
            f"stage {s} depth {len(stage.blocks)} not in {sp.depth[s - 1]}",
        )
        params[f"s{s}_depth"] = len(stage.blocks)
        width = stage.blocks[0].out_channels
        need(sp.width[s - 1].contains(width), f"stage {s} width {width} not in {sp.width[s - 1]}")
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
                sp.mid[s - 1].contains(block.mid_channels),
                f"{where}.mid_channels={block.mid_channels} not in {sp.mid[s - 1]}",
            )
            need(block.kernel_size in sp.kernels, f"{where}.kernel_size not in {sp.kernels}")
            need(block.conv in sp.convs, f"{where}.conv not in {sp.convs}")
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


def contains(spec: ArchSpec, space: str | SearchSpace = DEFAULT_SPACE) -> bool:
    """Whether ``space`` can produce ``spec``."""
    try:
        to_params(spec, space)
    except NotInSpaceError:
        return False
    return True


_register_prototype()
