"""``bt bench``: a converted model against its unconverted self, in one process.

Every round runs, back to back, the converted model, the same model unconverted with transformers'
default attention (sdpa) and, unless disabled, with eager attention, plus the four projection GEMMs
of one layer on as many rows as the batch has real tokens, which measure the machine's
matrix-multiply rate at the model's shapes at that moment. Medians over the rounds after warm-up give
the table; alternating inside a round keeps slow drifts of a shared machine out of the ratios.

The roofline is the FLOPs of the real (non-padded) tokens only, projections plus attention over each
row's own tokens, divided by that GEMM rate: the time an exact implementation would take if
everything ran as fast as the model's matrix multiplies. ``bt/roofline`` is the measured time over it.

Importing this module is light (``bt --help`` builds its parser from it): torch and transformers
load inside the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "padded_lengths", "run_bench"]

_CONFIGS = Path(__file__).with_name("configs")
DEFAULT_MODEL = "bert-base"
DEFAULT_PADDING = (0.0, 0.25, 0.5, 0.75)


# -- the command ----------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    shipped = ", ".join(sorted(p.stem for p in _CONFIGS.glob("*.json")))
    parser = subparsers.add_parser(
        "bench",
        help="measure a converted model against its unconverted self",
        description=(
            "Time a model converted by bt against the same model unconverted (transformers' default sdpa "
            "attention, and eager attention), alternating runs in one process; medians after warm-up. "
            "Weights are random: no download."
        ),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a shipped config ({shipped}), a model type (bert, vit, ...), a config JSON file or a local "
        f"checkpoint folder (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--batch", type=int, default=16, help="rows per batch (default: 16)")
    parser.add_argument("--length", type=int, default=128, help="padded sequence length (default: 128)")
    parser.add_argument(
        "--padding",
        default="0,25,50,75",
        help="padding fractions in percent, comma-separated (default: 0,25,50,75)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall: elapsed time (default); cpu: the process's CPU time, steadier on a shared machine with "
        "--threads 1 (with more threads it also counts threads spinning while they wait)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per padding fraction (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument(
        "--strategy",
        default=None,
        choices=["fused", "packed", "dense", "reference"],
        help="force one execution strategy (default: the engine chooses)",
    )
    parser.add_argument("--no-eager", action="store_true", help="skip the eager-attention baseline")
    parser.add_argument(
        "--compile",
        default=None,
        metavar="BACKEND",
        help="torch.compile every model (original and converted) with this backend, e.g. inductor",
    )
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from .errors import BetterTransformerError

    try:
        padding = [float(p) / 100.0 for p in args.padding.split(",") if p.strip()]
    except ValueError:
        print(f"bt bench: --padding takes percentages like 0,25,50,75, not {args.padding!r}", file=sys.stderr)
        return 2
    try:
        result = run_bench(
            model=args.model,
            batch=args.batch,
            length=args.length,
            padding=padding,
            dtype=args.dtype,
            device=args.device,
            threads=args.threads,
            clock=args.clock,
            runs=args.runs,
            warmup=args.warmup,
            strategy=args.strategy,
            eager=not args.no_eager,
            compile_backend=args.compile,
            json_path=args.json_path,
            progress=not args.quiet,
        )
    except (BetterTransformerError, ValueError, OSError) as exc:
        print(f"bt bench: {exc}", file=sys.stderr)
        return 1
    print(format_table(result))
    return 0


# -- inputs ---------------------------------------------------------------------------------------


def padded_lengths(batch: int, length: int, padding: float, seed: int = 0) -> list[int]:
    """Row lengths whose mean is ``(1 - padding) * length``, spread uniformly around it.

    The spread is 90% of the room on the tighter side of the mean, so the shortest row keeps a token
    and the longest row is usually shorter than ``length`` (as in real batches, where the sequence
    length is a bucket size). Rows come in a fixed shuffled order.
    """
    import random

    if not 0.0 <= padding < 1.0:
        raise ValueError(f"padding fraction {padding} is not in [0, 1)")
    mean = (1.0 - padding) * length
    if padding == 0.0 or batch == 1:
        return [max(1, round(mean))] * batch
    half = 0.9 * min(mean - 1.0, length - mean)
    lengths = [round(mean - half + 2.0 * half * i / (batch - 1)) for i in range(batch)]
    lengths = [min(length, max(1, n)) for n in lengths]
    # Nudge rows so the total is as close to the target as integers allow.
    target = round(mean * batch)
    i = 0
    while sum(lengths) != target and i < 4 * batch:
        row = i % batch
        step = 1 if sum(lengths) < target else -1
        if 1 <= lengths[row] + step <= length:
            lengths[row] += step
        i += 1
    random.Random(seed).shuffle(lengths)
    return lengths


def _dims(config: Any) -> tuple[int, int, int]:
    """(layers, hidden, feed-forward) of an encoder config, whatever its attribute names."""

    def first(*names: str) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        raise ValueError(f"{type(config).__name__} has none of {names}; bt bench cannot size it")

    config = (
        getattr(config, "text_config", None)
        if not hasattr(config, "hidden_size") and hasattr(config, "text_config")
        else config
    )
    layers = first("num_hidden_layers", "encoder_layers", "num_layers")
    hidden = first("hidden_size", "d_model", "embed_dim")
    ffn = first("intermediate_size", "encoder_ffn_dim", "ffn_dim", "d_ff")
    return layers, hidden, ffn


def encoder_flops(config: Any, lengths: Sequence[int]) -> float:
    """Multiply-add FLOPs of the encoder layers on the real tokens only (the roofline's work)."""
    layers, hidden, ffn = _dims(config)
    tokens = sum(lengths)
    projections = 2.0 * tokens * (4 * hidden * hidden + 2 * hidden * ffn)
    attention = 4.0 * hidden * sum(n * n for n in lengths)
    return layers * (projections + attention)


def _load_model(spec: str) -> tuple[Any, str]:
    """A model with random weights (or a local checkpoint's) and a description of where it came from."""
    import transformers

    path = Path(spec)
    shipped = _CONFIGS / f"{spec}.json"
    if shipped.is_file() or (path.suffix == ".json" and path.is_file()):
        source = shipped if shipped.is_file() else path
        data = json.loads(source.read_text())
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        model_type = data.pop("model_type", None)
        if not model_type:
            raise ValueError(f"{source} has no model_type")
        config = transformers.AutoConfig.for_model(model_type, **data)
        return _from_config(config), f"{source.name} (random weights)"
    if path.is_dir():
        if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
            model = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa")
            return model, f"checkpoint {path}"
        config = transformers.AutoConfig.from_pretrained(path)
        return _from_config(config), f"{path}/config.json (random weights)"
    try:
        config = transformers.AutoConfig.for_model(spec)
    except ValueError:
        raise ValueError(
            f"--model {spec!r} is neither a shipped config, a model type transformers knows, a JSON file "
            "nor a local folder"
        ) from None
    return _from_config(config), f"default {spec} config (random weights)"


def _from_config(config: Any) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    try:
        model = transformers.AutoModel.from_config(config, attn_implementation="sdpa")
    except ValueError:  # no sdpa for this architecture (RoFormer, MPNet): transformers' default is eager
        model = transformers.AutoModel.from_config(config, attn_implementation="eager")
    # A seq2seq model (T5) is benchmarked by its encoder half, the part bt converts.
    return model.get_encoder() if getattr(config, "is_encoder_decoder", False) else model


def _make_inputs(
    model: Any, batch: int, length: int, padding: float, device: Any, dtype: Any
) -> tuple[dict, list[int]]:
    """Inputs for the model's main input, and the real length of every row (the roofline's tokens)."""
    import torch

    config = model.config
    generator = torch.Generator().manual_seed(0)
    name = getattr(model, "main_input_name", "input_ids")
    if name == "input_ids":
        lengths = padded_lengths(batch, length, padding)
        vocab = int(getattr(config, "vocab_size", 1000))
        ids = torch.randint(min(100, vocab - 1), vocab, (batch, length), generator=generator)
        mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, lengths
    if name == "pixel_values":
        if padding:
            raise ValueError("an image model has no padding; use --padding 0")
        size = int(getattr(config, "image_size", 224))
        patch = int(getattr(config, "patch_size", 16))
        channels = int(getattr(config, "num_channels", 3))
        pixels = torch.randn(batch, channels, size, size, generator=generator).to(device=device, dtype=dtype)
        tokens = (size // patch) ** 2 + 1
        return {"pixel_values": pixels}, [tokens] * batch
    if name == "input_values":  # wav2vec2-style raw audio; ``length`` counts encoder frames
        if padding:
            raise ValueError("audio models: bt bench measures them without padding; use --padding 0")
        kernels = list(getattr(config, "conv_kernel", [10, 3, 3, 3, 3, 2, 2]))
        strides = list(getattr(config, "conv_stride", [5, 2, 2, 2, 2, 2, 2]))
        samples = 1
        for kernel, stride in reversed(list(zip(kernels, strides, strict=False))):
            samples = (samples - 1) * stride + kernel
        stride_total = 1
        for stride in strides:
            stride_total *= stride
        samples += (length - 1) * stride_total
        audio = torch.randn(batch, samples, generator=generator).to(device=device, dtype=dtype)
        return {"input_values": audio}, [length] * batch
    if name == "input_features":  # whisper-style log-mel features; the encoder halves them
        if padding:
            raise ValueError("audio models: bt bench measures them without padding; use --padding 0")
        mels = int(getattr(config, "num_mel_bins", 80))
        frames = 2 * int(getattr(config, "max_source_positions", 1500))
        features = torch.randn(batch, mels, frames, generator=generator).to(device=device, dtype=dtype)
        return {"input_features": features}, [frames // 2] * batch
    raise ValueError(f"bt bench does not know how to feed {type(model).__name__} (main input {name!r})")


# -- measuring ------------------------------------------------------------------------------------


def _param_bytes(model: Any) -> int:
    """Bytes of every distinct parameter and buffer storage the model keeps, converted layers' kept
    originals included (meta tensors, which hold no memory, excluded)."""
    from .layer import BetterTransformerBaseLayer

    seen: set[int] = set()
    total = 0

    def count(tensors: Any) -> None:
        nonlocal total
        for tensor in tensors:
            if tensor.device.type == "meta":
                continue
            key = tensor.untyped_storage().data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += tensor.untyped_storage().nbytes()

    count(model.parameters())
    count(model.buffers())
    for module in model.modules():
        if isinstance(module, BetterTransformerBaseLayer):
            count(module.original_layer.parameters())
            count(module.original_layer.buffers())
    return total


def _timer(device: Any, clock: str = "wall") -> Callable[[Callable[[], Any]], float]:
    import torch

    now = time.process_time if clock == "cpu" and device.type == "cpu" else time.perf_counter

    def measure(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = now()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return now() - start

    return measure


def _machine(device: Any) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(
    model: str | Any = DEFAULT_MODEL,
    *,
    batch: int = 16,
    length: int = 128,
    padding: Sequence[float] = DEFAULT_PADDING,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int | None = None,
    clock: str = "wall",
    runs: int = 5,
    warmup: int = 1,
    strategy: str | None = None,
    eager: bool = True,
    compile_backend: str | None = None,
    json_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Benchmark ``model`` (a spec as for ``bt bench --model``, or a transformers model) converted vs not.

    Returns a dict with ``machine``, ``settings``, ``conversion`` (seconds, parameter bytes before and
    after), ``gemm`` (the measured rate) and ``rows`` (one per padding fraction: median seconds of the
    converted, sdpa and eager models, tokens/s, speed-ups, roofline seconds and ratio, strategies used).
    """
    import torch

    def say(message: str) -> None:
        if progress:
            print(f"[bt bench] {message}", file=sys.stderr, flush=True)

    if runs < 1 or batch < 1 or length < 1:
        raise ValueError("--runs, --batch and --length must be positive")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock {clock!r} is not wall or cpu")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(
            model,
            batch,
            length,
            padding,
            dtype,
            device,
            threads,
            clock,
            runs,
            warmup,
            strategy,
            eager,
            compile_backend,
            json_path,
            say,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    model: str | Any,
    batch: int,
    length: int,
    padding: Sequence[float],
    dtype: str,
    device: str,
    threads: int | None,
    clock: str,
    runs: int,
    warmup: int,
    strategy: str | None,
    eager: bool,
    compile_backend: str | None,
    json_path: str | os.PathLike[str] | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    import copy

    import torch

    from ._engine import force_strategy, record_strategies
    from .convert import BetterTransformer

    torch_device = torch.device(device)
    torch_dtype = getattr(torch, dtype)

    if isinstance(model, str):
        say(f"building {model}")
        original, source = _load_model(model)
    else:
        original, source = model, type(model).__name__
    original = original.to(device=torch_device, dtype=torch_dtype).eval()
    baselines: dict[str, Any] = {"sdpa": original}
    if eager:
        eager_model = copy.deepcopy(original)
        eager_model.set_attn_implementation("eager")
        baselines["eager"] = eager_model

    converted = copy.deepcopy(original)
    bytes_before = _param_bytes(converted)
    start = time.perf_counter()
    converted = BetterTransformer.transform(converted)
    conversion_s = time.perf_counter() - start
    bytes_after = _param_bytes(converted)
    say(
        f"converted in {conversion_s:.3f} s; parameters {bytes_before / 2**20:.1f} MiB -> {bytes_after / 2**20:.1f} MiB"
    )

    layers, hidden, ffn = _dims(original.config)
    measure = _timer(torch_device, clock)
    run_converted = converted
    if compile_backend:  # compiled on the first (warm-up) call; the layers run eagerly inside converted
        say(f"compiling every model with backend {compile_backend!r}")
        baselines = {name: torch.compile(m, backend=compile_backend) for name, m in baselines.items()}
        run_converted = torch.compile(converted, backend=compile_backend)

    def gemm_probe(tokens: int) -> tuple[Callable[[], None], float]:
        """The four projection GEMMs of one layer (q/k/v, output, feed-forward in and out) on ``tokens``
        rows, bias-free, in the model's dtype: the work an exact implementation cannot avoid, at the
        shapes it must run them. Returns the function and its FLOPs."""
        x = torch.randn(tokens, hidden, device=torch_device, dtype=torch_dtype)
        inner = torch.randn(tokens, ffn, device=torch_device, dtype=torch_dtype)
        weights = [
            torch.randn(rows, cols, device=torch_device, dtype=torch_dtype)
            for rows, cols in ((3 * hidden, hidden), (hidden, hidden), (ffn, hidden), (hidden, ffn))
        ]

        def run() -> None:
            torch.mm(x, weights[0].t())
            torch.mm(x, weights[1].t())
            torch.mm(x, weights[2].t())
            torch.mm(inner, weights[3].t())

        return run, 2.0 * tokens * (4 * hidden * hidden + 2 * hidden * ffn)

    rows = []
    with torch.inference_mode():
        for fraction in padding:
            inputs, lengths = _make_inputs(original, batch, length, fraction, torch_device, torch_dtype)
            flops = encoder_flops(original.config, lengths)
            gemm, gemm_flops = gemm_probe(sum(lengths))
            times: dict[str, list[float]] = {"bt": [], **{name: [] for name in baselines}}
            rates: list[float] = []
            strategies: set[str] = set()

            def bt_call(inputs: dict = inputs, strategies: set[str] = strategies) -> None:
                with force_strategy(strategy), record_strategies(strategies):
                    run_converted(**inputs)

            calls: dict[str, Callable[[], Any]] = {"bt": bt_call}
            for name, baseline in baselines.items():
                calls[name] = lambda baseline=baseline, inputs=inputs: baseline(**inputs)
            for round_index in range(warmup + runs):
                timed = round_index >= warmup
                label = f"run {round_index - warmup + 1}/{runs}" if timed else f"warm-up {round_index + 1}/{warmup}"
                say(f"padding {fraction:.0%}: {label}")
                for name, call in calls.items():
                    elapsed = measure(call)
                    if timed:
                        times[name].append(elapsed)
                elapsed = measure(gemm)
                if timed:
                    rates.append(gemm_flops / elapsed)
            median = {name: statistics.median(values) for name, values in times.items()}
            rate = statistics.median(rates)
            roofline_s = flops / rate
            row: dict[str, Any] = {
                "padding": fraction,
                "real_tokens": sum(lengths),
                "max_length": max(lengths),
                "bt_s": median["bt"],
                "tokens_per_s": sum(lengths) / median["bt"],
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
            rows.append(row)
            say(f"padding {fraction:.0%}: bt {median['bt'] * 1e3:.1f} ms, {row['speedup_vs_sdpa']:.2f}x sdpa")

    result: dict[str, Any] = {
        "machine": _machine(torch_device),
        "settings": {
            "model": source,
            "model_type": getattr(original.config, "model_type", None),
            "layers": layers,
            "hidden": hidden,
            "ffn": ffn,
            "batch": batch,
            "length": length,
            "dtype": dtype,
            "device": str(torch_device),
            "clock": clock,
            "runs": runs,
            "warmup": warmup,
            "strategy": strategy or "auto",
            "baseline_attention": getattr(original.config, "_attn_implementation", None),
            "compile": compile_backend,
            "command": "bt bench " + " ".join(_command_args(locals_=locals())),
        },
        "conversion": {"seconds": conversion_s, "param_bytes_before": bytes_before, "param_bytes_after": bytes_after},
        "rows": rows,
    }
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        say(f"wrote {json_path}")
    return result


def _command_args(locals_: dict[str, Any]) -> list[str]:
    """The ``bt bench`` arguments that reproduce a run (for the JSON and BENCHMARKS.md)."""
    model = locals_["model"]
    args = [f"--model {model if isinstance(model, str) else type(model).__name__}"]
    args += [f"--batch {locals_['batch']}", f"--length {locals_['length']}"]
    args.append("--padding " + ",".join(f"{p * 100:g}" for p in locals_["padding"]))
    args += [f"--dtype {locals_['dtype']}", f"--device {locals_['device']}"]
    if locals_["threads"]:
        args.append(f"--threads {locals_['threads']}")
    if locals_["clock"] != "wall":
        args.append(f"--clock {locals_['clock']}")
    args += [f"--runs {locals_['runs']}", f"--warmup {locals_['warmup']}"]
    if locals_["strategy"]:
        args.append(f"--strategy {locals_['strategy']}")
    if not locals_["eager"]:
        args.append("--no-eager")
    if locals_["compile_backend"]:
        args.append(f"--compile {locals_['compile_backend']}")
    return args


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report of :func:`run_bench`'s result."""
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
        "",
    ]
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
    return "\n".join(lines)
