"""``bt check``: what an operator runs to see whether bt converts one model exactly: it converts MODEL
(a model type, built small with random weights, or a local checkpoint folder; nothing is downloaded),
runs a right-padded and a left-padded batch through the original and the converted model and prints the
largest difference per output, failing beyond ``--atol``. torch and transformers are imported inside the
command; the model to compare is built or loaded by ``_ops_check_models``."""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from typing import TYPE_CHECKING

from ._ops_check_models import _load_checkpoint, _looks_like_path, _random_model
from .ops import (
    EXIT_BROKEN_PLUGIN,
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_UNSUPPORTED,
    EXIT_USAGE,
    _Exit,
    _quiet_registry,
    _registry,
    _shipped_by,
    _subcommand,
)

if TYPE_CHECKING:
    import torch

    from .registry import PluginRegistry
    from .testing.compare import OutputDiff

__all__ = ["add_check_parser", "run_check"]


def add_check_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        subparsers,
        "check",
        help="convert a small model (or a local checkpoint) and compare it with the original",
        description=(
            "Convert MODEL and run a right-padded and a left-padded batch through the original and the "
            "converted model, printing the largest difference per output (on the real tokens, and at position "
            "0 of the left-padded batch, which heads read). MODEL is a model type (see `bt list`; a small "
            "random-weight model is built from the plugin's example config) or a local checkpoint folder (with "
            "a config.json; the class its config.architectures names, such as BertForSequenceClassification, "
            "is compared, task head included). Nothing is downloaded."
        ),
        run=run_check,
    )
    parser.add_argument("model", metavar="MODEL", help="a model type (e.g. bert) or a local checkpoint folder")
    parser.add_argument(
        "--atol",
        type=float,
        default=None,
        help="largest difference accepted (default: 1e-4 in float32, 1e-2 in float16, 5e-2 in bfloat16)",
    )
    parser.add_argument("--batch-size", type=int, default=3, help="rows in the padded batch (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs (default: 0)")
    parser.add_argument(
        "--strategy",
        choices=["auto", "fused", "packed", "dense"],
        default="auto",
        help="force an execution strategy for the converted model (default: auto)",
    )
    parser.add_argument("--device", default="cpu", help="run both models on this device, e.g. cuda (default: cpu)")
    parser.add_argument(
        "--dtype",
        choices=sorted(DEFAULT_ATOL),
        default="float32",
        help="cast both models (and floating inputs) to this dtype (default: float32)",
    )
    parser.add_argument(
        "--autocast",
        choices=sorted(set(DEFAULT_ATOL) - {"float32"}),
        default=None,
        help="run both float32 models under torch.autocast(device, this dtype), as mixed-precision inference does",
    )


#: ``--atol`` when none is given: both models run in ``--dtype``, so the two differ by that dtype's
#: rounding, not by float32's.
DEFAULT_ATOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


def run_check(args: argparse.Namespace) -> int:
    if args.autocast is not None and args.dtype != "float32":
        raise _Exit(EXIT_USAGE, f"--autocast runs float32 models; drop --dtype {args.dtype} or --autocast")
    if args.atol is None:
        args.atol = DEFAULT_ATOL[args.autocast or args.dtype]
    if args.atol < 0 or args.batch_size < 1:
        raise _Exit(EXIT_USAGE, "--atol must be >= 0 and --batch-size >= 1")
    registry = _registry()
    with _quiet_registry():
        registry.supported_model_types()  # discovery and conflict resolution, reported below instead of warned
    for conflict in registry.conflicts:
        if conflict.model_type == args.model:
            print(
                f"note: plugins {conflict.winner!r} and {conflict.loser!r} both convert {conflict.model_type!r}; "
                f"using {conflict.winner!r}",
                file=sys.stderr,
            )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*nested tensors is in prototype stage.*")
        return _check(args, registry)


