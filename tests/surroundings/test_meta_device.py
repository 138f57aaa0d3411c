"""A model whose parameters are on the meta device (built under ``torch.device("meta")``, with or
without ``torch.inference_mode()``) has no weights to fuse: refused, the model left as it was."""

from __future__ import annotations

import contextlib

import pytest
import torch
import transformers

from bt_core import BetterTransformer, BetterTransformerError

from .conftest import assert_unchanged, snapshot, text_config


@pytest.mark.parametrize("inference", [False, True], ids=["meta", "meta-inference-mode"])
def test_model_on_meta_device_is_refused_unchanged(inference: bool) -> None:
    with torch.device("meta"), torch.inference_mode() if inference else contextlib.nullcontext():
        model = transformers.BertModel(text_config()).eval()
    layer_classes = [type(layer) for layer in model.encoder.layer]
    before = snapshot(model)
    with pytest.raises(BetterTransformerError, match="meta"):
        BetterTransformer.transform(model)
    assert_unchanged(model, before)
    assert [type(layer) for layer in model.encoder.layer] == layer_classes
    assert all(p.device.type == "meta" for p in model.parameters())
