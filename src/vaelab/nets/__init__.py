"""Encoder / decoder bodies: plain nn.Modules mapping (B, in) -> (B, out)."""

from vaelab.nets.mlp import ACTIVATIONS, mlp

__all__ = ["ACTIVATIONS", "mlp"]
