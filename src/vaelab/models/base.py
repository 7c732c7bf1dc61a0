"""The model contract every family satisfies: a prior, a decoder, a code for figures, sampling.

``LatentModel``: ``prior(c) -> p(z|c)``, ``decode(z, c) -> p(x|z, c)``, ``embed(x, c) -> (B, d)``
(the code the figures show) and ``sample()``, which draws z from ``prior()``. A model with an
inference network is a ``VariationalModel`` and adds ``encode(x, c) -> q(z|x, c)``. All of these
are ``torch.distributions`` objects; objectives (objectives.py) turn them into numbers, the model
never computes its own loss. Behaviour elsewhere is chosen by what a model can do:

- ``isinstance(model, VariationalModel)``: it has q(z|x) (ELBO / IWAE, KL, posterior figures);
- ``has_normal_posterior(model)``: q(z|x) is a factorised Normal N(μ, diag σ²) (μ/σ panels,
  ellipses, per-dimension KL);
- ``has_standard_prior(model)``: p(z) is N(0, I) (figures that draw its circles).

A family is one class registered with ``vaelab.models.register_family(name, cls)``; it declares
``default_objective`` and ``objectives`` (names in ``vaelab.objectives.OBJECTIVES``).

A family with settings of its own declares ``options = MyOptions``, a ``vaelab.config.FamilyOptions``
subclass (pydantic fields with defaults and descriptions). Users set them in a ``[model.NAME]``
TOML table or as ``--NAME-FIELD`` flags of ``vaelab train`` / ``vaelab sweep`` (NAME: the
registered name); they are checked against ``MyOptions`` before anything is built. The family
reads them in one way: ``config.family_options(MyOptions)`` (``ModelConfig.family_options``),
the validated options with the defaults filled in, typically once in ``__init__``. See
docs/families.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, TypeGuard

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.config import FamilyOptions, ModelConfig, ScheduleSpec
from vaelab.distributions import broadcasts_to, is_factorised_normal, rsample, standard_normal
from vaelab.errors import InputError
from vaelab.likelihoods import Likelihood, build_likelihood, sample_observation
from vaelab.memory import FLOAT_BYTES, check_fits
from vaelab.nets import build_decoder, build_encoder, mlp
from vaelab.nets.mlp import activation_layer


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
    """The contract: ``prior``, ``decode``, ``embed``, ``sample``, ``reconstruct`` (and the
    config, conditioning checks and nets every family shares).

    Subclasses set ``self.decoder`` and ``self.likelihood`` (``_build`` does) and implement
    ``embed`` and ``reconstruct``; a family with another p(z) overrides ``prior``. A
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
    # The objective train.objective defaults to, and every objective this family can train
    # with (names in vaelab.objectives.OBJECTIVES).
    default_objective: ClassVar[str] = "ae"
    objectives: ClassVar[tuple[str, ...]] = ("ae",)
    # The family's own options (a FamilyOptions subclass), or None: see the module docstring.
    options: ClassVar[type[FamilyOptions] | None] = None
    # Whether q(z|x) and p(z) split z into named groups (``groups`` and ``log_prob_groups``: a
    # ladder's layers), which objectives and evaluation report one by one (vaelab.objectives).
    has_latent_groups: ClassVar[bool] = False
    # Whether the family turns a net's scale output into σ by ``model.scale`` (``--scale``): the
    # VAE and its subclasses, the ladder; settings.check_settings refuses --scale elsewhere.
    reads_scale: ClassVar[bool] = False

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def step_scalars(self) -> dict[str, ScheduleSpec]:
        """The per-step scalars this family trains with beyond β and the learning rate (a
        Gumbel-softmax temperature τ, a commitment weight ...), each with its schedule
        (``vaelab.schedules``). The training step hands their values of every step to
        ``set_scalars`` before the objective runs. None by default."""
        return {}

    def set_scalars(self, scalars: Mapping[str, float | Tensor]) -> None:
        """Take this step's values of the scalars ``step_scalars`` declares.

        The default writes each into the buffer of the same name (so it is saved with the
        weights, and a model loaded after training holds its last value). A value is a float,
        or a 0-dim tensor per member when a stacked sweep trains many models as one.
        """
        with torch.no_grad():
            for name, value in scalars.items():
                buffer = getattr(self, name)
                if isinstance(value, Tensor):
                    buffer.copy_(value)
                else:
                    buffer.fill_(value)

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
        # c may be one row shared by all (1, cond_dim), or one row per point: its leading shape must
        # broadcast to h's.
        if not broadcasts_to(c.shape[:-1], h.shape[:-1]):
            raise InputError(f"c has shape {tuple(c.shape)} for inputs of shape {tuple(h.shape)}: give one "
                             f"condition per row (shape {(*h.shape[:-1], self.cond_dim)}) or a single row "
                             f"(1, {self.cond_dim}) shared by all")
        cond_net = getattr(self, "cond_net", None)
        if cond_net is not None:
            c = cond_net(c)  # (..., cond_dim) -> (..., embedding width)
        return torch.cat([h, c.expand(*h.shape[:-1], c.shape[-1])], dim=-1)

    def prior(self, c: Tensor | None = None) -> Distribution:
        """p(z | c): by default N(0, I), batch shape (), event shape (d,). A family may return
        another distribution (a mixture, a learned prior) with batch shape () or (B,) for c (B, C)."""
        return standard_normal(self.latent_dim, next(self.parameters()))

    @property
    def prior_is_standard_normal(self) -> bool:
        """Whether p(z) is N(0, I): true unless the class overrides ``prior`` (a family whose
        override still returns N(0, I) may override this property too)."""
        return type(self).prior is LatentModel.prior

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
        """The latent code of x the figures show: (B, D) -> (B, d). Every family defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define embed(x, c) -> (B, d)")

    @torch.no_grad()
    def sample(
        self, n: int, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        noise: bool = False,
    ) -> Tensor:
        """Decode n draws of z ~ p(z | c) (``prior(c)``): (n, D). ``noise=False`` returns the
        decoder mean E[x|z]; ``noise=True`` draws x ~ p(x|z) (adds the observation noise).
        A prior with batch shape (n,) (one per row of c) gives one z per row."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"n must be a non-negative integer number of samples, got {n!r}")
        # The codes and the decoder's outputs alone (a lower bound): refused before the allocator
        # fails with a raw "can't allocate memory" (audit AP26; the CLI's sample checks the same).
        check_fits(float(n) * (self.latent_dim + 2 * self.x_dim) * FLOAT_BYTES, f"sample({n:,}) of this model",
                   "draw fewer samples at a time (in batches)")
        prior = self.prior(c)
        if prior.batch_shape not in (torch.Size(), torch.Size([n])):
            raise InputError(f"prior(c) has batch shape {tuple(prior.batch_shape)}: give c for {n} samples "
                             f"(one row each) or one row shared by all")
        z = rsample(prior, (n,) if prior.batch_shape == torch.Size() else (), generator)  # (n, d)
        p_x = self.decode(z, c)
        return sample_observation(p_x, generator) if noise else p_x.mean

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        stochastic: bool = False,
    ) -> Tensor:
        """Encode then decode: (B, D) -> (B, D). Deterministic version: decoder mean at the
        code ``embed(x)``; stochastic: x ~ p(x|z) at that code (a VariationalModel draws z ~ q(z|x))."""
        p_x = self.decode(self.embed(x, c), c)
        return sample_observation(p_x, generator) if stochastic else p_x.mean


