"""ONNX Runtime and OpenVINO rows of ``bt bench --texts``: the user's model exported to ONNX once, each
runtime given its best graph, run on the same tokenizer, batches and pooling as the PyTorch rows.

Both runtimes are optional (``pip install "bt-core[onnx,openvino]"``); a missing one, or one that fails
to export or compile, becomes a row saying why instead of an error.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._workload_model import Workload

__all__ = ["OnnxExport", "RuntimeUnavailable", "missing", "onnxruntime_row", "openvino_compiled", "openvino_row"]

#: Model types whose layers have BERT's shape, for which ONNX Runtime's transformer optimizer fuses
#: embeddings, attention, bias-gelu and skip-layer-norms (``optimize_model(..., model_type="bert")``).
BERT_FAMILY = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text", "layoutlm", "splinter"}
)
#: The extra of bt-core that installs each runtime.
EXTRAS = {"onnxruntime": "onnx", "onnx": "onnx", "openvino": "openvino"}

Run = Callable[[list[str]], Any]


class RuntimeUnavailable(RuntimeError):
    """A runtime that cannot run this model here; the message is the row's one-line reason."""


def missing(*modules: str) -> str | None:
    """The row's reason when one of ``modules`` cannot be imported, else None."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            return f'not installed (pip install "bt-core[{EXTRAS.get(module, module)}]")'
    return None


def _reason(action: str, exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{action} failed: {type(exc).__name__}: {lines[0][:160] if lines else ''}"


@contextlib.contextmanager
def _hushed() -> Iterator[None]:
    """Exporter and optimizer chatter (warnings, INFO logs) off; a failure is still raised."""
    loggers = [logging.getLogger(name) for name in ("onnxruntime", "onnxruntime.transformers", "fusion_base")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@dataclass
class OnnxExport:
    """The workload's model in ONNX (fp32, eager attention), exported on first use into ``directory``."""

    workload: Workload
    sample: list[str]
    directory: Path
    names: list[str] = field(default_factory=list)
    _paths: dict[str, Path] = field(default_factory=dict)
    _fused: str = ""  # what ONNX Runtime's optimizer fused, for the row's note

    def plain(self) -> Path:
        """The exported graph, as the exporter wrote it (what OpenVINO reads)."""
        if "plain" not in self._paths:
            try:
                self._paths["plain"] = self._export()
            except Exception as exc:  # any exporter failure becomes the rows' reason
                raise RuntimeUnavailable(_reason("ONNX export", exc)) from exc
        return self._paths["plain"]

    def _export(self) -> Path:
        import torch

        model = copy.deepcopy(self.workload.model).float().eval()
        # Eager attention: its matmul-softmax-matmul is the pattern ONNX Runtime's fusion and OpenVINO's
        # transformations recognise; an sdpa export hides it behind the mask-building code.
        with contextlib.suppress(AttributeError, ValueError):
            model.set_attn_implementation("eager")
        inputs = self.workload.tokenize(self.sample, "pt")
        accepted = inspect.signature(model.forward).parameters
        names = self.names = [name for name in inputs if name in accepted]
        logits = self.workload.kind == "logits"

        class Output(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: Any) -> Any:
                out = self.model(**dict(zip(names, tensors, strict=True)))
                return out.logits if logits else out[0]

        axes = {name: {0: "batch", 1: "sequence"} for name in self.names}
        axes["output"] = {0: "batch"} if logits else {0: "batch", 1: "sequence"}
        path = self.directory / "model.onnx"
        with _hushed(), torch.no_grad():
            # The TorchScript exporter: its BERT graph is the one ONNX Runtime's optimizer fuses fully.
            torch.onnx.export(
                Output(), tuple(inputs[name] for name in self.names), str(path), input_names=self.names,
                output_names=["output"], dynamic_axes=axes, opset_version=17, dynamo=False,
            )  # fmt: skip
        return path

    def optimized(self) -> tuple[Path, str]:
        """ONNX Runtime's best graph for the architecture, and what was fused."""
        if "optimized" in self._paths:
            return self._paths["optimized"], self._fused
        config = self.workload.model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in BERT_FAMILY:
            self._paths["optimized"], self._fused = self.plain(), "ONNX Runtime's own graph optimizations"
            return self._paths["optimized"], self._fused
        plain = self.plain()
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            with _hushed():
                optimized = optimize_model(
                    str(plain), model_type="bert", num_heads=int(config.num_attention_heads),
                    hidden_size=int(config.hidden_size),
                )  # fmt: skip
                path = self.directory / "model.optimized.onnx"
                optimized.save_model_to_file(str(path))
            fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        except Exception as exc:
            raise RuntimeUnavailable(_reason("ONNX Runtime's BERT optimizer", exc)) from exc
        note = "BERT optimizer: " + (", ".join(f"{op} x{n}" for op, n in fused.items()) or "nothing fused")
        self._paths["optimized"], self._fused = path, note
        return path, note


