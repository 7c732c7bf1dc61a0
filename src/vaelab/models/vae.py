"""The variational autoencoder: encode -> q(z|x), decode -> p(x|z), both torch distributions.

The model only defines distributions; it never computes its own loss (see objectives.py).
Kingma & Welling (2014), "Auto-Encoding Variational Bayes".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vaelab.config import ModelConfig
from vaelab.errors import InputError
from vaelab.likelihoods import Likelihood, build_likelihood, sample_observation
from vaelab.nets import build_decoder, build_encoder, mlp
from vaelab.nets.mlp import activation_layer


def reparameterize(
    q_z: Independent, sample_shape: tuple[int, ...] = (), generator: torch.Generator | None = None
) -> Tensor:
    """z = μ + σ ⊙ ε with ε ~ N(0, I): a sample of q(z|x) that gradients flow through.

    Same as ``q_z.rsample(sample_shape)`` but with an explicit generator, so training and
    sampling are reproducible without touching the global RNG. Shape: sample_shape + (B, d).
    """
    loc, scale = q_z.base_dist.loc, q_z.base_dist.scale
    eps = torch.randn(
        sample_shape + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype
    )
    return loc + scale * eps


class NormalLogVar(Normal):
    """N(μ, σ²) parameterised by h = log σ²: it keeps h, so log σ² (log-density, KL) is h
    itself and not log(exp(h/2))², which loses precision and overflows for large |h|."""

    def __init__(self, loc: Tensor, log_var: Tensor, validate_args: bool | None = False) -> None:
        super().__init__(loc, torch.exp(0.5 * log_var), validate_args=validate_args)
        self.log_var = log_var

    def log_prob(self, value: Tensor) -> Tensor:
        # log N(x; μ, e^h) = -(x-μ)² e^{-h} / 2 - h/2 - ½ log 2π
        return -0.5 * ((value - self.loc).square() * torch.exp(-self.log_var) + self.log_var + math.log(2 * math.pi))

    def entropy(self) -> Tensor:
        return 0.5 * (1.0 + math.log(2 * math.pi) + self.log_var)


def standard_normal(latent_dim: int, like: Tensor) -> Independent:
    """The prior p(z) = N(0, I_d) on ``like``'s device and dtype."""
    zeros = torch.zeros(latent_dim, device=like.device, dtype=like.dtype)
    return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1, validate_args=False)


def condition_embedding(
    cond_dim: int, widths: Sequence[int], activation: str
) -> tuple[nn.Module | None, int]:
    """The MLP that embeds a continuous condition, and the width the nets then see.

    c (..., cond_dim) -> Linear -> act -> ... -> Linear -> act: (..., widths[-1]). A scalar
    such as a radius is a poor input on its own (one column among many); a few learned
    features of it give the encoder and decoder something to work with. The last layer
    keeps its activation: a final linear layer would merge into the first layer of the
    encoder / decoder and add nothing. No widths (or no condition): (None, cond_dim).
    """
    if cond_dim == 0 or not widths:
        return None, cond_dim
    body = mlp(cond_dim, widths[:-1], widths[-1], activation)
    net = nn.Sequential(body, activation_layer(activation))
    return net, widths[-1]


