"""Where and how a network runs: the device, the input channels it takes, and seeding.

The one copy of each, shared by training, evaluation, export, explanation and pruning."""

from __future__ import annotations

import torch
from torch import nn

from evaluators.settings import ConfigError


def _parse_device(device: str) -> torch.device | None:
    """The device ``device`` names (None for "auto"); ``ConfigError`` for anything else."""
    if device == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return dev


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device``: "auto" is CUDA when available, then MPS, then the CPU.

    Raises:
        ConfigError: an unknown name, or a CUDA/MPS device that is not available here.
    """
    if isinstance(device, torch.device):
        return device
    dev = _parse_device(device)
    if dev is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} asked for, but only {torch.cuda.device_count()} GPUs are here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r} asked for, but MPS is not available here")
    return dev


def input_channels(model: nn.Module) -> int:
    """Input channels ``model`` expects: its spec's, else its first convolution's, else 3."""
    spec = getattr(model, "spec", None)
    stem = getattr(spec, "stem", None)
    if stem is not None and getattr(stem, "in_channels", None) in (1, 3):
        return int(stem.in_channels)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (model initialisation, dropout)."""
    torch.manual_seed(seed)


def environment(device: str | torch.device = "auto") -> dict[str, object]:
    """Where a run ran, for the record (a report's setup block): the resolved device (and the GPU's
    name), torch's intra-op threads, and the versions of Python, torch, Optuna and this toolkit."""
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    dev = resolve_device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {
        "device": str(dev),
        "device_type": dev.type,
        "gpu": gpu,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "optuna": version("optuna"),
            "covidnet-nas": version("covidnet-nas"),
        },
    }
