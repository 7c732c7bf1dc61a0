"""What a flow posterior buys: q(z|x) after the flow beside its Normal base and the true posterior.

For a few points x of a run with a 2-D latent and a flow family (planar, radial, iaf), one row
each: the base N(μ(x), diag σ²(x)), q(z|x) after the K flow steps, and the exact posterior
p(z|x) ∝ p(x|z) p(z), all three as densities on the same grid. Each panel's title gives its
gap to log p(x): ELBO(q) = log p(x) − KL(q ‖ p(z|x)), so the gap is how far that q is from the
true posterior, in nats. log p(x) is the grid's integral of p(x, z) (exact up to the grid), the
ELBOs are Monte Carlo averages over draws of each q.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.distributions import Distribution

from vaelab.analysis import default_points, row_indices
from vaelab.data.dataset import Dataset
from vaelab.distributions import rsample
from vaelab.models.flows import FlowVAE
from vaelab.plots.common import (
    DENSITY_CMAP,
    FigureSpec,
    PlotContext,
    colorbar,
    new_figure,
    to_numpy,
    z_label,
)

# Draws per point for the Monte Carlo ELBOs of the titles: their standard error is a few
# hundredths of a nat on the 2-D data sets.
ELBO_DRAWS = 4000


def _log_joint(model: FlowVAE, x: Tensor, z: Tensor, c: Tensor | None) -> Tensor:
    """log p(x, z) = log p(x|z) + log p(z) for z (..., 1, d) and one point x (1, D): (..., 1)."""
    cc = None if c is None else c.expand(*z.shape[:-1], c.shape[-1])
    return model.decode(z, cc).log_prob(x) + model.prior(cc).log_prob(z)


def _elbo(model: FlowVAE, x: Tensor, q_z: Distribution, c: Tensor | None, generator: torch.Generator) -> float:
    """E_q[log p(x, z) − log q(z|x)] by Monte Carlo (``ELBO_DRAWS`` draws) for one point x (1, D)."""
    z = rsample(q_z, (ELBO_DRAWS,), generator)  # (n, 1, d)
    return float((_log_joint(model, x, z, c) - q_z.log_prob(z)).double().mean())


@torch.no_grad()
def plot_flow_posterior(
    model: FlowVAE, data: Dataset, *, points: Tensor | None = None, c: Tensor | None = None,
    generator: torch.Generator | None = None, grid: int = 120, extent: float = 3.5,
) -> Figure:
    """For a few points x (rows): the Normal base of q(z|x), q(z|x) after the flow, and the true
    posterior p(z|x), as densities on a grid over [−extent, extent]² (2-D latents only). Each
    title gives the panel's gap to log p(x) in nats (0 for the true posterior).

    ``c``: each data point's condition (a chosen point takes the c of its nearest data point).
    """
    if model.latent_dim != 2:
        raise ValueError(f"the flow-posterior figure draws a 2-D latent; this model has d = {model.latent_dim}")
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    dev = next(model.parameters()).device
    pts = (default_points(data.x, 3) if points is None else points.to(data.x.dtype)).to(dev)
    c_pts = None if c is None else c[row_indices(data.x, pts.cpu()).to(c.device)].to(dev)
    g = torch.linspace(-extent, extent, grid, device=dev)
    zj, zi = torch.meshgrid(g, g, indexing="ij")  # row a: z_2 = g[a]; column b: z_1 = g[b] (imshow layout)
    z = torch.stack([zi, zj], dim=-1).reshape(-1, 1, 2)  # (G², 1, 2)
    cell = float((g[1] - g[0]).double() ** 2)
    kind = model.config.kind
    fig, axes = new_figure(3, len(pts), size=(3.6, 3.6),
                           title=f"q(z|x) of the {kind} flow: its Normal base, after the flow, and the true posterior; "
                           "gap = log p(x) − ELBO(q) = KL(q ‖ p(z|x)) in nats")
    images, tops = [], []
    for m in range(len(pts)):
        x = pts[m : m + 1]  # (1, D)
        cm = None if c_pts is None else c_pts[m : m + 1]
        base, q_z = model.base_and_flow(x, cm)
        log_joint = _log_joint(model, x, z, cm).double()  # (G², 1)
        log_px = float(torch.logsumexp(log_joint, 0) + math.log(cell))  # log p(x) = log ∫ p(x, z) dz
        panels = (
            (f"Normal base (before the flow), gap {log_px - _elbo(model, x, base, cm, gen):.3f}",
             base.log_prob(z).double()),
            (f"after {len(q_z.transforms)} flow steps, gap {log_px - _elbo(model, x, q_z, cm, gen):.3f}",
             q_z.log_prob(z).double()),
            ("true posterior p(z|x)", log_joint - log_px),
        )
        coords = ", ".join(f"{v:.2g}" for v in to_numpy(x[0])[:3])
        for j, (title, log_density) in enumerate(panels):
            ax = axes[3 * m + j]
            density = np.exp(to_numpy(log_density).reshape(grid, grid))
            tops.append(float(density.max()))
            images.append(ax.imshow(density, origin="lower", extent=(-extent, extent, -extent, extent),
                                    cmap=DENSITY_CMAP, interpolation="bilinear"))
            ax.set_title(title if j else f"x = ({coords})\n{title}", fontsize="medium")
            ax.set_xlabel(z_label(0))
            ax.set_ylabel(z_label(1))
    # one colour scale per row: the three densities of a point compare directly
    for m in range(len(pts)):
        row = images[3 * m : 3 * m + 3]
        top = max(tops[3 * m : 3 * m + 3])
        for im in row:
            im.set_clim(0, top)
        colorbar(fig, row[-1], list(axes[3 * m : 3 * m + 3]), "density")
    return fig


def _flow_posterior(ctx: PlotContext) -> Figure:
    model = ctx.model
    assert isinstance(model, FlowVAE)
    return plot_flow_posterior(model, ctx.data, points=ctx.points, c=ctx.c, generator=ctx.generator(811))


def _flow_family_2d(ctx: PlotContext) -> str | None:
    if not isinstance(ctx.model, FlowVAE):
        return f"the {ctx.model.config.kind} model's q(z|x) has no flow"
    d = ctx.model.latent_dim
    return None if d == 2 else f"the flow posterior is drawn on a 2-D latent grid (d = {d})"


FIGURES = [
    FigureSpec("flow_posterior", _flow_posterior,
               "For a few points: the Normal base of q(z|x), q(z|x) after the flow, and the true posterior p(z|x), "
               "on one colour scale per row. The gap in each title is KL(q ‖ p(z|x)), what the ELBO loses to "
               "log p(x) (log p(x) integrated on the grid, each ELBO by Monte Carlo). The flow earns its keep where it "
               "bends the base towards the true shape. The base alone is not a trained Normal q: a plain VAE's "
               "q(z|x) is fitted on its own and does better than this base (the families benchmark compares them).",
               _flow_family_2d, title="Flow posterior vs its base and the true posterior", heavy=True),
]

__all__ = ["plot_flow_posterior"]
