"""The fused-layer contract: validation, the per-call checker, and the reference path."""

from __future__ import annotations

import warnings

import pytest
import torch

import bt_core.layer as layer_module
from bt_core import BetterTransformer, BetterTransformerError, LayerValidationError, force_strategy
from bt_core._engine import run_layer
from bt_core.layer import LayerCall

from .conftest import make_toy, max_diff_on_tokens, padded_batch
from .toy_model import ToyAdapter

pytestmark = pytest.mark.usefixtures("registry")


def _adapter(**overrides: object) -> ToyAdapter:
    model = make_toy(**overrides)
    adapter = ToyAdapter(model.layers[0], model.config)
    adapter.bt_layer_name = "layers.0 (ToyLayer)"
    return adapter


def test_a_valid_adapter_passes_validation() -> None:
    _adapter().validate_bettertransformer()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda a: setattr(a, "num_heads", None), r"attribute `num_heads` was not set"),
        (lambda a: setattr(a, "num_heads", 5), r"embed_dim=32 is not divisible by num_heads=5"),
        (lambda a: setattr(a, "activation", "mish"), r"activation 'mish' is not one bt computes exactly"),
        (
            lambda a: setattr(a, "out_proj_bias", torch.nn.Parameter(torch.zeros(31))),
            r"`out_proj_bias` has shape \(31,\), expected \(32,\)",
        ),
        (
            lambda a: setattr(a, "norm1_weight", torch.nn.Parameter(a.norm1_weight.detach().double())),
            r"the fused parameters mix dtypes.*model\.float\(\)",
        ),
    ],
    ids=["missing attribute", "heads", "activation", "shape", "dtype"],
)
def test_validation_names_the_layer_the_attribute_and_the_value(breakage, message: str) -> None:
    adapter = _adapter()
    breakage(adapter)
    with pytest.raises(LayerValidationError, match=r"ToyAdapter \(converting layers\.0 \(ToyLayer\)\): " + message):
        adapter.validate_bettertransformer()


def test_inference_without_gradients_takes_a_fast_path() -> None:
    adapter = _adapter().eval()
    with torch.inference_mode():
        assert adapter.forward_checker(LayerCall(torch.zeros(1, 2, 32))) is None


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"train": True}, "training mode"),
        ({"grad": True}, "autograd is recording gradients"),
        ({"call": {"output_attentions": True}}, "attention probabilities were requested"),
        ({"call": {"head_mask": torch.ones(4)}}, "a head mask was given"),
    ],
    ids=["training", "autograd", "attentions", "head mask"],
)
def test_forward_checker_names_why_the_reference_path_runs(setup: dict, reason: str) -> None:
    adapter = _adapter().train(setup.get("train", False))
    call = LayerCall(torch.zeros(1, 2, 32), **setup.get("call", {}))
    with torch.set_grad_enabled(setup.get("grad", False) or setup.get("train", False)):
        assert reason in (adapter.forward_checker(call) or "")


def test_autocast_inference_takes_a_fast_path_but_training_under_autocast_does_not() -> None:
    adapter = _adapter().eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert adapter.forward_checker(LayerCall(torch.zeros(1, 2, 32))) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "training" in adapter.train().forward_checker(LayerCall(torch.zeros(1, 2, 32)))


