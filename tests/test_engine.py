"""The execution engine: every strategy exact against the original model, and the choice between them.

Small models only (hidden 64, 2 layers); speed lives in ``bt bench`` and BENCHMARKS.md, never here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from last_hidden import LastHidden
from transformers import BertConfig, BertModel

from bt_core import BetterTransformer, BetterTransformerError, force_strategy
from bt_core import _masks as masks
from bt_core._engine import Strategy, _fused_wins, choose_strategy, record_strategies
from bt_core._masks import NO_MASK, read_mask
from bt_core.layer import LayerCall

SEQ = 12
BATCH = 5
STRATEGIES = ("auto", "fused", "packed", "dense", "reference")

#: Row lengths per padding layout; every layout has a row without padding except "short", whose
#: longest row is shorter than the sequence.
LENGTHS = {
    "right": [12, 7, 3, 10, 1],
    "short": [9, 4, 6, 2, 9],
    "none": [12] * BATCH,
}


def keep_mask(layout: str) -> torch.Tensor:
    """(batch, seq) bool keep mask for a padding layout: right, short (right), left, middle or none."""
    if layout in LENGTHS:
        lengths = torch.tensor(LENGTHS[layout])
        return torch.arange(SEQ)[None, :] < lengths[:, None]
    keep = torch.ones(BATCH, SEQ, dtype=torch.bool)
    if layout == "left":
        for row, length in enumerate([12, 5, 8, 2, 11]):
            keep[row, : SEQ - length] = False
    elif layout == "middle":
        keep[0, 3:7] = False
        keep[2, 1:2] = False
        keep[3, 5:] = False
        keep[4, :2] = False
    else:
        raise ValueError(layout)
    return keep


def mask_form(keep: torch.Tensor, form: str, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The keep mask in one of the forms an encoder layer may receive."""
    if form == "none":
        return None
    if form == "2d-long":
        return keep.long()
    if form == "2d-bool":
        return keep
    if form == "2d-int":
        return keep.int()
    four = keep[:, None, None, :].expand(BATCH, 1, SEQ, SEQ)
    if form == "4d-bool":
        return four
    if form == "4d-min":
        return torch.zeros(four.shape, dtype=dtype).masked_fill(~four, torch.finfo(dtype).min)
    if form == "4d-10000":
        return torch.zeros(four.shape, dtype=dtype).masked_fill(~four, -10000.0)
    raise ValueError(form)


