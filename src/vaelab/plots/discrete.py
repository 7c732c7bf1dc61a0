"""Figures of a categorical latent (``gumbel``: N groups of K classes, ``OneHotGroups``).

- ``latent_classes_2d``: the data coloured by the class the encoder gives each point,
  argmax_k q(z_n = k | x), one panel per group (the first few), beside the true labels where the
  data has them (with the adjusted Rand index between the two partitions). On radial_gmm with
  one group of 8 classes, each class should be one of the 8 modes.
- ``class_samples``: what each class generates. The decoder at the one-hot code of class k
  (for N > 1 groups: class k in the group shown, the other groups drawn from the uniform prior):
  for point data its mean E[x|z] (large markers) and draws x ~ p(x|z) around it (small ones)
  over the data; for images a grid of decoder means, one row per class.

Each function takes a model and data and returns a ``matplotlib.figure.Figure``; the registry
entries at the bottom say to which runs they apply (skip reasons).
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vaelab.data.dataset import Dataset
from vaelab.distributions import rsample
from vaelab.errors import InputError
from vaelab.evaluate import code_label_agreement
from vaelab.likelihoods import sample_observation
from vaelab.models import LatentModel, VariationalModel
from vaelab.models.gumbel import OneHotGroups
from vaelab.plots.common import (
    FigureSpec,
    NotebookFigure,
    PlotContext,
    add_legend,
    all_of,
    label_colour,
    needs_point_data,
    needs_vae,
    new_figure,
    point_size,
    scatter_labels,
    set_view,
    to_numpy,
    view_limits,
    x_label,
)
from vaelab.plots.images import as_images, show, tile

MAX_GROUPS = 3  # groups shown (one panel each); the title says how many there are
DRAWS = 150  # draws x ~ p(x|z) per class (point data)
IMAGE_COLUMNS = 8  # decoded codes per class (images, N > 1: the other groups drawn from the prior)


def categorical_groups(model: LatentModel) -> tuple[int, int] | None:
    """(N, K) when the model's p(z) is N categorical groups of K classes (``OneHotGroups``), else None."""
    with torch.no_grad():
        prior = model.prior()
    return (prior.groups, prior.classes) if isinstance(prior, OneHotGroups) else None


def _groups_of(model: LatentModel) -> tuple[int, int]:
    sizes = categorical_groups(model)
    if sizes is None:
        raise InputError(f"the {model.config.kind} model's latent is not categorical (a --model gumbel run's is)")
    return sizes


def _xy(x: Tensor) -> np.ndarray:
    return to_numpy(x)[:, :2]


@torch.no_grad()
def plot_latent_classes_2d(model: LatentModel, data: Dataset, *, c: Tensor | None = None) -> Figure:
    """The data (first two coordinates) coloured by argmax_k q(z_n = k | x) of each shown group n,
    beside the data's own labels (where it has them) and the adjusted Rand index between the
    most probable codes and the labels."""
    n_groups, k = _groups_of(model)
    x = data.x.to(next(model.parameters()).device)
    if not isinstance(model, VariationalModel):
        raise InputError(f"the {model.config.kind} model has no q(z|x)")
    q_z = model.encode(x, c)
    if not isinstance(q_z, OneHotGroups):
        raise InputError(f"the {model.config.kind} model's q(z|x) is not categorical")
    classes = to_numpy(q_z.logits.argmax(dim=-1)).astype(int)  # (n, N)
    shown = min(n_groups, MAX_GROUPS)
    labelled = data.labels is not None
    xy = _xy(data.x)
    lims = view_limits(xy)
    extra = f" (the first {shown} of {n_groups} groups)" if shown < n_groups else ""
    fig, axes = new_figure(shown + int(labelled), size=(5.6, 4.4),
                           title=f"The class each point is encoded to, argmax q(z|x): {n_groups} group(s) of "
                                 f"K = {k} classes{extra}")
    names = [f"class {j + 1}" for j in range(k)]
    for g in range(shown):
        ax = axes[g]
        scatter_labels(ax, xy, classes[:, g], names, legend=False)
        used = len(np.unique(classes[:, g]))
        ax.set_title(f"group {g + 1}: {used} of {k} classes in use" if n_groups > 1
                     else f"{used} of {k} classes in use", fontsize="medium")
        add_legend(ax, used)
    if labelled:
        assert data.labels is not None
        agreement = code_label_agreement(q_z.mode, data.labels)
        ax = axes[-1]
        scatter_labels(ax, xy, data.labels.cpu().numpy(), data.label_names, legend=False)
        ax.set_title(f"the data's labels; adjusted Rand index of the codes\nagainst them: "
                     f"{agreement['code_label_ari']:.3f} (1: the same split, 0: chance)", fontsize="medium")
        add_legend(ax, len(np.unique(data.labels.cpu().numpy())))
    for ax in axes:
        set_view(ax, lims)
        ax.set_xlabel(x_label(0, data.dim, data.columns))
        ax.set_ylabel(x_label(1, data.dim, data.columns))
    return fig


