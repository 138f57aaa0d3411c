"""FSMT's encoder layer (``EncoderLayer`` in ``modeling_fsmt``): BART's post-norm arithmetic, time first.

``FSMTEncoder`` keeps its hidden states as ``(seq, batch, hidden)`` and hands every layer a
``(batch, seq)`` bool *padding* mask (True on padding), ``output_attentions`` as a keyword, and reads
``(hidden, attention probabilities)`` back; it records hidden states itself between layers. The
adapter turns the layout and the mask around on the way in and back on the way out, and every layer
hands back the padded batch (the encoder may record it). The same in transformers 5.10 and 5.24.

FSMT has no encoder-only model class; :class:`FSMTEncoderModel` (a ``PreTrainedModel`` holding the
encoder alone) is what the pack's shared tests and the conformance kit build.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn
from transformers.models.fsmt.modeling_fsmt import FSMTEncoder, PretrainedFSMTModel

from bt_core.layer import LayerCall

from .seq2seq import BartEncoderLayerAdapter

__all__ = ["FSMTEncoderLayerAdapter", "FSMTEncoderModel"]


class FSMTEncoderLayerAdapter(BartEncoderLayerAdapter):
    """FSMT's ``EncoderLayer``: post-norm, ``(seq, batch, hidden)`` in and out, a bool padding mask, a
    ``(hidden, attentions)`` tuple back. FSMT's layer has no float16 clamp."""

    returns_tuple: ClassVar[bool] = True
    # FSMTEncoder records output_hidden_states itself, between layers: no packed or nested batch may
    # travel from one layer to the next.
    pads_every_output: ClassVar[bool] = True
    # Its dropouts act on (seq, batch, hidden) tensors: training through bt draws the same masks.
    dropout_time_first: ClassVar[bool] = True

    def attention_shape(self, layer: nn.Module) -> tuple[int, int]:
        attention = layer.self_attn
        heads, width = int(attention.num_heads), int(attention.embed_dim)
        return heads, width  # FSMT multiplies q by head_dim**-0.5 before q.k: the default scale

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        padding = args[0] if args else kwargs.get("encoder_padding_mask")
        output_attentions = args[1] if len(args) > 1 else kwargs.get("output_attentions", False)
        return LayerCall(
            hidden_states=hidden_states.transpose(0, 1).contiguous(),  # (batch, seq, hidden)
            attention_mask=None if padding is None else ~padding.bool(),  # True on real tokens
            output_attentions=bool(output_attentions),
        )

    def format_output(self, hidden_states: Tensor, attentions: Tensor | None, call: LayerCall) -> Any:
        return hidden_states.transpose(0, 1), attentions  # back to (seq, batch, hidden)


class FSMTEncoderModel(PretrainedFSMTModel):
    """FSMT's encoder alone, as a ``PreTrainedModel``: ``input_ids``/``attention_mask`` in, a
    ``BaseModelOutput`` of ``(batch, seq, hidden)`` out. transformers has no such class (``AutoModel``
    builds the whole ``FSMTModel``); the pack's example model, used by its tests and ``bt check``."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.encoder = FSMTEncoder(config)
        self.post_init()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        return self.encoder(input_ids, attention_mask=attention_mask, **kwargs)
