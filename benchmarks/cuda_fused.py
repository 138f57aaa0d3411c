"""What the fused strategy costs and gives on CUDA, measured in one process (a minute on one H200).

1. Speed: BERT-base (random weights), float16 (``--dtype``), batch 64 x 256, at 0/25/50/75% padding: transformers'
   sdpa model against bt with the engine's choice and with ``fused`` and ``dense`` forced, alternating
   in rounds (medians of CUDA-synchronised wall times). At 50% once more with the eager-attention model
   in the rotation, as ``bt bench`` runs it.
2. Host synchronisations per call (``torch.cuda.set_sync_debug_mode``), engine's choice against forced
   ``fused``: each one stalls the launch queue.
3. Accuracy in float32, float16 and bfloat16 against the same model in float64 (batch 8 x 128, 50%
   padding, on the real tokens): the original (sdpa), and bt with each strategy (``fused`` in float32
   too, which the engine refuses on CUDA); ``fused`` again with SDPA limited to its math backend, to
   tell the kernel's attention from the rest.
4. One call profiled (torch.profiler), engine's choice against forced ``fused``.

    python benchmarks/cuda_fused.py [--device cuda] [--runs 30]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bt_core import BetterTransformer, BetterTransformerError
from bt_core._bench_inputs import load_model, make_inputs
from bt_core._bench_measure import time_rounds, timer
from bt_core._engine import force_strategy, record_strategies

warnings.filterwarnings("ignore", message=r".*nested tensors is in prototype stage.*")


def bt_call(
    model: Any, inputs: dict[str, Any], strategy: str | None, seen: set[str] | None = None
) -> Callable[[], Any]:
    def call() -> Any:
        with force_strategy(strategy), record_strategies(seen if seen is not None else set()):
            return model(**inputs)

    return call


def speed(
    original: Any, converted: Any, eager: Any, device: torch.device, runs: int, dtype: torch.dtype, order: str
) -> None:
    measure = timer(device)  # CUDA-synchronised wall clock
    print(f"\n1. speed (ms, median of {runs}); bt auto's strategies in brackets")
    print(f"{'padding':>8} {'sdpa':>7} {'auto':>7} {'fused':>7} {'dense':>7} {'eager':>7}  auto")
    for padding, with_eager in [(0.0, False), (0.25, False), (0.5, False), (0.75, False), (0.5, True)]:
        inputs, _ = make_inputs(original, 64, 256, padding, device, dtype)
        seen: set[str] = set()
        calls = {
            "sdpa": lambda inputs=inputs: original(**inputs),
            "auto": bt_call(converted, inputs, None, seen),
            "fused": bt_call(converted, inputs, "fused"),
            "dense": bt_call(converted, inputs, "dense"),
        }
        if order == "reversed":  # does a call's place in the round move its time?
            calls = dict(reversed(calls.items()))
        if with_eager:
            calls["eager"] = lambda inputs=inputs: eager(**inputs)
        times = time_rounds(calls, measure, runs, 3, lambda _: None, "")
        cells = [
            f"{statistics.median(times[n]) * 1e3:7.2f}" if n in times else f"{'-':>7}"
            for n in ("sdpa", "auto", "fused", "dense", "eager")
        ]
        print(f"{padding:>8.0%} {' '.join(cells)}  {sorted(seen)}")


def half_padded(original: Any, device: torch.device) -> dict[str, Any]:
    """The batch of sections 2 and 4: 64 x 256 at 50% padding, in the model's dtype."""
    return make_inputs(original, 64, 256, 0.5, device, original.dtype)[0]


def syncs(converted: Any, original: Any, device: torch.device) -> None:
    if device.type != "cuda":
        return
    inputs = half_padded(original, device)
    print("\n2. host synchronisations per call, 50% padding")
    for strategy in (None, "fused", "dense"):
        call = bt_call(converted, inputs, strategy)
        call()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        where = [str(w.message).split("\n")[0][:90] for w in caught if "synchroniz" in str(w.message)]
        print(f"  {strategy or 'auto':<6} {len(where)} sync(s)")
        for line in sorted(set(where)):
            print(f"         {where.count(line)}x {line}")


def profiles(converted: Any, original: Any, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return
    inputs = half_padded(original, device)
    print("\n4. one call profiled, 50% padding: the operators with the most device time")
    for strategy in (None, "fused"):
        call = bt_call(converted, inputs, strategy)
        call()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        print(f"--- {strategy or 'auto'}")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=50))


def accuracy(device: torch.device) -> None:
    from bt_core import _strategy

    print("\n3. accuracy against the same model in float64, batch 8 x 128, 50% padding (real tokens)")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    print(f"   matmul tf32 allowed: {tf32}; float32 matmul precision: {torch.get_float32_matmul_precision()}")
    reference_model = load_model("bert-base")[0].to(device=device, dtype=torch.float64).eval()
    inputs, _ = make_inputs(reference_model, 8, 128, 0.5, device, torch.float64)
    keep = inputs["attention_mask"].bool()
    with torch.inference_mode():
        reference = reference_model(**inputs).last_hidden_state[keep]
    scale = reference.abs().max().item()

    def error(call: Callable[[], Any]) -> str:
        try:
            output = call()
        except BetterTransformerError as exc:
            return f"refused: {exc}"
        diff = (output.last_hidden_state[keep].double() - reference).abs().max().item()
        return f"{diff:9.2e} ({diff / scale:.1e} of the largest value)"

    # float32 on CUDA is one the engine refuses the kernel; let it run here, to measure why.
    kernel_dtypes = _strategy._KERNEL_DTYPES.get(device.type, {})
    _strategy._KERNEL_DTYPES[device.type] = {**kernel_dtypes, torch.float32: None}
    try:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            original = copy.deepcopy(reference_model).to(dtype)
            converted = BetterTransformer.transform(copy.deepcopy(original))
            with torch.inference_mode():
                print(f"   {str(dtype)[6:]:<9} {'original, sdpa':<26} {error(partial(original, **inputs))}")
                for strategy in ("fused", "packed", "dense"):
                    print(f"   {'':<9} {'bt ' + strategy:<26} {error(bt_call(converted, inputs, strategy))}")
                with sdpa_kernel(SDPBackend.MATH):
                    print(f"   {'':<9} {'bt fused, SDPA math only':<26} {error(bt_call(converted, inputs, 'fused'))}")
    finally:
        _strategy._KERNEL_DTYPES[device.type] = kernel_dtypes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16", help="for 1., 2. and 4.")
    parser.add_argument("--order", choices=["sdpa-first", "reversed"], default="sdpa-first", help="of the calls in 1.")
    parser.add_argument("--speed-only", action="store_true", help="only 1.")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    original = load_model("bert-base")[0].to(device=device, dtype=dtype).eval()
    eager = copy.deepcopy(original)
    eager.set_attn_implementation("eager")
    converted = BetterTransformer.transform(copy.deepcopy(original))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    with torch.inference_mode():
        speed(original, converted, eager, device, args.runs, dtype, args.order)
        if args.speed_only:
            return
        syncs(converted, original, device)
        profiles(converted, original, device)
    accuracy(device)


if __name__ == "__main__":
    main()
