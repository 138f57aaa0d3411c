"""``bt bench``'s run: build the model and its converted copy, then time one row per padding fraction
(and, with ``--generate``, the whole seq2seq model's ``generate()``). :func:`bt_core.bench.run_bench`
checks the arguments and calls :func:`run_options`.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ._bench_generate import time_generate
from ._bench_inputs import (
    describe_inputs,
    encoder_flops,
    encoder_of,
    load_model,
    make_inputs,
    model_dims,
    spread_lengths,
)
from ._bench_measure import gemm_probe, machine, param_bytes, time_rounds, timer
from ._bench_table import command_args

__all__ = ["BenchOptions", "generate_row", "run_options", "time_row"]


@dataclass(frozen=True)
class BenchOptions:
    """One run's settings, as :func:`run_bench` takes them (``length`` resolved)."""

    model_spec: str
    batch: int
    length: int
    padding: tuple[float, ...]
    lengths: tuple[int, int] | None
    dtype: str
    device: str
    threads: int | None
    clock: str
    runs: int
    warmup: int
    strategy: str | None
    eager: bool
    compile: str | None
    generate: int | None
    profile: bool = False


def run_options(model: str | Any, o: BenchOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Build, convert and time ``model`` as ``o`` says; the result :func:`bt_core.bench.run_bench` returns."""
    import torch

    from .convert import BetterTransformer

    device, dtype = torch.device(o.device), getattr(torch, o.dtype)
    if isinstance(model, str):
        say(f"building {model}")
        loaded, source = load_model(model, generation=bool(o.generate))
    else:
        loaded, source = model, type(model).__name__
    loaded = loaded.to(device=device, dtype=dtype).eval()
    # With --generate, ``loaded`` is the whole seq2seq model: the table times its encoder.
    whole = loaded if o.generate else None
    if whole is not None and not (hasattr(whole, "generate") and whole.config.is_encoder_decoder):
        raise ValueError(f"--generate needs a seq2seq model with generate(); {type(whole).__name__} is not one")
    original = encoder_of(loaded)
    baselines: dict[str, Any] = {"sdpa": original}
    if o.eager:
        eager_model = copy.deepcopy(original)
        eager_model.set_attn_implementation("eager")
        baselines["eager"] = eager_model

    to_convert = copy.deepcopy(whole if whole is not None else original)
    bytes_before = param_bytes(encoder_of(to_convert))
    start = time.perf_counter()
    converted_whole = BetterTransformer.transform(to_convert)
    conversion_s = time.perf_counter() - start
    converted = encoder_of(converted_whole)
    bytes_after = param_bytes(converted)
    say(f"converted in {conversion_s:.3f} s; parameters {bytes_before / 2**20:.1f} -> {bytes_after / 2**20:.1f} MiB")

    layers, hidden, ffn = model_dims(original.config)
    measure = timer(device, o.clock)
    run_converted = converted
    if o.compile:  # compiled on the first (warm-up) call; the layers run eagerly inside converted
        say(f"compiling every model with backend {o.compile!r}")
        baselines = {name: torch.compile(m, backend=o.compile) for name, m in baselines.items()}
        run_converted = torch.compile(converted, backend=o.compile)

    fixed = spread_lengths(o.batch, *o.lengths) if o.lengths else None
    rows = []
    with torch.inference_mode():
        for fraction in (None,) if fixed else o.padding:
            inputs, work = make_inputs(original, o.batch, o.length, fraction or 0.0, device, dtype, fixed)
            label = f"lengths {o.lengths[0]}-{o.lengths[1]}" if o.lengths else f"padding {fraction:.0%}"
            row = time_row(original, run_converted, baselines, inputs, work, o, measure, say, label)
            row["padding"] = fraction if fixed is None else 1.0 - sum(fixed) / (o.batch * o.length)
            if whole is not None:
                row["generate"] = generate_row(whole, converted_whole, inputs, row, o, measure, say, label)
            if o.profile:
                row["profile"] = _profile(run_converted, inputs, o)
            rows.append(row)
            say(f"{label}: bt {row['bt_s'] * 1e3:.1f} ms, {row['speedup_vs_sdpa']:.2f}x sdpa")

    settings = {
        **asdict(o),
        "model": source,
        "model_type": getattr(original.config, "model_type", None),
        "layers": layers,
        "hidden": hidden,
        "ffn": ffn,
        "strategy": o.strategy or "auto",
        "baseline_attention": getattr(original.config, "_attn_implementation", None),
        "inputs": describe_inputs(original),
        "command": "bt bench " + " ".join(command_args(asdict(o))),
    }
    return {
        "machine": machine(device),
        "settings": settings,
        "conversion": {"seconds": conversion_s, "param_bytes_before": bytes_before, "param_bytes_after": bytes_after},
        "rows": rows,
    }


def _profile(run_converted: Any, inputs: dict[str, Any], o: BenchOptions) -> dict[str, Any]:
    """Where one untimed call of the converted model spends its time (``--profile``)."""
    from ._bench_profile import profile_call
    from ._engine import force_strategy

    def call() -> None:
        with force_strategy(o.strategy):
            run_converted(**inputs)

    return profile_call(call, o.device)


def time_row(
    original: Any,
    run_converted: Any,
    baselines: dict[str, Any],
    inputs: dict[str, Any],
    work: list[int],
    o: BenchOptions,
    measure: Callable[[Callable[[], Any]], float],
    say: Callable[[str], None],
    label: str,
) -> dict[str, Any]:
    """One table row: converted, baselines and the GEMM probe alternating on one batch."""
    from ._engine import force_strategy, record_strategies

    _, hidden, ffn = model_dims(original.config)
    probe, probe_flops = gemm_probe(hidden, ffn, sum(work), next(original.parameters()).device, original.dtype)
    strategies: set[str] = set()

    def bt_call() -> None:
        with force_strategy(o.strategy), record_strategies(strategies):
            run_converted(**inputs)

    calls: dict[str, Callable[[], Any]] = {"bt": bt_call}
    for name, baseline in baselines.items():
        calls[name] = lambda baseline=baseline: baseline(**inputs)
    calls["gemm"] = probe
    times = time_rounds(calls, measure, o.runs, o.warmup, say, label)
    rate = statistics.median(probe_flops / elapsed for elapsed in times.pop("gemm"))
    median = {name: statistics.median(values) for name, values in times.items()}
    roofline_s = encoder_flops(original.config, work) / rate
    row: dict[str, Any] = {
        "real_tokens": sum(work),
        "max_length": max(work),
        "bt_s": median["bt"],
        "tokens_per_s": sum(work) / median["bt"],
        "sdpa_s": median["sdpa"],
        "speedup_vs_sdpa": median["sdpa"] / median["bt"],
        "gemm_flops_per_s": rate,
        "roofline_s": roofline_s,
        "roofline_ratio": median["bt"] / roofline_s,
        "strategies": sorted(strategies),
        "samples": times,
    }
    if "eager" in median:
        row["eager_s"] = median["eager"]
        row["speedup_vs_eager"] = median["eager"] / median["bt"]
    return row


def generate_row(
    whole: Any,
    converted_whole: Any,
    inputs: dict[str, Any],
    row: dict[str, Any],
    o: BenchOptions,
    measure: Callable[[Callable[[], Any]], float],
    say: Callable[[str], None],
    label: str,
) -> dict[str, Any]:
    """``generate()`` times of one batch, with the encoder's share of them from the table row."""
    assert o.generate is not None
    result = time_generate(
        whole,
        converted_whole,
        inputs,
        o.generate,
        strategy=o.strategy,
        measure=measure,
        runs=o.runs,
        warmup=o.warmup,
        say=say,
        label=f"{label}, generate()",
    )
    # The most converting the encoder can save is its share of the whole model's time.
    result["encoder_share_sdpa"] = row["sdpa_s"] / result["sdpa_s"]
    result["encoder_share_bt"] = row["bt_s"] / result["bt_s"]
    return result
