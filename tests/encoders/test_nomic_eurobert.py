"""NomicBERT and EuroBERT: rotary, gated (SwiGLU) encoder layers converted exactly.

NomicBERT (nomic-embed-text) is post-norm with LayerNorms; EuroBERT is a llama-shaped layer run as a
bidirectional encoder: pre-norm RMSNorms and grouped-query attention. Both take their rotary cos/sin
from the model (``position_embeddings``), so every token is rotated at its position in the padded
batch, left padding included. Everything here is checked on transformers 5.10.2 and 5.24.0.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch

import bt_core
from bt_core import BetterTransformer, BetterTransformerError

from .conftest import Case, build, converted_layers, make_batch

ATOL = 1e-5


def _case(model_type: str, case_id: str | None = None, **overrides: Any) -> Any:
    """A case of ``model_type``, skipped (with the reason) where the installed transformers lacks the type."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    marks = []
    if model_type not in CONFIG_MAPPING_NAMES:
        reason = f"transformers {transformers.__version__} has no model type {model_type!r}"
        marks.append(pytest.mark.skip(reason=reason))
    case = Case(case_id or model_type, model_type, overrides, fused=False)
    return pytest.param(case, id=case.id, marks=marks)


CASES = [
    _case("nomic_bert"),
    # Attention wider than the hidden size: 4 heads of 16 over a hidden size of 32.
    _case("nomic_bert", "nomic_bert-wide-heads", head_dim=16),
    _case("eurobert"),  # 2 key/value heads for 4 query heads
    _case("eurobert", "eurobert-one-kv-head", num_key_value_heads=1),
    _case("eurobert", "eurobert-multi-head", num_key_value_heads=4),
    _case("eurobert", "eurobert-biases-wide-heads", attention_bias=True, mlp_bias=True, head_dim=16),
]
PADDINGS = ("right", "left", "none")
STRATEGIES = ("auto", "packed", "dense", "reference")


def _strategy(strategy: str) -> Any:
    return contextlib.nullcontext() if strategy == "auto" else bt_core.force_strategy(strategy)