def class_codes(model: LatentModel, group: int, draws: int, generator: torch.Generator) -> Tensor:
    """Codes z for every class of ``group``: (K, draws, N·K). Class k of that group is set (one-hot),
    the other groups are drawn from the uniform prior with ``generator`` (N = 1: the one code
    of class k, repeated)."""
    n_groups, k = _groups_of(model)
    prior = model.prior()
    z = rsample(prior, (k, draws), generator).reshape(k, draws, n_groups, k)  # other groups ~ p(z)
    z[:, :, group] = torch.eye(k, dtype=z.dtype, device=z.device)[:, None, :]  # class k of this group
    return z.reshape(k, draws, n_groups * k)


@torch.no_grad()
def plot_class_samples(
    model: LatentModel, data: Dataset, *, generator: torch.Generator | None = None, c: Tensor | None = None,
) -> Figure:
    """What each class decodes to. Point data: the decoder mean E[x|z] at each class's code
    (large markers; N > 1: one per draw of the other groups) and draws x ~ p(x|z) (small), over
    the data in grey, one panel per shown group. Images: the decoder means, one row per class."""
    n_groups, k = _groups_of(model)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    shown = min(n_groups, MAX_GROUPS)
    extra = f" (the first {shown} of {n_groups} groups)" if shown < n_groups else ""
    rest = "" if n_groups == 1 else "; the other groups drawn from the uniform prior"
    if data.image_shape is not None:
        return _class_images(model, data, generator, shown, n_groups, k, extra, rest, c)
    xy = _xy(data.x)
    fig, axes = new_figure(shown, size=(5.4, 4.6),
                           title=f"What each class generates: the decoder at class k's one-hot code{rest}{extra}")
    for g in range(shown):
        z = class_codes(model, g, DRAWS if n_groups > 1 else 1, generator)  # (K, m, N·K)
        cc = None if c is None else c[:1].expand(*z.shape[:-1], c.shape[-1])
        p_x = model.decode(z, cc)
        means = to_numpy(p_x.mean)[..., :2]  # (K, m, 2)
        if n_groups == 1:  # one code per class: its draws come from repeating it
            reps = z.expand(k, DRAWS, z.shape[-1])
            cr = None if c is None else c[:1].expand(*reps.shape[:-1], c.shape[-1])
            draws = to_numpy(sample_observation(model.decode(reps, cr), generator))[..., :2]
        else:
            draws = to_numpy(sample_observation(p_x, generator))[..., :2]
        ax = axes[g]
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="0.82", linewidths=0, label="training data")
        for j in range(k):
            colour = label_colour(j)
            ax.scatter(draws[j, :, 0], draws[j, :, 1], s=4, color=colour, alpha=0.35, linewidths=0)
            mark = means[j, : (1 if n_groups == 1 else 40)]
            ax.scatter(mark[:, 0], mark[:, 1], s=70 if n_groups == 1 else 14, color=colour, edgecolor="black",
                       linewidths=0.8 if n_groups == 1 else 0.3, zorder=4, label=f"class {j + 1}")
        lims = view_limits(np.concatenate([xy, means.reshape(-1, 2)]))
        set_view(ax, lims)
        ax.set_xlabel(x_label(0, data.dim, data.columns))
        ax.set_ylabel(x_label(1, data.dim, data.columns))
        what = "E[x|z] (large) and x ~ p(x|z) (small)"
        ax.set_title(f"group {g + 1}: {what}" if n_groups > 1 else what, fontsize="medium")
        add_legend(ax, k)
    return fig


