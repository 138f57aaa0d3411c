"""Adapters for ViT-family encoder layers (vit, deit, vit_mae, vit_msn, yolos, dinov2, beit,
data2vec-vision, vilt, clip, siglip).

Every layer here is pre-norm (``norm_first=True``): ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``.
transformers renamed the weights of several of these layers across 5.x releases (``attention.q_proj``
vs ``attention.attention.query``, ``mlp.fc1`` vs ``intermediate.dense``...), so weights are looked up
by a list of known names, newest first, and an unknown layout fails naming the layer and every name
tried. Head counts, widths and the activation are read from the layer itself (or the config its own
submodules keep), never only from the model's top-level config: ``CLIPModel`` passes a ``CLIPConfig``
whose towers differ, and ``ViTMAEForPreTraining``'s decoder layers have their own width and heads.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, UnsupportedModelError
from bt_core.layer import LayerCall
from bt_core.layer import find_submodule as _find_submodule

__all__ = [
    "ClipLayerAdapter",
    "Dinov2LayerAdapter",
    "SiglipLayerAdapter",
    "ViTLayerAdapter",
    "ViltLayerAdapter",
    "YolosLayerAdapter",
    "find_submodule",
]


def find_submodule(layer: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    """bt-core's weight lookup, naming this pack in its error."""
    return _find_submodule(layer, names, what, plugin="bt-plugins-vision")


def _own_config(layer: nn.Module, config: Any) -> Any:
    """The config the layer was built from: the one its submodules keep, else the model's."""
    for module in layer.modules():
        own = module.__dict__.get("config")
        if own is not None and hasattr(own, "hidden_act"):
            return own
    return config


def _num_heads(layer: nn.Module, config: Any) -> int:
    for module in layer.modules():
        for attr in ("num_attention_heads", "num_heads"):
            value = module.__dict__.get(attr)
            if isinstance(value, int):
                return value
    return int(_own_config(layer, config).num_attention_heads)


def _activation(layer: nn.Module, config: Any) -> str:
    act = getattr(_own_config(layer, config), "hidden_act", None)
    if not isinstance(act, str):
        raise UnsupportedModelError(
            f"{type(layer).__name__}: config.hidden_act is {act!r}, not the name of an activation; bt "
            "converts only named activations (e.g. 'gelu', 'quick_gelu', 'gelu_pytorch_tanh'). Set "
            "config.hidden_act to the activation's name."
        )
    return act


def _dropout_p(module: nn.Module | None) -> float:
    return float(module.p) if isinstance(module, nn.Dropout) else 0.0


def _drop_path_rate(layer: nn.Module) -> float:
    drop_path = getattr(layer, "drop_path", None)
    if drop_path is None or isinstance(drop_path, nn.Identity):
        return 0.0
    return float(getattr(drop_path, "drop_prob", 0.0) or 0.0)


