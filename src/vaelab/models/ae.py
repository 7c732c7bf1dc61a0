"""A plain (deterministic) autoencoder: the baseline a VAE is compared with.

It has no posterior and no KL, so it reports the reconstruction term only. ``sample``
decodes z ~ N(0, I) like a VAE would; for an autoencoder nothing shapes the codes to
fill that prior, which is exactly what the comparison figures are meant to show.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from vaelab.config import ModelConfig
from vaelab.models.base import LatentModel


class AE(LatentModel):
    """x (B, D) -> z = f(x) (B, d) -> p(x|z) from the configured likelihood."""

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self._build(config, x_dim, cond_dim, cond_embed, encoder_out=config.latent_dim)  # z itself

    def embed(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The code z = f(x): (B, D) -> (B, d)."""
        self._check_width(x, self.x_dim, "x", "x_dim")
        return self.encoder(self._with_condition(x, c))
