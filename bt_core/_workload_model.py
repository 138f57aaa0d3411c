"""The user's model for ``bt bench --texts``: loaded as the user would run it, and its pooling.

A sentence-transformers folder runs through ``SentenceTransformer.encode`` when the package is installed;
without it, through transformers with the folder's own pooling and normalization. A transformers folder
runs its model with its tokenizer: a sequence-classification head gives logits, anything else the
encoder's hidden states, mean-pooled over real tokens (every real token then counts in the accuracy,
where a CLS pooling would only check position 0).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoadError", "Pooling", "Workload", "load_workload", "run_torch"]

#: Pooling modes computed here exactly as sentence-transformers computes them (in numpy).
_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
#: sentence-transformers' legacy flags in 1_Pooling/config.json, in the order it concatenates them.
_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class LoadError(ValueError):
    """The folder looks like a model but cannot be run as one; the message names the fix."""


@dataclass(frozen=True)
class Pooling:
    """Token states to one vector per text, in numpy, for every row that gets hidden states."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False

    def __call__(self, hidden: Any, mask: Any) -> Any:
        import numpy as np

        weights = mask.astype(hidden.dtype)[:, :, None]
        counts = np.maximum(weights.sum(axis=1), 1e-9)
        parts = []
        for mode in self.modes:
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(np.where(weights > 0, hidden, -1e9).max(axis=1))
            elif mode == "mean":
                parts.append((hidden * weights).sum(axis=1) / counts)
            else:  # mean_sqrt_len_tokens
                parts.append((hidden * weights).sum(axis=1) / np.sqrt(counts))
        pooled = np.concatenate(parts, axis=1)
        if self.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled

    def describe(self) -> str:
        return "+".join(self.modes) + " pooling" + (", normalized" if self.normalize else "")


@dataclass
class Workload:
    """What every row runs: the same tokenizer, truncation, output and pooling."""

    folder: Path
    kind: str  # "embedding" (min cosine) or "logits" (max |difference|)
    source: str  # one line: what was loaded and how the original row runs it
    model: Any  # the transformers model: what bt converts and what is exported to ONNX
    tokenizer: Any
    max_length: int | None
    lower_case: bool = False
    pooling: Pooling | None = None  # None for logits
    encoder: Any | None = None  # the SentenceTransformer, when encode is what the user runs
    not_replicable: str | None = None  # why other runtimes cannot reproduce the pipeline
    notes: list[str] = field(default_factory=list)

    def tokenize(self, texts: list[str], tensors: str) -> dict[str, Any]:
        if self.lower_case:
            texts = [text.lower() for text in texts]
        return dict(
            self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors=tensors)
        )

    def attention_mask(self, texts: list[str]) -> Any:
        return self.tokenize(texts, "np")["attention_mask"]

    def finish(self, output: Any, mask: Any) -> Any:
        """Pool a batch's hidden states (logits pass through), all as float32 numpy."""
        import numpy as np

        output = np.asarray(output, dtype=np.float32)
        return output if self.pooling is None else self.pooling(output, mask)


def run_torch(
    workload: Workload, model: Any, context: Callable[[], Any] | None = None, *, bare: bool = False
) -> Callable[[list[str]], Any]:
    """A row's call on one batch for ``model`` (the original or a copy): encode, or tokenize-forward-pool.

    ``bare``: a sentence-transformers model (or copy) runs the tokenize-forward-pool loop of the runtime rows
    on its transformers model, instead of ``encode``.
    """
    import torch

    enter = context or contextlib.nullcontext
    if workload.encoder is not None and bare:
        model = model[0].auto_model
    elif workload.encoder is not None:

        def encode(batch: list[str]) -> Any:
            with enter():
                out = model.encode(batch, batch_size=len(batch), convert_to_tensor=True, show_progress_bar=False)
            return out.float().numpy()

        return encode

    def forward(batch: list[str]) -> Any:
        inputs = workload.tokenize(batch, "pt")
        with torch.inference_mode(), enter():
            out = model(**inputs)
        tensor = out.logits if workload.kind == "logits" else out[0]
        return workload.finish(tensor.float().numpy(), inputs["attention_mask"].numpy())

    return forward


