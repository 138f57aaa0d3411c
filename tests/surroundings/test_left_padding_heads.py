"""Heads and poolers that read position 0 (the CLS token) on left-padded batches.

Under left padding position 0 of a short row is a pad position, and the original model computes a
hidden state there that its classifier or pooler reads. A converted model must give the same logits
and pooler output; right-padded batches keep the fast ``packed`` path.
"""

from __future__ import annotations

import pytest

from bt_core import BetterTransformer
from bt_core._engine import record_strategies

from .conftest import assert_close_on_real, batch, build_text, run

#: (model type, sequence-classification head) of the text families whose heads read position 0.
CLS_HEADS = [
    ("bert", "BertForSequenceClassification"),
    ("roberta", "RobertaForSequenceClassification"),
    ("electra", "ElectraForSequenceClassification"),
    ("distilbert", "DistilBertForSequenceClassification"),
    ("xlm-roberta", "XLMRobertaForSequenceClassification"),
]


@pytest.mark.parametrize(("model_type", "head"), CLS_HEADS, ids=[t for t, _ in CLS_HEADS])
@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "right-padded"])
def test_sequence_classification_logits_match_original(model_type: str, head: str, left: bool) -> None:
    model = build_text(head, model_type, num_labels=3)
    inputs = batch(model.config, left=left)
    expected = run(model, inputs).logits
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert_close_on_real(run(converted, inputs).logits, expected)


#: Base models with a pooler over position 0 (ELECTRA and DistilBERT have none).
POOLERS = [("bert", "BertModel"), ("roberta", "RobertaModel"), ("xlm-roberta", "XLMRobertaModel")]


@pytest.mark.parametrize(("model_type", "model_class"), POOLERS, ids=[t for t, _ in POOLERS])
@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "right-padded"])
def test_pooler_output_matches_original(model_type: str, model_class: str, left: bool) -> None:
    model = build_text(model_class, model_type)
    inputs = batch(model.config, left=left)
    expected = run(model, inputs)
    converted = BetterTransformer.transform(model, keep_original_model=True)
    actual = run(converted, inputs)
    assert_close_on_real(actual.pooler_output, expected.pooler_output)
    assert_close_on_real(actual.last_hidden_state, expected.last_hidden_state, inputs["attention_mask"])


def test_right_padded_cpu_batch_keeps_the_packed_path() -> None:
    model = BetterTransformer.transform(build_text("BertForSequenceClassification", num_labels=3))
    with record_strategies(set()) as ran:
        run(model, batch(model.config))
    assert ran == {"packed"}
