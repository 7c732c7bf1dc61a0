"""Two VAE families with a learned prior p(z): the VampPrior (``vamp``) and a mixture of Gaussians (``mog``).

Both keep the VAE's inference network, q(z|x) = N(μ(x), diag σ²(x)), and replace p(z) = N(0, I)
by a learned K-component mixture, a ``torch.distributions.MixtureSameFamily`` of Independent Normals:

- ``mog`` (Tomczak & Welling 2018, eq. 8):  p(z) = Σ_k π_k N(z; m_k, diag s_k²), with the means m_k,
  the scales s_k and (optionally) the weights π_k learned;
- ``vamp`` (Tomczak & Welling 2018, eq. 9): p(z) = (1/K) Σ_k q(z|u_k), the encoder's own posterior at
  K learned pseudo-inputs u_k. It stands in for the aggregated posterior q(z) = (1/N) Σ_n q(z|x_n)
  (ibid., eq. 7), the prior that maximises the ELBO averaged over the N training points, with
  K ≪ N "data points" that are learned instead of kept.

Neither KL(q(z|x) ‖ p(z)) has a closed form, so the objectives use the Monte Carlo estimate
log q(z|x) − log p(z) at the draws they make (``vaelab.distributions.kl``), and draws from p(z)
(``sample``, the report, the explorer) go through ``vaelab.distributions.rsample``, which picks
the component k ~ Categorical(π) and then z ~ component k with the caller's generator.

Each family declares its options here (``VampOptions``, ``MixtureOptions``): the ``[model.vamp]`` /
``[model.mog]`` tables and the flags named after them (``--vamp-components``, ``--mog-components``
...; docs/families.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaelab.config import FamilyOptions, ModelConfig
from vaelab.errors import InputError
from vaelab.likelihoods import BernoulliLogits
from vaelab.models.vae import VAE

# The smallest standard deviation a mixture component of ``mog`` can learn: s = softplus(h) + MIN_SCALE.
# Without a floor one component can shrink onto a single code and its log-density diverge.
MIN_SCALE = 1e-3
# Initial pseudo-inputs of ``vamp`` under ``link = hardtanh``: u = mean + std · ε (Tomczak & Welling's code).
PIXEL_INIT = (0.05, 0.01)


class VampOptions(FamilyOptions):
    """The ``[model.vamp]`` table: the VampPrior's K pseudo-inputs and how they are kept in range."""

    components: int = Field(50, ge=1, description="number K of pseudo-inputs u_k, the components of p(z)")
    link: Literal["auto", "hardtanh", "identity"] = Field(
        "auto", description="u_k = link(w_k): hardtanh keeps pseudo-inputs in [0, 1] like pixels (u = min(max(w, "
        "0), 1)), identity leaves them real; auto: hardtanh under a Bernoulli likelihood, else identity")


class MixtureOptions(FamilyOptions):
    """The ``[model.mog]`` table: the mixture-of-Gaussians prior's K components."""

    components: int = Field(10, ge=1, description="number K of Gaussian components of p(z)")
    spread: float = Field(2.0, gt=0, description="the components' initial means lie at this distance from 0, "
                          "spread apart (their initial standard deviations are 1)")
    learn_weights: bool = Field(True, description="learn the weights π_k (else uniform, 1/K each)")

    @model_validator(mode="after")
    def _weights_need_two(self) -> MixtureOptions:
        # One component has π_1 = 1 whatever is learned: a given learn_weights would change nothing.
        if self.components == 1 and "learn_weights" in self.model_fields_set:
            raise ValueError("learn_weights has no effect with components = 1 (the one weight is 1); "
                             "give components >= 2, or drop learn_weights")
        return self


def _refuse_condition(kind: str, cond_dim: int) -> None:
    if cond_dim:
        raise InputError(
            f"the {kind} family has no conditional form: its prior (1/K) Σ_k q(z|u_k) would need a condition "
            f"for every pseudo-input, and this model was given a condition of width {cond_dim}; use --model vae "
            "(or --model mog) for conditional data, or drop the condition (--condition, data.condition) to train vamp")