def _check(args: argparse.Namespace, registry: PluginRegistry) -> int:
    import torch

    from ._engine import force_strategy
    from .convert import BetterTransformer
    from .errors import BetterTransformerError, LayerValidationError, PluginLoadError, UnsupportedModelError
    from .layer import BetterTransformerBaseLayer
    from .testing.compare import compare_outputs, compare_with_position_zero
    from .testing.examples import ExampleError, cast_inputs, example_inputs, inputs_for, left_padded

    if _looks_like_path(args.model):
        model, config, mapping, loaded_as = _load_checkpoint(args.model, registry)
        described = f"checkpoint {args.model} ({type(model).__name__}, model type {config.model_type!r})"
    else:
        model, config, mapping, source = _random_model(args.model, registry, args.seed)
        loaded_as = None
        described = (
            f"a random-weight {type(model).__name__} (model type {args.model!r}, from {source}, seed {args.seed})"
        )
    device, dtype = _device(args.device), getattr(torch, args.dtype)
    try:
        inputs = inputs_for(model, example_inputs(mapping, config, args.batch_size, seed=args.seed))
    except ExampleError as exc:
        raise _Exit(EXIT_BROKEN_PLUGIN, str(exc)) from None
    model = model.to(device=device, dtype=dtype)
    inputs = cast_inputs(inputs, dtype, device)
    if (device.type, dtype) != ("cpu", torch.float32):
        described += f", {args.dtype} on {device}"
    if args.autocast is not None:
        described += f", under torch.autocast({device.type!r}, torch.{args.autocast})"
    autocast = functools.partial(
        torch.autocast, device.type, dtype=getattr(torch, args.autocast or "float32"), enabled=bool(args.autocast)
    )
    try:
        converted = BetterTransformer.transform(model, keep_original_model=True, registry=registry)
    except (UnsupportedModelError, LayerValidationError) as exc:
        raise _Exit(EXIT_UNSUPPORTED, f"cannot convert {described}: {exc}") from None
    except PluginLoadError as exc:
        raise _Exit(EXIT_BROKEN_PLUGIN, f"a plugin is broken: {exc}") from None
    except Exception as exc:
        raise _Exit(EXIT_BROKEN_PLUGIN, f"converting {described} failed: {type(exc).__name__}: {exc}") from None
    layers = [m for m in converted.modules() if isinstance(m, BetterTransformerBaseLayer)]
    providers = sorted({f"{type(m).__name__}" for m in layers})
    plugin = registry.mappings_for(config.model_type)
    shipped = _shipped_by(plugin[0].plugin) if plugin else "?"
    print(f"bt check: {described}")
    if loaded_as is not None:
        print(f"model class: {loaded_as}")
    print(
        f"converted {len(layers)} layer{'s' if len(layers) != 1 else ''} with {', '.join(providers)} "
        f"(plugin {plugin[0].plugin.name if plugin else '?'}, {shipped})"
    )
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        lengths = mask.sum(dim=-1).tolist() if mask.dim() == 2 else []
        print(f"inputs: {', '.join(sorted(k for k in inputs))}; batch {args.batch_size}, token counts {lengths}")
    else:
        print(f"inputs: {', '.join(sorted(k for k in inputs))}; batch {args.batch_size}")
    strategy = None if args.strategy == "auto" else args.strategy
    left = left_padded(inputs)
    batches = [("right-padded batch" if left is not None else "batch", inputs, compare_outputs)]
    if left is not None:  # heads read position 0, a pad token in a left-padded row: compare it too
        batches.append(("left-padded batch", left, compare_with_position_zero))
    bad = 0
    for title, batch, compare in batches:
        try:
            with torch.inference_mode(), autocast():
                torch.manual_seed(args.seed)
                expected = model(**batch)
                torch.manual_seed(args.seed)
                with force_strategy(strategy):
                    actual = converted(**batch)
        except BetterTransformerError as exc:
            if strategy is not None and batch is left:  # a debugging choice: it need not take every layout
                print(f"\n{title}: skipped, the forced strategy cannot run it: {exc}")
                continue
            raise _Exit(EXIT_UNSUPPORTED, f"the converted model cannot run the {title}: {exc}") from None
        except Exception as exc:
            raise _Exit(EXIT_BROKEN_PLUGIN, f"the converted model raised {type(exc).__name__}: {exc}") from None
        bad += _print_diffs(title, compare(expected, actual, batch.get("attention_mask")), args.atol)
    if bad:
        print(f"\nFAILED: {bad} output{'s' if bad != 1 else ''} beyond --atol {args.atol:g}.")
        return EXIT_MISMATCH
    print(f"\nOK: every output within --atol {args.atol:g}.")
    return EXIT_OK


def _device(name: str) -> torch.device:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise _Exit(EXIT_USAGE, f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _Exit(
            EXIT_USAGE,
            f"--device {name}: this torch ({torch.__version__}) sees no CUDA device; run on a machine with a GPU "
            "and a CUDA build of torch, or drop --device",
        )
    return device


def _print_diffs(title: str, diffs: list[OutputDiff], atol: float) -> int:
    """Print one batch's table of differences; returns how many are beyond ``atol``."""
    if not diffs:
        raise _Exit(EXIT_BROKEN_PLUGIN, "the model returned no tensor output to compare")
    width = max(len(d.name) for d in diffs)
    print(f"\n{title}:\n{'OUTPUT':<{width}}  {'MAX ABS DIFF':>12}  COMPARED")
    for diff in diffs:
        value = "-" if diff.problem else f"{diff.max_abs_diff:.3g}"
        status = "ok" if diff.within(atol) else "FAIL"
        print(f"{diff.name:<{width}}  {value:>12}  {diff.problem or diff.compared}  {status}")
    return sum(1 for d in diffs if not d.within(atol))
