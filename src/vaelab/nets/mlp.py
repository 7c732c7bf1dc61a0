"""Multi-layer perceptrons: the encoder and decoder bodies of every MLP model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vaelab.config import lookup

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name (the names of ``ACTIVATIONS``)."""
    return lookup(ACTIVATIONS, name, "model.activation", "activation")()


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu") -> nn.Sequential:
    """Linear -> activation -> ... -> Linear: (B, in_dim) -> (B, out_dim).

    The last layer has no activation: its outputs are distribution parameters (means,
    log-variances, logits) whose range the model maps itself.
    """
    activation_layer(activation)  # check the name before building anything
    sizes = [in_dim, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation_layer(activation)]
    layers.append(nn.Linear(sizes[-1], out_dim))
    return nn.Sequential(*layers)
