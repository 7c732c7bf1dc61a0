"""Figures of a learned prior p(z): a mixture of Gaussians (``mog``) or the VampPrior (``vamp``).

- ``prior_mixture``: p(z) as a heat map with the encoded training data over it, beside its
  components (1σ and 2σ ellipses, weights π_k). For any model whose prior is a mixture of
  factorised Normals (``MixtureSameFamily`` of Independent Normals); for d > 2 the exact 2-D
  marginal on the shown pair of dimensions (a mixture's marginal is the mixture of its
  components' marginals: drop the other coordinates of each m_k, s_k).
- ``vamp_pseudo_inputs``: the VampPrior's pseudo-inputs u_k beside what its components decode
  to, E[x | z = μ(u_k)]: images for image data, points in data space otherwise.

Each function takes a model and data and returns a ``matplotlib.figure.Figure``; the registry
entries at the bottom say to which runs they apply (skip reasons).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from vaelab.data.dataset import Dataset
from vaelab.distributions import is_factorised_normal
from vaelab.errors import InputError
from vaelab.models import LatentModel, has_standard_prior
from vaelab.models.priors import VampVAE
from vaelab.plots.common import (
    DENSITY_CMAP,
    FigureSpec,
    NotebookFigure,
    PlotContext,
    add_legend,
    colorbar,
    new_figure,
    point_size,
    scatter_labels,
    set_view,
    to_numpy,
    view_limits,
    x_label,
    z_label,
)
from vaelab.plots.images import as_images, show, tile

GRID = 200  # points per side of the density image
MAX_PSEUDO = 100  # pseudo-inputs shown at most
# Weights π_k: plasma reversed without its palest fifth, so a light component still shows on white.
WEIGHT_CMAP = ListedColormap(matplotlib.colormaps["plasma_r"](np.linspace(0.2, 1.0, 256)))


def _dims(d: int, dims: tuple[int, int]) -> tuple[int, int]:
    i, j = dims
    if d < 2 or not (0 <= i < d and 0 <= j < d and i != j):
        raise InputError(f"dims={dims} is not a pair of different latent dimensions in 0..{d - 1} (d = {d})")
    return i, j


def mixture_of_normals(prior: Distribution) -> MixtureSameFamily | None:
    """``prior`` as a mixture of factorised Normals with batch shape () (the figures' input), or None."""
    if not isinstance(prior, MixtureSameFamily) or prior.batch_shape != torch.Size():
        return None
    return prior if is_factorised_normal(prior.component_distribution) else None


def _component_normal(prior: MixtureSameFamily) -> Normal:
    """The Normal of the components N(m_k, diag s_k²) of a mixture of factorised Normals: batch (K, d)."""
    comp = prior.component_distribution
    if not (isinstance(comp, Independent) and isinstance(comp.base_dist, Normal)):
        raise InputError(f"the prior's components are {type(comp).__name__}, not factorised Normals")
    return comp.base_dist


def marginal(prior: MixtureSameFamily, dims: tuple[int, int]) -> MixtureSameFamily:
    """The 2-D marginal of a mixture of factorised Normals on ``dims``: each component keeps
    its means and scales of those two coordinates, the weights stay. Event shape (2,)."""
    base = _component_normal(prior)  # batch (K, d)
    idx = list(dims)
    comp = Independent(Normal(base.loc[:, idx], base.scale[:, idx], validate_args=False), 1, validate_args=False)
    return MixtureSameFamily(Categorical(logits=prior.mixture_distribution.logits, validate_args=False), comp,
                             validate_args=False)


def _codes_scatter(ax, xy: np.ndarray, data: Dataset, *, on_dark: bool) -> None:  # noqa: ANN001 (Axes)
    """The encoded points (n, 2), by label where there are labels."""
    if data.labels is not None:
        scatter_labels(ax, xy, data.labels.cpu().numpy(), data.label_names, s=point_size(len(xy)), legend=False)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="white" if on_dark else "C0",
                   alpha=0.7 if on_dark else 0.5, linewidths=0, label="encoded μ(x)")


