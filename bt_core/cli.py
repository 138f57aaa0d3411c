"""The ``bt`` command. Imports neither torch nor transformers until a subcommand needs them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

#: Subcommands: name -> "module:function" adding the subparser; each sets ``func`` on its parser.
_SUBCOMMANDS = {
    "demo": "bt_core.demo:add_parser",
    "bench": "bt_core.bench:add_parser",
    "list": "bt_core._ops_list:add_list_parser",
    "doctor": "bt_core._ops_doctor:add_doctor_parser",
    "check": "bt_core._ops_check:add_check_parser",
}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="bt", description="Run transformers encoders on PyTorch's fused BetterTransformer path."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for target in _SUBCOMMANDS.values():
        module_name, _, function = target.partition(":")
        getattr(importlib.import_module(module_name), function)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
