"""Two test-only families with a non-Normal piece, each written against the model contract only.

- ``CouplingFlowVAE``: q(z|x) is a TransformedDistribution: the VAE's N(μ, diag σ²) pushed
  through one affine coupling layer (Dinh et al. 2017, "Real NVP", eq. 4-6), whose inverse and
  log-determinant are exact. KL(q ‖ p) has no closed form, so objectives use Monte Carlo.
- ``MixturePriorVAE``: the VAE's Normal q(z|x) with a learned K-component Gaussian-mixture
  prior p(z) = Σ_i π_i N(m_i, diag s_i²) (a MixtureSameFamily); KL again by Monte Carlo. It
  declares options of its own (``MixturePriorOptions``: K, the modes' spread, whether π is
  learned): the family options of tests/test_family_options.py.

Neither touches anything outside this file: they are registered at runtime with
``vaelab.models.register_family`` and must train, evaluate, save, load and plot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    Transform,
    TransformedDistribution,
    constraints,
)

from vaelab.config import FamilyOptions, ModelConfig
from vaelab.models import VAE


class AffineCoupling(Transform):
    """(z_a, z_b) -> (z_a, z_b ⊙ exp(s(z_a)) + t(z_a)), split after ``split`` coordinates.

    log |det ∂f/∂z| = Σ s(z_a) (the Jacobian is triangular); s = tanh(·) keeps the scale bounded.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, net: nn.Module, split: int) -> None:
        super().__init__(cache_size=0)
        self.net, self.split = net, split

    def _params(self, z_a: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(z_a).chunk(2, dim=-1)
        return torch.tanh(s), t

    def _call(self, z: Tensor) -> Tensor:
        z_a, z_b = z[..., :self.split], z[..., self.split:]
        s, t = self._params(z_a)
        return torch.cat([z_a, z_b * torch.exp(s) + t], dim=-1)

    def _inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = y[..., :self.split], y[..., self.split:]
        s, t = self._params(y_a)
        return torch.cat([y_a, (y_b - t) * torch.exp(-s)], dim=-1)

    def log_abs_det_jacobian(self, z: Tensor, y: Tensor) -> Tensor:
        return self._params(z[..., :self.split])[0].sum(-1)


class CouplingFlowVAE(VAE):
    """q(z|x) = f_# N(μ(x), diag σ²(x)), f one affine coupling layer shared by all x (d ≥ 2)."""

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__(config, x_dim, cond_dim, cond_embed)
        d = config.latent_dim
        self.split = d // 2
        self.coupling = nn.Linear(self.split, 2 * (d - self.split))

    def encode(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        base = super().encode(x, c)  # Independent Normal, batch (B,), event (d,)
        return TransformedDistribution(base, [AffineCoupling(self.coupling, self.split)], validate_args=False)

    def embed(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """f(μ(x)): the flow applied to the base mean (q has no closed-form mean)."""
        q_z = self.encode(x, c)
        assert isinstance(q_z, TransformedDistribution)
        z = q_z.base_dist.mean
        for transform in q_z.transforms:
            z = transform(z)
        return z


class MixturePriorOptions(FamilyOptions):
    """The ``[model.NAME]`` table of MixturePriorVAE (NAME: the name it is registered as)."""

    components: int = Field(2, gt=0, description="number K of mixture components of p(z)")
    spread: float = Field(1.5, gt=0, description="initial means of the components: evenly from -spread to "
                          "spread along the first latent axis")
    learn_weights: bool = Field(True, description="learn the weights π (else uniform, 1/K each)")


class MixturePriorVAE(VAE):
    """The VAE with p(z) = Σ_{i=1}^{K} π_i N(m_i, diag s_i²), m and s learned, π learned or 1/K."""

    options = MixturePriorOptions

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__(config, x_dim, cond_dim, cond_embed)
        opts = config.family_options(MixturePriorOptions)  # validated, defaults filled in
        k, d = opts.components, config.latent_dim
        means = torch.zeros(k, d)
        means[:, 0] = torch.linspace(-opts.spread, opts.spread, k)  # modes apart along the first axis
        logits = torch.zeros(k)
        if opts.learn_weights:
            self.prior_logits = nn.Parameter(logits)
        else:
            self.register_buffer("prior_logits", logits)
        self.prior_means = nn.Parameter(means)
        self.prior_scale_raw = nn.Parameter(torch.zeros(k, d))

    def prior(self, c: Tensor | None = None) -> Distribution:
        """p(z): batch shape (), event shape (d,)."""
        components = Independent(Normal(self.prior_means, F.softplus(self.prior_scale_raw) + 1e-3,
                                        validate_args=False), 1, validate_args=False)
        return MixtureSameFamily(Categorical(logits=self.prior_logits, validate_args=False), components,
                                 validate_args=False)
