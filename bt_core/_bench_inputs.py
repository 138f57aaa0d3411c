"""``bt bench``'s models and inputs: which model a ``--model`` spec names, the padded batch it is fed,
and the work (real tokens or frames, FLOPs) the roofline counts.

Torch and transformers load inside the functions: ``bt --help`` imports this module through
:mod:`bt_core.bench`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._bench_audio import audio_inputs, describe_audio

CONFIGS = Path(__file__).with_name("configs")

__all__ = [
    "CONFIGS",
    "describe_inputs",
    "encoder_flops",
    "encoder_of",
    "load_model",
    "make_inputs",
    "model_dims",
    "padded_lengths",
    "spread_lengths",
]


def padded_lengths(batch: int, length: int, padding: float, seed: int = 0) -> list[int]:
    """Row lengths whose mean is ``(1 - padding) * length``, spread uniformly around it.

    The spread is 90% of the room on the tighter side of the mean, so the shortest row keeps a token
    and the longest row is usually shorter than ``length`` (as in real batches, where the sequence
    length is a bucket size). Rows come in a fixed shuffled order.
    """
    if not 0.0 <= padding < 1.0:
        raise ValueError(f"padding fraction {padding} is not in [0, 1)")
    mean = (1.0 - padding) * length
    if padding == 0.0 or batch == 1:
        return [max(1, round(mean))] * batch
    half = 0.9 * min(mean - 1.0, length - mean)
    lengths = [round(mean - half + 2.0 * half * i / (batch - 1)) for i in range(batch)]
    lengths = [min(length, max(1, n)) for n in lengths]
    # Nudge rows so the total is as close to the target as integers allow.
    target = round(mean * batch)
    i = 0
    while sum(lengths) != target and i < 4 * batch:
        row = i % batch
        step = 1 if sum(lengths) < target else -1
        if 1 <= lengths[row] + step <= length:
            lengths[row] += step
        i += 1
    random.Random(seed).shuffle(lengths)
    return lengths


def spread_lengths(batch: int, shortest: int, longest: int, seed: int = 0) -> list[int]:
    """Row lengths evenly spread from ``shortest`` to ``longest`` (both included), in a fixed shuffled
    order: ``--lengths 199-799`` is a batch of utterances from 4 to 16 seconds, whatever the mean."""
    if not 1 <= shortest <= longest:
        raise ValueError(f"--lengths {shortest}-{longest}: need 1 <= shortest <= longest")
    if batch == 1:
        return [longest]
    lengths = [round(shortest + (longest - shortest) * i / (batch - 1)) for i in range(batch)]
    random.Random(seed).shuffle(lengths)
    return lengths


def model_dims(config: Any) -> tuple[int, int, int]:
    """(layers, hidden, feed-forward) of an encoder config, whatever its attribute names."""

    def first(*names: str) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        raise ValueError(f"{type(config).__name__} has none of {names}; bt bench cannot size it")

    config = (
        getattr(config, "text_config", None)
        if not hasattr(config, "hidden_size") and hasattr(config, "text_config")
        else config
    )
    layers = first("num_hidden_layers", "encoder_layers", "num_layers")
    hidden = first("hidden_size", "d_model", "embed_dim")
    ffn = first("intermediate_size", "encoder_ffn_dim", "ffn_dim", "d_ff")
    return layers, hidden, ffn


def encoder_flops(config: Any, lengths: Sequence[int]) -> float:
    """Multiply-add FLOPs of the encoder layers on the real tokens only (the roofline's work)."""
    layers, hidden, ffn = model_dims(config)
    tokens = sum(lengths)
    projections = 2.0 * tokens * (4 * hidden * hidden + 2 * hidden * ffn)
    attention = 4.0 * hidden * sum(n * n for n in lengths)
    return layers * (projections + attention)


def load_model(spec: str, generation: bool = False) -> tuple[Any, str]:
    """A model with random weights (or a local checkpoint's) and a description of where it came from.

    Without ``generation`` a seq2seq model comes back as its encoder half, the part bt converts; with
    it, the whole ``...ForConditionalGeneration`` model whose ``generate()`` ``--generate`` times.
    """
    import transformers

    path = Path(spec)
    shipped = CONFIGS / f"{spec}.json"
    if shipped.is_file() or (path.suffix == ".json" and path.is_file()):
        source = shipped if shipped.is_file() else path
        data = json.loads(source.read_text())
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        model_type = data.pop("model_type", None)
        if not model_type:
            raise ValueError(f"{source} has no model_type")
        config = transformers.AutoConfig.for_model(model_type, **data)
        return _from_config(config, generation), f"{source.name} (random weights)"
    if path.is_dir():
        if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
            config = transformers.AutoConfig.from_pretrained(path)
            auto = _generation_class(config) if generation else transformers.AutoModel
            model = auto.from_pretrained(path, attn_implementation="sdpa")
            return (model if generation else encoder_of(model)), f"checkpoint {path}"
        config = transformers.AutoConfig.from_pretrained(path)
        return _from_config(config, generation), f"{path}/config.json (random weights)"
    try:
        config = transformers.AutoConfig.for_model(spec)
    except ValueError:
        raise ValueError(
            f"--model {spec!r} is neither a shipped config, a model type transformers knows, a JSON file "
            "nor a local folder"
        ) from None
    return _from_config(config, generation), f"default {spec} config (random weights)"


def encoder_of(model: Any) -> Any:
    """The encoder half of a seq2seq model (T5, BART, Whisper), the model itself otherwise."""
    return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model


def _generation_class(config: Any) -> Any:
    """The auto class whose model has ``generate()`` for this seq2seq config (text or speech)."""
    import transformers

    if not getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"--generate times a sequence-to-sequence model's generate(); model type {config.model_type!r} is not "
            "one (its config has is_encoder_decoder false): drop --generate"
        )
    for auto in (transformers.AutoModelForSeq2SeqLM, transformers.AutoModelForSpeechSeq2Seq):
        if type(config) in auto._model_mapping:
            return auto
    raise ValueError(f"model type {config.model_type!r} has no text or speech ForConditionalGeneration class")