class LatentModel(nn.Module):
    """What VAE and AE share: the config, conditioning checks, the decoder and sampling.

    Subclasses set ``self.decoder`` and ``self.likelihood`` and implement ``embed``; a
    conditional subclass may set ``self.cond_net`` (see ``condition_embedding``), which
    maps c before it is concatenated, and records its widths in ``self.cond_embed``.
    """

    config: ModelConfig
    x_dim: int
    cond_dim: int
    decoder: nn.Module
    likelihood: Likelihood
    # No class-level default for cond_net: nn.Module keeps submodules in _modules and finds
    # them through __getattr__, which a class attribute would shadow. Read it with getattr.
    cond_net: nn.Module | None
    cond_embed: tuple[int, ...] = ()

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def _build(
        self, config: ModelConfig, x_dim: int, cond_dim: int, cond_embed: Sequence[int], encoder_out: int
    ) -> None:
        """Set the config and build likelihood, condition embedding, encoder and decoder.

        encoder: (B, x_dim [+ c]) -> (B, encoder_out); decoder: (..., d [+ c]) -> the
        likelihood's parameters, (..., x_dim · params_per_dim).
        """
        if x_dim <= 0:
            raise InputError(f"x_dim must be positive, got {x_dim}")
        self.config = config
        self.x_dim = x_dim
        self.cond_dim = cond_dim
        self.likelihood = build_likelihood(config.likelihood, config.recon_var, config.min_var)
        self.cond_net, c_width = condition_embedding(cond_dim, cond_embed, config.activation)
        self.cond_embed = tuple(cond_embed) if self.cond_net is not None else ()
        self.encoder = build_encoder(config, x_dim, c_width, encoder_out)
        self.decoder = build_decoder(config, config.latent_dim + c_width, x_dim, self.likelihood.params_per_dim)

    def _with_condition(self, h: Tensor, c: Tensor | None) -> Tensor:
        """Concatenate the condition c (B, cond_dim) to the input h (B, ·) when the model has one."""
        if self.cond_dim == 0:
            if c is not None:
                raise InputError("this model was trained without a condition; call it with c=None")
            return h
        if c is None:
            raise InputError(f"this model is conditional: pass c with shape (B, {self.cond_dim})")
        if c.shape[-1] != self.cond_dim:
            raise InputError(f"condition has width {c.shape[-1]}, the model expects {self.cond_dim}")
        try:  # c may be one row shared by all (1, cond_dim), or one row per point
            shared = torch.broadcast_shapes(c.shape[:-1], h.shape[:-1]) == h.shape[:-1]
        except RuntimeError:
            shared = False
        if not shared:
            raise InputError(f"c has shape {tuple(c.shape)} for inputs of shape {tuple(h.shape)}: give one "
                             f"condition per row (shape {(*h.shape[:-1], self.cond_dim)}) or a single row "
                             f"(1, {self.cond_dim}) shared by all")
        cond_net = getattr(self, "cond_net", None)
        if cond_net is not None:
            c = cond_net(c)  # (..., cond_dim) -> (..., embedding width)
        return torch.cat([h, c.expand(*h.shape[:-1], c.shape[-1])], dim=-1)

    def prior(self) -> Independent:
        """p(z) = N(0, I)."""
        return standard_normal(self.latent_dim, next(self.parameters()))

    def _check_width(self, t: Tensor, width: int, name: str, what: str) -> None:
        """Refuse an input whose last dimension is not ``width``, naming the model's size."""
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (..., {width}), got {type(t).__name__}")
        if t.ndim == 0 or t.shape[-1] != width:
            raise InputError(f"{name} has shape {tuple(t.shape)}, but this model's {what} is {width}: "
                             f"pass {name} of shape (..., {width})")

    def decode(self, z: Tensor, c: Tensor | None = None) -> Distribution:
        """p(x|z, c): z (..., d) -> a distribution with batch shape (...) over x in R^D."""
        self._check_width(z, self.latent_dim, "z", "latent_dim")
        return self.likelihood(self.decoder(self._with_condition(z, c)))

    def embed(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The latent code of x used for plots: (B, D) -> (B, d)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self, n: int, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        noise: bool = False,
    ) -> Tensor:
        """Decode n draws of z ~ N(0, I): (n, D). ``noise=False`` returns the decoder mean
        E[x|z]; ``noise=True`` draws x ~ p(x|z) (adds the observation noise)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"n must be a non-negative integer number of samples, got {n!r}")
        ref = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=ref.device, dtype=ref.dtype)
        p_x = self.decode(z, c)
        return sample_observation(p_x, generator) if noise else p_x.mean

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        stochastic: bool = False,
    ) -> Tensor:
        """Encode then decode: (B, D) -> (B, D). Deterministic version: decoder mean at the
        posterior mean; stochastic: z ~ q(z|x), then x ~ p(x|z)."""
        raise NotImplementedError


class VAE(LatentModel):
    """A VAE with MLP encoder and decoder.

    encode: x (B, D) [+ c] -> q(z|x) = N(μ(x), diag σ²(x)), an Independent Normal over d dims.
    decode: z (..., d) [+ c] -> p(x|z) from the configured likelihood.
    The encoder's scale output h becomes σ by ``config.scale``: ``logvar`` (h = log σ²,
    σ = exp(h/2)), ``softplus`` (σ = softplus(h)) or ``exp`` (h = log σ, σ = exp(h)).
    """

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self._build(config, x_dim, cond_dim, cond_embed, encoder_out=2 * config.latent_dim)  # μ and scale

    def _scale(self, h: Tensor) -> Tensor:
        if self.config.scale == "logvar":
            return torch.exp(0.5 * h)
        if self.config.scale == "softplus":
            return F.softplus(h)
        return torch.exp(h)

    def encode(self, x: Tensor, c: Tensor | None = None) -> Independent:
        """q(z|x, c): (B, D) -> Independent Normal with batch shape (B,), event shape (d,)."""
        self._check_width(x, self.x_dim, "x", "x_dim")
        loc, h = self.encoder(self._with_condition(x, c)).chunk(2, dim=-1)  # (B, d) each
        # No argument validation: it costs time every step and would turn a NaN from a
        # diverging run into a ValueError here instead of the trainer's clear message.
        if self.config.scale == "logvar":
            base: Normal = NormalLogVar(loc, h)
        else:
            base = Normal(loc, self._scale(h), validate_args=False)
        return Independent(base, 1, validate_args=False)

    def embed(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self.encode(x, c).mean

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        stochastic: bool = False,
    ) -> Tensor:
        q_z = self.encode(x, c)
        if not stochastic:
            return self.decode(q_z.mean, c).mean
        return sample_observation(self.decode(reparameterize(q_z, generator=generator), c), generator)
