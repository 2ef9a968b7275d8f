"""Errors the CLI turns into one clear line and an exit code instead of a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (a flag, a file, a name): printed as one line, exit code 2."""


class RunFailed(Exception):
    """Work that started but could not finish: printed as one line, exit code 1."""