@torch.no_grad()
def plot_prior_mixture(
    model: LatentModel, data: Dataset, *, codes: Tensor, dims: tuple[int, int] = (0, 1), family: str = "",
    c: Tensor | None = None,
) -> Figure:
    """p(z) as a heat map with the codes μ(x) over it (left) and its components (right).

    ``codes``: the posterior means of ``data`` (N, d); ``dims``: the two latent dimensions shown
    (0-based); for d > 2 the left panel is the exact 2-D marginal density on them. ``c``: one
    condition row (1, C) for a conditional model's prior. The components are drawn at 1σ
    (solid) and 2σ (dashed), coloured by their weight π_k (one colour when the weights are equal).
    """
    d = model.latent_dim
    i, j = _dims(d, dims)
    prior = mixture_of_normals(model.prior(c))
    if prior is None:
        raise InputError(f"the {model.config.kind} model's prior is not a mixture of factorised Normals")
    p2 = marginal(prior, (i, j))
    base = _component_normal(p2)
    loc, scale = to_numpy(base.loc), to_numpy(base.scale)  # (K, 2) each
    pi = to_numpy(p2.mixture_distribution.probs)  # (K,)
    k = len(pi)
    xy = to_numpy(codes)[:, [i, j]]
    # The view holds the codes and every component's 2σ box, so mass without codes shows.
    lims = view_limits(np.concatenate([xy, loc - 2 * scale, loc + 2 * scale]), margin=0.04)
    gx = np.linspace(*lims[0], GRID)
    gy = np.linspace(*lims[1], GRID)
    zz = torch.tensor(np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2), dtype=base.loc.dtype,
                      device=base.loc.device)  # (G², 2)
    density = to_numpy(p2.log_prob(zz).exp()).reshape(GRID, GRID)
    what = f"{family}: " if family else ""
    rest = "" if d == 2 else f"; dimensions {i + 1}, {j + 1} of {d}, the 2-D marginal"
    fig, axes = new_figure(2, size=(5.4, 4.6),
                           title=f"{what}the learned prior p(z), K = {k} components{rest}")
    ax = axes[0]
    im = ax.imshow(density, origin="lower", extent=(*lims[0], *lims[1]), cmap=DENSITY_CMAP,
                   norm=PowerNorm(0.5, vmin=0.0, vmax=float(density.max())), interpolation="bilinear")
    _codes_scatter(ax, xy, data, on_dark=True)
    colorbar(fig, im, ax, "p(z) (square-root colour scale)")
    ax.set_title(f"p(z) with the posterior means μ(x)\nof {len(xy)} training points over it", fontsize="medium")
    ax = axes[1]
    _codes_scatter(ax, xy, data, on_dark=False)
    equal = bool(np.allclose(pi, pi[0], rtol=1e-4, atol=0))
    norm = Normalize(vmin=0.0, vmax=float(pi.max()))
    # Many components (a VampPrior's 50) drawn at full strength hide each other and the codes: thinner, fainter.
    width, alpha = (1.3, 0.9) if k <= 12 else (0.7, 0.45)
    for m in np.argsort(pi):  # the heaviest last, on top
        colour = "black" if equal else WEIGHT_CMAP(norm(pi[m]))
        for r, style in ((1, "-"), (2, "--")):
            ax.add_patch(Ellipse((float(loc[m, 0]), float(loc[m, 1])), 2 * r * float(scale[m, 0]),
                                 2 * r * float(scale[m, 1]), fill=False, edgecolor=colour, linestyle=style,
                                 linewidth=width if r == 1 else 0.6 * width, alpha=alpha, zorder=2))
        ax.plot(loc[m, 0], loc[m, 1], marker="+", color=colour, markersize=7 if k <= 12 else 4,
                markeredgewidth=1.5 if k <= 12 else 0.8, zorder=4)
        if not equal and k <= 12:
            ax.annotate(f"π={pi[m]:.2f}", (float(loc[m, 0]), float(loc[m, 1])), xytext=(4, 4),
                        textcoords="offset points", fontsize="x-small", color=colour)
    if equal:
        ax.set_title(f"its components at 1σ (solid) and 2σ (dashed)\nequal weights π_k = 1/{k}", fontsize="medium")
    else:
        colorbar(fig, ScalarMappable(norm=norm, cmap=WEIGHT_CMAP), ax, "weight π_k")
        ax.set_title("its components at 1σ (solid) and 2σ (dashed)\ncoloured by weight π_k "
                     f"(from {pi.min():.3f} to {pi.max():.3f})", fontsize="medium")
    if data.labels is not None:
        add_legend(ax, len(np.unique(data.labels.cpu().numpy())), below=not equal)
    for ax in axes:
        set_view(ax, lims)
        ax.set_xlabel(z_label(i))
        ax.set_ylabel(z_label(j))
    return fig


