"""Training objectives and bounds, as functions of a model and a batch, in one registry.

Conventions: every per-point quantity is in nats and summed over data / latent dimensions;
the returned scalars are averaged over the batch. ``recon`` is the reconstruction term
-E_q[log p(x|z)] (a positive number for densities that are small), ``kl`` is KL(q(z|x) ‖ p(z)),
closed form where torch has one for the pair and Monte Carlo otherwise (``distributions.kl``).

``OBJECTIVES`` maps a name (``train.objective``) to an ``Objective``: a function
``(model, x, c, *, beta, k, generator) -> ObjectiveOutput`` and what it needs of the model.
A family adds its own with ``register_objective``; its named terms ("kl_1", "codebook", ...)
reach the history, the progress bar and the report without further changes.

Latent groups. A model whose z is made of named parts (the layers z_1 … z_L of a ladder VAE)
says so through its distributions: q(z|x) and p(z) each carry ``groups`` (name -> the slice of
z's last dimension holding that part) and ``log_prob_groups(z) -> {name: (..., B)}``, whose sum
over the names is ``log_prob(z)`` (for a ladder, log q(z_i | z_{i+1}, x) and log p(z_i | z_{i+1})).
Then ``kl_groups`` gives the KL of each group, the ELBO and IWAE report it as "kl_<name>"
terms beside "kl" (which is their sum), free bits may floor each group
(``free_bits_group = "layer"``), and evaluation reports KL and active units per group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Distribution

from vaelab.config import TrainConfig, lookup
from vaelab.distributions import kl as kl_divergence_qp
from vaelab.distributions import kl_per_dim, rsample, standard_normal
from vaelab.errors import InputError
from vaelab.models.base import LatentModel, VariationalModel
from vaelab.schedules import describe


@dataclass
class ObjectiveOutput:
    """What one evaluation of an objective on a batch gives.

    loss: scalar to minimise. terms: named batch-mean scalars (nats), at least "recon"
    (mean -log p(x|z)) and "kl" (mean KL(q(z|x) ‖ p(z)); 0 for the autoencoder), plus what a
    family adds, and (through a registered ``Objective``) the family's per-step scalars such as
    the temperature "tau" (``scalar_terms``; not nats). elbo: mean ELBO with β = 1, or None for a
    model without one (the autoencoder).
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    elbo: Tensor | None = None

    @property
    def recon(self) -> Tensor:
        return self.terms["recon"]

    @property
    def kl(self) -> Tensor:
        return self.terms["kl"]


@dataclass(frozen=True)
class Objective:
    """A registered objective. ``fn`` computes it; ``variational``: it needs q(z|x) (a
    ``VariationalModel``); ``uses_beta`` / ``uses_k`` / ``uses_free_bits``: whether train.beta,
    train.k and train.free_bits change it."""

    name: str
    fn: Callable[..., ObjectiveOutput]
    variational: bool = True
    uses_beta: bool = True
    uses_k: bool = False
    uses_free_bits: bool = False
    # The training loss in words for a TrainConfig ("−IWAE bound (k = 4)"), see ``describe_loss``;
    # None: named from ``name`` and the settings the objective uses.
    label: Callable[[TrainConfig], str] | None = None

    def __call__(self, model: LatentModel, x: Tensor, c: Tensor | None = None, *, beta: float = 1.0, k: int = 1,
                 generator: torch.Generator | None = None, free_bits: float = 0.0,
                 free_bits_group: str = "dim") -> ObjectiveOutput:
        if self.variational and not isinstance(model, VariationalModel):
            raise InputError(f"objective {self.name!r} needs a model with q(z|x); {type(model).__name__} has none "
                             f"(use objective {type(model).default_objective!r})")
        kwargs: dict[str, object] = {}
        if self.uses_beta:
            kwargs["beta"] = beta
        if self.uses_k:
            kwargs["k"] = k
        if self.variational:
            kwargs["generator"] = generator
        if free_bits and not self.uses_free_bits:
            raise InputError(f"free bits floor the KL term of the ELBO; objective {self.name!r} has none to floor "
                             "(use objective 'elbo', or free_bits = 0)")
        if self.uses_free_bits:
            kwargs["free_bits"], kwargs["free_bits_group"] = free_bits, free_bits_group
        out = self.fn(model, x, c, **kwargs)
        out.terms.update(scalar_terms(model))
        return out


