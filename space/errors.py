"""The one base class of user-input errors, shared by every room.

A ``UserInputError`` is a mistake in what the user gave (a spec, a data folder, a flag, a name, a
missing optional extra): the ``search`` CLI prints its message as one line and exits 2. Every other
exception is a bug in the toolkit and is shown with its traceback. The concrete classes live where
their checks are (``space.SpecError``, ``evaluators.data.covidx.DatasetError``,
``evaluators.settings.ConfigError``, ``search.errors.UsageError``, ...); they keep the builtin base
they had (``ValueError``, ``KeyError``, ``ImportError``) so that ``except ValueError`` still works.
This lives in ``space`` because ``space`` is the room every other room may import.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user: a one-line message that says what was expected and what was found."""


class UnknownNameError(UserInputError, KeyError):
    """A registry has no entry of that name; the message lists the known names and the closest one."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