class VariationalModel(LatentModel):
    """A LatentModel with an inference network: ``encode(x, c) -> q(z|x, c)``.

    ``embed`` is the posterior mean where q has one (a family whose q has no closed-form mean,
    e.g. a flow, overrides it); ``reconstruct(stochastic=True)`` draws z ~ q(z|x) then x ~ p(x|z).
    """

    default_objective: ClassVar[str] = "elbo"
    objectives: ClassVar[tuple[str, ...]] = ("elbo", "iwae")

    def encode(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """q(z|x, c): x (B, D) -> a distribution with batch shape (B,), event shape (d,)."""
        raise NotImplementedError(f"{type(self).__name__} must define encode(x, c) -> q(z|x, c)")

    @property
    def posterior_is_factorised_normal(self) -> bool:
        """Whether q(z|x) is N(μ, diag σ²) (an Independent Normal). False unless a family says
        so; ``VAE`` does."""
        return False

    def embed(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The posterior mean E_q[z|x]: (B, D) -> (B, d)."""
        return self.encode(x, c).mean

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        stochastic: bool = False,
    ) -> Tensor:
        """Encode then decode: (B, D) -> (B, D). Deterministic: the decoder mean at ``embed(x)``;
        stochastic: z ~ q(z|x) (drawn with ``generator``), then x ~ p(x|z)."""
        if not stochastic:
            return self.decode(self.embed(x, c), c).mean
        return sample_observation(self.decode(rsample(self.encode(x, c), (), generator), c), generator)


def has_normal_posterior(model: LatentModel) -> TypeGuard[VariationalModel]:
    """Whether ``model`` has q(z|x) and it is a factorised Normal N(μ, diag σ²)."""
    return isinstance(model, VariationalModel) and model.posterior_is_factorised_normal


def has_standard_prior(model: LatentModel) -> bool:
    """Whether ``model``'s prior p(z) is N(0, I)."""
    return model.prior_is_standard_normal


__all__ = ["LatentModel", "VariationalModel", "condition_embedding", "has_normal_posterior", "has_standard_prior",
           "is_factorised_normal"]


