"""MPNet (a relative position bias on every layer's scores) and GTE (rotary, gated feed-forward) convert exactly.

What each adapter claims, checked against the original model: the same outputs on real tokens (and
at position 0, which heads read) for right-padded, left-padded and unpadded batches under every
strategy; the same task-head logits; the same outputs and gradients in train mode; the original back
bit for bit from ``reverse``; no parameter growth. transformers 5.10 has no ``gte`` model type: there
the GTE tests skip, and the pack registers no gte mapping.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any

import bt_plugins_encoders.plugin as encoders_plugin
import pytest
import torch
import transformers
from bt_plugins_encoders.examples import example_config
from bt_plugins_encoders.gte import GteLayerAdapter
from bt_plugins_encoders.mpnet import MPNetLayerAdapter
from torch import nn

import bt_core
from bt_core import BetterTransformer, BetterTransformerBaseLayer
from bt_core._engine import record_strategies
from bt_core.testing.compare import compare_with_position_zero, format_diffs
from bt_core.testing.examples import perturb_parameters

HAS_GTE = importlib.util.find_spec("transformers.models.gte") is not None
NO_GTE = f"transformers {transformers.__version__} has no 'gte' model type (the model type was added after 5.10.2)"
MODEL_TYPES = [
    pytest.param("mpnet", id="mpnet"),
    pytest.param("gte", id="gte", marks=pytest.mark.skipif(not HAS_GTE, reason=NO_GTE)),
]
needs_gte = pytest.mark.skipif(not HAS_GTE, reason=NO_GTE)
ATOL = 1e-5
STRATEGIES = ("auto", "packed", "dense", "reference")
PADDINGS = ("right", "left", "none")
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

#: The task heads transformers gives each type.
HEADS = {
    "mpnet": (
        "MPNetForSequenceClassification",
        "MPNetForTokenClassification",
        "MPNetForMaskedLM",
        "MPNetForQuestionAnswering",
        "MPNetForMultipleChoice",
    ),
    "gte": ("GteForSequenceClassification", "GteForTokenClassification", "GteForMaskedLM"),
}

#: Converted attribute -> the original layer's modules it is made of (several: concatenated).
FUSED_FROM = {
    "mpnet": {
        "in_proj": ("attention.attn.q", "attention.attn.k", "attention.attn.v"),
        "out_proj": ("attention.attn.o",),
        "linear1": ("intermediate.dense",),
        "linear2": ("output.dense",),
        "norm1": ("attention.LayerNorm",),
        "norm2": ("output.LayerNorm",),
    },
    "gte": {
        "in_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "out_proj": ("self_attn.o_proj",),
        "linear1": ("mlp.gate_proj", "mlp.up_proj"),
        "linear2": ("mlp.down_proj",),
        "norm1": ("post_attention_layernorm",),
        "norm2": ("post_mlp_layernorm",),
    },
}


# -- helpers -----------------------------------------------------------------------------------------


def make_model(model_type: str, model_class: str | None = None, **overrides: Any) -> nn.Module:
    """A small random ``model_type`` model in eval mode, every weight perturbed (norms not 1, biases not 0).

    MPNet's relative position bias is scaled up so that a layer ignoring it could not pass within 1e-5.
    """
    config = example_config(model_type, **{**NO_DROPOUT, "num_labels": 3, **overrides})
    torch.manual_seed(0)
    model = (
        transformers.AutoModel.from_config(config)
        if model_class is None
        else getattr(transformers, model_class)(config)
    )
    perturb_parameters(model, 0.05, seed=1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("relative_attention_bias.weight"):
                parameter.mul_(20.0)
    return model.eval()


def make_batch(config: Any, padding: str, rows: int = 3) -> dict[str, torch.Tensor]:
    """Token ids and mask of rows of different lengths (11, 6, 3; all 11 when ``padding`` is "none")."""
    lengths = (11, 11, 11) if padding == "none" else (11, 6, 3)
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, int(config.vocab_size), (rows, 11), generator=generator)
    mask = torch.zeros(rows, 11, dtype=torch.long)
    for row, length in enumerate(lengths[:rows]):
        if padding == "left":
            mask[row, 11 - length :] = 1
        else:
            mask[row, :length] = 1
    return {"input_ids": ids.masked_fill(mask == 0, int(config.pad_token_id)), "attention_mask": mask}


def strategy(name: str) -> Any:
    return contextlib.nullcontext() if name == "auto" else bt_core.force_strategy(name)


def assert_matches(expected: Any, actual: Any, mask: torch.Tensor) -> None:
    """Every output equal within ATOL on real tokens and at position 0 (heads read it, padded or not)."""
    diffs = compare_with_position_zero(expected, actual, mask)
    assert diffs, "no output to compare"
    bad = [d for d in diffs if not d.within(ATOL)]
    assert not bad, format_diffs(bad)


def converted_layers(model: nn.Module) -> list[BetterTransformerBaseLayer]:
    return [m for m in model.modules() if isinstance(m, BetterTransformerBaseLayer)]


_PAIRS: dict[str, tuple[nn.Module, nn.Module]] = {}


def original_and_converted(model_type: str) -> tuple[nn.Module, nn.Module]:
    """The base model and a converted copy, built once (inference never changes either)."""
    if model_type not in _PAIRS:
        original = make_model(model_type)
        _PAIRS[model_type] = (original, BetterTransformer.transform(original, keep_original_model=True))
    return _PAIRS[model_type]


# -- registration ------------------------------------------------------------------------------------


def test_mpnet_is_converted_not_refused() -> None:
    mappings = {m.model_type: m for m in encoders_plugin.bt_register_layers()}
    assert mappings["mpnet"].layer_class_name == "MPNetLayer"
    assert mappings["mpnet"].load_adapter() is MPNetLayerAdapter
    assert "mpnet" not in encoders_plugin.bt_refused_model_types()


def test_gte_is_registered_exactly_where_transformers_has_it() -> None:
    mappings = {m.model_type: m for m in encoders_plugin.bt_register_layers()}
    if HAS_GTE:
        assert mappings["gte"].layer_class_name == "GteLayer"
        assert mappings["gte"].load_adapter() is GteLayerAdapter
    else:  # the adapter module still imports (above); there is just no GteLayer to convert
        assert "gte" not in mappings


def test_mpnet_layer_is_bert_with_the_encoders_position_bias() -> None:
    _, converted = original_and_converted("mpnet")
    for layer in converted_layers(converted):
        assert isinstance(layer, MPNetLayerAdapter)
        assert (layer.norm_first, layer.rotary, layer.gated_half, layer.activation) == (False, None, None, "gelu")
        assert layer.returns_tuple and layer.pads_every_output


@needs_gte
def test_gte_layer_declares_rotary_gated_feed_forward_and_post_norm() -> None:
    original, converted = original_and_converted("gte")
    for index, layer in enumerate(converted_layers(converted)):
        assert isinstance(layer, GteLayerAdapter)
        assert (layer.norm_first, layer.rotary, layer.gated_half) == (False, "half", "first")
        mlp = original.layers[index].mlp
        torch.testing.assert_close(layer.linear1_weight, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        assert layer.linear1_bias is None  # gate_proj and up_proj are bias-free; no zero bias is added


# -- parity ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy_name", STRATEGIES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_batch_matches_original_on_real_tokens_and_position_zero(
    model_type: str, padding: str, strategy_name: str
) -> None:
    original, converted = original_and_converted(model_type)
    batch = make_batch(original.config, padding)
    with torch.inference_mode():
        expected = original(**batch)
        with strategy(strategy_name):
            actual = converted(**batch)
    assert_matches(expected, actual, batch["attention_mask"])


@pytest.mark.parametrize(("padding", "expected"), [("right", {"packed"}), ("none", {"dense"})])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_padded_batches_skip_padding_and_unpadded_ones_run_dense(
    model_type: str, padding: str, expected: set[str]
) -> None:
    original, converted = original_and_converted(model_type)
    with torch.inference_mode(), record_strategies(set()) as used:
        converted(**make_batch(original.config, padding))
    assert used == expected


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_requested_attentions_and_hidden_states_match(model_type: str) -> None:
    original = make_model(model_type)
    # GTE's default SDPA attention records no probabilities; eager attention does.
    original.set_attn_implementation("eager")
    converted = BetterTransformer.transform(original, keep_original_model=True)
    batch = {**make_batch(original.config, "right"), "output_attentions": True, "output_hidden_states": True}
    with torch.inference_mode():
        expected, actual = original(**batch), converted(**batch)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    assert len(actual.attentions) == len(expected.attentions) == 2
    assert_matches(expected, actual, batch["attention_mask"])


@needs_gte
@pytest.mark.parametrize("strategy_name", ("packed", "dense"))
def test_gte_rotary_follows_the_position_ids_given(strategy_name: str) -> None:
    """Per-row position ids (batch, seq) give per-row cos/sin; each token is rotated by its own."""
    original, converted = original_and_converted("gte")
    batch = make_batch(original.config, "right")
    batch["position_ids"] = torch.arange(11)[None] + torch.tensor([[0], [5], [17]])
    with torch.inference_mode():
        expected = original(**batch)
        with strategy(strategy_name):
            actual = converted(**batch)
    assert_matches(expected, actual, batch["attention_mask"])


@needs_gte
def test_gte_with_scaled_rope_and_narrow_heads_matches() -> None:
    """The adapter rotates with the model's own tables (linear rope scaling here) over head_dim != hidden/heads."""
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    original = make_model("gte", rope_parameters=rope, head_dim=4)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    assert {layer.attention_head_dim for layer in converted_layers(converted)} == {4}
    for padding in ("right", "left"):
        batch = make_batch(original.config, padding)
        with torch.inference_mode():
            assert_matches(original(**batch), converted(**batch), batch["attention_mask"])


