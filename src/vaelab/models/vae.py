"""The variational autoencoder: encode -> q(z|x), decode -> p(x|z), both torch distributions.

The model only defines distributions; it never computes its own loss (see objectives.py).
Kingma & Welling (2014), "Auto-Encoding Variational Bayes".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Independent, Normal

from vaelab.config import ModelConfig
from vaelab.distributions import NormalLogVar, standard_normal
from vaelab.models.base import LatentModel, VariationalModel, condition_embedding

# Re-exported: these lived here before the contract moved to base.py and distributions.py.
__all__ = ["VAE", "LatentModel", "NormalLogVar", "VariationalModel", "condition_embedding", "standard_normal"]


class VAE(VariationalModel):
    """A VAE with MLP encoder and decoder.

    encode: x (B, D) [+ c] -> q(z|x) = N(μ(x), diag σ²(x)), an Independent Normal over d dims.
    decode: z (..., d) [+ c] -> p(x|z) from the configured likelihood.
    The encoder's scale output h becomes σ by ``config.scale``: ``logvar`` (h = log σ²,
    σ = exp(h/2)), ``softplus`` (σ = softplus(h)) or ``exp`` (h = log σ, σ = exp(h)).
    """

    reads_scale = True

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self._build(config, x_dim, cond_dim, cond_embed, encoder_out=2 * config.latent_dim)  # μ and scale

    @property
    def posterior_is_factorised_normal(self) -> bool:
        # A subclass with its own encode (a flow, say) is not known to return N(μ, diag σ²).
        return type(self).encode is VAE.encode

    def _scale(self, h: Tensor) -> Tensor:
        if self.config.scale == "logvar":
            return torch.exp(0.5 * h)
        if self.config.scale == "softplus":
            return F.softplus(h)
        return torch.exp(h)

    def encode(self, x: Tensor, c: Tensor | None = None) -> Independent:
        """q(z|x, c): (B, D) -> Independent Normal with batch shape (B,), event shape (d,)."""
        self._check_width(x, self.x_dim, "x", "x_dim")
        loc, h = self.encoder(self._with_condition(x, c)).chunk(2, dim=-1)  # (B, d) each
        return self._normal_posterior(loc, h)

    def _normal_posterior(self, loc: Tensor, h: Tensor) -> Independent:
        """N(μ, diag σ²) from the encoder's two halves μ = ``loc`` and the scale output ``h``
        (``config.scale`` says how h becomes σ): batch shape loc.shape[:-1], event (d,)."""
        # No argument validation: it costs time every step and would turn a NaN from a
        # diverging run into a ValueError here instead of the trainer's clear message.
        if self.config.scale == "logvar":
            base: Normal = NormalLogVar(loc, h)
        else:
            base = Normal(loc, self._scale(h), validate_args=False)
        return Independent(base, 1, validate_args=False)
