"""``bt list``, ``bt doctor`` and ``bt check``: what an operator runs to see what bt can do here.

The commands live in ``_ops_list``, ``_ops_doctor`` and ``_ops_check`` (one module each); this module
holds what they share: the exit codes and the small helpers. Nothing here imports torch or transformers
at module level (``bt --help`` and ``bt list`` stay fast); ``doctor`` and ``check`` import them inside the
command.

Exit codes, shared by the three commands (also in each command's ``--help``):

- 0: all good.
- 1: ``check``: an output differs beyond ``--atol``; ``doctor``: a problem was found (a plugin failed
  to load, no plugin is installed, or nested tensors or the fused kernel do not work here).
- 2: bad command-line usage (argparse).
- 3: ``check``: the model type is not supported by the installed plugins, or this model cannot be
  converted exactly (a plugin refuses it, or the adapter found a setting the fused math cannot take).
- 4: ``check``: MODEL is a path that does not exist, or a folder that holds no loadable transformers
  checkpoint.
- 5: ``check``: a plugin is broken: it failed to load, or its adapter raised on this model.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .registry import PluginInfo, PluginRegistry, default_registry

__all__ = [
    "EXIT_BROKEN_PLUGIN",
    "EXIT_CODES_HELP",
    "EXIT_MISMATCH",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNSUPPORTED",
    "EXIT_USAGE",
]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_UNSUPPORTED = 3
EXIT_NOT_FOUND = 4
EXIT_BROKEN_PLUGIN = 5

EXIT_CODES_HELP = """exit codes:
  0  all good
  1  check: an output differs beyond --atol; doctor: a problem was found
  2  bad command-line usage
  3  check: model type not supported by the installed plugins, or not convertible exactly
  4  check: MODEL is a path that does not exist or holds no loadable checkpoint
  5  check: a plugin is broken (failed to load, or its adapter raised on this model)
"""


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, width=88)


def _subcommand(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A ``bt`` subcommand's parser: its wrapped description, the exit codes as epilog, ``run`` behind it."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=_wrap(description),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_command(run))
    return parser


class _Exit(Exception):
    """Ends a command with ``code`` after printing ``message`` to stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _command(function: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return function(args)
        except _Exit as stop:
            print(f"bt {args.command}: error: {stop}", file=sys.stderr)
            return stop.code

    run.__name__ = function.__name__
    return run


@contextmanager
def _quiet_registry() -> Iterator[list[str]]:
    """Collect the registry's warnings (failed plugins, conflicts); the commands report them their own way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages: list[str] = []
        yield messages
    messages.extend(str(w.message) for w in caught if str(w.message).startswith("bt: "))


def _registry() -> PluginRegistry:
    return default_registry()


def _shipped_by(info: PluginInfo) -> str:
    if info.distribution:
        return f"{info.distribution} {info.version}"
    return "(registered in-process)"