def test_the_reference_path_warns_once_naming_the_reason() -> None:
    model = BetterTransformer.transform(make_toy())
    ids, mask = padded_batch([3, 4], 4)

    layer_module._warned.clear()
    with pytest.warns(UserWarning, match="reference path because autograd is recording gradients"):
        model(ids, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(ids, mask)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_train_mode_with_dropout_zero_matches_the_original_in_train_mode(norm_first: bool) -> None:
    original = make_toy(norm_first=norm_first).train()
    converted = BetterTransformer.transform(original, keep_original_model=True)
    ids, mask = padded_batch([6, 3, 4], 6)
    expected = original(ids, mask).last_hidden_state
    actual = converted(ids, mask).last_hidden_state
    assert max_diff_on_tokens(actual, expected, mask) < 1e-5


def test_gradients_reach_every_fused_parameter() -> None:
    converted = BetterTransformer.transform(make_toy()).train()
    ids, mask = padded_batch([6, 3], 6)
    (converted(ids, mask).last_hidden_state * mask[..., None]).sum().backward()
    for name, parameter in converted.layers.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_dropout_is_applied_in_training_like_the_original() -> None:
    converted = BetterTransformer.transform(make_toy(dropout=0.5)).train()
    ids, mask = padded_batch([6, 6], 6)
    first = converted(ids, mask).last_hidden_state
    second = converted(ids, mask).last_hidden_state
    assert not torch.allclose(first, second), "dropout 0.5 in train mode must change the output"


def test_output_attentions_are_the_attention_probabilities() -> None:
    adapter = _adapter().eval()
    hidden = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    with torch.no_grad():
        _, probabilities = run_layer(adapter, LayerCall(hidden, mask, output_attentions=True))
    assert probabilities.shape == (2, 4, 5, 5)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(2, 4, 5))
    assert probabilities[0, :, :, 3:].abs().max() == 0, "padded keys get no attention"


@pytest.mark.parametrize("strategy", ["fused", "packed", "dense", "reference", None])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_every_strategy_matches_the_original_on_a_padded_batch(strategy: str | None, norm_first: bool) -> None:
    original = make_toy(norm_first=norm_first)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    ids, mask = padded_batch([7, 2, 5], 9)
    with torch.inference_mode():
        expected = original(ids, mask).last_hidden_state
        with force_strategy(strategy):
            actual = converted(ids, mask).last_hidden_state
    assert actual.shape == expected.shape
    assert max_diff_on_tokens(actual, expected, mask) < 1e-5


def test_left_padding_takes_a_correct_path_not_an_error() -> None:
    original = make_toy()
    converted = BetterTransformer.transform(original, keep_original_model=True)
    ids, mask = padded_batch([7, 2, 5], 9, left=True)
    with torch.inference_mode():
        expected = original(ids, mask).last_hidden_state
        actual = converted(ids, mask).last_hidden_state
        with force_strategy("fused"), pytest.raises(BetterTransformerError, match="not on the right"):
            converted(ids, mask)
    assert max_diff_on_tokens(actual, expected, mask) < 1e-5


@pytest.mark.parametrize("activation", ["gelu_new", "quick_gelu", "gelu_pytorch_tanh", "silu"])
def test_activations_the_kernel_lacks_are_computed_exactly_elsewhere(activation: str) -> None:
    original = make_toy(hidden_act=activation)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    ids, mask = padded_batch([7, 2, 5], 9)
    with torch.inference_mode():
        expected = original(ids, mask).last_hidden_state
        actual = converted(ids, mask).last_hidden_state
        with force_strategy("fused"), pytest.raises(BetterTransformerError, match=f"activation '{activation}'"):
            converted(ids, mask)
    assert max_diff_on_tokens(actual, expected, mask) < 1e-5


def test_a_dtype_without_a_kernel_takes_an_exact_ordinary_path() -> None:
    original = make_toy().double()
    converted = BetterTransformer.transform(original, keep_original_model=True)
    ids, mask = padded_batch([7, 2, 5], 9)
    with torch.inference_mode():
        expected = original(ids, mask).last_hidden_state
        actual = converted(ids, mask).last_hidden_state
    assert actual.dtype == torch.float64
    assert max_diff_on_tokens(actual, expected, mask) < 1e-10


def test_is_causal_without_a_mask_attends_causally() -> None:
    """transformers' SDPA path hands a causal layer no mask and is_causal=True (CLIP's text tower)."""
    adapter = _adapter().eval()
    hidden = torch.randn(2, 5, 32)
    with torch.inference_mode():
        causal = adapter(hidden, None, is_causal=True)
        explicit = adapter(hidden, torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5))
        bidirectional = adapter(hidden, None)
    torch.testing.assert_close(causal, explicit)
    assert not torch.allclose(causal[:, :-1], bidirectional[:, :-1])


