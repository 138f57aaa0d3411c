"""``bt demo``: the main job on a built-in default, with no download.

Builds BERT-base from the config shipped with bt (random weights), converts a copy, checks that a
padded batch gives the same outputs on every real token, then times both with ``bt bench``'s
machinery. Exit status 0 only when the outputs match.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run_demo"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="convert BERT-base (built from its shipped config), check parity on a padded batch, time it",
        description="Convert BERT-base built from bt's shipped config (random weights, no download), check "
        "parity with the original on a padded batch, and time both. Exit 0 only when outputs match.",
    )
    parser.add_argument("--model", default="bert-base", help="as for `bt bench --model` (default: bert-base)")
    parser.add_argument("--batch", type=int, default=16, help="rows per batch (default: 16)")
    parser.add_argument("--length", type=int, default=128, help="padded length (default: 128)")
    parser.add_argument("--padding", type=float, default=50.0, help="padding in percent (default: 50)")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (default: 1e-4)")
    parser.set_defaults(func=_main)


def run_demo(
    model: str = "bert-base", batch: int = 16, length: int = 128, padding: float = 0.5, runs: int = 3
) -> tuple[float, dict]:
    """The largest difference on real tokens between original and converted, and the bench result."""
    import torch

    from . import bench
    from .convert import BetterTransformer

    original, source = bench._load_model(model)
    original.eval()
    inputs, _ = bench._make_inputs(original, batch, length, padding, torch.device("cpu"), torch.float32)
    print(f"bt demo: {source}, batch {batch}, length {length}, {padding:.0%} padding", flush=True)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    with torch.inference_mode():
        expected = original(**inputs).last_hidden_state
        actual = converted(**inputs).last_hidden_state
    mask = inputs.get("attention_mask")
    valid = mask[..., None].bool() if mask is not None else torch.ones_like(expected, dtype=torch.bool)
    difference = float(((actual - expected).abs() * valid).max())
    result = bench.run_bench(original, batch=batch, length=length, padding=[padding], runs=runs, eager=False)
    return difference, result


def _main(args: argparse.Namespace) -> int:
    difference, result = run_demo(args.model, args.batch, args.length, args.padding / 100.0, args.runs)
    from .bench import format_table

    print(format_table(result))
    verdict = "match" if difference <= args.atol else "DIFFER"
    print(
        f"parity: outputs {verdict} on every real token (largest difference {difference:.2e}, tolerance {args.atol:g})"
    )
    return 0 if difference <= args.atol else 1


if __name__ == "__main__":
    sys.exit(_main(argparse.ArgumentParser().parse_args()))
