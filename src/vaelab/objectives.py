"""Training objectives and bounds, as functions of a model and a batch.

Conventions: every per-point quantity is in nats and summed over data / latent dimensions;
the returned scalars are averaged over the batch. ``recon`` is the reconstruction term
-E_q[log p(x|z)] (a positive number for densities that are small), ``kl`` is KL(q(z|x) ‖ p(z)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Independent

from vaelab.errors import InputError
from vaelab.models.vae import VAE, LatentModel, NormalLogVar, reparameterize


@dataclass
class ObjectiveOutput:
    """What one evaluation of an objective on a batch gives.

    loss: scalar to minimise. recon: mean -log p(x|z) over the batch (nats). kl: mean
    KL(q(z|x) ‖ p(z)) (nats; 0 for the autoencoder). elbo: mean ELBO with β = 1, or None
    for the autoencoder, which has no ELBO.
    """

    loss: Tensor
    recon: Tensor
    kl: Tensor
    elbo: Tensor | None


def kl_standard_normal(q_z: Independent) -> Tensor:
    """Closed-form KL(N(μ, diag σ²) ‖ N(0, I)) per latent dimension: (B, d).

    KL_j = ½ (μ_j² + σ_j² - 1 - log σ_j²)   (Kingma & Welling 2014, Appendix B).
    Summed over j this equals ``torch.distributions.kl_divergence(q_z, prior)``; per
    dimension it gives the "KL per latent unit" used to count active units. When the encoder
    outputs h = log σ² (``NormalLogVar``), KL_j = ½ (μ_j² + e^h_j - 1 - h_j) is computed from h
    directly: log(exp(h/2)) loses precision and overflows where exp(h/2) does.
    """
    base = q_z.base_dist
    log_var = base.log_var if isinstance(base, NormalLogVar) else 2.0 * torch.log(base.scale)
    return 0.5 * (base.loc.square() + torch.exp(log_var) - 1.0 - log_var)


FREE_BITS_GROUPS = ("dim", "all")


def free_bits_kl(kl_per_dim: Tensor | None, floor: float, group: str = "dim", *, kl: Tensor | None = None) -> Tensor:
    """The KL term with free bits λ = ``floor`` (Kingma et al. 2016, IAF paper, appendix C.8), a scalar.

    The batch-averaged KL of each group is floored at λ nats, so the optimiser stops pushing a
    group's KL down once it is below λ (its gradient there is 0) and the posterior keeps using it:

        group "dim":  Σ_j max(λ, mean_B KL_j)           (each latent dimension j is a group)
        group "all":  max(λ, mean_B Σ_j KL_j)           (the whole latent is one group)

    λ = 0 gives the plain KL term mean_B Σ_j KL_j exactly (same floating-point sum).

    Args:
        kl_per_dim: (B, d) KL of each latent dimension per point, or None for a posterior
            whose KL does not factorise over dimensions (a flow): then only "all" applies.
        floor: λ ≥ 0 in nats.
        group: "dim" or "all".
        kl: (B,) total KL per point; used (and needed) when ``kl_per_dim`` is None.

    Raises:
        InputError: an unknown group, or "dim" for a posterior without a per-dimension KL.
    """
    if group not in FREE_BITS_GROUPS:
        raise InputError(f"free_bits_group must be one of {', '.join(FREE_BITS_GROUPS)}, got {group!r}")
    if kl_per_dim is None:
        if group == "dim":
            raise InputError("free_bits_group = 'dim' floors the KL of each latent dimension, but this posterior's "
                             "KL does not factorise over dimensions; use --free-bits-group all")
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
    model: VAE, x: Tensor, c: Tensor | None = None, *, beta: float = 1.0,
    generator: torch.Generator | None = None, free_bits: float = 0.0, free_bits_group: str = "dim",
) -> ObjectiveOutput:
    """β-ELBO with one reparameterised sample (Kingma & Welling 2014, eq. 10; Higgins et al. 2017):

        L_β(x) = E_q(z|x)[log p(x|z)] - β · KL(q(z|x) ‖ p(z)),   loss = -mean_x L_β(x).

    With ``free_bits`` λ > 0 the loss uses the floored KL of :func:`free_bits_kl` (times β);
    the reported ``kl`` stays the true KL. ``elbo`` in the output is always the β = 1 value
    without a floor, the bound on log p(x).
    """
    q_z = model.encode(x, c)
    z = reparameterize(q_z, generator=generator)  # (B, d)
    log_px = model.decode(z, c).log_prob(x)  # (B,)
    kl_dims = kl_standard_normal(q_z)  # (B, d)
    kl = kl_dims.sum(-1)  # (B,)
    recon = -log_px.mean()
    kl_mean = kl.mean()
    kl_loss = free_bits_kl(kl_dims, free_bits, free_bits_group, kl=kl)
    return ObjectiveOutput(loss=recon + beta * kl_loss, recon=recon, kl=kl_mean, elbo=-(recon + kl_mean))


def _sample_log_weights(
    model: LatentModel, q_z: Independent, x: Tensor, c: Tensor | None, k: int,
    generator: torch.Generator | None, beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Draw z_1..z_k ~ q(z|x); return log p(x|z_i) and
    log w_i = log p(x|z_i) - β (log q(z_i|x) - log p(z_i)), each (k, B) (β = 1: log p(x, z_i) / q(z_i|x))."""
    z = reparameterize(q_z, (k,), generator)  # (k, B, d)
    cc = None if c is None else c.expand(k, *c.shape)
    log_px = model.decode(z, cc).log_prob(x)  # (k, B): x broadcasts over the samples
    return log_px, log_px - beta * (q_z.log_prob(z) - model.prior().log_prob(z))


