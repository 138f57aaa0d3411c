"""``bt bench``: placeholder until the benchmark lands (issue 4)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure a converted model against its unconverted self")
    parser.set_defaults(func=lambda args: print("bt bench is not implemented yet") or 1)
