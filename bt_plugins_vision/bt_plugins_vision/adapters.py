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
    "BeitLayerAdapter",
    "ClipLayerAdapter",
    "Data2VecVisionLayerAdapter",
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


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    """An argument of the original layer's forward (after ``hidden_states``), given by position or name."""
    return args[index] if len(args) > index else kwargs.get(name, default)


class _BeitLike(_PreNormAdapter):
    """BEiT-style layers: layer-scale lambdas folded; the relative position bias added to the scores.

    A layer's own bias (``use_relative_position_bias``) is computed from its own module, as the original
    computes it on every call (from ``resolution`` and ``interpolate_pos_encoding``); the module stays a
    submodule of the converted layer, so it trains and goes back with the layer. A shared bias
    (``use_shared_relative_position_bias``) arrives with the call, computed by the model.
    """

    #: Where the layer keeps its own relative position bias module (BEiT: on the layer; data2vec-vision:
    #: on the self-attention); absent when the model has none, or shares one.
    RELATIVE_BIAS: tuple[str, ...] = ("relative_position_bias", "attention.attention.relative_position_bias")

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        own = _own_config(layer, config)
        self.patch_size = int(own.patch_size)
        #: Registered, not only read: its table is a parameter of the model that training must reach.
        self.relative_position_bias = self._own_relative_bias(layer)
        # Both branches' outputs go through a dropout of hidden_dropout_prob (the inherited declaration);
        # the self-attention's own nn.Dropout is attention_probs_dropout_prob, on the probabilities.

    def _own_relative_bias(self, layer: nn.Module) -> nn.Module | None:
        for path in self.RELATIVE_BIAS:
            try:
                module = layer.get_submodule(path)
            except AttributeError:  # absent, or None (the model has no per-layer bias)
                continue
            if not hasattr(module, "relative_position_bias_table"):
                raise UnsupportedModelError(
                    f"{self.bt_layer_name}.{path} is a {type(module).__name__} without a relative_position_bias_table, "
                    "not the relative position bias bt knows how to call; upgrade bt-plugins-vision, or keep "
                    "this model unconverted."
                )
            return module
        return None

    def layer_bias(self, hidden_states: Tensor, interpolate_pos_encoding: bool, resolution: Any) -> Tensor | None:
        """This layer's own relative position bias ``(1, heads, seq, seq)``, as the original computes it."""
        if self.relative_position_bias is None:
            return None
        if resolution is None:
            raise ValueError(
                f"{type(self).__name__} ({self.bt_layer_name}): the layer has a relative position bias, which needs "
                "`resolution` (the pixel height and width); call it as the model does, with "
                "resolution=pixel_values.shape[2:]."
            )
        height, width = resolution
        window_size = (height // self.patch_size, width // self.patch_size)
        return self.relative_position_bias(window_size, interpolate_pos_encoding, dim_size=hidden_states.shape[1])

    def layer_scales(self, layer: nn.Module) -> tuple[Tensor | None, Tensor | None]:
        lambda_1, lambda_2 = getattr(layer, "lambda_1", None), getattr(layer, "lambda_2", None)
        if not isinstance(lambda_1, Tensor) or not isinstance(lambda_2, Tensor):
            return None, None  # layer_scale_init_value <= 0: a plain 1.0 or None, nothing to fold
        return lambda_1, lambda_2


class BeitLayerAdapter(_BeitLike):
    """``BeitLayer``. ``BeitModel`` adds a shared relative position bias to the ``attention_mask`` it
    passes every layer, and the layer adds its own: the attention adds whatever that sum is to its scores."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        own = _own_config(layer, config)
        self.shared_bias_in_mask = bool(getattr(own, "use_shared_relative_position_bias", False))

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        call = super().parse_call(hidden_states, args, kwargs)
        bias = self.layer_bias(
            hidden_states,
            bool(_argument(args, kwargs, 1, "interpolate_pos_encoding", False)),
            _argument(args, kwargs, 2, "resolution"),
        )
        if bias is None and not self.shared_bias_in_mask:
            return call
        # The original adds the mask (holding the shared bias, and any padding) to the scores as it is;
        # adding that same sum is exact whatever the mask's form.
        mask = call.attention_mask
        if mask is not None:
            bias = mask if bias is None else bias + mask
        call.attention_mask, call.score_bias = None, bias
        return call


class Data2VecVisionLayerAdapter(_BeitLike):
    """``Data2VecVisionLayer``: called with ``output_attentions`` and the shared relative position bias,
    returns a tuple; no mask."""

    returns_tuple = True

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        shared = _argument(args, kwargs, 1, "relative_position_bias")
        bias = self.layer_bias(
            hidden_states,
            bool(_argument(args, kwargs, 2, "interpolate_pos_encoding", False)),
            _argument(args, kwargs, 3, "resolution"),
        )
        if shared is not None:
            bias = shared if bias is None else bias + shared
        return LayerCall(
            hidden_states=hidden_states,
            output_attentions=bool(_argument(args, kwargs, 0, "output_attentions", False)),
            score_bias=bias,
        )


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