def scalar_terms(model: LatentModel) -> dict[str, Tensor]:
    """The family's per-step scalars (``LatentModel.step_scalars``: a Gumbel-softmax temperature
    τ ...) at the values the step used, as terms named after them: so every objective reports
    them, and the history, the progress bar and the report show them (not in nats: the
    scalar itself, its mean over the epoch in the history). Empty for a family without any.

    Each value is the buffer of the same name (``set_scalars`` writes it before the objective
    runs), detached: it is reported, never trained on.
    """
    if type(model).step_scalars is LatentModel.step_scalars:  # no scalars: nothing to look up, every step
        return {}
    terms = {}
    for name in model.step_scalars():
        value = getattr(model, name, None)
        if isinstance(value, Tensor) and value.numel() == 1:
            terms[name] = value.detach().reshape(())
    return terms


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add ``objective`` to ``OBJECTIVES`` under its name (refused if the name is taken)."""
    if objective.name in OBJECTIVES and OBJECTIVES[objective.name] != objective:
        raise InputError(f"an objective named {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``; an InputError naming the known ones otherwise."""
    return lookup(OBJECTIVES, name, "train.objective", "objective")


def objective_for(family: type[LatentModel], requested: str) -> str:
    """The objective a family trains with when ``requested``: that one if the family lists it in
    ``objectives``, else the family's ``default_objective`` (an autoencoder always uses "ae";
    the config's setting rules refuse a requested objective the family cannot use, so nothing
    the user gave is replaced silently)."""
    return requested if requested in family.objectives else family.default_objective


def weights_kl(train: TrainConfig) -> bool:
    """Whether ``train`` makes a β-VAE: β ≠ 1, a β schedule or free bits change the KL term."""
    return train.beta != 1 or train.beta_schedule != "constant" or train.free_bits > 0


def requested_objective(train: TrainConfig) -> str:
    """The objective ``train`` asks for: ``train.objective`` when the user named it (it is in the
    section's ``model_fields_set``: a flag, a TOML key, or a saved run's config.json); else, for
    a β-VAE run (β ≠ 1, a β schedule or free bits: :func:`weights_kl`), the β-ELBO ("elbo"),
    which is what a β-VAE is (Higgins et al. 2017); else the default ``train.objective``.

    Why not the default IWAE for a β-VAE: β weighting every log w_i is not a bound for β ≠ 1,
    and it does not trade rate for distortion like the β-ELBO: at β = 4 or 50 the KL barely
    falls while I(x; z) drops to ~0.1 nats, and q(z|x) collapses to a constant far from the
    prior. It stays available when named (``--objective iwae``).
    """
    if "objective" in train.model_fields_set or not weights_kl(train):
        return train.objective
    return "elbo"


def objective_name(model: LatentModel | type[LatentModel], train: TrainConfig) -> str:
    """The objective a model (or family class) trains with under ``train``: the requested one
    (:func:`requested_objective`) where the family supports it, else the family's
    ``default_objective`` (see ``objective_for``)."""
    family = model if isinstance(model, type) else type(model)
    requested = requested_objective(train)
    if requested not in family.objectives and requested != train.objective:
        requested = train.objective  # a family without the β-ELBO keeps its own resolution
    return objective_for(family, requested)


def resolve_objective(train: TrainConfig, family: type[LatentModel] | None = None) -> TrainConfig:
    """``train`` with the objective it trains with written out (and marked as given), so that a
    saved config.json records it: a β-VAE run without a named objective gets "elbo". The
    user's other explicit settings stay as they were. ``family``: resolve as that family would
    (its own default where it cannot take the requested objective); None keeps the request."""
    name = requested_objective(train) if family is None else objective_name(family, train)
    given = set(train.model_fields_set) | {"objective"}
    resolved = train.model_copy(update={"objective": name})
    resolved.__pydantic_fields_set__ = given
    return resolved