def load_workload(folder: Path, quiet: bool) -> Workload:
    """Load ``folder`` as the user would; raises :class:`LoadError` naming the fix."""
    with _transformers_progress(not quiet):
        if (folder / "modules.json").is_file():
            return _sentence_transformers(folder)
        return _transformers(folder)


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """transformers' own loading bars, off with --quiet."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    if not enabled:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise LoadError(f"{path} is not valid JSON ({exc}); restore it from the model's original folder") from None


def _sentence_transformers(folder: Path) -> Workload:
    modules = json.loads((folder / "modules.json").read_text())
    kinds = {entry["type"].rsplit(".", 1)[-1]: entry.get("path", "") for entry in modules}
    if "Transformer" not in kinds:
        raise LoadError(f"{folder}/modules.json has no Transformer module; bt bench --texts times transformer encoders")
    base = folder / kinds["Transformer"]
    settings = _read_json(base / "sentence_bert_config.json")
    pooling_config = _read_json(folder / kinds["Pooling"] / "config.json") if "Pooling" in kinds else None
    modes = _pooling_modes(pooling_config) if pooling_config is not None else ()
    extra = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    not_replicable = None
    if pooling_config is None:
        not_replicable = "the pipeline has no Pooling module"
    elif any(mode not in _MODES for mode in modes):
        not_replicable = f"pooling {'+'.join(modes)} is not reproduced outside sentence-transformers"
    elif extra:
        not_replicable = f"modules {', '.join(extra)} after pooling run only in sentence-transformers"
    pooling = Pooling(tuple(modes), "Normalize" in kinds) if not_replicable is None else None
    lower_case = bool(settings.get("do_lower_case", False))
    try:
        import sentence_transformers
    except ImportError:
        sentence_transformers = None
    if sentence_transformers is not None:
        encoder = sentence_transformers.SentenceTransformer(str(folder), device="cpu").eval()
        model = encoder[0].auto_model
        what = pooling.describe() if pooling else not_replicable
        source = f"sentence-transformers {type(model).__name__} ({what}), run through SentenceTransformer.encode"
        return Workload(
            folder, "embedding", source, model, encoder.tokenizer, encoder.max_seq_length, lower_case,
            pooling, encoder, not_replicable,
        )  # fmt: skip
    if not_replicable is not None:
        raise LoadError(
            f"{folder} is a sentence-transformers model whose {not_replicable}, and sentence-transformers is "
            "not installed: pip install 'bt-core[sentence-transformers]'"
        )
    import transformers

    try:
        model = transformers.AutoModel.from_pretrained(base).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise LoadError(f"{base} could not be loaded by transformers: {_one_line(exc)}") from None
    max_length = settings.get("max_seq_length") or None
    source = (
        f"sentence-transformers {type(model).__name__} ({pooling.describe()}), run through transformers with the "
        "folder's pooling: sentence-transformers is not installed (pip install 'bt-core[sentence-transformers]' "
        "to time encode itself)"
    )
    return Workload(folder, "embedding", source, model, tokenizer, max_length, lower_case, pooling)


def _pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The pooling modes of a 1_Pooling/config.json, new style (``pooling_mode``) or legacy flags."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return tuple(mode) if isinstance(mode, list) else (str(mode),)
    modes = tuple(name for flag, name in _LEGACY_FLAGS.items() if config.get(flag))
    return modes or ("mean",)


def _transformers(folder: Path) -> Workload:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise LoadError(
            f"{folder} could not be loaded by transformers ({_one_line(exc)}); it needs config.json, the weights "
            "and the tokenizer files that save_pretrained writes"
        ) from None
    architecture = (getattr(config, "architectures", None) or [None])[0]
    head = getattr(transformers, architecture, None) if architecture else None
    notes = []
    try:
        if head is not None and architecture.endswith("ForSequenceClassification"):
            model = head.from_pretrained(folder).eval()
            kind = "logits"
            source = f"transformers {architecture}: logits, compared as max |difference|"
        else:
            model = transformers.AutoModel.from_pretrained(folder).eval()
            kind = "embedding"
            source = f"transformers {type(model).__name__}: last hidden states, mean-pooled over real tokens"
            if architecture and architecture != type(model).__name__:
                notes.append(f"{architecture}'s head is not timed: rows run its encoder, {type(model).__name__}")
    except (OSError, ValueError) as exc:
        raise LoadError(f"{folder} could not be loaded by transformers: {_one_line(exc)}") from None
    # The tokenizer's limit, bounded by the position table (a tokenizer saved without one says "no limit").
    limits = [getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None)]
    max_length = min((n for n in limits if isinstance(n, int) and n > 0), default=None)
    pooling = Pooling(("mean",)) if kind == "embedding" else None
    return Workload(folder, kind, source, model, tokenizer, max_length, pooling=pooling, notes=notes)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