class _PreNormAdapter(BetterTransformerBaseLayer):
    """A pre-norm ViT-style layer: q/k/v/out linears, two-linear MLP, two layer norms."""

    #: Candidate paths of each piece, newest transformers layout first.
    Q: tuple[str, ...] = ("attention.q_proj", "attention.attention.query")
    K: tuple[str, ...] = ("attention.k_proj", "attention.attention.key")
    V: tuple[str, ...] = ("attention.v_proj", "attention.attention.value")
    OUT: tuple[str, ...] = ("attention.o_proj", "attention.output.dense")
    FC1: tuple[str, ...] = ("mlp.fc1", "intermediate.dense")
    FC2: tuple[str, ...] = ("mlp.fc2", "output.dense")
    NORM1: tuple[str, ...] = ("layernorm_before", "norm1")
    NORM2: tuple[str, ...] = ("layernorm_after", "norm2")

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        q = find_submodule(layer, self.Q, "query projection")
        k = find_submodule(layer, self.K, "key projection")
        v = find_submodule(layer, self.V, "value projection")
        out = find_submodule(layer, self.OUT, "attention output projection")
        fc1, fc2 = self.feed_forward_linears(layer)
        norm1 = find_submodule(layer, self.NORM1, "layer norm before attention")
        norm2 = find_submodule(layer, self.NORM2, "layer norm before the feed-forward")

        self.embed_dim = int(norm1.normalized_shape[0])
        self.num_heads = _num_heads(layer, config)
        self.activation = _activation(layer, config)
        self.norm_first = True

        # Modules, not weights: a PEFT LoRA layer or a quantized Linear in a linear's place is called.
        self.use_linears(in_proj=(q, k, v), linear1=fc1)
        self.use_norms(norm1=norm1, norm2=norm2)
        scale1, scale2 = self.layer_scales(layer)
        for role, linear, scale in (("out_proj", out, scale1), ("linear2", fc2, scale2)):
            if scale is None:
                self.use_linears(**{role: linear})
                continue
            if not self.is_plain_linear(linear):
                raise UnsupportedModelError(
                    f"{self.bt_layer_name}: its {role} is a {type(linear).__name__} followed by a layer scale, "
                    "which bt folds into a plain linear's weight and cannot fold into a wrapper. Merge the "
                    "wrapper first (for PEFT: model.merge_and_unload()), or keep this model unconverted."
                )
            weight, bias = self._scaled(linear.weight, self._bias(linear), scale)
            setattr(self, f"{role}_weight", weight)
            setattr(self, f"{role}_bias", bias)

        own = _own_config(layer, config)
        self.attention_dropout = float(getattr(own, "attention_probs_dropout_prob", 0.0) or 0.0)
        self.hidden_dropout = self.residual_dropout(layer, own)
        self.drop_path = _drop_path_rate(layer)

    # -- pieces subclasses refine -------------------------------------------------------------------

    def feed_forward_linears(self, layer: nn.Module) -> tuple[nn.Module | tuple[nn.Module, ...], nn.Module]:
        """The feed-forward's first linear (one module, or several whose outputs are concatenated) and its second."""
        return (
            find_submodule(layer, self.FC1, "first feed-forward linear"),
            find_submodule(layer, self.FC2, "second feed-forward linear"),
        )

    def layer_scales(self, layer: nn.Module) -> tuple[Tensor | None, Tensor | None]:
        """Per-channel scales applied to the attention and feed-forward outputs (None: none)."""
        return None, None

    def residual_dropout(self, layer: nn.Module, own_config: Any) -> float:
        """The dropout on each branch output before the residual add."""
        return float(getattr(own_config, "hidden_dropout_prob", 0.0) or 0.0)

    # -- helpers ----------------------------------------------------------------------------------

    def _absent_bias(self, size: int, like: Tensor) -> nn.Parameter:
        """Zeros for a bias the original layer does not have. Frozen: training must not grow a bias that
        ``reverse`` cannot give back to the original layer."""
        return self.zeros(size, like=like).requires_grad_(False)

    def _bias(self, linear: nn.Module) -> nn.Parameter:
        if linear.bias is not None:
            return linear.bias
        return self._absent_bias(linear.weight.shape[0], like=linear.weight)

    def _scaled(
        self, weight: nn.Parameter, bias: nn.Parameter, scale: Tensor | None
    ) -> tuple[nn.Parameter, nn.Parameter]:
        """``scale * (W x + b)`` folded into one linear: rows of W and b scaled (exact for pre-norm).

        After training the folded tensors, ``reverse`` divides the scale back out (the scale itself
        keeps its value), so the reversed layer computes what the trained converted one does.
        """
        if scale is None:
            return weight, bias
        with torch.no_grad():
            lam = scale.detach()
            folded_w = weight * lam[:, None]
            folded_b = bias * lam
        return (
            self.derive(folded_w, weight, scale, inverse=functools.partial(_unfold, lam[:, None], lam)),
            self.derive(folded_b, bias, scale, inverse=functools.partial(_unfold, lam, lam)),
        )


