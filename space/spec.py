"""``ArchSpec``: a network of the COVID-Net CT family described as plain, frozen data.

Every width is an explicit channel count (never a multiplier) so that a pruned network, whose
channel counts no longer follow any rule, is still an ``ArchSpec``. Specs validate themselves on
construction; errors name the field path and the allowed values, e.g.
``stages[1].blocks[0].kernel_size must be one of 3, 5, 7, got 4``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from space.errors import UserInputError

SCHEMA_VERSION = 1

KERNEL_SIZES = (3, 5, 7)
STRIDES = (1, 2)
CONV_TYPES = ("dense", "grouped", "depthwise")
BLOCK_TYPES = ("bottleneck", "basic")
IN_CHANNELS = (1, 3)
MAX_CHANNELS = 8192
MAX_GROUPS = 8
# The most weights a spec may ask for (conv and linear weights, counted from the spec before any
# tensor exists): 100 M, 70x CT L and 20x NASNet-A-Mobile, 0.4 GB in float32 (about 1.6 GB with
# gradients and optimizer state). Without it a crafted spec of 8192-channel blocks asks for tens
# of GB when built.
MAX_PARAMS = 100_000_000


def grouped_groups(mid: int) -> int:
    """Groups of a "grouped" conv over ``mid`` channels in the toolkit's specs: a power of two in
    [2, 8], about 8 channels a group (``mid`` a multiple of 8 always divides)."""
    g = 2
    while g * 2 <= min(MAX_GROUPS, mid // 8):
        g *= 2
    return g


def se_channels_for(mid: int) -> int:
    """Hidden width of the squeeze-excitation of a block with ``mid`` bottleneck channels."""
    return max(8, mid // 4)


class SpecError(UserInputError, ValueError):
    """An invalid architecture spec; ``path`` names the offending field."""

    def __init__(self, path: str, message: str, source: str = "") -> None:
        self.path = path
        self.detail = message
        self.source = source
        text = f"{path} {message}" if path else message
        super().__init__(f"{source}: {text}" if source else text)

    def under(self, prefix: str) -> SpecError:
        """The same error with ``prefix`` prepended to its field path."""
        if not self.path:
            path = prefix
        elif self.path.startswith("["):
            path = prefix + self.path
        else:
            path = f"{prefix}.{self.path}"
        return SpecError(path, self.detail, self.source)

    def in_file(self, source: str) -> SpecError:
        """The same error, naming the file it came from."""
        return SpecError(self.path, self.detail, source)


def _check_int(path: str, value: Any, low: int = 1, high: int = MAX_CHANNELS) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise SpecError(path, f"must be between {low} and {high}, got {value}")


def _check_choice(path: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if isinstance(value, bool) or value not in allowed:
        shown = ", ".join(str(a) for a in allowed)
        raise SpecError(path, f"must be one of {shown}, got {value!r}")


@dataclass(frozen=True)
class StemSpec:
    """The stem: one ``kernel_size`` convolution, batch norm, ReLU and an optional 3x3/2 max pool."""

    out_channels: int
    kernel_size: int = 7
    stride: int = 2
    pool: bool = True
    in_channels: int = 3

    def __post_init__(self) -> None:
        _check_int("out_channels", self.out_channels)
        _check_choice("kernel_size", self.kernel_size, KERNEL_SIZES)
        _check_choice("stride", self.stride, STRIDES)
        if not isinstance(self.pool, bool):
            raise SpecError("pool", f"must be true or false, got {self.pool!r}")
        _check_choice("in_channels", self.in_channels, IN_CHANNELS)


@dataclass(frozen=True)
class BlockSpec:
    """One residual block.

    ``bottleneck``: 1x1 conv to ``mid_channels``, ``kernel_size`` conv (dense, grouped or
    depthwise) at ``mid_channels``, optional squeeze-excitation, 1x1 conv to ``out_channels``.
    With ``mid_channels`` above ``out_channels`` and a depthwise conv this is an inverted residual.
    ``basic``: ``kernel_size`` conv to ``mid_channels``, ``kernel_size`` conv to ``out_channels``,
    optional squeeze-excitation on the output.
    The shortcut is the identity where shape allows, else a strided 1x1 projection.
    """

    out_channels: int
    mid_channels: int
    type: str = "bottleneck"
    kernel_size: int = 3
    stride: int = 1
    conv: str = "dense"
    groups: int = 1
    se_channels: int = 0

    def __post_init__(self) -> None:
        _check_choice("type", self.type, BLOCK_TYPES)
        _check_int("out_channels", self.out_channels)
        _check_int("mid_channels", self.mid_channels)
        _check_choice("kernel_size", self.kernel_size, KERNEL_SIZES)
        _check_choice("stride", self.stride, STRIDES)
        _check_choice("conv", self.conv, CONV_TYPES)
        _check_int("groups", self.groups, 1, MAX_CHANNELS)
        _check_int("se_channels", self.se_channels, 0, MAX_CHANNELS)
        if self.conv == "dense" and self.groups != 1:
            raise SpecError("groups", f"must be 1 for a dense conv, got {self.groups}")
        if self.conv == "grouped":
            if self.groups < 2:
                raise SpecError("groups", f"must be at least 2 for a grouped conv, got {self.groups}")
            if self.mid_channels % self.groups:
                raise SpecError("groups", f"must divide mid_channels={self.mid_channels}, got {self.groups}")
            if self.type == "basic" and self.out_channels % self.groups:
                raise SpecError("groups", f"must divide out_channels={self.out_channels}, got {self.groups}")
        if self.conv == "depthwise" and self.groups != 1:
            raise SpecError("groups", f"must be 1 for a depthwise conv (implied), got {self.groups}")
        if self.conv == "depthwise" and self.type == "basic" and self.out_channels != self.mid_channels:
            raise SpecError(
                "out_channels",
                f"must equal mid_channels={self.mid_channels} in a depthwise basic block, "
                f"got {self.out_channels}",
            )
        if self.se_channels:
            se_on = self.out_channels if self.type == "basic" else self.mid_channels
            if self.se_channels > se_on:
                raise SpecError("se_channels", f"must be 0 (off) or at most {se_on}, got {self.se_channels}")


@dataclass(frozen=True)
class StageSpec:
    """A stage: residual blocks run in order; a block's stride downsamples."""

    blocks: tuple[BlockSpec, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, tuple):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise SpecError("blocks", "must hold at least one block, got none")
        for i, b in enumerate(self.blocks):
            if not isinstance(b, BlockSpec):
                raise SpecError(f"blocks[{i}]", f"must be a BlockSpec, got {type(b).__name__}")

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels


@dataclass(frozen=True)
class HeadSpec:
    """The head: global average pooling, optional dropout, one linear layer."""

    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise SpecError("dropout", f"must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise SpecError("dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: stem, stages of residual blocks, head.

    ``name`` is a label only; it does not enter ``arch_id``.
    """

    stem: StemSpec
    stages: tuple[StageSpec, ...]
    head: HeadSpec = field(default_factory=HeadSpec)
    name: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))
        if not isinstance(self.stem, StemSpec):
            raise SpecError("stem", f"must be a StemSpec, got {type(self.stem).__name__}")
        if not isinstance(self.head, HeadSpec):
            raise SpecError("head", f"must be a HeadSpec, got {type(self.head).__name__}")
        if self.schema_version != SCHEMA_VERSION:
            raise SpecError(
                "schema_version", f"must be {SCHEMA_VERSION} (this version's), got {self.schema_version!r}"
            )
        if not self.stages:
            raise SpecError("stages", "must hold at least one stage, got none")
        channels = self.stem.out_channels
        for s, stage in enumerate(self.stages):
            if not isinstance(stage, StageSpec):
                raise SpecError(f"stages[{s}]", f"must be a StageSpec, got {type(stage).__name__}")
            for b, block in enumerate(stage.blocks):
                path = f"stages[{s}].blocks[{b}]"
                if block.type == "basic":
                    if block.conv == "grouped" and channels % block.groups:
                        raise SpecError(
                            f"{path}.groups",
                            f"must divide the block's input channels={channels}, got {block.groups}",
                        )
                    if block.conv == "depthwise" and block.mid_channels != channels:
                        raise SpecError(
                            f"{path}.mid_channels",
                            f"must equal the block's input channels={channels} in a depthwise "
                            f"basic block, got {block.mid_channels}",
                        )
                channels = block.out_channels
        weights = self.weight_count()
        if weights > MAX_PARAMS:
            raise SpecError(
                "stages",
                f"ask for about {weights / 1e6:,.0f} M weights ({weights * 4 / 1e9:.1f} GB in float32); "
                f"a spec may have at most {MAX_PARAMS / 1e6:.0f} M",
            )

    def weight_count(self, num_classes: int = 3) -> int:
        """The conv and linear weights of the built network (batch norm and biases left out),
        counted from the spec alone, so that a spec too large to build is refused before any tensor
        is allocated (tests/space/test_spec_limits.py checks it against built networks)."""
        k = self.stem.kernel_size
        n = k * k * self.stem.in_channels * self.stem.out_channels
        ch = self.stem.out_channels
        for stage in self.stages:
            for b in stage.blocks:
                mid, out, kk = b.mid_channels, b.out_channels, b.kernel_size * b.kernel_size
                groups = mid if b.conv == "depthwise" else b.groups
                if b.type == "bottleneck":
                    n += ch * mid + kk * mid * mid // groups + mid * out
                    se_on = mid
                else:
                    first = ch if b.conv == "depthwise" else groups  # depthwise basic: mid == ch
                    n += kk * ch * mid // first + kk * mid * out // (out if b.conv == "depthwise" else groups)
                    se_on = out
                if b.se_channels:
                    n += 2 * se_on * b.se_channels
                if b.stride != 1 or ch != out:
                    n += ch * out  # the 1x1 projection shortcut
                ch = out
        return n + ch * num_classes

    # ----------------------------------------------------------------- identity and serialisation
    @property
    def arch_id(self) -> str:
        """A short stable identifier of the structure (10 hex digits of a SHA-1)."""
        body = self.to_dict()
        body.pop("name")
        body.pop("schema_version")
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    @property
    def num_blocks(self) -> int:
        return sum(len(s.blocks) for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "stem": _fields(self.stem),
            "stages": [{"blocks": [_fields(b) for b in st.blocks]} for st in self.stages],
            "head": _fields(self.head),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> ArchSpec:
        """Build a spec from ``to_dict`` output; errors name the field path."""
        if not isinstance(data, dict):
            raise SpecError("", f"an ArchSpec must be a JSON object, got {type(data).__name__}")
        _no_unknown("", data, {"schema_version", "name", "stem", "stages", "head"})
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError("schema_version", f"must be {SCHEMA_VERSION} (this version's), got {version!r}")
        if "stem" not in data:
            raise SpecError("stem", "is required")
        if "stages" not in data:
            raise SpecError("stages", "is required")
        stem = _build(StemSpec, data["stem"], "stem")
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list):
            raise SpecError("stages", f"must be a list, got {type(raw_stages).__name__}")
        stages = []
        for s, raw in enumerate(raw_stages):
            path = f"stages[{s}]"
            if not isinstance(raw, dict):
                raise SpecError(path, f"must be an object with 'blocks', got {type(raw).__name__}")
            _no_unknown(path, raw, {"blocks"})
            raw_blocks = raw.get("blocks")
            if not isinstance(raw_blocks, list):
                raise SpecError(f"{path}.blocks", f"must be a list, got {type(raw_blocks).__name__}")
            blocks = tuple(_build(BlockSpec, rb, f"{path}.blocks[{b}]") for b, rb in enumerate(raw_blocks))
            try:
                stages.append(StageSpec(blocks))
            except SpecError as e:
                raise e.under(path) from None
        head = _build(HeadSpec, data.get("head", {}), "head")
        name = data.get("name", "")
        if not isinstance(name, str):
            raise SpecError("name", f"must be a string, got {name!r}")
        return cls(stem=stem, stages=tuple(stages), head=head, name=name)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError("", f"not valid JSON: {e}") from None
        return cls.from_dict(data)


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _no_unknown(path: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise SpecError(where, f"is not a known field; allowed: {', '.join(sorted(allowed))}")


def _build(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SpecError(path, f"must be an object, got {type(data).__name__}")
    allowed = {f.name for f in fields(cls)}
    _no_unknown(path, data, allowed)
    for f in fields(cls):
        if f.name not in data and f.default is MISSING and f.default_factory is MISSING:
            raise SpecError(f"{path}.{f.name}", "is required")
    try:
        return cls(**data)
    except SpecError as e:
        raise e.under(path) from None
