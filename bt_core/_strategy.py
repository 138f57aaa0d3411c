"""The strategies, and the one place that chooses between them for a call.

- ``fused``: ``torch._transformer_encoder_layer_fwd`` on a nested tensor (``_fused``).
- ``packed``: real tokens only, attention per row, short rows together (``_packing``).
- ``dense``: ordinary ops and SDPA on the padded batch with the mask as given.
- ``reference``: differentiable math attention with dropout, head mask and the probabilities.

On CPU the choice is ``packed`` with padding and ``dense`` without; the fused kernel is kept for
padded batches on CUDA. The numbers behind it are in :func:`_fused_wins` and BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._hf_compat import output_capture_requested
from ._masks import MaskLayout, is_right_padded
from ._validate import kernel_blocker
from .errors import BetterTransformerError

if TYPE_CHECKING:
    from .layer import BetterTransformerBaseLayer, LayerCall


class Strategy(str, Enum):
    FUSED = "fused"
    PACKED = "packed"
    DENSE = "dense"
    REFERENCE = "reference"


_forced = threading.local()
_STRATEGY_ENV = "BT_STRATEGY"


@contextlib.contextmanager
def force_strategy(strategy: Strategy | str | None) -> Iterator[None]:
    """Run every converted layer with ``strategy`` inside the block (for debugging and tests).

    A forced strategy that cannot run a call exactly raises instead of falling back.
    ``BT_STRATEGY=<name>`` in the environment does the same for a whole process.
    """
    previous = getattr(_forced, "value", None)
    _forced.value = None if strategy is None else Strategy(strategy)
    try:
        yield
    finally:
        _forced.value = previous


@contextlib.contextmanager
def record_strategies(into: set[str]) -> Iterator[set[str]]:
    """Add the name of every strategy a converted layer runs inside the block to ``into`` (``bt bench``)."""
    previous = getattr(_forced, "record", None)
    _forced.record = into
    try:
        yield into
    finally:
        _forced.record = previous


def record(strategy: Strategy) -> None:
    into = getattr(_forced, "record", None)
    if into is not None:
        into.add(strategy.value)


def _forced_strategy() -> Strategy | None:
    value = getattr(_forced, "value", None)
    if value is not None:
        return value
    env = os.environ.get(_STRATEGY_ENV)
    if not env:
        return None
    try:
        return Strategy(env)
    except ValueError:
        raise BetterTransformerError(
            f"{_STRATEGY_ENV}={env!r} is not a strategy; use one of {', '.join(s.value for s in Strategy)}."
        ) from None


#: The dtypes the fused kernel has, per device: None where it computes them as exactly as the original,
#: else why not. CUDA float32: the kernel's result was 2.2e-4 (relative) off the float64 result, where the
#: original's and the other strategies' were 1.3e-6 (BERT-base on an H200, ``benchmarks/cuda_fused.py``;
#: not its attention).
_KERNEL_DTYPES: dict[str, dict[torch.dtype, str | None]] = {
    "cpu": {torch.float32: None, torch.bfloat16: None},
    "cuda": {
        torch.float16: None,
        torch.bfloat16: None,
        torch.float32: "the kernel computes float32 on CUDA less precisely than the original (about 1e-4 relative)",
    },
}


def why_not_fused(
    layer: BetterTransformerBaseLayer, hidden_states: Tensor, layout: MaskLayout, call: LayerCall | None = None
) -> str | None:
    """Why the fused kernel cannot compute this call exactly, or None when it can."""
    blocker = kernel_blocker(layer)
    if blocker is not None:
        return blocker
    if call is not None and (call.score_bias is not None or call.rotary is not None):
        return "the call carries a score bias or rotary positions"
    if torch.is_autocast_enabled(hidden_states.device.type):
        return "autocast is enabled, and the kernel would not cast as autocast does"
    device, dtype = hidden_states.device.type, hidden_states.dtype
    dtypes = _KERNEL_DTYPES.get(device, {})
    if dtype not in dtypes:
        return f"the kernel has no {dtype} version on {device}"
    if dtypes[dtype] is not None:
        return dtypes[dtype]
    if not layout.is_key_padding:
        return "the mask is more than key padding"
    if layout.key_keep is not None and not is_right_padded(layout.key_keep):
        return "the padding is not on the right (or a row is all padding), so it cannot be nested"
    return None


def _needs_padded_batch(layer: BetterTransformerBaseLayer, layout: MaskLayout) -> str | None:
    """Why a padded batch must run whole (``dense``), or None when padding may be skipped."""
    if not layout.has_padding:
        return None
    if layer._bt_whole_input:
        return f"{type(layer).__name__} calls a quantized linear whose result depends on the whole padded input"
    if layer.reads_padded_positions:
        return f"{type(layer).__name__} declares that its model reads outputs at padded positions"
    if output_capture_requested("hidden_states"):
        # Every layer's output is recorded, padded positions included, as the original computes them.
        return "hidden states were requested, and the original computes them at padded positions too"
    return None


def choose_strategy(
    layer: BetterTransformerBaseLayer, call: LayerCall, layout: MaskLayout, *, packed_input: bool = False
) -> Strategy:
    """The fastest exact strategy for this call; the one place the choice is made.

    ``packed_input``: the hidden states are the packed tokens an earlier ``packed`` layer of the
    stack returned (as a nested input means an earlier ``fused`` layer).
    """
    reason = layer.forward_checker(call)
    forced = _forced_strategy()
    if reason is not None:
        if forced not in (None, Strategy.REFERENCE):
            raise BetterTransformerError(f"strategy {forced.value!r} was forced, but {reason}; unset it.")
        layer.warn_once(reason)
        return Strategy.REFERENCE
    if call.hidden_states.is_nested:
        if why_not_fused(layer, call.hidden_states, layout, call) is None:
            return Strategy.FUSED  # an earlier layer nested the batch: stay on the fused path
        return Strategy.DENSE
    if packed_input:  # only a forced or CPU run packs, and a layer of the stack may need the whole batch
        return Strategy.DENSE if layer._bt_whole_input else Strategy.PACKED
    whole = _needs_padded_batch(layer, layout)
    if forced is not None:
        if forced in (Strategy.FUSED, Strategy.PACKED) and whole:
            raise BetterTransformerError(
                f"strategy {forced.value!r} was forced, but {whole}, which only 'dense' computes; unset it."
            )
        if forced is Strategy.FUSED:
            blocker = why_not_fused(layer, call.hidden_states, layout, call)
            if blocker:
                raise BetterTransformerError(f"strategy 'fused' was forced, but {blocker}; unset it.")
        if forced is Strategy.PACKED and not layout.has_padding:
            if not layout.is_key_padding:
                raise BetterTransformerError(
                    "strategy 'packed' was forced, but the mask is more than key padding; unset it."
                )
            return Strategy.DENSE  # nothing to pack
        return forced
    if whole:
        return Strategy.DENSE
    if _fused_wins(call.hidden_states, layout) and why_not_fused(layer, call.hidden_states, layout, call) is None:
        return Strategy.FUSED
    return Strategy.PACKED if layout.has_padding and _packing_wins(call.hidden_states) else Strategy.DENSE


def _packing_wins(hidden_states: Tensor) -> bool:
    """Whether skipping padding row by row (``packed``) beats the padded batch (``dense``).

    CPU: yes at every padding fraction measured (BENCHMARKS.md). CUDA: no; ``packed`` launches a few
    kernels per row and layer, and the GPU waits on them (BERT-base, float16, 64 x 256 at 50% padding on
    an H200: packed 34.2 ms, transformers' sdpa 8.5 ms; ``benchmarks/cuda_check.py``).
    """
    return hidden_states.device.type != "cuda"


def _fused_wins(hidden_states: Tensor, layout: MaskLayout) -> bool:
    """Whether the fused kernel is the fastest exact strategy for this call (when it is eligible).

    CPU (measured, BENCHMARKS.md "Choosing a strategy"; BERT-base, 1 thread, CPU-clock medians):
    never. With padding, ``packed`` beats it at every fraction and shape measured (e.g. batch 16 x 128
    at 50% padding: packed 0.57 of fused's time; the kernel pads each nested row's attention and runs
    it as bmm + softmax, slower than SDPA's flash kernel over each row's own tokens). Without padding
    ``dense`` matches it at 128 tokens and beats it on long sequences (1,600 tokens: the kernel's
    materialised attention matrix costs 1.2x in fp32 and 1.6x in bf16 against SDPA's flash kernel).

    CUDA (float16 and bfloat16; see ``_KERNEL_DTYPES``): always. BERT-base, 64 x 256 on an H200
    (``benchmarks/cuda_fused.py``, medians of 30), against transformers' sdpa model at 0/25/50/75% padding:
    float16, three runs, the kernel 0.89-0.91x / 0.82-0.97x / 0.63-0.95x / 0.54-0.93x of its time, ``dense``
    0.96-0.99x; bfloat16, two runs, the kernel 0.89-0.90x / 1.00-1.01x / 0.82-0.83x / 0.74-0.76x, ``dense``
    0.97-0.98x (3% ahead at 25%: the kernel's bfloat16 nesting falls back to a generic copy). The spread
    between runs is the host's: the GPU works 3.8 ms of a 5-8 ms call at 50% padding.
    """
    return hidden_states.device.type == "cuda"
