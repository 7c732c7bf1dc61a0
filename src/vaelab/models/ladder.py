"""The ladder VAE: L ≥ 2 stochastic layers with a top-down inference path.

Sønderby, Raiko, Maaløe, Sønderby & Winther (2016), "Ladder Variational Autoencoders"; the
defaults take the posterior's and the decoder's form from later hierarchical VAEs (below).

Generative model (top to bottom), z = [z_1, ..., z_L] with z_i of d_i dimensions:

    p(z) = p(z_L) Π_{i<L} p(z_i | z_{i+1}),   p(z_L) = N(0, I),
    p(z_i | z_{i+1}) = N(μ_{p,i}(z_{i+1}), σ²_{p,i}(z_{i+1}))   (an MLP per layer),
    p(x | z)                                                        (the configured likelihood),

where the decoder reads the whole z = [z_1, ..., z_L] (``decode = "all"``, the default: every
layer feeds the decoder, the skip connections of hierarchical VAEs such as NVAE, Vahdat & Kautz
2020) or only z_1 (``decode = "bottom"``: p(x|z) = p(x|z_1), the LVAE of the paper).

``bottom_up = "chain"`` replaces the top-down inference below with the older bottom-up chain
q(z|x) = q(z_1|x) Π_{i<L} q(z_{i+1} | z_i) (``ChainPosterior``: the encoder body gives q(z_1|x), an
MLP of ``hidden`` widths each next layer, no merge with the prior), the two-stochastic-layer
models of Burda et al. (2016) (docs/protocols.md: the command that builds theirs).

Inference, top-down, sharing the generative nets. Each layer has a bottom-up estimate
(μ̂_i, h_i) read off the encoder: ``bottom_up = "shared"`` (the default) reads all of them off
one encoder body, x -> hidden -> Linear -> [μ̂_1 … μ̂_L, h_1 … h_L], exactly the plain VAE's
encoder; ``bottom_up = "ladder"`` is the paper's deterministic ladder (LVAE eqs. 14-16): d_1 =
act(body(x)) of ``width`` features, d_i = act(MLP(d_{i-1})), a linear head per layer. Then

    q(z_L | x) = N(μ̂_L, σ̂_L²),   σ̂² from h by ``config.scale``,
    q(z_i | z_{i+1}, x) = N(μ_{q,i}, σ²_{q,i}), the estimate merged with p(z_i | z_{i+1}) at the
    z_{i+1} drawn above (``merge``):

    "residual" (default; NVAE eq. 3): μ_{q,i} = μ_{p,i} + μ̂_i,  σ²_{q,i} = σ²_{p,i} · σ̂_i²
        (log σ²_{q,i} = log σ²_{p,i} + log σ̂_i²): the estimate is a shift and a scaling of the prior;
    "precision" (LVAE eqs. 18-19): σ²_{q,i} = 1 / (σ̂_i⁻² + σ_{p,i}⁻²),
        μ_{q,i} = (μ̂_i σ̂_i⁻² + μ_{p,i} σ_{p,i}⁻²) σ²_{q,i}.

Why these defaults (MNIST, 784-400-20 Bernoulli MLP, 9,000 training images, seed 0; IWAE NLL minus
the plain VAE's, paired over the 1,000 test images; benchmarks/bench_families.py). The paper's form
(precision, ladder, bottom; the old defaults) lost +14.7 ± 0.5 nats at 2,000 steps and
+13.2 ± 0.5 at 6,000. Three causes, each measured at 2,000 steps:

- precision weighting traps units: a z_1 unit the decoder does not use yet reaches q = p by σ̂ → ∞,
  where the estimate's weight σ_p²/(σ̂² + σ_p²) (and every gradient through it) is ~1e-6; p(z_1|z_2)
  then sharpens (σ_p ~ 0.03 in the trained model) and the unit stays a deterministic copy of z_2.
  With the other two defaults, precision gives +6.5 (z_1 keeps 1.8 nats of KL), residual −0.5;
- with p(x|z_1) the top layer has nothing to carry that z_1 cannot: z_2 collapses (KL 0.1) and
  the model is a 10-dimensional VAE (+7.9; the VAE with latent_dim 10: +8.9);
- the deeper, narrower ladder path starves the top layer: +7.6 (+2.9 with every head on d_1),
  against −0.5 for the shared encoder.

A Monte Carlo against a closed-form KL per layer, a floor on σ_p, KL warm-up, a smaller learning
rate and wider nets did not close the gap. With the defaults: −0.9 to +0.3 over three seeds at
2,000 steps, −0.32 ± 0.13 at 6,000 (both layers fully active).

The contract (vaelab.models.base): ``encode`` returns one distribution over the concatenated z
(event shape (Σ d_i,)) that draws top-down with the passed generator (``LadderPosterior``) and
scores log q(z|x) = Σ_i log q(z_i | z_{i+1}, x); ``prior`` one over the same z that draws and
scores p(z) = p(z_L) Π p(z_i|z_{i+1}) (``LadderPrior``). So ``latent_dim`` = model.latent_dim =
Σ d_i, ``decode(z)`` takes the concatenated z (and reads all of it, or its first d_1 columns
with decode = "bottom"), and the ELBO (KL by Monte Carlo), IWAE, evaluation, sampling and the
explorer work unchanged. Both distributions split z into named groups, one per layer
(``groups``: "1" … "L" -> the columns of z_i; ``log_prob_groups``), which the objectives turn
into a KL per layer ("kl_1", …, "kl_L" in the history), free bits per layer
(``free_bits_group = "layer"``) and evaluation into KL and active units per layer.

A ladder with the defaults whose top-down nets output μ_p = 0, log σ_p² = 0 is the plain VAE with
the same encoder and decoder weights (q(z|x) = N(μ̂, σ̂²), p(z) = N(0, I)): the VAE's state dict
loads into it (tests/models/test_ladder.py checks the log-weights agree).

``embed(x)`` (the code figures and the explorer show) is the top-down path of means: z_L = μ̂_L,
then z_i = μ_{q,i} at the z_{i+1} chosen above. It is E_q[z_L] exactly; below the top it is the
mean of q(z_i | z_{i+1}, x) at the mean of the layer above, not E_q[z_i] (which would average
μ_{q,i} over the draws of z_{i+1}: no closed form through the MLP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from vaelab.config import ConfigError, FamilyOptions, ModelConfig
from vaelab.distributions import NormalLogVar, register_rsample, rsample, standard_normal
from vaelab.errors import InputError
from vaelab.models.base import VariationalModel
from vaelab.nets import build_decoder, mlp
from vaelab.nets.mlp import activation_layer

# (i, z_{i+1} (..., d_{i+1})) -> (μ_{p,i}, log σ²_{p,i}), each (..., d_i); i is 0-based (z_1 is 0).
PriorLayer = Callable[[int, Tensor], tuple[Tensor, Tensor]]
# (μ̂, log σ̂², μ_p, log σ²_p) -> (μ_q, log σ²_q): how q(z_i | z_{i+1}, x) merges the estimate with the prior.
Merge = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class LadderOptions(FamilyOptions):
    """The ``[model.ladder]`` table (its flags: ``--ladder-layers`` and the others it declares)."""

    layers: list[int] | None = Field(
        None, description="latent sizes d_1,...,d_L of the L >= 2 stochastic layers, bottom (z_1, next to x) to "
        "top (z_L, prior N(0, I)); they sum to model.latent_dim, the width of z = [z_1, ..., z_L]; unset: two "
        "layers, d_1 = ceil(latent_dim / 2)",
    )
    hidden: list[int] = Field(
        default_factory=lambda: [64], description="hidden layer sizes of the nets between layers: the top-down "
        "MLP z_(i+1) -> p(z_i | z_(i+1)) and, with bottom_up = ladder, the bottom-up MLP d_(i-1) -> d_i (with "
        "chain, z_i -> q(z_(i+1) | z_i))",
    )
    width: int = Field(
        64, gt=0, description="width of the deterministic bottom-up features d_i, from which each layer's estimate "
        "(mu_i, sigma_i) is read (the encoder body's output); only with bottom_up = ladder",
    )
    merge: Literal["residual", "precision"] = Field(
        "residual", description="how q(z_i | z_(i+1), x) merges layer i's bottom-up estimate (mu_i, sigma_i) with "
        "p(z_i | z_(i+1)) = N(mu_p, sigma_p^2): residual (NVAE, Vahdat & Kautz 2020): N(mu_p + mu_i, sigma_p^2 "
        "sigma_i^2); precision (Sonderby et al. 2016, eqs. 18-19): the precision-weighted mean and variance, which "
        "measured 6-15 nats worse on MNIST (a unit whose estimate loses the weighting stays a copy of the prior)",
    )
    decode: Literal["all", "bottom"] = Field(
        "all", description="what the decoder reads: all (the whole z = [z_1, ..., z_L], every layer feeds p(x|z)) "
        "or bottom (z_1 only, p(x|z) = p(x|z_1), as in the paper; the upper layers then tend to collapse)",
    )
    bottom_up: Literal["shared", "ladder", "chain"] = Field(
        "shared", description="where each layer's estimate (mu_i, sigma_i) comes from: shared (one encoder body "
        "outputs all of them, exactly the plain VAE's encoder) or ladder (the paper's deterministic path d_1 = "
        "act(body(x)) of `width` features, d_i = act(MLP(d_(i-1))), a linear head per layer); or chain: no top-down "
        "inference at all, q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_(L-1)), each an MLP of the layer below (the "
        "two-stochastic-layer VAE of Burda et al. 2016)",
    )

    @field_validator("layers")
    @classmethod
    def _two_or_more_positive(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if len(value) < 2:
            raise ValueError(f"a ladder has L >= 2 stochastic layers, got {len(value)} size(s) {value}; give at "
                             "least two sizes, e.g. 4,2 (one layer is the plain VAE: --model vae)")
        if any(d <= 0 for d in value):
            raise ValueError(f"every layer needs at least one dimension, got {value}")
        return value

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if any(w <= 0 for w in value):
            raise ValueError(f"hidden layer sizes must be positive, got {value} (an empty list: linear nets)")
        return value

    @model_validator(mode="after")
    def _width_needs_the_ladder_path(self) -> LadderOptions:
        # The shared encoder and the chain have no features d_i: a given width would change nothing.
        if self.bottom_up != "ladder" and "width" in self.model_fields_set:
            raise ValueError(f"width (--ladder-width) sizes the features d_i of the deterministic ladder path, but "
                             f"bottom_up = {self.bottom_up} has none (the encoder body's widths: --hidden); give "
                             "bottom_up = ladder (--ladder-bottom-up ladder) to use width, or drop width")
        return self

    @model_validator(mode="after")
    def _merge_needs_top_down_inference(self) -> LadderOptions:
        if self.bottom_up == "chain" and "merge" in self.model_fields_set:
            raise ValueError("merge (--ladder-merge) combines a layer's estimate with p(z_i | z_(i+1)) in the "
                             "top-down inference, and bottom_up = chain infers bottom-up without the prior; drop "
                             "merge, or choose bottom_up shared or ladder")
        return self


def layer_sizes(layers: Sequence[int] | None, latent_dim: int) -> list[int]:
    """The sizes [d_1, ..., d_L] of the ladder's layers for ``model.latent_dim`` = Σ d_i.

    Raises:
        ConfigError: sizes that do not sum to latent_dim, or a latent_dim below 2 without sizes.
    """
    if layers is None:
        if latent_dim < 2:
            raise ConfigError(f"model.latent_dim (--latent-dim) = {latent_dim}: a ladder needs L >= 2 layers of at "
                              "least one dimension each, and latent_dim is the width of z = [z_1, ..., z_L]; give "
                              "--latent-dim 2 or more")
        return [latent_dim - latent_dim // 2, latent_dim // 2]
    if sum(layers) != latent_dim:
        raise ConfigError(f"model.ladder.layers (--ladder-layers) = {list(layers)} sums to {sum(layers)}, but "
                          f"model.latent_dim (--latent-dim) = {latent_dim}: z = [z_1, ..., z_L] is the concatenation "
                          f"of the layers, so give --latent-dim {sum(layers)}, or layer sizes that sum to {latent_dim}")
    return list(layers)


def combine(loc_hat: Tensor, log_var_hat: Tensor, loc_p: Tensor, log_var_p: Tensor) -> tuple[Tensor, Tensor]:
    """The precision-weighted combination of two Normal estimates (LVAE eqs. 18-19): (μ_q, log σ²_q).

    σ²_q = 1 / (σ̂⁻² + σ_p⁻²), μ_q = (μ̂ σ̂⁻² + μ_p σ_p⁻²) σ²_q. Written in log-variances so no
    precision overflows: log σ²_q = −logaddexp(−log σ̂², −log σ_p²), and the weight of the
    bottom-up estimate σ̂⁻² σ²_q = 1 / (1 + σ̂²/σ_p²) = sigmoid(log σ_p² − log σ̂²). Shapes broadcast.
    """
    weight = torch.sigmoid(log_var_p - log_var_hat)
    loc = weight * loc_hat + (1.0 - weight) * loc_p
    log_var = -torch.logaddexp(-log_var_hat, -log_var_p)
    return loc, log_var


def residual(loc_hat: Tensor, log_var_hat: Tensor, loc_p: Tensor, log_var_p: Tensor) -> tuple[Tensor, Tensor]:
    """The residual merge of an estimate with the prior (NVAE, Vahdat & Kautz 2020, eq. 3): (μ_q, log σ²_q).

    μ_q = μ_p + μ̂, σ²_q = σ²_p · σ̂² (log σ²_q = log σ²_p + log σ̂²): the bottom-up estimate is a shift
    and a scaling of p(z_i | z_{i+1}), so q = p exactly at μ̂ = 0, σ̂ = 1, whatever the prior, and the
    gradient to leave it never vanishes (unlike ``combine``'s weight at σ̂ ≫ σ_p). Shapes broadcast.
    """
    return loc_p + loc_hat, log_var_p + log_var_hat


MERGES: dict[str, Merge] = {"residual": residual, "precision": combine}


def _normal_log_prob(z: Tensor, loc: Tensor, log_var: Tensor) -> Tensor:
    """Σ_j log N(z_j; μ_j, exp(h_j)) over the last dimension: (...)."""
    return NormalLogVar(loc, log_var).log_prob(z).sum(-1)


class _TopDown(Distribution):
    """A distribution over z = [z_1, ..., z_L] (event shape (Σ d_i,)) that draws z_L, then each z_i
    given z_{i+1}, down to z_1, and scores the product of those conditionals.

    ``groups``: layer name ("1" … "L") -> the slice of z holding z_i; ``log_prob_groups(z)`` the
    log-density of each conditional, (..., *batch) each; ``log_prob`` their sum. Subclasses give
    ``_top`` (the distribution of z_L) and ``_conditional`` (that of z_i given z_{i+1}).
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, sizes: Sequence[int], prior_layer: PriorLayer, batch_shape: torch.Size) -> None:
        self.sizes = list(sizes)
        self.prior_layer = prior_layer
        bounds = [0, *torch.tensor(self.sizes).cumsum(0).tolist()]
        self.groups: dict[str, slice] = {str(i + 1): slice(a, b) for i, (a, b) in enumerate(pairwise(bounds))}
        super().__init__(batch_shape, torch.Size([bounds[-1]]), validate_args=False)

    def _top(self) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of z_L, batch_shape + (d_L,)."""
        raise NotImplementedError

    def _conditional(self, i: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of z_i (0-based i < L−1) given z_{i+1} (..., *batch, d_{i+1}): (..., *batch, d_i)."""
        raise NotImplementedError

    def split(self, z: Tensor) -> list[Tensor]:
        """[z_1, ..., z_L] of z (..., Σ d_i): (..., d_i) each."""
        return list(z.split(self.sizes, dim=-1))

    def log_prob_groups(self, z: Tensor) -> dict[str, Tensor]:
        """log q(z_i | z_{i+1}) of each layer i (and log q(z_L)) at z (..., *batch, Σ d_i): (..., *batch) each,
        keyed "1" … "L"."""
        parts = self.split(z)
        top = len(parts) - 1
        scores = {str(top + 1): _normal_log_prob(parts[top], *self._top())}
        for i in range(top - 1, -1, -1):
            scores[str(i + 1)] = _normal_log_prob(parts[i], *self._conditional(i, parts[i + 1]))
        return {name: scores[name] for name in self.groups}  # bottom to top, as z is laid out

    def log_prob(self, value: Tensor) -> Tensor:
        """log of the product of the layers' conditionals: Σ_i of ``log_prob_groups``, (..., *batch)."""
        return torch.stack(list(self.log_prob_groups(value).values())).sum(0)

    def _like(self) -> Tensor:
        """A tensor on the distribution's device and dtype."""
        raise NotImplementedError

    def from_noise(self, eps: Sequence[Tensor]) -> Tensor:
        """z from standard-normal noise ε_1, ..., ε_L (bottom to top, (..., *batch, d_i) each), top-down:
        z_L = μ_L + σ_L ε_L, then z_i = μ_i(z_{i+1}) + σ_i(z_{i+1}) ε_i (the reparameterisation, layer
        by layer): (..., *batch, Σ d_i). Figures hold some layers' ε fixed and vary another's."""
        loc, log_var = self._top()
        parts = [loc + torch.exp(0.5 * log_var) * eps[-1]]  # z_L
        for i in range(len(self.sizes) - 2, -1, -1):
            loc, log_var = self._conditional(i, parts[0])  # of z_i given z_{i+1}
            parts.insert(0, loc + torch.exp(0.5 * log_var) * eps[i])
        return torch.cat(parts, dim=-1)

    def noise(self, sample_shape: Sequence[int], generator: torch.Generator | None) -> list[Tensor]:
        """ε_1, ..., ε_L ~ N(0, I), sample_shape + batch_shape + (d_i,) each (bottom to top), drawn from
        ``generator`` top layer first (through ``vaelab.distributions.rsample``, which also takes a
        compiled step's noise tape in place of the generator)."""
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        eps = {i: rsample(standard_normal(d, self._like()).base_dist, shape, generator)  # 0 + 1·ε = ε exactly
               for i, d in reversed(list(enumerate(self.sizes)))}
        return [eps[i] for i in range(len(self.sizes))]

    def draw(self, sample_shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """sample_shape + batch_shape + (Σ d_i,), reparameterised; top-down: z_L, then each z_i given
        the z_{i+1} just drawn (``from_noise`` of ``noise``). All noise comes from ``generator``."""
        return self.from_noise(self.noise(sample_shape, generator))

    def rsample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        """torch's API: a draw from the global RNG. The library draws with ``vaelab.distributions.rsample``
        and an explicit generator instead."""
        return self.draw(tuple(sample_shape), None)

    def mean_path(self) -> Tensor:
        """The top-down path of means, batch_shape + (Σ d_i,): z_L = its mean, then each z_i the mean
        of its conditional at the z_{i+1} chosen above (exactly E[z_L]; below the top, not E[z_i])."""
        parts = [self._top()[0]]
        for i in range(len(self.sizes) - 2, -1, -1):
            parts.insert(0, self._conditional(i, parts[0])[0])
        return torch.cat(parts, dim=-1)


class LadderPrior(_TopDown):
    """p(z) = p(z_L) Π_{i<L} p(z_i | z_{i+1}), p(z_L) = N(0, I): batch shape (), event (Σ d_i,)."""

    def __init__(self, sizes: Sequence[int], prior_layer: PriorLayer, like: Tensor) -> None:
        super().__init__(sizes, prior_layer, torch.Size())
        self.like = like

    def _like(self) -> Tensor:
        return self.like

    def _top(self) -> tuple[Tensor, Tensor]:
        base = standard_normal(self.sizes[-1], self.like).base_dist  # N(0, I_{d_L}), shared constants
        return base.loc, torch.zeros_like(base.loc)  # log σ² = 0

    def _conditional(self, i: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        return self.prior_layer(i, z_above)


class LadderPosterior(_TopDown):
    """q(z|x) = q(z_L|x) Π_{i<L} q(z_i | z_{i+1}, x) (LVAE eqs. 17-20): batch (B,), event (Σ d_i,).

    ``estimates``: the bottom-up (μ̂_i, log σ̂_i²) of each layer, (B, d_i) each, bottom to top;
    ``prior_layer``: the generative p(z_i | z_{i+1}) whose parameters q merges with them;
    ``merge``: how (``residual`` or ``combine``, the precision weighting; see the module docstring).
    """

    def __init__(self, estimates: Sequence[tuple[Tensor, Tensor]], prior_layer: PriorLayer,
                 merge: Merge = combine) -> None:
        self.estimates = list(estimates)
        self.merge = merge
        super().__init__([loc.shape[-1] for loc, _ in estimates], prior_layer, estimates[0][0].shape[:-1])

    def _like(self) -> Tensor:
        return self.estimates[0][0]

    def _top(self) -> tuple[Tensor, Tensor]:
        return self.estimates[-1]  # q(z_L|x) = N(μ̂_L, σ̂_L²)

    def _conditional(self, i: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        loc_p, log_var_p = self.prior_layer(i, z_above)  # p(z_i | z_{i+1}) at the given z_{i+1}
        return self.merge(*self.estimates[i], loc_p, log_var_p)  # residual, or precision (LVAE eqs. 18-19)


class ChainPosterior(_TopDown):
    """q(z|x) = q(z_1|x) Π_{i<L} q(z_{i+1} | z_i) (``bottom_up = "chain"``): batch (B,), event (Σ d_i,).

    The Markov chain upwards of Burda et al. (2016)'s two-stochastic-layer models: ``first`` is
    (μ, log σ²) of q(z_1|x), (B, d_1) each; ``step(i, z_i)`` gives (μ, log σ²) of q(z_{i+1} | z_i).
    It draws and scores bottom to top; the layers' groups and the noise interface are the
    top-down distributions' (``log_prob_groups``, ``from_noise``, ``noise``, ``draw``).
    """

    def __init__(self, first: tuple[Tensor, Tensor], step: PriorLayer, sizes: Sequence[int]) -> None:
        self.first = first
        self.step = step
        super().__init__(sizes, step, first[0].shape[:-1])

    def _like(self) -> Tensor:
        return self.first[0]

    def log_prob_groups(self, z: Tensor) -> dict[str, Tensor]:
        """log q(z_1|x) and log q(z_{i+1} | z_i) at z (..., *batch, Σ d_i): (..., *batch) each, keyed "1" … "L"."""
        parts = self.split(z)
        scores = {"1": _normal_log_prob(parts[0], *self.first)}
        for i in range(len(parts) - 1):
            scores[str(i + 2)] = _normal_log_prob(parts[i + 1], *self.step(i, parts[i]))
        # q(z_{i+1} | z_i) does not read x: broadcast to the shape log q(z_1|x) has (z of other points' batch)
        return dict(zip(scores, torch.broadcast_tensors(*scores.values()), strict=True))

    def from_noise(self, eps: Sequence[Tensor]) -> Tensor:
        """z from standard-normal noise ε_1, ..., ε_L (bottom to top), bottom-up: z_1 = μ_1 + σ_1 ε_1, then
        z_{i+1} = μ(z_i) + σ(z_i) ε_{i+1}: (..., *batch, Σ d_i)."""
        loc, log_var = self.first
        parts = [loc + torch.exp(0.5 * log_var) * eps[0]]
        for i in range(len(self.sizes) - 1):
            loc, log_var = self.step(i, parts[-1])
            parts.append(loc + torch.exp(0.5 * log_var) * eps[i + 1])
        return torch.cat(parts, dim=-1)

    def noise(self, sample_shape: Sequence[int], generator: torch.Generator | None) -> list[Tensor]:
        """ε_1, ..., ε_L ~ N(0, I), sample_shape + batch_shape + (d_i,) each, drawn bottom layer first."""
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        return [rsample(standard_normal(d, self._like()).base_dist, shape, generator) for d in self.sizes]

    def mean_path(self) -> Tensor:
        """The bottom-up path of means, batch_shape + (Σ d_i,): z_1 = E[z_1|x], then each z_{i+1} the mean
        of q(z_{i+1} | z_i) at the z_i chosen below (exactly E[z_1]; above it, not E[z_i])."""
        parts = [self.first[0]]
        for i in range(len(self.sizes) - 1):
            parts.append(self.step(i, parts[-1])[0])
        return torch.cat(parts, dim=-1)


@register_rsample(_TopDown)
def _rsample_top_down(dist: _TopDown, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return dist.draw(shape, generator)


class LadderVAE(VariationalModel):
    """A ladder VAE with L ≥ 2 Normal layers; see the module docstring for the model.

    encode: x (B, D) [+ c] -> ``LadderPosterior`` over z (B, Σ d_i);
    prior: ``LadderPrior`` over z (Σ d_i,) (it does not depend on c);
    decode: z (..., Σ d_i) [+ c] -> p(x | z) from the configured likelihood (decode = "all"), or
    p(x | z_1) (decode = "bottom": z_1 = z[..., :d_1]).
    Every scale (bottom-up σ̂_i, top-down σ_{p,i}) comes from its net's output h by ``config.scale``
    (logvar: h = log σ²; softplus: σ = softplus(h); exp: h = log σ), as in the VAE; with the
    residual merge σ̂_i is the ratio σ_{q,i} / σ_{p,i}.
    """

    options = LadderOptions
    has_latent_groups = True  # q and p split z into its layers "1" … "L"
    reads_scale = True  # every σ (bottom-up, top-down, chain) from its net's h by model.scale

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__()
        opts = config.family_options(LadderOptions)
        self.sizes = layer_sizes(opts.layers, config.latent_dim)
        self.merge: Merge = MERGES[opts.merge]
        self.decode_from = opts.decode
        self.shared_encoder = opts.bottom_up == "shared"
        self.chain = opts.bottom_up == "chain"
        # The encoder body maps x [+ c] to every layer's estimate [μ̂_1 … μ̂_L, h_1 … h_L] (B, 2 Σ d_i),
        # the plain VAE's encoder (shared); to the first bottom-up features d_1 (B, width) (ladder); or
        # to q(z_1|x)'s [μ_1, h_1] (B, 2 d_1) (chain).
        # The decoder reads the whole z (decode = "all", as _build sizes it) or z_1 (decode = "bottom").
        encoder_out = 2 * config.latent_dim if self.shared_encoder else 2 * self.sizes[0] if self.chain else opts.width
        self._build(config, x_dim, cond_dim, cond_embed, encoder_out=encoder_out)
        if self.decode_from == "bottom":  # p(x|z) = p(x|z_1): the decoder reads z_1 (and c)
            c_width = self.cond_embed[-1] if self.cond_embed else cond_dim
            self.decoder = build_decoder(config, self.sizes[0] + c_width, x_dim, self.likelihood.params_per_dim)
        if self.chain:  # z_i -> (μ, h) of q(z_{i+1} | z_i), i = 1..L−1
            self.upward = nn.ModuleList(
                mlp(d, opts.hidden, 2 * d_above, config.activation) for d, d_above in pairwise(self.sizes))
        elif not self.shared_encoder:
            self.activation = activation_layer(config.activation)
            # d_i = act(MLP(d_{i-1})), i = 2..L (LVAE eq. 14), and each layer's head d_i -> (μ̂_i, h_i) (eqs. 15-16).
            self.bottom_up = nn.ModuleList(
                mlp(opts.width, opts.hidden, opts.width, config.activation) for _ in self.sizes[1:])
            self.heads = nn.ModuleList(nn.Linear(opts.width, 2 * d) for d in self.sizes)
        # z_{i+1} -> (μ_{p,i}, h_{p,i}) of p(z_i | z_{i+1}), i = 1..L−1.
        self.top_down = nn.ModuleList(
            mlp(d_above, opts.hidden, 2 * d, config.activation) for d, d_above in pairwise(self.sizes))

    @property
    def layers(self) -> int:
        """The number L of stochastic layers."""
        return len(self.sizes)

    def _log_var(self, h: Tensor) -> Tensor:
        """log σ² from a net's scale output h, by ``config.scale``."""
        if self.config.scale == "logvar":
            return h
        if self.config.scale == "softplus":
            return 2.0 * F.softplus(h).log()
        return 2.0 * h  # exp: h = log σ

    def prior_layer(self, i: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        """(μ_p, log σ²_p) of p(z_j | z_{j+1}), j = i + 1 (``i`` counts layers from 0, i < L − 1):
        z_above = z_{j+1} (..., d_{j+1}) -> (..., d_j) each."""
        loc, h = self.top_down[i](z_above).chunk(2, dim=-1)
        return loc, self._log_var(h)

    def bottom_up_estimates(self, x: Tensor, c: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """The deterministic bottom-up pass: (μ̂_i, log σ̂_i²) of every layer, (B, d_i) each, bottom to top
        (top-down inference only: a chain's q(z_{i+1} | z_i) depends on the z_i drawn)."""
        if self.chain:
            raise InputError("bottom_up = chain has no deterministic estimate per layer: q(z_(i+1) | z_i) depends "
                             "on the z_i drawn; use encode(x)")
        self._check_width(x, self.x_dim, "x", "x_dim")
        if self.shared_encoder:  # the VAE's encoder: [μ̂_1 … μ̂_L | h_1 … h_L], (B, Σ d_i) each half
            loc, h = self.encoder(self._with_condition(x, c)).chunk(2, dim=-1)
            return [(m, self._log_var(s)) for m, s in zip(loc.split(self.sizes, -1), h.split(self.sizes, -1),
                                                          strict=True)]
        d = self.activation(self.encoder(self._with_condition(x, c)))  # d_1 (B, width)
        estimates = []
        for i, head in enumerate(self.heads):
            if i > 0:
                d = self.activation(self.bottom_up[i - 1](d))  # d_i = act(MLP(d_{i-1}))
            loc, h = head(d).chunk(2, dim=-1)
            estimates.append((loc, self._log_var(h)))
        return estimates

    def chain_step(self, i: int, z_below: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q(z_j | z_{j−1}), j = i + 2 (``i`` counts from 0, i < L − 1), with ``bottom_up =
        "chain"``: z_below (..., d_{j−1}) -> (..., d_j) each."""
        loc, h = self.upward[i](z_below).chunk(2, dim=-1)
        return loc, self._log_var(h)

    def encode(self, x: Tensor, c: Tensor | None = None) -> LadderPosterior | ChainPosterior:
        """q(z|x, c): (B, D) -> ``LadderPosterior`` (top-down inference) or ``ChainPosterior``
        (bottom_up = "chain"), batch shape (B,), event shape (Σ d_i,)."""
        if self.chain:
            self._check_width(x, self.x_dim, "x", "x_dim")
            loc, h = self.encoder(self._with_condition(x, c)).chunk(2, dim=-1)  # q(z_1|x): (B, d_1) each
            return ChainPosterior((loc, self._log_var(h)), self.chain_step, self.sizes)
        return LadderPosterior(self.bottom_up_estimates(x, c), self.prior_layer, self.merge)

    def prior(self, c: Tensor | None = None) -> LadderPrior:
        """p(z) = N(z_L; 0, I) Π p(z_i | z_{i+1}): batch shape (), event shape (Σ d_i,); c is not used."""
        return LadderPrior(self.sizes, self.prior_layer, next(self.parameters()))

    def decode(self, z: Tensor, c: Tensor | None = None) -> Distribution:
        """p(x|z, c): z (..., Σ d_i) -> batch shape (...); with decode = "bottom" p(x|z_1, c), only
        z_1 = z[..., :d_1] is read."""
        self._check_width(z, self.latent_dim, "z", "latent_dim (the width of z = [z_1, ..., z_L])")
        read = z if self.decode_from == "all" else z[..., :self.sizes[0]]
        return self.likelihood(self.decoder(self._with_condition(read, c)))

    def embed(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The top-down path of posterior means: (B, D) -> (B, Σ d_i) (see the module docstring)."""
        return self.encode(x, c).mean_path()


__all__ = ["MERGES", "ChainPosterior", "LadderOptions", "LadderPosterior", "LadderPrior", "LadderVAE", "combine",
           "layer_sizes", "residual"]
