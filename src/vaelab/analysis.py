"""Computations the figures share: the aggregate posterior q(z) on a grid, the model's
log-density log p(x) at points, and a choice of typical data points. No plotting here.

Shapes: x (N, D) data, z (N, d) latent codes, grid (G,) values of one latent coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from vaelab.errors import InputError
from vaelab.evaluate import decoder_width
from vaelab.models import LatentModel, VariationalModel
from vaelab.objectives import iwae_bound, log_importance_weights


def _device(model: LatentModel) -> torch.device:
    return next(model.parameters()).device


def default_points(x: Tensor, m: int = 3) -> Tensor:
    """m well-separated *typical* data points (m, D), chosen deterministically.

    Candidates are the densest half of (up to 1000 of) the points, by the distance to their
    10th nearest neighbour, so that outliers are never chosen; among them, farthest-point
    sampling starts from the candidate nearest the mean and adds the candidate farthest
    from those already chosen.
    """
    x = x[torch.isfinite(x).all(dim=1)][:1000]
    if len(x) == 0:
        raise InputError("no finite data points to choose from")
    m = min(m, len(x))
    dist = torch.cdist(x.double(), x.double())  # (n, n)
    knn = dist.topk(min(11, len(x)), dim=1, largest=False).values[:, -1]  # 10th neighbour (self is 0)
    cand = x[knn <= knn.median()]
    first = int((cand - cand.mean(0)).norm(dim=1).argmin())
    chosen = [first]
    far = (cand - cand[first]).norm(dim=1)
    for _ in range(min(m, len(cand)) - 1):
        nxt = int(far.argmax())
        chosen.append(nxt)
        far = torch.minimum(far, (cand - cand[nxt]).norm(dim=1))
    return cand[chosen]


def points_per_label(x: Tensor, labels: Tensor, m: int = 6) -> Tensor:
    """One typical point (``default_points``) of each of up to m labels (m, D), the labels spread
    evenly over those present, so the chosen points come from different modes."""
    present = torch.unique(labels)
    chosen = present[torch.linspace(0, len(present) - 1, min(m, len(present))).round().long()]
    return torch.cat([default_points(x[labels == k], 1) for k in chosen])


def row_indices(x: Tensor, points: Tensor) -> Tensor:
    """For each point (m, D), the index of the nearest row of x (N, D): (m,)."""
    return torch.cdist(points.double(), x.double()).argmin(dim=1)


def _normal_table(grid: Tensor, mu: Tensor, sd: Tensor) -> Tensor:
    """N(grid_g; μ_n, σ_n²) for every grid value and every point: (G,) x (N,) -> (G, N)."""
    return torch.exp(-0.5 * ((grid[:, None] - mu[None]) / sd[None]) ** 2) / (sd[None] * math.sqrt(2 * math.pi))


@torch.no_grad()
def aggregate_posterior(
    model: VariationalModel, x: Tensor, grid: Tensor, dims: tuple[int, int] = (0, 1), *,
    q_z: Distribution | None = None,
) -> Tensor:
    """q(z) = 1/N Σ_n q(z|x_n) marginalised onto (z_i, z_j), on the grid × grid: (G, G).

    Row a, column b holds q(z_i = grid[b], z_j = grid[a]) (rows = vertical axis, as imshow
    expects). q(z|x) is diagonal, so each term factorises and the whole image is one matrix
    product of two (G, N) tables of 1-D normal densities. A 1-D latent gives (G,).
    ``q_z``: the caller's ``model.encode(x)`` when it has it already (x is then not encoded again).
    """
    q_z = model.encode(x.to(_device(model))) if q_z is None else q_z
    mu, sd = q_z.mean.double().cpu(), q_z.stddev.double().cpu()
    grid = grid.double().cpu()
    n = mu.shape[0]
    if model.latent_dim == 1:
        return _normal_table(grid, mu[:, 0], sd[:, 0]).mean(1)
    i, j = dims
    a_i = _normal_table(grid, mu[:, i], sd[:, i])  # (G, N) over z_i
    a_j = _normal_table(grid, mu[:, j], sd[:, j])  # (G, N) over z_j
    return a_j @ a_i.T / n  # (G over z_j, G over z_i)


# Floats one decoded chunk may hold at the decoder's widest layer while p(x) is scored at many
# points (4 MiB in float32). A chunk this small stays in cache, and the allocator reuses its
# buffers instead of mapping fresh pages for every layer: decoding the 80 x 80 density grid of the
# default 2-D run (k = 100) in chunks of 8 samples x 1024 points is about 3x faster on one CPU
# thread than in chunks of 100 x 1024 (benchmarks/bench_report.py). The draws do not change.
DENSITY_CHUNK_FLOATS = 2**20


@torch.no_grad()
def model_log_density(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, k: int = 100,
    generator: torch.Generator | None = None, batch: int = 1024,
) -> Tensor:
    """IWAE estimate of log p(x) (Burda et al. 2016, eq. 8) at the points x (M, D): (M,).

    ``c``: a conditional model's condition, one for every point (C,) or one per point (M, C);
    the estimate is then of log p(x|c). The points are scored ``batch`` at a time; each batch
    draws its k samples z ~ q(z|x, c) at once (k, batch, d), so the result depends on ``batch``
    and the generator only. Decoding is split along k into chunks of about
    ``DENSITY_CHUNK_FLOATS`` activations, which changes no draw.
    """
    dev = _device(model)
    if c is not None:
        c = c.to(dev)
        c = c.expand(len(x), -1) if c.ndim == 1 else c  # (M, C)
    width = decoder_width(model, c)  # floats per decoded z at the widest layer
    parts = []
    for s in range(0, len(x), batch):
        xb = x[s : s + batch].to(dev)  # (B, D)
        cb = None if c is None else c[s : s + batch]  # (B, C)
        chunk = max(1, DENSITY_CHUNK_FLOATS // (len(xb) * width))  # samples of k decoded at once
        parts.append(iwae_bound(model, xb, cb, k=k, generator=generator, chunk=chunk).cpu())
    return torch.cat(parts)


@torch.no_grad()
def iwae_curve(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, ks: Sequence[int],
    generator: torch.Generator | None = None,
) -> Tensor:
    """The IWAE bound L_k (Burda et al. 2016, eq. 8) averaged over the points x (M, D), for each k
    in ``ks``: (len(ks),) in nats.

    One set of max(ks) draws z_1.. ~ q(z|x) per point; L_k uses the first k of them (nested), so
    the curve is one consistent estimate: L_1 is the one-sample ELBO estimate log w_1, and
    E[L_k] ≤ E[L_{k+1}] ≤ log p(x) (Burda et al., Theorem 1).
    """
    k_max = max(ks)
    dev = _device(model)
    x, c = x.to(dev), None if c is None else c.to(dev)
    chunk = max(1, DENSITY_CHUNK_FLOATS // (len(x) * decoder_width(model, c)))  # samples of k decoded at once
    log_w = log_importance_weights(model, x, c, k=k_max, generator=generator, chunk=chunk)  # (K, M)
    log_w = log_w.double()
    return torch.stack([(torch.logsumexp(log_w[:k], dim=0) - math.log(k)).mean() for k in ks]).cpu()


@torch.no_grad()
def true_posterior_grid(
    model: LatentModel, x: Tensor, grid: Tensor, dims: tuple[int, int] = (0, 1), c: Tensor | None = None,
) -> Tensor:
    """The true posterior p(z|x) ∝ p(x|z) p(z) of one point x (D,) on the grid × grid of (z_i, z_j),
    the other latent dimensions at 0: (G, G), normalised to integrate to 1 over the grid (Riemann
    sum with the grid's cell area). Row a, column b is z_i = grid[b], z_j = grid[a] (imshow layout).
    For a 2-D latent this is the exact posterior up to the grid's resolution and extent.
    """
    dev = _device(model)
    g = grid.to(dev)
    zj, zi = torch.meshgrid(g, g, indexing="ij")  # (G, G): row a is z_j = g[a], column b is z_i = g[b]
    z = torch.zeros(*zi.shape, model.latent_dim, device=dev)
    z[..., dims[0]], z[..., dims[1]] = zi, zj
    z = z.reshape(-1, model.latent_dim)  # (G², d)
    cc = None if c is None else c.to(dev).expand(len(z), -1)
    log_joint = model.decode(z, cc).log_prob(x.to(dev)) + model.prior(cc).log_prob(z)  # (G²,)
    cell = float((grid[1].double() - grid[0].double()) ** 2)
    log_post = log_joint.double() - torch.logsumexp(log_joint.double(), 0) - math.log(cell)
    return torch.exp(log_post).reshape(len(grid), len(grid)).cpu()
