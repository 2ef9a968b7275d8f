"""Reference specs of the COVID-Net CT family, selectable by name.

The original per-layer definitions of COVID-Net CT L and S were never published (they were made
with a proprietary tool). These are reconstructions: the published macroarchitecture (ResNet-style,
four stages of residual blocks, global average pooling, one dense layer) with microarchitectures
calibrated to the published complexity at 512x512x3 and 3 classes:

* ``ct-l``: 1,399.38 K params and 4.18 G "FLOPs" = 2.09 G MACs (published);
* ``ct-s``: 447.57 K params and 1.94 G "FLOPs" = 0.97 G MACs (published).

Both lie inside the default search space, ``prototype`` (``space.sampler.to_params`` maps them to
trial parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from space.registry import Registry
from space.spec import ArchSpec, BlockSpec, StageSpec, StemSpec, grouped_groups, se_channels_for

REFERENCES: Registry[Callable[[], ArchSpec]] = Registry("reference spec")

# (mid_channels, conv, kernel_size, se) per block
BlockPlan = tuple[int, str, int, bool]


def _stage(out: int, blocks: Sequence[BlockPlan], first_stride: int) -> StageSpec:
    specs = []
    for i, (mid, conv, kernel, se) in enumerate(blocks):
        specs.append(
            BlockSpec(
                out_channels=out,
                mid_channels=mid,
                kernel_size=kernel,
                stride=first_stride if i == 0 else 1,
                conv=conv,
                groups=grouped_groups(mid) if conv == "grouped" else 1,
                se_channels=se_channels_for(mid) if se else 0,
            )
        )
    return StageSpec(tuple(specs))


def _dense(mid: int, n: int) -> list[BlockPlan]:
    return [(mid, "dense", 3, False)] * n


def ct_l() -> ArchSpec:
    """COVID-Net CT L (reconstruction): dense 3x3 bottlenecks, depths 3-4-6-3 as in ResNet-50."""
    return ArchSpec(
        name="ct-l",
        stem=StemSpec(out_channels=32),
        stages=(
            _stage(64, _dense(32, 3), 1),
            _stage(128, _dense(32, 4), 2),
            _stage(256, _dense(64, 6), 2),
            _stage(480, _dense(120, 3), 2),
        ),
    )


def ct_s() -> ArchSpec:
    """COVID-Net CT S (reconstruction): CT L's macroarchitecture with shallower, narrower stages
    and grouped spatial convs in the last stage."""
    return ArchSpec(
        name="ct-s",
        stem=StemSpec(out_channels=24),
        stages=(
            _stage(48, [(32, "dense", 3, False), (24, "dense", 3, False)], 1),
            _stage(96, _dense(24, 3), 2),
            _stage(192, _dense(48, 4), 2),
            _stage(368, [(96, "grouped", 3, False)] * 2, 2),
        ),
    )


REFERENCES.register("ct-l", ct_l)
REFERENCES.register("ct-s", ct_s)


def get_reference(name: str) -> ArchSpec:
    """The reference spec called ``name`` (``KeyError`` listing the known names otherwise)."""
    return REFERENCES.get(name)()


def reference_names() -> list[str]:
    return REFERENCES.names()


def load_spec(name_or_path: str) -> ArchSpec:
    """A reference spec by name (``ct-l``), or an ``ArchSpec`` from a JSON file.

    Errors name the file and, for an invalid spec, the field path.
    """
    from pathlib import Path

    from space.spec import SpecError

    path = Path(name_or_path)
    if name_or_path.endswith(".json") or path.is_file():
        if not path.is_file():
            raise SpecError("", "no such spec file", name_or_path)
        try:
            return ArchSpec.from_json(path.read_text())
        except SpecError as e:
            raise e.in_file(name_or_path) from None
    return get_reference(name_or_path)
