"""The encoder half of BART-family seq2seq models: converted layers compute the original's, the decoder
is never touched.

Every type is tested as users run it, a whole ``...ForConditionalGeneration`` model: the encoder's output
and the logits on right-, left- and unpadded batches under every strategy, ``generate`` (greedy and beam
search) token for token, ``reverse`` bit for bit, ``save_pretrained`` refused, training gradients. The
shared suites (test_parity.py, ...) cover the encoders alone; this file covers what only the whole model
shows, and the refusals (LED, block-sparse BigBird-Pegasus).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from bt_plugins_encoders.examples import example_config

from bt_core import (
    BetterTransformer,
    BetterTransformerBaseLayer,
    BetterTransformerError,
    UnsupportedModelError,
    force_strategy,
)
from bt_core._validate import kernel_blocker
from bt_core.layer import clamp_float16

ATOL = 1e-5
LENGTHS = (11, 6, 3)
STRATEGIES = (None, "fused", "packed", "dense", "reference")

#: model_type -> the generation model's class name in transformers.
GENERATION_MODELS = {
    "bart": "BartForConditionalGeneration",
    "bigbird_pegasus": "BigBirdPegasusForConditionalGeneration",
    "blenderbot": "BlenderbotForConditionalGeneration",
    "blenderbot-small": "BlenderbotSmallForConditionalGeneration",
    "fsmt": "FSMTForConditionalGeneration",
    "m2m_100": "M2M100ForConditionalGeneration",
    "marian": "MarianMTModel",
    "mbart": "MBartForConditionalGeneration",
    "pegasus": "PegasusForConditionalGeneration",
    "plbart": "PLBartForConditionalGeneration",
    "prophetnet": "ProphetNetForConditionalGeneration",
}
TYPES = sorted(GENERATION_MODELS)


def _build(model_type: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, GENERATION_MODELS[model_type])(example_config(model_type, **overrides)).eval()
    with torch.no_grad():  # away from the initialisation's symmetries (zero biases, unit norms)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


_PAIRS: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}


def _pair(model_type: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The original generation model and a converted copy, built once (inference does not change them)."""
    if model_type not in _PAIRS:
        original = _build(model_type)
        _PAIRS[model_type] = (original, BetterTransformer.transform(original, keep_original_model=True))
    return _PAIRS[model_type]


def _batch(config: Any, padding: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """Rows of ``LENGTHS`` tokens padded on the ``padding`` side (or none), and 5 decoder tokens."""
    generator = torch.Generator().manual_seed(seed)
    seq_len = max(LENGTHS)
    ids = torch.randint(5, 127, (len(LENGTHS), seq_len), generator=generator)
    mask = torch.ones(len(LENGTHS), seq_len, dtype=torch.long)
    if padding != "none":
        for row, length in enumerate(LENGTHS):
            mask[row, length:] = 0 if padding == "right" else 1
            if padding == "left":
                mask[row, : seq_len - length] = 0
    decoder = torch.randint(5, 127, (len(LENGTHS), 5), generator=generator)
    ids = ids.masked_fill(mask == 0, config.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder}


def _encoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.get_encoder().layers)


def _converted(model: torch.nn.Module) -> list[BetterTransformerBaseLayer]:
    return [m for m in model.modules() if isinstance(m, BetterTransformerBaseLayer)]


def _fused_may_run(model_type: str) -> bool:
    return all(kernel_blocker(layer) is None for layer in _encoder_layers(_pair(model_type)[1]))


def _params() -> list[Any]:
    return [
        pytest.param(model_type, padding, strategy, id=f"{model_type}-{padding}-{strategy or 'auto'}")
        for model_type in TYPES
        for padding in ("right", "left", "none")
        for strategy in STRATEGIES
        # The kernel nests right-padded rows only; left padding takes ``packed`` (test_parity.py checks the refusal).
        if strategy != "fused" or (padding != "left" and _fused_may_run(model_type))
    ]


@pytest.mark.parametrize(("model_type", "padding", "strategy"), _params())
def test_encoder_output_and_logits_match_original_on_real_tokens(model_type: str, padding: str, strategy: str) -> None:
    original, converted = _pair(model_type)
    inputs = _batch(original.config, padding)
    with torch.inference_mode():
        expected = original(**inputs)
        with force_strategy(strategy):
            actual = converted(**inputs)
    keep = inputs["attention_mask"].bool().clone()
    keep[:, 0] = True  # heads read position 0, also a padded one: converted layers compute it as the original
    encoder_diff = (actual.encoder_last_hidden_state - expected.encoder_last_hidden_state)[keep].abs().max().item()
    assert encoder_diff <= ATOL, f"encoder output differs by {encoder_diff:.3g}"
    # The decoder reads the encoder's real tokens only (cross-attention masks the padding): every logit matches.
    torch.testing.assert_close(actual.logits, expected.logits, atol=ATOL, rtol=0)