def describe_loss(model: LatentModel | type[LatentModel], train: TrainConfig) -> str:
    """The loss a model (or family class) trains with under ``train``, in words: the one
    description the console, the training-curves figure and the report use.

    "−ELBO", "−β-ELBO (β = 4)", "−IWAE bound (k = 4)", "−β-weighted IWAE (k = 4, β = 4; a bound
    only at β = 1)", "reconstruction loss": the objective's ``label``. An objective registered
    without one is named from its name and the settings it uses ("name loss (k = 4, β = 1)").
    """
    objective = get_objective(objective_name(model, train))
    if objective.label is not None:
        return objective.label(train)
    uses = []
    if objective.uses_k:
        uses.append(f"k = {train.k}")
    if objective.uses_beta:
        uses.append(describe(train))
    return f"{objective.name} loss" + (f" ({', '.join(uses)})" if uses else "")


def _elbo_label(train: TrainConfig) -> str:
    return f"−β-ELBO ({describe(train)})" if weights_kl(train) else "−ELBO"


def _iwae_label(train: TrainConfig) -> str:
    if weights_kl(train):
        return f"−β-weighted IWAE (k = {train.k}, {describe(train)}; a bound only at β = 1)"
    return f"−IWAE bound (k = {train.k})"


def _ae_label(train: TrainConfig) -> str:
    return "reconstruction loss"


def kl_standard_normal(q_z: Distribution) -> Tensor:
    """Closed-form KL(N(μ, diag σ²) ‖ N(0, I)) per latent dimension: (B, d).

    KL_j = ½ (μ_j² + σ_j² - 1 - log σ_j²)   (Kingma & Welling 2014, Appendix B); from h = log σ²
    directly when the encoder outputs it (``NormalLogVar``). Summed over j it equals
    ``kl(q_z, prior)``; per dimension it gives the "KL per latent unit" used to count active units.
    """
    loc = q_z.mean
    per_dim = kl_per_dim(q_z, standard_normal(loc.shape[-1], loc))
    if per_dim is None:
        raise InputError(f"KL per dimension needs a factorised Normal q(z|x), got {type(q_z).__name__}")
    return per_dim


def latent_groups(dist: Distribution) -> dict[str, slice] | None:
    """The named groups of z that ``dist`` (a q(z|x) or p(z)) splits into, name -> slice of z's last
    dimension (a ladder's layers: "1" -> z_1, …), or None for a distribution without groups."""
    groups = getattr(dist, "groups", None)
    return dict(groups) if groups and callable(getattr(dist, "log_prob_groups", None)) else None


def kl_groups(q_z: Distribution, p_z: Distribution, z: Tensor) -> dict[str, Tensor] | None:
    """The KL of each latent group g, per point: {g: (B,)}, or None where q or p has no groups.

        KL_g(x) ≈ log q_g(z) − log p_g(z),   z ~ q(z|x)   (mean over the sample dims of z),

    where log q_g, log p_g are the groups' terms of ``log_prob_groups``: for a ladder VAE,
    log q(z_i | z_{i+1}, x) − log p(z_i | z_{i+1}), the Monte Carlo estimate of
    E_q(z_{>i}|x)[KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1}))], the KL of layer i. Since
    log q = Σ_g log q_g and log p = Σ_g log p_g, the groups' KLs add up to the Monte Carlo KL
    log q(z) − log p(z) at the same draws (up to float rounding).

    Args:
        z: draws of q, (..., B, d): one per point (ELBO) or k (IWAE, evaluation).

    Raises:
        InputError: q and p both have groups, but not the same ones.
    """
    groups_q, groups_p = latent_groups(q_z), latent_groups(p_z)
    if groups_q is None or groups_p is None:
        return None
    if groups_q != groups_p:
        raise InputError(f"q(z|x) and p(z) split z into different groups ({groups_q} and {groups_p}); a family's "
                         "posterior and prior must name the same groups of z")
    log_q = q_z.log_prob_groups(z)  # type: ignore[attr-defined]
    log_p = p_z.log_prob_groups(z)  # type: ignore[attr-defined]
    sample_dims = tuple(range(z.dim() - len(q_z.batch_shape) - 1))
    return {g: (log_q[g] - log_p[g]).mean(dim=sample_dims) if sample_dims else log_q[g] - log_p[g]
            for g in groups_q}