def _perturbed(model: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    """Noise on every weight: fresh RMSNorm/LayerNorm weights of exactly 1 and zero biases hide a swapped part."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _model(case: Case, model_class: Any = None, **overrides: Any) -> torch.nn.Module:
    return _perturbed(build(case, model_class, **overrides))


def _batch(config: Any, padding: str) -> dict[str, torch.Tensor]:
    return make_batch(config, "unpadded" if padding == "none" else "padded", left=padding == "left")


def _assert_close_on_real_tokens_and_position_zero(
    actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor
) -> None:
    """Equal on real tokens, and at position 0 of every row (heads read it, padded or not)."""
    assert actual.shape == expected.shape
    keep = mask.bool().clone()
    keep[:, 0] = True
    torch.testing.assert_close(actual[keep], expected[keep], atol=ATOL, rtol=0)


# -- inference ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("case", CASES)
def test_batch_matches_original_on_real_tokens_under_every_strategy(case: Case, padding: str, strategy: str) -> None:
    original = _model(case)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(original.config, padding)
    with torch.inference_mode():
        expected = original(**inputs).last_hidden_state
        with _strategy(strategy):
            actual = converted(**inputs).last_hidden_state
    _assert_close_on_real_tokens_and_position_zero(actual, expected, inputs["attention_mask"])


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("case", CASES[::2])
def test_autocast_inference_matches_the_original_under_the_same_autocast(case: Case, padding: str) -> None:
    """The gated halves, RMSNorms and grouped heads under CPU autocast, on the fast path."""
    from bt_core._engine import record_strategies

    original = _model(case)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(original.config, padding)
    keep = inputs["attention_mask"].bool()
    with torch.inference_mode():
        full_precision = original(**inputs).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = original(**inputs).last_hidden_state
            with record_strategies(set()) as used:
                actual = converted(**inputs).last_hidden_state
    assert used <= {"packed", "dense"}
    autocast_error = (expected.float() - full_precision)[keep].abs().max()
    assert (actual.float() - expected.float())[keep].abs().max() <= autocast_error


@pytest.mark.parametrize("padding", ("right", "left"))
@pytest.mark.parametrize("case", CASES)
def test_eager_attentions_additive_mask_is_read_as_padding(case: Case, padding: str) -> None:
    """With eager attention the model passes an additive float mask instead of SDPA's bool one."""
    original = _model(case, attn_implementation="eager")
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(original.config, padding)
    with torch.inference_mode():
        expected = original(**inputs, output_attentions=True)
        actual = converted(**inputs, output_attentions=True)
    mask = inputs["attention_mask"]
    _assert_close_on_real_tokens_and_position_zero(actual.last_hidden_state, expected.last_hidden_state, mask)
    rows = mask.bool()[:, None, :, None].expand_as(expected.attentions[0])
    for got, want in zip(actual.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(got[rows], want[rows], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES[::2])
def test_position_ids_given_by_the_caller_rotate_each_token_where_the_caller_says(case: Case) -> None:
    """Rotary cos/sin come from the model's own rotary module, so custom position_ids are honoured."""
    original = _model(case)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(original.config, "left")
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # each row starts at 0 at its first token
    with torch.inference_mode():
        expected = original(**inputs, position_ids=positions).last_hidden_state
        actual = converted(**inputs, position_ids=positions).last_hidden_state
    _assert_close_on_real_tokens_and_position_zero(actual, expected, inputs["attention_mask"])


# -- task heads ---------------------------------------------------------------------------------------

HEADS = ("AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoModelForMaskedLM")


def _head_params() -> list[Any]:
    params = []
    for param in CASES:
        case = param.values[0]
        for head in HEADS:
            if head == "AutoModelForSequenceClassification" and case.model_type == "eurobert":
                for pooling in ("late", "mean", "bos"):  # EuroBERT pools in three ways
                    params.append(pytest.param(case, head, {"classifier_pooling": pooling}, marks=param.marks,
                                               id=f"{case.id}-{head}-{pooling}"))  # fmt: skip
            else:
                params.append(pytest.param(case, head, {}, marks=param.marks, id=f"{case.id}-{head}"))
    return params


@pytest.mark.parametrize("padding", ("right", "left"))
@pytest.mark.parametrize(("case", "head", "overrides"), _head_params())
def test_task_head_matches_original(case: Case, head: str, overrides: dict[str, Any], padding: str) -> None:
    import transformers

    original = _model(case, getattr(transformers, head), num_labels=3, **overrides)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(original.config, padding)
    with torch.inference_mode():
        expected = original(**inputs).logits
        actual = converted(**inputs).logits
    if head == "AutoModelForSequenceClassification":
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    else:
        _assert_close_on_real_tokens_and_position_zero(actual, expected, inputs["attention_mask"])


# -- training -------------------------------------------------------------------------------------------

#: Each fused parameter of a converted layer, and the original weights it concatenates, in order.
_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "nomic_bert": {
        "in_proj_weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        "out_proj_weight": ("self_attn.o_proj.weight",),
        "linear1_weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
        "linear2_weight": ("mlp.down_proj.weight",),
        "norm1_weight": ("post_attention_layernorm.weight",),
        "norm1_bias": ("post_attention_layernorm.bias",),
        "norm2_weight": ("post_mlp_layernorm.weight",),
        "norm2_bias": ("post_mlp_layernorm.bias",),
    },
    "eurobert": {
        "in_proj_weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        "out_proj_weight": ("self_attn.o_proj.weight",),
        "linear1_weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
        "linear2_weight": ("mlp.down_proj.weight",),
        "norm1_weight": ("input_layernorm.weight",),
        "norm2_weight": ("post_attention_layernorm.weight",),
    },
}


@pytest.mark.parametrize("padding", ("right", "left"))
@pytest.mark.parametrize("case", CASES)
def test_train_mode_outputs_and_gradients_match_original(case: Case, padding: str) -> None:
    original = _model(case).train()
    converted = BetterTransformer.transform(copy.deepcopy(original), keep_original_model=False).train()
    inputs = _batch(original.config, padding)
    mask = inputs["attention_mask"].bool()
    weights = torch.randn(original(**inputs).last_hidden_state.shape, generator=torch.Generator().manual_seed(5))
    expected = original(**inputs).last_hidden_state
    actual = converted(**inputs).last_hidden_state
    torch.testing.assert_close(actual[mask], expected[mask], atol=ATOL, rtol=0)
    original.zero_grad()
    (expected * weights)[mask].sum().backward()
    (actual * weights)[mask].sum().backward()

    layers = converted_layers(converted)
    assert len(layers) == original.config.num_hidden_layers
    for name, layer in layers:
        source = original.get_submodule(name)
        for attr, paths in _SOURCES[case.model_type].items():
            want = torch.cat([source.get_parameter(p).grad for p in paths])
            torch.testing.assert_close(getattr(layer, attr).grad, want, atol=1e-4, rtol=0, msg=f"{name}.{attr}")
    converted_params = dict(converted.named_parameters())
    for pname, parameter in original.named_parameters():
        if pname in converted_params and parameter.grad is not None:  # embeddings, final norm
            torch.testing.assert_close(converted_params[pname].grad, parameter.grad, atol=1e-4, rtol=0, msg=pname)


# -- conversion ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_conversion_adds_no_parameters_and_reverse_is_bit_identical(case: Case) -> None:
    model = _model(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count = sum(p.numel() for p in model.parameters())
    BetterTransformer.transform(model)
    assert len(converted_layers(model)) == model.config.num_hidden_layers
    assert sum(p.numel() for p in model.parameters()) == count  # bias-free linears get no zero bias
    BetterTransformer.reverse(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("case", CASES)
def test_the_fused_kernel_is_never_forced_on_these_layers(case: Case) -> None:
    """Rotary positions, a gated feed-forward (and EuroBERT's RMSNorm) are outside the kernel, even with an
    activation it computes: forcing it raises, naming why, instead of computing another layer."""
    original = _model(case, hidden_act="gelu")
    converted = BetterTransformer.transform(original, keep_original_model=True)
    with torch.inference_mode(), bt_core.force_strategy("fused"):
        with pytest.raises(BetterTransformerError, match=r"rotary|RMSNorm|LayerNorm"):
            converted(**_batch(original.config, "right"))


@pytest.mark.parametrize("case", CASES[::2])
def test_a_layer_called_without_rotary_positions_names_what_is_missing(case: Case) -> None:
    converted = BetterTransformer.transform(_model(case))
    (_, layer), *_ = converted_layers(converted)
    with torch.inference_mode(), pytest.raises(BetterTransformerError, match="position_embeddings"):
        layer(torch.randn(2, 5, converted.config.hidden_size))


def test_eurobert_attends_bidirectionally() -> None:
    """An early token's output depends on later tokens, as in the original encoder (no causal mask)."""
    (case,) = CASES[2].values
    original = _model(case)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(original.config, "none")
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["input_ids"][:, -1] = (changed["input_ids"][:, -1] + 1) % original.config.vocab_size
    with torch.inference_mode():
        first, second = (converted(**batch).last_hidden_state[:, 0] for batch in (inputs, changed))
        expected = original(**changed).last_hidden_state[:, 0]
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, expected, atol=ATOL, rtol=0)


def test_eurobert_called_with_a_key_value_cache_is_refused() -> None:
    (case,) = CASES[2].values
    converted = BetterTransformer.transform(_model(case))
    (_, layer), *_ = converted_layers(converted)
    hidden = torch.randn(2, 5, converted.config.hidden_size)
    rotary = converted.rotary_emb(hidden, torch.arange(5)[None])
    with torch.inference_mode(), pytest.raises(BetterTransformerError, match="cache"):
        layer(hidden, position_embeddings=rotary, cache=object())


def test_eurobert_attention_made_causal_is_refused() -> None:
    (case,) = CASES[2].values
    model = _model(case)
    model.layers[0].self_attn.is_causal = True
    with pytest.raises(BetterTransformerError, match="is_causal"):
        BetterTransformer.transform(model)
    assert not converted_layers(model)  # nothing half-done
