"""Small random models, their inputs, and output comparison: the parts of the kit that need no pytest.

Used by :class:`bt_core.testing.AdapterConformance` and by ``bt check``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..mapping import LayerMapping

__all__ = [
    "DROPOUT_MARKERS",
    "ExampleError",
    "OutputDiff",
    "build_example_model",
    "compare_outputs",
    "default_inputs",
    "example_inputs",
    "flatten_outputs",
    "format_diffs",
    "new_example_config",
    "perturb_parameters",
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
    mapping: LayerMapping, config: Any = None, *, seed: int = 0, perturb: float = 0.05
) -> tuple[nn.Module, Any]:
    """``(model, config)``: the mapping's example model in float32 and eval mode, seeded and perturbed."""
    if config is None:
        config = new_example_config(mapping)
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


# -- comparing outputs ----------------------------------------------------------------------------


def flatten_outputs(output: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(name, leaf)]`` for a model output: ModelOutput/dict fields, tuple items, tensors."""
    if isinstance(output, Tensor):
        return [(prefix or "output", output)]
    if isinstance(output, dict):  # ModelOutput is an OrderedDict of its non-None fields
        items: list[tuple[str, Any]] = []
        for key, value in output.items():
            items.extend(flatten_outputs(value, f"{prefix}.{key}" if prefix else str(key)))
        return items
    if isinstance(output, (tuple, list)):
        items = []
        for index, value in enumerate(output):
            items.extend(flatten_outputs(value, f"{prefix}[{index}]" if prefix else f"output[{index}]"))
        return items
    return []


@dataclass(frozen=True)
class OutputDiff:
    """How one output of the converted model compares with the original's."""

    name: str
    max_abs_diff: float
    compared: str  # "valid tokens", "all", or why nothing could be compared
    index: tuple[int, ...] | None = None
    problem: str | None = None  # shape/dtype/missing mismatch: never within tolerance

    def within(self, atol: float) -> bool:
        return self.problem is None and self.max_abs_diff <= atol

    def describe(self) -> str:
        if self.problem is not None:
            return f"{self.name}: {self.problem}"
        where = f" at index {self.index}" if self.index is not None and self.max_abs_diff > 0 else ""
        return f"{self.name}: max abs diff {self.max_abs_diff:.3g} ({self.compared}){where}"


def compare_outputs(expected: Any, actual: Any, attention_mask: Tensor | None = None) -> list[OutputDiff]:
    """Compare every tensor output; ``(batch, seq_len, ...)`` outputs only on the positions the mask keeps."""
    expected_items = dict(flatten_outputs(expected))
    actual_items = dict(flatten_outputs(actual))
    keep = attention_mask.bool() if isinstance(attention_mask, Tensor) and attention_mask.dim() == 2 else None
    diffs = []
    for name, want in expected_items.items():
        if not isinstance(want, Tensor):
            continue
        got = actual_items.get(name)
        if not isinstance(got, Tensor):
            diffs.append(OutputDiff(name, math.inf, "missing", problem="missing from the converted model's output"))
            continue
        if got.is_nested:
            diffs.append(
                OutputDiff(name, math.inf, "nested", problem="is a nested tensor (the last layer did not un-nest it)")
            )
            continue
        if tuple(got.shape) != tuple(want.shape):
            diffs.append(
                OutputDiff(
                    name, math.inf, "shape", problem=f"has shape {tuple(got.shape)}, the original {tuple(want.shape)}"
                )
            )
            continue
        if not want.is_floating_point():
            same = torch.equal(got, want)
            diffs.append(OutputDiff(name, 0.0 if same else math.inf, "all", problem=None if same else "differs"))
            continue
        diff = (got.detach().double() - want.detach().double()).abs()
        compared = "all"
        token_keep = _token_keep(keep, want)
        if token_keep is not None:
            mask = token_keep.to(diff.device).reshape(*token_keep.shape, *([1] * (want.dim() - 2)))
            diff = torch.where(mask, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
            compared = "valid tokens"
        if diff.numel() == 0:
            diffs.append(OutputDiff(name, 0.0, compared))
            continue
        nan_mismatch = torch.isnan(diff)
        if bool(nan_mismatch.any()):
            flat = int(nan_mismatch.reshape(-1).nonzero()[0])
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
            diffs.append(OutputDiff(name, math.nan, compared, index, problem=f"has NaN at index {index}"))
            continue
        flat = int(diff.reshape(-1).argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        diffs.append(OutputDiff(name, float(diff.reshape(-1)[flat]), compared, index))
    return diffs


def _token_keep(keep: Tensor | None, output: Tensor) -> Tensor | None:
    """The positions of ``output`` to compare: the mask's valid tokens for a ``(batch, seq_len, ...)`` output;
    for an output longer than the mask (text tokens followed by image patches, as in ViLT) also every
    position past the mask (3-D and larger outputs only). None when the output is not per token."""
    if keep is None or output.dim() < 2 or output.shape[0] != keep.shape[0] or output.shape[1] < keep.shape[1]:
        return None
    extra = output.shape[1] - keep.shape[1]
    if extra == 0:
        return keep
    if output.dim() == 2:  # (batch, features), e.g. a pooled output: not per token
        return None
    return torch.cat([keep, keep.new_ones(keep.shape[0], extra)], dim=1)


def format_diffs(diffs: list[OutputDiff], atol: float) -> str:
    lines = []
    for diff in diffs:
        mark = "ok  " if diff.within(atol) else "FAIL"
        lines.append(f"  {mark} {diff.describe()}")
    return "\n".join(lines)
