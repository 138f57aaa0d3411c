"""Small random-weight configurations of every model type this pack converts.

Used by the conformance kit (``bt_core.testing``) and this pack's tests through
``LayerMapping.example_config``. Every config: hidden size 32, 2 layers, 4 heads (even, so the
fused kernel may run), feed-forward 64, a 128-token vocabulary; seq2seq types also have 2 decoder
layers. transformers is imported only when a config is built, so importing this module (and the
plugin) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["EXAMPLE_CONFIGS", "EXAMPLE_INPUTS", "example_config"]

_SMALL: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 128,
    "max_position_embeddings": 64,
}

#: BART-style seq2seq sizes: 2 encoder and 2 decoder layers, 4 heads, hidden 32, feed-forward 64.
_SEQ2SEQ: dict[str, Any] = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "vocab_size": 128,
    "max_position_embeddings": 64,
}

_T5_BUCKETS: dict[str, Any] = {"relative_attention_num_buckets": 8, "relative_attention_max_distance": 16}

#: model_type -> keyword arguments on top of ``_SMALL`` (or instead of it, for DistilBERT's names).
_OVERRIDES: dict[str, dict[str, Any]] = {
    "bert": {},
    "bert-generation": {},
    "camembert": {},
    "data2vec-text": {},
    "distilbert": {
        "dim": 32,
        "n_layers": 2,
        "n_heads": 4,
        "hidden_dim": 64,
        "vocab_size": 128,
        "max_position_embeddings": 64,
    },
    "electra": {"embedding_size": 16},
    "ernie": {},
    # ESM-2: rotary positions, token dropout, ESM's 33-token vocabulary (<pad>=1, <mask>=32).
    "esm": {
        "vocab_size": 33,
        "pad_token_id": 1,
        "mask_token_id": 32,
        "position_embedding_type": "rotary",
        "token_dropout": True,
        "emb_layer_norm_before": False,
    },
    "gte": {},  # absent from transformers 5.10.2, where the pack registers no gte mapping
    "layoutlm": {},
    "markuplm": {},
    # Layer 0 global, layer 1 local: a window of 6 (local_attention 12), which 8- and 11-token batches
    # cross; the default special token ids (50281-50283) are outside the small vocabulary.
    "modernbert": {
        "local_attention": 12,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "cls_token_id": 1,
        "sep_token_id": 2,
    },
    "mpnet": {},
    # Rotary, SwiGLU (silu), post-norm: every layer runs the ordinary-op strategies, never the kernel.
    "nomic_bert": {},
    # Grouped-query attention (2 key/value heads for 4 query heads); the default special token ids
    # (128000-128002) are outside the small vocabulary.
    "eurobert": {"num_key_value_heads": 2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "mask_token_id": 3},
    "rembert": {"input_embedding_size": 16, "output_embedding_size": 16, "bos_token_id": 2, "eos_token_id": 3},
    "roberta": {},
    "roc_bert": {
        "pronunciation_embed_dim": 16,
        "pronunciation_vocab_size": 32,
        "shape_embed_dim": 16,
        "shape_vocab_size": 32,
    },
    "roformer": {},
    "splinter": {"question_token_id": 104},
    # T5 family: attention 4 x 16 = 64 wide over d_model 32; 8 buckets up to distance 16, so short batches
    # reach the logarithmic ones; mt5/umt5 default to gated-gelu.
    "t5": {"d_kv": 16, "d_ff": 64, "num_decoder_layers": 2, **_T5_BUCKETS},
    "mt5": {"d_kv": 16, "d_ff": 64, "num_decoder_layers": 2, **_T5_BUCKETS},
    "umt5": {"d_kv": 16, "d_ff": 64, "num_decoder_layers": 2, **_T5_BUCKETS},
    "tapas": {},
    "xlm-roberta": {},
    "xlm-roberta-xl": {},
    # Seq2seq models (their own field names, instead of _SMALL): the default special tokens fit the small
    # vocabulary except where set here.
    "bart": dict(_SEQ2SEQ),
    "mbart": dict(_SEQ2SEQ),
    "marian": {**_SEQ2SEQ, "pad_token_id": 1, "decoder_start_token_id": 1, "eos_token_id": 2},
    "m2m_100": dict(_SEQ2SEQ),
    "pegasus": dict(_SEQ2SEQ),
    "blenderbot": dict(_SEQ2SEQ),
    "blenderbot-small": dict(_SEQ2SEQ),
    "plbart": dict(_SEQ2SEQ),
    # Full attention (the block-sparse default is refused); gelu_new, so never the fused kernel.
    "bigbird_pegasus": {**_SEQ2SEQ, "attention_type": "original_full"},
    # Time-first layers; separate source and target vocabularies.
    "fsmt": {
        **{k: v for k, v in _SEQ2SEQ.items() if k != "vocab_size"},
        "langs": ["en", "de"],
        "src_vocab_size": 128,
        "tgt_vocab_size": 128,
    },
    "prophetnet": {
        "hidden_size": 32,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "num_encoder_attention_heads": 4,
        "num_decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "vocab_size": 128,
        "max_position_embeddings": 64,
        "num_buckets": 8,
        "relative_max_distance": 16,
    },
    # One layer group shared by both layers; default activation gelu_new (no fused kernel).
    "albert": {"embedding_size": 16, "num_hidden_groups": 1, "inner_group_num": 1},
}


#: Types whose overrides name every size in the config's own fields, instead of adding to ``_SMALL``.
_OWN_FIELD_NAMES = frozenset(
    {"distilbert", "bart", "mbart", "marian", "m2m_100", "pegasus", "blenderbot", "blenderbot-small", "plbart"}
    | {"bigbird_pegasus", "fsmt", "prophetnet"}
)


def example_config(model_type: str, **overrides: Any) -> Any:
    """A small config of ``model_type`` (random weights once a model is built from it)."""
    from transformers import AutoConfig

    own_names = model_type in _OWN_FIELD_NAMES
    kwargs = dict(_OVERRIDES[model_type]) if own_names else {**_SMALL, **_OVERRIDES[model_type]}
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def _factory(model_type: str) -> Callable[[], Any]:
    def build() -> Any:
        return example_config(model_type)

    build.__name__ = f"example_{model_type.replace('-', '_')}_config"
    build.__qualname__ = build.__name__
    return build


#: model_type -> zero-argument callable returning its small config.
EXAMPLE_CONFIGS: dict[str, Callable[[], Any]] = {model_type: _factory(model_type) for model_type in _OVERRIDES}


def _float_mask_inputs(config: Any, batch_size: int) -> dict[str, Any]:
    """The kit's default padded batch, with the attention mask as float 1.0/0.0.

    ProphetNet's encoder builds its additive mask as ``(1.0 - attention_mask) * finfo(model dtype).min``:
    with an integer mask that product is float32, where float64's minimum overflows to -inf and the
    real tokens' ``0 * -inf`` is NaN, so the original cannot run in float64 on an integer mask. A float
    mask is cast to float64 with the model, and the same mask in float32 gives what an integer one gives.
    """
    from bt_core.testing.examples import default_inputs

    inputs = default_inputs(config, batch_size)
    return {**inputs, "attention_mask": inputs["attention_mask"].float()}


#: model_type -> ``(config, batch_size) -> inputs`` where the kit's default batch does not fit.
EXAMPLE_INPUTS: dict[str, Callable[[Any, int], dict[str, Any]]] = {"prophetnet": _float_mask_inputs}
