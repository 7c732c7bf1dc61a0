"""Observation models p(x|z): turn decoder outputs into a torch.distributions object.

Heads: ``gaussian`` (fixed σ²), ``gaussian-learned`` (σ²(z) ≥ min_var), ``bernoulli`` (binary
data) and, for grey levels in [0, 1] (issue 24), ``gaussian-sigmoid`` (a learned-variance
Gaussian whose mean is squashed into (0, 1)), ``continuous-bernoulli`` (Loaiza-Ganem &
Cunningham 2019, with its normalising constant) and ``logistic256`` (a per-pixel discretized
logistic over the 256 levels of 8-bit images: a probability mass function, not a density).
``discrete_log_prob`` scores any grey-level head on one scale, the log-probability of the
observed 8-bit values, so densities and the pmf can be compared (docs/models.md).

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
from torch.distributions import Bernoulli, ContinuousBernoulli, Distribution, Independent, Normal, constraints
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
                "(vaelab.data.pixels.fixed_binarization, or --binarize fixed / dynamic), or use a grey-level "
                "likelihood (logistic256 for 8-bit images; gaussian-learned, gaussian-sigmoid or continuous-bernoulli)"
            )


def _check_unit_interval(x: Tensor, what: str, head: str, instead: str) -> None:
    """Raise ``DataSupportError`` when some value of x lies outside [0, 1] (NaN included)."""
    bad = ~((x >= 0) & (x <= 1))
    if bool(bad.any()):
        raise DataSupportError(
            f"{what} is not in [0, 1] ({int(bad.sum())} of {x.numel()} values outside, first {float(x[bad][0]):.4g}; "
            f"range [{float(x.min()):.4g}, {float(x.max()):.4g}]): the {head} likelihood is for grey levels in "
            f"[0, 1]. Scale the data to [0, 1] (pixels / 255), or {instead}"
        )


class GaussianSigmoid(GaussianLearned):
    """N(x; sigmoid(m(z)), diag σ²(z)), σ²(z) = min_var + exp(h(z)): a learned-variance Gaussian whose
    mean is bounded to (0, 1). The decoder outputs m and h per dimension.

    For grey levels in [0, 1]: the mean can never leave the range of the data (the unbounded
    mean of ``gaussian-learned`` can, and puts density where no pixel is). The variance is
    learned and floored exactly as in ``GaussianLearned`` (see its docstring for why the floor),
    so against ``gaussian-learned`` the only change is the bounded mean; a fixed σ² would make
    -log p(x|z) a scaled squared error whose likelihood is dominated by the constant
    D/2 · log(2πσ²) (σ² = ½, the course's choice, is far wider than any pixel's noise).
    The density is still a density on R^D: compare it with a pmf only through
    ``discrete_log_prob``.
    """

    def forward(self, params: Tensor) -> Distribution:  # (..., 2D) -> p_x with batch (...), event (D,)
        m, h = params.chunk(2, dim=-1)
        var = self.min_var + torch.exp(h)
        return Independent(normal(torch.sigmoid(m), var.sqrt()), 1, validate_args=False)

    def check_support(self, x: Tensor, what: str = "the data") -> None:
        """Refuse x outside [0, 1]: the sigmoid mean cannot reach it."""
        _check_unit_interval(x, what, "gaussian-sigmoid", "use --likelihood gaussian-learned (unbounded mean)")


def _cb_log_norm(logits: Tensor) -> Tensor:
    """log C(λ) of the continuous Bernoulli in terms of ℓ = logit λ (Loaiza-Ganem & Cunningham 2019, eq. 7):

        C = 2 artanh(1 − 2λ) / (1 − 2λ) = ℓ / tanh(ℓ/2),   since 1 − 2λ = −tanh(ℓ/2) and 2 artanh(1 − 2λ) = −ℓ.

    C is even in ℓ, so log C = log|ℓ| − log tanh(|ℓ|/2), exact to float rounding (in absolute terms) for
    every ℓ ≠ 0; below |ℓ| = 1e-3 the series log 2 + ℓ²/12 (the next term, ℓ⁴/1440, is under 1e-15).
    torch's ``ContinuousBernoulli`` computes C from λ clamped to [eps, 1 − eps], which caps |ℓ| at
    ≈ 15.9 in float32: beyond, its log C stays at log 15.9 where the true value is log |ℓ| (and its
    gradient vanishes), and a VAE drives the logits of black pixels well past that.
    """
    a = logits.abs()
    safe = torch.where(a < 1e-3, torch.ones_like(a), a)
    exact = torch.log(safe) - torch.log(torch.tanh(safe / 2))
    return torch.where(a < 1e-3, math.log(2.0) + a.square() / 12, exact)


class ContinuousBernoulliLogits(ContinuousBernoulli):
    """torch's ``ContinuousBernoulli`` with its normalising constant, mean and inverse CDF computed
    from the logits ℓ, exact for every ℓ (torch's clamp λ to [eps, 1 − eps] is wrong for |ℓ| ≳ 16).

    p(x | λ) = C(λ) λ^x (1 − λ)^{1−x} on [0, 1], so log p(x) = x ℓ − softplus(ℓ) + log C(ℓ).
    Mean (their eq. 9, in ℓ): E[x] = 1 / (1 − e^{−ℓ}) − 1/ℓ, ½ + ℓ/12 − ℓ³/720 near 0.
    CDF: F(x) = (e^{xℓ} − 1) / (e^{ℓ} − 1); inverse F⁻¹(u) = log(1 + u (e^{ℓ} − 1)) / ℓ.
    """

    def __init__(self, logits: Tensor) -> None:
        super().__init__(logits=logits, validate_args=False)

    def _cont_bern_log_norm(self) -> Tensor:
        return _cb_log_norm(self.logits)

    @property
    def mean(self) -> Tensor:
        ell = self.logits
        small = ell.abs() < 0.1
        safe = torch.where(small, torch.ones_like(ell), ell)
        exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
        return torch.where(small, 0.5 + ell / 12 - ell.pow(3) / 720, exact)

    def icdf(self, value: Tensor) -> Tensor:
        ell = self.logits
        small = ell.abs() < 1e-6
        safe = torch.where(small, torch.ones_like(ell), ell)
        # ℓ < 0: log1p(u expm1(ℓ)) / ℓ; ℓ > 0: 1 + log(u + (1 − u) e^{−ℓ}) / ℓ, which cannot overflow
        neg = torch.log1p(value * torch.expm1(-safe.abs())) / -safe.abs()
        pos = 1 + torch.log(value + (1 - value) * torch.exp(-safe.abs())) / safe.abs()
        return torch.where(small, value, torch.where(ell < 0, neg, pos)).clamp(0.0, 1.0)

    def log_prob(self, value: Tensor) -> Tensor:  # value (...) broadcasting against the logits
        ell = self.logits
        return value * ell - F.softplus(ell) + _cb_log_norm(ell)


class ContinuousBernoulliHead(Likelihood):
    """Continuous Bernoulli CB(x; σ(ℓ(z))) on [0, 1] (Loaiza-Ganem & Cunningham 2019): the decoder
    outputs ℓ per pixel. Unlike a Bernoulli's cross-entropy on grey levels, its log_prob is a
    normalised log-density (eq. 7's C(λ) included), so its ELBO is a bound on a log-likelihood.
    Its mean E[x] (not λ) is what figures show.
    """

    def forward(self, params: Tensor) -> Distribution:  # (..., D) -> p_x with batch (...), event (D,)
        return Independent(ContinuousBernoulliLogits(params), 1, validate_args=False)

    def check_support(self, x: Tensor, what: str = "the data") -> None:
        """Refuse x outside [0, 1], the support of the continuous Bernoulli."""
        _check_unit_interval(x, what, "continuous-bernoulli", "use --likelihood gaussian-learned")


def _log1mexp(t: Tensor) -> Tensor:
    """log(1 − e^{−t}) for t > 0, stable at both ends (Mächler 2012: expm1 below log 2, log1p above)."""
    return torch.where(t < math.log(2.0), torch.log(-torch.expm1(-t)), torch.log1p(-torch.exp(-t)))


class DiscretizedLogistic(Distribution):
    """A logistic(μ, s) discretized onto the ``levels`` values k / (levels − 1), k = 0 … levels − 1, of [0, 1]
    (Salimans et al. 2017, PixelCNN++, eq. 2, with one component and data in [0, 1]).

    Level k takes the logistic's mass on its bin [c − δ, c + δ], c = k/(levels − 1), δ = ½/(levels − 1);
    the edge levels take the tails: P(0) = F(δ), P(levels − 1) = 1 − F(1 − δ), F(y) = σ((y − μ)/s).
    For an interior bin, with a = (c + δ − μ)/s > b = (c − δ − μ)/s,

        σ(a) − σ(b) = σ(a) σ(−b) (1 − e^{−(a − b)}),   so   log P = logσ(a) + logσ(−b) + log(1 − e^{−2δ/s}),

    which never subtracts two nearly equal numbers (the plain log(σ(a) − σ(b)) is 0 − 0 or 1 − 1 in the
    tails, and PixelCNN++'s code needs three fallbacks for it). A pmf: every log_prob ≤ 0, and the
    levels' probabilities sum to 1 for any μ, s.

    ``log_prob(x)`` scores the level nearest to x: it is a pmf over the grid, and values off the
    grid are refused once per data set by the head's ``check_support``, not on every step.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval  # the grid {k / (levels − 1)} inside it
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, levels: int = 256) -> None:
        if levels < 2:
            raise InputError(f"levels must be at least 2, got {levels}")
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.levels = int(levels)
        super().__init__(self.loc.shape, validate_args=False)

    @property
    def half_bin(self) -> float:
        """δ, half the distance between two levels."""
        return 0.5 / (self.levels - 1)

    def log_prob(self, value: Tensor) -> Tensor:  # value (...) broadcasting against loc -> (...)
        top = self.levels - 1
        k = torch.round(value * top).clamp(0, top)  # the level of each value
        inv_s = 1.0 / self.scale
        centred = k / top - self.loc
        # The edge bins are the interior formula with an infinite edge: a = +∞ at the top level and
        # b = −∞ at level 0 make their logσ term and log(1 − e^{−(a − b)}) zero, so one expression
        # serves all levels (no branch computed twice, and no NaN gradient from an unused branch).
        inf = torch.full_like(centred, math.inf)
        above = torch.where(k == top, inf, (centred + self.half_bin) * inv_s)  # a
        below = torch.where(k == 0, -inf, (centred - self.half_bin) * inv_s)  # b
        width = torch.where((k == 0) | (k == top), inf, 2 * self.half_bin * inv_s)  # a − b, without cancellation
        # log(1 − e^{−t}) as log(−expm1(−t)): exact to float rounding in absolute terms for every t > 0,
        # which is what a sum of log-probabilities needs
        return F.logsigmoid(above) + F.logsigmoid(-below) + torch.log(-torch.expm1(-width))

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = torch.Size(),
               generator: torch.Generator | None = None) -> Tensor:
        """Draw y ~ logistic(μ, s) (inverse CDF of a uniform from ``generator``) and round it to its level."""
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
            u = u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)  # logit(0) = −∞
            y = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
            top = self.levels - 1
            return torch.round(y * top).clamp(0, top) / top

    @property
    def mean(self) -> Tensor:
        """E[x] = Σ_k (k/(L−1)) P(k) = (1/(L−1)) Σ_{j=1}^{L−1} P(x ≥ j/(L−1)) = (1/(L−1)) Σ_j σ((μ − t_j)/s),
        t_j = (j − ½)/(L−1): one pass per threshold, without a (..., L) tensor of probabilities."""
        top = self.levels - 1
        inv_s = 1.0 / self.scale
        total = torch.zeros_like(self.loc)
        for j in range(1, self.levels):
            total = total + torch.sigmoid((self.loc - (j - 0.5) / top) * inv_s)
        return total / top


