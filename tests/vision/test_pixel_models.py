"""Pixel-input encoders: converted outputs equal the original's, under every eligible strategy, in
training mode, and ``reverse`` gives back a bit-identical model."""

from __future__ import annotations

import inspect

import pytest
import torch

from bt_core import BetterTransformer, BetterTransformerError, force_strategy
from bt_core.layer import FUSED_PARAMETERS

from .conftest import (
    ARCH_IDS,
    BATCH,
    PIXEL_ARCHS,
    Arch,
    assert_close,
    clone_state,
    convert,
    converted_layers,
    pixel_inputs,
    run,
    state_dicts_identical,
)


def _num_layers(model: torch.nn.Module) -> int:
    return model.config.num_hidden_layers


@pytest.mark.parametrize("arch", PIXEL_ARCHS, ids=ARCH_IDS)
def test_converted_model_matches_original_pixels(arch: Arch) -> None:
    model = arch.build()
    inputs = pixel_inputs(model)
    expected = run(model, inputs)

    convert(model)
    actual = run(model, inputs)

    assert len(converted_layers(model)) == _num_layers(model)
    assert actual.last_hidden_state.shape[0] == BATCH
    assert_close(actual.last_hidden_state, expected.last_hidden_state)
    if getattr(expected, "pooler_output", None) is not None:
        assert_close(actual.pooler_output, expected.pooler_output)


@pytest.mark.parametrize("strategy", ["fused", "packed", "dense", "reference"])
@pytest.mark.parametrize("arch", PIXEL_ARCHS, ids=ARCH_IDS)
def test_each_eligible_forced_strategy_matches_original(arch: Arch, strategy: str) -> None:
    model = arch.build()
    inputs = pixel_inputs(model)
    expected = run(model, inputs).last_hidden_state
    convert(model)

    if strategy == "fused" and not arch.kernel_activation:
        with force_strategy("fused"), pytest.raises(BetterTransformerError, match="does not compute activation"):
            run(model, inputs)
        return
    with force_strategy(strategy):
        actual = run(model, inputs).last_hidden_state
    assert_close(actual, expected)


