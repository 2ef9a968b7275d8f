"""What the search is compared against: a registry of baseline networks.

``create_baseline("mobilenet_v2", num_classes=3)`` builds a randomly initialised network;
``baseline_names()`` lists them; ``baseline_info(name)`` holds the display names, the published
complexity and the last convolutional stage (for Grad-CAM).
"""

from __future__ import annotations

# Importing the modules registers their baselines.
from baselines import covidnet, nasnet, torchvision_models  # noqa: F401
from baselines.nasnet import NASNetA, nasnet_a_mobile
from baselines.registry import (
    BASELINES,
    IN_CHANS,
    BaselineInfo,
    Published,
    baseline_info,
    baseline_names,
    create_baseline,
    last_conv_stage,
    register_baseline,
)

__all__ = [
    "BASELINES",
    "IN_CHANS",
    "BaselineInfo",
    "NASNetA",
    "Published",
    "baseline_info",
    "baseline_names",
    "create_baseline",
    "last_conv_stage",
    "nasnet_a_mobile",
    "register_baseline",
]