def log_importance_weights(
    model: VAE, x: Tensor, c: Tensor | None = None, *, k: int,
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
    model: VAE, x: Tensor, c: Tensor | None = None, *, k: int,
    generator: torch.Generator | None = None, chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """log p(x|z_i) and log w_i for z_1..z_k ~ q(z|x), decoded ``chunk`` samples at a time: (k, B) each."""
    q_z = model.encode(x, c)
    z = reparameterize(q_z, (k,), generator)  # (k, B, d): drawn at once, so chunking changes no draw
    log_q = q_z.log_prob(z)  # (k, B)
    chunk = k if chunk is None else max(1, chunk)
    log_px = []
    for start in range(0, k, chunk):
        zs = z[start:start + chunk]  # (m, B, d)
        cc = None if c is None else c.expand(len(zs), *c.shape)
        log_px.append(model.decode(zs, cc).log_prob(x))  # (m, B): x broadcasts over the samples
    log_px_all = torch.cat(log_px, dim=0)
    return log_px_all, log_px_all + model.prior().log_prob(z) - log_q


def iwae_bound(
    model: VAE, x: Tensor, c: Tensor | None = None, *, k: int = 50,
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
    model: VAE, x: Tensor, c: Tensor | None = None, *, k: int = 8, beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> ObjectiveOutput:
    """The (β-weighted) IWAE training objective: loss = -mean_x L_k^β(x), where

        L_k^β(x) = log (1/k) Σ_i w_i^β,   log w_i^β = log p(x|z_i) - β (log q(z_i|x) - log p(z_i)).

    β = 1 is the IWAE bound of Burda et al. (2016, eq. 8). With k = 1 its expectation is
    E_q[log p(x|z)] - β KL(q ‖ p), the β-ELBO (Higgins et al. 2017), so β weighs the
    prior-matching term exactly as in the β-VAE; for k > 1 and β ≠ 1 it is no longer a bound
    on log p(x) (held-out evaluation always uses β = 1). ``recon`` and ``kl`` report the mean
    reconstruction over the k samples and the analytic KL, for the progress display; ``elbo``
    is their β = 1 combination.
    """
    q_z = model.encode(x, c)
    log_px, log_w = _sample_log_weights(model, q_z, x, c, k, generator, beta)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)
    recon = -log_px.mean()
    kl = kl_standard_normal(q_z).sum(-1).mean()
    return ObjectiveOutput(loss=-bound.mean(), recon=recon, kl=kl, elbo=-(recon + kl))


def ae_loss(model: LatentModel, x: Tensor, c: Tensor | None = None) -> ObjectiveOutput:
    """Autoencoder reconstruction loss -log p(x|f(x)) averaged over the batch; no KL, no ELBO."""
    recon = -model.decode(model.embed(x, c), c).log_prob(x).mean()
    return ObjectiveOutput(loss=recon, recon=recon, kl=torch.zeros_like(recon), elbo=None)


# The training objectives of variational models by name (train.objective); an autoencoder
# trains on ``ae_loss``.
OBJECTIVES = {"elbo": elbo, "iwae": iwae}
