"""A test-only family with a per-step scalar: the engine's contract for families that anneal.

``AnnealedVAE`` declares τ, a temperature on the posterior's scale: q(z|x) = N(μ(x), diag (τ σ(x))²),
with τ annealed geometrically from 1 to 0.25 over the budget (the way a Gumbel-softmax
temperature is annealed). τ lives in a buffer: the training step writes each step's value into
it (``LatentModel.set_scalars``), it is saved with the weights, and a stacked sweep must carry
it per member exactly as ``fit`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from vaelab.config import ModelConfig, ScheduleSpec
from vaelab.models import VAE

TAU = ScheduleSpec(kind="exponential", value=1.0, end=0.25)


class AnnealedVAE(VAE):
    """The VAE with q(z|x) = N(μ(x), diag (τ σ(x))²), τ a per-step scalar of its own."""

    def __init__(self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()) -> None:
        super().__init__(config, x_dim, cond_dim, cond_embed)
        self.register_buffer("tau", torch.ones(()))

    def step_scalars(self) -> dict[str, ScheduleSpec]:
        return {"tau": TAU}

    def encode(self, x: Tensor, c: Tensor | None = None) -> Independent:
        base = super().encode(x, c).base_dist
        assert isinstance(base, Normal)
        return Independent(Normal(base.loc, self.tau * base.scale, validate_args=False), 1, validate_args=False)
