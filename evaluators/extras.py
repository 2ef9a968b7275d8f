"""Optional dependencies: imported where they are used, through one helper that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from space.errors import UserInputError


class MissingExtraError(UserInputError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming the ``pip install`` that provides it.

    Args:
        module: the import name (``onnxruntime``, ``torch_pruning``, ``pydicom``...).
        extra: the project's extra that installs it (``onnx``, ``prune``, ``prepare``, ``explain``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module} is not installed; install the [{extra}] extra: pip install '.[{extra}]'"
        ) from e