class DiscretizedLogistic256(Likelihood):
    """Per-pixel discretized logistic over the 256 levels k/255 of 8-bit images in [0, 1]: the decoder
    outputs μ and h per pixel, s = min_scale + exp(h).

    μ is not bounded: a μ beyond [0, 1] puts the mass in an edge level, which is how the model says
    "certainly black" (most MNIST pixels). The scale needs no floor for the likelihood to stay
    bounded (a pmf is at most 1, unlike a density); ``MIN_SCALE`` = 1e-5 only keeps 1/s finite in
    float32. It costs nothing: at s = 1e-5 a centred bin holds 1 − 2e^{−196} of the mass.
    """

    params_per_dim = 2
    levels = 256
    MIN_SCALE = 1e-5

    def forward(self, params: Tensor) -> Distribution:  # (..., 2D) -> p_x with batch (...), event (D,)
        loc, h = params.chunk(2, dim=-1)
        return Independent(DiscretizedLogistic(loc, self.MIN_SCALE + torch.exp(h), self.levels), 1,
                           validate_args=False)

    def check_support(self, x: Tensor, what: str = "the data") -> None:
        """Refuse x outside [0, 1] or off the 256-level grid k/255."""
        _check_unit_interval(x, what, "logistic256", "use --likelihood gaussian-learned")
        top = self.levels - 1
        off = (x * top - torch.round(x * top)).abs() > 1e-3
        if bool(off.any()):
            first = float(x[off][0])
            raise DataSupportError(
                f"{what} is not on the 256-level grid k/255 ({int(off.sum())} of {x.numel()} values are not, first "
                f"{first:.6g} = {first * top:.4g}/255): the logistic256 likelihood is a distribution over the 256 "
                "grey levels of 8-bit images scaled to [0, 1]. Use it on 8-bit images (pixels / 255); for other "
                "data in [0, 1] use --likelihood continuous-bernoulli or gaussian-sigmoid"
            )


