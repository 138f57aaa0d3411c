"""``torch.export.export`` and ``torch.onnx.export(..., dynamo=True)`` of a converted model: the exported
program matches the original on the export batch and on another padding layout, or the export fails
with a bt error that says it is about export (never torch's generic data-dependent guard error)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import pytest
import torch

from bt_core import BetterTransformer, BetterTransformerError

from .conftest import OTHER_LENGTHS, UNPADDED, LastHiddenState, assert_close_on_real, batch, build_bert, run

LAYOUTS = {"export-batch": None, "other-padding": OTHER_LENGTHS, "unpadded": UNPADDED}


def export_program(model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> Callable[..., torch.Tensor]:
    program = torch.export.export(LastHiddenState(model), (inputs["input_ids"], inputs["attention_mask"]))
    module = program.module()
    return lambda ids, mask: module(ids, mask)


def export_onnx(model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> Callable[..., torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            LastHiddenState(model),
            (inputs["input_ids"], inputs["attention_mask"]),
            dynamo=True,
            verbose=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
        )
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda ids, mask: torch.from_numpy(
        session.run(["last_hidden_state"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    )


EXPORTERS = {"torch.export": export_program, "onnx-dynamo": export_onnx}


def bt_refusal(error: BaseException | None) -> BetterTransformerError | None:
    """The bt error that ``error`` is or wraps (the ONNX exporter re-raises torch.export's errors as its own)."""
    while error is not None:
        if isinstance(error, BetterTransformerError):
            return error
        error = error.__cause__ or error.__context__
    return None


def check(exporter: str, model: torch.nn.Module, target: torch.nn.Module, tmp_path: Path) -> None:
    exported_on = batch(model.config)
    try:
        with torch.no_grad():
            program = EXPORTERS[exporter](target, exported_on, tmp_path / "bert.onnx")
    except Exception as error:
        refusal = bt_refusal(error)
        if refusal is None:
            raise
        assert "export" in str(refusal), f"the refusal does not say it is about export: {refusal}"
        return
    for lengths in LAYOUTS.values():
        inputs = exported_on if lengths is None else batch(model.config, lengths)
        with torch.no_grad():
            actual = program(inputs["input_ids"], inputs["attention_mask"])
        assert_close_on_real(actual, run(model, inputs).last_hidden_state, inputs["attention_mask"])


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_export_of_converted_model_matches_original_or_is_refused_by_bt(exporter: str, tmp_path: Path) -> None:
    model = build_bert()
    check(exporter, model, BetterTransformer.transform(model, keep_original_model=True), tmp_path)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_export_of_original_model_matches_original(exporter: str, tmp_path: Path) -> None:
    # The harness: transformers' BERT itself exports to a program right for any padding layout.
    model = build_bert()
    check(exporter, model, model, tmp_path)
