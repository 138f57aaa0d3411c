"""``AdapterConformance``: the checks every bt adapter must pass, as a pytest class to subclass."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest
import torch

from ..convert import BetterTransformer
from ..hookspecs import PLUGIN_API_VERSION
from ..layer import FUSED_PARAMETERS, BetterTransformerBaseLayer
from ..registry import ENTRY_POINT_GROUP, PluginRegistry
from ._kit_parity import ParityChecks

__all__ = ["AdapterConformance"]


class AdapterConformance(ParityChecks):
    """Subclass as ``class TestMyPlugin(AdapterConformance): plugin = my_plugin_module``.

    Every ``test_*`` method that takes ``mapping`` runs once per layer mapping the plugin registers,
    each in a fresh ``PluginRegistry(discover=False)`` holding only this plugin, installed as the
    default registry for the test and restored afterwards. The example model is built from the
    mapping's ``example_config`` (required), seeded, in eval mode, with every dropout set to 0.0 and
    every parameter perturbed by seeded noise (so that a swapped norm or a forgotten bias shows). The
    checks:

    - the layer class named in the mapping exists in the example model;
    - the conversion replaces every such layer with the mapping's adapter and each one passes
      ``validate_bettertransformer()``;
    - an unpadded, a right-padded and a left-padded batch give the original outputs on the valid
      tokens, with the original shapes; the left-padded one also at position 0 of every row (a pad
      token there, whose hidden state the original computes and a CLS head reads);
    - so does the fused kernel, on the right-padded batch, when it can run the layer;
    - the model type's sequence- (text) or image-classification (vision) model in transformers, when
      there is one, gives the original logits on right- and left-padded batches;
    - the reference path (train mode, autograd) matches too, every fused parameter that requires a
      gradient gets one, and the gradients equal the original model's;
    - requested hidden states match;
    - ``reverse`` gives a ``state_dict`` bit-identical to the original;
    - with ``plugin_name`` set, the installed entry point of that name loads ``plugin``.

    Parity is checked in float64 (within ``float64_atol`` and ``float64_grad_atol``), where a wrong
    epsilon or a slightly wrong scale cannot hide in float32 rounding; the fused kernel, which has no
    float64, in float32 (within ``atol``). A model that cannot run in float64 is compared in float32
    within ``atol``/``grad_atol``, and its failure messages say so.

    Outputs are compared on the positions the inputs' ``attention_mask`` keeps when an output is per
    token (its second dimension is the mask's length, or longer for text-then-image models like
    ViLT); other outputs are compared whole. A model whose mask is not per token (audio masks in
    sample space) should give ``example_inputs`` without padding.

    Class attributes to set: ``plugin`` (a module or object with hookimpls, or its import path) and,
    for a published plugin, ``plugin_name`` (the name of its entry point in the
    ``bt_core.plugins`` group, the key in pyproject.toml's ``[project.entry-points."bt_core.plugins"]``);
    optionally ``model_types`` (test only these), ``atol``, ``grad_atol``, ``float64_atol``,
    ``float64_grad_atol``, ``batch_size``, ``seed``, ``perturb``.
    """

    # -- the checks ------------------------------------------------------------------------------

    def test_plugin_declares_a_compatible_api(self) -> None:
        plugin, name = self._bt_plugin()
        declare = getattr(plugin, "bt_plugin_api_version", None)
        assert declare is not None, (
            f"plugin {name!r} has no bt_plugin_api_version hookimpl; add one returning {PLUGIN_API_VERSION!r}."
        )
        declared = str(declare())
        assert declared.split(".")[0] == PLUGIN_API_VERSION.split(".")[0], (
            f"plugin {name!r} declares plugin API {declared}; this bt-core implements {PLUGIN_API_VERSION}."
        )

    def test_mapping_is_well_formed(self, mapping: Any) -> None:
        mapping = self._usable(mapping)
        adapter = mapping.load_adapter()
        assert isinstance(adapter, type) and issubclass(adapter, BetterTransformerBaseLayer), (
            f"model type {mapping.model_type!r}: the adapter {adapter!r} is not a "
            "bt_core.BetterTransformerBaseLayer subclass"
        )
        if mapping.example_config is None:
            self._build(mapping)  # fails with the message saying what to add

    def test_layer_class_is_in_the_example_model(self, mapping: Any) -> None:
        model, _, _ = self._build(mapping)
        classes = {type(m).__name__ for m in model.modules()}
        if mapping.layer_class_name not in classes:
            layer_like = sorted(c for c in classes if "Layer" in c or "Block" in c)
            pytest.fail(
                f"model type {mapping.model_type!r}: the example model ({type(model).__name__}) has no module of "
                f"class {mapping.layer_class_name!r}; layer-like classes in it: {', '.join(layer_like) or 'none'}. "
                "Fix layer_class_name, or example_model_class if the layer lives in another model class.",
                pytrace=False,
            )

    def test_converts_and_validates(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, _ = self._build(mapping)
        originals = {n for n, m in model.named_modules() if type(m).__name__ == mapping.layer_class_name}
        converted = self._convert(model, mapping, _bt_registry)
        layers = self._converted_layers(converted, mapping)
        missing = sorted(originals - set(layers))
        assert not missing, f"model type {mapping.model_type!r}: layers left unconverted: {missing}"
        adapter = mapping.load_adapter()
        for name, layer in layers.items():
            assert isinstance(layer, adapter), (
                f"model type {mapping.model_type!r}: {name} became a {type(layer).__name__}, not {adapter.__name__}"
            )
            layer.validate_bettertransformer()
            for attr in FUSED_PARAMETERS:
                value = getattr(layer, attr, None)
                if value is None:  # plugin API 1.1: a part the layer lacks; validation judged it
                    continue
                assert isinstance(value, torch.nn.Parameter), (
                    f"model type {mapping.model_type!r}: {name}.{attr} is a {type(value).__name__}, not an "
                    "nn.Parameter; assign the original parameter, or use self.fuse / self.zeros / self.derive."
                )
                assert value.device.type != "meta", (
                    f"model type {mapping.model_type!r}: {name}.{attr} is on the meta device"
                )

    def test_plugin_is_found_through_its_entry_point(self) -> None:
        plugin, name = self._bt_plugin()
        if self.plugin_name is None:
            pytest.skip(
                f"{type(self).__name__} sets no plugin_name, so the entry point bt discovers is not checked; "
                "set plugin_name to the name your pyproject.toml declares under "
                f'[project.entry-points."{ENTRY_POINT_GROUP}"]'
            )
        found = {ep.value: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == self.plugin_name}
        if not found:
            names = sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})
            pytest.fail(
                f"no installed distribution declares an entry point named {self.plugin_name!r} in group "
                f"{ENTRY_POINT_GROUP!r} (installed: {', '.join(names) or 'none'}), so bt will not find plugin "
                f'{name!r}. Declare it in pyproject.toml, `[project.entry-points."{ENTRY_POINT_GROUP}"]` '
                f'`{self.plugin_name} = "your_package.bt_plugin"`, and install the distribution '
                "(pip install -e .); or set plugin_name to the name declared there.",
                pytrace=False,
            )
        for value, entry_point in sorted(found.items()):
            try:
                loaded = entry_point.load()
            except Exception as exc:
                pytest.fail(
                    f"entry point {self.plugin_name!r} = {value!r} (group {ENTRY_POINT_GROUP!r}) fails to load: "
                    f"{type(exc).__name__}: {exc}",
                    pytrace=False,
                )
            if loaded is not plugin:
                pytest.fail(
                    f"entry point {self.plugin_name!r} = {value!r} (group {ENTRY_POINT_GROUP!r}) loads {loaded!r}, "
                    f"not the plugin this class tests ({plugin!r}); point the entry point at the module that holds "
                    "the hookimpls, or set `plugin` to the object it names.",
                    pytrace=False,
                )

    def test_reverse_is_bit_identical(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, inputs = self._build(mapping)
        mapping = self._usable(mapping)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        classes = {n: type(m) for n, m in model.named_modules()}
        converted = self._convert(model, mapping, _bt_registry)
        with torch.inference_mode():
            converted(**inputs)
        restored = BetterTransformer.reverse(converted)
        after = restored.state_dict()
        assert list(after) == list(before), (
            f"model type {mapping.model_type!r}: reverse() changed the state_dict keys: "
            f"missing {sorted(set(before) - set(after))}, extra {sorted(set(after) - set(before))}"
        )
        for key, value in before.items():
            got = after[key]
            if got.dtype != value.dtype or got.shape != value.shape or got.device != value.device:
                pytest.fail(
                    f"model type {mapping.model_type!r}: after reverse(), {key} is {got.dtype} {tuple(got.shape)} on "
                    f"{got.device}, the original {value.dtype} {tuple(value.shape)} on {value.device}",
                    pytrace=False,
                )
            if not torch.equal(got, value):
                diff = (got.double() - value.double()).abs().max().item() if got.is_floating_point() else "n/a"
                pytest.fail(
                    f"model type {mapping.model_type!r}: after reverse(), {key} is not bit-identical to the original "
                    f"(max abs diff {diff}); the adapter must share or fuse the original parameters, not copy them.",
                    pytrace=False,
                )
        for name, parameter in restored.named_parameters():
            assert parameter.requires_grad == requires_grad.get(name, parameter.requires_grad), (
                f"model type {mapping.model_type!r}: after reverse(), {name}.requires_grad changed"
            )
        changed = sorted(n for n, m in restored.named_modules() if n in classes and type(m) is not classes[n])
        assert not changed, f"model type {mapping.model_type!r}: after reverse(), modules of another class: {changed}"
