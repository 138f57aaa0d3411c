"""The model ``bt check`` compares: a local checkpoint folder loaded through the class its
``config.architectures`` names, or, for a model type, a small random-weight model built from the plugin's
example config (or transformers' default config, shrunk); with the ``bt check`` errors (and exit codes)
for a path that holds no checkpoint and a model type no installed plugin converts. torch and
transformers are imported inside the functions."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._known_packs import pack_for
from .ops import EXIT_BROKEN_PLUGIN, EXIT_NOT_FOUND, EXIT_UNSUPPORTED, _Exit

if TYPE_CHECKING:
    from .mapping import LayerMapping
    from .registry import PluginRegistry

__all__ = ["shrink_config"]


def _looks_like_path(model: str) -> bool:
    return os.path.exists(model) or os.sep in model or "/" in model or model.startswith(("~", "."))


_SHRINK: dict[str, int] = {
    "num_hidden_layers": 2,
    "num_layers": 2,
    "encoder_layers": 2,
    "hidden_size": 64,
    "d_model": 64,
    "embedding_size": 64,
    "num_attention_heads": 4,
    "encoder_attention_heads": 4,
    "intermediate_size": 128,
    "encoder_ffn_dim": 128,
    "image_size": 32,
    "patch_size": 8,
}


def shrink_config(config: Any) -> Any:
    """Make a default-sized config tiny (2 layers, hidden 64, 4 heads), sub-configs too."""
    from transformers import PretrainedConfig

    for name, value in _SHRINK.items():
        current = getattr(config, name, None)
        if isinstance(current, int) and not isinstance(current, bool) and current > value:
            setattr(config, name, value)
    vocab = getattr(config, "vocab_size", None)
    special = [getattr(config, n, None) for n in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id")]
    if isinstance(vocab, int) and vocab > 512 and all(not isinstance(s, int) or s < 512 for s in special):
        config.vocab_size = 512
    for value in list(vars(config).values()):
        if isinstance(value, PretrainedConfig):
            shrink_config(value)
    return config


def _unsupported(model_type: str, registry: PluginRegistry) -> _Exit:
    supported = ", ".join(sorted(registry.supported_model_types())) or "none (no bt plugin is installed)"
    refusal = registry.refusal_for(model_type)
    if refusal is not None:
        reason, plugin = refusal
        return _Exit(
            EXIT_UNSUPPORTED, f"model type {model_type!r} cannot be converted exactly: {reason} (plugin {plugin!r})."
        )
    pack = pack_for(model_type)
    failed = [f for f in registry.failures if pack is not None and f.distribution == pack]
    if failed:
        return _Exit(
            EXIT_BROKEN_PLUGIN,
            f"model type {model_type!r} comes from {pack}, which is installed but failed to load: "
            f"{failed[0].describe()}. Reinstall or upgrade it; `bt doctor` shows every plugin.",
        )
    hint = f" Install {pack} (`pip install {pack}`) to add it." if pack else ""
    notes = "".join(f"\n  note: {f.describe()}" for f in registry.failures)
    return _Exit(
        EXIT_UNSUPPORTED,
        f"{model_type!r} is not a model type the installed bt plugins convert, nor a local folder.{hint}\n"
        f"  supported model types: {supported}\n"
        "  MODEL is a model type (see `bt list`) or the path of a local checkpoint folder; bt check downloads "
        f"nothing.{notes}",
    )


def _load_checkpoint(path: str, registry: PluginRegistry) -> tuple[Any, Any, LayerMapping, str]:
    folder = os.path.expanduser(path)
    if not os.path.exists(folder):
        raise _Exit(
            EXIT_NOT_FOUND, f"{path}: no such file or folder. MODEL is a model type or a local checkpoint folder."
        )
    if not os.path.isdir(folder) or not os.path.isfile(os.path.join(folder, "config.json")):
        raise _Exit(
            EXIT_NOT_FOUND,
            f"{path} is not a transformers checkpoint folder (no config.json in it); pass the folder that "
            "save_pretrained() wrote.",
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise _Exit(EXIT_NOT_FOUND, f"{path}: the config cannot be loaded: {type(exc).__name__}: {exc}") from None
    model_type = getattr(config, "model_type", "")
    mappings = registry.mappings_for(model_type)
    if not mappings:
        raise _unsupported(model_type, registry)
    mapping = mappings[0].mapping
    model_class, how = _checkpoint_class(config, mapping)
    try:
        model = model_class.from_pretrained(folder, config=config, local_files_only=True)
    except Exception as exc:
        raise _Exit(EXIT_NOT_FOUND, f"{path}: the weights cannot be loaded: {type(exc).__name__}: {exc}") from None
    return model.float().eval(), config, mapping, how


def _checkpoint_class(config: Any, mapping: LayerMapping) -> tuple[Any, str]:
    """The class to load a checkpoint with, and a line saying why.

    The one ``config.architectures`` names (BertForSequenceClassification): its task head is what the
    checkpoint is used through, and a head that reads a position the converted layers do not compute
    (position 0 under left padding) shows only there. Else the mapping's example model class.
    """
    import transformers

    base = mapping.load_example_model_class()
    named = [name for name in getattr(config, "architectures", None) or [] if isinstance(name, str)]
    for name in named:
        head = getattr(transformers, name, None)
        if isinstance(head, type):
            return head, f"{name} (from config.architectures)"
    base_name = getattr(base, "__name__", str(base))
    if named:
        return base, (
            f"{base_name} (config.architectures names {', '.join(named)}, which transformers does not have: "
            "custom code? Its task head is not compared)"
        )
    return base, f"{base_name} (config.architectures names no class)"


def _random_model(model_type: str, registry: PluginRegistry, seed: int) -> tuple[Any, Any, LayerMapping, str]:
    from .testing.examples import ExampleError, build_example_model, new_example_config, zero_dropout

    mappings = registry.mappings_for(model_type)
    if not mappings:
        raise _unsupported(model_type, registry)
    mapping = mappings[0].mapping
    try:
        if mapping.example_config is not None:
            config, source = new_example_config(mapping), "the plugin's example config"
        else:
            from transformers import AutoConfig

            config = zero_dropout(shrink_config(AutoConfig.for_model(model_type)))
            source = "AutoConfig.for_model, shrunk"
        model, config = build_example_model(mapping, config, seed=seed)
    except ExampleError as exc:
        raise _Exit(EXIT_BROKEN_PLUGIN, f"cannot build a small {model_type!r} model: {exc}") from None
    except Exception as exc:
        raise _Exit(
            EXIT_BROKEN_PLUGIN, f"cannot build a small {model_type!r} model: {type(exc).__name__}: {exc}"
        ) from None
    return model, config, mapping, source