def discrete_log_prob(p_x: Distribution, x: Tensor, levels: int = 256) -> Tensor:
    """log P(x|z) over the ``levels`` grey levels k/(levels − 1), summed over the D dimensions: (...,).

    The common scale of the grey-level heads. A density p on R or [0, 1] is integrated over each
    level's bin, the interval of half-width δ = ½/(levels − 1) around the level (the edge bins reach
    to ±∞ for the Gaussian, to 0 and 1 for the continuous Bernoulli):

        P(x_d) = ∫_{bin(x_d)} p(y) dy,   Σ over the levels = 1,

    so every head becomes a pmf on the same 256^D images, and the discretized logistic is exactly
    this construction for the logistic (its own log_prob). Computed in float64, in log space:
    Gaussian: log(Φ(hi) − Φ(lo)) from log Φ of the lower-tail pair; continuous Bernoulli:
    ∫_a^b C (1 − λ) e^{yℓ} dy = p(a) · w · (e^{wℓ} − 1)/(wℓ), w = b − a.

    p_x: ``Independent`` of Normal, continuous Bernoulli or discretized logistic, batch (...), event (D,);
    x: (..., D) broadcasting against it, values on the grid (rounded to their level).
    """
    base = p_x.base_dist if isinstance(p_x, Independent) else p_x
    top = levels - 1
    delta = 0.5 / top
    k = torch.round(x.double() * top).clamp(0, top)
    centre = k / top
    if isinstance(base, DiscretizedLogistic):
        if base.levels != levels:
            raise InputError(f"p(x|z) is a discretized logistic over {base.levels} levels, not {levels}")
        per_dim = DiscretizedLogistic(base.loc.double(), base.scale.double(), levels).log_prob(centre)
    elif isinstance(base, Normal):
        mu, sd = base.loc.double(), base.scale.double()
        inf = torch.tensor(math.inf, dtype=torch.float64, device=mu.device)
        lo = torch.where(k == 0, -inf, (centre - delta - mu) / sd)
        hi = torch.where(k == top, inf, (centre + delta - mu) / sd)
        # Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi): use the pair whose upper end is lower, so both Φ stay accurate
        flip = lo > 0
        lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
        log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
        per_dim = log_hi + _log1mexp(log_hi - log_lo)
    elif isinstance(base, ContinuousBernoulli):
        ell = base.logits.double()
        a = (centre - delta).clamp(min=0.0)
        w = (centre + delta).clamp(max=1.0) - a
        t = w * ell
        tiny = t.abs() < 1e-8
        safe = torch.where(tiny, torch.ones_like(t), t).abs()
        # log(expm1(t)/t) = max(t, 0) + log(1 − e^{−|t|}) − log|t|, t/2 near 0
        g = torch.where(tiny, t / 2, t.clamp(min=0) + torch.log(-torch.expm1(-safe)) - torch.log(safe))
        per_dim = a * ell - F.softplus(ell) + _cb_log_norm(ell) + torch.log(w) + g
    else:
        raise InputError(
            f"discrete_log_prob scores Normal, continuous Bernoulli and discretized logistic heads on grey levels, "
            f"not {type(base).__name__}"
        )
    return per_dim.sum(-1)


