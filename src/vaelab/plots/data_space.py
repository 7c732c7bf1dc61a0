"""Data-space figures of a model on points (2-D toy data, or the first two coordinates of user
data): training data vs model samples, reconstructions, and the model density p(x).

Every ``plot_*`` function takes the pieces it needs (a model, a Dataset, options) and returns
a ``matplotlib.figure.Figure``; the registry at the bottom says which figure applies to which
run. Shapes: x (N, D) data, z (N, d) latent codes.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.colors import PowerNorm, hsv_to_rgb
from matplotlib.figure import Figure
from torch import Tensor

from vaelab.analysis import model_log_density
from vaelab.data.dataset import Dataset
from vaelab.distributions import rsample
from vaelab.errors import InputError
from vaelab.likelihoods import sample_observation
from vaelab.models import LatentModel, VariationalModel, has_standard_prior
from vaelab.plots.common import (
    DENSITY_CMAP,
    FigureSpec,
    PlotContext,
    _label_data_axes,
    _posterior,
    _require_vae,
    _x,
    _xy,
    all_of,
    colorbar,
    needs_2d_data,
    needs_point_data,
    new_figure,
    outside,
    point_size,
    scatter_labels,
    set_view,
    to_numpy,
    unconditional,
    view_limits,
    x_label,
)


def _outside_note(xy: np.ndarray, lims: tuple[tuple[float, float], tuple[float, float]]) -> str:
    """A second title line saying how many points fall outside the view, or nothing."""
    out = outside(xy, lims)
    if out == 0:
        return ""
    return f"\n({out} of {len(xy)} point{'s' if out > 1 else ''} outside the view)"


# 1. data vs model -----------------------------------------------------------------------------


@torch.no_grad()
def plot_samples(
    model: LatentModel, data: Dataset, *, n: int | None = None, generator: torch.Generator | None = None,
    c: Tensor | None = None,
) -> Figure:
    """Training data | decoded prior samples E[x|z] | samples x ~ p(x|z), on shared axes.

    The middle panel shows what the decoder mean alone can produce; the right one adds the
    likelihood's observation noise σ. Same number of points in every panel (n, default N).
    ``c``: the conditions (N, C) of the data's points for a conditional model; sample i is then
    drawn with the c of point i (cycled when n > N), so the panels show p(x) = E_c p(x|c).
    """
    n = len(data) if n is None else n
    x = to_numpy(data.x)
    cc = None if c is None else c[torch.arange(n, device=c.device) % len(c)]  # (n, C)
    prior = model.prior(cc)
    z = rsample(prior, (n,) if prior.batch_shape == torch.Size() else (), generator)  # (n, d): z ~ p(z|c)
    p_x = model.decode(z, cc)
    mean = to_numpy(p_x.mean)
    noisy = to_numpy(sample_observation(p_x, generator))
    std = model.likelihood.noise_std(p_x)
    if std is None:
        noise_title = "x ~ p(x|z)"
    elif model.config.likelihood == "gaussian":
        noise_title = f"x ~ p(x|z), σ = {float(std.flatten()[0]):.3g}"
    else:
        noise_title = f"x ~ p(x|z), learned σ(z) (mean {float(std.mean()):.3g})"
    fig, axes = new_figure(3, title="Data vs model: does the model put its samples where the data is?")
    lims = view_limits(_xy(x))
    panels = [
        (x, f"training data (N = {len(x)})", "0.2"),
        (mean, f"decoded prior samples E[x|z], z ~ {'N(0, I)' if has_standard_prior(model) else 'p(z)'}", "C0"),
        (noisy, noise_title, "C1"),
    ]
    for ax, (pts, title, colour) in zip(axes, panels, strict=True):
        xy = _xy(pts)
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color=colour, alpha=0.6, linewidths=0)
        ax.set_title(title + _outside_note(xy, lims), fontsize="medium")
        set_view(ax, lims)
        _label_data_axes(ax, x.shape[1], data.columns)
    return fig


# 2. reconstructions ---------------------------------------------------------------------------


@torch.no_grad()
def plane_colours(xy: np.ndarray) -> np.ndarray:
    """A colour per point (N, 2) -> (N, 3) RGB that varies in both directions of the plane: hue
    from the angle around the points' median, brightness from the distance to it (rank-scaled),
    so points apart in any direction (top and bottom modes too) get different colours."""
    centred = xy - np.nanmedian(xy, axis=0)
    angle = (np.arctan2(centred[:, 1], centred[:, 0]) + np.pi) / (2 * np.pi)
    radius = np.hypot(centred[:, 0], centred[:, 1])
    rank = np.argsort(np.argsort(np.nan_to_num(radius))) / max(len(radius) - 1, 1)
    hsv = np.stack([np.nan_to_num(angle), np.full(len(xy), 0.85), 0.35 + 0.65 * rank], axis=1)
    return hsv_to_rgb(hsv)


@torch.no_grad()
def plot_reconstructions(
    model: LatentModel, data: Dataset, *, generator: torch.Generator | None = None, codes: Tensor | None = None,
    c: Tensor | None = None,
) -> Figure:
    """Data | reconstruction (decoder mean at the posterior mean) | stochastic reconstruction.

    Every point keeps its input's colour in all three panels, so one can follow where each
    point goes: by label where the data has labels, else a 2-D colour of its position
    (``plane_colours``: hue = angle, brightness = distance from the centre). ``codes``:
    embed(x, c) of ``data`` (N, d) when the caller has it already; ``c``: each point's condition.
    """
    xt = _x(model, data)
    x = to_numpy(xt)
    # the mean reconstruction is model.reconstruct(x) = E[x|z = embed(x)], from the shared code
    rec = to_numpy(model.reconstruct(xt, c) if codes is None else model.decode(codes, c).mean)
    rec_s = to_numpy(model.reconstruct(xt, c, generator=generator, stochastic=True))
    labels = None if data.labels is None else data.labels.cpu().numpy()
    colours = plane_colours(_xy(x))
    lims = view_limits(_xy(x))
    what = "z ~ q(z|x), x̂ ~ p(x|z)" if isinstance(model, VariationalModel) else "x̂ ~ p(x|f(x))"
    how = "by the label of each input point" if labels is not None else (
        "by the position of each input point (hue: angle, brightness: distance from the centre)")
    fig, axes = new_figure(3, title=f"Reconstructions, coloured {how}")
    for ax, pts, title in zip(
        axes, (x, rec, rec_s), ("data x", "mean reconstruction E[x|z = μ(x)]", f"stochastic: {what}"), strict=True
    ):
        xy = _xy(pts)
        if labels is not None:
            scatter_labels(ax, xy, labels, data.label_names, legend=ax is axes[2])
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), c=colours, linewidths=0)
        ax.set_title(title + _outside_note(xy, lims), fontsize="medium")
        set_view(ax, lims)
        _label_data_axes(ax, x.shape[1], data.columns)
    return fig


# 10. model density p(x) -----------------------------------------------------------------------


def density_grid_points(data: Dataset, grid: int) -> tuple[Tensor, tuple[float, float, float, float]]:
    """The grid × grid points (G², 2) over the view of 2-D data at which a density image is
    computed, and the image's extent (x0, x1, y0, y1). Point a·G + b is (x₁ = column b's value,
    x₂ = row a's value): reshaped to (G, G) it is in imshow's layout (origin="lower")."""
    if data.dim != 2:
        raise InputError(f"the density image needs 2-D data, this data has D = {data.dim}")
    (x0, x1), (y0, y1) = view_limits(to_numpy(data.x))
    gx, gy = torch.linspace(x0, x1, grid), torch.linspace(y0, y1, grid)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")  # row a = gy[a], column b = gx[b]: imshow layout
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1), (x0, x1, y0, y1)


@torch.no_grad()
def model_density_image(model: LatentModel, data: Dataset, *, grid: int = 80, k: int = 100,
                        generator: torch.Generator | None = None) -> np.ndarray:
    """The model density p(x) (IWAE estimate with k samples) on the density figure's grid:
    (grid, grid), row a = the a-th y from the bottom, as ``plot_density`` draws it."""
    vae = _require_vae(model, "the model-density figure")
    pts, _ = density_grid_points(data, grid)
    return torch.exp(model_log_density(vae, pts, k=k, generator=generator).reshape(grid, grid)).numpy()


def plot_density(
    model: LatentModel, data: Dataset, *, grid: int = 80, k: int = 100, generator: torch.Generator | None = None,
    vmax: float | None = None,
) -> Figure:
    """The model density p(x) on a grid (IWAE estimate with k samples) beside the true
    density when the dataset knows it, otherwise beside the training data.

    The colour scale ends at the true density's maximum where the data knows it, else at the
    model's; ``vmax`` sets it instead (several runs compared on one scale: ``vaelab compare``)."""
    _require_vae(model, "the model-density figure")
    x = to_numpy(data.x)
    pts, (x0, x1, y0, y1) = density_grid_points(data, grid)
    p_model = model_density_image(model, data, grid=grid, k=k, generator=generator)
    p_true = None if data.log_prob is None else torch.exp(data.log_prob(pts).double()).reshape(grid, grid).numpy()
    if vmax is None:
        vmax = float(np.nanmax(p_true)) if p_true is not None else density_top(p_model)
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    ext = (x0, x1, y0, y1)
    fig, axes = new_figure(
        2, title=f"Density p(x): model (IWAE, k = {k}) vs {'true density' if p_true is not None else 'data'}"
    )
    im = axes[0].imshow(p_model, origin="lower", extent=ext, cmap=DENSITY_CMAP, norm=norm, interpolation="bilinear")
    axes[0].set_title("model p(x), importance-weighted estimate")
    if p_true is not None:
        axes[1].imshow(p_true, origin="lower", extent=ext, cmap=DENSITY_CMAP, norm=norm, interpolation="bilinear")
        axes[1].set_title("true density of the data distribution")
    else:
        axes[1].scatter(x[:, 0], x[:, 1], s=point_size(len(x)), color="0.2", linewidths=0)
        axes[1].set_title("training data (no closed-form density)")
    for ax in axes:
        set_view(ax, ((x0, x1), (y0, y1)))
        _label_data_axes(ax, 2, data.columns)
    colorbar(fig, im, axes, "p(x) (square-root colour scale)")
    return fig


