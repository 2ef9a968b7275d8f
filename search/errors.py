"""Errors the CLI turns into one clear line and an exit code instead of a traceback.

``UsageError`` is the search room's ``space.errors.UserInputError`` (exit 2); ``RunFailed`` is work that
started but could not finish for a reason that is not a bug (exit 1, one line).
"""

from __future__ import annotations

from space.errors import UserInputError


class UsageError(UserInputError):
    """Bad input from the user (a flag, a file, a name): printed as one line, exit code 2."""


class RunFailed(Exception):
    """Work that started but could not finish: printed as one line, exit code 1."""
