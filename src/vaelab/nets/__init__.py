"""Encoder / decoder bodies: plain nn.Modules mapping (..., in) -> (..., out).

``build_encoder`` / ``build_decoder`` pick the body a ModelConfig asks for (``net = "mlp"`` or
``"conv"``); the models call only these two, so a new body is added here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from vaelab.nets.conv import ConvDecoder, ConvEncoder, image_shape_for
from vaelab.nets.mlp import ACTIVATIONS, mlp

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


def build_encoder(config: ModelConfig, x_dim: int, extra_dim: int, out_dim: int) -> nn.Module:
    """(..., x_dim + extra_dim) -> (..., out_dim); ``extra_dim`` condition columns follow x."""
    if config.net == "conv":
        shape = image_shape_for(x_dim)
        return ConvEncoder(shape, out_dim, extra_dim, config.channels, config.activation)
    return mlp(x_dim + extra_dim, config.hidden, out_dim, config.activation)


def build_decoder(config: ModelConfig, in_dim: int, x_dim: int, params_per_dim: int) -> nn.Module:
    """(..., in_dim) -> (..., x_dim · params_per_dim): z (and condition) to distribution params."""
    if config.net == "conv":
        shape = image_shape_for(x_dim)
        return ConvDecoder(in_dim, shape, params_per_dim, config.channels, config.activation)
    return mlp(in_dim, list(reversed(config.hidden)), x_dim * params_per_dim, config.activation)


__all__ = [
    "ACTIVATIONS", "ConvDecoder", "ConvEncoder", "build_decoder", "build_encoder",
    "image_shape_for", "mlp",
]
