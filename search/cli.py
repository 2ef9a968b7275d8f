"""The ``search`` console script: a table of nested subcommands, one module each.

Each module in ``COMMAND_MODULES`` has ``register(subparsers)``, which adds its parser(s) and sets
``func`` (called with the parsed ``argparse.Namespace``, returning an exit code). Usage errors print
one line and exit 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn

from search.errors import RunFailed, UsageError

COMMAND_MODULES = (
    "search.commands.space",
    "search.commands.train",
    "search.commands.evaluate",
    "search.commands.run",
    "search.commands.baselines",
    "search.commands.report",
    "search.commands.data",
    "search.commands.export",
    "search.commands.predict",
    "search.commands.prune",
    "search.commands.explain",
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="search",
        description="Efficiency-aware architecture search on chest CT (COVID-Net CT family).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _quiet_libraries() -> None:
    # fvcore and torch.jit warn about tracing internals on every profile; results record what
    # could not be counted, so the warnings are noise to a user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=UserWarning, module="fvcore")
    warnings.filterwarnings("ignore", message=".*ExperimentalWarning.*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_global_flags_first(list(sys.argv[1:] if argv is None else argv)))
    debug = bool(getattr(args, "debug", False))
    if not debug:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        code = 1 if isinstance(e, RunFailed) else 2 if _is_usage(e) else 1
        print(f"search: error: {_one_line(e)}", file=sys.stderr)
        if code == 1 and not isinstance(e, RunFailed) and not debug:
            print("search: run again with --debug for the traceback", file=sys.stderr)
        return code


GLOBAL_FLAGS = ("--debug", "--quiet")


def _global_flags_first(argv: list[str]) -> list[str]:
    """``--debug``/``--quiet`` work anywhere on the line (``search run --quiet``), not only first."""
    flags = [a for a in argv if a in GLOBAL_FLAGS]
    return flags + [a for a in argv if a not in GLOBAL_FLAGS]


def _is_usage(e: Exception) -> bool:
    from evaluators.extras import MissingExtraError
    from space.spec import SpecError

    usage = (UsageError, SpecError, KeyError, FileNotFoundError, ValueError, MissingExtraError)
    return isinstance(e, usage)


def _one_line(e: Exception) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
