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

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from vaelab.conditions import Condition
from vaelab.data.dataset import Dataset
from vaelab.distributions import rsample
from vaelab.errors import InputError
from vaelab.models import LatentModel, VariationalModel, has_standard_prior
from vaelab.plots.common import (
    CMAP,
    FigureSpec,
    NotebookFigure,
    PlotContext,
    _label_data_axes,
    all_of,
    colorbar,
    including_prior,
    new_figure,
    point_size,
    scatter_labels,
    scatter_values,
    set_view,
    to_numpy,
    view_limits,
    z_label,
)
from vaelab.plots.images import as_images, show, tile

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
]

__all__ = [
    "condition_in_latent", "default_values", "plot_label_samples", "plot_latent_by_condition",
    "plot_value_samples",
]
