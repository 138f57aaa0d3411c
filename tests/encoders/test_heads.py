"""Task-head models (classification, token classification, masked LM) give the original logits."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers.models.auto import modeling_auto

from .conftest import CASES, SEQ2SEQ_TYPES, Case, assert_close_on_valid, build, convert_copy, make_batch

HEADS: dict[str, tuple[str, dict[str, str]]] = {
    "sequence-classification": (
        "AutoModelForSequenceClassification",
        modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    ),
    "token-classification": (
        "AutoModelForTokenClassification",
        modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    ),
    "masked-lm": ("AutoModelForMaskedLM", modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
    "question-answering": ("AutoModelForQuestionAnswering", modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES),
}
#: The heads every architecture is tested with when transformers has them; question answering
#: only for architectures that have none of these (Splinter).
MAIN_HEADS = ("sequence-classification", "token-classification", "masked-lm")
#: Types whose ``...ForSequenceClassification`` is a seq2seq model (encoder and decoder, eos tokens).
SEQ2SEQ_CLASSIFIERS = frozenset({"t5", "mt5", "umt5"}) | SEQ2SEQ_TYPES


def head_params() -> list[Any]:
    params = []
    for case in CASES:
        if case.id != case.model_type:
            continue  # variants change the layer, not the heads
        heads = [h for h in MAIN_HEADS if case.model_type in HEADS[h][1]]
        if case.model_type in SEQ2SEQ_CLASSIFIERS:  # their classifier runs the decoder: test_t5/test_seq2seq.py
            heads = [h for h in heads if h != "sequence-classification"]
        if not heads and case.model_type in HEADS["question-answering"][1]:
            heads = ["question-answering"]
        params += [pytest.param(case, head, id=f"{case.id}-{head}") for head in heads]
    return params


def test_every_architecture_with_task_heads_is_covered() -> None:
    covered = {p.values[0].model_type for p in head_params()}
    # BertGeneration has only an encoder and a (refused) causal decoder: no task head to test. Seq2seq
    # types without such heads have their generation model's logits tested in test_seq2seq.py.
    assert {c.model_type for c in CASES} - covered - SEQ2SEQ_TYPES == {"bert-generation"}


@pytest.mark.parametrize(("case", "head"), head_params())
def test_task_head_logits_match_original(case: Case, head: str) -> None:
    import transformers

    model_class = getattr(transformers, HEADS[head][0])
    original = build(case, model_class, num_labels=3)
    converted = convert_copy(original)
    inputs = make_batch(original.config, "padded")
    mask = inputs["attention_mask"]
    with torch.inference_mode():
        expected = original(**inputs)
        actual = converted(**inputs)
    if head == "sequence-classification":
        assert actual.logits.shape == expected.logits.shape == (3, 3)
        torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=0)
    elif head == "question-answering":
        assert_close_on_valid(actual.start_logits, expected.start_logits, mask)
        assert_close_on_valid(actual.end_logits, expected.end_logits, mask)
    else:
        assert_close_on_valid(actual.logits, expected.logits, mask)
