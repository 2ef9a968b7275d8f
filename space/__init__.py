"""What can be built: ``ArchSpec``, its blocks, the COVID-Net CT reference specs and the search space."""

from __future__ import annotations

from space.blocks import BLOCKS
from space.network import CovidNetCT, build, spec_of
from space.references import REFERENCES, get_reference, load_spec, reference_names
from space.registry import Registry
from space.sampler import contains, sample, to_params
from space.spec import SCHEMA_VERSION, ArchSpec, BlockSpec, HeadSpec, SpecError, StageSpec, StemSpec

__all__ = [
    "BLOCKS",
    "REFERENCES",
    "SCHEMA_VERSION",
    "ArchSpec",
    "BlockSpec",
    "CovidNetCT",
    "HeadSpec",
    "Registry",
    "SpecError",
    "StageSpec",
    "StemSpec",
    "build",
    "contains",
    "get_reference",
    "load_spec",
    "reference_names",
    "sample",
    "spec_of",
    "to_params",
]
