"""The adapter of ``ModernBertEncoderLayer``: pre-norm, rotary, GeGLU, bias-free, local attention on most layers.

The layer is ``x + attn(attn_norm(x))`` then ``x + mlp(mlp_norm(x))``, where:

- ``attn`` projects q, k, v with one fused ``Wqkv`` (output ``[q; k; v]``, heads in order), rotates q and k
  by llama's ``rotate_half`` with the ``position_embeddings`` (cos, sin) the model passes the layer, and
  attends with the ``attention_mask`` the model built for the layer's ``attention_type``;
- ``mlp`` is GeGLU, ``input, gate = Wi(x).chunk(2); Wo(act(input) * gate)``: the *first* half of ``Wi``'s
  output goes through the activation (``gated_half="first"``);
- norms are LayerNorms without bias by default (``norm_bias``), and layer 0's ``attn_norm`` is an
  ``nn.Identity`` (the embeddings end with a norm); linears have biases only where ``attention_bias`` /
  ``mlp_bias`` ask.

Two layer types, each with its own rotary base, which the model resolves itself: ``ModernBertModel``
computes one (cos, sin) per layer type and hands each layer the one of its ``attention_type``, so the
adapter only reads ``position_embeddings``. ``"sliding_attention"`` layers attend to keys at most
``config.sliding_window`` (``local_attention // 2``) positions away: transformers' mask for them is
``padding(key) & |query - key| <= sliding_window`` (``create_bidirectional_sliding_window_mask``; flash
attention gets the same window from ``sliding_window + 1`` with its inclusive bounds). The adapter declares
that window and hands bt the mask's padding alone, so padded batches still skip their padding.

Checked against transformers 5.10.2 and 5.24.0, which share the module names, the call
``layer(hidden_states, attention_mask=..., position_embeddings=...)`` and the return of a plain tensor.
The masks that reach a layer: None (no padding; a sliding layer only when the sequence is shorter than
its window), a 4-D bool keep mask (sdpa) or a 4-D additive float mask (eager), or a 2-D padding mask
(flash attention).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, PackedTokens, UnsupportedModelError
from bt_core.layer import LayerCall, check_activation, find_submodule

from .nomic_bert import read_rotary

__all__ = ["ModernBertLayerAdapter", "padding_of_sliding_mask"]

_PLUGIN = "bt-plugins-encoders"
_SLIDING = "sliding_attention"


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def _keep(mask: Tensor) -> Tensor:
    """A transformers mask as bool, True where attention is allowed: bool as is, additive float 0 / large negative."""
    if mask.dtype == torch.bool:
        return mask
    return mask == 0 if mask.is_floating_point() else mask != 0


def padding_of_sliding_mask(mask: Tensor, window: int) -> Tensor | None:
    """The key padding of a sliding layer's 4-D mask as a ``(batch, seq)`` keep mask (None: nothing padded),
    when the mask is exactly ``padding(key) & |query - key| <= window`` on every real query's row.

    A query always lies inside its own window, so the mask's diagonal is the key padding. Rows of padded
    queries are not checked: nothing reads them but a head at position 0, which bt computes from the same
    keys. Raises ``ValueError`` when the mask is something else.
    """
    keep = _keep(mask)
    if keep.dim() == 3:
        keep = keep[:, None]
    seq_len = keep.shape[-1]
    positions = torch.arange(seq_len, device=keep.device)
    in_window = (positions[:, None] - positions[None, :]).abs() <= window
    padding = keep[:, 0].diagonal(dim1=-2, dim2=-1)  # (batch, seq)
    expected = padding[:, None, None, :] & in_window
    if not bool(((keep == expected) | ~padding[:, None, :, None]).all()):
        raise ValueError("not a padding mask restricted to the window")
    return None if bool(padding.all()) else padding


class ModernBertLayerAdapter(BetterTransformerBaseLayer):
    """``ModernBertEncoderLayer``: pre-norm (identity first norm on layer 0), fused qkv, rotary ("half"),
    GeGLU (activation on the first half), bias-free by default, a window on ``"sliding_attention"`` layers."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)

        def get(path: str, what: str) -> nn.Module:
            return find_submodule(layer, (path,), what, plugin=_PLUGIN)

        attention, mlp = get("attn", "attention"), get("mlp", "feed-forward")
        self.use_linears(
            in_proj=get("attn.Wqkv", "fused query/key/value projection"),
            out_proj=get("attn.Wo", "attention output"),
            linear1=get("mlp.Wi", "feed-forward input (GeGLU input and gate)"),
            linear2=get("mlp.Wo", "feed-forward output"),
        )
        self.use_norms(norm1=get("attn_norm", "attention norm"), norm2=get("mlp_norm", "feed-forward norm"))
        self.norm_first = True
        self.rotary = "half"
        self.gated_half = "first"  # input, gate = Wi(x).chunk(2): act(input) * gate
        self.num_heads = int(config.num_attention_heads)
        self.embed_dim = int(config.hidden_size)
        act = get("mlp.act", "feed-forward activation")
        self.activation = check_activation(act, config.hidden_activation, type(layer).__name__, "hidden_activation")

        #: Read by ``ModernBertModel``'s loop to pick this layer's mask and rotary tables.
        self.attention_type: str = layer.attention_type
        self.layer_idx = getattr(layer, "layer_idx", None)
        if self.attention_type == _SLIDING:
            self.attention_window = int(config.sliding_window)
        # Dropout as the original places it: on the attention probabilities and on Wo's output (both
        # attention_dropout), none on the residual stream, and inside the GeGLU on act(input) * gate.
        self.attention_dropout = float(getattr(attention, "attention_dropout", 0.0) or 0.0)
        out_drop = getattr(attention, "out_drop", None)
        self.attention_output_dropout = float(out_drop.p) if isinstance(out_drop, nn.Dropout) else 0.0
        self.feed_forward_dropout = 0.0
        drop = getattr(mlp, "drop", None)
        self.feed_forward_inner_dropout = float(drop.p) if isinstance(drop, nn.Dropout) else 0.0

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        call = super().parse_call(hidden_states, args, kwargs)
        call.rotary = read_rotary(self, kwargs)
        mask = call.attention_mask
        if mask is not None and not isinstance(mask, Tensor):
            raise UnsupportedModelError(
                f"{self.bt_layer_name} was called with a {type(mask).__name__} attention mask (flex attention); "
                "bt reads tensor masks. Load the model with attn_implementation='sdpa' or 'eager' to convert it."
            )
        if self.attention_window is not None and mask is not None and mask.dim() > 2 and not _tracing():
            # (A tracer would freeze the reading below; the mask as given, window and all, is exact there.)
            # Tokens an earlier layer packed (or nested) carry their padding, and bt reads no mask for them.
            carried = isinstance(hidden_states, PackedTokens) or hidden_states.is_nested
            call.attention_mask = self._padding_of(mask, read_by_bt=not carried)
        return call

    def _padding_of(self, mask: Tensor, *, read_by_bt: bool) -> Tensor | None:
        """The sliding layer's mask without its window, which the layer declares (so padding can be skipped).

        Any other mask that stays inside the window is handed on whole when bt reads it (``read_by_bt``):
        applying the window again changes nothing. Otherwise the call is refused, naming the fix.
        """
        window = int(self.attention_window)  # type: ignore[arg-type]
        try:
            return padding_of_sliding_mask(mask, window)
        except ValueError:
            pass
        seq_len = mask.shape[-1]
        positions = torch.arange(seq_len, device=mask.device)
        outside = (positions[:, None] - positions[None, :]).abs() > window
        if read_by_bt and not bool((_keep(mask) & outside).any()):
            return mask
        raise UnsupportedModelError(
            f"{self.bt_layer_name}, a {self.attention_type} layer of window {window}, was given a mask that is not key "
            "padding within that window (a prepared 4-D mask, which transformers hands every layer unchanged "
            "under sdpa/eager attention, so its sliding layers attend outside the window). Pass a 2-D "
            "(batch, seq_len) attention_mask, or keep this model unconverted."
        )
