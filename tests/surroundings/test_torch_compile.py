"""``torch.compile`` of a converted model: padded batches match the original, including a second
batch of the same shape with another padding layout (which must not reuse the first one's rows)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bt_core import BetterTransformer

from .conftest import OTHER_LENGTHS, UNPADDED, assert_close_on_real, batch, build_bert, run

#: inductor compiles the tiny BERT in about 15 s on the 2-core test machine.
BACKENDS = ["eager", "aot_eager", "inductor"]


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_converted_model_matches_original_on_every_padding_layout(backend: str) -> None:
    model = build_bert()
    layouts = [batch(model.config), batch(model.config, OTHER_LENGTHS), batch(model.config, UNPADDED)]
    expected = [run(model, inputs) for inputs in layouts]
    compiled = torch.compile(BetterTransformer.transform(model, keep_original_model=True), backend=backend)
    for inputs, original in zip(layouts, expected, strict=True):
        actual = run(compiled, inputs)
        assert_close_on_real(actual.last_hidden_state, original.last_hidden_state, inputs["attention_mask"])
        assert_close_on_real(actual.pooler_output, original.pooler_output)


def test_compiled_converted_classifier_matches_original() -> None:
    model = build_bert("BertForSequenceClassification", num_labels=3)
    layouts = [batch(model.config), batch(model.config, OTHER_LENGTHS)]
    expected = [run(model, inputs).logits for inputs in layouts]
    compiled = torch.compile(BetterTransformer.transform(model, keep_original_model=True), backend="eager")
    for inputs, logits in zip(layouts, expected, strict=True):
        assert_close_on_real(run(compiled, inputs).logits, logits)
