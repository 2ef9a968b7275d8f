"""How candidates are chosen and what leaves the toolkit: the ``search`` command line, the Optuna
study driver, export and structured pruning."""

from __future__ import annotations

__version__ = "0.1.0"
