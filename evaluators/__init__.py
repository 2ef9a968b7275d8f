"""What a candidate is worth: instant profiles (params, MACs, memory), NetScore, and, in the
costlier modules, data loading, training and metrics."""

from __future__ import annotations

from evaluators.complexity import Profile, count_params, netscore, profile

__all__ = ["Profile", "count_params", "netscore", "profile"]
