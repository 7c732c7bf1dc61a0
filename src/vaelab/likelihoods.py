"""Observation models p(x|z): turn decoder outputs into a torch.distributions object.

Each likelihood says how many decoder outputs it needs per data dimension and builds an
``Independent`` distribution over the D data dimensions, so ``p_x.log_prob(x)`` is summed
over dimensions and has the batch shape of the decoder output.

Distributions are built with ``validate_args=False``: validation runs on every training
step, and a NaN from a diverging run must reach the trainer's finite-loss check (which
names the step) rather than fail inside torch.distributions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.nn import functional as F

from vaelab.config import lookup
from vaelab.distributions import broadcasts_to, normal
from vaelab.errors import InputError


class DataSupportError(InputError):
    """Data outside the support of the likelihood (grey levels under a Bernoulli p(x|z))."""


class Likelihood(nn.Module):
    """Base class: ``params_per_dim`` decoder outputs per data dimension -> p(x|z)."""

    params_per_dim: int = 1

    def check_support(self, x: Tensor, what: str = "the data") -> None:
        """Raise ``DataSupportError`` when x (N, D) lies outside the support of p(x|z).

        Called once per data set (by evaluation), not per step: the check reads every value
        back to the host, which a training step should not pay for. Densities on R^D accept
        any x.
        """

    def forward(self, params: Tensor) -> Distribution:  # (..., D * params_per_dim) -> p_x
        raise NotImplementedError

    def noise_std(self, p_x: Distribution) -> Tensor | None:
        """Standard deviation of the observation noise (Gaussian heads), else None."""
        return None


def _normal_base(p_x: Distribution) -> Normal:
    """The Normal inside a Gaussian head's p(x|z) = Independent(Normal, 1), as its ``forward`` builds it.

    ``noise_std`` keeps the base class's ``Distribution`` parameter, so the type is stated here.
    """
    return cast("Independent[Normal]", p_x).base_dist


class GaussianFixed(Likelihood):
    """N(x; μ(z), σ² I) with a fixed σ² = ``var``.

    -log p(x|z) = ‖x - μ‖² / (2σ²) + D/2 · log(2πσ²): the squared error weighted by
    λ_rec = 1/σ², plus a constant that keeps the number an honest negative log-likelihood.
    """

    def __init__(self, var: float) -> None:
        super().__init__()
        if var <= 0:
            raise InputError(f"recon_var (σ²) must be positive, got {var}")
        self.var = float(var)

    def forward(self, params: Tensor) -> Distribution:
        return Independent(Normal(params, math.sqrt(self.var), validate_args=False), 1, validate_args=False)

    def noise_std(self, p_x: Distribution) -> Tensor:
        base = _normal_base(p_x)
        return base.scale.expand_as(base.loc)

    def extra_repr(self) -> str:
        return f"var={self.var}"


class GaussianLearned(Likelihood):
    """N(x; μ(z), diag σ²(z)) with σ²(z) = min_var + exp(h(z)): the decoder outputs μ and h per dimension.

    Why a floor: without it the decoder can shrink σ² towards 0 wherever the data repeat a
    value (discrete columns, pixels that are exactly 0), and -log p(x|z) = (x-μ)²/(2σ²) +
    ½ log(2πσ²) then runs to -∞: a "likelihood" that grows without bound and a training
    that diverges. With the floor, -log p(x|z) ≥ ½ log(2π · min_var) per dimension. The
    default 1e-6 (σ ≥ 1e-3) is about the quantisation noise of 8-bit values scaled to
    [0, 1] (1/255/√12 ≈ 1.1e-3), and far below the noise of any continuous data set here,
    so it binds only where the density would otherwise degenerate. Added rather than
    clamped, so the gradient with respect to h never vanishes.
    """

    params_per_dim = 2

    def __init__(self, min_var: float = 1e-6) -> None:
        super().__init__()
        if not min_var > 0:
            raise InputError(f"min_var (the variance floor) must be positive, got {min_var}")
        self.min_var = float(min_var)

    def forward(self, params: Tensor) -> Distribution:
        mean, h = params.chunk(2, dim=-1)
        var = self.min_var + torch.exp(h)
        return Independent(normal(mean, var.sqrt()), 1, validate_args=False)

    def extra_repr(self) -> str:
        return f"min_var={self.min_var}"

    def noise_std(self, p_x: Distribution) -> Tensor:
        return _normal_base(p_x).scale


class IndependentBernoulli(Independent):
    """Π_d Bernoulli(x_d; σ(ℓ_d)) over the last dimension: torch's ``Independent(Bernoulli(logits), 1)``
    with a cheaper ``log_prob``.

    log p(x|z) = Σ_d x_d log σ(ℓ_d) + (1 − x_d) log(1 − σ(ℓ_d)) = Σ_d x_d ℓ_d − softplus(ℓ_d),
    since log σ(ℓ) = ℓ − softplus(ℓ) and log(1 − σ(ℓ)) = −softplus(ℓ). That is one transcendental
    pass and one dot product per point instead of the several elementwise passes of
    ``binary_cross_entropy_with_logits``: the same number up to float rounding, with the same
    gradient x − σ(ℓ), about twice as fast on the (k, B, D) logits of importance sampling.
    When x (B, D) is shared by k decoded samples (k, B, D) and a gradient is wanted (IWAE
    training), Σ_d x_d ℓ_d is one batched matrix product and x is never expanded to (k, B, D).
    Without a gradient (evaluation) the terms softplus(ℓ_d) − x_d ℓ_d are formed in the softplus
    output in place and summed once: no second (k, B, D) tensor, and no batched matrix product,
    whose B matrix-vector products of k rows each run at a fraction of memory speed. The two
    routes agree to float rounding.
    """

    def log_prob(self, value: Tensor) -> Tensor:  # value (..., D) broadcasting against the logits
        logits = cast(Bernoulli, self.base_dist).logits
        wants_grad = torch.is_grad_enabled() and (logits.requires_grad or value.requires_grad)
        if not wants_grad and value.dtype == logits.dtype and broadcasts_to(value.shape, logits.shape):
            terms = F.softplus(logits)  # (..., D)
            # softplus(ℓ) − x·ℓ in the softplus output (sub_ rather than addcmul_, which vmap, as in a
            # stacked sweep, runs through a slow fallback with a warning)
            terms.sub_(logits * value)
            return -terms.sum(-1)
        if wants_grad and logits.dim() == 3 and value.dim() == 2 and value.shape == logits.shape[1:]:
            x_dot_logits = torch.einsum("kbd,bd->kb", logits, value)  # (k, B)
        else:
            x_dot_logits = torch.linalg.vecdot(logits, value)  # (...)
        return x_dot_logits - F.softplus(logits).sum(-1)


class BernoulliLogits(Likelihood):
    """Bernoulli(x; sigmoid(ℓ(z))) parameterised by logits: stable, no sigmoid-then-BCE."""

    def forward(self, params: Tensor) -> Distribution:
        return IndependentBernoulli(Bernoulli(logits=params, validate_args=False), 1, validate_args=False)

    def check_support(self, x: Tensor, what: str = "the data") -> None:
        """Refuse x that is not in {0, 1}: there ``log_prob`` is a cross-entropy, not a log-likelihood."""
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            first = float(x[bad][0])
            raise DataSupportError(
                f"{what} is not binary ({int(bad.sum())} of {x.numel()} values are neither 0 nor 1, first "
                f"{first:.4g}): the Bernoulli likelihood is a distribution over {{0, 1}}, and its log-probability "
                "of grey levels is a cross-entropy, not a likelihood. Binarize the data first "
                "(vaelab.data.pixels.fixed_binarization, or --binarize fixed / dynamic), or use a gaussian likelihood"
            )


# The likelihoods by name (model.likelihood): each built from (recon_var, min_var).
LIKELIHOODS: dict[str, Callable[[float, float], Likelihood]] = {
    "gaussian": lambda recon_var, min_var: GaussianFixed(recon_var),
    "gaussian-learned": lambda recon_var, min_var: GaussianLearned(min_var),
    "bernoulli": lambda recon_var, min_var: BernoulliLogits(),
}


def build_likelihood(name: str, recon_var: float = 1.0, min_var: float = 1e-6) -> Likelihood:
    """``gaussian`` (fixed σ² = recon_var), ``gaussian-learned`` (σ² ≥ min_var) or ``bernoulli``."""
    return lookup(LIKELIHOODS, name, "model.likelihood", "likelihood")(recon_var, min_var)


def sample_observation(p_x: Distribution, generator: torch.Generator | None = None) -> Tensor:
    """Draw x ~ p(x|z) with an explicit generator (torch.distributions' sample() has none)."""
    base = p_x.base_dist if isinstance(p_x, Independent) else p_x
    if isinstance(base, Normal):
        eps = torch.randn(base.loc.shape, generator=generator, device=base.loc.device, dtype=base.loc.dtype)
        return base.loc + base.scale * eps
    if isinstance(base, Bernoulli):
        u = torch.rand(base.probs.shape, generator=generator, device=base.probs.device, dtype=base.probs.dtype)
        return (u < base.probs).to(base.probs.dtype)
    raise TypeError(f"cannot sample from {type(base).__name__} with a generator")