def _sum_groups(kl_by_group: Mapping[str, Tensor]) -> Tensor:
    """Σ_g KL_g: (B,), summed in the groups' order (the total KL of a model with groups)."""
    return torch.stack(list(kl_by_group.values())).sum(0)


def _group_terms(kl_by_group: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The batch means of the groups' KLs as named terms: {"kl_<g>": scalar}."""
    return {f"kl_{g}": value.mean() for g, value in kl_by_group.items()}


FREE_BITS_GROUPS = ("dim", "all", "layer")


def free_bits_kl(kl_per_dim: Tensor | None, floor: float, group: str = "dim", *, kl: Tensor | None = None,
                 kl_by_group: Mapping[str, Tensor] | None = None) -> Tensor:
    """The KL term with free bits λ = ``floor`` (Kingma et al. 2016, IAF paper, appendix C.8), a scalar.

    The batch-averaged KL of each group is floored at λ nats, so the optimiser stops pushing a
    group's KL down once it is below λ (its gradient there is 0) and the posterior keeps using it:

        group "dim":    Σ_j max(λ, mean_B KL_j)         (each latent dimension j is a group)
        group "all":    max(λ, mean_B Σ_j KL_j)         (the whole latent is one group)
        group "layer":  Σ_g max(λ, mean_B KL_g)         (each latent group g: a ladder's layers)

    λ = 0 gives the plain KL term mean_B Σ_j KL_j exactly (same floating-point sum).

    Args:
        kl_per_dim: (B, d) KL of each latent dimension per point, or None for a posterior
            whose KL does not factorise over dimensions (a flow): then only "all" applies.
        floor: λ ≥ 0 in nats.
        group: "dim", "all" or "layer".
        kl: (B,) total KL per point; used (and needed) when ``kl_per_dim`` is None.
        kl_by_group: {g: (B,)} the KL of each latent group (``kl_groups``), for "layer"; None for
            a model whose z has no groups.

    Raises:
        InputError: an unknown group, "dim" for a posterior without a per-dimension KL, or
            "layer" for a model without latent groups.
    """
    if group not in FREE_BITS_GROUPS:
        raise InputError(f"free_bits_group must be one of {', '.join(FREE_BITS_GROUPS)}, got {group!r}")
    if group == "layer":
        if kl_by_group is None:
            raise InputError("free_bits_group = 'layer' floors the KL of each latent group (the layers of a "
                             "hierarchical model such as --model ladder), but this model's q(z|x) and p(z) have no "
                             "groups; use --free-bits-group dim (each latent dimension) or all (the whole latent)")
        if floor == 0:
            return _sum_groups(kl_by_group).mean()
        return torch.stack([value.mean().clamp(min=floor) for value in kl_by_group.values()]).sum()
    if kl_per_dim is None:
        if group == "dim":
            also = "layer (each latent group) or all" if kl_by_group is not None else "all"
            raise InputError("free_bits_group = 'dim' floors the KL of each latent dimension, but this posterior's "
                             f"KL does not factorise over dimensions; use --free-bits-group {also}")
        if kl is None:
            raise InputError("free_bits_kl needs kl_per_dim (B, d) or the total KL per point kl (B,)")
        per_point = kl  # (B,)
    else:
        per_point = kl_per_dim.sum(-1)  # (B,)
    if floor == 0:
        return per_point.mean()
    if group == "all":
        return per_point.mean().clamp(min=floor)
    assert kl_per_dim is not None
    return kl_per_dim.mean(0).clamp(min=floor).sum()  # Σ_j max(λ, mean_B KL_j)


def elbo(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, beta: float = 1.0,
    generator: torch.Generator | None = None, free_bits: float = 0.0, free_bits_group: str = "dim",
) -> ObjectiveOutput:
    """β-ELBO with one reparameterised sample (Kingma & Welling 2014, eq. 10; Higgins et al. 2017):

        L_β(x) = E_q(z|x)[log p(x|z)] - β · KL(q(z|x) ‖ p(z)),   loss = -mean_x L_β(x).

    The KL is closed form where torch has one for (q, p), else the one-sample Monte Carlo
    estimate log q(z|x) − log p(z) at the same z (``distributions.kl``). With ``free_bits``
    λ > 0 the loss uses the floored KL of :func:`free_bits_kl` (times β); the reported ``kl``
    stays the true KL. ``elbo`` in the output is always the β = 1 value without a floor, the
    bound on log p(x).
    """
    q_z = model.encode(x, c)
    z = rsample(q_z, (), generator)  # (B, d)
    log_px = model.decode(z, c).log_prob(x)  # (B,)
    prior = model.prior(c)
    kl_by_group = kl_groups(q_z, prior, z)  # {g: (B,)} where z has named groups (a ladder's layers), else None
    # With groups the KL is the sum of the groups' (Monte Carlo) KLs, so "kl" = Σ_g "kl_g" exactly.
    kl = kl_divergence_qp(q_z, prior, z) if kl_by_group is None else _sum_groups(kl_by_group)  # (B,)
    recon = -log_px.mean()
    kl_mean = kl.mean()
    # Free bits floor each dimension's KL where the KL factorises, each group's where z has groups,
    # otherwise only the whole latent's.
    if free_bits == 0 and free_bits_group != "layer":
        kl_loss = kl_mean
    else:
        kl_loss = free_bits_kl(kl_per_dim(q_z, prior), free_bits, free_bits_group, kl=kl, kl_by_group=kl_by_group)
    terms = {"recon": recon, "kl": kl_mean}
    if kl_by_group is not None:
        terms.update(_group_terms(kl_by_group))
    return ObjectiveOutput(loss=recon + beta * kl_loss, terms=terms, elbo=-(recon + kl_mean))


def decode_log_px(model: LatentModel, z: Tensor, x: Tensor, c: Tensor | None) -> Tensor:
    """log p(x|z_i) for z (k, B, d): (k, B); x broadcasts over the samples, c is repeated."""
    cc = None if c is None else c.expand(len(z), *c.shape)
    return model.decode(z, cc).log_prob(x)


def log_importance_weights(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, k: int,
    generator: torch.Generator | None = None, chunk: int | None = None,
) -> Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x): (k, B).

    ``chunk`` bounds how many of the k samples are decoded at once, so large k fits memory
    (under ``torch.no_grad()``: with autograd on, every chunk's activations are kept for the
    backward pass anyway). All k draws are made before decoding, so the result does not
    depend on ``chunk``: the same generator gives the same log w for any chunk size.
    """
    return importance_terms(model, x, c, k=k, generator=generator, chunk=chunk)[1]


def importance_terms(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, k: int,
    generator: torch.Generator | None = None, chunk: int | None = None, q_z: Distribution | None = None,
) -> tuple[Tensor, Tensor]:
    """log p(x|z_i) and log w_i for z_1..z_k ~ q(z|x), decoded ``chunk`` samples at a time: (k, B) each.

    ``q_z``: the caller's ``model.encode(x, c)`` when it has one already (evaluation encodes
    each batch once for all its metrics); the encoder is deterministic, so the numbers are the same.
    """
    q_z = model.encode(x, c) if q_z is None else q_z
    z = rsample(q_z, (k,), generator)  # (k, B, d): drawn at once, so chunking changes no draw
    log_q = q_z.log_prob(z)  # (k, B)
    chunk = k if chunk is None else max(1, chunk)
    log_px = [decode_log_px(model, z[start:start + chunk], x, c) for start in range(0, k, chunk)]  # (m, B) each
    log_px_all = torch.cat(log_px, dim=0)
    return log_px_all, log_px_all + model.prior(c).log_prob(z) - log_q


def iwae_bound(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, k: int = 50,
    generator: torch.Generator | None = None, chunk: int | None = None,
) -> Tensor:
    """The importance-weighted bound per point (Burda et al. 2016, eq. 8): (B,).

        L_k(x) = log (1/k) Σ_i w_i,   w_i = p(x, z_i) / q(z_i|x),   z_i ~ q(z|x).

    L_1 is the one-sample ELBO estimate; E[L_k] increases with k towards log p(x), so
    -L_k with a large k (1000) is the standard estimate of the negative log-likelihood.
    """
    log_w = log_importance_weights(model, x, c, k=k, generator=generator, chunk=chunk)
    return torch.logsumexp(log_w, dim=0) - math.log(k)


def iwae(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, k: int = 8, beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> ObjectiveOutput:
    """The (β-weighted) IWAE training objective: loss = -mean_x L_k^β(x), where

        L_k^β(x) = log (1/k) Σ_i w_i^β,   log w_i^β = log p(x|z_i) - β (log q(z_i|x) - log p(z_i)).

    β = 1 is the IWAE bound of Burda et al. (2016, eq. 8). With k = 1 its expectation is
    E_q[log p(x|z)] - β KL(q ‖ p), the β-ELBO (Higgins et al. 2017), so β weighs the
    prior-matching term exactly as in the β-VAE; for k > 1 and β ≠ 1 it is no longer a bound
    on log p(x) (held-out evaluation always uses β = 1). The terms ``recon`` and ``kl`` report
    the mean reconstruction over the k samples and the KL (closed form, else the Monte Carlo
    estimate over the same k draws), for the progress display; ``elbo`` is their β = 1 combination.
    These three are reported, not trained on: they carry no gradient (only ``loss`` does).
    """
    q_z = model.encode(x, c)
    prior = model.prior(c)
    z = rsample(q_z, (k,), generator)  # (k, B, d)
    log_px = decode_log_px(model, z, x, c)  # (k, B)
    log_ratio = q_z.log_prob(z) - prior.log_prob(z)  # (k, B)
    # β = 1 (the IWAE bound): 1·t is t exactly, so the multiply (and its backward) is skipped
    log_w = log_px - (log_ratio if isinstance(beta, float) and beta == 1.0 else beta * log_ratio)  # (k, B)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)
    with torch.no_grad():  # reported only, never differentiated: no autograd records for them
        recon = -log_px.mean()
        kl_by_group = kl_groups(q_z, prior, z)  # {g: (B,)} averaged over the k draws, or None
        kl = (kl_divergence_qp(q_z, prior, z) if kl_by_group is None else _sum_groups(kl_by_group)).mean()
        terms = {"recon": recon, "kl": kl}
        if kl_by_group is not None:
            terms.update(_group_terms(kl_by_group))
    return ObjectiveOutput(loss=-bound.mean(), terms=terms, elbo=-(recon + kl))


def ae_loss(model: LatentModel, x: Tensor, c: Tensor | None = None) -> ObjectiveOutput:
    """Autoencoder reconstruction loss -log p(x|f(x)) averaged over the batch; no ELBO. Its
    "kl" term is 0 (there is no posterior), kept so every run has the same two columns."""
    recon = -model.decode(model.embed(x, c), c).log_prob(x).mean()
    return ObjectiveOutput(loss=recon, terms={"recon": recon, "kl": torch.zeros_like(recon)}, elbo=None)


def vq_loss(model: VariationalModel, x: Tensor, c: Tensor | None = None, *,
            generator: torch.Generator | None = None) -> ObjectiveOutput:
    """The VQ-VAE loss with an EMA codebook (van den Oord et al. 2017, eq. 3 and appendix A.1):

        loss = −log p(x | z_q(x)) + β ‖z_e(x) − sg[z_q(x)]‖²,   β = the model's ``commitment``,

    the reconstruction through the straight-through z (``CodePoint.rsample``). The codebook
    term of eq. 3 is replaced by the moving averages: in training mode the model's
    ``update_codebook`` moves the codebook after the quantisation (with ``generator`` for its
    restarts). Terms: ``recon``; ``kl`` = −log p(z_q(x)) (N log K under the uniform prior: the
    ELBO log p(x|z_q) + log p(z_q) is the bound on log p(x)); ``commitment`` (the mean of
    ‖z_e − sg[z_q]‖², summed over the N·d coordinates); ``perplexity`` and ``dead_codes``
    (``VQVAE.usage``).
    """
    from vaelab.models.vq import VQVAE  # the family this objective belongs to

    if not isinstance(model, VQVAE):
        raise InputError(f"objective 'vq' trains a vector-quantised model (--model vq); {type(model).__name__} "
                         f"has no codebook (use objective {type(model).default_objective!r})")
    q_z = model.encode(x, c)
    z = rsample(q_z, (), generator)  # (B, N·d): z_q(x), straight-through to z_e
    recon = -model.decode(z, c).log_prob(x).mean()
    commitment = (q_z.z_e - q_z.z_q.detach().reshape(q_z.z_e.shape)).square().sum(dim=(-2, -1)).mean()
    with torch.no_grad():  # −log p(z_q) = KL(q ‖ p) (``kl_code_point``), read off the codes: reported, not trained
        kl = -model.prior(c).log_prob_codes(q_z.index).mean()
    usage = model.update_codebook(q_z, generator) if model.training else model.usage(q_z.index)
    terms = {"recon": recon, "kl": kl.detach(), "commitment": commitment.detach(), **usage}
    return ObjectiveOutput(loss=recon + model.commitment * commitment, terms=terms, elbo=-(recon + kl).detach())


def vq_prior_loss(model: VariationalModel, x: Tensor, c: Tensor | None = None, *,
                  generator: torch.Generator | None = None) -> ObjectiveOutput:
    """The second stage of a VQ-VAE (van den Oord et al. 2017, section 3.2): the learned prior
    over the codes fitted to the codes k(x) of the training points by maximum likelihood,

        loss = −log p_prior(k(x)),

    the encoder, decoder and codebook fixed (the codes are computed without gradients and the
    codebook is not updated). Terms: ``kl`` = −log p(z_q(x)), the prior's part of the bound, and
    ``recon`` = −log p(x | z_q(x)) (unchanged by this stage), so that recon + kl is −ELBO.
    """
    from vaelab.models.vq import VQVAE

    if not isinstance(model, VQVAE) or model.code_prior is None:
        raise InputError("objective 'vq_prior' trains the learned prior over a VQ-VAE's codes; this model has none "
                         "(--model vq with --vq-prior learned): train it with objective 'vq' first")
    with torch.no_grad():
        q_z = model.encode(x, c)
        recon = -model.decode(q_z.z_q, c).log_prob(x).mean()
    kl = -model.prior(c).log_prob_codes(q_z.index).mean()
    terms = {"recon": recon, "kl": kl.detach(), **model.usage(q_z.index)}
    return ObjectiveOutput(loss=kl, terms=terms, elbo=-(recon + kl).detach())


def _vq_prior_label(train: TrainConfig) -> str:
    return "−log p(codes) (VQ-VAE prior, second stage)"


def _vq_label(train: TrainConfig) -> str:
    return "−log p(x|z_q) + β·commitment (VQ-VAE)"


register_objective(Objective("elbo", elbo, uses_free_bits=True, label=_elbo_label))
register_objective(Objective("iwae", iwae, uses_k=True, label=_iwae_label))
register_objective(Objective("ae", ae_loss, variational=False, uses_beta=False, label=_ae_label))
register_objective(Objective("vq", vq_loss, uses_beta=False, label=_vq_label))
register_objective(Objective("vq_prior", vq_prior_loss, uses_beta=False, label=_vq_prior_label))
