"""Where and how a network runs: the device, the input channels it takes, and seeding.

The one copy of each, shared by training, evaluation, export, explanation and pruning."""

from __future__ import annotations

from typing import Any

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


THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def choose_threads(workers: int = 1) -> tuple[int, str]:
    """A sane intra-op thread count for one of ``workers`` processes on this machine, and why.

    ``OMP_NUM_THREADS`` wins where it is set. Otherwise each worker gets its share of the usable
    cores less the load already running on them (the one-minute load average), at least one:
    more threads than free cores makes OpenMP wait on threads that are not running (measured:
    30x slower on a loaded 2-core machine).
    """
    import os

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), f"OMP_NUM_THREADS={env}"
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    free = max(1, cores - int(load + 0.5)) if workers == 1 else cores
    n = max(1, free // max(1, workers))
    why = f"{cores} cores, load {load:.1f}" if workers == 1 else f"{cores} cores shared by {workers} workers"
    return n, why


def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads in this process (torch; OpenMP children inherit the variable)."""
    import os

    for name in THREADS_ENV:
        os.environ[name] = str(n)
    torch.set_num_threads(n)


def runtime_info(device: str | torch.device = "auto", precision: str = "auto", **step: Any) -> dict:
    """What a result depends on besides its settings: the resolved device, precision (and the
    other step options of ``evaluators.step``), threads and library versions (stored with each
    trial, since results differ with them)."""
    import platform

    import numpy
    import torchvision

    from evaluators.step import resolve_options

    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": str(dev),
        "device_name": name,
        **resolve_options(dev, precision, **step).to_dict(),
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        },
    }


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