# The likelihoods by name (model.likelihood): each built from (recon_var, min_var).
LIKELIHOODS: dict[str, Callable[[float, float], Likelihood]] = {
    "gaussian": lambda recon_var, min_var: GaussianFixed(recon_var),
    "gaussian-learned": lambda recon_var, min_var: GaussianLearned(min_var),
    "bernoulli": lambda recon_var, min_var: BernoulliLogits(),
    "gaussian-sigmoid": lambda recon_var, min_var: GaussianSigmoid(min_var),
    "continuous-bernoulli": lambda recon_var, min_var: ContinuousBernoulliHead(),
    "logistic256": lambda recon_var, min_var: DiscretizedLogistic256(),
}


def build_likelihood(name: str, recon_var: float = 1.0, min_var: float = 1e-6) -> Likelihood:
    """``gaussian`` (fixed σ² = recon_var), ``gaussian-learned`` (σ² ≥ min_var), ``bernoulli``, and for
    grey levels ``gaussian-sigmoid`` (σ² ≥ min_var), ``continuous-bernoulli`` or ``logistic256``."""
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
    if isinstance(base, ContinuousBernoulli):  # inverse CDF of a uniform
        u = torch.rand(base.logits.shape, generator=generator, device=base.logits.device, dtype=base.logits.dtype)
        return base.icdf(u)
    if isinstance(base, DiscretizedLogistic):
        return base.sample(generator=generator)
    raise TypeError(f"cannot sample from {type(base).__name__} with a generator")