def _from_config(config: Any, generation: bool = False) -> Any:
    import torch
    import transformers

    auto = _generation_class(config) if generation else transformers.AutoModel
    torch.manual_seed(0)
    try:
        model = auto.from_config(config, attn_implementation="sdpa")
    except ValueError:  # no sdpa for this architecture (RoFormer, MPNet): transformers' default is eager
        model = auto.from_config(config, attn_implementation="eager")
    return model if generation else encoder_of(model)


def make_inputs(
    model: Any,
    batch: int,
    length: int,
    padding: float,
    device: Any,
    dtype: Any,
    lengths: Sequence[int] | None = None,
) -> tuple[dict, list[int]]:
    """Inputs for the model's main input, and the work of every row the roofline counts (its real
    tokens or frames). Rows are ``lengths`` long when given, else :func:`padded_lengths`'s."""
    import torch

    config = model.config
    generator = torch.Generator().manual_seed(0)
    name = getattr(model, "main_input_name", "input_ids")
    rows = list(lengths) if lengths is not None else padded_lengths(batch, length, padding)
    if len(rows) != batch or max(rows) > length:
        raise ValueError(f"row lengths {rows} do not fit a batch of {batch} rows of length {length}")
    if name == "input_ids":
        vocab = int(getattr(config, "vocab_size", 1000))
        ids = torch.randint(min(100, vocab - 1), vocab, (batch, length), generator=generator)
        mask = (torch.arange(length)[None, :] < torch.tensor(rows)[:, None]).long()
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, rows
    if name == "pixel_values":
        if padding or lengths is not None:
            raise ValueError("an image model has no padding; use --padding 0 and no --lengths")
        size = int(getattr(config, "image_size", 224))
        patch = int(getattr(config, "patch_size", 16))
        channels = int(getattr(config, "num_channels", 3))
        pixels = torch.randn(batch, channels, size, size, generator=generator).to(device=device, dtype=dtype)
        tokens = (size // patch) ** 2 + 1
        return {"pixel_values": pixels}, [tokens] * batch
    if name in ("input_values", "input_features"):
        return audio_inputs(model, length, rows, bool(padding) or lengths is not None, device, dtype, generator)
    raise ValueError(f"bt bench does not know how to feed {type(model).__name__} (main input {name!r})")


def describe_inputs(model: Any) -> str | None:
    """How the batch is fed when that is not plain tokens with a mask (audio), for the table."""
    name = getattr(model, "main_input_name", "input_ids")
    return describe_audio(model) if name in ("input_values", "input_features") else None
