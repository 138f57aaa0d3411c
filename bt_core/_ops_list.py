"""``bt list``: what an operator runs to see which model types the installed plugins convert, the layer
class each replaces and the plugin (distribution and version) that provides it, with the model types a
plugin refuses, plugins that failed to load and conflicts. It imports neither torch nor transformers."""

from __future__ import annotations

import argparse
import json
import sys

from .ops import EXIT_OK, _quiet_registry, _registry, _subcommand

__all__ = ["add_list_parser", "run_list"]


def add_list_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "list",
        help="list every model type the installed plugins convert",
        description=(
            "List every model type the installed bt plugins convert: the encoder layer class "
            "replaced, and the plugin (and its distribution and version) that provides it."
        ),
        run=run_list,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_list(args: argparse.Namespace) -> int:
    registry = _registry()
    with _quiet_registry():
        rows = [
            {
                "model_type": registered.mapping.model_type,
                "layer_class": registered.mapping.layer_class_name,
                "plugin": registered.plugin.name,
                "distribution": registered.plugin.distribution,
                "version": registered.plugin.version,
            }
            for registered in registry.all_mappings()
        ]
        refused = dict(registry._collect().refusals)
        failures = list(registry.failures)
        conflicts = list(registry.conflicts)
    if args.json:
        print(
            json.dumps(
                {
                    "model_types": rows,
                    "refused": {t: {"reason": r, "plugin": p} for t, (r, p) in sorted(refused.items())},
                    "failed_plugins": [f.describe() for f in failures],
                    "conflicts": [vars(c) for c in conflicts],
                },
                indent=2,
            )
        )
        return EXIT_OK
    if not rows:
        print("No model types: no bt plugin is installed (or none loaded).")
        print("Install one, e.g. `pip install bt-plugins-encoders`, and see `bt doctor`.")
    else:
        table = [("MODEL TYPE", "LAYER CLASS", "PLUGIN", "DISTRIBUTION")] + [
            (
                r["model_type"],
                r["layer_class"],
                r["plugin"],
                f"{r['distribution']} {r['version']}" if r["distribution"] else "(registered in-process)",
            )
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        for row in table:
            print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
        plugins = {r["plugin"] for r in rows}
        types = {r["model_type"] for r in rows}
        print(f"\n{len(types)} model types from {len(plugins)} plugin{'s' if len(plugins) != 1 else ''}.")
    if refused:
        print("\nRefused (cannot be converted exactly):")
        for model_type, (reason, plugin) in sorted(refused.items()):
            print(f"  {model_type}: {reason} [{plugin}]")
    for failure in failures:
        print(f"warning: {failure.describe()} (see `bt doctor`)", file=sys.stderr)
    for conflict in conflicts:
        print(
            f"warning: plugins {conflict.winner!r} and {conflict.loser!r} both convert {conflict.model_type!r}; "
            f"using {conflict.winner!r}",
            file=sys.stderr,
        )
    return EXIT_OK
