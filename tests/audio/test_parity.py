"""Converted speech encoders compute the original's outputs on every real frame, for every strategy and
padding layout; ``reverse`` gives the original back bit for bit; training takes the reference path with the
original's gradients."""

from __future__ import annotations

import pytest
import torch

from bt_core import BetterTransformer

from .conftest import (
    ARCH_IDS,
    ARCHS,
    ATOL,
    FUSED,
    MASKED_ARCHS,
    Arch,
    assert_close_on_frames,
    clone_state,
    convert_copy,
    converted_layers,
    frame_mask,
    prepared,
    run,
    state_dicts_identical,
    strategy_params,
)

STRATEGIES = (None, "fused", "packed", "dense", "reference")


def _check(arch: Arch, padding: str, strategy: str | None) -> None:
    case = prepared(arch, padding)
    assert len(converted_layers(case.converted)) == 2
    actual = run(case.converted, case.inputs, strategy).last_hidden_state
    assert_close_on_frames(actual, case.expected, case.real_frames)


@pytest.mark.parametrize(("arch", "strategy"), strategy_params(STRATEGIES, MASKED_ARCHS))
def test_right_padded_batch_matches_original_on_real_frames(arch: Arch, strategy: str | None) -> None:
    _check(arch, "right", strategy)


@pytest.mark.parametrize(("arch", "strategy"), strategy_params((None, "packed", "dense", "reference"), MASKED_ARCHS))
def test_left_padded_batch_matches_original_on_the_frames_the_model_counts_real(
    arch: Arch, strategy: str | None
) -> None:
    """The model derives its frame mask from each row's sample count, as if right-padded: bt reads the mask
    the layers receive, so it computes exactly what the original computes, on the same frames."""
    _check(arch, "left", strategy)


@pytest.mark.parametrize(("arch", "strategy"), strategy_params(STRATEGIES))
def test_unpadded_batch_matches_original_everywhere(arch: Arch, strategy: str | None) -> None:
    _check(arch, "none", strategy)


def test_the_fused_kernel_runs_where_the_layers_are_its_shape() -> None:
    """Every audio layer but WavLM's is plain multi-head attention, two LayerNorms and exact gelu: the kernel
    computes them, so the fused parametrisations above are not silently skipped. WavLM adds a score bias."""
    assert {arch: reason for arch, reason in FUSED.items() if not arch.startswith("wavlm")} == dict.fromkeys(
        a for a in ARCH_IDS if not a.startswith("wavlm")
    )
    assert FUSED["wavlm"] and "bias" in FUSED["wavlm"]


@pytest.mark.parametrize("arch", MASKED_ARCHS, ids=lambda a: a.id)
def test_padded_frames_are_zero_where_the_packed_path_skips_them(arch: Arch) -> None:
    """What a padded batch gives at padded frames: zeros out of the last layer (bt's contract, as for text).
    Post-norm stacks return them as they are; a stack with a final norm normalises those zeros."""
    original = arch.build()
    inputs = arch.batch(original.config, "right")
    converted = convert_copy(original)
    layer = converted_layers(converted)[-1]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output))
    actual = run(converted, inputs, "packed").last_hidden_state
    handle.remove()
    output = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    padded = ~frame_mask(original, inputs, actual.shape[1])
    assert padded.any()
    assert bool((output[padded] == 0).all())


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_reverse_gives_the_original_back_bit_for_bit(arch: Arch) -> None:
    model = arch.build()
    before = clone_state(model)
    classes = [type(m) for m in model.modules()]
    BetterTransformer.transform(model)
    assert converted_layers(model)
    restored = BetterTransformer.reverse(model)
    state_dicts_identical(before, restored.state_dict())
    assert [type(m) for m in restored.modules()] == classes


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_train_mode_matches_original_with_dropout_layerdrop_and_the_same_gradients(arch: Arch) -> None:
    """Same seed, same dropout masks and LayerDrop draws: probabilities, the attention output, the
    feed-forward's activations and its output are dropped where the original drops them (eager attention:
    SDPA draws its own dropout mask)."""
    dropout = {"attention_dropout": 0.1, "activation_dropout": 0.1}
    if arch.id.startswith("wavlm"):
        # WavLM's attention output comes out of F.multi_head_attention_forward as a (frames, batch) tensor
        # seen as (batch, frames): its dropout mask is drawn in that memory order, bt's in (batch, frames)
        # order. Same placement and rate, other masks for one seed: compared without that dropout.
        dropout |= {"hidden_dropout": 0.0, "layerdrop": 0.3}
    elif arch.masked and arch.id != "speech_to_text":
        dropout |= {"hidden_dropout": 0.1, "layerdrop": 0.3}
    else:
        dropout |= {"dropout": 0.1, "encoder_layerdrop": 0.3}
    original = arch.build(**dropout).train()
    original.set_attn_implementation("eager")
    converted = convert_copy(original).train()
    inputs = arch.batch(original.config, "right")
    outputs = []
    for model in (original, converted):
        torch.manual_seed(7)
        hidden = model(**inputs).last_hidden_state
        keep = frame_mask(original, inputs, hidden.shape[1])
        weights = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(3))
        ((hidden @ weights) * keep).sum().backward()
        outputs.append(hidden.detach())
    assert_close_on_frames(outputs[1], outputs[0], keep)
    problems = _gradient_problems(original, converted)
    assert not problems, "\n".join(problems)


def _gradient_problems(original: torch.nn.Module, converted: torch.nn.Module) -> list[str]:
    """Every parameter whose gradient in ``converted`` differs from ``original``'s: those outside the layers by
    name, the layers' shared and sliced (q/k/v) parameters through the layer's restore plan."""
    problems = []
    reference = dict(original.named_parameters())
    inside = []
    for path, layer in converted.named_modules():
        if layer not in converted_layers(converted):
            continue
        inside.append(f"{path}.")
        shared, sliced, _ = layer._bt_restore_plan
        source = original.get_submodule(path)
        grads = {pname: getattr(layer, attr).grad for pname, attr in shared.items()}
        grads |= {pname: getattr(layer, attr).grad[start:end] for pname, (attr, start, end) in sliced.items()}
        for pname, parameter in source.named_parameters():
            # Neither shared into a fused slot nor sliced: used in place by the adapter (WavLM's gate and bias).
            grad = grads[pname] if pname in grads else layer.original_layer.get_parameter(pname).grad
            if parameter.grad is None or grad is None or not torch.allclose(grad, parameter.grad, atol=ATOL, rtol=1e-4):
                problems.append(f"{path}.{pname}")
    outside = 0
    for name, parameter in converted.named_parameters():
        if not name.startswith(tuple(inside)) and reference[name].grad is not None:
            outside += 1
            if not torch.allclose(parameter.grad, reference[name].grad, atol=ATOL, rtol=1e-4):
                problems.append(name)
    assert outside > 3, "no gradient outside the layers was compared"
    return problems
