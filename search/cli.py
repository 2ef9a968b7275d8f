"""The ``search`` console script: a table of nested subcommands, one module each.

Each module in ``COMMAND_MODULES`` has ``register(subparsers)``, which adds its parser(s) and sets
``func`` (called with the parsed ``argparse.Namespace``, returning an exit code). User-input errors
print one line and exit 2; bugs show their traceback (see ``main``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from optuna.exceptions import StorageInternalError

from search.errors import RunFailed
from space.errors import UserInputError

COMMAND_MODULES = (
    "search.commands.space",
    "search.commands.train",
    "search.commands.evaluate",
    "search.commands.run",
    "search.commands.baselines",
    "search.commands.final",
    "search.commands.report",
    "search.commands.data",
    "search.commands.export",
    "search.commands.predict",
    "search.commands.prune",
    "search.commands.explain",
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) and exit code 2.

    Flags are never abbreviated (``--epoch`` is not taken for ``--epochs``: a prefix that works today
    would silently change meaning when a flag is added). Each parser notes itself in the parsed
    namespace (``_parser``, the innermost subcommand's wins), so that an unknown flag is answered
    by the subcommand it was given to, with the closest flag it knows.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        ns, extra = super().parse_known_args(args, namespace)
        if not hasattr(ns, "_parser"):
            ns._parser = self
        return ns, extra

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"search: error: {message} (see {self.prog} --help)\n")

    def unknown(self, extra: Sequence[str]) -> NoReturn:
        """Refuse unrecognized arguments, suggesting the closest flag of this (sub)command."""
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hints = []
        for word in extra:
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
                if close:
                    hints.append(f"did you mean {close[0]}?")
        text = f"unrecognized arguments: {' '.join(extra)}"
        self.error(text + (f"; {' '.join(hints)}" if hints else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="search",
        description="Efficiency-aware architecture search on chest CT (COVID-Net CT family).",
    )
    from search import __version__

    parser.add_argument("--version", action="version", version=f"search (covidnet-nas) {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code.

    A user-input error (``space.errors.UserInputError``: bad spec, data, flag, name, missing extra)
    is one line and exit 2. ``RunFailed`` (work that could not finish, not a bug) and errors of the
    machine or the storage (``OSError``, Optuna's ``StorageInternalError``) are one line and exit 1.
    Anything else is a bug in the toolkit: its traceback, a line saying so, exit 1.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(_global_flags_first(list(sys.argv[1:] if argv is None else argv)))
    leaf = vars(args).pop("_parser", parser)
    if extra:
        (leaf if isinstance(leaf, _Parser) else parser).unknown(extra)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(format="search: %(levelname)s: %(message)s", level=logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserInputError as e:
        if debug:
            traceback.print_exc()
        print(f"search: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (RunFailed, OSError, StorageInternalError) as e:
        if debug:
            traceback.print_exc()
        full = _disk_full(e)
        if full:  # not a commit error: say what to do (what was finished is in the storage)
            print(
                f"search: error: the disk is full ({full}); free some space and run the same command "
                "again: finished work is kept",
                file=sys.stderr,
            )
            return 1
        print(f"search: error: {_one_line(e)}", file=sys.stderr)
        if not isinstance(e, RunFailed) and not debug:
            print("search: run again with --debug for the traceback", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(
            "search: internal error: this is a bug in covidnet-nas, not in your input; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 1


GLOBAL_FLAGS = ("--debug", "--quiet")


def _global_flags_first(argv: list[str]) -> list[str]:
    """``--debug``/``--quiet`` work anywhere on the line (``search run --quiet``), not only first."""
    flags = [a for a in argv if a in GLOBAL_FLAGS]
    return flags + [a for a in argv if a not in GLOBAL_FLAGS]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


DISK_FULL_WORDS = ("database or disk is full", "no space left on device", "could not extend file")


def _disk_full(e: BaseException) -> str | None:
    """The message of the error in ``e``'s chain that says the disk is full (``ENOSPC``, or what
    SQLite and PostgreSQL say for it, wrapped by Optuna in a commit error), else None."""
    import errno

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = " ".join(str(cur).split())
        if getattr(cur, "errno", None) == errno.ENOSPC or any(w in text.lower() for w in DISK_FULL_WORDS):
            return text.split("[SQL:")[0].strip() or "ENOSPC"
        cur = cur.__cause__ or cur.__context__
    return None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