@torch.no_grad()
def plot_pseudo_inputs(model: VampVAE, data: Dataset) -> Figure:
    """The VampPrior's pseudo-inputs u_k and the decoder mean at each component's centre,
    E[x | z = μ(u_k)]: two image grids for image data, else points in data space (coordinates
    1 and 2) over the data, each u_k joined to its decoding."""
    u = model.pseudo_inputs()  # (K, D)
    decoded = model.decode(model.encode(u).mean).mean  # (K, D)
    k = len(u)
    if data.image_shape is not None:
        shown = min(k, MAX_PSEUDO)
        ncols = min(10, shown)
        u_img, dec_img = as_images(u[:shown], data.image_shape), as_images(decoded[:shown], data.image_shape)
        clipped = bool(((u[:shown] < 0) | (u[:shown] > 1)).any())
        note = "" if shown == k else f" (the first {shown} of {k})"
        top, bottom = tile(u_img, ncols), tile(dec_img, ncols)
        # About 7 inches wide whatever the image size (images.py's scale): a 28x28 grid stays readable.
        scale = min(0.035, 7.0 / top.shape[1])
        fig = NotebookFigure(figsize=(max(5.0, top.shape[1] * scale + 0.4), 2 * top.shape[0] * scale + 1.4),
                             dpi=110, layout="constrained")
        axes = fig.subplots(2, 1)
        show(axes[0], top, f"pseudo-inputs u_k{note}: the encoder's inputs that define p(z)"
             + (" (clipped to [0, 1] for display)" if clipped else ""))
        show(axes[1], bottom, "decoded centre of each component, E[x | z = μ(u_k)]")
        fig.suptitle(f"VampPrior: p(z) = (1/{k}) Σ_k q(z | u_k)", fontsize="large")
        return fig
    if data.dim < 2:
        raise InputError(f"the pseudo-input figure draws points in a plane and needs D ≥ 2 (this data has "
                         f"D = {data.dim})")
    x = to_numpy(data.x)[:, :2]
    u2, dec2 = to_numpy(u)[:, :2], to_numpy(decoded)[:, :2]
    rest = "" if data.dim == 2 else f" (coordinates 1, 2 of {data.dim})"
    fig, axes = new_figure(1, size=(6.4, 5.2),
                           title=f"VampPrior: p(z) = (1/{k}) Σ_k q(z | u_k), its {k} pseudo-inputs in data space{rest}")
    ax = axes[0]
    ax.scatter(x[:, 0], x[:, 1], s=point_size(len(x)), color="0.75", linewidths=0, label="training data")
    for a, b in zip(u2, dec2, strict=True):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.35", linewidth=0.6, alpha=0.7)
    ax.scatter(u2[:, 0], u2[:, 1], marker="X", s=45, color="C3", edgecolor="white", linewidths=0.5, zorder=4,
               label="pseudo-input u_k")
    ax.scatter(dec2[:, 0], dec2[:, 1], marker="o", s=22, color="C0", edgecolor="white", linewidths=0.5, zorder=5,
               label="E[x | z = μ(u_k)]")
    # Every pseudo-input and decoding in view (the title counts them all), the data by its usual view.
    pts = np.concatenate([u2, dec2])
    (x0, x1), (y0, y1) = view_limits(x)
    lo = np.minimum([x0, y0], pts.min(axis=0))
    hi = np.maximum([x1, y1], pts.max(axis=0))
    pad = 0.04 * float((hi - lo).max())
    set_view(ax, ((lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad)))
    ax.set_xlabel(x_label(0, data.dim, data.columns))
    ax.set_ylabel(x_label(1, data.dim, data.columns))
    ax.set_title("a line joins each pseudo-input to the decoding\nof its component's centre", fontsize="medium")
    add_legend(ax, 3)
    return fig


