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
from vaelab.models import LatentModel, VariationalModel
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
        (mean, "decoded prior samples E[x|z], z ~ N(0, I)", "C0"),
        (noisy, noise_title, "C1"),
    ]
    for ax, (pts, title, colour) in zip(axes, panels, strict=True):
        xy = _xy(pts)
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color=colour, alpha=0.6, linewidths=0)
        ax.set_title(title + _outside_note(xy, lims), fontsize="medium")
        set_view(ax, lims)
        _label_data_axes(ax, x.shape[1])
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
        _label_data_axes(ax, x.shape[1])
    return fig


# 10. model density p(x) -----------------------------------------------------------------------


@torch.no_grad()
def plot_density(
    model: LatentModel, data: Dataset, *, grid: int = 80, k: int = 100, generator: torch.Generator | None = None
) -> Figure:
    """The model density p(x) on a grid (IWAE estimate with k samples) beside the true
    density when the dataset knows it, otherwise beside the training data."""
    vae = _require_vae(model, "the model-density figure")
    if data.dim != 2:
        raise InputError(f"the density image needs 2-D data, this data has D = {data.dim}")
    x = to_numpy(data.x)
    (x0, x1), (y0, y1) = view_limits(x)
    gx, gy = torch.linspace(x0, x1, grid), torch.linspace(y0, y1, grid)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")  # row a = gy[a], column b = gx[b]: imshow layout
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    log_p = model_log_density(vae, pts, k=k, generator=generator).reshape(grid, grid)
    p_model = torch.exp(log_p).numpy()
    p_true = None if data.log_prob is None else torch.exp(data.log_prob(pts).double()).reshape(grid, grid).numpy()
    vmax = (
        float(np.nanmax(p_true)) if p_true is not None else float(np.nanmax(p_model[np.isfinite(p_model)], initial=1.0))
    )
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
        _label_data_axes(ax, 2)
    colorbar(fig, im, axes, "p(x) (square-root colour scale)")
    return fig


# registry entries -----------------------------------------------------------------------------


def _samples(ctx: PlotContext) -> Figure:
    return plot_samples(ctx.model, ctx.data, generator=ctx.generator(1), c=ctx.c)


def _reconstructions(ctx: PlotContext) -> Figure:
    return plot_reconstructions(ctx.model, ctx.data, generator=ctx.generator(2), codes=ctx.codes(), c=ctx.c)


def _density(ctx: PlotContext) -> Figure:
    return plot_density(ctx.model, ctx.data, grid=ctx.density_grid, k=ctx.density_k, generator=ctx.generator(4))


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
        "density",
        _density,
        "Model density p(x) (importance-weighted estimate) beside the true density or the data: mass "
        "between the modes shows where the model blurs them together.",
        all_of(unconditional, _posterior, needs_2d_data),
        title="Model density p(x)",
        heavy=True,  # 80 x 80 points x k = 100 samples through the decoder
    ),
]