class VampVAE(VAE):
    """The VAE with the VampPrior p(z) = (1/K) Σ_k q(z|u_k) (Tomczak & Welling 2018, eq. 9).

    The pseudo-inputs are u_k = link(w_k), w_k learned, (K, D): they go through whatever encoder
    the model has (an MLP, or the conv body for images), so p(z) and q(z|x) share every weight.
    Initialisation: the data are not seen when a model is built, so the u_k are drawn from the
    construction RNG (``build_model`` seeds it). With ``link = hardtanh`` (pixels) they are kept in
    [0, 1] and start as the paper's code starts them, u = 0.05 + 0.01 ε: near-black images, like
    most pixels of a digit. (A pixel pushed past 0 or 1 stops learning there: hard-tanh has no
    gradient outside. Two alternatives were measured on digits, d = 2, one seed: u = σ(w) from grey
    noise σ(N(0, 1)) collapsed the code, KL 0 after 2,080 ELBO steps; u = σ(w) from 0.05 hardly
    moved in 1,040 steps, since σ' is 0.05 there.) With ``identity`` they start as N(0, I)
    points, which suits standardised data. Training then moves them.

    Cost: p(z) runs the encoder on the K pseudo-inputs. Training computes it once per step
    (each objective asks for ``prior()`` once). Without gradients in eval mode (evaluation,
    figures, sampling) it is kept and reused until a weight it depends on changes: see ``prior``.
    """

    options = VampOptions

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        _refuse_condition(config.kind, cond_dim)
        super().__init__(config, x_dim, cond_dim, cond_embed)
        opts = config.family_options(VampOptions)
        link = opts.link
        if link == "auto":
            link = "hardtanh" if isinstance(self.likelihood, BernoulliLogits) else "identity"
        self.link: Literal["hardtanh", "identity"] = link
        eps = torch.randn(opts.components, x_dim)  # (K, D), from the construction RNG
        # hardtanh: u = w = 0.05 + 0.01 ε, near black like most pixels of a digit (the paper's code)
        w = PIXEL_INIT[0] + PIXEL_INIT[1] * eps if link == "hardtanh" else eps
        self.prior_w = nn.Parameter(w)  # (K, D): u_k = link(w_k)
        self._prior_cache: tuple[list[Tensor], MixtureSameFamily] | None = None  # (copy of the inputs, p(z))

    @property
    def components(self) -> int:
        """K, the number of pseudo-inputs."""
        return self.prior_w.shape[0]

    def pseudo_inputs(self) -> Tensor:
        """The pseudo-inputs u_k = link(w_k): (K, D), in [0, 1] under ``link = hardtanh``."""
        return F.hardtanh(self.prior_w, 0.0, 1.0) if self.link == "hardtanh" else self.prior_w

    def _vamp_prior(self) -> MixtureSameFamily:
        q_u = self.encode(self.pseudo_inputs())  # q(z|u_k): batch (K,), event (d,)
        # eq. 9: equal weights 1/K (logits 0, normalised by Categorical)
        weights = Categorical(logits=torch.zeros(q_u.batch_shape, dtype=self.prior_w.dtype,
                                                 device=self.prior_w.device), validate_args=False)
        return MixtureSameFamily(weights, q_u, validate_args=False)

    def _prior_inputs(self) -> list[Tensor]:
        """Every tensor p(z) is a function of: the pseudo-inputs' w and the encoder's weights."""
        return [self.prior_w, *self.encoder.parameters(), *self.encoder.buffers()]

    def prior(self, c: Tensor | None = None) -> MixtureSameFamily:
        """p(z) = (1/K) Σ_k q(z|u_k): a MixtureSameFamily, batch shape (), event shape (d,).

        With gradients on, or in training mode, it is computed afresh on every call (training
        differentiates through it, once per step). Without gradients in eval mode it is computed
        once and returned again for as long as the pseudo-inputs and the encoder's weights are
        equal to a copy taken then (``torch.equal``, tensor by tensor), so evaluation and sampling
        run the encoder on the K pseudo-inputs once, not once per batch. The check reads every
        weight once (about 1/K of the encoder pass it saves). It compares values, not the tensors'
        version counters: the fused Adam kernel (``torch.optim.Adam(fused=True)``, what training
        uses on CPU and CUDA) updates weights in place without bumping them.
        """
        if c is not None:
            raise InputError("the vamp family is unconditional: call prior() with c=None")
        if torch.is_grad_enabled() or self.training:
            return self._vamp_prior()
        inputs = self._prior_inputs()
        if self._prior_cache is None or not _equal_tensors(self._prior_cache[0], inputs):
            self._prior_cache = ([t.detach().clone() for t in inputs], self._vamp_prior())
        return self._prior_cache[1]