def density_top(p_model: np.ndarray) -> float:
    """The top of a model density image's colour scale: its largest finite value (1 if none;
    ``initial`` would floor it at 1, hiding a density that stays below 1 everywhere)."""
    finite = p_model[np.isfinite(p_model)]
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


# 4. every pair of coordinates (3 ≤ D) -------------------------------------------------------------

MAX_PAIR_DIMS = 5  # a 5 × 5 grid of panels is still readable at report width


@torch.no_grad()
def plot_pairs(
    model: LatentModel, data: Dataset, *, dims: tuple[int, ...] | None = None, n: int | None = None,
    generator: torch.Generator | None = None, c: Tensor | None = None,
) -> Figure:
    """Every pair of the chosen data coordinates (``dims``, 0-based; default all of them, for
    D ≤ 5): training data (grey) under samples x ~ p(x|z), z ~ p(z) (orange), one panel per pair
    below the diagonal, and each coordinate's histogram (data against samples) on the diagonal.

    The 2-D figures show the first two coordinates only; here a coordinate the model ignores (a
    helix's height, say) shows up as samples that miss the data in every panel that draws it.
    ``c``: the conditions (N, C) of the data's points for a conditional model (sample i is drawn
    with the c of point i, cycled), so the samples show p(x) = E_c p(x|c).
    """
    d_x = data.dim
    if dims is None:
        if d_x > MAX_PAIR_DIMS:
            raise InputError(f"the data has D = {d_x} coordinates; choose at most {MAX_PAIR_DIMS} to draw "
                             "in pairs (dims=..., or --data-dims 1,2,3 on the command line)")
        dims = tuple(range(d_x))
    dims = tuple(int(i) for i in dims)
    if not 2 <= len(dims) <= MAX_PAIR_DIMS or len(set(dims)) != len(dims) or not all(0 <= i < d_x for i in dims):
        raise InputError(f"the pair plot draws 2 to {MAX_PAIR_DIMS} different data coordinates between 1 and "
                         f"{d_x}; got {[i + 1 for i in dims]}")
    n = len(data) if n is None else n
    x = to_numpy(data.x)[:, list(dims)]
    cc = None if c is None else c[torch.arange(n, device=c.device) % len(c)]
    prior = model.prior(cc)
    z = rsample(prior, (n,) if prior.batch_shape == torch.Size() else (), generator)
    samples = to_numpy(sample_observation(model.decode(z, cc), generator))[:, list(dims)]
    k = len(dims)
    fig, grid = new_figure(k, k, size=(2.3, 2.2), title="Every pair of data coordinates: training data (grey) "
                           f"and samples x ~ p(x|z) (orange), N = {len(x)} each")
    axes = np.asarray(grid).reshape(k, k)
    size = point_size(len(x)) * 0.6
    for r in range(k):
        lo_r, hi_r = view_limits(np.stack([x[:, r], x[:, r]], 1))[0]
        for q in range(k):
            ax = axes[r, q]
            if q > r:
                ax.set_axis_off()
                continue
            if q == r:
                bins = np.linspace(lo_r, hi_r, 41)
                ax.hist(x[:, r], bins=bins, color="0.55", alpha=0.6, density=True, label="data")
                ax.hist(samples[:, r], bins=bins, histtype="step", color="C1", density=True, linewidth=1.3,
                        label="samples")
                ax.set_xlim(lo_r, hi_r)
                ax.set_yticks([])
                if r == 0:
                    ax.legend(fontsize="x-small", loc="upper right")
            else:
                ax.scatter(x[:, q], x[:, r], s=size, color="0.55", alpha=0.5, linewidths=0)
                ax.scatter(samples[:, q], samples[:, r], s=size, color="C1", alpha=0.4, linewidths=0)
                lo_q, hi_q = view_limits(np.stack([x[:, q], x[:, q]], 1))[0]
                ax.set_xlim(lo_q, hi_q)
                ax.set_ylim(lo_r, hi_r)
            if r == k - 1:
                ax.set_xlabel(x_label(dims[q], d_x, data.columns), fontsize="small")
            if q == 0 and r > 0:
                ax.set_ylabel(x_label(dims[r], d_x, data.columns), fontsize="small")
            ax.tick_params(labelsize="x-small")
    return fig


