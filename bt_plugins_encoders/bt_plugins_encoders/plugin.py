"""Entry point of bt-plugins-encoders: the BERT family of text encoders.

Light on purpose: adapters are named as strings and imported only when a model is converted, and
the example configs import transformers only when called.
"""

from __future__ import annotations

from bt_core import LayerMapping, hookimpl

from .examples import EXAMPLE_CONFIGS

_ADAPTERS = "bt_plugins_encoders.adapters"

#: (model_type, encoder layer class in transformers 5.10-5.24, adapter class in ``adapters``).
LAYERS: tuple[tuple[str, str, str], ...] = (
    ("albert", "AlbertLayer", "AlbertLayerAdapter"),
    ("bert", "BertLayer", "BertLayerAdapter"),
    ("bert-generation", "BertGenerationLayer", "BertLayerAdapter"),
    ("camembert", "CamembertLayer", "BertLayerAdapter"),
    ("data2vec-text", "Data2VecTextLayer", "BertLayerAdapter"),
    ("distilbert", "TransformerBlock", "DistilBertLayerAdapter"),
    ("electra", "ElectraLayer", "BertLayerAdapter"),
    ("ernie", "ErnieLayer", "BertLayerAdapter"),
    ("layoutlm", "LayoutLMLayer", "BertLayerAdapter"),
    ("markuplm", "MarkupLMLayer", "BertLayerAdapter"),
    ("rembert", "RemBertLayer", "TupleBertLayerAdapter"),
    ("roberta", "RobertaLayer", "BertLayerAdapter"),
    ("roc_bert", "RoCBertLayer", "BertLayerAdapter"),
    ("splinter", "SplinterLayer", "BertLayerAdapter"),
    ("tapas", "TapasLayer", "TupleBertLayerAdapter"),
    ("xlm-roberta", "XLMRobertaLayer", "BertLayerAdapter"),
    ("xlm-roberta-xl", "XLMRobertaXLLayer", "XLMRobertaXLLayerAdapter"),
)

#: Encoders whose layers the fused kernel cannot compute exactly, and why.
REFUSED: dict[str, str] = {
    "roformer": "RoFormer applies rotary position embeddings to queries and keys inside every attention "
    "layer, and the fused kernel's attention has no position term",
    "mpnet": "MPNet adds a learned relative position bias to the attention scores of every layer, which the "
    "fused kernel cannot take",
    "deberta": "DeBERTa uses disentangled attention (content-to-position and position-to-content scores with "
    "relative position embeddings), not plain scaled dot-product attention",
    "deberta-v2": "DeBERTa-v2/v3 uses disentangled attention (content-to-position and position-to-content "
    "scores with relative position embeddings), not plain scaled dot-product attention",
    "modernbert": "ModernBERT uses rotary position embeddings, a gated (GLU) feed-forward and bias-free "
    "layers with local/global attention, none of which the fused kernel computes",
    "t5": "T5 adds a relative position bias to its attention scores and normalizes with RMSNorm (no mean, "
    "no bias), neither of which the fused kernel computes",
    "mt5": "mT5 adds a relative position bias to its attention scores and normalizes with RMSNorm (no mean, "
    "no bias), neither of which the fused kernel computes",
}


@hookimpl
def bt_plugin_api_version() -> str:
    return "1.1"


@hookimpl
def bt_register_layers() -> list[LayerMapping]:
    return [
        LayerMapping(model_type, layer_class, f"{_ADAPTERS}:{adapter}", example_config=EXAMPLE_CONFIGS[model_type])
        for model_type, layer_class, adapter in LAYERS
    ]


@hookimpl
def bt_refused_model_types() -> dict[str, str]:
    return dict(REFUSED)
