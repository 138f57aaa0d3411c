"""Which of the bt packs converts which model types, for error messages when a pack is missing.

Only a hint: the registry, not this table, decides what is converted.
"""

from __future__ import annotations

KNOWN_PACKS: dict[str, frozenset[str]] = {
    "bt-plugins-encoders": frozenset(
        {
            "albert",
            "bart",
            "bert",
            "bert-generation",
            "bigbird_pegasus",
            "blenderbot",
            "blenderbot-small",
            "camembert",
            "data2vec-text",
            "distilbert",
            "electra",
            "ernie",
            "esm",
            "eurobert",
            "fsmt",
            "gte",
            "layoutlm",
            "m2m_100",
            "marian",
            "markuplm",
            "mbart",
            "modernbert",
            "mpnet",
            "mt5",
            "nomic_bert",
            "pegasus",
            "plbart",
            "prophetnet",
            "rembert",
            "roberta",
            "roc_bert",
            "roformer",
            "splinter",
            "t5",
            "tapas",
            "umt5",
            "xlm-roberta",
            "xlm-roberta-xl",
        }
    ),
    "bt-plugins-vision": frozenset(
        {
            "beit",
            "clip",
            "clip_text_model",
            "clip_vision_model",
            "data2vec-vision",
            "deit",
            "dinov2",
            "siglip",
            "siglip_text_model",
            "siglip_vision_model",
            "vilt",
            "vit",
            "vit_mae",
            "vit_msn",
            "yolos",
        }
    ),
    "bt-plugins-audio": frozenset(
        {
            "data2vec-audio",
            "hubert",
            "speech_to_text",
            "wav2vec2",
            "wavlm",
            "whisper",
        }
    ),
}


def pack_for(model_type: str) -> str | None:
    """The distribution that would add ``model_type``, when one of ours does."""
    for distribution, model_types in KNOWN_PACKS.items():
        if model_type in model_types:
            return distribution
    return None