@pytest.mark.parametrize("strategy", [None, "fused", "packed", "dense", "reference"])
@pytest.mark.parametrize("arch", PIXEL_ARCHS, ids=ARCH_IDS)
def test_padding_mask_given_to_the_model_matches_original_on_kept_tokens(arch: Arch, strategy: str | None) -> None:
    """transformers 5.x lets several vision models take an ``attention_mask`` over their tokens."""
    model = arch.build()
    if "attention_mask" not in inspect.signature(model.forward).parameters:
        pytest.skip(f"{type(model).__name__} takes no attention_mask in this transformers release")
    if strategy == "fused" and not arch.kernel_activation:
        pytest.skip("the kernel does not compute this activation (refusal tested above)")
    inputs = pixel_inputs(model)
    seq_len = run(model, inputs).last_hidden_state.shape[1]
    mask = torch.ones(BATCH, seq_len, dtype=torch.long)
    mask[1, seq_len // 2 :] = 0
    mask[2, 3:] = 0
    inputs["attention_mask"] = mask
    expected = run(model, inputs).last_hidden_state
    convert(model)
    with force_strategy(strategy):
        actual = run(model, inputs).last_hidden_state
    assert_close(actual, expected, mask.bool())


@pytest.mark.parametrize("arch", PIXEL_ARCHS, ids=ARCH_IDS)
def test_reverse_restores_bit_identical_state_dict(arch: Arch) -> None:
    model = arch.build()
    inputs = pixel_inputs(model)
    before = clone_state(model)
    expected = run(model, inputs).last_hidden_state

    BetterTransformer.reverse(convert(model))

    assert not converted_layers(model)
    state_dicts_identical(before, model.state_dict())
    assert torch.equal(run(model, inputs).last_hidden_state, expected)


@pytest.mark.parametrize("arch", PIXEL_ARCHS, ids=ARCH_IDS)
def test_training_mode_reference_path_matches_and_reaches_every_fused_parameter(arch: Arch) -> None:
    original, converted = arch.build().train(), convert(arch.build()).train()
    inputs = pixel_inputs(original)
    pixels = inputs.pop("pixel_values")

    def forward(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.clone().requires_grad_(True)
        torch.manual_seed(0)
        out = model(pixel_values=x, **inputs).last_hidden_state
        out.pow(2).mean().backward()
        return out.detach(), x.grad

    expected, expected_grad = forward(original)
    actual, actual_grad = forward(converted)

    assert_close(actual, expected)
    torch.testing.assert_close(actual_grad, expected_grad, atol=1e-6, rtol=1e-4)
    for layer in converted_layers(converted):
        for name in FUSED_PARAMETERS:
            param = getattr(layer, name)
            if param is not None and param.requires_grad:  # None: a bias the original lacks
                assert param.grad is not None, f"{layer.bt_layer_name}.{name} got no gradient"
                assert torch.isfinite(param.grad).all()


@pytest.mark.parametrize("arch", PIXEL_ARCHS, ids=ARCH_IDS)
def test_training_step_on_converted_model_survives_reverse(arch: Arch) -> None:
    model = convert(arch.build()).train()
    inputs = pixel_inputs(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(0)
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    optimizer.step()
    model.eval()
    trained = run(model, inputs).last_hidden_state

    BetterTransformer.reverse(model)

    assert_close(run(model, inputs).last_hidden_state, trained)


def test_keep_original_model_leaves_the_input_untouched() -> None:
    arch = PIXEL_ARCHS[0]
    model = arch.build()
    before = clone_state(model)
    inputs = pixel_inputs(model)

    converted = BetterTransformer.transform(model, keep_original_model=True)

    assert converted is not model and not converted_layers(model)
    state_dicts_identical(before, model.state_dict())
    assert_close(run(converted, inputs).last_hidden_state, run(model, inputs).last_hidden_state)


def test_yolos_mid_position_embeddings_stay_between_layers() -> None:
    yolos = next(a for a in PIXEL_ARCHS if a.name == "yolos")
    model = yolos.build()
    assert model.config.use_mid_position_embeddings
    inputs = pixel_inputs(model)
    expected = run(model, inputs).last_hidden_state
    # encoder.interpolation.mid_position_embeddings in 5.2x, encoder.mid_position_embeddings in 5.10
    mid = [p for name, p in model.named_parameters() if name.endswith("mid_position_embeddings")]
    assert len(mid) == 1
    with torch.no_grad():
        mid[0].normal_(0.0, 1.0)  # make them matter
    louder = run(model, inputs).last_hidden_state
    assert not torch.allclose(louder, expected)

    convert(model)
    assert_close(run(model, inputs).last_hidden_state, louder)


def test_vit_mae_seeded_random_masking_matches_original() -> None:
    """Without explicit noise ViT-MAE draws it: the same seed before both runs masks the same patches."""
    mae = next(a for a in PIXEL_ARCHS if a.name == "vit_mae")
    model = mae.build()
    inputs = {"pixel_values": pixel_inputs(model)["pixel_values"]}
    expected = run(model, inputs)
    convert(model)
    actual = run(model, inputs)
    assert torch.equal(actual.mask, expected.mask)
    assert_close(actual.last_hidden_state, expected.last_hidden_state)


@pytest.mark.parametrize(
    "arch", [a for a in PIXEL_ARCHS if a.name in ("vit", "yolos", "data2vec_vision", "dinov2")], ids=lambda a: a.name
)
def test_requested_hidden_states_and_attentions_match_original(arch: Arch) -> None:
    model = arch.build(_attn_implementation="eager")  # sdpa returns no attentions to compare
    assert model.config._attn_implementation == "eager"
    inputs = {**pixel_inputs(model), "output_hidden_states": True, "output_attentions": True}
    expected = run(model, inputs)
    convert(model)
    actual = run(model, inputs)

    assert len(actual.hidden_states) == len(expected.hidden_states)
    for a, e in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert_close(a, e)
    assert len(actual.attentions) == len(expected.attentions) == _num_layers(model)
    for a, e in zip(actual.attentions, expected.attentions, strict=True):
        assert_close(a, e)


def test_a_converted_model_with_folded_scales_pickles(tmp_path) -> None:
    arch = next(a for a in PIXEL_ARCHS if a.name == "dinov2")
    model = convert(arch.build())
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    inputs = pixel_inputs(model)
    assert_close(run(loaded, inputs).last_hidden_state, run(model, inputs).last_hidden_state)
    BetterTransformer.reverse(loaded)
