"""Categorical latents trained with the Gumbel-softmax relaxation: the ``gumbel`` family.

z is N groups ("categorical variables") of K classes each, written as the concatenation of
their one-hot vectors: z ∈ {0, 1}^{N·K}, so ``latent_dim`` = N·K is the width of z (as it is
for the ladder's concatenated layers). The generative model is the discrete one people mean:

    p(z) = Π_n Cat(z_n; 1/K, …, 1/K)    (uniform per group),    p(x|z) = the decoder at z,
    q(z|x) = Π_n Cat(z_n; π_n(x)),       π_n(x) = softmax(the encoder's K logits of group n).

Training (Jang et al. 2017; Maddison et al. 2017). A categorical draw has no
reparameterisation gradient, so training draws the *relaxed* one-hot vector

    y_nk = exp((log π_nk + g_nk) / τ) / Σ_j exp((log π_nj + g_nj) / τ),   g = −log(−log u), u ~ U(0, 1),

(Jang et al. 2017, eq. 2: the Gumbel-softmax or concrete sample), which tends to the one-hot
vector of argmax_k (log π_nk + g_nk), an exact draw of Cat(π_n) (the Gumbel-max trick), as the
temperature τ → 0. τ is a per-step scalar of the engine (``step_scalars``): exponential from
``temperature`` to ``temperature_end`` over the training budget by default (Jang et al.
anneal it towards 0.5). With ``straight_through`` the forward value is the hard one-hot vector
and the gradient the relaxed one (Jang et al. 2017, section 2.2). The decoder reads the N·K
vector, hard or relaxed. The loss is the β-ELBO of ``vaelab.objectives.elbo``, its KL exact
(``kl_onehot_groups``, registered with torch):

    KL(q(z|x) ‖ p(z)) = Σ_n Σ_k π_nk (log π_nk − log (1/K)) = Σ_n (log K − H(π_n)).

Evaluation (the model in eval mode) draws HARD samples: z is exactly one-hot, log q(z|x) and
log p(z) are the categorical log-masses, so the ELBO and the IWAE bound are those of the
discrete model, never of the relaxed densities. Where K^N is small the evaluation also sums
p(x) = Σ_z p(x|z) p(z) exactly over every code (``vaelab.evaluate``: any prior with
``enumerate_support``). Only the β-ELBO trains: an importance-weighted bound needs log q of the
draws, which for a relaxed draw is the concrete density (not the model's), and for a hard draw
has no reparameterisation gradient.

The rule "relaxed in training, hard in evaluation" is one flag of the posterior's distribution
(``OneHotGroups.hard``), set from ``self.training`` and the ``straight_through`` option. A hard
draw made while gradients are on is still straight-through (its value exactly one-hot, its
gradient the relaxed one at the current τ), so every draw carries a gradient to the encoder.

``embed(x)`` (what ``vaelab encode`` writes and the latent figures show) is E_q[z|x], the class
probabilities π_n(x) of every group side by side (N·K columns, group after group), and
``reconstruct(x)`` decodes the most probable code argmax q(z|x).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl

from vaelab.config import ConfigError, FamilyOptions, ModelConfig, ScheduleSpec
from vaelab.distributions import NoiseTape, gumbel_noise, register_rsample
from vaelab.errors import InputError
from vaelab.models.base import VariationalModel


class GumbelOptions(FamilyOptions):
    """The ``[model.gumbel]`` table: the N groups of K classes, the temperature schedule, straight-through."""

    groups: int = Field(1, ge=1, description="number N of categorical latent variables (groups); z is their N "
                        "one-hot vectors side by side, so --latent-dim is N·K")
    classes: int | None = Field(None, ge=2, description="number K of classes of each group; unset: latent_dim / N")
    temperature: float = Field(1.0, gt=0, description="the Gumbel-softmax temperature τ at the first step")
    temperature_end: float = Field(0.5, gt=0, description="τ at the end of training, reached exponentially "
                                   "(τ_t = τ_0 (τ_end / τ_0)^(t/T)); equal to temperature: a constant τ")
    straight_through: bool = Field(False, description="train on the hard one-hot sample (forward) with the "
                                   "relaxed sample's gradient (straight-through Gumbel-softmax)")

    @model_validator(mode="after")
    def _cooling(self) -> GumbelOptions:
        if self.temperature_end > self.temperature:
            raise ValueError(f"temperature_end = {self.temperature_end} is above temperature = {self.temperature}: "
                             "the relaxation is annealed towards one-hot samples (τ decreasing); give "
                             "temperature_end <= temperature")
        return self


def group_sizes(opts: GumbelOptions, latent_dim: int) -> tuple[int, int]:
    """(N, K) for ``model.latent_dim`` = N·K, the width of z.

    Raises:
        ConfigError: K given and N·K ≠ latent_dim, or latent_dim not a multiple of N with at
            least 2 classes per group, naming the settings that fix it.
    """
    n = opts.groups
    if opts.classes is not None:
        if n * opts.classes != latent_dim:
            raise ConfigError(
                f"model.latent_dim (--latent-dim) = {latent_dim}, but the gumbel family's z is N = {n} group(s) of "
                f"K = {opts.classes} classes, N·K = {n * opts.classes} coordinates (one one-hot vector per group, "
                f"side by side): give --latent-dim {n * opts.classes}, or drop --gumbel-classes (K = latent_dim / N)")
        return n, opts.classes
    if latent_dim % n or latent_dim // n < 2:
        raise ConfigError(
            f"model.latent_dim (--latent-dim) = {latent_dim} is the width N·K of the gumbel family's z (N one-hot "
            f"vectors of K classes), and it is not N = {n} groups of K >= 2 classes: give --latent-dim as a multiple "
            f"of {n} of at least {2 * n} (e.g. --latent-dim {8 * n} for {n} group(s) of 8 classes), or set "
            "--gumbel-groups and --gumbel-classes")
    return n, latent_dim // n


# -- the distribution ---------------------------------------------------------------------------


class OneHotGroups(Distribution):
    """N independent categorical variables of K classes, as one distribution over the
    concatenation of their one-hot vectors: batch shape ``logits.shape[:-2]``, event (N·K,).

    ``log_prob(z)`` = Σ_n Σ_k z_nk log π_nk, the categorical log-mass of a one-hot z (it is
    not a density of relaxed vectors: only the hard draws are ever scored). ``rsample``
    (``vaelab.distributions.rsample``, with a generator) draws by the Gumbel-max trick:
    hard one-hot vectors when ``hard``, else the relaxed concrete vectors at ``temperature``;
    a hard draw with gradients on is straight-through (see the module docstring).
    ``enumerate_support`` lists all K^N codes (for an exact p(x) where that is small).
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_enumerate_support = True

    def __init__(self, logits: Tensor, temperature: Tensor | float = 1.0, *, hard: bool = True,
                 validate_args: bool | None = False) -> None:
        if logits.dim() < 2:
            raise InputError(f"OneHotGroups needs logits of shape (..., N, K), got {tuple(logits.shape)}")
        self.logits = logits - logits.logsumexp(dim=-1, keepdim=True)  # (..., N, K): log π, normalised
        self.temperature = temperature
        self.hard = hard
        self.groups, self.classes = logits.shape[-2], logits.shape[-1]
        super().__init__(logits.shape[:-2], torch.Size([self.groups * self.classes]), validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.boolean, 1)

    @property
    def support_size(self) -> int:
        """K^N, the number of codes (``vaelab.distributions.enumerable_support`` reads it)."""
        return self.classes ** self.groups

    @property
    def probs(self) -> Tensor:
        """π: (..., N, K)."""
        return self.logits.exp()

    def _flat(self, t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:-2], self.groups * self.classes)

    def _groups(self, z: Tensor) -> Tensor:
        return z.reshape(*z.shape[:-1], self.groups, self.classes)

    @property
    def mean(self) -> Tensor:
        """E[z] = π, the class probabilities of each group side by side: (..., N·K)."""
        return self._flat(self.probs)

    @property
    def mode(self) -> Tensor:
        """The most probable code, one-hot argmax_k π_nk in every group: (..., N·K)."""
        return self._flat(_one_hot_max(self.logits))

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return self._flat(p * (1 - p))

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(z) = Σ_n Σ_k z_nk log π_nk for one-hot z (..., N·K): (...), broadcasting z's
        leading dimensions against the batch shape."""
        return (self._groups(value) * self.logits).sum(dim=(-2, -1))

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum(dim=(-2, -1))

    def expand(self, batch_shape: Sequence[int], _instance: Distribution | None = None) -> OneHotGroups:
        shape = torch.Size(batch_shape)
        return OneHotGroups(self.logits.expand(*shape, self.groups, self.classes), self.temperature, hard=self.hard)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """Every code, K^N one-hot vectors, the first group's class varying slowest:
        (K^N, *batch, N·K) (``expand=False``: (K^N, *(1,)*len(batch), N·K))."""
        k, n = self.classes, self.groups
        eye = torch.eye(k, dtype=self.logits.dtype, device=self.logits.device)
        codes = torch.tensor(list(itertools.product(range(k), repeat=n)), device=self.logits.device)  # (K^N, N)
        values = eye[codes].reshape(len(codes), n * k)  # (K^N, N·K)
        values = values.reshape(len(codes), *(1,) * len(self.batch_shape), n * k)
        return values.expand(len(codes), *self.batch_shape, n * k) if expand else values

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return _draw(self, tuple(sample_shape), None, hard=True)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        return _draw(self, tuple(sample_shape), None, hard=self.hard)


def _one_hot_max(scores: Tensor) -> Tensor:
    """The one-hot vector of argmax over the last dimension: (..., K) of 0.0 / 1.0 (ties: the first)."""
    return torch.zeros_like(scores).scatter(-1, scores.argmax(dim=-1, keepdim=True), 1.0)


def _draw(dist: OneHotGroups, shape: tuple[int, ...], generator: torch.Generator | NoiseTape | None, *,
          hard: bool) -> Tensor:
    """sample_shape + batch + (N·K,): relaxed (Jang et al. 2017, eq. 2) or hard one-hot (Gumbel-max),
    straight-through where a hard draw is made with gradients on."""
    logits = dist.logits
    g = gumbel_noise(shape + tuple(logits.shape), logits, generator)  # (S..., B..., N, K)
    scores = logits + g
    if not hard:
        return dist._flat(torch.softmax(scores / dist.temperature, dim=-1))
    one_hot = _one_hot_max(scores)  # argmax_k (log π_k + g_k): an exact draw of Cat(π)
    # (not ``logits.requires_grad``: under vmap, a stacked sweep's step, it reads False)
    if torch.is_grad_enabled():
        soft = torch.softmax(scores / dist.temperature, dim=-1)
        one_hot = one_hot + (soft - soft.detach())  # value: exactly the one-hot; gradient: the relaxed one
    return dist._flat(one_hot)


@register_rsample(OneHotGroups)
def _rsample_one_hot_groups(dist: OneHotGroups, shape: tuple[int, ...],
                            generator: torch.Generator | None) -> Tensor:
    return _draw(dist, shape, generator, hard=dist.hard)


@register_kl(OneHotGroups, OneHotGroups)
def kl_onehot_groups(q: OneHotGroups, p: OneHotGroups) -> Tensor:
    """KL(q ‖ p) = Σ_n Σ_k π_nk (log π_nk − log p_nk), exact (for the uniform prior,
    Σ_n (log K − H(π_n))): batch shape. q and p must have the same N and K."""
    if (q.groups, q.classes) != (p.groups, p.classes):
        raise InputError(f"KL between {q.groups} groups of {q.classes} classes and {p.groups} groups of "
                         f"{p.classes} classes: they must have the same groups and classes")
    return (q.probs * (q.logits - p.logits)).sum(dim=(-2, -1))


# -- the family ---------------------------------------------------------------------------------


class GumbelSoftmaxVAE(VariationalModel):
    """A VAE with N categorical latent variables of K classes (see the module docstring).

    encode: x (B, D) [+ c] -> q(z|x) = Π_n Cat(π_n(x)) (``OneHotGroups``, relaxed draws in
    training unless straight-through, hard draws in evaluation); prior: uniform per group;
    decode: z (..., N·K) [+ c] -> p(x|z). A condition enters the encoder and the decoder; p(z)
    stays uniform for every c.
    """

    options = GumbelOptions
    tau: Tensor  # the buffer of the current temperature
    default_objective = "elbo"
    # Only the β-ELBO: an IWAE bound would need log q of relaxed draws (the concrete density, not
    # the discrete model's) or a gradient through hard draws (there is none).
    objectives = ("elbo",)

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__()
        opts = config.family_options(GumbelOptions)
        self.groups, self.classes = group_sizes(opts, config.latent_dim)
        self.straight_through = opts.straight_through
        self.temperature_schedule = (
            ScheduleSpec(kind="constant", value=opts.temperature) if opts.temperature_end == opts.temperature
            else ScheduleSpec(kind="exponential", value=opts.temperature, end=opts.temperature_end))
        self._build(config, x_dim, cond_dim, cond_embed, encoder_out=config.latent_dim)  # N·K logits
        # τ of the current step (saved with the weights: a trained model holds the last one)
        self.register_buffer("tau", torch.tensor(float(opts.temperature)))

    def step_scalars(self) -> dict[str, ScheduleSpec]:
        """τ, the Gumbel-softmax temperature: exponential from ``temperature`` to ``temperature_end``."""
        return {"tau": self.temperature_schedule}

    def logits(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The encoder's class logits of every group: (B, D) -> (B, N, K)."""
        self._check_width(x, self.x_dim, "x", "x_dim")
        h = self.encoder(self._with_condition(x, c))  # (B, N·K)
        return h.reshape(*h.shape[:-1], self.groups, self.classes)

    def encode(self, x: Tensor, c: Tensor | None = None) -> OneHotGroups:
        """q(z|x, c) = Π_n Cat(π_n(x)): batch shape (B,), event (N·K,). Its draws are relaxed at τ
        in training (hard with ``straight_through``) and hard in evaluation."""
        return OneHotGroups(self.logits(x, c), self.tau, hard=self.straight_through or not self.training)

    def prior(self, c: Tensor | None = None) -> OneHotGroups:
        """p(z) = Π_n Cat(1/K, …, 1/K): batch shape (), event (N·K,), the same for every c."""
        ref = self.tau
        return OneHotGroups(torch.zeros(self.groups, self.classes, dtype=ref.dtype, device=ref.device))

    @property
    def prior_is_standard_normal(self) -> bool:
        return False

    def classify(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """argmax_k π_nk(x) of every group: (B, D) -> (B, N) class indices."""
        return self.logits(x, c).argmax(dim=-1)

    def one_hot(self, classes: Tensor) -> Tensor:
        """Codes from class indices: (..., N) integers in 0..K-1 -> (..., N·K) one-hot vectors."""
        if classes.shape[-1] != self.groups:
            raise InputError(f"classes has shape {tuple(classes.shape)}: give one class per group, (..., "
                             f"{self.groups})")
        if bool((classes < 0).any()) or bool((classes >= self.classes).any()):
            raise InputError(f"classes must be in 0..{self.classes - 1}")
        z = F.one_hot(classes.long(), self.classes).to(self.tau.dtype)
        return z.reshape(*classes.shape[:-1], self.groups * self.classes)

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        stochastic: bool = False,
    ) -> Tensor:
        """Encode then decode: (B, D) -> (B, D). Deterministic: the decoder mean at the most
        probable code argmax q(z|x) (a code the decoder was trained on, not the vector of class
        probabilities); stochastic: a hard z ~ q(z|x), then x ~ p(x|z)."""
        if stochastic:
            return super().reconstruct(x, c, generator=generator, stochastic=True)
        return self.decode(self.encode(x, c).mode, c).mean


__all__ = ["GumbelOptions", "GumbelSoftmaxVAE", "OneHotGroups", "group_sizes", "kl_onehot_groups"]
