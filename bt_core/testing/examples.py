"""Small random models and their inputs: the parts of the kit that build things and need no pytest.

Used by :class:`bt_core.testing.AdapterConformance` and by ``bt check``; comparing outputs is in
:mod:`bt_core.testing.compare`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..mapping import LayerMapping

__all__ = [
    "DROPOUT_MARKERS",
    "ExampleError",
    "build_example_model",
    "cast_inputs",
    "default_inputs",
    "example_inputs",
    "head_model_class",
    "inputs_for",
    "left_padded",
    "new_example_config",
    "perturb_parameters",
    "to_float64",
    "zero_dropout",
]

#: Float config attributes whose name contains one of these are set to 0.0 (dropout, LayerDrop, drop path),
#: so that training mode is deterministic and the reference path can be compared exactly.
DROPOUT_MARKERS = ("dropout", "layerdrop", "drop_path")


class ExampleError(Exception):
    """The example model or its inputs cannot be built from the mapping; the message says what to add."""


def new_example_config(mapping: LayerMapping) -> Any:
    """A fresh config from ``mapping.example_config``, dropout zeroed; :class:`ExampleError` when it has none."""
    if mapping.example_config is None:
        raise ExampleError(
            f"model type {mapping.model_type!r}: LayerMapping({mapping.model_type!r}, {mapping.layer_class_name!r}) "
            "has no example_config, so the conformance kit cannot build a model to test the adapter on. "
            "Add `example_config=` to the mapping: a zero-argument callable returning a small config of this "
            "model type, e.g. `lambda: BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, "
            "intermediate_size=64, vocab_size=99)`."
        )
    try:
        config = mapping.example_config()
    except Exception as exc:
        raise ExampleError(
            f"model type {mapping.model_type!r}: example_config() raised {type(exc).__name__}: {_short(exc)}"
        ) from None
    found = getattr(config, "model_type", None)
    if found is not None and found != mapping.model_type and not _has_sub_config_of_type(config, mapping.model_type):
        raise ExampleError(
            f"model type {mapping.model_type!r}: example_config() returned a config of model type {found!r}; "
            "return a config of the mapped model type."
        )
    return zero_dropout(config)


def _sub_configs(config: Any) -> Iterator[Any]:
    from transformers import PretrainedConfig

    for value in vars(config).values():
        if isinstance(value, PretrainedConfig):
            yield value


def _has_sub_config_of_type(config: Any, model_type: str) -> bool:
    return any(getattr(sub, "model_type", None) == model_type for sub in _sub_configs(config))


def zero_dropout(config: Any) -> Any:
    """Set every float attribute named like dropout (see ``DROPOUT_MARKERS``) to 0.0, in sub-configs too."""
    for name, value in list(vars(config).items()):
        if isinstance(value, float) and not isinstance(value, bool) and any(m in name for m in DROPOUT_MARKERS):
            setattr(config, name, 0.0)
    for sub in _sub_configs(config):
        zero_dropout(sub)
    return config


def perturb_parameters(model: nn.Module, scale: float, seed: int) -> None:
    """Add seeded noise to every float parameter and buffer-free weight.

    Freshly initialised models have layer norms of exactly 1 and biases of exactly 0, which hide an
    adapter that swaps two norms or forgets a bias; the noise makes every tensor distinct.
    """
    if scale <= 0:
        return
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
            if parameter.is_floating_point() and parameter.device.type != "meta":
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.add_(noise.to(parameter.dtype) * scale)


def build_example_model(
    mapping: LayerMapping, config: Any = None, *, seed: int = 0, perturb: float = 0.05, model_class: Any = None
) -> tuple[nn.Module, Any]:
    """``(model, config)``: the mapping's example model in float32 and eval mode, seeded and perturbed.

    ``model_class`` (default: the mapping's ``example_model_class``) builds another model of the same
    config, such as a task-head model (:func:`head_model_class`).
    """
    if config is None:
        config = new_example_config(mapping)
    if model_class is None:
        try:
            model_class = mapping.load_example_model_class()
        except Exception as exc:
            raise ExampleError(f"model type {mapping.model_type!r}: {_short(exc, 400)}") from None
    torch.manual_seed(seed)
    try:
        build = getattr(model_class, "from_config", None)
        model = build(config) if build is not None else model_class(config)
    except Exception as exc:
        hint = ""
        guess = type(config).__name__.replace("Config", "Model")
        if "Unrecognized configuration class" in str(exc):
            import transformers

            example = f"'transformers:{guess}'" if hasattr(transformers, guess) else "'package.module:ModelClass'"
            hint = f" Set the mapping's example_model_class to the model class for this config, e.g. {example}."
        raise ExampleError(
            f"model type {mapping.model_type!r}: {getattr(model_class, '__name__', model_class)} could not be built "
            f"from the example config: {type(exc).__name__}: {_short(exc)}.{hint}"
        ) from None
    model = model.float().eval()
    perturb_parameters(model, perturb, seed + 1)
    return model, config


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _image_size(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def default_inputs(config: Any, batch_size: int = 3, *, seed: int = 0, seq_len: int = 8) -> dict[str, Tensor]:
    """Inputs for a text config (right-padded ``input_ids``/``attention_mask`` of varied lengths), a
    vision config (``pixel_values``), or a composite config holding ``text_config`` and ``vision_config``."""
    generator = torch.Generator().manual_seed(seed)
    text = getattr(config, "text_config", None)
    vision = getattr(config, "vision_config", None)
    if text is not None or vision is not None:
        inputs: dict[str, Tensor] = {}
        if text is not None:
            inputs.update(default_inputs(text, batch_size, seed=seed, seq_len=seq_len))
        if vision is not None:
            inputs.update(default_inputs(vision, batch_size, seed=seed, seq_len=seq_len))
        return inputs
    if getattr(config, "image_size", None) is not None:
        height, width = _image_size(config.image_size)
        channels = int(getattr(config, "num_channels", 3))
        return {"pixel_values": torch.randn(batch_size, channels, height, width, generator=generator)}
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is None:
        raise ExampleError(
            f"cannot guess inputs for a {type(config).__name__} (neither text nor vision); give the mapping "
            "`example_inputs=lambda config, batch_size: {...}`."
        )
    max_positions = getattr(config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions > 0:
        # RoBERTa-style position ids start after the padding index.
        seq_len = max(2, min(seq_len, max_positions - int(getattr(config, "pad_token_id", 0) or 0) - 2))
    lengths = [max(1, seq_len - (3 * i) % seq_len) for i in range(batch_size)]
    low = min(5, int(vocab_size) - 1)
    input_ids = torch.randint(low, int(vocab_size), (batch_size, seq_len), generator=generator)
    attention_mask = torch.zeros(batch_size, seq_len, dtype=torch.long)
    pad = getattr(config, "pad_token_id", None)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
        input_ids[row, length:] = pad if isinstance(pad, int) and 0 <= pad < vocab_size else 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def example_inputs(mapping: LayerMapping | None, config: Any, batch_size: int = 3, *, seed: int = 0) -> dict[str, Any]:
    """The mapping's ``example_inputs(config, batch_size)`` when it has one, else :func:`default_inputs`."""
    if mapping is not None and mapping.example_inputs is not None:
        torch.manual_seed(seed)
        try:
            return dict(mapping.example_inputs(config, batch_size))
        except Exception as exc:
            raise ExampleError(
                f"model type {mapping.model_type!r}: example_inputs() raised {type(exc).__name__}: {_short(exc)}"
            ) from None
    try:
        return default_inputs(config, batch_size, seed=seed)
    except ExampleError as exc:
        where = f"model type {mapping.model_type!r}: " if mapping is not None else ""
        raise ExampleError(f"{where}{exc}") from None


# -- variants of a batch and of a model ------------------------------------------------------------


def left_padded(inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The same batch with each row's padding moved to the left, or None when nothing is padded.

    Every input shaped like the 2-D ``attention_mask`` in its first two dimensions (token ids, token
    types, boxes, embeddings) is reordered with it: pad positions first, then the row's real tokens in
    their order. Left padding is what decoder-style tokenizers and some pipelines produce.
    """
    mask = inputs.get("attention_mask")
    if not isinstance(mask, Tensor) or mask.dim() != 2 or bool(mask.bool().all()):
        return None
    order = torch.argsort(mask.bool().to(torch.int8), dim=1, stable=True)  # 0s (padding) first, order kept
    moved = {}
    for key, value in inputs.items():
        if isinstance(value, Tensor) and value.dim() >= 2 and tuple(value.shape[:2]) == tuple(mask.shape):
            index = order.to(value.device).reshape(*order.shape, *([1] * (value.dim() - 2))).expand_as(value)
            value = torch.gather(value, 1, index)
        moved[key] = value
    return moved


def to_float64(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with every floating-point tensor (pixels, features, embeddings) in float64."""
    return cast_inputs(inputs, torch.float64)


def cast_inputs(inputs: dict[str, Any], dtype: torch.dtype, device: torch.device | None = None) -> dict[str, Any]:
    """``inputs`` with every floating-point tensor in ``dtype``, and every tensor on ``device`` when given."""
    return {
        key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        if isinstance(value, Tensor)
        else value
        for key, value in inputs.items()
    }


def head_model_class(config: Any) -> type | None:
    """The transformers sequence-classification model class for ``config`` (text), else its
    image-classification one (vision), else None: a task head to check over converted layers."""
    from transformers.models.auto import modeling_auto

    for table in (
        modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
        modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
    ):
        if type(config) in table:
            found = table[type(config)]
            # A config with several heads maps to a tuple (DeiT: with and without a teacher): the first is plain.
            return found[0] if isinstance(found, tuple) else found
    return None


def inputs_for(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs ``model.forward`` names as parameters: a head model of a multimodal config (an image
    classifier over CLIP) takes only its own tower's inputs."""
    named = {
        name
        for name, parameter in inspect.signature(model.forward).parameters.items()
        if parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    kept = {key: value for key, value in inputs.items() if key in named}
    return kept if kept else inputs  # a forward(**kwargs) names nothing: pass everything, as before