# registry entries -----------------------------------------------------------------------------


def _samples(ctx: PlotContext) -> Figure:
    return plot_samples(ctx.model, ctx.data, generator=ctx.generator(1), c=ctx.c)


def _reconstructions(ctx: PlotContext) -> Figure:
    return plot_reconstructions(ctx.model, ctx.data, generator=ctx.generator(2), codes=ctx.codes(), c=ctx.c)


def _pairs(ctx: PlotContext) -> Figure:
    return plot_pairs(ctx.model, ctx.data, dims=ctx.data_dims, generator=ctx.generator(5), c=ctx.c)


def _needs_pairs(ctx: PlotContext) -> str | None:
    reason = needs_point_data(ctx)
    if reason is None and ctx.data_dims is None:
        if ctx.data.dim == 2:
            return "2-D data: the samples figure draws its only pair of coordinates"
        if ctx.data.dim > MAX_PAIR_DIMS:
            return (f"D = {ctx.data.dim} coordinates: choose up to {MAX_PAIR_DIMS} of them to draw in pairs "
                    "(--data-dims 1,2,3)")
    return reason


def _density(ctx: PlotContext) -> Figure:
    return plot_density(ctx.model, ctx.data, grid=ctx.density_grid, k=ctx.density_k, generator=ctx.generator(4),
                        vmax=ctx.density_vmax)


