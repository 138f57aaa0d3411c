"""``bt doctor``: what an operator runs to see whether bt works on this machine: the torch, transformers
and pluggy versions, whether nested tensors and PyTorch's fused encoder kernel run here (it runs them,
importing torch inside the command), the plugins found, those that failed to load and why, conflicts and
disabled plugins; it exits non-zero when it finds a problem."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from ._allocator import allocator_plan
from .hookspecs import PLUGIN_API_VERSION
from .ops import EXIT_MISMATCH, EXIT_OK, _quiet_registry, _registry, _shipped_by, _subcommand
from .registry import DISABLE_ENV

__all__ = ["add_doctor_parser", "run_doctor"]


def add_doctor_parser(subparsers: argparse._SubParsersAction) -> None:
    _subcommand(
        subparsers,
        "doctor",
        help="check this machine and the installed plugins",
        description=(
            "Report the torch and transformers versions, whether nested tensors and PyTorch's fused "
            "encoder kernel work here (by running them), the plugins found, those that failed to load and why, "
            "conflicts and disabled plugins."
        ),
        run=run_doctor,
    )


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
    print(f"allocator      {allocator_plan()[1]}")
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
