"""Latent-space figures of a VAE on points (2-D toy data, or the first two coordinates of user data).

Every ``plot_*`` function takes the pieces it needs (a model, a Dataset, options) and returns
a ``matplotlib.figure.Figure``, so it works in a notebook as well as in the report. Latent
dimensions ``dims`` are 0-based (axis labels are z₁, z₂ …). Figures that need q(z|x) refuse
an autoencoder; the registry at the bottom says which figure applies to which run. The
data-space figures (samples, reconstructions, density) are in :mod:`vaelab.plots.data_space`,
the computations they share (aggregate posterior, model density) in :mod:`vaelab.analysis`.

Shapes: x (N, D) data, z (N, d) latent codes; figures show data coordinates 1 and 2 and the
two chosen latent dimensions.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Ellipse
from torch import Tensor
from torch.distributions import Distribution

from vaelab.analysis import _device, aggregate_posterior, default_points, points_per_label, row_indices
from vaelab.data.dataset import Dataset
from vaelab.distributions import rsample
from vaelab.errors import InputError
from vaelab.models import LatentModel, VariationalModel, has_normal_posterior, has_standard_prior
from vaelab.plots.common import (
    CMAP,
    DENSITY_CMAP,
    LABEL_MARKERS,
    FigureSpec,
    PlotContext,
    _label_data_axes,
    _points,
    _posterior,
    _require_vae,
    _x,
    _xy,
    add_legend,
    all_of,
    colorbar,
    dropped_note,
    finite,
    gaussian_pdf,
    hist_range,
    in_range,
    including_prior,
    label_colour,
    needs_continuous_latent,
    needs_normal_posterior,
    needs_point_data,
    needs_standard_prior,
    new_figure,
    point_size,
    scatter_labels,
    scatter_values,
    set_view,
    sub,
    to_numpy,
    view_limits,
    x_label,
    z_label,
)

PRIOR_STYLE = {"color": "0.25", "linestyle": "--", "linewidth": 1.0, "fill": False}


def _check_dims(model: LatentModel, dims: tuple[int, int]) -> tuple[int, int]:
    d = model.latent_dim
    i, j = dims
    if d >= 2 and not (0 <= i < d and 0 <= j < d and i != j):
        raise InputError(f"dims={dims} is not a pair of different latent dimensions in 0..{d - 1}")
    return i, j


def _coloured(fig: Figure, ax, xy: np.ndarray, data: Dataset, *, legend: bool = True, cbar: bool = True) -> None:
    """Scatter xy coloured by label when the data has labels, else by data coordinate x₁."""
    if data.labels is not None:
        scatter_labels(ax, xy, data.labels.cpu().numpy(), data.label_names, legend=legend)
    elif data.image_shape is None:
        sc = scatter_values(ax, xy, to_numpy(data.x[:, 0]))
        if cbar:
            colorbar(fig, sc, ax, f"data coordinate {x_label(0, data.dim, data.columns)}")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="C0", linewidths=0)


# 4. latent parameters -------------------------------------------------------------------------


def _title(text: str, mi: str) -> str:
    return f"{text} — {mi}" if mi else text


@torch.no_grad()
def plot_latent_params(
    model: LatentModel, data: Dataset, *, dims: tuple[int, int] = (0, 1), q_z: Distribution | None = None,
    c: Tensor | None = None, mi: str = "",
) -> Figure:
    """The encoder's outputs over the data: μ(x) and σ(x), against the prior's (0, …) and (1, …).

    The views always hold the prior's targets with their natural scale (μ: the prior's ±2σ
    region; σ: 0 to past 1), so a code whose μ(x) and σ(x) are the same for every x (a
    collapsed posterior, wherever it sits) is a dot, not a structure blown up to fill the panel.
    ``q_z``: q(z|x, c) of ``data`` (batch (N,)) when the caller has it already; ``c``: the
    condition of each point (N, C) of a conditional model; ``mi``: words for I(x; z) in the title.
    """
    vae = _require_vae(model, "the latent-parameter figure")
    i, j = _check_dims(model, dims)
    q_z = vae.encode(_x(model, data), c) if q_z is None else q_z
    mu, sigma = to_numpy(q_z.mean), to_numpy(q_z.stddev)
    d = model.latent_dim
    if d == 1:
        fig, axes = new_figure(2, title=_title("Encoder outputs over the data (1-D latent)", mi))
        for ax, v, name, target, include in (
            (axes[0], mu[:, 0], "posterior mean μ(x)", 0.0, (-2.5, 2.5)),
            (axes[1], sigma[:, 0], "posterior std σ(x)", 1.0, (0.0, 1.3)),
        ):
            lo, hi = hist_range(v, include=include)
            shown, dropped = in_range(v, lo, hi)
            ax.hist(shown, bins=list(np.linspace(lo, hi, 61)), color="C0", alpha=0.8)
            ax.axvline(target, color="red", linestyle="--", linewidth=1.5, label=f"prior target {target:g}")
            ax.set_xlim(lo, hi)
            ax.set_title(name + dropped_note(dropped, len(v)))
            ax.set_xlabel(name.split()[-1] + " (z₁)")
            ax.set_ylabel("number of points")
            ax.legend(fontsize="small")
        return fig
    rest = "" if d == 2 else f" (dimensions {i + 1}, {j + 1} of {d})"
    fig, axes = new_figure(2, size=(5.2, 4.2), title=_title(f"Encoder outputs over the data{rest}", mi))
    for ax, v, name, target in (
        (axes[0], mu, "posterior means μ(x)", 0.0),
        (axes[1], sigma, "posterior stds σ(x)", 1.0),
    ):
        xy = v[:, [i, j]]
        _coloured(fig, ax, xy, data, legend=False, cbar=ax is axes[1])
        # A hollow ring on top: codes sitting on the target (a collapsed posterior) stay visible inside it.
        target_handle = ax.scatter(
            [target],
            [target],
            marker="o",
            s=260,
            facecolors="none",
            edgecolors="red",
            linewidths=2.0,
            zorder=5,
            label=f"prior target ({target:g}, {target:g})",
        )
        symbol = "μ" if target == 0 else "σ"
        ax.set_xlabel(f"{symbol}{z_label(i)[1:]}  ({z_label(i)})")
        ax.set_ylabel(f"{symbol}{z_label(j)[1:]}  ({z_label(j)})")
        ax.set_title(name)
        log_scale = False
        if target == 1.0:
            pos = finite(xy[xy > 0])
            if len(pos) and pos.max() / max(pos.min(), 1e-12) > 30:
                log_scale = True
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_title(name + " (log scale)")
        if target == 0.0:
            # the prior's 1σ and 2σ circles, always in view
            for r in (1, 2):
                ax.add_patch(Circle((0, 0), r, **PRIOR_STYLE))
            set_view(ax, including_prior(view_limits(xy)))
            ax.set_title(name + "\n(dashed: the prior's 1σ and 2σ circles)", fontsize="medium")
        elif not log_scale:
            (x0, x1), (y0, y1) = view_limits(xy)
            hi = max(x1, y1, 1.3)
            set_view(ax, ((0.0, hi), (0.0, hi)))
        ax.grid(True, alpha=0.3)
        if not log_scale:  # a log axis keeps its decade ticks (LogLocator takes no nbins)
            ax.locator_params(nbins=6)
        if ax is axes[0] and data.labels is not None:
            add_legend(ax, len(np.unique(data.labels.cpu().numpy())) + 1)
        else:
            ax.legend(handles=[target_handle], fontsize="small", loc="best")
    return fig


# 5. encoded z vs ε ----------------------------------------------------------------------------


@torch.no_grad()
def plot_z_vs_eps(
    model: LatentModel, data: Dataset, *, dims: tuple[int, int] = (0, 1), generator: torch.Generator | None = None,
    q_z: Distribution | None = None, c: Tensor | None = None,
) -> Figure:
    """One z ~ q(z|x, c) per data point beside as many ε ~ N(0, I): if the aggregate posterior
    matched the prior, the two panels would look alike. ``q_z``: q(z|x, c) of ``data`` (batch
    (N,)) when the caller has it already; ``c``: each point's condition (a conditional model)."""
    vae = _require_vae(model, "the z-vs-ε figure")
    i, j = _check_dims(model, dims)
    q_z = vae.encode(_x(model, data), c) if q_z is None else q_z
    z = to_numpy(rsample(q_z, (), generator))
    eps = to_numpy(torch.randn(z.shape, generator=generator, device=_device(model)))
    if model.latent_dim == 1:
        fig, axes = new_figure(2, title="Encoded z ~ q(z|x) vs ε ~ N(0, 1)")
        lo, hi = hist_range(np.concatenate([z[:, 0], eps[:, 0]]), include=(-3.5, 3.5))
        bins = np.linspace(lo, hi, 61)
        grid = np.linspace(lo, hi, 300)
        for ax, v, title, colour, symbol in (
            (axes[0], z[:, 0], "encoded z ~ q(z|x) over the data", "C0", "z₁"),
            (axes[1], eps[:, 0], "ε ~ N(0, 1)", "0.45", "ε₁"),
        ):
            shown, dropped = in_range(v, lo, hi)
            # density over all N points, so dropping the far ones does not inflate the rest
            weights = np.full(len(shown), 1.0 / (max(len(v), 1) * (bins[1] - bins[0])))
            ax.hist(shown, bins=list(bins), weights=weights, color=colour, alpha=0.75)
            ax.plot(grid, gaussian_pdf(grid, 0.0, 1.0), color="red", linestyle="--", label="N(0, 1) density")
            ax.set_title(title + dropped_note(dropped, len(v)))
            ax.set_xlabel(symbol)
            ax.set_ylabel("density")
            ax.set_xlim(lo, hi)
            ax.legend(fontsize="small")
        ymax = max(a.get_ylim()[1] for a in axes)
        for ax in axes:
            ax.set_ylim(0, ymax)
        return fig
    rest = "" if model.latent_dim == 2 else f" (dimensions {i + 1}, {j + 1} of {model.latent_dim})"
    fig, axes = new_figure(2, title=f"Encoded z ~ q(z|x) vs ε ~ N(0, I){rest}")
    zz, ee = z[:, [i, j]], eps[:, [i, j]]
    lims = view_limits(np.concatenate([zz, ee, [[-3.0, -3.0], [3.0, 3.0]]]))
    for ax, v, title, colour, (a, b) in (
        (axes[0], zz, "encoded z ~ q(z|x) over the data", "C0", (z_label(i), z_label(j))),
        (axes[1], ee, "ε ~ N(0, I)", "0.45", (f"ε{sub(i + 1)}", f"ε{sub(j + 1)}")),
    ):
        ax.scatter(v[:, 0], v[:, 1], s=point_size(len(v)), color=colour, alpha=0.6, linewidths=0)
        for r in (1, 2):
            ax.add_patch(Circle((0, 0), r, **PRIOR_STYLE))
        ax.set_title(title + "\n(dashed: 1σ and 2σ circles of N(0, I))", fontsize="medium")
        set_view(ax, lims)
        ax.set_xlabel(a)
        ax.set_ylabel(b)
    return fig