def _equal_tensors(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """Whether two lists of tensors are equal in length, and tensor by tensor in device, dtype, shape and value."""
    return len(a) == len(b) and all(
        s.device == t.device and s.dtype == t.dtype and s.shape == t.shape and torch.equal(s, t)
        for s, t in zip(a, b, strict=True))


def _spread_directions(k: int, d: int) -> Tensor:
    """K points of the unit sphere in R^d, far apart: (K, d).

    d = 1: K points evenly from -1 to 1. d ≥ 2: greedy farthest-point picks among 64·K
    directions drawn from the construction RNG (``build_model`` seeds it, as for the layer
    weights): each new point is the one farthest from those already picked, so no two start
    on top of each other. K = 1: the origin.
    """
    if k == 1:
        return torch.zeros(1, d)
    if d == 1:
        return torch.linspace(-1.0, 1.0, k).unsqueeze(1)
    pool = F.normalize(torch.randn(64 * k, d), dim=1)  # (64K, d) unit vectors
    picked = [pool[0]]
    nearest = (pool - pool[0]).norm(dim=1)  # (64K,) distance of each candidate to the picked ones
    for _ in range(k - 1):
        # indexed by a tensor, never read back as a number: this also builds on the meta device (vaelab.sizes)
        farthest = pool.index_select(0, nearest.argmax().reshape(1))[0]  # (d,)
        picked.append(farthest)
        nearest = torch.minimum(nearest, (pool - farthest).norm(dim=1))
    return torch.stack(picked)


class MixtureOfGaussiansVAE(VAE):
    """The VAE with a learned prior p(z) = Σ_k π_k N(z; m_k, diag s_k²) (Tomczak & Welling 2018, eq. 8).

    m_k start at distance ``spread`` from 0, spread over the sphere (``_spread_directions``); s_k =
    softplus(h_k) + MIN_SCALE start at 1; π = softmax(logits) start uniform and are learned unless
    ``learn_weights = false``. A conditional model keeps this one p(z) for every c (as the VAE
    keeps N(0, I)): c enters through the encoder and the decoder.
    """

    options = MixtureOptions

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__(config, x_dim, cond_dim, cond_embed)
        opts = config.family_options(MixtureOptions)
        k, d = opts.components, config.latent_dim
        self.prior_means = nn.Parameter(opts.spread * _spread_directions(k, d))  # (K, d)
        # softplus(h) + MIN_SCALE = 1 at the start: h = softplus⁻¹(1 − MIN_SCALE) = log(e^{1 − MIN_SCALE} − 1)
        h0 = math.log(math.expm1(1.0 - MIN_SCALE))
        self.prior_scale_raw = nn.Parameter(torch.full((k, d), h0))  # (K, d)
        logits = torch.zeros(k)
        if opts.learn_weights:
            self.prior_logits = nn.Parameter(logits)  # (K,)
        else:
            self.register_buffer("prior_logits", logits)

    @property
    def components(self) -> int:
        """K, the number of mixture components."""
        return self.prior_means.shape[0]

    def prior(self, c: Tensor | None = None) -> MixtureSameFamily:
        """p(z) = Σ_k π_k N(m_k, diag s_k²): a MixtureSameFamily, batch shape (), event shape (d,),
        the same for every condition c."""
        scale = F.softplus(self.prior_scale_raw) + MIN_SCALE  # (K, d)
        components = Independent(Normal(self.prior_means, scale, validate_args=False), 1, validate_args=False)
        return MixtureSameFamily(Categorical(logits=self.prior_logits, validate_args=False), components,
                                 validate_args=False)


__all__ = ["MIN_SCALE", "PIXEL_INIT", "MixtureOfGaussiansVAE", "MixtureOptions", "VampOptions", "VampVAE"]