def _unfold(divisor: Tensor, scale: Tensor, folded: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of a folded layer scale: the unscaled tensor, and the scale unchanged (picklable)."""
    return folded / divisor, scale


class ViTLayerAdapter(_PreNormAdapter):
    """``ViTLayer``, ``DeiTLayer``, ``ViTMAELayer`` (encoder and decoder), ``ViTMSNLayer``."""


class YolosLayerAdapter(_PreNormAdapter):
    """``YolosLayer``; the mid-position embeddings are added by the encoder between layers, untouched."""


class Dinov2LayerAdapter(_PreNormAdapter):
    """``Dinov2Layer``: LayerScale folded into the output projections; with ``use_swiglu_ffn=True``
    (DINOv2 giant) a SwiGLU feed-forward, ``silu(x W_gate) * (x W_up)``, declared as a gated one."""

    #: The SwiGLU feed-forward's linears: one linear giving ``[gate; up]`` (transformers 5.10) or two.
    SWIGLU_IN: tuple[str, ...] = ("mlp.gate_proj", "mlp.weights_in")
    SWIGLU_UP: tuple[str, ...] = ("mlp.up_proj",)
    SWIGLU_OUT: tuple[str, ...] = ("mlp.down_proj", "mlp.weights_out")

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        if self._is_swiglu(layer):
            # Both releases hard-code silu on the first half (the gate), whatever config.hidden_act says.
            self.activation = "silu"
            self.gated_half = "first"
        older_release_dropout = [m.p for m in layer.modules() if isinstance(m, nn.Dropout) and m.p > 0]
        if older_release_dropout:
            self.attention_output_dropout = older_release_dropout[0]

    @staticmethod
    def _is_swiglu(layer: nn.Module) -> bool:
        mlp = getattr(layer, "mlp", None)
        return hasattr(mlp, "gate_proj") or hasattr(mlp, "weights_in")

    def feed_forward_linears(self, layer: nn.Module) -> tuple[nn.Module | tuple[nn.Module, ...], nn.Module]:
        if not self._is_swiglu(layer):
            return super().feed_forward_linears(layer)
        first = find_submodule(layer, self.SWIGLU_IN, "SwiGLU input projection")
        out = find_submodule(layer, self.SWIGLU_OUT, "SwiGLU output projection")
        if first is getattr(layer.mlp, "weights_in", None):
            return first, out  # its output is already [gate; up]
        return (first, find_submodule(layer, self.SWIGLU_UP, "SwiGLU up projection")), out

    def layer_scales(self, layer: nn.Module) -> tuple[Tensor | None, Tensor | None]:
        return layer.layer_scale1.lambda1, layer.layer_scale2.lambda1

    def residual_dropout(self, layer: nn.Module, own_config: Any) -> float:
        # transformers >= 5.2x: no dropout on the branches; older releases: only after the attention
        # output (set in __init__ as attention_output_dropout).
        return 0.0


class ViltLayerAdapter(_PreNormAdapter):
    """``ViltLayer``: text and image tokens in one sequence, padding in the middle (packed strategy)."""

    returns_tuple = True

    # ViltEncoder records ``output_hidden_states`` itself, between layers, where bt cannot see it: a
    # packed or nested batch carried from layer to layer would land in the user's hidden states as a
    # (tokens, hidden) matrix. So every ViLT layer hands back the padded batch, as a last layer does.
    pads_every_output: ClassVar[bool] = True

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        mask = args[0] if args else kwargs.get("attention_mask")
        output_attentions = args[1] if len(args) > 1 else kwargs.get("output_attentions", False)
        return LayerCall(hidden_states=hidden_states, attention_mask=mask, output_attentions=bool(output_attentions))


class _ClipStyle(_PreNormAdapter):
    """``CLIPEncoderLayer``/``SiglipEncoderLayer``: ``self_attn.{q,k,v,out}_proj``, ``layer_norm{1,2}``."""

    Q = ("self_attn.q_proj",)
    K = ("self_attn.k_proj",)
    V = ("self_attn.v_proj",)
    OUT = ("self_attn.out_proj",)
    FC1 = ("mlp.fc1",)
    FC2 = ("mlp.fc2",)
    NORM1 = ("layer_norm1",)
    NORM2 = ("layer_norm2",)

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        self.attention_dropout = float(getattr(layer.self_attn, "dropout", 0.0) or 0.0)

    def residual_dropout(self, layer: nn.Module, own_config: Any) -> float:
        return 0.0  # CLIP and SigLIP layers drop out attention probabilities only


class ClipLayerAdapter(_ClipStyle):
    """CLIP's vision and text towers. The text tower is causal; bt-core folds the ``is_causal=True``
    transformers' SDPA path passes into the mask, so the layer runs the causal mask whole."""


class SiglipLayerAdapter(_ClipStyle):
    """SigLIP's towers. SigLIP's text pooler reads the *last* position, which is padding in a padded
    batch, so padded positions must be computed as the original does: padded batches run ``dense``
    (every position, mask applied whole) instead of dropping padding."""

    reads_padded_positions: ClassVar[bool] = True