# 6. the learned latent space ------------------------------------------------------------------


ELLIPSE_POINTS = 30  # σ(x) is drawn for this many points of the latent-space figure


def _sigma_sample(n: int, m: int = ELLIPSE_POINTS) -> np.ndarray:
    """Indices of m points spread over the N (deterministic: every (N // m)-th point)."""
    return np.arange(0, n, max(1, n // m))[:m]


@torch.no_grad()
def plot_latent_space(
    model: LatentModel, data: Dataset, *, dims: tuple[int, int] = (0, 1), codes: Tensor | None = None,
    q_z: Distribution | None = None, c: Tensor | None = None, mi: str = "",
    lims: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> Figure:
    """Encoded means μ(x) (a VAE) or codes f(x) (an autoencoder), coloured by label (mode)
    and by data coordinate, against the N(0, I) region samples are drawn from.

    The view always holds the prior's 2σ circle (for an autoencoder: the N(0, I) its samples are
    decoded from), and for a VAE with a Normal q(z|x) the 1σ ellipses of σ(x) are drawn on a
    sample of points: a collapsed code is a small blob of means under wide, overlapping
    ellipses, wherever it sits, not a structure blown up to fill the panel. ``codes``:
    embed(x, c) of ``data`` (N, d); ``q_z``: q(z|x, c) (batch (N,)); ``c``: each point's
    condition; ``mi``: words for I(x; z) in the title; ``lims``: the view (shared by a comparison).
    """
    i, j = _check_dims(model, dims)
    if codes is None:
        codes = model.embed(_x(model, data), c)
    if q_z is None and has_normal_posterior(model):
        q_z = model.encode(_x(model, data), c)
    code = to_numpy(codes)
    sd = None if q_z is None or not has_normal_posterior(model) else to_numpy(q_z.stddev)
    x = to_numpy(data.x)
    what = "μ(x)" if has_normal_posterior(model) else ("E[z|x]" if isinstance(model, VariationalModel) else "f(x)")
    circles = has_standard_prior(model)
    labels = None if data.labels is None else data.labels.cpu().numpy()
    colourings: list[tuple[str, str | int]] = []
    if labels is not None:
        colourings.append(("label", "label"))
    if data.image_shape is None:
        colourings.append((x_label(0, x.shape[1], data.columns), 0))
        if data.labels is None and x.shape[1] >= 2:
            colourings.append((x_label(1, x.shape[1], data.columns), 1))
    if not colourings:
        colourings.append(("", "none"))
    d = model.latent_dim
    rest = "" if d <= 2 else f" (dimensions {i + 1}, {j + 1} of {d})"
    fig, axes = new_figure(
        len(colourings), size=(5.0, 4.2), title=_title(f"Latent space: encoded {what} of the training data{rest}", mi)
    )
    for ax, (name, key) in zip(axes, colourings, strict=True):
        ax.set_title(f"coloured by {name}" if name else "codes")
        if d == 1:
            z = code[:, 0]
            lo, hi = hist_range(z, include=(-2.5, 2.5) if circles else None)
            if lims is not None:
                lo, hi = lims[0]
            if key == "label" and labels is not None:
                bins = np.linspace(lo, hi, 61)
                dropped = 0
                for k in np.unique(labels):
                    name_k = data.label_names[k] if data.label_names and k < len(data.label_names) else f"label {k}"
                    shown, out = in_range(z[labels == k], lo, hi)
                    dropped += out
                    ax.hist(shown, bins=list(bins), histtype="step", linewidth=1.5, label=name_k,
                            color=label_colour(int(k)))
                ax.set_ylabel("number of points")
                ax.set_title(f"coloured by {name}" + dropped_note(dropped, len(z)), fontsize="medium")
                add_legend(ax, len(np.unique(labels)))
            elif key == "none":
                shown, dropped = in_range(z, lo, hi)
                ax.hist(shown, bins=list(np.linspace(lo, hi, 61)), color="C0")
                ax.set_ylabel("number of points")
                ax.set_title("codes" + dropped_note(dropped, len(z)), fontsize="medium")
            else:
                other = 1 - int(key) if x.shape[1] >= 2 else int(key)
                sc = scatter_values(ax, np.stack([z, x[:, int(key)]], 1), x[:, other])
                if sd is not None:
                    idx = _sigma_sample(len(z))
                    ax.errorbar(z[idx], x[idx, int(key)], xerr=sd[idx, 0], fmt="none", ecolor="0.35",
                                elinewidth=0.8, alpha=0.7, label="± σ(x) of some points")
                    ax.legend(fontsize="x-small", loc="best")
                ax.set_ylabel(f"data coordinate {x_label(int(key), x.shape[1], data.columns)}")
                colorbar(fig, sc, ax, x_label(other, x.shape[1], data.columns))
                ax.set_title(f"z₁ against {name}")
            if circles:
                for r in (-2, -1, 1, 2):
                    ax.axvline(r, color="0.5", linestyle=":" if abs(r) == 1 else "--", linewidth=0.8)
            ax.set_xlim(lo, hi)
            ax.set_xlabel(f"{what}  (z₁)" + ("; dashed: the prior's ±2σ" if circles else ""))
            continue
        xy = code[:, [i, j]]
        if key == "label" and labels is not None:
            scatter_labels(ax, xy, labels, data.label_names)
        elif key == "none":
            ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="C0", linewidths=0)
        else:
            sc = scatter_values(ax, xy, x[:, int(key)])
            colorbar(fig, sc, ax, name)
        if sd is not None:
            for n in _sigma_sample(len(xy)):
                ax.add_patch(Ellipse((float(xy[n, 0]), float(xy[n, 1])), 2 * float(sd[n, i]), 2 * float(sd[n, j]),
                                     fill=False, edgecolor="0.3", linewidth=0.6, alpha=0.6))
        if circles:
            for r in (1, 2):
                ax.add_patch(Circle((0, 0), r, **PRIOR_STYLE))
        shown = xy
        if sd is not None:  # the drawn ellipses stay in view too: their size is the point
            idx = _sigma_sample(len(xy))
            shown = np.concatenate([xy, xy[idx] - sd[idx][:, [i, j]], xy[idx] + sd[idx][:, [i, j]]])
        view = lims if lims is not None else (including_prior(view_limits(shown)) if circles else view_limits(shown))
        set_view(ax, view)
        ax.locator_params(nbins=6)
        ax.set_xlabel(z_label(i))
        ax.set_ylabel(z_label(j))
    if d >= 2 and (circles or sd is not None):
        note = []
        if circles:
            note.append("dashed: the prior's 1σ, 2σ circles" if isinstance(model, VariationalModel)
                        else "dashed: 1σ, 2σ of the N(0, I) its samples are decoded from")
        if sd is not None:
            note.append(f"grey ellipses: σ(x) of {min(ELLIPSE_POINTS, len(code))} points")
        fig.supxlabel("; ".join(note), fontsize="small")
    return fig


# 7. q(z|x) for chosen points ------------------------------------------------------------------


@torch.no_grad()
def plot_posterior_contours(
    model: LatentModel, data: Dataset, *, points: Tensor | None = None, dims: tuple[int, int] = (0, 1),
    q_z: Distribution | None = None, c: Tensor | None = None,
) -> Figure:
    """q(z|x) of a few data points: the points in data space, their Gaussians in latent space.

    q(z|x) = N(μ(x), diag σ²(x)) has axis-aligned elliptical contours: drawn at 1σ (solid)
    and 2σ (dashed) with half-widths σ_i along z_i and σ_j along z_j. (The course code this
    figure comes from draws the second point's contour with its axes swapped; here each
    density is evaluated on the grid with the same (z_i, z_j) orientation.) ``q_z``: q(z|x) of
    ``data`` (batch (N,)) when the caller has it already (its means are the grey background).
    Without ``points``, labelled data gives one typical point per label (up to 6), so the
    points come from different modes; else three well-separated typical points. ``c``: the
    condition of every point of ``data`` (N, C): a chosen point is encoded with the c of the
    data point nearest to it.
    """
    vae = _require_vae(model, "the q(z|x) figure")
    i, j = _check_dims(model, dims)
    if points is not None:
        pts = points.to(data.x.dtype)
    elif data.labels is not None:
        pts = points_per_label(data.x, data.labels.to(data.x.device))
    else:
        pts = default_points(data.x)
    c_pts = None if c is None else c[row_indices(data.x, pts).to(c.device)]
    q_pts = vae.encode(pts.to(_device(model)), c_pts)
    mu_p, sd_p = to_numpy(q_pts.mean), to_numpy(q_pts.stddev)
    mu_all = to_numpy((vae.encode(_x(model, data), c) if q_z is None else q_z).mean)
    x = to_numpy(data.x)
    p = to_numpy(pts)
    d = model.latent_dim
    rest = "" if d <= 2 else f" (dimensions {i + 1}, {j + 1} of {d})"
    fig, axes = new_figure(2, size=(5.6, 4.4), title=f"Posterior q(z|x) of {len(p)} chosen data points{rest}")
    ax = axes[0]
    xy = _xy(x)
    ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="0.7", linewidths=0, label="training data")
    for m, pt in enumerate(_xy(p)):
        ax.scatter(
            [pt[0]],
            [pt[1]],
            s=140,
            color=f"C{(m + 1) % 10}",
            marker=LABEL_MARKERS[m % len(LABEL_MARKERS)],
            edgecolor="black",
            linewidths=0.8,
            zorder=5,
            label=f"point {m + 1}",
        )
        ax.annotate(str(m + 1), pt, xytext=(7, 7), textcoords="offset points", fontweight="bold")
    set_view(ax, view_limits(np.concatenate([xy, _xy(p)])))
    _label_data_axes(ax, x.shape[1], data.columns)
    ax.set_title("chosen points in data space")
    add_legend(ax, len(p) + 1)
    ax = axes[1]
    if d == 1:
        lo = min(-3.5, float((mu_p[:, 0] - 3 * sd_p[:, 0]).min()))
        hi = max(3.5, float((mu_p[:, 0] + 3 * sd_p[:, 0]).max()))
        grid = np.linspace(lo, hi, 600)
        ax.plot(grid, gaussian_pdf(grid, 0.0, 1.0), color="0.25", linestyle="--", label="prior N(0, 1)")
        for m in range(len(p)):
            ax.plot(
                grid,
                gaussian_pdf(grid, float(mu_p[m, 0]), float(sd_p[m, 0])),
                color=f"C{(m + 1) % 10}",
                linewidth=2,
                label=f"q(z|x) of point {m + 1}",
            )
        ax.set_xlabel("z₁")
        ax.set_ylabel("density")
        ax.set_title("q(z|x) against the prior")
        ax.legend(fontsize="small")
        return fig
    ax.scatter(
        mu_all[:, i],
        mu_all[:, j],
        s=point_size(len(mu_all)),
        color="0.75",
        linewidths=0,
        label="μ(x) of all training data",
    )
    ax.add_patch(Circle((0, 0), 2, label="prior N(0, I), 2σ", **PRIOR_STYLE))
    for m in range(len(p)):
        colour = f"C{(m + 1) % 10}"
        centre = (float(mu_p[m, i]), float(mu_p[m, j]))
        for r, style in ((1, "-"), (2, "--")):
            # width is along z_i (the horizontal axis), height along z_j: σ_i and σ_j in that order.
            ax.add_patch(
                Ellipse(
                    centre,
                    2 * r * float(sd_p[m, i]),
                    2 * r * float(sd_p[m, j]),
                    fill=False,
                    edgecolor=colour,
                    linestyle=style,
                    linewidth=2,
                    label=f"q(z|x) of point {m + 1}: 1σ, 2σ" if r == 1 else None,
                )
            )
        ax.scatter(
            [centre[0]],
            [centre[1]],
            s=60,
            color=colour,
            marker=LABEL_MARKERS[m % len(LABEL_MARKERS)],
            edgecolor="black",
            linewidths=0.8,
            zorder=5,
        )
        ax.annotate(str(m + 1), centre, xytext=(7, 7), textcoords="offset points", fontweight="bold")
    corners = np.concatenate(
        [mu_p[:, [i, j]] - 2 * sd_p[:, [i, j]], mu_p[:, [i, j]] + 2 * sd_p[:, [i, j]], [[-2.5, -2.5], [2.5, 2.5]]]
    )
    lims_mu = view_limits(mu_all[:, [i, j]])
    lo = np.minimum(finite_min(corners), [lims_mu[0][0], lims_mu[1][0]])
    hi = np.maximum(finite_max(corners), [lims_mu[0][1], lims_mu[1][1]])
    half = (hi - lo).max() / 2 * 1.05
    mid = (lo + hi) / 2
    set_view(ax, ((mid[0] - half, mid[0] + half), (mid[1] - half, mid[1] + half)))
    ax.set_xlabel(z_label(i))
    ax.set_ylabel(z_label(j))
    ax.set_title("their q(z|x) in latent space")
    add_legend(ax, len(p) + 2)
    return fig


def finite_min(a: np.ndarray) -> np.ndarray:
    return np.array([finite(a[:, c]).min() if np.isfinite(a[:, c]).any() else -1.0 for c in range(a.shape[1])])


def finite_max(a: np.ndarray) -> np.ndarray:
    return np.array([finite(a[:, c]).max() if np.isfinite(a[:, c]).any() else 1.0 for c in range(a.shape[1])])


# 8. decoded latent grid -----------------------------------------------------------------------


def _one_condition(c: Tensor | None, n: int) -> Tensor | None:
    """One condition (C,) or (1, C) for n decoded codes: (n, C); None stays None."""
    return None if c is None else c.reshape(1, -1).expand(n, -1)


@torch.no_grad()
def decoded_latent_grid(
    model: LatentModel, *, dims: tuple[int, int] = (0, 1), n_grid: int = 15, extent: float = 2.5,
    c: Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A regular grid in (z_i, z_j) on [-extent, extent]², the other dimensions at 0, and its image
    E[x|z, c] under the decoder: ((n, n, 2), (n, n, 2)), the data's first two coordinates.

    Entry [a, b] is z_i = g[a], z_j = g[b] for g = linspace(-extent, extent, n). ``c``: one
    condition (C,) of a conditional model, the same for every grid point.
    """
    i, j = _check_dims(model, dims)
    d = model.latent_dim
    dev = _device(model)
    g = torch.linspace(-extent, extent, n_grid, device=dev)
    zi, zj = torch.meshgrid(g, g, indexing="ij")  # zi[a, b] = g[a] (constant along b), zj[a, b] = g[b]
    z = torch.zeros(n_grid, n_grid, d, device=dev)
    z[..., i], z[..., j] = zi, zj
    z = z.reshape(-1, d)
    dec = _xy(to_numpy(model.decode(z, _one_condition(c, len(z))).mean)).reshape(n_grid, n_grid, 2)
    return to_numpy(torch.stack([zi, zj], -1)), dec


def draw_mesh(ax, pts: np.ndarray, zgrid: np.ndarray, *, s: float = 14.0):  # noqa: ANN001, ANN201 (Axes, PathCollection)
    """A decoded (or latent) grid (n, n, 2) as a mesh: lines of constant z_j thin grey, lines of
    constant z_i coloured by z_i, and the grid points coloured by z_i. Returns the points' mappable."""
    n_grid = pts.shape[0]
    gi = zgrid[:, 0, 0]
    ax.add_collection(LineCollection([pts[:, b] for b in range(n_grid)], colors="0.55", linewidths=0.6))
    lc = LineCollection([pts[a, :] for a in range(n_grid)], cmap=CMAP, linewidths=1.6)
    lc.set_array(gi)
    ax.add_collection(lc)
    return ax.scatter(pts[..., 0].ravel(), pts[..., 1].ravel(), c=zgrid[..., 0].ravel(), cmap=CMAP, s=s, zorder=3)


@torch.no_grad()
def draw_latent_line(
    ax, model: LatentModel, lims: tuple[tuple[float, float], tuple[float, float]], *,  # noqa: ANN001 (Axes)
    c: Tensor | None = None, fontsize: str = "small",
) -> LineCollection:
    """A 1-D latent's decoded line E[x|z, c], z from −3 to 3, coloured by z, with the integer z
    marked and labelled (ticks that decode to nearly the same x share one label, so a collapsed
    code's labels do not overprint). ``lims``: the panel's view. Returns the line's mappable."""
    dev = _device(model)
    zs = torch.linspace(-3.0, 3.0, 400, device=dev)[:, None]
    curve = _xy(to_numpy(model.decode(zs, _one_condition(c, len(zs))).mean))
    segs = np.stack([curve[:-1], curve[1:]], axis=1)
    lc = LineCollection(list(segs), cmap=CMAP, linewidths=3)
    lc.set_array(to_numpy(zs[:-1, 0]))
    ax.add_collection(lc)
    ticks = torch.arange(-3.0, 3.5, 1.0, device=dev)[:, None]
    tick_xy = _xy(to_numpy(model.decode(ticks, _one_condition(c, len(ticks))).mean))
    ax.scatter(tick_xy[:, 0], tick_xy[:, 1], color="black", s=25, zorder=5)
    span = max(lims[0][1] - lims[0][0], lims[1][1] - lims[1][0])
    written: list[tuple[np.ndarray, list[str]]] = []
    for t, pt in zip(to_numpy(ticks[:, 0]), tick_xy, strict=True):
        near = next((w for w in written if np.linalg.norm(w[0] - pt) < 0.06 * span), None)
        if near is None:
            written.append((pt, [f"{t:g}"]))
        else:
            near[1].append(f"{t:g}")
    for pt, names in written:
        text = f"z={names[0]}" if len(names) == 1 else f"z={names[0]}…{names[-1]}"
        ax.annotate(text, (float(pt[0]), float(pt[1])), xytext=(5, 5), textcoords="offset points", fontsize=fontsize,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
    return lc


@torch.no_grad()
def plot_latent_grid(
    model: LatentModel, data: Dataset, *, dims: tuple[int, int] = (0, 1), n_grid: int = 15, extent: float = 2.5
) -> Figure:
    """A regular grid in z decoded through the decoder mean, over the data.

    2-D+ latents: a ``n_grid × n_grid`` grid on [-extent, extent]² in (z_i, z_j), the other
    dimensions at 0; lines of constant z_i are coloured by z_i, so one sees how the decoder
    bends the latent plane onto the data. 1-D latents: the decoded curve coloured by z.
    (A conditional model: ``plot_latent_grid_by_condition``, one panel per condition.)
    """
    i, j = _check_dims(model, dims)
    x = to_numpy(data.x)
    xy_data = _xy(x)
    d = model.latent_dim
    if d == 1:
        fig, axes = new_figure(1, size=(6.0, 5.0), title="Decoded latent line E[x|z], z from −3 to 3")
        ax = axes[0]
        ax.scatter(
            xy_data[:, 0], xy_data[:, 1], s=point_size(len(x)), color="0.75", linewidths=0, label="training data"
        )
        lims = view_limits(xy_data)
        set_view(ax, lims)
        lc = draw_latent_line(ax, model, lims)
        _label_data_axes(ax, x.shape[1], data.columns)
        ax.set_title("decoded curve over the training data (grey)", fontsize="medium")
        colorbar(fig, lc, ax, "z₁")
        return fig
    zgrid, dec = decoded_latent_grid(model, dims=(i, j), n_grid=n_grid, extent=extent)
    rest = "" if d == 2 else f"; other {d - 2} dimensions at 0"
    fig, axes = new_figure(
        2, title=f"A regular grid in ({z_label(i)}, {z_label(j)}) and its image under the decoder{rest}"
    )
    sc = None
    for ax, pts, title in ((axes[0], zgrid, "latent grid"), (axes[1], dec, "decoded grid E[x|z] over the data (grey)")):
        if ax is axes[1]:
            ax.scatter(
                xy_data[:, 0],
                xy_data[:, 1],
                s=point_size(len(x)),
                color="0.8",
                linewidths=0,
                label="training data",
                zorder=0,
            )
        sc = draw_mesh(ax, pts, zgrid)
        ax.set_title(title)
    set_view(axes[0], ((-extent * 1.1, extent * 1.1), (-extent * 1.1, extent * 1.1)))
    axes[0].set_xlabel(z_label(i))
    axes[0].set_ylabel(z_label(j))
    lims = view_limits(np.concatenate([xy_data, dec.reshape(-1, 2)]))
    set_view(axes[1], lims)
    _label_data_axes(axes[1], x.shape[1], data.columns)
    colorbar(fig, sc, axes, z_label(i))
    return fig


# 8b. interpolation between the codes of two points -----------------------------------------


@torch.no_grad()
def latent_path(
    model: LatentModel, x_a: Tensor, x_b: Tensor, *, steps: int = 10, c_a: Tensor | None = None,
    c_b: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The straight line between the codes z_a = embed(x_a, c_a) and z_b = embed(x_b, c_b) of
    pairs of points (P, D) each, and its image under the decoder mean:

        z_t = (1 − t)·z_a + t·z_b,   c_t = (1 − t)·c_a + t·c_b,   t = 0 … 1 in ``steps`` steps.

    Returns z (steps, P, d) and E[x | z_t, c_t] (steps, P, D). At t = 0 and 1 the decoded points
    are the mean reconstructions of x_a and x_b, not the points themselves. A pair of one label
    has c_a = c_b, so c stays fixed along the line.
    """
    dev = _device(model)
    x_a, x_b = x_a.to(dev), x_b.to(dev)
    c_a = None if c_a is None else c_a.to(dev)
    c_b = None if c_b is None else c_b.to(dev)
    z_a, z_b = model.embed(x_a, c_a), model.embed(x_b, c_b)  # (P, d)
    t = torch.linspace(0.0, 1.0, steps, device=dev)[:, None, None]  # (steps, 1, 1)
    z = (1 - t) * z_a + t * z_b  # (steps, P, d)
    c = None if c_a is None or c_b is None else (1 - t) * c_a + t * c_b  # (steps, P, C)
    return z, model.decode(z, c).mean


def interpolation_pairs(
    data: Dataset, *, same_label: bool = False, points: Tensor | None = None, n_pairs: int = 3,
) -> tuple[list[int], list[int]]:
    """Rows (a, b) of ``data`` to interpolate between: the chosen ``points`` in consecutive pairs;
    else, where the data has labels, typical points of different labels (``same_label``: two
    distant typical points of one label each, for a label-conditioned model whose c must stay
    fixed along the line); else distant typical points (``default_points``)."""
    x = data.x
    if points is not None and len(points) >= 2:
        rows = row_indices(x, points).tolist()
        return rows[0:len(rows) - 1:2], rows[1:len(rows):2]
    labels = data.labels
    present = [] if labels is None else torch.unique(labels).tolist()
    if same_label and len(present) >= 1:
        chosen = [present[int(round(q))] for q in np.linspace(0, len(present) - 1, min(n_pairs, len(present)))]
        a, b = [], []
        for k in dict.fromkeys(chosen):
            members = torch.nonzero(labels == k).ravel()
            if len(members) < 2:
                continue
            pts = default_points(x[members], 2)
            rows = members[row_indices(x[members], pts)].tolist()
            a.append(rows[0])
            b.append(rows[1])
        if a:
            return a, b
    if labels is not None and 2 <= len(present) < 2 * n_pairs and not same_label:
        # few labels (two moons): pair label p with the label half the list away, each pair with its
        # own typical points of the two labels (well separated within each label)
        assert labels is not None
        typical = {k: default_points(x[labels == k], n_pairs) for k in present}
        ends = [(present[p % len(present)], present[(p + len(present) // 2) % len(present)]) for p in range(n_pairs)]
        a_pts = torch.stack([typical[la][p % len(typical[la])] for p, (la, _) in enumerate(ends)])
        b_pts = torch.stack([typical[lb][p % len(typical[lb])] for p, (_, lb) in enumerate(ends)])
        return row_indices(x, a_pts).tolist(), row_indices(x, b_pts).tolist()
    if labels is not None and len(present) >= 2 and not same_label:
        pts = points_per_label(x, labels, 2 * n_pairs)
    else:
        pts = default_points(x, 2 * n_pairs)
    rows = row_indices(x, pts).tolist()
    half = len(rows) // 2  # pair the i-th chosen point with the (i + half)-th: lines across the data
    return rows[:half], rows[half:2 * half]


@torch.no_grad()
def plot_point_interpolations(
    model: LatentModel, data: Dataset, rows_a: list[int], rows_b: list[int], *, dims: tuple[int, int] = (0, 1),
    c: Tensor | None = None, steps: int = 41, codes: Tensor | None = None, mi: str = "",
) -> Figure:
    """Straight lines in z between the codes of pairs of points (rows ``rows_a[k]``, ``rows_b[k]``
    of ``data``), decoded: the latent plane with the lines (left) and the decoded paths
    E[x|z_t] over the data (right), both coloured by t from 0 to 1 (``latent_path``). Each pair is
    numbered at its t = 0 end in both panels; the points themselves are hollow circles.

    ``c``: each point's condition (N, C) for a conditional model (interpolated with z; constant
    for a pair of one label); ``codes``: embed(x, c) of ``data`` when the caller has it already;
    ``mi``: words for I(x; z) in the title.
    """
    if not rows_a or len(rows_a) != len(rows_b):
        raise InputError("interpolation needs pairs of points: give as many second points as first ones")
    i, j = _check_dims(model, dims)
    dev = _device(model)
    xt = _x(model, data)
    ia, ib = torch.tensor(rows_a, device=dev), torch.tensor(rows_b, device=dev)
    c_a = None if c is None else c[ia]
    c_b = None if c is None else c[ib]
    z, dec = latent_path(model, xt[ia], xt[ib], steps=steps, c_a=c_a, c_b=c_b)  # (S, P, d), (S, P, D)
    z_np, dec_np = to_numpy(z), to_numpy(dec)
    t = np.linspace(0.0, 1.0, steps)
    code = to_numpy(model.embed(xt, c) if codes is None else codes)
    x = to_numpy(data.x)
    xy_data = _xy(x)
    d = model.latent_dim
    n_pairs = len(rows_a)
    labels = None if data.labels is None else data.labels.cpu().numpy()
    if c is not None and bool((c[ia] == c[ib]).all()):
        pairing = "each pair from one label, c held fixed along the line"
    elif c is not None:
        pairing = "c interpolated with z"
    elif labels is not None and (labels[rows_a] != labels[rows_b]).all():
        pairing = "points of different labels"
    else:
        pairing = ""
    words = "; ".join(w for w in (pairing, mi) if w)
    fig, axes = new_figure(2, size=(4.8, 4.3),
                           title="Interpolation: straight lines in z between the codes of pairs of points, decoded "
                                 "to data space" + (f"; {words}" if words else ""))
    ax_z, ax_x = axes
    norm = Normalize(0.0, 1.0)
    segments = []  # (S-1, 2, 2) per pair: consecutive points of the path
    latent_segments = []
    for p in range(n_pairs):
        path = _xy(dec_np[:, p])
        segments += list(np.stack([path[:-1], path[1:]], axis=1))
        if d == 1:
            zz = np.stack([z_np[:, p, 0], np.full(steps, float(p))], 1)
        else:
            zz = z_np[:, p][:, [i, j]]
        latent_segments += list(np.stack([zz[:-1], zz[1:]], axis=1))
    t_seg = np.tile((t[:-1] + t[1:]) / 2, n_pairs)
    # latent panel: the codes of the data (grey), the prior's circles, the straight lines
    if d == 1:
        ax_z.scatter(code[:, 0], np.full(len(code), -0.8), s=point_size(len(code)), color="0.75", linewidths=0,
                     label="codes of the training data")
        ax_z.set_yticks(range(n_pairs), [f"pair {p + 1}" for p in range(n_pairs)])
        ax_z.set_ylim(-1.3, n_pairs - 0.5)
        ax_z.set_xlabel(z_label(0))
    else:
        ax_z.scatter(code[:, i], code[:, j], s=point_size(len(code)), color="0.75", linewidths=0,
                     label="codes of the training data")
        circles = has_standard_prior(model)
        if circles:
            for r in (1, 2):
                ax_z.add_patch(Circle((0, 0), r, **PRIOR_STYLE))
        lims_z = view_limits(np.concatenate([code[:, [i, j]], z_np[:, :, [i, j]].reshape(-1, 2)]))
        set_view(ax_z, including_prior(lims_z) if circles else lims_z)
        ax_z.set_xlabel(z_label(i))
        ax_z.set_ylabel(z_label(j))
    lc_z = LineCollection(latent_segments, cmap=CMAP, norm=norm, linewidths=2.5, zorder=3)
    lc_z.set_array(t_seg)
    ax_z.add_collection(lc_z)
    what = ("E[z|x, c]" if c is not None else "E[z|x]") if isinstance(model, VariationalModel) else "f(x)"
    rest = "" if d <= 2 else f" (({z_label(i)}, {z_label(j)}) of d = {d}: the lines are straight in every dimension)"
    ax_z.set_title(f"straight lines between the codes {what} of the pairs{rest}", fontsize="medium")
    # data panel: the data (grey), the decoded paths, the points themselves (hollow)
    ax_x.scatter(xy_data[:, 0], xy_data[:, 1], s=point_size(len(x)), color="0.8", linewidths=0, zorder=0)
    lc_x = LineCollection(segments, cmap=CMAP, norm=norm, linewidths=2.5, zorder=3)
    lc_x.set_array(t_seg)
    ax_x.add_collection(lc_x)
    marks = np.linspace(0, steps - 1, 11).round().astype(int)
    for p in range(n_pairs):
        path = _xy(dec_np[:, p])
        ax_x.scatter(path[marks, 0], path[marks, 1], c=t[marks], cmap=CMAP, norm=norm, s=18, zorder=4,
                     edgecolors="black", linewidths=0.4)
    ends = _xy(x[np.array(rows_a + rows_b)])
    ax_x.scatter(ends[:, 0], ends[:, 1], s=80, facecolors="none", edgecolors="black", linewidths=1.3, zorder=5)
    lims_x = view_limits(np.concatenate([xy_data, _xy(dec_np.reshape(-1, dec_np.shape[-1]))]))
    set_view(ax_x, lims_x)
    _label_data_axes(ax_x, x.shape[1], data.columns)
    ax_x.set_title("decoded paths E[x|z_t] over the data (grey)\nhollow circles: the two points of each pair",
                   fontsize="medium")
    # number every pair at both ends in both panels, so paths can be matched across them
    for p in range(n_pairs):
        for end, row in ((0, rows_a[p]), (steps - 1, rows_b[p])):
            at_z = (z_np[end, p, 0], float(p)) if d == 1 else (z_np[end, p, i], z_np[end, p, j])
            for ax, xy in ((ax_z, at_z), (ax_x, tuple(_xy(x[[row]])[0]))):
                ax.annotate(str(p + 1), (float(xy[0]), float(xy[1])), xytext=(-10, 6), textcoords="offset points",
                            fontsize="small", fontweight="bold", zorder=6,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    colorbar(fig, lc_x, axes, "t (0: first point of a pair, 1: second)")
    return fig


# 9. aggregate posterior vs prior --------------------------------------------------------------


@torch.no_grad()
def plot_aggregate_posterior(
    model: LatentModel, data: Dataset, *, dims: tuple[int, int] = (0, 1), grid: int = 150, extent: float = 3.5,
    q_z: Distribution | None = None, c: Tensor | None = None,
) -> Figure:
    """The aggregate posterior q(z) (the mixture of all encoded Gaussians) beside the prior.

    Samples z ~ p(z) that land where q(z) is nearly empty ("holes") decode to points the
    decoder never learned, which is where bad samples come from. Same colour scale in both
    panels (square-root scale so thin holes stay visible). ``q_z``: q(z|x, c) of ``data``
    (batch (N,)) when the caller has it already; ``c``: each point's condition. A 1-D latent's
    range covers the prior's ±``extent`` and q(z)'s mass (the means ± 3σ); for d > 2 the panels
    are the 2-D marginal on the shown pair, which cannot show holes in the other dimensions.
    """
    vae = _require_vae(model, "the aggregate-posterior figure")
    i, j = _check_dims(model, dims)
    q_z = vae.encode(_x(model, data), c) if q_z is None else q_z
    d = model.latent_dim
    if d == 1:
        mu, sd = to_numpy(q_z.mean)[:, 0], to_numpy(q_z.stddev)[:, 0]
        ok = np.isfinite(mu) & np.isfinite(sd)
        lo = min(-extent, float(np.percentile(mu[ok] - 3 * sd[ok], 0.5))) if ok.any() else -extent
        hi = max(extent, float(np.percentile(mu[ok] + 3 * sd[ok], 99.5))) if ok.any() else extent
        g = torch.linspace(lo, hi, max(grid, 300))
    else:
        g = torch.linspace(-extent, extent, grid)
    q = aggregate_posterior(vae, data.x, g, (i, j), q_z=q_z).numpy()
    gn = g.numpy()
    prior_1d = gaussian_pdf(gn, 0.0, 1.0)
    if d == 1:
        fig, axes = new_figure(1, size=(6.5, 4.2), title="Aggregate posterior q(z) = mean over x of q(z|x), vs prior")
        ax = axes[0]
        ax.fill_between(gn, q, color="C0", alpha=0.35)
        ax.plot(gn, q, color="C0", linewidth=2, label="aggregate posterior q(z)")
        ax.plot(gn, prior_1d, color="0.2", linestyle="--", linewidth=2, label="prior N(0, 1)")
        ax.set_xlim(gn[0], gn[-1])
        ax.set_xlabel("z₁")
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
        ax.set_title("where the prior has mass but q(z) has none, samples are bad", fontsize="medium")
        return fig
    p = prior_1d[:, None] * prior_1d[None, :]
    vmax = float(max(p.max(), np.nanmax(q)))
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    rest = "" if d == 2 else (f", 2-D marginal on ({z_label(i)}, {z_label(j)}) of {d} dimensions: holes in the "
                              "others do not show")
    fig, axes = new_figure(2, title=f"Aggregate posterior q(z) vs prior p(z){rest}")
    ext = (-extent, extent, -extent, extent)
    im = None
    for ax, img, title in ((axes[0], q, "aggregate posterior q(z) = mean of q(z|x)"), (axes[1], p, "prior N(0, I)")):
        im = ax.imshow(img, origin="lower", extent=ext, cmap=DENSITY_CMAP, norm=norm, interpolation="bilinear")
        for r in (1, 2):
            ax.add_patch(Circle((0, 0), r, edgecolor="white", linestyle="--", linewidth=1.0, fill=False))
        ax.set_title(title + "\n(dashed: prior 1σ and 2σ circles)", fontsize="medium")
        ax.set_xlabel(z_label(i))
        ax.set_ylabel(z_label(j))
        ax.set_aspect("equal")
    colorbar(fig, im, axes, "density (square-root colour scale)")
    return fig


# registry entries -----------------------------------------------------------------------------


def _latent_params(ctx: PlotContext) -> Figure:
    return plot_latent_params(ctx.model, ctx.data, dims=ctx.dims, q_z=ctx.posterior(), mi=ctx.mi_words())


def _z_vs_eps(ctx: PlotContext) -> Figure:
    return plot_z_vs_eps(ctx.model, ctx.data, dims=ctx.dims, generator=ctx.generator(3), q_z=ctx.posterior())


def _latent_space(ctx: PlotContext) -> Figure:
    q_z = ctx.posterior() if has_normal_posterior(ctx.model) else None
    return plot_latent_space(ctx.model, ctx.data, dims=ctx.dims, codes=ctx.codes(), q_z=q_z, c=ctx.c,
                             mi=ctx.mi_words(), lims=ctx.latent_lims)


def _posterior_contours(ctx: PlotContext) -> Figure:
    return plot_posterior_contours(ctx.model, ctx.data, points=ctx.points, dims=ctx.dims, q_z=ctx.posterior(),
                                   c=ctx.c)


def _latent_grid(ctx: PlotContext) -> Figure:
    return plot_latent_grid(ctx.model, ctx.data, dims=ctx.dims, n_grid=ctx.latent_grid)


def _point_interpolations(ctx: PlotContext) -> Figure:
    # A label-conditioned model interpolates within one label (c fixed); other runs across labels.
    by_label = ctx.c is not None and ctx.condition is not None and ctx.condition.discrete
    rows_a, rows_b = interpolation_pairs(ctx.data, same_label=by_label, points=ctx.points)
    return plot_point_interpolations(ctx.model, ctx.data, rows_a, rows_b, dims=ctx.dims, c=ctx.c, codes=ctx.codes(),
                                     mi=ctx.mi_words())


def _aggregate_posterior(ctx: PlotContext) -> Figure:
    return plot_aggregate_posterior(ctx.model, ctx.data, dims=ctx.dims, q_z=ctx.posterior())


# A conditional model's q(z|x, c) is drawn with each point's own c (PlotContext.c); figures that
# decode from the prior without a c (the latent grid) stay unconditional.
_normal_posterior = needs_normal_posterior  # reads μ(x), σ(x)

COLLAPSE_WORDS = ("A collapsed code has μ(x) and σ(x) the same for every x, whatever their values (under some "
                  "objectives it settles far from the prior's (0, 1)); I(x; z) in the title is the measure.")


def _continuous_code(ctx: PlotContext) -> str | None:
    """latent_space draws two coordinates of E[z|x] against a Normal prior's disc: for one-hot
    codes those are two class probabilities, which look like a latent plane and are not one."""
    if needs_continuous_latent(ctx) is None:
        return None
    return (f"the {ctx.model.config.kind} model's z is discrete (categorical codes): latent_classes_2d shows which "
            "class each point takes, class_samples what each class generates")

FIGURES = [
    FigureSpec(
        "latent_params",
        _latent_params,
        "Encoder means μ(x) and standard deviations σ(x) against the prior's (0, …) and (1, …), with the prior's "
        "scale always in view. " + COLLAPSE_WORDS,
        all_of(_normal_posterior, needs_standard_prior),
        title="Latent parameters μ(x), σ(x)",
    ),
    FigureSpec(
        "z_vs_eps",
        _z_vs_eps,
        "One z ~ q(z|x) per data point beside as many ε ~ N(0, I): the closer the two panels look, the "
        "better the prior describes the codes the decoder was trained on.",
        all_of(_posterior, needs_standard_prior),
        title="Encoded z vs ε ~ N(0, I)",
    ),
    FigureSpec(
        "latent_space",
        _latent_space,
        "Encoded means of the training data coloured by label and by data coordinate, with the prior's 1σ and 2σ "
        "circles always in view and σ(x) as grey ellipses on a sample of points. A useful code spreads the modes "
        "over the prior's disc with ellipses smaller than the gaps between them and colours that change smoothly; "
        "a collapsed code is a small blob under wide, overlapping ellipses, wherever it sits.",
        _continuous_code,
        title="Learned latent space",
    ),
    FigureSpec(
        "posterior_contours",
        _posterior_contours,
        "q(z|x) of a few data points (one per label where there are labels; 1σ and 2σ contours): distant points "
        "should get separate, narrow Gaussians inside the prior's 2σ circle.",
        all_of(_normal_posterior, needs_standard_prior, needs_point_data),
        title="Posterior q(z|x) of chosen points",
    ),
    FigureSpec(
        "latent_grid",
        _latent_grid,
        "A regular grid in z pushed through the decoder: the decoded mesh should stretch over the data; "
        "mesh lines crossing empty space are where bad samples come from.",
        all_of(_points, needs_continuous_latent),
        title="Decoded latent grid",
    ),
    FigureSpec(
        "point_interpolations",
        _point_interpolations,
        "Straight lines in z between the codes of pairs of points (of different labels where there are labels; "
        "within one label, c held fixed, for a label-conditioned model), decoded and drawn over the data, coloured "
        "by t from 0 to 1. Paths that stay on the data mean the code space between the two points decodes to "
        "plausible points; a path that crosses empty space shows where the line leaves the codes of the data. "
        "Each path runs between the reconstructions of its points (hollow circles), not the points themselves.",
        all_of(needs_point_data, needs_continuous_latent),
        title="Interpolation between points",
    ),
    FigureSpec(
        "aggregate_posterior",
        _aggregate_posterior,
        "The mixture of all encoded Gaussians q(z) beside the prior N(0, I): dark holes in q(z) inside "
        "the prior's circles are regions whose samples decode to nonsense. For d > 2 this is the 2-D marginal on "
        "the two most active dimensions, which cannot show holes in the others.",
        all_of(_normal_posterior, needs_standard_prior),
        title="Aggregate posterior vs prior",
    ),
]