def _decoder_state(model: torch.nn.Module) -> tuple[list[int], dict[str, int]]:
    decoder = model.get_decoder()
    return [id(m) for m in decoder.modules()], {k: v.data_ptr() for k, v in decoder.state_dict().items()}


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam-3"])
@pytest.mark.parametrize("model_type", TYPES)
def test_generate_gives_identical_tokens_and_leaves_the_decoder_untouched(model_type: str, num_beams: int) -> None:
    model = _build(model_type)
    inputs = {k: v for k, v in _batch(model.config, "right").items() if k != "decoder_input_ids"}
    settings = {"max_new_tokens": 8, "min_new_tokens": 8, "num_beams": num_beams, "do_sample": False}
    expected = model.generate(**inputs, **settings)
    decoder_before = _decoder_state(model)
    BetterTransformer.transform(model)
    assert (
        all(isinstance(m, BetterTransformerBaseLayer) for m in _encoder_layers(model)) and len(_converted(model)) == 2
    )
    assert not _converted(model.get_decoder()) and _decoder_state(model) == decoder_before  # the same objects
    assert torch.equal(model.generate(**inputs, **settings), expected)


@pytest.mark.parametrize("model_type", TYPES)
def test_reverse_restores_classes_and_a_bit_identical_state_dict_and_save_pretrained_refuses_meanwhile(
    model_type: str, tmp_path: Any
) -> None:
    model = _build(model_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = {n: type(m) for n, m in model.named_modules()}
    count = sum(p.numel() for p in model.parameters())
    BetterTransformer.transform(model)
    assert sum(p.numel() for p in model.parameters()) == count  # weights shared, not copied
    with pytest.raises(BetterTransformerError, match=r"reverse\(model\)` first"):
        model.save_pretrained(tmp_path / "converted")
    BetterTransformer.reverse(model)
    assert {n: type(m) for n, m in model.named_modules()} == classes
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    model.save_pretrained(tmp_path / "reversed")


def _zero_dropout(model_type: str) -> dict[str, float]:
    config = example_config(model_type)
    fields = config.to_dict().items()
    return {k: 0.0 for k, v in fields if ("dropout" in k or "layerdrop" in k) and isinstance(v, float)}


def _training_params() -> list[Any]:
    # FSMT drops out (seq, batch, hidden) tensors; its adapter declares dropout_time_first, so bt's
    # (batch, seq, hidden) reference path draws its masks in the same element order.
    return [
        pytest.param(model_type, dropout, id=f"{model_type}-{'dropout' if dropout else 'no-dropout'}")
        for model_type in TYPES
        for dropout in (0.0, 0.2)
    ]


@pytest.mark.parametrize(("model_type", "dropout"), _training_params())
def test_train_mode_matches_original_with_the_same_gradients(model_type: str, dropout: float) -> None:
    """Reference path: the same outputs and gradients; with dropout, the same seed draws the same masks
    where the original draws them (eager attention: transformers' sdpa draws its own)."""
    overrides = {**_zero_dropout(model_type), **({"dropout": dropout, "attention_dropout": dropout} if dropout else {})}
    if dropout:
        overrides["activation_dropout"] = dropout
    original = _build(model_type, **overrides)
    original.config._attn_implementation = "eager"
    original.train()
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(original.config, "right")
    outputs = []
    for model in (original, converted):
        torch.manual_seed(7)
        output = model(**inputs)
        outputs.append(output)
        (output.logits.square().mean() + output.encoder_last_hidden_state.square().mean()).backward()
    torch.testing.assert_close(outputs[1].logits, outputs[0].logits, atol=ATOL, rtol=0)
    for layer, original_layer in zip(_encoder_layers(converted), _encoder_layers(original), strict=True):
        grads = torch.cat([p.weight.grad for p in _qkv(original_layer)])  # in_proj is q, k, v fused
        torch.testing.assert_close(layer.in_proj_weight.grad, grads, atol=ATOL, rtol=1e-4)
    reference = dict(original.named_parameters())
    shared = [(n, p) for n, p in converted.named_parameters() if n in reference and p.grad is not None]
    assert len(shared) > 10  # embeddings, out_proj, fc1/fc2, norms, the whole decoder
    for name, parameter in shared:
        torch.testing.assert_close(parameter.grad, reference[name].grad, atol=ATOL, rtol=1e-4, msg=name)


def _qkv(layer: torch.nn.Module) -> list[torch.nn.Linear]:
    attention = layer.self_attn
    attention = getattr(attention, "self", attention)  # BigBird-Pegasus nests its projections
    for names in (("q_proj", "k_proj", "v_proj"), ("query_proj", "key_proj", "value_proj"), ("query", "key", "value")):
        if hasattr(attention, names[0]):
            return [getattr(attention, n) for n in names]
    raise AssertionError(f"no q/k/v projections in {type(layer).__name__}")


# -- refusals -------------------------------------------------------------------------------------------------


def test_led_is_refused_naming_its_sliding_window_attention() -> None:
    from transformers import LEDConfig, LEDForConditionalGeneration

    sizes = example_config("bart").to_dict()
    config = LEDConfig(
        **{k: sizes[k] for k in ("d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "vocab_size")},
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        max_encoder_position_embeddings=64,
        max_decoder_position_embeddings=64,
        attention_window=8,
    )
    model = LEDForConditionalGeneration(config).eval()
    inputs = _batch(config, "right")
    with torch.inference_mode():
        expected = model(**inputs).logits
    with pytest.raises(UnsupportedModelError, match=r"'led' cannot be converted exactly: .*sliding window"):
        BetterTransformer.transform(model)
    assert not _converted(model)
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, expected)


def test_block_sparse_bigbird_pegasus_is_refused_naming_the_reason_and_the_way_to_full_attention() -> None:
    model = _build("bigbird_pegasus", attention_type="block_sparse", block_size=4, num_random_blocks=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # A copy to compare outputs with afterwards: on a sequence this short BigBird's own forward switches the
    # model to full attention, so the refused model must not run before the refusal.
    untouched = copy.deepcopy(model)
    with pytest.raises(UnsupportedModelError, match=r"block_sparse.*not full attention.*original_full"):
        BetterTransformer.transform(model)
    assert not _converted(model) and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    inputs = _batch(model.config, "right")
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, untouched(**inputs).logits)


def test_converted_bigbird_pegasus_refuses_to_switch_to_block_sparse_attention() -> None:
    model = BetterTransformer.transform(_build("bigbird_pegasus"))
    with pytest.raises(UnsupportedModelError, match="reverse"):
        model.get_encoder().set_attention_type("block_sparse")


# -- float16: the clamp the layers end with ---------------------------------------------------------------------


def _original_clamp(hidden: torch.Tensor, always: bool) -> torch.Tensor:
    """What BART (``always=False``) and mBART (``always=True``) layers do to their float16 output."""
    if always or not torch.isfinite(hidden).all():
        limit = torch.finfo(torch.float16).max - 1000
        return torch.clamp(hidden, min=-limit, max=limit)
    return hidden


@pytest.mark.parametrize("always", [True, False], ids=["pre-norm", "post-norm"])
@pytest.mark.parametrize("overflow", [True, False], ids=["overflow", "finite"])
def test_float16_clamp_matches_the_original_on_padded_and_nested_batches(always: bool, overflow: bool) -> None:
    rows = [torch.randn(4, 8, dtype=torch.float16) * 100, torch.randn(2, 8, dtype=torch.float16)]
    rows[0][0, 0] = 65000.0  # within 1000 of float16's maximum: the pre-norm layers clamp it
    if overflow:
        rows[1][1, 3] = float("inf")
    for row in rows:
        assert torch.equal(clamp_float16(row, always=always), _original_clamp(row, always))
    nested = torch.nested.as_nested_tensor(rows)
    nested._bt_marker = "kept"  # the fused strategy's bookkeeping travels on the nested batch
    clamped = clamp_float16(nested, always=always)
    assert clamped.is_nested and clamped._bt_marker == "kept"
    padded = torch.nested.to_padded_tensor(nested, 0.0)  # one overflow anywhere in the batch clamps every row
    for got, want in zip(clamped.unbind(), _original_clamp(padded, always), strict=False):
        assert torch.equal(got, want[: got.shape[0]])
    single = rows[0].float()
    assert clamp_float16(single, always=always) is single  # float32 (and every other dtype): untouched


@pytest.mark.parametrize("strategy", [None, "packed", "dense", "reference"], ids=lambda s: s or "auto")
@pytest.mark.parametrize("model_type", ["mbart", "pegasus"])
def test_float16_encoder_clamps_an_overflowing_layer_as_the_original(model_type: str, strategy: str | None) -> None:
    """Layer 0's feed-forward pushes values past float16's ``max - 1000``: the pre-norm original clamps them
    before layer 1 reads them (without the clamp this batch differs by ~0.66 in mBART)."""
    model = _build(model_type).get_encoder()
    with torch.no_grad():
        model.layers[0].fc2.bias.add_(6.5e4)
    model = model.half()
    inputs = {k: v for k, v in _batch(model.config, "right").items() if k != "decoder_input_ids"}
    with torch.inference_mode():
        expected = model(**inputs).last_hidden_state
        converted = BetterTransformer.transform(model, keep_original_model=True)
        with force_strategy(strategy):
            actual = converted(**inputs).last_hidden_state
    keep = inputs["attention_mask"].bool()
    assert torch.isfinite(expected[keep]).all()
    torch.testing.assert_close(actual[keep].float(), expected[keep].float(), atol=1e-2, rtol=0)
