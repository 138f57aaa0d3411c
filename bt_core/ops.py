"""``bt list``, ``bt doctor`` and ``bt check``: what an operator runs to see what bt can do here.

Nothing here imports torch or transformers at module level (``bt --help`` and ``bt list`` stay fast);
``doctor`` and ``check`` import them inside the command.

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
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._known_packs import pack_for
from .hookspecs import PLUGIN_API_VERSION
from .registry import DISABLE_ENV, PluginInfo, PluginRegistry, default_registry

if TYPE_CHECKING:
    from .mapping import LayerMapping
    from .testing.compare import OutputDiff

__all__ = [
    "EXIT_BROKEN_PLUGIN",
    "EXIT_MISMATCH",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNSUPPORTED",
    "EXIT_USAGE",
    "add_check_parser",
    "add_doctor_parser",
    "add_list_parser",
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


# -- bt list ----------------------------------------------------------------------------------------


def add_list_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list every model type the installed plugins convert",
        description=_wrap(
            "List every model type the installed bt plugins convert: the encoder layer class "
            "replaced, and the plugin (and its distribution and version) that provides it."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_command(run_list))


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


# -- bt doctor --------------------------------------------------------------------------------------


def add_doctor_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check this machine and the installed plugins",
        description=_wrap(
            "Report the torch and transformers versions, whether nested tensors and PyTorch's fused "
            "encoder kernel work here (by running them), the plugins found, those that failed to load and why, "
            "conflicts and disabled plugins."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_command(run_doctor))


def _version(distribution: str) -> str:
    import importlib.metadata as metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _probe_kernel(device: str) -> tuple[str | None, str | None]:
    """``(nested_problem, kernel_problem)``: None when a tiny nested tensor / fused layer call works."""
    import torch

    nested_problem = kernel_problem = None
    embed, heads, ffn = 8, 2, 16
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Any:
        return (torch.randn(*shape, generator=generator) * 0.1).to(device)

    hidden = rand(2, 3, embed)
    keep = torch.tensor([[True, True, True], [True, True, False]], device=device)
    nested = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nested = torch._nested_tensor_from_mask(hidden, keep, mask_check=False)
            sizes = [t.shape[0] for t in nested.unbind()]
        if sizes != [3, 2]:
            nested_problem = f"a nested tensor from a padding mask has lengths {sizes}, expected [3, 2]"
    except Exception as exc:
        nested_problem = f"{type(exc).__name__}: {exc}"
    weights = [rand(3 * embed, embed), rand(3 * embed), rand(embed, embed), rand(embed)]
    norms = [torch.ones(embed, device=device), torch.zeros(embed, device=device)] * 2
    ffn_weights = [rand(ffn, embed), rand(ffn), rand(embed, ffn), rand(embed)]
    try:
        with torch.inference_mode():
            for batch in [hidden] + ([nested] if nested is not None and nested_problem is None else []):
                out = torch._transformer_encoder_layer_fwd(
                    batch, embed, heads, *weights, True, False, 1e-5, *norms, *ffn_weights, None, None
                )
                dense = out.to_padded_tensor(0.0) if out.is_nested else out
                if not bool(torch.isfinite(dense).all()):
                    kernel_problem = "torch._transformer_encoder_layer_fwd returned non-finite values"
    except Exception as exc:
        kernel_problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return nested_problem, kernel_problem


def run_doctor(args: argparse.Namespace) -> int:
    import platform

    problems: list[str] = []
    print(f"bt-core        {_version('bt-core')} (plugin API {PLUGIN_API_VERSION})")
    print(f"python         {platform.python_version()} ({sys.executable})")
    try:
        import torch
    except Exception as exc:
        print(f"torch          cannot be imported: {exc}")
        return EXIT_MISMATCH
    print(f"torch          {torch.__version__}")
    print(f"transformers   {_version('transformers')}")
    pluggy_version = _version("pluggy")
    print(f"pluggy         {pluggy_version}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        print(f"cuda           {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
    else:
        print("cuda           not available")
    for device in devices:
        nested_problem, kernel_problem = _probe_kernel(device)
        print(f"nested tensors ({device}): {'ok' if nested_problem is None else 'FAILED: ' + nested_problem}")
        print(f"fused kernel   ({device}): {'ok' if kernel_problem is None else 'FAILED: ' + kernel_problem}")
        if nested_problem:
            problems.append(f"nested tensors do not work on {device}: {nested_problem}")
        if kernel_problem:
            problems.append(f"the fused kernel does not run on {device}: {kernel_problem}")

    registry = _registry()
    with _quiet_registry():
        plugins = registry.plugins()
        counts: dict[str, int] = {}
        for registered in registry.all_mappings():
            counts[registered.plugin.name] = counts.get(registered.plugin.name, 0) + 1
        types_by_plugin: dict[str, set[str]] = {}
        for registered in registry.all_mappings():
            types_by_plugin.setdefault(registered.plugin.name, set()).add(registered.mapping.model_type)
        failures = list(registry.failures)
        conflicts = list(registry.conflicts)
    print(f"\nplugins found ({len(plugins)}):")
    for info in plugins:
        types = len(types_by_plugin.get(info.name, ()))
        plural = "s" if types != 1 else ""
        print(f"  {info.name:<16} {_shipped_by(info):<32} plugin API {info.api_version}, {types} model type{plural}")
    if not plugins:
        print("  none: install a plugin pack, e.g. `pip install bt-plugins-encoders`")
        problems.append("no bt plugin is installed, so no model can be converted")
    print(f"failed plugins ({len(failures)}):")
    for failure in failures:
        print(f"  {failure.describe()}")
        problems.append(f"{failure.describe()}")
    print(f"conflicts ({len(conflicts)}):")
    for conflict in conflicts:
        print(
            f"  {conflict.model_type!r}: {conflict.winner!r} wins over {conflict.loser!r} "
            f"(set {DISABLE_ENV}={conflict.loser} to silence)"
        )
    disabled_env = os.environ.get(DISABLE_ENV, "")
    print(f"disabled plugins ({len(registry.disabled)}):" + (f" {DISABLE_ENV}={disabled_env}" if disabled_env else ""))
    for name in registry.disabled:
        print(f"  {name}")
    if problems:
        print(f"\n{len(problems)} problem{'s' if len(problems) != 1 else ''}:")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_MISMATCH
    print("\nAll good.")
    return EXIT_OK


# -- bt check ---------------------------------------------------------------------------------------


def add_check_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="convert a small model (or a local checkpoint) and compare it with the original",
        description=_wrap(
            "Convert MODEL and run a right-padded and a left-padded batch through the original and the "
            "converted model, printing the largest difference per output (on the real tokens, and at position "
            "0 of the left-padded batch, which heads read). MODEL is a model type (see `bt list`; a small "
            "random-weight model is built from the plugin's example config) or a local checkpoint folder (with "
            "a config.json; the class its config.architectures names, such as BertForSequenceClassification, "
            "is compared, task head included). Nothing is downloaded."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="a model type (e.g. bert) or a local checkpoint folder")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest difference accepted (default: 1e-4)")
    parser.add_argument("--batch-size", type=int, default=3, help="rows in the padded batch (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs (default: 0)")
    parser.add_argument(
        "--strategy",
        choices=["auto", "fused", "packed", "dense"],
        default="auto",
        help="force an execution strategy for the converted model (default: auto)",
    )
    parser.set_defaults(func=_command(run_check))


def _looks_like_path(model: str) -> bool:
    return os.path.exists(model) or os.sep in model or "/" in model or model.startswith(("~", "."))


_SHRINK: dict[str, int] = {
    "num_hidden_layers": 2,
    "num_layers": 2,
    "encoder_layers": 2,
    "hidden_size": 64,
    "d_model": 64,
    "embedding_size": 64,
    "num_attention_heads": 4,
    "encoder_attention_heads": 4,
    "intermediate_size": 128,
    "encoder_ffn_dim": 128,
    "image_size": 32,
    "patch_size": 8,
}


def shrink_config(config: Any) -> Any:
    """Make a default-sized config tiny (2 layers, hidden 64, 4 heads), sub-configs too."""
    from transformers import PretrainedConfig

    for name, value in _SHRINK.items():
        current = getattr(config, name, None)
        if isinstance(current, int) and not isinstance(current, bool) and current > value:
            setattr(config, name, value)
    vocab = getattr(config, "vocab_size", None)
    special = [getattr(config, n, None) for n in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id")]
    if isinstance(vocab, int) and vocab > 512 and all(not isinstance(s, int) or s < 512 for s in special):
        config.vocab_size = 512
    for value in list(vars(config).values()):
        if isinstance(value, PretrainedConfig):
            shrink_config(value)
    return config


def _unsupported(model_type: str, registry: PluginRegistry) -> _Exit:
    supported = ", ".join(sorted(registry.supported_model_types())) or "none (no bt plugin is installed)"
    refusal = registry.refusal_for(model_type)
    if refusal is not None:
        reason, plugin = refusal
        return _Exit(
            EXIT_UNSUPPORTED, f"model type {model_type!r} cannot be converted exactly: {reason} (plugin {plugin!r})."
        )
    pack = pack_for(model_type)
    failed = [f for f in registry.failures if pack is not None and f.distribution == pack]
    if failed:
        return _Exit(
            EXIT_BROKEN_PLUGIN,
            f"model type {model_type!r} comes from {pack}, which is installed but failed to load: "
            f"{failed[0].describe()}. Reinstall or upgrade it; `bt doctor` shows every plugin.",
        )
    hint = f" Install {pack} (`pip install {pack}`) to add it." if pack else ""
    notes = "".join(f"\n  note: {f.describe()}" for f in registry.failures)
    return _Exit(
        EXIT_UNSUPPORTED,
        f"{model_type!r} is not a model type the installed bt plugins convert, nor a local folder.{hint}\n"
        f"  supported model types: {supported}\n"
        "  MODEL is a model type (see `bt list`) or the path of a local checkpoint folder; bt check downloads "
        f"nothing.{notes}",
    )


def _load_checkpoint(path: str, registry: PluginRegistry) -> tuple[Any, Any, LayerMapping, str]:
    folder = os.path.expanduser(path)
    if not os.path.exists(folder):
        raise _Exit(
            EXIT_NOT_FOUND, f"{path}: no such file or folder. MODEL is a model type or a local checkpoint folder."
        )
    if not os.path.isdir(folder) or not os.path.isfile(os.path.join(folder, "config.json")):
        raise _Exit(
            EXIT_NOT_FOUND,
            f"{path} is not a transformers checkpoint folder (no config.json in it); pass the folder that "
            "save_pretrained() wrote.",
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise _Exit(EXIT_NOT_FOUND, f"{path}: the config cannot be loaded: {type(exc).__name__}: {exc}") from None
    model_type = getattr(config, "model_type", "")
    mappings = registry.mappings_for(model_type)
    if not mappings:
        raise _unsupported(model_type, registry)
    mapping = mappings[0].mapping
    model_class, how = _checkpoint_class(config, mapping)
    try:
        model = model_class.from_pretrained(folder, config=config, local_files_only=True)
    except Exception as exc:
        raise _Exit(EXIT_NOT_FOUND, f"{path}: the weights cannot be loaded: {type(exc).__name__}: {exc}") from None
    return model.float().eval(), config, mapping, how


def _checkpoint_class(config: Any, mapping: LayerMapping) -> tuple[Any, str]:
    """The class to load a checkpoint with, and a line saying why.

    The one ``config.architectures`` names (BertForSequenceClassification): its task head is what the
    checkpoint is used through, and a head that reads a position the converted layers do not compute
    (position 0 under left padding) shows only there. Else the mapping's example model class.
    """
    import transformers

    base = mapping.load_example_model_class()
    named = [name for name in getattr(config, "architectures", None) or [] if isinstance(name, str)]
    for name in named:
        head = getattr(transformers, name, None)
        if isinstance(head, type):
            return head, f"{name} (from config.architectures)"
    base_name = getattr(base, "__name__", str(base))
    if named:
        return base, (
            f"{base_name} (config.architectures names {', '.join(named)}, which transformers does not have: "
            "custom code? Its task head is not compared)"
        )
    return base, f"{base_name} (config.architectures names no class)"


def _random_model(model_type: str, registry: PluginRegistry, seed: int) -> tuple[Any, Any, LayerMapping, str]:
    from .testing.examples import ExampleError, build_example_model, new_example_config, zero_dropout

    mappings = registry.mappings_for(model_type)
    if not mappings:
        raise _unsupported(model_type, registry)
    mapping = mappings[0].mapping
    try:
        if mapping.example_config is not None:
            config, source = new_example_config(mapping), "the plugin's example config"
        else:
            from transformers import AutoConfig

            config = zero_dropout(shrink_config(AutoConfig.for_model(model_type)))
            source = "AutoConfig.for_model, shrunk"
        model, config = build_example_model(mapping, config, seed=seed)
    except ExampleError as exc:
        raise _Exit(EXIT_BROKEN_PLUGIN, f"cannot build a small {model_type!r} model: {exc}") from None
    except Exception as exc:
        raise _Exit(
            EXIT_BROKEN_PLUGIN, f"cannot build a small {model_type!r} model: {type(exc).__name__}: {exc}"
        ) from None
    return model, config, mapping, source


def run_check(args: argparse.Namespace) -> int:
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
    from .testing.examples import ExampleError, example_inputs, inputs_for, left_padded

    if _looks_like_path(args.model):
        model, config, mapping, loaded_as = _load_checkpoint(args.model, registry)
        described = f"checkpoint {args.model} ({type(model).__name__}, model type {config.model_type!r})"
    else:
        model, config, mapping, source = _random_model(args.model, registry, args.seed)
        loaded_as = None
        described = (
            f"a random-weight {type(model).__name__} (model type {args.model!r}, from {source}, seed {args.seed})"
        )
    try:
        inputs = inputs_for(model, example_inputs(mapping, config, args.batch_size, seed=args.seed))
    except ExampleError as exc:
        raise _Exit(EXIT_BROKEN_PLUGIN, str(exc)) from None
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
            with torch.inference_mode():
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