def _class_images(model: LatentModel, data: Dataset, generator: torch.Generator, shown: int, n_groups: int, k: int,
                  extra: str, rest: str, c: Tensor | None) -> Figure:
    """Images: decoder means per class; N = 1: one tile per class; N > 1: per shown group, K rows of
    ``IMAGE_COLUMNS`` codes (the other groups drawn from the prior)."""
    assert data.image_shape is not None
    columns = 1 if n_groups == 1 else IMAGE_COLUMNS
    canvases = []
    for g in range(shown):
        z = class_codes(model, g, columns, generator).reshape(k * columns, -1)  # (K·m, N·K), class-major
        cc = None if c is None else c[:1].expand(len(z), c.shape[-1])
        images = as_images(model.decode(z, cc).mean, data.image_shape)
        canvases.append(tile(images, min(k, 10) if n_groups == 1 else columns))
    height = sum(cv.shape[0] for cv in canvases)
    width = max(cv.shape[1] for cv in canvases)
    scale = min(0.035, 9.0 / max(height, width))
    fig_width = max(5.5, width * scale + 0.6)
    fig = NotebookFigure(figsize=(fig_width, height * scale + 0.7 * shown + 0.6), dpi=110, layout="constrained")
    axes = fig.subplots(shown, 1, squeeze=False)[:, 0]
    for g, (ax, canvas) in enumerate(zip(axes, canvases, strict=True)):
        title = (f"classes 1 to {k}, left to right" if n_groups == 1
                 else f"group {g + 1}: one row per class (1 to {k}), {columns} codes each")
        show(ax, canvas, title)
    title = f"What each class generates: decoder means E[x|z]{rest}{extra}"
    fig.suptitle(textwrap.fill(title, width=int(8 * fig_width)), fontsize="large")
    return fig


# registry entries -----------------------------------------------------------------------------


def needs_categorical_latent(ctx: PlotContext) -> str | None:
    """The figure reads N groups of K classes from q(z|x) and p(z) (``OneHotGroups``)."""
    reason = needs_vae(ctx)
    if reason is None and categorical_groups(ctx.model) is None:
        reason = f"the {ctx.model.config.kind} model's latent is continuous, not categorical (--model gumbel's is)"
    return reason


def _prior_c(ctx: PlotContext) -> Tensor | None:
    c = ctx.c
    return None if c is None else c[:1]


def _latent_classes(ctx: PlotContext) -> Figure:
    return plot_latent_classes_2d(ctx.model, ctx.data, c=ctx.c)


def _class_samples(ctx: PlotContext) -> Figure:
    return plot_class_samples(ctx.model, ctx.data, generator=ctx.generator(977), c=_prior_c(ctx))


def _point_or_image(ctx: PlotContext) -> str | None:
    return None if ctx.is_image else needs_point_data(ctx)


FIGURES = [
    FigureSpec(
        "latent_classes_2d",
        _latent_classes,
        "The training points coloured by the class their encoder gives them, argmax q(z|x), one panel per "
        "categorical group, beside the data's labels where it has them. A class is a cluster the model found "
        "by itself (no labels in training); the adjusted Rand index says how well the classes match the labels "
        "(1: exactly, up to renaming; 0: no better than chance). Few classes in use means the others collapsed.",
        all_of(needs_categorical_latent, needs_point_data),
        title="The class of each point",
    ),
    FigureSpec(
        "class_samples",
        _class_samples,
        "What each class generates: the decoder at the one-hot code of class k. For points, the decoder mean "
        "(large markers) and draws of p(x|z) around it (small); for images, decoder means. With several groups "
        "the other groups are drawn from the uniform prior, so one class's outputs vary with them. A class whose "
        "outputs fall between the data's modes, or two classes on one mode, show what the code did not learn.",
        all_of(needs_categorical_latent, _point_or_image),
        title="Samples per class",
    ),
]
