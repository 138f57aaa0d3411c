"""Entry point of bt-plugins-encoders: the BERT family of text encoders, and the encoder half of T5 and
the BART family of seq2seq models.

Light on purpose: adapters are named as strings and imported only when a model is converted, and
the example configs import transformers only when called.
"""

from __future__ import annotations

import importlib.util
import os

from bt_core import LayerMapping, hookimpl

from .examples import EXAMPLE_CONFIGS, EXAMPLE_INPUTS

_ADAPTERS = "bt_plugins_encoders.adapters"
_SEQ2SEQ = "bt_plugins_encoders.seq2seq"


def _if_transformers_has(model_dir: str, *entries: tuple[str, str, str]) -> tuple[tuple[str, str, str], ...]:
    """``entries`` when the installed transformers has ``transformers/models/<model_dir>``, else none.

    For model types newer than the oldest transformers supported (gte is absent from 5.10): there is
    no such layer to convert, and no example config to build. Checked without importing transformers.
    """
    spec = importlib.util.find_spec("transformers")
    roots = (spec.submodule_search_locations or []) if spec is not None else []
    return entries if any(os.path.isdir(os.path.join(root, "models", model_dir)) for root in roots) else ()


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
    ("esm", "EsmLayer", "bt_plugins_encoders.esm:EsmLayerAdapter"),
    *_if_transformers_has("gte", ("gte", "GteLayer", "bt_plugins_encoders.gte:GteLayerAdapter")),
    ("layoutlm", "LayoutLMLayer", "BertLayerAdapter"),
    ("markuplm", "MarkupLMLayer", "BertLayerAdapter"),
    ("modernbert", "ModernBertEncoderLayer", "bt_plugins_encoders.modernbert:ModernBertLayerAdapter"),
    ("mpnet", "MPNetLayer", "bt_plugins_encoders.mpnet:MPNetLayerAdapter"),
    ("nomic_bert", "NomicBertLayer", "bt_plugins_encoders.nomic_bert:NomicBertLayerAdapter"),
    ("eurobert", "EuroBertDecoderLayer", "bt_plugins_encoders.eurobert:EuroBertLayerAdapter"),
    ("rembert", "RemBertLayer", "TupleBertLayerAdapter"),
    ("roberta", "RobertaLayer", "BertLayerAdapter"),
    ("roc_bert", "RoCBertLayer", "BertLayerAdapter"),
    ("roformer", "RoFormerLayer", "bt_plugins_encoders.roformer:RoFormerLayerAdapter"),
    ("splinter", "SplinterLayer", "BertLayerAdapter"),
    ("t5", "T5Block", "bt_plugins_encoders.t5:T5BlockAdapter"),
    ("mt5", "MT5Block", "bt_plugins_encoders.t5:T5BlockAdapter"),
    ("umt5", "UMT5Block", "bt_plugins_encoders.t5:UMT5BlockAdapter"),
    ("tapas", "TapasLayer", "TupleBertLayerAdapter"),
    ("xlm-roberta", "XLMRobertaLayer", "BertLayerAdapter"),
    ("xlm-roberta-xl", "XLMRobertaXLLayer", "XLMRobertaXLLayerAdapter"),
    # Seq2seq models: their encoder layers convert, their decoders stay the model's own.
    ("bart", "BartEncoderLayer", f"{_SEQ2SEQ}:BartEncoderLayerAdapter"),
    ("bigbird_pegasus", "BigBirdPegasusEncoderLayer", f"{_SEQ2SEQ}:BigBirdPegasusEncoderLayerAdapter"),
    ("blenderbot", "BlenderbotEncoderLayer", f"{_SEQ2SEQ}:MBartEncoderLayerAdapter"),
    ("blenderbot-small", "BlenderbotSmallEncoderLayer", f"{_SEQ2SEQ}:BartEncoderLayerAdapter"),
    ("fsmt", "EncoderLayer", "bt_plugins_encoders.fsmt:FSMTEncoderLayerAdapter"),
    ("m2m_100", "M2M100EncoderLayer", f"{_SEQ2SEQ}:MBartEncoderLayerAdapter"),
    ("marian", "MarianEncoderLayer", f"{_SEQ2SEQ}:BartEncoderLayerAdapter"),
    ("mbart", "MBartEncoderLayer", f"{_SEQ2SEQ}:MBartEncoderLayerAdapter"),
    ("pegasus", "PegasusEncoderLayer", f"{_SEQ2SEQ}:MBartEncoderLayerAdapter"),
    ("plbart", "PLBartEncoderLayer", f"{_SEQ2SEQ}:BartEncoderLayerAdapter"),
    ("prophetnet", "ProphetNetEncoderLayer", "bt_plugins_encoders.prophetnet:ProphetNetEncoderLayerAdapter"),
)