FIGURES = [
    FigureSpec(
        "samples",
        _samples,
        "Training data, decoded prior samples and samples with observation noise on the same axes: the "
        "model's samples should cover every part of the data and nothing else. A conditional model draws each "
        "sample with the c of one data point, so the samples show p(x) = E_c p(x|c).",
        needs_point_data,
        title="Data vs model samples",
    ),
    FigureSpec(
        "reconstructions",
        _reconstructions,
        "Each point keeps the colour of its input (its label, or its position in the plane): a good model keeps "
        "the colours in place; colours mixing or points pulled to a curve show what the code forgets. A "
        "conditional model reconstructs each point with its own c.",
        needs_point_data,
        title="Reconstructions",
    ),
    FigureSpec(
        "pairs",
        _pairs,
        "Every pair of data coordinates (the other figures draw the first two only): the samples (orange) "
        "should cover the data (grey) in every panel, and each coordinate's histogram should match. A "
        "coordinate the model ignores shows as samples off the data in every panel that draws it.",
        _needs_pairs,
        title="Every pair of data coordinates",
    ),
    FigureSpec(
        "density",
        _density,
        "Model density p(x) (importance-weighted estimate) beside the true density or the data: mass "
        "between the modes shows where the model blurs them together.",
        all_of(unconditional, _posterior, needs_2d_data),
        title="Model density p(x)",
        heavy=True,  # 80 x 80 points x k = 100 samples through the decoder
    ),
]
