"""Shared helpers of the audio-pack tests: the architectures, padded batches, frame masks, comparisons,
and a registry holding only the audio plugin."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import bt_plugins_audio.plugin as audio_plugin
import pytest
import torch
import transformers
from torch import nn

import bt_core
from bt_core import BetterTransformer, BetterTransformerBaseLayer, BetterTransformerError
from bt_core.registry import PluginRegistry
from bt_core.testing import registry_with
from bt_plugins_audio import examples

ATOL = 1e-5
#: Real lengths of the rows of a padded batch: raw samples (19, 12 and 5 frames), or filterbank frames.
SAMPLE_LENGTHS = (200, 130, 60)
FRAME_LENGTHS = (24, 15, 9)


@dataclass(frozen=True)
class Arch:
    """One architecture under test: a tiny config and the model class whose ``last_hidden_state`` is compared."""

    id: str
    config: Callable[..., Any]
    model: str
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Whether the model takes an attention mask (Whisper pads to a fixed length and takes none).
    masked: bool = True

    def make_config(self, **overrides: Any) -> Any:
        return self.config(**{**self.config_kwargs, **overrides})

    def build(self, model: str | None = None, *, seed: int = 0, **overrides: Any) -> nn.Module:
        return build(self.make_config(**overrides), model or self.model, seed=seed)

    def batch(self, config: Any, padding: str, seed: int = 1) -> dict[str, torch.Tensor]:
        """Inputs padded on the ``padding`` side ("right", "left") or not at all ("none")."""
        if not self.masked:
            return examples.whisper_inputs(config, 3)
        lengths = FRAME_LENGTHS if config.model_type == "speech_to_text" else SAMPLE_LENGTHS
        if padding == "none":
            lengths = (max(lengths),) * len(lengths)
        return examples.feature_inputs(config, lengths, left=padding == "left", seed=seed)


def build(config: Any, model_class: str, *, seed: int = 0) -> nn.Module:
    """A random-weight model in eval mode, every parameter perturbed (so no norm is the identity and no
    bias zero: a swapped norm or a dropped bias shows)."""
    torch.manual_seed(seed)
    module_name, _, class_name = model_class.rpartition(":")
    owner = __import__(module_name, fromlist=[class_name]) if module_name else transformers
    model = getattr(owner, class_name)(config).eval()
    generator = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model


_S2T_ENCODER = "transformers.models.speech_to_text.modeling_speech_to_text:Speech2TextEncoder"
_WHISPER_ENCODER = "transformers.models.whisper.modeling_whisper:WhisperEncoder"

ARCHS: list[Arch] = [
    Arch("wav2vec2", examples.wav2vec2_config, "Wav2Vec2Model"),
    Arch("wav2vec2-stable", examples.wav2vec2_config, "Wav2Vec2Model", {"stable": True}),
    Arch("hubert", examples.hubert_config, "HubertModel"),
    Arch("hubert-stable", examples.hubert_config, "HubertModel", {"stable": True}),
    Arch("data2vec-audio", examples.data2vec_audio_config, "Data2VecAudioModel"),
    Arch("wavlm", examples.wavlm_config, "WavLMModel"),
    Arch("wavlm-stable", examples.wavlm_config, "WavLMModel", {"stable": True}),
    Arch("speech_to_text", examples.speech_to_text_config, _S2T_ENCODER),
    Arch("whisper", examples.whisper_config, _WHISPER_ENCODER, masked=False),
]
ARCH_IDS = [arch.id for arch in ARCHS]
MASKED_ARCHS = [arch for arch in ARCHS if arch.masked]


def frame_mask(model: nn.Module, inputs: dict[str, torch.Tensor], frames: int) -> torch.Tensor:
    """``(batch, frames)`` bool: the frames the model itself counts as real (``_get_feature_vector_attention_mask``
    on the inputs' mask), all True when there is no mask."""
    mask = inputs.get("attention_mask")
    batch = next(iter(inputs.values())).shape[0]
    if mask is None:
        return torch.ones(batch, frames, dtype=torch.bool)
    owner = next(m for m in model.modules() if hasattr(m, "_get_feature_vector_attention_mask"))
    return owner._get_feature_vector_attention_mask(frames, mask).bool()


def assert_close_on_frames(
    actual: torch.Tensor, expected: torch.Tensor, keep: torch.Tensor, atol: float = ATOL
) -> None:
    """Same shape, and equal within ``atol`` on every real frame."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != original {tuple(expected.shape)}"
    diff = (actual[keep] - expected[keep]).abs().max().item()
    assert diff <= atol, f"max difference on real frames {diff:.3g} > {atol}"


def converted_layers(model: nn.Module) -> list[BetterTransformerBaseLayer]:
    return [m for m in model.modules() if isinstance(m, BetterTransformerBaseLayer)]


def convert_copy(model: nn.Module) -> nn.Module:
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert converted_layers(converted), "nothing was converted"
    return converted


def run(model: nn.Module, inputs: dict[str, Any], strategy: str | None = None) -> Any:
    with torch.inference_mode(), bt_core.force_strategy(strategy):
        return model(**inputs)


def state_dicts_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), f"{key} changed"


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class Prepared:
    """An original model's outputs on a batch, and a converted copy to run the same batch through."""

    converted: nn.Module
    inputs: dict[str, torch.Tensor]
    expected: torch.Tensor
    real_frames: torch.Tensor


def prepared(arch: Arch, padding: str) -> Prepared:
    """Built, run and converted once per (arch, padding) for the whole session: tests only run the converted
    copy (in inference mode, which changes nothing), so they may share it."""
    return _prepared(arch.id, padding)


@functools.cache
def _prepared(arch_id: str, padding: str) -> Prepared:
    (arch,) = [a for a in ARCHS if a.id == arch_id]
    original = arch.build()
    inputs = arch.batch(original.config, padding)
    expected = run(original, inputs).last_hidden_state
    keep = frame_mask(original, inputs, expected.shape[1])
    return Prepared(convert_copy(original), inputs, expected, keep)


def _fused_blocker(arch: Arch) -> str | None:
    """Why the fused kernel cannot run the arch's padded batch exactly, as the converted layers say (None: it
    can): what the layers declare, else what a call shows (the score bias WavLM's layers compute per call)."""
    from bt_core._validate import kernel_blocker

    with warnings.catch_warnings():  # collection time: the _quiet fixture is not active yet
        warnings.simplefilter("ignore")
        case = prepared(arch, "right" if arch.masked else "none")
        static = sorted(filter(None, (kernel_blocker(m) for m in converted_layers(case.converted))))
        if static:
            return static[0]
        try:
            run(case.converted, case.inputs, "fused")
        except BetterTransformerError as exc:
            return str(exc).split("was forced, but ", 1)[-1]
    return None


def strategy_params(strategies: Sequence[str | None], archs: Sequence[Arch] = ARCHS) -> list[Any]:
    """``(arch, strategy)`` for every strategy that can run the arch exactly ("fused" where the kernel can)."""
    return [
        pytest.param(arch, strategy, id=f"{arch.id}-{strategy or 'auto'}")
        for arch in archs
        for strategy in strategies
        if strategy != "fused" or FUSED[arch.id] is None
    ]


@pytest.fixture(autouse=True)
def audio_registry() -> Iterator[PluginRegistry]:
    """A fresh registry holding only the audio plugin, the process default for one test."""
    with registry_with(audio_plugin, name="audio") as registry:
        yield registry


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*taking the reference path.*")
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
        warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask and attn_mask.*")  # WavLM itself
        yield


#: Built last: deciding where the fused kernel runs converts each example model once.
FUSED: dict[str, str | None] = {arch.id: _fused_blocker(arch) for arch in ARCHS}
