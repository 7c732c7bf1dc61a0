"""Encoder / decoder bodies: plain nn.Modules mapping (..., in) -> (..., out).

``build_encoder`` / ``build_decoder`` pick the body a ModelConfig asks for (``net = "mlp"``,
``"conv"`` or ``"resconv"``, the names of ``NETS``); the models call only these two, so a new body
is added here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from vaelab.config import lookup
from vaelab.nets.conv import ConvDecoder, ConvEncoder, image_shape_for
from vaelab.nets.mlp import ACTIVATIONS, mlp
from vaelab.nets.residual import ResConvDecoder, ResConvEncoder

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


def _mlp_encoder(config: ModelConfig, x_dim: int, extra_dim: int, out_dim: int) -> nn.Module:
    return mlp(x_dim + extra_dim, config.hidden, out_dim, config.activation)


def _mlp_decoder(config: ModelConfig, in_dim: int, x_dim: int, params_per_dim: int) -> nn.Module:
    return mlp(in_dim, list(reversed(config.hidden)), x_dim * params_per_dim, config.activation)


def _conv_encoder(config: ModelConfig, x_dim: int, extra_dim: int, out_dim: int) -> nn.Module:
    return ConvEncoder(image_shape_for(x_dim), out_dim, extra_dim, config.channels, config.activation)


def _conv_decoder(config: ModelConfig, in_dim: int, x_dim: int, params_per_dim: int) -> nn.Module:
    return ConvDecoder(in_dim, image_shape_for(x_dim), params_per_dim, config.channels, config.activation)


def _resconv_encoder(config: ModelConfig, x_dim: int, extra_dim: int, out_dim: int) -> nn.Module:
    return ResConvEncoder(image_shape_for(x_dim), out_dim, extra_dim, config.channels, config.activation)


def _resconv_decoder(config: ModelConfig, in_dim: int, x_dim: int, params_per_dim: int) -> nn.Module:
    return ResConvDecoder(in_dim, image_shape_for(x_dim), params_per_dim, config.channels, config.activation)


# The encoder / decoder bodies by name (model.net): (encoder builder, decoder builder).
NETS: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module]]] = {
    "mlp": (_mlp_encoder, _mlp_decoder),
    "conv": (_conv_encoder, _conv_decoder),
    "resconv": (_resconv_encoder, _resconv_decoder),
}


def build_encoder(config: ModelConfig, x_dim: int, extra_dim: int, out_dim: int) -> nn.Module:
    """(..., x_dim + extra_dim) -> (..., out_dim); ``extra_dim`` condition columns follow x."""
    return lookup(NETS, config.net, "model.net", "net")[0](config, x_dim, extra_dim, out_dim)


def build_decoder(config: ModelConfig, in_dim: int, x_dim: int, params_per_dim: int) -> nn.Module:
    """(..., in_dim) -> (..., x_dim · params_per_dim): z (and condition) to distribution params."""
    return lookup(NETS, config.net, "model.net", "net")[1](config, in_dim, x_dim, params_per_dim)


__all__ = [
    "ACTIVATIONS", "NETS", "ConvDecoder", "ConvEncoder", "ResConvDecoder", "ResConvEncoder", "build_decoder",
    "build_encoder", "image_shape_for", "mlp",
]
