"""How a converted layer executes: every strategy, and the one place that chooses between them.

Strategies, all exact against the original layer:

- ``fused``: ``torch._transformer_encoder_layer_fwd`` on a nested tensor built from the padding
  mask at the first layer, un-nested at the last. Needs right padding, an activation the kernel
  computes (exact gelu/relu), an even head count and a dtype the kernel has on this device.
- ``packed``: the real tokens gathered into one ``(tokens, hidden)`` matrix at the first layer and
  kept packed through the stack to the last; every projection, norm and feed-forward runs on real
  tokens only, and attention runs per row over that row's own tokens with
  ``scaled_dot_product_attention`` (no mask, no padded q/k/v). Takes any padding layout and any
  activation.
- ``dense``: the same ordinary ops on the whole padded tensor, with the mask as given (no padding,
  or a mask that is more than key padding, such as CLIP's causal text mask).

On CPU the choice is ``packed`` with padding and ``dense`` without; the fused kernel is kept for
padded batches on CUDA. The numbers behind it are in :func:`_fused_wins` and BENCHMARKS.md.
- ``reference``: differentiable ops with explicit attention probabilities, dropout and head mask,
  for training, autograd and requested attentions or hidden states.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

from ._activations import activation_function
from ._masks import MaskLayout, is_right_padded, read_mask
from .errors import BetterTransformerError
from .layer import BetterTransformerBaseLayer, LayerCall

__all__ = ["Strategy", "choose_strategy", "force_strategy", "record_strategies", "run_layer"]


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


_KERNEL_DTYPES = {
    "cpu": {torch.float32, torch.bfloat16},
    "cuda": {torch.float32, torch.float16, torch.bfloat16},
}


def why_not_fused(layer: BetterTransformerBaseLayer, hidden_states: Tensor, layout: MaskLayout) -> str | None:
    """Why the fused kernel cannot compute this call exactly, or None when it can."""
    if not layer.kernel_computes_activation:
        return f"the kernel does not compute activation {layer.activation!r}"
    if int(layer.num_heads) % 2 == 1:  # type: ignore[arg-type]
        return "the head count is odd, which PyTorch's fast path does not take"
    if hidden_states.dtype not in _KERNEL_DTYPES.get(hidden_states.device.type, set()):
        return f"the kernel has no {hidden_states.dtype} version on {hidden_states.device.type}"
    if not layout.is_key_padding:
        return "the mask is more than key padding"
    if layout.key_keep is not None and not is_right_padded(layout.key_keep):
        return "the padding is not on the right (or a row is all padding), so it cannot be nested"
    return None


def choose_strategy(
    layer: BetterTransformerBaseLayer, call: LayerCall, layout: MaskLayout, *, packed_input: bool = False
) -> Strategy:
    """The fastest exact strategy for this call; the one place the choice is made.

    ``packed_input``: the hidden states are the packed token matrix an earlier ``packed`` layer of
    the stack returned (as a nested input means an earlier ``fused`` layer).
    """
    reason = layer.forward_checker(call)
    forced = _forced_strategy()
    if reason is not None:
        if forced not in (None, Strategy.REFERENCE):
            raise BetterTransformerError(f"strategy {forced.value!r} was forced, but {reason}; unset it.")
        layer.warn_once(reason)
        return Strategy.REFERENCE
    if call.hidden_states.is_nested:
        return Strategy.FUSED  # an earlier layer nested the batch: stay on the fused path
    if packed_input:
        return Strategy.PACKED  # an earlier layer packed the batch: stay on the packed path
    if forced is not None:
        if forced in (Strategy.FUSED, Strategy.PACKED) and layer.reads_padded_positions and layout.has_padding:
            raise BetterTransformerError(
                f"strategy {forced.value!r} was forced, but {type(layer).__name__} declares that its model "
                "reads outputs at padded positions, which only 'dense' computes; unset it."
            )
        if forced is Strategy.FUSED:
            blocker = why_not_fused(layer, call.hidden_states, layout)
            if blocker:
                raise BetterTransformerError(f"strategy 'fused' was forced, but {blocker}; unset it.")
        if forced is Strategy.PACKED and not layout.has_padding:
            if not layout.is_key_padding:
                raise BetterTransformerError(
                    "strategy 'packed' was forced, but the mask is more than key padding; unset it."
                )
            return Strategy.DENSE  # nothing to pack
        return forced
    if layer.reads_padded_positions and layout.has_padding:
        return Strategy.DENSE  # the only fast path that computes padded positions as the original does
    if _fused_wins(call.hidden_states, layout) and why_not_fused(layer, call.hidden_states, layout) is None:
        return Strategy.FUSED
    return Strategy.PACKED if layout.has_padding else Strategy.DENSE


def _fused_wins(hidden_states: Tensor, layout: MaskLayout) -> bool:
    """Whether the fused kernel is the fastest exact strategy for this call (when it is eligible).

    CPU (measured, BENCHMARKS.md "Choosing a strategy"; BERT-base, 1 thread, CPU-clock medians):
    never. With padding, ``packed`` beats it at every fraction and shape measured (e.g. batch 16 x 128
    at 50% padding: packed 0.57 of fused's time; the kernel pads each nested row's attention and runs
    it as bmm + softmax, slower than SDPA's flash kernel over each row's own tokens). Without padding
    ``dense`` matches it at 128 tokens and beats it on long sequences (1,600 tokens: the kernel's
    materialised attention matrix costs 1.2x in fp32 and 1.6x in bf16 against SDPA's flash kernel).

    CUDA: not measured (no GPU in this work); PyTorch's nested-tensor kernel is the path its authors
    tuned for padded GPU batches, so it is kept for padded batches, and ``dense`` (SDPA) without padding.
    ``bt bench --device cuda`` measures it; BENCHMARKS.md has the command.
    """
    return hidden_states.device.type == "cuda" and layout.has_padding


def run_layer(layer: BetterTransformerBaseLayer, call: LayerCall) -> tuple[Tensor, Tensor | None]:
    """Compute one converted layer; returns the hidden states and, when asked, attention probabilities."""
    hidden_states = call.hidden_states
    state = _stack_state(layer)
    carried = state.carries(hidden_states)
    if hidden_states.is_nested or carried:
        layout = MaskLayout(key_keep=None, attend=None, is_key_padding=True)  # read by the first layer
    else:
        layout = read_mask(call.attention_mask, hidden_states.shape[0], hidden_states.shape[1])
    strategy = choose_strategy(layer, call, layout, packed_input=carried)
    record = getattr(_forced, "record", None)
    if record is not None:
        record.add(strategy.value)
    if strategy is Strategy.PACKED:
        return _packed(layer, hidden_states, layout, state), None
    if strategy is Strategy.FUSED:
        return _fused(layer, hidden_states, layout), None
    if carried:  # an earlier layer packed the batch, but this call must run on the padded one
        assert state.packing is not None
        layout = state.packing.layout
    elif hidden_states.is_nested:  # an earlier layer nested the batch: its rows' lengths are the padding
        layout = _nested_layout(hidden_states, state.padded_shape)
    hidden_states = _padded(layer, hidden_states)
    if strategy is Strategy.REFERENCE:
        return _reference(layer, hidden_states, layout, call)
    return _dense(layer, hidden_states, layout), None


# -- the layer's arithmetic, shared by the ordinary-op strategies ---------------------------------


#: Activations with an in-place kernel; inference applies them to the feed-forward's own buffer.
_INPLACE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": torch.ops.aten.gelu_,
    "relu": torch.relu_,
}


def _layer_math(
    layer: BetterTransformerBaseLayer,
    tokens: Tensor,
    attend: Callable[[Tensor], Tensor],
    regularise: Callable[[Tensor, str], Tensor] | None = None,
) -> Tensor:
    """One encoder layer on ``tokens`` of shape ``(..., hidden)``; ``attend`` maps packed q/k/v to context.

    With ``regularise`` (the reference path) every op is out of place, so autograd can differentiate
    it, and ``regularise(output, branch)`` is applied to each residual branch's output before it is
    added (``branch`` is ``"attention"`` or ``"feed_forward"``): dropout and stochastic depth. Without
    it (the fast paths) residual adds and the activation run in place on buffers this function owns,
    never on ``tokens``: one pass over memory instead of an allocation and two passes, about 3% of a
    BERT-base layer on CPU.
    """
    shape = (layer.embed_dim,)
    eps = float(layer.norm1_eps)  # type: ignore[arg-type]
    inference = regularise is None
    act = (_INPLACE_ACTIVATIONS.get(layer.activation) if inference else None) or activation_function(layer.activation)

    def branch(output: Tensor, name: str, residual: Tensor) -> Tensor:
        if regularise is None:
            return output.add_(residual)
        return residual + regularise(output, name)

    def attention_block(x: Tensor, residual: Tensor) -> Tensor:
        qkv = F.linear(x, layer.in_proj_weight, layer.in_proj_bias)
        return branch(F.linear(attend(qkv), layer.out_proj_weight, layer.out_proj_bias), "attention", residual)

    def feed_forward(x: Tensor, residual: Tensor) -> Tensor:
        inner = act(F.linear(x, layer.linear1_weight, layer.linear1_bias))
        return branch(F.linear(inner, layer.linear2_weight, layer.linear2_bias), "feed_forward", residual)

    if layer.norm_first:
        x = attention_block(F.layer_norm(tokens, shape, layer.norm1_weight, layer.norm1_bias, eps), tokens)
        return feed_forward(F.layer_norm(x, shape, layer.norm2_weight, layer.norm2_bias, eps), x)
    x = F.layer_norm(attention_block(tokens, tokens), shape, layer.norm1_weight, layer.norm1_bias, eps)
    return F.layer_norm(feed_forward(x, x), shape, layer.norm2_weight, layer.norm2_bias, eps)


def _split_heads(qkv: Tensor, batch: int, seq_len: int, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    head_dim = qkv.shape[-1] // (3 * num_heads)
    q, k, v = qkv.view(batch, seq_len, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    return q, k, v


def _merge_heads(context: Tensor) -> Tensor:
    batch, heads, seq_len, head_dim = context.shape
    return context.transpose(1, 2).reshape(batch, seq_len, heads * head_dim)


def _dense(layer: BetterTransformerBaseLayer, hidden_states: Tensor, layout: MaskLayout) -> Tensor:
    batch, seq_len, _ = hidden_states.shape

    def attend(qkv: Tensor) -> Tensor:
        q, k, v = _split_heads(qkv, batch, seq_len, int(layer.num_heads))  # type: ignore[arg-type]
        return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=layout.attend))

    return _layer_math(layer, hidden_states, attend)


# -- the packed strategy --------------------------------------------------------------------------


class _Packing:
    """Where the real tokens of a padded batch live once gathered into one ``(tokens, hidden)`` matrix.

    Gathering in row-major order keeps each row's real tokens together and in order, whatever the
    padding layout (right, left, holes in the middle), so row ``b`` is the slice ``starts[b]:ends[b]``
    of the packed matrix and its attention needs no mask at all. ``runs`` merges neighbouring rows of
    the same length into one batched attention call.
    """

    def __init__(self, layout: MaskLayout, padded_shape: tuple[int, ...]) -> None:
        key_keep = layout.key_keep
        assert key_keep is not None
        self.layout = layout
        self.padded_shape = padded_shape
        self.index = key_keep.reshape(-1).nonzero().squeeze(1)
        lengths = key_keep.sum(dim=1).tolist()
        self.tokens = int(sum(lengths))
        #: (start, rows, length): ``rows`` consecutive rows of ``length`` tokens from ``start``.
        self.runs: list[tuple[int, int, int]] = []
        start = 0
        for length in lengths:
            if length and self.runs and self.runs[-1][2] == length:
                first, rows, _ = self.runs[-1]
                self.runs[-1] = (first, rows + 1, length)
            elif length:
                self.runs.append((start, 1, length))
            start += length

    def pack(self, hidden_states: Tensor) -> Tensor:
        return hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, self.index)

    def unpack(self, tokens: Tensor) -> Tensor:
        batch, seq_len, hidden = self.padded_shape
        out = tokens.new_zeros(batch * seq_len, hidden)
        return out.index_copy_(0, self.index, tokens).view(batch, seq_len, hidden)


def _attend_rows(packing: _Packing, qkv: Tensor, num_heads: int) -> Tensor:
    """Attention of every row over its own real tokens only, on packed q/k/v.

    Exact: a key-padding mask gives padded keys zero weight, which is attention over the real keys;
    padded queries are never read. The work is the sum of squared row lengths instead of
    ``batch * seq_len**2``: SDPA's CPU flash kernel over BERT-base rows (16 rows of 128 tokens, lengths
    spread uniformly) took 6.3 ms a layer per row at 50% padding against 16.0 ms on the masked padded
    batch, 2.5 ms against 15.3 ms at 75% (1 thread, medians of 7). Per-row calls cost ~20 us each.
    """
    hidden = qkv.shape[-1] // 3
    head_dim = hidden // num_heads
    out = qkv.new_empty(packing.tokens, hidden)
    for start, rows, length in packing.runs:
        stop = start + rows * length
        q, k, v = qkv[start:stop].view(rows, length, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v)
        out[start:stop].view(rows, length, num_heads, head_dim).copy_(context.transpose(1, 2))
    return out


def _packed(layer: BetterTransformerBaseLayer, hidden_states: Tensor, layout: MaskLayout, state: _StackState) -> Tensor:
    """Real tokens only, from the first converted layer of the stack to the last.

    The first layer gathers the real tokens; the following layers receive the packed matrix itself
    (recognised by identity) and skip both the mask and the gather/scatter, which cost ~5% of a BERT-base
    layer at 50% padding when done per layer; the last layer scatters back into the padded shape.
    """
    if state.carries(hidden_states):
        packing = state.packing
        assert packing is not None
        tokens = hidden_states
    else:
        packing = _Packing(layout, tuple(hidden_states.shape))
        state.packing = packing
        tokens = packing.pack(hidden_states)
    num_heads = int(layer.num_heads)  # type: ignore[arg-type]
    out = _layer_math(layer, tokens, lambda qkv: _attend_rows(packing, qkv, num_heads))
    if layer.is_last_layer:
        state.carry = None
        state.packing = None
        return packing.unpack(out)
    state.carry = out
    return out


def _reference(
    layer: BetterTransformerBaseLayer, hidden_states: Tensor, layout: MaskLayout, call: LayerCall
) -> tuple[Tensor, Tensor | None]:
    """Differentiable math attention, with dropout, head mask and the probabilities."""
    batch, seq_len, _ = hidden_states.shape
    training = layer.training
    probabilities: list[Tensor] = []

    def attend(qkv: Tensor) -> Tensor:
        q, k, v = _split_heads(qkv, batch, seq_len, int(layer.num_heads))  # type: ignore[arg-type]
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if layout.attend is not None:
            scores = scores.masked_fill(~layout.attend, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        probs = F.dropout(probs, p=layer.attention_dropout, training=training)
        if call.head_mask is not None:
            probs = probs * call.head_mask
        context, probs = layer.attention_probe(_merge_heads(torch.matmul(probs, v)), probs)
        probabilities.append(probs)
        return context

    def regularise(t: Tensor, branch: str) -> Tensor:
        if not training:
            return t
        t = F.dropout(t, p=layer.branch_dropout(branch), training=True)
        if layer.drop_path > 0:  # stochastic depth: drop the whole branch for some samples
            keep = 1.0 - layer.drop_path
            sample = t.new_empty((t.shape[0],) + (1,) * (t.dim() - 1)).bernoulli_(keep)
            t = t * sample.div_(keep) if keep > 0 else t * 0.0
        return t

    out = _layer_math(layer, hidden_states, attend, regularise)
    return out, probabilities[0] if probabilities else None


# -- nesting for the fused kernel -----------------------------------------------------------------


class _StackState(threading.local):
    """Per-thread memory shared by the layers of one stack during a forward.

    ``padded_shape``: the shape the first fused layer nested, for the last layer to restore.
    ``carry``/``packing``: the packed token matrix the previous layer returned and where its tokens
    belong in the padded batch (see :func:`_packed`).
    """

    padded_shape: tuple[int, ...] | None = None
    carry: Tensor | None = None
    packing: _Packing | None = None

    def __reduce__(self) -> tuple[type, tuple[()]]:
        # Transient per-forward state: a copied or pickled model starts with a fresh one (which layers
        # of one stack still share, as copy.deepcopy keeps shared objects shared).
        return (_StackState, ())

    def carries(self, hidden_states: Tensor) -> bool:
        """Whether ``hidden_states`` is the packed matrix the previous layer of this stack returned.

        Recognised by identity, or, when the encoder transformed it between layers (an elementwise op
        gives a new tensor), by its 2-D ``(tokens, hidden)`` shape: layers never receive 2-D input otherwise.
        """
        if self.carry is None:
            return False
        return hidden_states is self.carry or (
            hidden_states.dim() == 2 and not hidden_states.is_nested and hidden_states.shape == self.carry.shape
        )


def _nested_layout(nested: Tensor, padded_shape: tuple[int, ...] | None) -> MaskLayout:
    """The key padding of the batch an earlier fused layer nested (rows keep their real tokens only)."""
    assert padded_shape is not None
    lengths = torch.tensor([row.shape[0] for row in nested.unbind()], device=nested.device)
    key_keep = torch.arange(padded_shape[1], device=nested.device)[None, :] < lengths[:, None]
    if bool(key_keep.all()):
        return MaskLayout(key_keep=None, attend=None, is_key_padding=True)
    return MaskLayout(key_keep=key_keep, attend=key_keep[:, None, None, :], is_key_padding=True)


def _padded(layer: BetterTransformerBaseLayer, hidden_states: Tensor) -> Tensor:
    """A dense tensor; a nested or packed one (left by an earlier layer) is padded back first."""
    state = _stack_state(layer)
    if state.carries(hidden_states):
        assert state.packing is not None
        padded = state.packing.unpack(hidden_states)
        state.carry = state.packing = None
        return padded
    if not hidden_states.is_nested:
        return hidden_states
    return hidden_states.to_padded_tensor(0.0, state.padded_shape)


def _stack_state(layer: BetterTransformerBaseLayer) -> _StackState:
    state = layer._bt_stack
    if state is None:
        state = _StackState()
        layer.__dict__["_bt_stack"] = state
    return state


def _fused(layer: BetterTransformerBaseLayer, hidden_states: Tensor, layout: MaskLayout) -> Tensor:
    state = _stack_state(layer)
    if not hidden_states.is_nested:
        state.padded_shape = tuple(hidden_states.shape)
        if layout.key_keep is not None:
            hidden_states = torch._nested_tensor_from_mask(hidden_states, layout.key_keep, mask_check=False)
    out = torch._transformer_encoder_layer_fwd(
        hidden_states,
        layer.embed_dim,
        layer.num_heads,
        layer.in_proj_weight,
        layer.in_proj_bias,
        layer.out_proj_weight,
        layer.out_proj_bias,
        layer.activation == "gelu",
        layer.norm_first,
        layer.norm1_eps,
        layer.norm1_weight,
        layer.norm1_bias,
        layer.norm2_weight,
        layer.norm2_bias,
        layer.linear1_weight,
        layer.linear1_bias,
        layer.linear2_weight,
        layer.linear2_bias,
        None,
        None,
    )
    if out.is_nested and layer.is_last_layer:
        out = out.to_padded_tensor(0.0, state.padded_shape)
    return out
