"""BEiT-style layers (``BeitLayer``, ``Data2VecVisionLayer``): layer scales folded into the output
projections, and the relative position bias (per layer, or shared by the encoder) as the call's score bias."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bt_core import UnsupportedModelError
from bt_core.layer import LayerCall

from .adapters import _own_config, _PreNormAdapter

__all__ = ["BeitLayerAdapter", "Data2VecVisionLayerAdapter"]


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
