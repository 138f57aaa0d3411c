"""output_hidden_states / output_attentions: transformers 5.x records them with hooks on layer
classes; a converted model must record the same tensors, before and after reverse."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from bt_core import BetterTransformer

pytest.importorskip("bt_plugins_encoders")


def _bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    return BertModel._from_config(config, attn_implementation="eager").eval()


IDS = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])


def _outputs(model: torch.nn.Module):
    with torch.inference_mode():
        return model(IDS, attention_mask=MASK, output_hidden_states=True, output_attentions=True)


def _assert_same_outputs(actual, expected) -> None:
    assert len(actual.hidden_states) == len(expected.hidden_states) == 4
    assert len(actual.attentions) == len(expected.attentions) == 3
    valid = MASK[..., None].bool()
    for got, want in zip(actual.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(got * valid, want * valid, atol=1e-5, rtol=0)
    keys = MASK[:, None, None, :].bool()
    queries = MASK[:, None, :, None].bool()
    for got, want in zip(actual.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(got * keys * queries, want * keys * queries, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ran_before_conversion", [False, True], ids=["fresh", "already-run"])
def test_hidden_states_and_attentions_match_the_original(ran_before_conversion: bool) -> None:
    model = _bert()
    expected = _outputs(model)
    if not ran_before_conversion:
        model = _bert()
    converted = BetterTransformer.transform(model)
    _assert_same_outputs(_outputs(converted), expected)


def test_outputs_are_recorded_again_after_reverse() -> None:
    model = _bert()
    expected = _outputs(model)
    converted = BetterTransformer.transform(model)
    _outputs(converted)
    _assert_same_outputs(_outputs(BetterTransformer.reverse(converted)), expected)


def test_plain_calls_record_nothing() -> None:
    converted = BetterTransformer.transform(_bert())
    with torch.inference_mode():
        output = converted(IDS, attention_mask=MASK)
    assert output.hidden_states is None and output.attentions is None


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_converted_model_records_outputs_too(tmp_path, how: str) -> None:
    import copy

    model = _bert()
    expected = _outputs(model)
    converted = BetterTransformer.transform(model)
    if how == "deepcopy":
        clone = copy.deepcopy(converted)
    else:
        torch.save(converted, tmp_path / "model.pt")
        clone = torch.load(tmp_path / "model.pt", weights_only=False)
    _assert_same_outputs(_outputs(clone), expected)


def test_requested_hidden_states_take_a_fast_path_and_match_at_every_position() -> None:
    """Hidden states alone (what 5.2x classification heads of speech models always ask for) run ``dense``,
    which computes padded positions as the original does; attention probabilities need ``reference``."""
    from bt_core._strategy import record_strategies

    model = _bert()
    with torch.inference_mode():
        expected = model(IDS, attention_mask=MASK, output_hidden_states=True).hidden_states
        converted = BetterTransformer.transform(model)
        with record_strategies(set()) as ran:
            actual = converted(IDS, attention_mask=MASK, output_hidden_states=True).hidden_states
        with record_strategies(set()) as ran_with_attentions:
            converted(IDS, attention_mask=MASK, output_hidden_states=True, output_attentions=True)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # padded positions included
    assert ran <= {"dense", "packed"} and "reference" not in ran
    assert ran_with_attentions == {"reference"}