def test_each_residual_branch_can_have_its_own_dropout() -> None:
    """Some layers (DistilBERT, ALBERT) drop out one residual branch only."""
    original = make_toy(norm_first=True)
    with torch.no_grad():
        for layer in original.layers:
            layer.o.weight.zero_()
            layer.o.bias.zero_()  # the attention branch now adds nothing
    converted = BetterTransformer.transform(make_toy(norm_first=True)).train()
    for layer in converted.layers:
        layer.attention_output_dropout, layer.feed_forward_dropout = 1.0, 0.0
    ids, mask = padded_batch([6, 6], 6)
    expected = original(ids, mask).last_hidden_state
    assert max_diff_on_tokens(converted(ids, mask).last_hidden_state, expected, mask) < 1e-5
    assert converted.layers[0].branch_dropout("attention") == 1.0
    assert converted.layers[0].branch_dropout("feed_forward") == 0.0


def test_stochastic_depth_drops_whole_branches_in_training_only() -> None:
    converted = BetterTransformer.transform(make_toy(norm_first=True))
    for layer in converted.layers:
        layer.drop_path = 1.0
    ids, mask = padded_batch([6, 6], 6)
    embeddings = converted.embeddings(ids)
    torch.testing.assert_close(converted.train()(ids, mask).last_hidden_state, embeddings)
    with torch.inference_mode():
        assert not torch.allclose(converted.eval()(ids, mask).last_hidden_state, embeddings)


def test_a_model_reading_padded_positions_runs_dense_on_padded_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    from bt_core._engine import record_strategies

    monkeypatch.setattr(ToyAdapter, "reads_padded_positions", True)
    original = make_toy()
    converted = BetterTransformer.transform(original, keep_original_model=True)
    ids, mask = padded_batch([7, 2, 5], 9)
    with torch.inference_mode(), record_strategies(set()) as used:
        expected = original(ids, mask).last_hidden_state
        torch.testing.assert_close(converted(ids, mask).last_hidden_state, expected, atol=1e-5, rtol=0)
    assert used == {"dense"}, "padded positions are computed, as the original computes them"
    with (
        torch.inference_mode(),
        force_strategy("packed"),
        pytest.raises(BetterTransformerError, match="padded positions"),
    ):
        converted(ids, mask)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_recomputes_converted_layers_with_the_same_gradients(
    monkeypatch: pytest.MonkeyPatch, use_reentrant: bool
) -> None:

    ids, mask = padded_batch([6, 3], 6)
    plain = BetterTransformer.transform(make_toy()).train()
    (plain(ids, mask).last_hidden_state * mask[..., None]).sum().backward()

    checkpointed = BetterTransformer.transform(make_toy()).train()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(layer.gradient_checkpointing for layer in checkpointed.layers)
    calls = []
    real_run_layer = layer_module.run_layer
    monkeypatch.setattr(
        layer_module, "run_layer", lambda layer, call: calls.append(layer) or real_run_layer(layer, call)
    )
    (checkpointed(ids, mask).last_hidden_state * mask[..., None]).sum().backward()
    assert len(calls) == 2 * len(checkpointed.layers), "each layer runs again in backward"
    for (name, expected), actual in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if expected.grad is not None:
            torch.testing.assert_close(actual.grad, expected.grad, msg=name)


def test_a_layer_after_a_fused_one_keeps_the_padding_when_it_must_run_the_reference_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fused path (CUDA's default) hands the next layer a nested batch; a later layer that must
    take the reference path pads it back and still masks the padding."""
    import bt_core._engine as engine
    import bt_core._strategy as strategy

    monkeypatch.setattr(strategy, "_fused_wins", lambda hidden_states, layout: True)
    original = make_toy()
    converted = BetterTransformer.transform(original, keep_original_model=True)
    later = converted.layers[1]
    monkeypatch.setattr(later, "forward_checker", lambda call: "a test needs the reference path here")
    ids, mask = padded_batch([7, 2, 5], 9)
    with torch.inference_mode(), engine.record_strategies(set()) as used:
        expected = original(ids, mask).last_hidden_state
        actual = converted(ids, mask).last_hidden_state
    assert used == {"fused", "reference"}
    assert max_diff_on_tokens(actual, expected, mask) < 1e-5
