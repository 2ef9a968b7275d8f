"""What a candidate is worth: instant profiles (params, MACs, memory), NetScore, and, in the
costlier modules, data loading, training and metrics."""

from __future__ import annotations

from evaluators.complexity import Profile, count_params, netscore, profile

__all__ = ["Profile", "count_params", "netscore", "profile"]

# Data, cache, training and metrics import torchvision; load them on first use so that
# `from evaluators import profile` stays cheap.
_LAZY = {
    "CLASS_NAMES": "evaluators.data.classes",
    "CTDataset": "evaluators.data.covidx",
    "DatasetError": "evaluators.data.covidx",
    "Sample": "evaluators.data.covidx",
    "default_data_dir": "evaluators.data.covidx",
    "load_dataset": "evaluators.data.covidx",
    "SplitArrays": "evaluators.data.cache",
    "default_cache_dir": "evaluators.data.cache",
    "load_arrays": "evaluators.data.cache",
    "EvalResult": "evaluators.metrics",
    "compute_metrics": "evaluators.metrics",
    "evaluate": "evaluators.evaluate",
    "TrainConfig": "evaluators.training",
    "TrainResult": "evaluators.training",
    "resolve_device": "evaluators.device",
    "train": "evaluators.training",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evaluators' has no attribute {name!r}")
