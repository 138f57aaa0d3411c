"""``bt bench``'s report: the human-readable table of a result, and the command line that reproduces it."""

from __future__ import annotations

from typing import Any

from ._bench_profile import format_profile

__all__ = ["command_args", "format_table"]


def command_args(settings: dict[str, Any]) -> list[str]:
    """The ``bt bench`` arguments that reproduce a run (for the JSON and BENCHMARKS.md), from
    :func:`bt_core.bench.run_bench`'s settings (``padding`` fractions, ``lengths`` as (shortest, longest))."""
    args = [f"--model {settings['model_spec']}", f"--batch {settings['batch']}", f"--length {settings['length']}"]
    if settings.get("lengths"):
        shortest, longest = settings["lengths"]
        args.append(f"--lengths {shortest}-{longest}")
    else:
        args.append("--padding " + ",".join(f"{p * 100:g}" for p in settings["padding"]))
    args += [f"--dtype {settings['dtype']}", f"--device {settings['device']}"]
    if settings["threads"]:
        args.append(f"--threads {settings['threads']}")
    if settings["clock"] != "wall":
        args.append(f"--clock {settings['clock']}")
    args += [f"--runs {settings['runs']}", f"--warmup {settings['warmup']}"]
    if settings["strategy"]:
        args.append(f"--strategy {settings['strategy']}")
    if not settings["eager"]:
        args.append("--no-eager")
    if settings["compile"]:
        args.append(f"--compile {settings['compile']}")
    if settings.get("generate"):
        args.append(f"--generate {settings['generate']}")
    if settings.get("profile"):
        args.append("--profile")
    return args


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report of :func:`bt_core.bench.run_bench`'s result."""
    settings, conversion, machine = result["settings"], result["conversion"], result["machine"]
    lines = [
        f"model {settings['model']}: {settings['layers']} layers, hidden {settings['hidden']}, "
        f"batch {settings['batch']}, length {settings['length']}, {settings['dtype']} on {settings['device']}, "
        f"{machine['threads']} threads, torch {machine['torch']}, transformers {machine['transformers']}",
        f"conversion {conversion['seconds']:.3f} s; parameters {conversion['param_bytes_before'] / 2**20:.1f} MiB "
        f"before, {conversion['param_bytes_after'] / 2**20:.1f} MiB after",
        f"{settings['clock']}-clock medians of {settings['runs']} alternating runs after {settings['warmup']} warm-up; "
        f"strategy {settings['strategy']}; baseline attention {settings.get('baseline_attention')}"
        + (f"; every model compiled with backend {settings['compile']!r}" if settings.get("compile") else ""),
    ]
    if settings.get("inputs"):
        lines.append(f"inputs: {settings['inputs']}")
    lines.append("")
    has_eager = any("eager_s" in row for row in result["rows"])
    header = ["padding", "real tok", "bt ms", "tokens/s", "sdpa ms", "vs sdpa"]
    if has_eager:
        header += ["eager ms", "vs eager"]
    header += ["GEMM GFLOP/s", "roofline ms", "bt/roofline", "strategy"]
    table = [header]
    for row in result["rows"]:
        cells = [
            f"{row['padding']:.0%}",
            str(row["real_tokens"]),
            f"{row['bt_s'] * 1e3:.1f}",
            f"{row['tokens_per_s']:.0f}",
            f"{row['sdpa_s'] * 1e3:.1f}",
            f"{row['speedup_vs_sdpa']:.2f}x",
        ]
        if has_eager:
            cells += [
                f"{row.get('eager_s', float('nan')) * 1e3:.1f}",
                f"{row.get('speedup_vs_eager', float('nan')):.2f}x",
            ]
        cells += [
            f"{row['gemm_flops_per_s'] / 1e9:.1f}",
            f"{row['roofline_s'] * 1e3:.1f}",
            f"{row['roofline_ratio']:.2f}x",
            "+".join(row["strategies"]) or "-",
        ]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(r, widths, strict=False)))
    lines += [_generate_line(row) for row in result["rows"] if "generate" in row]
    lines += [
        format_profile(f"bt at {row['padding']:.0%} padding", row["profile"])
        for row in result["rows"]
        if "profile" in row
    ]
    return "\n".join(lines)


def _generate_line(row: dict[str, Any]) -> str:
    """One row's end-to-end ``generate()`` times, with the encoder's share that bounds the gain."""
    gen = row["generate"]
    verdict = "identical tokens" if gen["tokens_identical"] else "TOKENS DIFFER"
    return (
        f"generate() at {row['padding']:.0%} padding, {gen['new_tokens']} new tokens greedy, {gen['model_class']} "
        f"with its encoder converted: bt {gen['bt_s'] * 1e3:.1f} ms, sdpa {gen['sdpa_s'] * 1e3:.1f} ms, "
        f"{gen['speedup_vs_sdpa']:.2f}x; the encoder is {gen['encoder_share_sdpa']:.0%} of the unconverted "
        f"generate() ({gen['encoder_share_bt']:.0%} converted); {verdict}"
    )