def onnxruntime_row(export: OnnxExport, threads: int, int8: bool = False) -> tuple[Run, str]:
    """ONNX Runtime on the optimized graph (dynamically quantized to int8 with ``int8``): the call and a note."""
    import numpy as np
    import onnxruntime

    graph, note = export.optimized()
    if int8:
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
            from onnxruntime.quantization.shape_inference import quant_pre_process

            inferred = export.directory / "model.shapes.onnx"
            quantized = export.directory / "model.int8.onnx"
            with _hushed():
                # The quantizer needs every tensor's type; the optimizer's fused graph lacks some until
                # symbolic shape inference fills them (its own graph rewrites skipped: already done).
                quant_pre_process(str(graph), str(inferred), skip_optimization=True)
                quantize_dynamic(str(inferred), str(quantized), weight_type=QuantType.QInt8)
        except Exception as exc:
            raise RuntimeUnavailable(_reason("dynamic int8 quantization", exc)) from exc
        graph, note = quantized, note + "; weights int8, activations quantized per batch"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeUnavailable(_reason("ONNX Runtime session", exc)) from exc
    # The optimizer may turn the id inputs into int32: feed each input the type the graph declares.
    types = {i.name: (np.int32 if i.type == "tensor(int32)" else np.int64) for i in session.get_inputs()}
    workload = export.workload

    def run(batch: list[str]) -> Any:
        inputs = workload.tokenize(batch, "np")
        feed = {name: inputs[name].astype(types[name]) for name in export.names if name in types}
        return workload.finish(session.run(None, feed)[0], inputs["attention_mask"])

    return run, note


def openvino_compiled(graph: Path, threads: int, precision: str = "f32", perf_count: bool = False) -> Any:
    """``graph`` compiled by OpenVINO for the CPU, ``precision`` as its inference precision (``perf_count``:
    per-node timings kept for ``get_profiling_info``)."""
    import openvino

    core = openvino.Core()
    # One synchronous request per batch, as every row runs: the LATENCY hint gives that request all the
    # threads, where THROUGHPUT would split them into streams only parallel requests could fill.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
    try:
        return core.compile_model(core.read_model(str(graph)), "CPU", {**config, "PERF_COUNT": perf_count})
    except Exception as exc:
        raise RuntimeUnavailable(_reason("OpenVINO compile", exc)) from exc


def openvino_row(export: OnnxExport, threads: int, precision: str = "f32") -> tuple[Run, str]:
    """OpenVINO on the exported graph, compiled for the CPU with ``precision`` as inference precision."""
    import numpy as np

    compiled = openvino_compiled(export.plain(), threads, precision)
    request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    actual = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # an openvino.Type: "f32", "bf16"
    note = f"read from ONNX, LATENCY hint, {threads} thread(s), inference precision {actual}"
    workload = export.workload

    def run(batch: list[str]) -> Any:
        inputs = workload.tokenize(batch, "np")
        request.infer({name: inputs[name].astype(np.int64) for name in export.names})
        # The output tensor is the request's own buffer, reused by the next call: copy it out.
        output = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        return workload.finish(output, inputs["attention_mask"])

    return run, note