# registry entries -----------------------------------------------------------------------------


def _prior_c(ctx: PlotContext) -> Tensor | None:
    """One condition row for a conditional model's prior (a learned p(z) here ignores it or not)."""
    c = ctx.c
    return None if c is None else c[:1]


def _needs_mixture_prior(ctx: PlotContext) -> str | None:
    model = ctx.model
    if has_standard_prior(model):
        return f"the {model.config.kind} model's prior is N(0, I), not a learned mixture"
    if model.latent_dim < 2:
        return f"needs at least 2 latent dimensions (this model has d = {model.latent_dim})"
    if ctx.is_conditional and ctx.c is None:
        return "a conditional model without its condition"
    with torch.no_grad():
        prior = model.prior(_prior_c(ctx))
    if mixture_of_normals(prior) is None:
        return f"the {model.config.kind} model's prior ({type(prior).__name__}) is not a mixture of factorised Normals"
    return None


def _needs_vamp(ctx: PlotContext) -> str | None:
    if not isinstance(ctx.model, VampVAE):
        return f"the {ctx.model.config.kind} model has no pseudo-inputs (a VampPrior model, --model vamp, has)"
    if not ctx.is_image and ctx.data.dim < 2:
        return f"needs at least 2 data coordinates to draw (this data has D = {ctx.data.dim})"
    return None


def _prior_mixture(ctx: PlotContext) -> Figure:
    return plot_prior_mixture(ctx.model, ctx.data, codes=ctx.codes(), dims=ctx.dims, family=ctx.model.config.kind,
                              c=_prior_c(ctx))


def _pseudo_inputs(ctx: PlotContext) -> Figure:
    assert isinstance(ctx.model, VampVAE)
    return plot_pseudo_inputs(ctx.model, ctx.data)


FIGURES = [
    FigureSpec(
        "prior_mixture",
        _prior_mixture,
        "The learned prior p(z) as a heat map with the posterior means μ(x) of training points over it, beside its "
        "components (1σ solid, 2σ dashed, coloured by weight). A learned prior follows the codes: its mass should "
        "sit where the codes are. Mass without codes decodes to nonsense when sampled; codes without mass cost "
        "KL. For d > 2 it is the exact 2-D marginal on the two shown dimensions.",
        _needs_mixture_prior,
        title="Learned prior p(z) and its components",
    ),
    FigureSpec(
        "vamp_pseudo_inputs",
        _pseudo_inputs,
        "The VampPrior's K pseudo-inputs u_k (learned inputs of the encoder: p(z) = (1/K) Σ q(z|u_k)) and the "
        "decoder mean at each component's centre μ(u_k). Pseudo-inputs need not look like data: only their "
        "encodings matter. Their decodings show what each part of the prior generates, and repeated decodings "
        "show components that landed on the same mode.",
        _needs_vamp,
        title="VampPrior pseudo-inputs",
    ),
]
