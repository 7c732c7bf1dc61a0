"""A plain (deterministic) autoencoder: the baseline a VAE is compared with.

It has no posterior and no KL, so it reports the reconstruction term only. ``sample``
decodes z ~ N(0, I) like a VAE would; for an autoencoder nothing shapes the codes to
fill that prior, which is exactly what the comparison figures are meant to show.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vaelab.config import ModelConfig
from vaelab.likelihoods import build_likelihood, sample_observation
from vaelab.models.vae import LatentModel, condition_embedding
from vaelab.nets import build_decoder, build_encoder


class AE(LatentModel):
    """x (B, D) -> z = f(x) (B, d) -> p(x|z) from the configured likelihood."""

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self.config = config
        self.x_dim = x_dim
        self.cond_dim = cond_dim
        d = config.latent_dim
        self.likelihood = build_likelihood(config.likelihood, config.recon_var)
        self.cond_net, c_width = condition_embedding(cond_dim, cond_embed, config.activation)
        self.cond_embed = tuple(cond_embed) if self.cond_net is not None else ()
        self.encoder = build_encoder(config, x_dim, c_width, d)
        self.decoder = build_decoder(config, d + c_width, x_dim, self.likelihood.params_per_dim)

    def embed(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The code z = f(x): (B, D) -> (B, d)."""
        return self.encoder(self._with_condition(x, c))

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        stochastic: bool = False,
    ) -> Tensor:
        p_x = self.decode(self.embed(x, c), c)
        return sample_observation(p_x, generator) if stochastic else p_x.mean
