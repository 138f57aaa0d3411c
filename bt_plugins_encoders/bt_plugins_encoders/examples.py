"""Small random-weight configurations of every model type this pack converts.

Used by the conformance kit (``bt_core.testing``) and this pack's tests through
``LayerMapping.example_config``. Every config: hidden size 32, 2 layers, 4 heads (even, so the
fused kernel may run), feed-forward 64, a 128-token vocabulary. transformers is imported only when
a config is built, so importing this module (and the plugin) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["EXAMPLE_CONFIGS", "example_config"]

_SMALL: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 128,
    "max_position_embeddings": 64,
}

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
    "layoutlm": {},
    "markuplm": {},
    "rembert": {"input_embedding_size": 16, "output_embedding_size": 16, "bos_token_id": 2, "eos_token_id": 3},
    "roberta": {},
    "roc_bert": {
        "pronunciation_embed_dim": 16,
        "pronunciation_vocab_size": 32,
        "shape_embed_dim": 16,
        "shape_vocab_size": 32,
    },
    "splinter": {"question_token_id": 104},
    "tapas": {},
    "xlm-roberta": {},
    "xlm-roberta-xl": {},
    # One layer group shared by both layers; default activation gelu_new (no fused kernel).
    "albert": {"embedding_size": 16, "num_hidden_groups": 1, "inner_group_num": 1},
}


def example_config(model_type: str, **overrides: Any) -> Any:
    """A small config of ``model_type`` (random weights once a model is built from it)."""
    from transformers import AutoConfig

    kwargs = dict(_OVERRIDES[model_type]) if model_type == "distilbert" else {**_SMALL, **_OVERRIDES[model_type]}
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
