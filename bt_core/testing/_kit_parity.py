"""The kit's parity checks: the converted model computes the original's outputs and gradients.

Each runs in float64 where the example model can (see ``KitBase._run_original``), except the fused
kernel's, which has no float64 and runs in float32 at ``atol``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from .._engine import force_strategy
from ..layer import FUSED_PARAMETERS
from ..mapping import LayerMapping
from ..registry import PluginRegistry
from ._kit_base import KitBase, Precision, adapter_name, call_seeded, short
from .compare import compare_outputs, compare_with_position_zero, flatten_outputs, token_keep
from .examples import ExampleError, head_model_class, inputs_for, left_padded, new_example_config

__all__: list[str] = []

_BATCHES = {
    "right": "a right-padded batch",
    "none": "an unpadded batch",
    "left": "a left-padded batch",
}


class ParityChecks(KitBase):
    """Inference on unpadded, right- and left-padded batches, the fused kernel, the reference path
    with gradients, requested hidden states, and a classification head over the converted layers."""

    def _batch(self, mapping: LayerMapping, inputs: dict[str, Any], padding: str) -> dict[str, Any]:
        """``inputs`` padded as ``padding`` says ("right", "left" or "none"); skips when there is no mask."""
        mask = inputs.get("attention_mask")
        if padding == "none":
            return inputs if mask is None else {**inputs, "attention_mask": torch.ones_like(mask)}
        if mask is None:
            pytest.skip(
                f"model type {mapping.model_type!r}: the example inputs have no attention_mask (nothing to pad)"
            )
        if bool(mask.bool().all()):
            pytest.fail(
                f"model type {mapping.model_type!r}: the example inputs' attention_mask pads nothing; "
                "example_inputs should right-pad some rows so the padded paths are tested.",
                pytrace=False,
            )
        if padding == "left":
            moved = left_padded(inputs)
            if moved is None:
                pytest.skip(f"model type {mapping.model_type!r}: the attention_mask is not per token (batch, seq_len)")
            return moved
        return inputs

    def _skip_unless_fused_runs(self, converted: torch.nn.Module, mapping: LayerMapping) -> None:
        for name, layer in self._converted_layers(converted, mapping).items():
            if not layer.kernel_computes_activation:
                pytest.skip(f"{name}: the fused kernel does not compute activation {layer.activation!r}")
            if int(layer.num_heads) % 2 == 1:
                pytest.skip(f"{name}: the fused kernel does not take an odd head count ({layer.num_heads})")

    def _check_parity(
        self,
        mapping: LayerMapping,
        registry: PluginRegistry,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        what: str,
        *,
        strategy: str | None = None,
        position_zero: bool = False,
        skip_if_the_original_fails: bool = False,
    ) -> None:
        """Run ``inputs`` through the original and the converted ``model`` in inference mode and compare."""

        def run(module: torch.nn.Module, batch: dict[str, Any]) -> Any:
            with torch.inference_mode():
                return call_seeded(module, batch, self.seed)

        try:
            if strategy == "fused":  # the kernel has no float64: compare in float32, as users run it
                expected, precision = run(model, inputs), Precision(torch.float32, self.atol, self.grad_atol)
            else:
                expected, inputs, precision = self._run_original(model, inputs, run)
        except Exception as exc:
            problem = f"the original model raised {short(exc)} on {what}"
            if skip_if_the_original_fails:
                pytest.skip(f"model type {mapping.model_type!r}: {problem}, so it is not checked")
            pytest.fail(
                f"model type {mapping.model_type!r}: {problem}; fix the mapping's example_inputs", pytrace=False
            )
        converted = self._convert(model, mapping, registry)
        if strategy == "fused":
            self._skip_unless_fused_runs(converted, mapping)
        problem = None
        with force_strategy(strategy):
            try:
                actual = run(converted, inputs)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None and strategy and f"strategy {strategy!r} was forced, but" in problem:
            pytest.skip(
                f"model type {mapping.model_type!r}: the {strategy} strategy cannot run these inputs: {problem}"
            )
        if problem is not None:
            forced = f" (strategy {strategy!r} forced)" if strategy else ""
            pytest.fail(
                f"model type {mapping.model_type!r}: the converted model raised {problem}{forced}", pytrace=False
            )
        compare = compare_with_position_zero if position_zero else compare_outputs
        diffs = compare(expected, actual, inputs.get("attention_mask"))
        self._assert_close(mapping, f"{what} (inference, {precision.describe()})", diffs, precision.atol)

    def _check_batch(self, mapping: Any, registry: PluginRegistry, padding: str) -> None:
        model, _, inputs = self._build(mapping)
        batch = self._batch(mapping, inputs, padding)
        self._check_parity(mapping, registry, model, batch, _BATCHES[padding], position_zero=padding == "left")

    # -- the checks ------------------------------------------------------------------------------

    def test_unpadded_batch_matches(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        self._check_batch(mapping, _bt_registry, "none")

    def test_padded_batch_matches(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        self._check_batch(mapping, _bt_registry, "right")

    def test_left_padded_batch_matches(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        self._check_batch(mapping, _bt_registry, "left")

    def test_fused_kernel_matches(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, inputs = self._build(mapping)
        padding = "right" if inputs.get("attention_mask") is not None else "none"
        batch = self._batch(mapping, inputs, padding)
        self._check_parity(mapping, _bt_registry, model, batch, f"{_BATCHES[padding]}, fused kernel", strategy="fused")

    def test_classification_head_matches(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        mapping = self._usable(mapping)
        try:
            head = head_model_class(new_example_config(mapping))
        except ExampleError as exc:
            pytest.fail(str(exc), pytrace=False)
        if head is None:
            pytest.skip(
                f"model type {mapping.model_type!r}: transformers has no sequence- or image-classification model "
                "for the example config, so there is no head to check"
            )
        model, _, inputs = self._build(mapping, model_class=head)
        if mapping.layer_class_name not in {type(m).__name__ for m in model.modules()}:
            pytest.skip(f"model type {mapping.model_type!r}: {head.__name__} has no {mapping.layer_class_name}")
        inputs = inputs_for(model, inputs)
        paddings = ["right", "left"] if inputs.get("attention_mask") is not None else ["none"]
        for padding in paddings:
            if padding != paddings[0]:
                model, _, _ = self._build(mapping, model_class=head)  # the last run converted it in place
            batch = self._batch(mapping, inputs, padding)
            what = f"{head.__name__}, {_BATCHES[padding]}"
            # A head built for another use (T5's encoder-decoder classifier wants <eos> tokens) may not take
            # the encoder's example inputs: that says nothing about the adapter.
            self._check_parity(
                mapping,
                _bt_registry,
                model,
                batch,
                what,
                position_zero=padding == "left",
                skip_if_the_original_fails=True,
            )

    def test_reference_path_matches_with_gradients(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, inputs = self._build(mapping)
        mapping = self._usable(mapping)
        reference = copy.deepcopy(model).train()
        expected, inputs, precision = self._run_original(
            reference, inputs, lambda module, batch: call_seeded(module, batch, self.seed)
        )
        converted = self._convert(model.to(precision.dtype), mapping, _bt_registry).train()
        actual = call_seeded(converted, inputs, self.seed)
        mask = inputs.get("attention_mask")
        what = f"the reference path (train mode, autograd, {precision.describe()})"
        self._assert_close(mapping, what, compare_outputs(expected, actual, mask), precision.atol)

        _loss(expected, mask, self.seed).backward()
        _loss(actual, mask, self.seed).backward()
        problems = _gradient_problems(reference, converted, self._converted_layers(converted, mapping), precision)
        if problems:
            pytest.fail(
                f"model type {mapping.model_type!r} (adapter {adapter_name(mapping)}), gradients of the reference "
                f"path ({precision.describe()}) differ from the original model's:\n  " + "\n  ".join(problems[:20]),
                pytrace=False,
            )

    def test_requested_hidden_states_match(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, inputs = self._build(mapping)
        mapping = self._usable(mapping)

        def run(module: torch.nn.Module, batch: dict[str, Any]) -> Any:
            with torch.inference_mode():
                return call_seeded(module, {**batch, "output_hidden_states": True}, self.seed)

        try:
            expected, inputs, precision = self._run_original(model, inputs, run)
        except TypeError:
            pytest.skip(f"model type {mapping.model_type!r}: the example model takes no output_hidden_states")
        if not any(".hidden_states" in n or n.startswith("hidden_states") for n, _ in flatten_outputs(expected)):
            pytest.skip(f"model type {mapping.model_type!r}: the example model returns no hidden_states")
        actual = run(self._convert(model, mapping, _bt_registry), inputs)
        diffs = compare_outputs(expected, actual, inputs.get("attention_mask"))
        self._assert_close(mapping, f"output_hidden_states=True ({precision.describe()})", diffs, precision.atol)


def _gradient_problems(
    reference: torch.nn.Module, converted: torch.nn.Module, layers: dict[str, Any], precision: Precision
) -> list[str]:
    """Every fused parameter that should get a gradient and did not, and every gradient that differs."""
    problems = []
    for name, layer in layers.items():
        for attr in FUSED_PARAMETERS:
            value = getattr(layer, attr, None)
            if value is None:  # plugin API 1.1: a part the layer lacks (an RMSNorm's bias)
                continue
            if value.requires_grad and value.grad is None:
                problems.append(f"{name}.{attr} requires grad but got no gradient")
            elif value.grad is not None and not bool(torch.isfinite(value.grad).all()):
                problems.append(f"{name}.{attr} got a non-finite gradient")
        shared, sliced, _derived = layer._bt_restore_plan  # derived (folded) grads differ by design
        original = reference.get_submodule(name)
        for pname, attr in shared.items():
            expected = original.get_parameter(pname).grad
            problems += _grad_diff(f"{name}.{pname} (as {attr})", expected, getattr(layer, attr).grad, precision)
        for pname, (attr, start, end) in sliced.items():
            grad = getattr(layer, attr).grad
            problems += _grad_diff(
                f"{name}.{pname} (as {attr}[{start}:{end}])",
                original.get_parameter(pname).grad,
                None if grad is None else grad[start:end],
                precision,
            )
    inside = tuple(f"{name}." for name in layers)
    reference_params = dict(reference.named_parameters())
    for pname, parameter in converted.named_parameters():
        if not pname.startswith(inside) and pname in reference_params:
            problems += _grad_diff(pname, reference_params[pname].grad, parameter.grad, precision)
    return problems


def _loss(output: Any, mask: Any, seed: int) -> torch.Tensor:
    """A scalar touching every float output on the valid tokens, with seeded weights (so norms do not cancel)."""
    generator = torch.Generator().manual_seed(seed + 2)
    keep = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    total = torch.zeros(())
    for _, tensor in flatten_outputs(output):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or not tensor.requires_grad:
            continue
        weights = torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype)
        positions = token_keep(keep, tensor)
        if positions is not None:
            weights = weights * positions.reshape(*positions.shape, *([1] * (tensor.dim() - 2))).to(weights.dtype)
        total = total + (tensor * weights).sum()
    return total


def _grad_diff(
    name: str, expected: torch.Tensor | None, actual: torch.Tensor | None, precision: Precision
) -> list[str]:
    if expected is None and actual is None:
        return []
    if expected is None or actual is None:
        return [
            f"{name}: gradient {'missing' if actual is None else 'present'} in the converted model, "
            f"{'present' if expected is not None else 'missing'} in the original"
        ]
    diff = (actual.double() - expected.double()).abs().max().item()
    return (
        [] if diff <= precision.grad_atol else [f"{name}: max abs gradient diff {diff:.3g} > {precision.grad_atol:g}"]
    )