#: Model classes of the example configs where ``AutoModel`` would build more than the encoder.
EXAMPLE_MODEL_CLASSES: dict[str, str] = {
    "t5": "transformers:T5EncoderModel",  # AutoModel builds the seq2seq T5Model, decoder included
    "mt5": "transformers:MT5EncoderModel",
    "umt5": "transformers:UMT5EncoderModel",
    # Seq2seq types: AutoModel builds encoder and decoder (outputs the decoder's states); the encoder alone.
    "bart": "transformers.models.bart.modeling_bart:BartEncoder",
    "bigbird_pegasus": "transformers.models.bigbird_pegasus.modeling_bigbird_pegasus:BigBirdPegasusEncoder",
    "blenderbot": "transformers.models.blenderbot.modeling_blenderbot:BlenderbotEncoder",
    "blenderbot-small": "transformers.models.blenderbot_small.modeling_blenderbot_small:BlenderbotSmallEncoder",
    "fsmt": "bt_plugins_encoders.fsmt:FSMTEncoderModel",  # transformers has no FSMT encoder model
    "m2m_100": "transformers.models.m2m_100.modeling_m2m_100:M2M100Encoder",
    "marian": "transformers.models.marian.modeling_marian:MarianEncoder",
    "mbart": "transformers.models.mbart.modeling_mbart:MBartEncoder",
    "pegasus": "transformers.models.pegasus.modeling_pegasus:PegasusEncoder",
    "plbart": "transformers.models.plbart.modeling_plbart:PLBartEncoder",
    "prophetnet": "transformers.models.prophetnet.modeling_prophetnet:ProphetNetEncoder",
}


#: Encoders whose layers the fused kernel cannot compute exactly, and why.
REFUSED: dict[str, str] = {
    "deberta": "DeBERTa uses disentangled attention (content-to-position and position-to-content scores with "
    "relative position embeddings), not plain scaled dot-product attention",
    "deberta-v2": "DeBERTa-v2/v3 uses disentangled attention (content-to-position and position-to-content "
    "scores with relative position embeddings), not plain scaled dot-product attention",
    "led": "LED's encoder always uses Longformer's attention (a sliding window per token plus global tokens with "
    "their own projections), not full scaled dot-product attention",
}


@hookimpl
def bt_plugin_api_version() -> str:
    return "1.1"


@hookimpl
def bt_register_layers() -> list[LayerMapping]:
    return [
        LayerMapping(
            model_type,
            layer_class,
            adapter if ":" in adapter else f"{_ADAPTERS}:{adapter}",  # "module:Class", or a class in ``adapters``
            example_config=EXAMPLE_CONFIGS[model_type],
            example_model_class=EXAMPLE_MODEL_CLASSES.get(model_type),
            example_inputs=EXAMPLE_INPUTS.get(model_type),
        )
        for model_type, layer_class, adapter in LAYERS
    ]


@hookimpl
def bt_refused_model_types() -> dict[str, str]:
    return dict(REFUSED)
