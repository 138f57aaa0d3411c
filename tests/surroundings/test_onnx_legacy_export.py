"""``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter) of a converted model, run with
onnxruntime: right on the batch it was exported with and on another padding layout of that shape."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime
import pytest
import torch

from bt_core import BetterTransformer

from .conftest import OTHER_LENGTHS, UNPADDED, LastHiddenState, assert_close_on_real, batch, build_bert, run


def export(model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> onnxruntime.InferenceSession:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the legacy exporter
        torch.onnx.export(
            LastHiddenState(model),
            (inputs["input_ids"], inputs["attention_mask"]),
            str(path),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
        )
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(session: onnxruntime.InferenceSession, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    feed = {name: inputs[name].numpy() for name in ("input_ids", "attention_mask")}
    return torch.from_numpy(session.run(["last_hidden_state"], feed)[0])


@pytest.mark.parametrize("lengths", [None, OTHER_LENGTHS, UNPADDED], ids=["export-batch", "other-padding", "unpadded"])
def test_legacy_onnx_export_of_converted_model_matches_original(lengths: tuple | None, tmp_path: Path) -> None:
    model = build_bert()
    exported_on = batch(model.config)
    inputs = exported_on if lengths is None else batch(model.config, lengths)
    expected = run(model, inputs).last_hidden_state
    session = export(BetterTransformer.transform(model, keep_original_model=True), exported_on, tmp_path / "bert.onnx")
    assert_close_on_real(run_onnx(session, inputs), expected, inputs["attention_mask"])


def test_legacy_onnx_export_of_original_matches_original_on_other_padding(tmp_path: Path) -> None:
    # The harness: transformers' BERT itself exports to a program right for any padding layout.
    model = build_bert()
    inputs = batch(model.config, OTHER_LENGTHS)
    session = export(model, batch(model.config), tmp_path / "bert.onnx")
    assert_close_on_real(run_onnx(session, inputs), run(model, inputs).last_hidden_state, inputs["attention_mask"])
