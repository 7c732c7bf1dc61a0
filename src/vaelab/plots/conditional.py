"""Figures of conditional VAEs: does the model do what the condition asks, and what is left in z?

- ``plot_label_samples``: samples drawn for each label. Points: the data coloured by its
  label beside the samples coloured by the label they were drawn for (the colours should
  land on the same modes). Images: one row of samples per label.
- ``plot_value_samples``: samples drawn at several values of a continuous condition, over
  the data (radius: dashed circles at the requested radii), with the mean radius of the
  samples against the requested one.
- ``plot_latent_by_condition``: the encoded means of the data coloured by their condition.
  A conditional model gets c for free in the decoder, so z should carry little of it: the
  panel title measures how much (a cross-validated k-NN predicting c from z, against chance).

Every function takes a model, its :class:`~vaelab.conditions.Condition` and a Dataset and
returns a ``matplotlib.figure.Figure``; the registry entries at the bottom feed them from a
run's PlotContext.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from vaelab.analysis import model_log_density
from vaelab.conditions import Condition
from vaelab.data.dataset import Dataset
from vaelab.distributions import rsample
from vaelab.errors import InputError
from vaelab.models import LatentModel, VariationalModel, has_standard_prior
from vaelab.plots.common import (
    CMAP,
    DENSITY_CMAP,
    FigureSpec,
    NotebookFigure,
    PlotContext,
    _label_data_axes,
    _require_vae,
    all_of,
    colorbar,
    including_prior,
    label_colour,
    needs_2d_data,
    needs_continuous_latent,
    needs_point_data,
    needs_standard_prior,
    needs_vae,
    new_figure,
    point_size,
    scatter_labels,
    scatter_values,
    set_view,
    to_numpy,
    view_limits,
    x_label,
    z_label,
)
from vaelab.plots.data_space import density_grid_points
from vaelab.plots.images import _image_shape, _shown_data, as_images, show, tile, traversal_grid
from vaelab.plots.latent import decoded_latent_grid, draw_latent_line, draw_mesh

# Points shown at most in the latent panel and used for the k-NN probe (cost stays small).
MAX_LATENT_POINTS = 2000


def _device(model: LatentModel) -> torch.device:
    return next(model.parameters()).device


def condition_title(condition: Condition) -> str:
    """What the model is conditioned on, for figure titles: "label", "radius", "column c" …"""
    return condition.kind.replace("column:", "column ")


@torch.no_grad()
def _draw(model: LatentModel, condition: Condition, raw: torch.Tensor, n: int,
          generator: torch.Generator | None, noise: bool = False) -> torch.Tensor:
    """n samples for one raw condition (a label index or a row of values): (n, D). Decoder means
    E[x|z, c], or with ``noise`` draws x ~ p(x|z, c) (the observation noise added)."""
    c = condition.encode(raw).to(_device(model))  # (1, width), broadcast over the n draws
    return model.sample(n, c, generator=generator, noise=noise)


# 1. samples per label ------------------------------------------------------------------------


@torch.no_grad()
def plot_label_samples(
    model: LatentModel, condition: Condition, data: Dataset, *, n_per_label: int | None = None,
    generator: torch.Generator | None = None,
) -> Figure:
    """Samples drawn for every label: data coloured by label | decoder means E[x|z, c] |
    samples x ~ p(x|z, c) with the observation noise, both coloured by the requested label.

    The means alone can make a label look like one dot (a decoder that explains a mode by its
    noise); the noisy samples show the distribution the model puts on each label. Points use
    the first two data coordinates; images get one row of ``n_per_label`` (default 10)
    decoder means per label instead. z ~ N(0, I).
    """
    if condition.labels is None:
        raise InputError("samples per label need a label condition")
    names = condition.labels
    if data.image_shape is not None:
        n = 10 if n_per_label is None else n_per_label
        rows = [as_images(_draw(model, condition, torch.tensor([k]), n, generator), data.image_shape)
                for k in range(len(names))]
        canvas = tile(np.concatenate(rows), n)
        h = canvas.shape[0]
        fig = NotebookFigure(figsize=(max(4.0, canvas.shape[1] * 0.035 + 1.4), max(2.0, h * 0.035 + 0.7)), dpi=110,
                     layout="constrained")
        ax = fig.subplots()
        show(ax, canvas, f"decoded samples E[x|z, c] conditioned on {condition_title(condition)}, "
                         f"one row per label ({n} per row)")
        tile_h = (h - 1) / len(names)
        ax.set_yticks([(k + 0.5) * tile_h for k in range(len(names))], names)
        return fig
    n = 300 if n_per_label is None else n_per_label
    x = to_numpy(data.x)[:, :2]
    means = np.concatenate([to_numpy(_draw(model, condition, torch.tensor([k]), n, generator))[:, :2]
                            for k in range(len(names))])
    noisy = np.concatenate([to_numpy(_draw(model, condition, torch.tensor([k]), n, generator, noise=True))[:, :2]
                            for k in range(len(names))])
    requested = np.repeat(np.arange(len(names)), n)
    fig, axes = new_figure(3, title=f"Conditioned on {condition_title(condition)}: do samples for label k land "
                                    "where the data of label k is?")
    lims = view_limits(np.concatenate([x, means, noisy]))
    if data.labels is not None:
        scatter_labels(axes[0], x, data.labels.cpu().numpy(), names, legend=False)
    else:
        axes[0].scatter(x[:, 0], x[:, 1], s=point_size(len(x)), color="0.3", linewidths=0)
    axes[0].set_title(f"training data by label (N = {len(x)})", fontsize="medium")
    for ax, drawn, what in ((axes[1], means, "decoder means E[x|z, c]"),
                            (axes[2], noisy, "samples x ~ p(x|z, c) (with noise)")):
        ax.scatter(x[:, 0], x[:, 1], s=point_size(len(x)), color="0.85", linewidths=0, zorder=0)
        scatter_labels(ax, drawn, requested, names, legend=ax is axes[2])
        ax.set_title(f"{what}\nby requested label ({n} each)", fontsize="medium")
    for ax in axes:
        set_view(ax, lims)
        _label_data_axes(ax, data.dim, data.columns)
    return fig


# 2. samples at several values of a continuous condition ----------------------------------------


def default_values(condition: Condition, n: int = 6) -> torch.Tensor:
    """n values of a continuous condition (n, C): for a radius 1.5, 2.0 … inside the training
    range when it is wide enough, else evenly over the middle 90% of the range."""
    if condition.kind == "radius":
        assert condition.low is not None and condition.high is not None
        lo, hi = condition.low[0], condition.high[0]
        halves = np.arange(np.ceil(lo * 2) / 2, hi + 1e-9, 0.5)
        if 3 <= len(halves) <= 8:
            return torch.tensor(halves, dtype=torch.float32)[:, None]
    grid = condition.grid(n + 2)  # drop both ends: the extremes are the sparsest training values
    return grid[1:-1] if n >= 2 else grid[1:2]


@torch.no_grad()
def plot_value_samples(
    model: LatentModel, condition: Condition, data: Dataset, *, values: Sequence[float] | torch.Tensor | None = None,
    n_per_value: int | None = None, generator: torch.Generator | None = None,
) -> Figure:
    """Samples drawn at several values of a continuous condition.

    Points: the data in grey with the samples coloured by the requested value, and (for a
    radius) dashed circles at the requested radii plus a panel of mean sample radius
    against requested radius (on the diagonal = follows the condition). Images: one row of
    samples per value. ``values``: (n,) or (n, C); default ``default_values``.
    """
    if condition.discrete:
        raise InputError("samples at several values need a continuous condition")
    vals = default_values(condition) if values is None else torch.as_tensor(values, dtype=torch.float32)
    if vals.ndim == 1:
        vals = vals[:, None]
    names = condition.names or []
    label = ", ".join(names)

    def fmt(v: torch.Tensor) -> str:
        return ", ".join(f"{float(u):.3g}" for u in v)

    if data.image_shape is not None:
        n = 10 if n_per_value is None else n_per_value
        rows = [as_images(_draw(model, condition, v[None], n, generator), data.image_shape) for v in vals]
        canvas = tile(np.concatenate(rows), n)
        fig = NotebookFigure(figsize=(max(4.0, canvas.shape[1] * 0.035 + 1.6), max(2.0, canvas.shape[0] * 0.035 + 0.7)),
                     dpi=110, layout="constrained")
        ax = fig.subplots()
        show(ax, canvas, f"decoded samples conditioned on {condition_title(condition)}, one row per value")
        tile_h = (canvas.shape[0] - 1) / len(vals)
        ax.set_yticks([(k + 0.5) * tile_h for k in range(len(vals))], [fmt(v) for v in vals])
        return fig
    n = 300 if n_per_value is None else n_per_value
    x = to_numpy(data.x)[:, :2]
    # Decoder means alone can sit on a segment while the noisy samples follow the condition
    # (a decoder that explains the radius by its noise): both are drawn, and both are measured.
    means = [to_numpy(_draw(model, condition, v[None], n, generator)) for v in vals]
    noisy = [to_numpy(_draw(model, condition, v[None], n, generator, noise=True)) for v in vals]
    colour_of = np.repeat(to_numpy(vals[:, 0]), n)
    is_radius = condition.kind == "radius"
    fig, axes = new_figure(3 if is_radius else 2,
                           title=f"Conditioned on {condition_title(condition)}: samples at several values of "
                                 f"{label}; do they follow the condition?")
    lims = view_limits(np.concatenate([x, *[m[:, :2] for m in means], *[s[:, :2] for s in noisy]]))
    sc = None
    for ax, drawn, what in ((axes[0], means, "decoder means E[x|z, c]"),
                            (axes[1], noisy, "samples x ~ p(x|z, c) (with noise)")):
        ax.scatter(x[:, 0], x[:, 1], s=point_size(len(x)), color="0.82", linewidths=0, zorder=0,
                   label="training data")
        pts = np.concatenate([d[:, :2] for d in drawn])
        sc = scatter_values(ax, pts, colour_of, s=point_size(len(pts)))
        ax.set_title(f"{what} at {len(vals)} values ({n} each)"
                     + ("\n(dashed: circles of the requested radii)" if is_radius else ""), fontsize="medium")
        set_view(ax, lims)
        _label_data_axes(ax, data.dim, data.columns)
    assert sc is not None
    first = " (first of the condition values)" if len(names) > 1 else ""
    colorbar(fig, sc, axes[:2], f"requested {names[0]}{first}")
    if is_radius:
        cmap, norm = sc.get_cmap(), sc.norm
        angle = np.linspace(0, 2 * np.pi, 200)
        for ax in axes[:2]:
            for v in to_numpy(vals[:, 0]):
                ax.plot(v * np.cos(angle), v * np.sin(angle), ls="--", lw=0.7, alpha=0.7, color=cmap(norm(v)))
        requested = to_numpy(vals[:, 0])
        ax2 = axes[2]
        assert condition.low is not None and condition.high is not None
        lo, hi = condition.low[0], condition.high[0]
        ax2.axvspan(lo, hi, color="0.92", label="training range", zorder=0)
        span = [min(lo, requested.min()), max(hi, requested.max())]
        ax2.plot(span, span, color="0.4", lw=1, ls=":", label="mean ‖x‖ = requested")
        errors = []
        for drawn, what, colour, shift in ((means, "decoder means", "C0", -0.03), (noisy, "noisy samples", "C1", 0.03)):
            radii = [np.linalg.norm(s_[:, :2], axis=1) for s_ in drawn]
            mean_r = np.array([r.mean() for r in radii])
            std_r = np.array([r.std() for r in radii])
            errors.append(f"{what} {np.abs(mean_r - requested).mean():.3f}")
            ax2.errorbar(requested + shift * (hi - lo), mean_r, yerr=std_r, fmt="o-", color=colour, capsize=3,
                         label=f"{what}: mean ± std of ‖x‖")
        ax2.set_xlabel("requested radius")
        ax2.set_ylabel("radius ‖x‖")
        ax2.set_title("mean |mean ‖x‖ − requested|:\n" + ", ".join(errors), fontsize="medium")
        ax2.legend(fontsize="x-small", loc="upper left")
    return fig


# 3. the latent space coloured by the condition -------------------------------------------------


def condition_in_latent(z: np.ndarray, target: np.ndarray, discrete: bool, seed: int = 0) -> tuple[float, float]:
    """How much of the condition the codes carry: (score, chance).

    Discrete: 5-fold cross-validated accuracy of a 15-nearest-neighbour classifier predicting
    the label from z, and the accuracy of always guessing the commonest label. Continuous: the
    cross-validated R² of a 15-nearest-neighbour regressor (chance 0). Near chance = z
    holds little of the condition, which the decoder gets from c directly.
    """
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    k = max(1, min(15, len(z) // 5))
    if discrete:
        counts = np.bincount(target.astype(int))
        chance = float(counts.max() / counts.sum())
        folds = min(5, int(counts[counts > 0].min()))
        if folds < 2:
            return float("nan"), chance
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        score = cross_val_score(KNeighborsClassifier(k), z, target, cv=cv).mean()
        return float(score), chance
    cv = KFold(5, shuffle=True, random_state=seed)
    score = cross_val_score(KNeighborsRegressor(k), z, target, cv=cv, scoring="r2").mean()
    return float(score), 0.0


@torch.no_grad()
def plot_latent_by_condition(
    model: LatentModel, condition: Condition, data: Dataset, *, dims: tuple[int, int] = (0, 1), seed: int = 0,
) -> Figure:
    """Encoded means E[z|x, c] of the data coloured by their condition (labels or values).

    With one latent dimension, z against the condition instead. The title reports how well
    a k-NN predicts the condition from z alone (``condition_in_latent``).
    """
    data = data if len(data) <= MAX_LATENT_POINTS else _first(data, MAX_LATENT_POINTS)
    raw = condition.values(data)
    x, c = data.x.to(_device(model)), condition.encode(raw).to(_device(model))
    z = to_numpy(model.embed(x, c))
    # The probe reads one draw z ~ q(z|x, c), not the mean: means can differ by label while
    # σ ≈ 1 drowns the difference (a collapsed posterior), and then z carries nothing.
    if isinstance(model, VariationalModel):
        gen = torch.Generator(device=x.device).manual_seed(seed)
        z_probe, drawn = to_numpy(rsample(model.encode(x, c), (), gen)), "z ~ q(z|x, c)"
    else:
        z_probe, drawn = z, "z"
    target = to_numpy(raw) if condition.discrete else to_numpy(raw[:, 0] if raw.ndim == 2 else raw)
    what = "label" if condition.discrete else (condition.names or ["c"])[0]
    score, chance = condition_in_latent(z_probe, target, condition.discrete, seed)
    if condition.discrete:
        probe = f"k-NN accuracy of the label from {drawn}: {score:.2f} (chance {chance:.2f})"
    else:
        probe = f"k-NN R² of {what} from {drawn}: {score:.2f} (0 = none of it, 1 = all)"
    fig, axes = new_figure(1, size=(6.4, 5.0),
                           title=f"Latent space coloured by the condition ({condition_title(condition)})")
    ax = axes[0]
    if z.shape[1] == 1:
        y = target.astype(float)
        if condition.discrete:
            jitter = np.random.default_rng(seed).uniform(-0.3, 0.3, len(y))
            scatter_labels(ax, np.stack([z[:, 0], y + jitter], 1), target.astype(int), condition.labels)
            ax.set_yticks(range(len(condition.labels or [])), condition.labels or [])
        else:
            ax.scatter(z[:, 0], y, s=point_size(len(y)), color="C0", linewidths=0)
        ax.set_xlabel(z_label(0))
        ax.set_ylabel(what)
        ax.set_title(f"posterior means, one latent dimension\n{probe}", fontsize="medium")
        return fig
    i, j = dims
    xy = z[:, [i, j]]
    if condition.discrete:
        scatter_labels(ax, xy, target.astype(int), condition.labels)
    else:
        sc = scatter_values(ax, xy, target, cmap=CMAP)
        colorbar(fig, sc, ax, what)
    # The circles are those of N(0, I) (the prior, or for an autoencoder the distribution its
    # samples are decoded from); a model with another prior gets none rather than wrong ones.
    circles = has_standard_prior(model)
    if circles:
        prior = np.linspace(0, 2 * np.pi, 200)
        for r in (1.0, 2.0):
            ax.plot(r * np.cos(prior), r * np.sin(prior), ls=":", lw=0.8, color="0.5")
    # The view always holds the prior's 2σ circle: a collapsed code (all means near 0) must look
    # like a dot at the centre, not like clusters blown up to fill the panel.
    set_view(ax, including_prior(view_limits(xy)) if circles else view_limits(xy))
    ax.locator_params(nbins=5)  # collapsed codes have long tick labels (0.005 …): keep them apart
    ax.set_xlabel(z_label(i))
    ax.set_ylabel(z_label(j))
    note = " (dotted: 1σ, 2σ of the prior)" if circles else ""
    ax.set_title(f"E[z|x, c] of {len(z)} training points{note}\n{probe}", fontsize="medium")
    return fig


def _first(data: Dataset, n: int) -> Dataset:
    return data.rows(slice(0, n))


# 4. one panel per condition: p(x|c), the decoded latent grid, the class × style grid ------------

MAX_PANELS = 12  # conditions drawn at most as small multiples (labels beyond are left out, and said so)


def condition_panels(condition: Condition, max_panels: int = MAX_PANELS) -> list[tuple[str, torch.Tensor]]:
    """The conditions a small-multiples figure draws, one panel each, as (title, raw condition):
    every label (the first ``max_panels``; the raw condition is the label index, shape (1,)),
    or for a continuous condition the values of ``default_values`` (shape (1, C))."""
    if condition.labels is not None:
        return [(f"c = {name}", torch.tensor([k])) for k, name in enumerate(condition.labels[:max_panels])]
    names = condition.names or ["c"]
    return [(", ".join(f"{n} = {float(u):.3g}" for n, u in zip(names, v, strict=True)), v[None])
            for v in default_values(condition)[:max_panels]]


def _left_out(condition: Condition, shown: int) -> str:
    """" (first 12 of 20 labels)" when a figure leaves labels out, else ""."""
    n = len(condition.labels or [])
    return f" (the first {shown} of {n} labels)" if n > shown else ""


def _each(condition: Condition) -> str:
    """"for each label c" or "for each value of radius", for titles."""
    return "for each label c" if condition.discrete else f"for each value of {condition_title(condition)}"


def _panel_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(columns, rows) of a small-multiples grid of n panels: as square as it can be (9 panels in
    3 rows of 3, not 4 + 4 + 1), at most ``max_cols`` wide."""
    cols = max(1, min(max_cols, math.ceil(math.sqrt(n))))
    return cols, -(-n // cols)


@torch.no_grad()
def conditional_density_images(
    model: VariationalModel, condition: Condition, data: Dataset, *, grid: int = 60, k: int = 50,
    generator: torch.Generator | None = None, max_panels: int = MAX_PANELS,
) -> tuple[tuple[float, float, float, float], list[tuple[str, np.ndarray, np.ndarray | None]]]:
    """The model density p(x|c) on a grid × grid over the data's view, for each condition of
    ``condition_panels`` in turn (IWAE estimate with k samples, ``analysis.model_log_density``
    with that c for every grid point; one generator, used panel after panel), and the true
    p(x|c) where the data knows it (a toy mixture's component, for label k).

    Returns the extent (x0, x1, y0, y1) and one (title, p_model (G, G), p_true (G, G) or None) per
    condition; row a, column b is the point (x₁ = column value, x₂ = row value), as imshow draws it.
    """
    pts, ext = density_grid_points(data, grid)
    out = []
    for title, raw in condition_panels(condition, max_panels):
        c = condition.encode(raw)[0]  # (C,): the same c for every grid point
        log_p = model_log_density(model, pts, c, k=k, generator=generator).reshape(grid, grid)
        p_true = None
        if condition.discrete and data.log_prob_given_label is not None:
            label = raw.expand(len(pts))
            p_true = torch.exp(data.log_prob_given_label(pts, label).double()).reshape(grid, grid).numpy()
        out.append((title, torch.exp(log_p.double()).numpy(), p_true))
    return ext, out


@torch.no_grad()
def plot_conditional_density(
    model: LatentModel, condition: Condition, data: Dataset, *, grid: int = 60, k: int = 50,
    generator: torch.Generator | None = None,
) -> Figure:
    """The model density p(x|c) per condition as small multiples, each panel under its own c:
    one panel per label (or per value of a continuous condition), with the true p(x|c) in the
    row under it where the data knows it (the toy mixtures' components), else the training
    points of that label (or for a radius the circle of the requested radius). One colour
    scale for every panel (square root, so thin mass stays visible); same view everywhere."""
    vae = _require_vae(model, "the conditional-density figure")
    if data.dim != 2:
        raise InputError(f"the density image needs 2-D data, this data has D = {data.dim}")
    ext, images = conditional_density_images(vae, condition, data, grid=grid, k=k, generator=generator)
    has_true = any(p_true is not None for _, _, p_true in images)
    show_points = not has_true and condition.discrete and data.labels is not None
    below = has_true or show_points  # a second row of panels under each row of model panels
    cols = min(len(images), 4)  # rows of 4 labels, each with its true density under it
    groups = -(-len(images) // cols)
    rows = groups * (2 if below else 1)
    what = "the true p(x|c)" if has_true else ("that label's training points" if show_points else "")
    fig, axes = new_figure(cols, rows, size=(2.75, 2.6),
                           title=f"Density p(x|c) {_each(condition)}{_left_out(condition, len(images))}: the "
                                 f"model (IWAE, k = {k})" + (f", with {what} under it" if what else ""))
    grid_axes = np.asarray(axes).reshape(rows, cols)
    tops = [p for _, p, _ in images] + [p for _, _, p in images if p is not None]
    peak = max(float(np.nanmax(p)) for p in tops[len(images):]) if has_true else max(
        float(np.nanmax(p)) for p in tops)  # the true densities' peak where known (like plot_density)
    norm = PowerNorm(0.5, vmin=0.0, vmax=peak)
    x0, x1, y0, y1 = ext
    x = to_numpy(data.x)
    labels = None if data.labels is None else data.labels.cpu().numpy()
    im = None
    for n, (title, p_model, p_true) in enumerate(images):
        g, q = divmod(n, cols)
        ax = grid_axes[g * (2 if below else 1), q]
        im = ax.imshow(p_model, origin="lower", extent=ext, cmap=DENSITY_CMAP, norm=norm, interpolation="bilinear")
        ax.set_title(title, fontsize="medium", color=label_colour(n) if condition.discrete else "black")
        if condition.kind == "radius":
            r = float(condition_panels(condition)[n][1][0, 0])
            angle = np.linspace(0, 2 * np.pi, 200)
            ax.plot(r * np.cos(angle), r * np.sin(angle), ls="--", lw=0.8, color="white", alpha=0.8)
        if below:
            ax2 = grid_axes[g * 2 + 1, q]
            if p_true is not None:
                ax2.imshow(p_true, origin="lower", extent=ext, cmap=DENSITY_CMAP, norm=norm, interpolation="bilinear")
            elif show_points and labels is not None:
                ax2.scatter(x[:, 0], x[:, 1], s=2, color="0.85", linewidths=0)
                mine = labels == n
                ax2.scatter(x[mine, 0], x[mine, 1], s=point_size(int(mine.sum())), color=label_colour(n),
                            linewidths=0)
    for r in range(rows):
        for q in range(cols):
            ax = grid_axes[r, q]
            n = (r // (2 if below else 1)) * cols + q
            if n >= len(images):
                ax.set_axis_off()
                continue
            set_view(ax, ((x0, x1), (y0, y1)))
            ax.tick_params(labelsize="x-small")
            if q == 0:
                row_what = ("model" if r % 2 == 0 else ("true" if has_true else "data")) if below else "model"
                ax.set_ylabel(f"{row_what}: {x_label(1, 2, data.columns)}", fontsize="small")
            else:
                ax.set_yticklabels([])
            if r == rows - 1 or (r + 1 < rows and (r + 1) // (2 if below else 1) * cols + q >= len(images)):
                ax.set_xlabel(x_label(0, 2, data.columns), fontsize="small")
            else:
                ax.set_xticklabels([])
    assert im is not None
    colorbar(fig, im, list(grid_axes.ravel()), "p(x|c) (square-root colour scale)")
    return fig


@torch.no_grad()
def plot_latent_grid_by_condition(
    model: LatentModel, condition: Condition, data: Dataset, *, dims: tuple[int, int] = (0, 1), n_grid: int = 11,
    extent: float = 2.5, mi: str = "",
) -> Figure:
    """The decoded latent grid (``plots.latent.plot_latent_grid``) under each condition: one panel
    per label (or value), the same regular grid in (z_i, z_j) decoded with that c, over the data
    (grey; that label's points in its colour). The first panel is the grid in z itself, the key
    to the mesh's colours. For a 1-D latent, the decoded line z = −3 … 3 under each c.

    A label's panel is zoomed onto that label's points and its mesh, so the shape of the mesh
    inside the label (what z encodes there) can be read; other panels share the data's view.
    ``mi``: words for I(x; z) in the title (a mesh shrunk to a dot means z is not used)."""
    panels = condition_panels(condition)
    x = to_numpy(data.x)
    xy = x[:, :2]
    labels = None if data.labels is None else data.labels.cpu().numpy()
    d = model.latent_dim
    i, j = dims
    key = d >= 2
    decoded: list[tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]] = []
    for _, raw in panels:
        c = condition.encode(raw)[0].to(_device(model))
        if key:
            z_mesh, x_mesh = decoded_latent_grid(model, dims=dims, n_grid=n_grid, extent=extent, c=c)
            decoded.append((c, z_mesh, x_mesh))
        else:
            decoded.append((c, None, None))
    cols, rows = _panel_grid(len(panels) + key)
    rest = "" if d <= 2 else f"; other {d - 2} dimensions at 0"
    grid_words = (f"the same grid in ({z_label(i)}, {z_label(j)}){rest}" if key
                  else f"the line {z_label(0)} = −3 … 3")
    fig, axes = new_figure(cols, rows, size=(3.0, 2.9),
                           title=f"Decoded latent grid E[x|z, c] {_each(condition)}{_left_out(condition, len(panels))}"
                                 f": {grid_words}, decoded under each c" + (f"; {mi}" if mi else ""))
    shown = [np.asarray(xy)] + [dec.reshape(-1, 2) for _, _, dec in decoded if dec is not None]
    lims = view_limits(np.concatenate(shown))
    mappable = None
    if key:
        z_key = decoded[0][1]
        assert z_key is not None
        mappable = draw_mesh(axes[0], z_key, z_key, s=8)
        set_view(axes[0], ((-extent * 1.1, extent * 1.1), (-extent * 1.1, extent * 1.1)))
        axes[0].set_xlabel(z_label(i), fontsize="small")
        axes[0].set_ylabel(z_label(j), fontsize="small")
        axes[0].set_title("the grid in z (every panel)", fontsize="medium")
    for n, ((title, _), (c, zgrid, dec)) in enumerate(zip(panels, decoded, strict=True)):
        ax = axes[n + key]
        ax.scatter(xy[:, 0], xy[:, 1], s=2, color="0.85", linewidths=0, zorder=0)
        view = lims
        if condition.discrete and labels is not None and (labels == n).any():
            mine = labels == n
            ax.scatter(xy[mine, 0], xy[mine, 1], s=point_size(int(mine.sum())), color=label_colour(n), alpha=0.45,
                       linewidths=0, zorder=1)
            view = view_limits(np.concatenate([xy[mine]] + ([] if dec is None else [dec.reshape(-1, 2)])))
        set_view(ax, view)
        if zgrid is not None and dec is not None:
            mappable = draw_mesh(ax, dec, zgrid, s=8)
        else:
            mappable = draw_latent_line(ax, model, lims, c=c, fontsize="x-small")
        ax.set_title(title, fontsize="medium", color=label_colour(n) if condition.discrete else "black")
        ax.set_xlabel(x_label(0, data.dim, data.columns), fontsize="small")
        ax.set_ylabel(x_label(1, data.dim, data.columns), fontsize="small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(panels) + key:]:
        ax.set_axis_off()
    assert mappable is not None
    colorbar(fig, mappable, axes, z_label(i) if key else z_label(0))
    return fig


@torch.no_grad()
def class_style_grid(
    model: LatentModel, condition: Condition, z: torch.Tensor, max_rows: int = MAX_PANELS,
) -> torch.Tensor:
    """E[x|z_s, c_r] for every condition r of ``condition_panels`` (rows) and every code z_s of
    z (n, d) (columns): (rows, n, D). The same z in every row: only c changes down a column."""
    dev = _device(model)
    z = z.to(dev)
    rows = [model.decode(z, condition.encode(raw).to(dev).expand(len(z), -1)).mean
            for _, raw in condition_panels(condition, max_rows)]
    return torch.stack(rows)


def style_and_class_change(grid: torch.Tensor) -> tuple[float, float]:
    """How much a class × style grid (rows c, columns z, (R, n, D)) changes with c and with z:
    the pixels' standard deviation down each column (c changes, z fixed) and along each row (z
    changes, c fixed), each averaged over pixels and columns / rows. A decoder that ignores c
    has the first near 0; one whose z is unused has the second near 0."""
    g = grid.double()
    return float(g.std(dim=0).mean()), float(g.std(dim=1).mean())


@torch.no_grad()
def plot_class_style(
    model: LatentModel, condition: Condition, image_shape: Sequence[int], *, n_styles: int = 8,
    generator: torch.Generator | None = None, anchors: torch.Tensor | None = None,
    anchor_c: torch.Tensor | None = None, shown: torch.Tensor | None = None, source: str = "test images",
) -> Figure:
    """The class × style grid of a conditional image model: rows are the conditions c (every
    label, or values of a continuous condition), columns are codes z, the same z in every row.
    Left: ``n_styles`` draws z ~ N(0, I). Right, when ``anchors`` (m, D) are given with their own
    conditions ``anchor_c`` (m, C): the codes z = E[z|x, c] of those images (drawn on top, in the
    grey levels of ``shown`` when given), so each column re-draws one image's style in every class.
    If z holds style and c the class, a column keeps its slant and stroke while the class changes."""
    if not has_standard_prior(model):
        raise InputError("the class × style grid draws z ~ N(0, I); this model's prior is another one")
    dev = _device(model)
    d = model.latent_dim
    panels = condition_panels(condition)
    z_prior = torch.randn(n_styles, d, generator=generator, device=dev) if generator is not None else torch.randn(
        n_styles, d, device=dev)
    grids: list[tuple[str, torch.Tensor, torch.Tensor | None]] = [
        ("z ~ N(0, I)", class_style_grid(model, condition, z_prior), None)]
    if anchors is not None and anchor_c is not None and len(anchors):
        z_img = model.embed(anchors.to(dev), anchor_c.to(dev))
        top = anchors if shown is None else shown
        grids.append((f"z = E[z|x, c] of {source} (top row)", class_style_grid(model, condition, z_img),
                      top.to(dev)))
    change_c, change_z = style_and_class_change(grids[0][1])
    grids[0] = (f"z ~ N(0, I); pixel sd down the columns (c changes): {change_c:.3f}, along the rows (z "
                f"changes): {change_z:.3f}", grids[0][1], grids[0][2])
    canvases, ticks = [], []
    for _, rows, above in grids:
        n = rows.shape[1]
        images = [as_images(r, image_shape) for r in rows]  # (n, C, H, W) per row
        if above is not None:
            images = [as_images(above, image_shape)] + images
        canvases.append(tile(np.concatenate(images), n))
        ticks.append((["image"] if above is not None else []) + [title.removeprefix("c = ") for title, _ in panels])
    widths = [c.shape[1] for c in canvases]
    height = max(c.shape[0] for c in canvases)
    scale = min(0.035, 7.0 / max(height, 1))
    fig = NotebookFigure(figsize=(max(5.0, sum(widths) * scale + 1.6 * len(canvases)), height * scale + 1.2),
                         dpi=110, layout="constrained")
    axes = fig.subplots(1, len(canvases), squeeze=False, width_ratios=widths)[0]
    what = "class" if condition.discrete else condition_title(condition)
    fig.suptitle(f"{what.capitalize()} × style: each row one c, each column one z (the same z in every row)"
                 f"{_left_out(condition, len(panels))}", fontsize="large")
    for ax, (title, _, _), canvas, names in zip(axes, grids, canvases, ticks, strict=True):
        show(ax, canvas, title)
        tile_h = (canvas.shape[0] - 1) / len(names)
        ax.set_yticks([(k + 0.5) * tile_h for k in range(len(names))], names, fontsize="small")
    return fig


@torch.no_grad()
def plot_traversal_by_condition(
    model: LatentModel, condition: Condition, image_shape: Sequence[int], *, dims: tuple[int, int] = (0, 1),
    steps: int = 7, span: float = 2.0, mi: str = "",
) -> Figure:
    """The latent traversal of a conditional image model under each condition: one panel per
    label (or value of a continuous c), each the same grid of (z_i, z_j) over [-span, span]²
    (z_i across, z_j up, other dimensions at 0) decoded with that c. If c carries the class and
    z the style, every panel draws its own class and the same place in every panel the same
    style (slant, width); panels that change little along a direction mean z does not use it.
    ``mi``: words for I(x; z) in the title. For d = 1 the panels are one row each, z_1 across."""
    if not has_standard_prior(model):
        raise InputError("the traversal per label sweeps z over N(0, I)'s ±2 sd; this model's prior is another one")
    dev = _device(model)
    d = model.latent_dim
    i, j = dims if d >= 2 else (0, 0)
    panels = condition_panels(condition)
    canvases = []
    for _, raw in panels:
        c = condition.encode(raw)[0].to(dev)
        if d >= 2:
            grid = traversal_grid(model, (i, j), steps=steps, span=span, c=c)
            canvases.append(tile(as_images(grid, image_shape), steps))
        else:
            z = torch.linspace(-span, span, steps, device=dev).reshape(-1, 1)
            means = model.decode(z, c.reshape(1, -1).expand(steps, -1)).mean
            canvases.append(tile(as_images(means, image_shape), steps))
    cols, rows = _panel_grid(len(panels))
    fig, axes = new_figure(cols, rows, size=(2.4, 2.5 if d >= 2 else 0.9),
                           title=f"Latent traversal {_each(condition)}{_left_out(condition, len(panels))}: "
                                 + (f"{z_label(i)} across, {z_label(j)} up, over [{-span:g}, {span:g}]²"
                                    + ("" if d <= 2 else ", the other dimension at 0" if d == 3
                                       else f", the other {d - 2} dimensions at 0") if d >= 2
                                    else f"{z_label(0)} = {-span:g} … {span:g} across")
                                 + (f"; {mi}" if mi else ""))
    for ax, (title, _), canvas in zip(axes, panels, canvases, strict=False):
        show(ax, canvas, title)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    return fig


# registry ---------------------------------------------------------------------------------------


def _needs_condition(ctx: PlotContext) -> str | None:
    if not ctx.is_conditional:
        return "unconditional model (no condition to vary)"
    if getattr(ctx, "condition", None) is None:
        return "the run has no condition spec (condition.json)"
    return None


def _needs_labels(ctx: PlotContext) -> str | None:
    return None if ctx.condition is not None and ctx.condition.discrete else "the condition is not a label"


def _needs_values(ctx: PlotContext) -> str | None:
    return None if ctx.condition is not None and not ctx.condition.discrete else "the condition is not continuous"


def _drawable(ctx: PlotContext) -> str | None:
    if ctx.is_image:
        return None
    return None if ctx.data.dim >= 2 else f"needs at least 2 data coordinates (D = {ctx.data.dim})"


def _label_samples(ctx: PlotContext) -> Figure:
    assert ctx.condition is not None
    return plot_label_samples(ctx.model, ctx.condition, ctx.data, generator=ctx.generator(501))


def _value_samples(ctx: PlotContext) -> Figure:
    assert ctx.condition is not None
    return plot_value_samples(ctx.model, ctx.condition, ctx.data, generator=ctx.generator(502))


def _latent(ctx: PlotContext) -> Figure:
    assert ctx.condition is not None
    return plot_latent_by_condition(ctx.model, ctx.condition, ctx.data, dims=ctx.dims, seed=ctx.seed)


def _density_by_condition(ctx: PlotContext) -> Figure:
    assert ctx.condition is not None
    # one image per condition: a coarser grid and fewer samples than the single density image keep
    # eight of them to the cost of about two (the conditional posteriors are narrow, so k = 50 is ample)
    return plot_conditional_density(ctx.model, ctx.condition, ctx.data, grid=min(ctx.density_grid, 60),
                                    k=min(ctx.density_k, 50), generator=ctx.generator(503))


def _latent_grid_by_condition(ctx: PlotContext) -> Figure:
    assert ctx.condition is not None
    return plot_latent_grid_by_condition(ctx.model, ctx.condition, ctx.data, dims=ctx.dims, mi=ctx.mi_words())


def _class_style(ctx: PlotContext) -> Figure:
    assert ctx.condition is not None
    data, grey, source = _shown_data(ctx)
    anchors = anchor_c = shown = None
    if data.labels is not None or not ctx.condition.discrete:
        # one image of each of the first six labels (the first six images without labels)
        labels = None if data.labels is None else data.labels.tolist()
        rows = [labels.index(k) for k in dict.fromkeys(labels)][:6] if labels is not None else list(range(6))
        rows = rows[:len(data)]
        anchors, anchor_c = data.x[rows], ctx.condition.tensor(data)[rows]
        shown = None if grey is None else grey[rows]
    return plot_class_style(ctx.model, ctx.condition, _image_shape(data), generator=ctx.generator(504),
                            anchors=anchors, anchor_c=anchor_c, shown=shown, source=source.split(" (")[0])


def _traversal_by_condition(ctx: PlotContext) -> Figure:
    assert ctx.condition is not None
    return plot_traversal_by_condition(ctx.model, ctx.condition, _image_shape(ctx.data), dims=ctx.dims,
                                       mi=ctx.mi_words())


def _needs_images(ctx: PlotContext) -> str | None:
    return None if ctx.is_image else "not image data (the per-condition point figures apply)"


FIGURES = [
    FigureSpec(
        "cond_label_samples", _label_samples,
        "The data coloured by its label beside decoder means E[x|z, c] and samples x ~ p(x|z, c) (with the "
        "observation noise) drawn for each label: every colour should land on the data of its own label "
        "(the conditioning accuracy in metrics.json counts how often it does), and the noisy samples should "
        "spread like that label's data.",
        all_of(_needs_condition, _needs_labels, _drawable), title="Samples per label",
    ),
    FigureSpec(
        "cond_value_samples", _value_samples,
        "Decoder means and noisy samples x ~ p(x|z, c) drawn at several values of the continuous condition, over "
        "the data; for a radius, the mean radius of the samples should follow the requested one inside the training "
        "range. Means alone can ignore the condition while the noisy samples follow it (a decoder that explains "
        "it by its noise): both are drawn and both are measured.",
        all_of(_needs_condition, _needs_values, _drawable), title="Samples at several condition values",
    ),
    FigureSpec(
        "cond_latent", _latent,
        "Encoded means coloured by the condition, with the prior's 1σ and 2σ circles always in view (a "
        "collapsed code is a dot at the centre). The decoder is told c, so z need not carry it: colours "
        "mixed over the whole latent space (k-NN score near chance) mean z holds what c does not say.",
        _needs_condition, title="Latent space by condition",
    ),
    FigureSpec(
        "cond_density", _density_by_condition,
        "The model density p(x|c) under each label's own c (each value's, for a continuous condition), one panel "
        "per label on one colour scale, with the true p(x|c) under it where the data knows it (a mixture's "
        "component): each panel's mass should sit on its own component, with the component's shape; mass on "
        "another label's region means the decoder does not follow c. Speckle is the noise of the importance-"
        "sampled estimate where q(z|x, c) fits the true posterior poorly (points far from that c's data).",
        all_of(_needs_condition, needs_vae, needs_2d_data), title="Density p(x|c) per label", heavy=True,
    ),
    FigureSpec(
        "cond_latent_grid", _latent_grid_by_condition,
        "One regular grid in z decoded under each label's c (the first panel: the grid itself, the key to the "
        "colours). z is shared and c is told to the decoder, so each mesh should lie over its own label's data "
        "(coloured); the mesh's shape within a label is what z encodes there.",
        all_of(_needs_condition, needs_point_data), title="Decoded latent grid per label",
    ),
    FigureSpec(
        "image_class_style", _class_style,
        "The class × style grid of a conditional model: each row is one c, each column one code z, the same z "
        "down a column (left: z ~ N(0, I); right: the codes of test images, shown on top). If c carries the "
        "class and z the style, every row shows its own class and a column keeps one slant and stroke width. "
        "Rows that all look alike (a small pixel sd down the columns, in the title) mean the decoder ignores c "
        "and z carries the class; compare the conditioning accuracy in the metrics.",
        all_of(_needs_condition, _needs_images, needs_standard_prior), title="Class × style grid",
    ),
    FigureSpec(
        "image_cond_traversal", _traversal_by_condition,
        "The latent traversal under each label's c: the same grid of two latent dimensions (the most active "
        "ones) decoded with each c. If c carries the class and z the style, each panel draws its own class and "
        "the same place in every panel the same slant and stroke; a panel whose images do not change along a "
        "direction shows a latent dimension the decoder does not use under that c.",
        all_of(_needs_condition, _needs_images, needs_standard_prior, needs_continuous_latent),
        title="Latent traversal per label",
    ),
]

__all__ = [
    "class_style_grid", "condition_in_latent", "condition_panels", "conditional_density_images", "default_values",
    "plot_class_style", "plot_conditional_density", "plot_label_samples", "plot_latent_by_condition",
    "plot_latent_grid_by_condition", "plot_traversal_by_condition", "plot_value_samples", "style_and_class_change",
]