# -- heads and sentence embeddings -------------------------------------------------------------------


def _head_params() -> list[Any]:
    return [
        pytest.param(model_type, head, marks=param.marks, id=head)
        for param in MODEL_TYPES
        for model_type in param.values
        for head in HEADS[model_type]
    ]


@pytest.mark.parametrize(("model_type", "head"), _head_params())
def test_task_head_outputs_match_on_right_and_left_padding(model_type: str, head: str) -> None:
    original = make_model(model_type, head, num_labels=2 if head.endswith("QuestionAnswering") else 3)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    for padding in ("right", "left"):
        batch = make_batch(original.config, padding)
        if head.endswith("ForMultipleChoice"):  # (batch, choices, seq)
            batch = {key: value[None] for key, value in batch.items()}
        with torch.inference_mode():
            expected, actual = original(**batch), converted(**batch)
        mask = batch["attention_mask"].flatten(0, 1) if head.endswith("ForMultipleChoice") else batch["attention_mask"]
        assert_matches(expected, actual, mask)


def test_mpnet_sentence_transformer_mean_pooled_embeddings_match(tmp_path: Any) -> None:
    """all-mpnet-base-v2's pipeline (MPNet, mean pooling, normalisation), with a tiny random MPNet."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import MPNetTokenizer

    words = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", *"a man is eating food . the fox jumps hi".split()]
    MPNetTokenizer(vocab={word: i for i, word in enumerate(words)}).save_pretrained(tmp_path)
    make_model("mpnet", "MPNetModel", vocab_size=len(words)).save_pretrained(tmp_path)
    model = sentence_transformers.SentenceTransformer(
        modules=[Transformer(str(tmp_path)), Pooling(32, "mean"), Normalize()], device="cpu"
    ).eval()
    sentences = ["a man is eating food .", "the fox jumps over a man eating food", "hi"]
    expected = model.encode(sentences, convert_to_tensor=True)
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert len(converted_layers(converted)) == 2
    torch.testing.assert_close(converted.encode(sentences, convert_to_tensor=True), expected, atol=ATOL, rtol=0)


# -- training, reverse -------------------------------------------------------------------------------


def _loss(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # A fixed random projection: a plain sum of layer-norm outputs has (almost) no gradient.
    weights = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(3))
    return ((hidden @ weights) * mask).sum()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_train_mode_outputs_and_gradients_match_original(model_type: str) -> None:
    original = make_model(model_type).train()
    converted = BetterTransformer.transform(original, keep_original_model=True)
    batch = make_batch(original.config, "right")
    mask = batch["attention_mask"]
    expected, actual = original(**batch).last_hidden_state, converted(**batch).last_hidden_state
    assert_matches(expected, actual, mask)
    _loss(expected, mask).backward()
    _loss(actual, mask).backward()

    for index, layer in enumerate(converted_layers(converted)):
        source = original.get_submodule(f"{'encoder.layer' if model_type == 'mpnet' else 'layers'}.{index}")
        for attr, paths in FUSED_FROM[model_type].items():
            for kind in ("weight", "bias"):
                parameter = getattr(layer, f"{attr}_{kind}")
                parts = [getattr(source.get_submodule(path), kind) for path in paths]
                if parameter is None:
                    assert all(part is None for part in parts), f"layer {index} {attr}_{kind} was dropped"
                    continue
                expected_grad = torch.cat([part.grad for part in parts])
                torch.testing.assert_close(parameter.grad, expected_grad, atol=ATOL, rtol=1e-4, msg=f"{attr}_{kind}")
    # Outside the layers too: MPNet's relative_attention_bias is trained through the layers' score bias.
    originals = dict(original.named_parameters())
    outside = {name: p for name, p in converted.named_parameters() if name in originals}
    trained = {name for name, p in outside.items() if originals[name].grad is not None}
    assert "embeddings.word_embeddings.weight" in trained
    assert model_type != "mpnet" or "encoder.relative_attention_bias.weight" in trained
    for name, parameter in outside.items():
        if name not in trained:  # the pooler: not on the loss's path
            assert parameter.grad is None, name
            continue
        torch.testing.assert_close(parameter.grad, originals[name].grad, atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_reverse_gives_back_a_bit_identical_state_dict_and_conversion_adds_no_parameters(model_type: str) -> None:
    model = make_model(model_type)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    count = sum(p.numel() for p in model.parameters())
    model = BetterTransformer.transform(model)
    assert sum(p.numel() for p in model.parameters()) == count
    restored = BetterTransformer.reverse(model).state_dict()
    assert restored.keys() == before.keys()
    assert all(torch.equal(restored[name], tensor) for name, tensor in before.items())


@needs_gte
def test_gte_dropout_inside_the_feed_forward_is_placed_where_the_original_places_it() -> None:
    """GteMLP drops out act(gate) * up before down_proj: at p=1 that branch is zero in both models
    (deterministic, so they can be compared; the other dropouts are off); inference ignores it."""
    original = make_model("gte", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    for module in original.modules():
        if type(module).__name__ == "GteMLP":
            module.dropout.p = 1.0
    converted = BetterTransformer.transform(original, keep_original_model=True)
    batch = make_batch(original.config, "right")
    with torch.inference_mode():
        assert_matches(original(**batch), converted(**batch), batch["attention_mask"])
    assert_matches(original.train()(**batch), converted.train()(**batch), batch["attention_mask"])