def tiny_config(**overrides: object) -> BertConfig:
    values = dict(
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=100,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return BertConfig(**values)


@pytest.fixture(scope="module")
def models() -> tuple[BertModel, BertModel]:
    torch.manual_seed(0)
    original = BertModel(tiny_config(), add_pooling_layer=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = BetterTransformer.transform(original, keep_original_model=True)
    return original, converted


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def hidden(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(BATCH, SEQ, 64, generator=generator).to(dtype)


def fused_eligible(layout: str, form: str) -> bool:
    return layout in ("right", "short", "none") or form == "none"


def run_converted(
    encoder: torch.nn.Module, states: torch.Tensor, mask: torch.Tensor | None, strategy: str
) -> torch.Tensor:
    with torch.inference_mode(), force_strategy(None if strategy == "auto" else strategy):
        return encoder(states, attention_mask=mask).last_hidden_state


def reference_output(original: BertModel, states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # The original encoder with transformers' own 4-D additive mask.
    with torch.inference_mode():
        return original.encoder(states, attention_mask=mask_form(keep, "4d-min", states.dtype)).last_hidden_state


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", ["right", "short", "left", "middle", "none"])
@pytest.mark.parametrize("form", ["none", "2d-long", "2d-bool", "2d-int", "4d-bool", "4d-min", "4d-10000"])
def test_every_strategy_matches_the_original(models, strategy: str, layout: str, form: str) -> None:
    original, converted = models
    if form == "none" and layout != "none":
        pytest.skip("no mask means no padding")
    keep = keep_mask(layout)
    states = hidden()
    expected = reference_output(original, states, keep)
    mask = mask_form(keep, form)
    if strategy == "fused" and not fused_eligible(layout, form):
        with pytest.raises(BetterTransformerError, match="fused"):
            run_converted(converted.encoder, states, mask, strategy)
        return
    actual = run_converted(converted.encoder, states, mask, strategy)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual[keep], expected[keep], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", ["right", "short", "left", "none"])
def test_whole_model_with_a_2d_mask(models, strategy: str, layout: str) -> None:
    original, converted = models
    keep = keep_mask(layout)
    ids = torch.randint(1, 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = original(ids, attention_mask=keep.long()).last_hidden_state
    if strategy == "fused" and not fused_eligible(layout, "2d-long"):
        pytest.skip("fused refuses left padding (covered above)")
    with torch.inference_mode(), force_strategy(None if strategy == "auto" else strategy):
        actual = converted(ids, attention_mask=keep.long()).last_hidden_state
    torch.testing.assert_close(actual[keep], expected[keep], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", ["right", "left", "none"])
def test_bfloat16(models, strategy: str, layout: str) -> None:
    original, converted = (copy.deepcopy(m).to(torch.bfloat16) for m in models)
    keep = keep_mask(layout)
    states = hidden(torch.bfloat16)
    expected = reference_output(original, states, keep).float()
    if strategy == "fused" and not fused_eligible(layout, "2d-bool"):
        pytest.skip("fused refuses left padding (covered above)")
    actual = run_converted(converted.encoder, states, keep, strategy).float()
    torch.testing.assert_close(actual[keep], expected[keep], atol=0.1, rtol=0.05)


def test_a_causal_mask_runs_dense_or_refuses(models) -> None:
    original, converted = models
    states = hidden()
    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()[None, None].expand(BATCH, 1, SEQ, SEQ)
    with torch.inference_mode():
        expected = original.encoder(states, attention_mask=causal).last_hidden_state
    for strategy in ("auto", "dense", "reference"):
        strategies: set[str] = set()
        with record_strategies(strategies):
            actual = run_converted(converted.encoder, states, causal, strategy)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
        assert strategies <= {"dense", "reference"}
    for strategy in ("packed", "fused"):
        with pytest.raises(BetterTransformerError, match="more than key padding"):
            run_converted(converted.encoder, states, causal, strategy)


def test_packed_stays_packed_between_layers_and_restores_the_padded_shape(models) -> None:
    _, converted = models
    keep = keep_mask("right")
    seen: list[tuple[int, ...]] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
        for layer in converted.encoder.layer
    ]
    try:
        run_converted(converted.encoder, hidden(), keep, "packed")
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [(int(keep.sum()), 64), (BATCH, SEQ, 64)]


def test_packed_output_is_zero_at_padding_except_a_padded_position_zero(models) -> None:
    """Heads read position 0: where it is padding (left padding), packed computes it as the original."""
    original, converted = models
    keep = keep_mask("middle")
    states = hidden()
    out = run_converted(converted.encoder, states, keep, "packed")
    read_by_heads = torch.zeros_like(keep)
    read_by_heads[:, 0] = True
    assert bool((out[~keep & ~read_by_heads] == 0).all())
    expected = reference_output(original, states, keep)
    torch.testing.assert_close(out[:, 0], expected[:, 0], atol=1e-5, rtol=0)


def test_reference_after_a_packed_layer_unpacks(models) -> None:
    """A stack whose second layer must take the reference path (here: forced mid-forward)."""
    original, converted = models
    keep = keep_mask("left")
    states = hidden()
    expected = reference_output(original, states, keep)
    first = converted.encoder.layer[0]
    calls: list[str] = []

    def switch(_module: torch.nn.Module, _inputs: object, _output: object) -> None:
        calls.append("switched")
        force_strategy("reference").__enter__()

    hook = first.register_forward_hook(switch)
    try:
        with torch.inference_mode(), force_strategy("packed"):
            actual = converted.encoder(states, attention_mask=keep).last_hidden_state
    finally:
        hook.remove()
    assert calls == ["switched"]
    torch.testing.assert_close(actual[keep], expected[keep], atol=1e-5, rtol=1e-4)


def test_a_single_layer_called_directly_returns_the_padded_shape(models) -> None:
    _, converted = models
    layer = copy.deepcopy(converted.encoder.layer[0])
    layer.is_first_layer = layer.is_last_layer = True
    keep = keep_mask("right")
    with torch.inference_mode(), force_strategy("packed"):
        out = layer(hidden(), keep[:, None, None, :])
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (BATCH, SEQ, 64)


@pytest.fixture
def mask_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the mask readings (each asks the device a few questions: on a GPU, a stall each)."""
    reads: list[int] = []
    real = masks.read_mask

    def counted(*args: object) -> object:
        reads.append(1)
        return real(*args)

    monkeypatch.setattr(masks, "read_mask", counted)
    return reads


@pytest.mark.parametrize("form", ["2d-long", "4d-min"])
def test_a_padded_batch_mask_is_read_once_per_forward(models, mask_reads: list[int], form: str) -> None:
    original, converted = models
    keep = keep_mask("right")
    states = hidden()
    out = run_converted(converted.encoder, states, mask_form(keep, form), "dense")
    assert len(mask_reads) == 1  # by the first layer; the second reuses it
    assert getattr(masks._held, "layout", None) is None  # the last layer let it go
    torch.testing.assert_close(out[keep], reference_output(original, states, keep)[keep])


def test_a_mask_changed_in_place_is_read_again(models, mask_reads: list[int]) -> None:
    """A later layer handed the same mask object reuses the first layer's reading only while it is unchanged."""
    original, converted = models
    first, second = (copy.deepcopy(layer) for layer in converted.encoder.layer)
    first.is_first_layer, first.is_last_layer = True, False
    second.is_first_layer, second.is_last_layer = False, True
    mask = mask_form(keep_mask("right"), "2d-long")
    states = hidden()
    four = mask[:, None, None, :]  # a view: it shares the buffer's change counter
    with force_strategy("dense"):
        with torch.inference_mode():
            first(states, four)
        mask[:, 4:] = 0  # a buffer reused for the next batch
        with torch.inference_mode():
            out = second(states, four)
    out = out[0] if isinstance(out, tuple) else out
    keep = mask.bool()
    with torch.inference_mode():
        expected = original.encoder.layer[1](states, mask_form(keep, "4d-min"))
    expected = expected[0] if isinstance(expected, tuple) else expected
    assert len(mask_reads) == 2
    torch.testing.assert_close(out[keep], expected[keep])


def test_training_and_autograd_take_the_reference_path(models) -> None:
    original, converted = models
    keep = keep_mask("right")
    states = hidden()
    expected = reference_output(original, states, keep)
    strategies: set[str] = set()
    with record_strategies(strategies):
        actual = converted.encoder(states.requires_grad_(), attention_mask=keep).last_hidden_state
    assert strategies == {"reference"}
    torch.testing.assert_close(actual.detach()[keep], expected[keep], atol=1e-5, rtol=1e-4)


# -- the choice ---------------------------------------------------------------------------------


@pytest.fixture
def layer(models):
    return copy.deepcopy(models[1].encoder.layer[0])


def choose(layer, layout_name: str = "right", states: torch.Tensor | None = None, **kwargs: object) -> Strategy:
    states = hidden() if states is None else states
    keep = keep_mask(layout_name)
    layout = read_mask(keep, BATCH, SEQ)
    with torch.inference_mode():
        return choose_strategy(layer, LayerCall(states), layout, **kwargs)


def test_choice_on_cpu(layer) -> None:
    with torch.inference_mode():
        assert choose_strategy(layer, LayerCall(hidden()), NO_MASK) is Strategy.DENSE
    assert choose(layer, "right") is Strategy.PACKED
    assert choose(layer, "short") is Strategy.PACKED
    assert choose(layer, "left") is Strategy.PACKED
    assert choose(layer, "middle") is Strategy.PACKED
    assert choose(layer, "right", packed_input=True) is Strategy.PACKED


def test_choice_for_a_causal_mask_is_dense(layer) -> None:
    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()[None, None].expand(BATCH, 1, SEQ, SEQ)
    with torch.inference_mode():
        assert choose_strategy(layer, LayerCall(hidden()), read_mask(causal, BATCH, SEQ)) is Strategy.DENSE


def test_choice_for_a_nested_input_is_fused(layer) -> None:
    nested = torch.nested.nested_tensor([torch.randn(3, 64), torch.randn(5, 64)])
    with torch.inference_mode():
        assert choose_strategy(layer, LayerCall(nested), NO_MASK) is Strategy.FUSED


def test_fused_wins_follows_the_measurements() -> None:
    padded = read_mask(keep_mask("right"), BATCH, SEQ)
    cpu = torch.empty(16, 128, 768)
    assert not _fused_wins(cpu, padded)  # CPU: packed beats it at every padding fraction measured
    assert not _fused_wins(cpu, NO_MASK)  # CPU: dense matches it at 128 tokens, beats it on long ones
    cuda = SimpleNamespace(device=torch.device("cuda"))  # stands in for a CUDA tensor
    assert _fused_wins(cuda, padded)  # 0.63x sdpa's time at 50% padding (fp16, H200), dense 0.97x
    assert _fused_wins(cuda, NO_MASK)  # 0.92x of dense's time without padding


def on_cuda(dtype: torch.dtype) -> SimpleNamespace:
    """Stands in for CUDA hidden states (this suite runs without a GPU): what the choice reads of them."""
    return SimpleNamespace(device=torch.device("cuda"), dtype=dtype, is_nested=False, shape=(BATCH, SEQ, 64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_runs_the_fused_kernel_unless_the_padding_is_not_on_the_right(
    layer, dtype: torch.dtype
) -> None:
    assert choose(layer, "right", states=on_cuda(dtype)) is Strategy.FUSED
    with torch.inference_mode():
        assert choose_strategy(layer, LayerCall(on_cuda(dtype)), NO_MASK) is Strategy.FUSED
    assert choose(layer, "left", states=on_cuda(dtype)) is Strategy.DENSE  # cannot be nested; packed is slow there


def test_cuda_float32_never_runs_the_fused_kernel(layer) -> None:
    """On CUDA the kernel's float32 result was 2.2e-4 (relative) off float64, the original's 1.3e-6."""
    assert choose(layer, "right", states=on_cuda(torch.float32)) is Strategy.DENSE
    with force_strategy("fused"), pytest.raises(BetterTransformerError, match="float32 on CUDA less precisely"):
        choose(layer, "right", states=on_cuda(torch.float32))
    with force_strategy("packed"):  # a forced packed run still packs, as on CPU
        assert choose(layer, "right", states=on_cuda(torch.float32)) is Strategy.PACKED


def test_training_chooses_reference(layer) -> None:
    layer.train()
    assert choose(layer, "right") is Strategy.REFERENCE


@pytest.mark.parametrize("strategy", ["fused", "packed", "dense", "reference"])
def test_forced_strategies(layer, strategy: str) -> None:
    expected = Strategy(strategy)
    with force_strategy(strategy):
        assert choose(layer, "right") is expected
    with force_strategy(strategy):
        with torch.inference_mode():
            nothing_to_pack = Strategy.DENSE if strategy == "packed" else expected
            assert choose_strategy(layer, LayerCall(hidden()), NO_MASK) is nothing_to_pack


def test_forced_by_environment(layer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_STRATEGY", "dense")
    assert choose(layer, "right") is Strategy.DENSE
    with force_strategy("packed"):
        assert choose(layer, "right") is Strategy.PACKED  # the context manager wins
    monkeypatch.setenv("BT_STRATEGY", "fastest")
    with pytest.raises(BetterTransformerError, match="not a strategy"):
        choose(layer, "right")


def test_forced_but_ineligible_raises(layer) -> None:
    with force_strategy("fused"), pytest.raises(BetterTransformerError, match="not on the right"):
        choose(layer, "left")
    layer.activation = "gelu_new"
    with force_strategy("fused"), pytest.raises(BetterTransformerError, match="activation"):
        choose(layer, "right")
    layer.activation = "gelu"
    layer.train()
    for strategy in ("fused", "packed", "dense"):
        with force_strategy(strategy), pytest.raises(BetterTransformerError, match="training"):
            choose(layer, "right")
    with force_strategy("reference"):
        assert choose(layer, "right") is Strategy.REFERENCE


def test_fused_refuses_float16_on_cpu(layer) -> None:
    layer = layer.to(torch.float16)
    with force_strategy("fused"), pytest.raises(BetterTransformerError, match="float16"):
        choose(layer, "right", states=hidden(torch.float16))


def test_packed_survives_an_elementwise_op_between_layers(models) -> None:
    """An encoder that transforms the hidden states between layers hands the next layer a new tensor."""
    original, converted = models
    keep = keep_mask("middle")
    states = hidden()
    expected = reference_output(original, states, keep)
    hook = converted.encoder.layer[0].register_forward_hook(lambda _m, _i, out: out * 1.0)
    try:
        actual = run_converted(converted.encoder, states, keep, "packed")
    finally:
        hook.remove()
    torch.testing.assert_close(actual[keep], expected[keep], atol=1e-5, rtol=1e-4)


def test_autocast_runs_packed_and_matches_the_original_under_the_same_autocast(models) -> None:
    """Autocast casts the same ops in both models (projections to bfloat16, norms in float32); the
    residual adds stay out of place so they promote as the original's do."""
    original, converted = models
    keep = keep_mask("right")
    states = hidden()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = original.encoder(states, attention_mask=mask_form(keep, "4d-min")).last_hidden_state
        with record_strategies(set()) as used:
            actual = converted.encoder(states, attention_mask=keep.long()).last_hidden_state
    with torch.inference_mode():
        full_precision = original.encoder(states, attention_mask=mask_form(keep, "4d-min")).last_hidden_state
    assert used == {"packed"}
    assert actual.dtype == expected.dtype
    autocast_error = (expected - full_precision)[keep].abs().max()
    assert (actual - expected)[keep].abs().max() <= autocast_error, "within autocast's own rounding"


def test_autocast_never_runs_the_fused_kernel(layer) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16), force_strategy("fused"):
        with pytest.raises(BetterTransformerError, match="autocast"):
            choose(layer, "right")


@pytest.fixture
def onednn_calls(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """The dtypes of every oneDNN linear the strategies call."""
    from bt_core import _math

    if not _math._ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear")
    calls: list[torch.dtype] = []
    kernel = torch.ops.mkldnn._linear_pointwise

    def spy(x: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(x.dtype)
        return kernel(x, *args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy)
    return calls


@pytest.mark.parametrize("strategy", ["packed", "dense"])
def test_cpu_inference_projections_run_onednn_and_match_the_original(strategy: str, onednn_calls: list) -> None:
    model, ids, mask = _bert_and_batch()
    with torch.inference_mode():
        expected = model(ids, attention_mask=mask).last_hidden_state
        converted = BetterTransformer.transform(model, keep_original_model=True)
        with force_strategy(strategy):
            actual = converted(ids, attention_mask=mask).last_hidden_state
    assert len(onednn_calls) == 2 * 4  # two layers: q/k/v, output, and the feed-forward's two linears
    valid = mask.bool()
    torch.testing.assert_close(actual[valid], expected[valid], atol=1e-5, rtol=0)


def test_tracing_and_training_keep_aten_linears(onednn_calls: list) -> None:
    """oneDNN's kernel is unknown to exporters and has no autograd (autocast: tests/test_autocast.py)."""
    model, ids, mask = _bert_and_batch()
    converted = BetterTransformer.transform(model, keep_original_model=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(LastHidden(converted), (ids, mask), check_trace=False)
    converted.train()(ids, attention_mask=mask).last_hidden_state.sum().backward()
    assert onednn_calls == []


def _bert_and_batch() -> tuple[BertModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    model = BertModel(config).eval()
    mask = keep_mask("right").long()
    return model, torch.randint(1, config.vocab_size, mask.shape), mask


@pytest.mark.parametrize("always", [True, False], ids=["always", "after-overflow"])
def test_the_float16_clamp_keeps_the_fused_paths_padded_shape_on_nested_rows(always: bool) -> None:
    """The next fused layer unnests to the padded shape the batch carries; a clamp that rebuilt the nested
    tensor without it would break the fused path of every clamping layer (Whisper, Speech2Text, BART)."""
    from bt_core._fused import _PADDED_SHAPE
    from bt_core.layer import clamp_float16

    top = torch.finfo(torch.float16).max
    rows = [torch.tensor([[top, 1.0]]), torch.tensor([[-top, 2.0], [3.0, 4.0]])]
    rows = [row.to(torch.float16) for row in rows]
    nested = torch.nested.nested_tensor(rows)
    setattr(nested, _PADDED_SHAPE, (2, 2, 2))
    clamped = clamp_float16(nested, always=always)
    assert getattr(clamped, _PADDED_SHAPE) == (2, 2, 2)
    # Nothing overflowed: only "always" clamps (to max - 1000, as float16 rounds it).
    expected_top = torch.tensor(top - 1000, dtype=torch.float16).item() if always else top
    assert [row.abs().max().item() for row in clamped.unbind()] == [expected_top, expected_top]
