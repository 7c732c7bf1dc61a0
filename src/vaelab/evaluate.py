"""Honest held-out evaluation: ELBO, IWAE log-likelihood, KL per latent dimension, active units,
and, where the data density is known exactly, the gap between the model's NLL and the true one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vaelab.data.dataset import Dataset
from vaelab.models import LatentModel
from vaelab.objectives import elbo, iwae_bound, kl_standard_normal

# Burda et al. (2016), section 5.2: a latent unit is active when Cov_x(E_q[z_u]) > 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01


def _chunk_for(k: int, batch: int, x_dim: int, budget: int = 2**24) -> int:
    """How many of the k importance samples to decode at once: about ``budget`` floats per chunk."""
    return max(1, min(k, budget // max(1, batch * x_dim)))


def bits_per_dim(metrics: dict[str, Any], dim: int) -> dict[str, float]:
    """The ELBO and IWAE NLL of ``metrics`` (nats per point) in bits per dimension.

    bits/dim = nats / (D · ln 2): the usual unit for images, comparable across image sizes.
    For binarized images with a Bernoulli likelihood it is the literature's number; for a
    Gaussian density on grey levels in [0, 1] it is a continuous density (it can be negative)
    and not comparable with the discrete 256-level bits/dim of e.g. PixelCNN papers.
    """
    scale = 1.0 / (dim * math.log(2.0))
    return {"elbo_bpd": -metrics["elbo"] * scale, "iwae_bpd": metrics["iwae_nll"] * scale,
            "iwae_bpd_se": metrics["iwae_nll_se"] * scale}


@torch.no_grad()
def evaluate(
    model: LatentModel, data: Dataset, *, k: int = 1000, batch_size: int = 500, seed: int = 0,
    c: Tensor | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``data`` (held-out points); numbers in nats per data point.

    Returns a dict with ``n``, ``recon`` (-E_q log p(x|z), one sample), and for VAEs ``kl``,
    ``elbo``, ``iwae_nll`` (-L_k with ``k`` samples, an upper bound on -log p(x) that tightens
    with k), ``iwae_nll_se`` (its standard error over the points), ``kl_per_dim``,
    ``active_units``; where ``data.log_prob`` is known also ``true_nll`` (-mean log p(x) of
    the same points: an estimate of the data entropy) and ``nll_gap`` (= iwae_nll - true_nll,
    paired over the same points, ≥ 0 up to noise for a perfect model). For image data
    (``data.image_shape`` set) also ``elbo_bpd`` (−ELBO), ``iwae_bpd`` and ``iwae_bpd_se`` in
    bits per dimension (see ``bits_per_dim``).
    """
    model.eval()
    x = data.x.to(next(model.parameters()).device)
    n = x.shape[0]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    is_vae = model.config.kind == "vae"
    recon_sum = kl_sum = 0.0
    nll_points: list[Tensor] = []
    kl_dims = torch.zeros(model.latent_dim, dtype=torch.float64, device=x.device)
    means: list[Tensor] = []
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size]
        cb = None if c is None else c[start:start + batch_size]
        if not is_vae:
            recon = -model.decode(model.embed(xb, cb), cb).log_prob(xb)
            recon_sum += float(recon.double().sum())
            continue
        out = elbo(model, xb, cb, generator=generator)
        recon_sum += float(out.recon) * len(xb)
        q_z = model.encode(xb, cb)
        kl_d = kl_standard_normal(q_z).double()  # (B, d)
        kl_dims += kl_d.sum(0)
        kl_sum += float(kl_d.sum())
        means.append(q_z.mean.double())
        bound = iwae_bound(model, xb, cb, k=k, generator=generator, chunk=_chunk_for(k, len(xb), model.x_dim))
        nll_points.append(-bound.double())
    metrics: dict[str, Any] = {"n": n, "recon": recon_sum / n}
    if is_vae:
        nll = torch.cat(nll_points)
        mu = torch.cat(means)
        unit_var = mu.var(dim=0) if n > 1 else torch.zeros_like(mu[0])
        metrics.update(
            kl=kl_sum / n,
            elbo=-(metrics["recon"] + kl_sum / n),
            iwae_k=k,
            iwae_nll=float(nll.mean()),
            iwae_nll_se=float(nll.std() / math.sqrt(n)) if n > 1 else float("nan"),
            kl_per_dim=(kl_dims / n).tolist(),
            active_units=int((unit_var > ACTIVE_UNIT_THRESHOLD).sum()),
            latent_dim=model.latent_dim,
        )
        if data.image_shape is not None:
            metrics.update(bits_per_dim(metrics, data.dim))
        if data.log_prob is not None:
            true_nll = -data.log_prob(data.x).double().to(nll.device)  # (n,)
            gap = nll - true_nll
            metrics.update(
                true_nll=float(true_nll.mean()),
                nll_gap=float(gap.mean()),
                nll_gap_se=float(gap.std() / math.sqrt(n)) if n > 1 else float("nan"),
            )
    return metrics
