"""The distributions layer every family shares: generator-aware draws and KL(q ‖ p).

``rsample(dist, sample_shape, generator)`` is ``dist.rsample(sample_shape)`` with an explicit
``torch.Generator``, so training, evaluation and figures are reproducible without touching
the global RNG. ``kl(q_z, p_z, z)`` is torch's ``kl_divergence`` where a closed form is
registered and the Monte Carlo estimate log q(z) − log p(z) otherwise. A family whose q or
prior is a new distribution type adds its draw with ``@register_rsample(MyType)`` and, if it
has one, its closed-form KL with ``torch.distributions.kl.register_kl``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    kl_divergence,
    register_kl,
)
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.distributions.utils import clamp_probs

from vaelab.errors import VaelabError

Shape = tuple[int, ...]
Sampler = Callable[..., Tensor]
D = TypeVar("D", bound=Distribution)
DrawFn = Callable[[D, Shape, "torch.Generator | None"], Tensor]

_RSAMPLERS: dict[type[Distribution], Sampler] = {}
# type(dist) -> its draw, the MRO walk of ``rsample`` done once per type
_RSAMPLE_DISPATCH: dict[type[Distribution], Sampler] = {}


class UnsupportedDistribution(VaelabError, TypeError):
    """A distribution type that ``rsample`` has no generator-aware draw for."""


class KLNeedsSamples(VaelabError, ValueError):
    """``kl`` has no closed form for this pair and was given no z for the Monte Carlo estimate."""


def register_rsample(cls: type[D]) -> Callable[[DrawFn[D]], DrawFn[D]]:
    """Decorator: ``fn(dist, sample_shape, generator) -> Tensor`` draws from ``cls`` (and its
    subclasses, unless one registers its own). The draw must be reparameterised (gradients flow
    to the parameters) and take all its noise from ``generator``."""

    def deco(fn: DrawFn[D]) -> DrawFn[D]:
        _RSAMPLERS[cls] = fn
        _RSAMPLE_DISPATCH.clear()  # a new registration may be more specific for a type already looked up
        return fn

    return deco


def rsample(
    dist: Distribution, sample_shape: Shape | torch.Size = (), generator: torch.Generator | None = None
) -> Tensor:
    """A reparameterised draw of ``dist`` whose noise comes from ``generator``.

    Shape: sample_shape + dist.batch_shape + dist.event_shape, as ``dist.rsample``. The most
    specific registered type in ``type(dist)``'s MRO is used (``NormalLogVar`` draws as a Normal,
    ``RelaxedOneHotCategorical`` as a TransformedDistribution). Never uses the global RNG.

    Raises:
        UnsupportedDistribution: no draw is registered for the type (register one with
            ``@register_rsample(Type)``).
    """
    shape = tuple(sample_shape)
    fn = _RSAMPLE_DISPATCH.get(type(dist))
    if fn is not None:  # this type was looked up before (every training step draws from the same types)
        return fn(dist, shape, generator)
    for cls in type(dist).__mro__:
        fn = _RSAMPLERS.get(cls)
        if fn is not None:
            _RSAMPLE_DISPATCH[type(dist)] = fn
            return fn(dist, shape, generator)
    raise UnsupportedDistribution(
        f"vaelab.distributions.rsample has no generator-aware draw for {type(dist).__name__}; register one with "
        f"@vaelab.distributions.register_rsample({type(dist).__name__}) on a function (dist, sample_shape, "
        f"generator) -> Tensor (supported: {', '.join(sorted(c.__name__ for c in _RSAMPLERS))})"
    )


class NoiseTape:
    """Standard-normal draws made ahead of time, handed out in order in place of a generator.

    ``torch.compile`` cannot trace a ``torch.Generator``, so a compiled training step
    (``train.compile``) draws its ε ~ N(0, I) from the run's generator outside the compiled
    function, in the order and shapes the eager step would, and passes them in on a tape:
    the compiled step then sees exactly the eager step's noise. ``record`` makes the tape's
    plan: with a generator it draws (like ``torch.randn``) and notes each shape.
    """

    def __init__(self, noise: list[Tensor] | None = None, *, record: torch.Generator | None = None) -> None:
        self.noise = [] if noise is None else noise
        self.record = record
        self.shapes: list[tuple[Shape, torch.dtype]] = []
        self.used = 0

    def normal(self, shape: Shape, like: Tensor) -> Tensor:
        """The next ε of ``shape`` (on ``like``'s device and dtype)."""
        if self.record is not None:
            self.shapes.append((shape, like.dtype))
            return torch.randn(shape, generator=self.record, device=like.device, dtype=like.dtype)
        eps = self.noise[self.used]
        self.used += 1
        return eps


def _noise_like(t: Tensor, shape: Shape, generator: torch.Generator | NoiseTape | None) -> Tensor:
    if isinstance(generator, NoiseTape):
        return generator.normal(shape, t)
    return torch.randn(shape, generator=generator, device=t.device, dtype=t.dtype)


def gumbel_noise(shape: Shape, like: Tensor, generator: torch.Generator | NoiseTape | None) -> Tensor:
    """g ~ Gumbel(0, 1) of ``shape`` on ``like``'s device and dtype: g = −log(−log u), u ~ U(0, 1).

    u = Φ(ε) with ε ~ N(0, 1) (Φ the standard Normal CDF, so u is uniform). Drawing the noise
    as standard Normals lets a Gumbel draw come from the same source as every other draw: a
    ``torch.Generator``, or the ``NoiseTape`` of a compiled or stacked (vmapped) training step.
    The Gumbel-max trick (argmax_k (log π_k + g_k) ~ Cat(π)) and the Gumbel-softmax relaxation
    (Jang et al. 2017, eq. 2) both start from it.

    −log u = −log Φ(ε) is computed from the tail t = Φ(−|ε|) = ½ erfc(|ε|/√2), accurate on both
    sides: −log t for ε ≤ 0, −log1p(−t) for ε > 0 (where Φ(ε) = 1 − t is near 1 and log Φ(ε)
    would round to 0). The same number as ``-torch.special.log_ndtr(ε)``, written with ops that
    vmap has batching rules for (a stacked sweep draws under vmap).
    """
    eps = _noise_like(like, shape, generator)
    tail = (0.5 * torch.special.erfc(eps.abs() * _SQRT_HALF)).clamp_min(torch.finfo(eps.dtype).tiny)  # Φ(−|ε|)
    neg_log_u = torch.where(eps > 0, -torch.log1p(-tail), -torch.log(tail))  # −log Φ(ε) > 0
    return -torch.log(neg_log_u.clamp_min(torch.finfo(eps.dtype).tiny))


_SQRT_HALF = math.sqrt(0.5)


@register_rsample(Normal)
def _rsample_normal(dist: Normal, shape: Shape, generator: torch.Generator | None) -> Tensor:
    # z = μ + σ ⊙ ε, ε ~ N(0, I): the reparameterisation trick (Kingma & Welling 2014, eq. 4).
    loc = dist.loc
    return loc + dist.scale * _noise_like(loc, shape + tuple(dist.batch_shape), generator)


@register_rsample(Independent)
def _rsample_independent(dist: Independent, shape: Shape, generator: torch.Generator | None) -> Tensor:
    return rsample(dist.base_dist, shape, generator)  # reinterpreting batch dims changes no value


@register_rsample(MultivariateNormal)
def _rsample_multivariate_normal(dist: MultivariateNormal, shape: Shape, generator: torch.Generator | None) -> Tensor:
    # z = μ + L ε with L Lᵀ = Σ (a full-covariance posterior, e.g. q(z|x) = N(μ(x), L(x) L(x)ᵀ)).
    eps = _noise_like(dist.loc, shape + tuple(dist.batch_shape) + tuple(dist.event_shape), generator)
    return dist.loc + (dist.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)


@register_rsample(TransformedDistribution)
def _rsample_transformed(dist: TransformedDistribution, shape: Shape, generator: torch.Generator | None) -> Tensor:
    # A flow: z_0 ~ base, then z_K = f_K ∘ … ∘ f_1 (z_0) (Rezende & Mohamed 2015, eq. 7).
    z = rsample(dist.base_dist, shape, generator)
    for transform in dist.transforms:
        z = transform(z)
    return z


@register_rsample(MixtureSameFamily)
def _rsample_mixture(dist: MixtureSameFamily, shape: Shape, generator: torch.Generator | None) -> Tensor:
    """Draw a component index i ~ Categorical(π) (with the generator), then z ~ component i.

    Gradients flow through the chosen components' parameters (their draws are
    reparameterised) but not through the mixing weights π: the index is discrete.
    """
    probs = dist.mixture_distribution.probs  # batch + (K,)
    batch = tuple(dist.batch_shape)
    n = math.prod(shape)
    flat = probs.reshape(-1, probs.shape[-1]).expand(max(1, math.prod(batch)), -1)  # (prod batch, K)
    idx = torch.multinomial(flat, n, replacement=True, generator=generator)  # (prod batch, n)
    idx = idx.T.reshape(shape + batch)  # sample + batch
    comps = rsample(dist.component_distribution, shape, generator)  # sample + batch + (K,) + event
    event = tuple(dist.event_shape)
    index = idx.reshape(shape + batch + (1,) + (1,) * len(event)).expand(shape + batch + (1,) + event)
    return comps.gather(len(shape) + len(batch), index).squeeze(len(shape) + len(batch))


@register_rsample(ExpRelaxedCategorical)
def _rsample_exp_relaxed(dist: ExpRelaxedCategorical, shape: Shape, generator: torch.Generator | None) -> Tensor:
    # Gumbel-softmax in log space (Jang et al. 2017 eq. 1; Maddison et al. 2017):
    # log y = (log π + g) / τ − logsumexp(·), g = −log(−log u), u ~ U(0, 1).
    logits = dist.logits
    full = shape + tuple(dist.batch_shape) + tuple(dist.event_shape)
    u = clamp_probs(torch.rand(full, generator=generator, device=logits.device, dtype=logits.dtype))
    scores = (logits - (-u.log()).log()) / dist.temperature
    return scores - scores.logsumexp(dim=-1, keepdim=True)


def enumerable_support(dist: Distribution, limit: int) -> Tensor | None:
    """Every value of a discrete distribution, ``dist.enumerate_support(expand=False)``
    ((n, *(1,) * len(batch), *event)), when it has at most ``limit`` of them; None for a
    distribution without a listed support (a Normal) or with more values than ``limit``.

    A distribution whose support is a product space (N categorical groups: K^N values) says how
    many values it has through a ``support_size`` attribute, so a huge support is never listed.
    """
    if not getattr(dist, "has_enumerate_support", False):
        return None
    size = getattr(dist, "support_size", None)
    if size is not None and size > limit:
        return None
    values = dist.enumerate_support(expand=False)
    return values if values.shape[0] <= limit else None


def broadcasts_to(shape: Shape, target: Shape) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without growing it (dimensions aligned from the
    last; each equal or 1). Written out because ``torch.broadcast_shapes`` imports sympy on its
    first call: about a second at the start of a command."""
    pairs = zip(reversed(shape), reversed(target), strict=False)
    return len(shape) <= len(target) and all(s in (1, t) for s, t in pairs)


def normal(loc: Tensor, scale: Tensor) -> Normal:
    """``Normal(loc, scale, validate_args=False)``, built without broadcasting when loc and
    scale already have the same shape.

    Normal's constructor passes both through ``torch.broadcast_tensors``, which adds two
    view ops (and their autograd nodes) per distribution even when the shapes agree; a
    training step builds q(z|x) and p(x|z) every time, and at 2-D sizes each op shows in
    the step time (benchmarks/bench_fit_overhead.py). The result is the same Normal, with
    the same tensors, as the constructor's.
    """
    if loc.shape != scale.shape:
        return Normal(loc, scale, validate_args=False)
    dist = Normal.__new__(Normal)
    _set_normal(dist, loc, scale)
    return dist


def _set_normal(dist: Normal, loc: Tensor, scale: Tensor) -> None:
    """What ``Normal.__init__`` sets, for loc and scale of one shape (nothing to broadcast)."""
    dist.loc, dist.scale = loc, scale
    Distribution.__init__(dist, loc.shape, validate_args=False)


class NormalLogVar(Normal):
    """N(μ, σ²) parameterised by h = log σ²: it keeps h, so log σ² (log-density, KL) is h
    itself and not log(exp(h/2))², which loses precision and overflows for large |h|."""

    def __init__(self, loc: Tensor, log_var: Tensor, validate_args: bool | None = False) -> None:
        scale = torch.exp(0.5 * log_var)
        if validate_args or loc.shape != log_var.shape:
            super().__init__(loc, scale, validate_args=validate_args)
        else:  # the same shape (the encoder's two halves): nothing to broadcast, see ``normal``
            _set_normal(self, loc, scale)
        self.log_var = log_var

    def log_prob(self, value: Tensor) -> Tensor:
        # log N(x; μ, e^h) = -(x-μ)² e^{-h} / 2 - h/2 - ½ log 2π
        return -0.5 * ((value - self.loc).square() * torch.exp(-self.log_var) + self.log_var + math.log(2 * math.pi))

    def entropy(self) -> Tensor:
        return 0.5 * (1.0 + math.log(2 * math.pi) + self.log_var)


class StandardNormal(Normal):
    """N(0, 1) in each dimension: a ``Normal`` whose log-density constants 2σ² and log σ are
    computed once, not on every call.

    ``log_prob`` makes the same floating-point operations as ``Normal.log_prob``, in the same
    order, on the same values: −(z − 0)² / (2σ²) − log σ − log √(2π) with σ = 1. The prior is
    evaluated at every training step (IWAE: log w = log p(x|z) + log p(z) − log q(z|x)), so
    the two small ops it saves each time show at 2-D sizes. Build it only with loc 0 and scale 1
    (``standard_normal`` does): its registered KL assumes them.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        consts = self.__dict__.get("_consts")
        if consts is None:  # computed on first use (``expand`` builds instances without __init__)
            consts = self._consts = (2 * self.scale**2, self.scale.log())
        two_var, log_scale = consts
        return -((value - self.loc) ** 2) / two_var - log_scale - _LOG_SQRT_2PI


_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # the constant of Normal.log_prob, computed as torch does


@register_kl(NormalLogVar, Normal)
def _kl_normal_logvar_normal(q: NormalLogVar, p: Normal) -> Tensor:
    """KL(N(μ, e^h) ‖ N(m, s²)) = ½ ((μ − m)²/s² + e^h/s² − 1 − h + log s²), from h = log σ²
    directly (log(exp(h/2)) loses precision and overflows where exp(h/2) does). For the
    standard Normal (m = 0, s = 1) it is ½ (μ² + e^h − 1 − h), Kingma & Welling 2014, App. B."""
    var_p = p.scale.square()
    return 0.5 * ((q.loc - p.loc).square() / var_p + torch.exp(q.log_var) / var_p - 1.0 - q.log_var + var_p.log())


@register_kl(NormalLogVar, StandardNormal)
def _kl_normal_logvar_standard(q: NormalLogVar, p: StandardNormal) -> Tensor:
    """KL(N(μ, e^h) ‖ N(0, 1)) = ½ (μ² + e^h − 1 − h) (Kingma & Welling 2014, App. B): the formula
    above with m = 0, s = 1, where μ − 0, division by s² = 1 and adding log s² = 0 are exact,
    so it gives the same floats (and gradients) with five fewer ops on every training step."""
    return 0.5 * (q.loc.square() + torch.exp(q.log_var) - 1.0 - q.log_var)


def _closed_form(q_z: Distribution, p_z: Distribution) -> Tensor | None:
    """torch's registered KL(q ‖ p), batch shape; None where no closed form is registered
    (an Independent pair is registered even when its base pair is not, so try it)."""
    try:
        return kl_divergence(q_z, p_z)
    except NotImplementedError:
        return None


def kl_is_closed_form(q_z: Distribution, p_z: Distribution) -> bool:
    """Whether ``kl(q_z, p_z)`` is exact (a registered closed form) rather than Monte Carlo."""
    return _closed_form(q_z, p_z) is not None


def kl(q_z: Distribution, p_z: Distribution, z: Tensor | None = None) -> Tensor:
    """KL(q(z|x) ‖ p(z)) per point: batch shape, e.g. (B,).

    Closed form where torch has one registered for the pair (Normal vs Normal, Independent of
    those, ``NormalLogVar`` vs Normal, ...): ``z`` is then not used. Otherwise the Monte Carlo
    estimate from the given draws z ~ q (shape (..., B, d)): mean over the leading sample dims
    of log q(z) − log p(z), unbiased for the KL (one draw per point: noisy but unbiased).

    Raises:
        KLNeedsSamples: no closed form and ``z`` is None.
    """
    exact = _closed_form(q_z, p_z)
    if exact is not None:
        return exact
    if z is None:
        raise KLNeedsSamples(
            f"KL({type(q_z).__name__} ‖ {type(p_z).__name__}) has no closed form registered in torch: pass the "
            f"draws z ~ q(z|x) (shape (..., B, d)) for the Monte Carlo estimate log q(z) − log p(z)"
        )
    sample_dims = z.dim() - len(q_z.batch_shape) - len(q_z.event_shape)
    log_ratio = q_z.log_prob(z) - p_z.log_prob(z)  # (..., B)
    return log_ratio.mean(dim=tuple(range(sample_dims))) if sample_dims > 0 else log_ratio


def kl_per_dim(q_z: Distribution, p_z: Distribution) -> Tensor | None:
    """KL of each latent dimension, (B, d), where both sides factorise over the dimensions:
    Independent over one reinterpreted dim of bases with a registered KL (its sum over d is
    ``kl(q_z, p_z)``). None otherwise (a flow, a mixture prior: the KL does not split per dim)."""
    if not (isinstance(q_z, Independent) and isinstance(p_z, Independent)):
        return None
    if q_z.reinterpreted_batch_ndims != 1 or p_z.reinterpreted_batch_ndims != 1:
        return None
    per_dim = _closed_form(q_z.base_dist, p_z.base_dist)
    if per_dim is None:
        return None
    return per_dim.expand(q_z.base_dist.batch_shape) if per_dim.shape != q_z.base_dist.batch_shape else per_dim


def is_factorised_normal(dist: Distribution) -> bool:
    """Whether ``dist`` is N(μ, diag σ²): an Independent Normal over one dimension (μ/σ panels,
    ellipses and per-dimension KL read its ``base_dist.loc`` / ``.scale``)."""
    return isinstance(dist, Independent) and isinstance(dist.base_dist, Normal) and dist.reinterpreted_batch_ndims == 1


# (latent_dim, device, dtype, inference mode) -> N(0, I_d). Inference-mode tensors cannot be saved for
# backward, so a prior made under torch.inference_mode() is kept apart from the one training uses.
_STANDARD_NORMALS: dict[tuple[int, torch.device, torch.dtype, bool], Independent] = {}


def standard_normal(latent_dim: int, like: Tensor) -> Independent:
    """The prior p(z) = N(0, I_d) on ``like``'s device and dtype: batch shape (), event (d,).

    Built once per (d, device, dtype) and then reused: its tensors are constants (no
    gradient), and the training loop asks for it at every step. Distribution objects are
    not changed after construction, so sharing one is safe.
    """
    # torch.compile cannot trace is_inference_mode_enabled; a traced step takes the ordinary prior,
    # which is valid under inference mode too (the hazard is only the other way round)
    inference = not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
    key = (latent_dim, like.device, like.dtype, inference)
    prior = _STANDARD_NORMALS.get(key)
    if prior is None:
        zeros = torch.zeros(latent_dim, device=like.device, dtype=like.dtype)
        base = StandardNormal(zeros, torch.ones_like(zeros), validate_args=False)
        prior = _STANDARD_NORMALS[key] = Independent(base, 1, validate_args=False)
    return prior
