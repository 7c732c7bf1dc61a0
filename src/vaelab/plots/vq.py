"""Figures of a vector-quantised model (``vq``: a codebook of K vectors, ``CodePrior``).

- ``codebook_usage``: how often each code is chosen over the training data (sorted, against
  the uniform share 1/K), with the perplexity exp(H) of the frequencies and the codes nobody
  uses; beside it the history's perplexity and dead codes over training.
- ``code_map``: point data coloured by the code of each point (first group), and, for a 2-D
  code (d = 2), the encoder outputs z_e(x) with the codebook vectors among them; images: the
  code grid of a few images (one colour per code) beside the images and their reconstructions.
- ``prior_samples``: samples decoded from codes drawn from the learned prior beside codes drawn
  uniformly: what the prior (the model's second stage) adds to generation.

Each ``plot_*`` function takes a model and data and returns a ``matplotlib.figure.Figure``; the
registry entries at the bottom say to which runs they apply.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vaelab.data.dataset import Dataset
from vaelab.errors import InputError
from vaelab.history import History
from vaelab.likelihoods import sample_observation
from vaelab.models import LatentModel
from vaelab.models.vq import VQVAE, CodePrior, lookup
from vaelab.plots.common import (
    FigureSpec,
    PlotContext,
    add_legend,
    all_of,
    label_colour,
    new_figure,
    point_size,
    set_view,
    to_numpy,
    view_limits,
    x_label,
)
from vaelab.plots.images import as_images, show, tile

IMAGES = 8  # images whose code grids are shown
SAMPLES = 32  # samples per prior (images); point data: POINT_SAMPLES
POINT_SAMPLES = 1500
MAX_POINTS = 4000  # points encoded for the usage and code figures


def _vq(model: LatentModel) -> VQVAE:
    if not isinstance(model, VQVAE):
        raise InputError(f"the {model.config.kind} model has no codebook (a --model vq run has)")
    return model


def _points(data: Dataset, model: VQVAE) -> Tensor:
    return data.x[:MAX_POINTS].to(next(model.parameters()).device)


@torch.no_grad()
def plot_codebook_usage(model: LatentModel, data: Dataset, *, history: History | None = None,
                        c: Tensor | None = None) -> Figure:
    """Each code's share of the data's code vectors, sorted, against 1/K; with a history, its
    perplexity and dead-code columns over the epochs."""
    vq = _vq(model)
    x = _points(data, vq)
    index = vq.codes_of(x, None if c is None else c[:len(x)])  # (n, N)
    counts = torch.bincount(index.reshape(-1), minlength=vq.codes).double()
    share = to_numpy(counts / counts.sum())
    order = np.argsort(-share)
    nz = share[share > 0]
    perplexity = float(np.exp(-(nz * np.log(nz)).sum()))
    unused = int((share == 0).sum())
    curves = history is not None and "perplexity" in history.columns
    fig, axes = new_figure(2 if curves else 1, size=(6.0, 4.0),
                           title=f"Codebook use over {len(x)} training points: {vq.codes - unused} of K = {vq.codes} "
                                 f"codes used, perplexity {perplexity:.1f} (K if all were used equally)")
    ax = axes[0]
    ax.bar(np.arange(vq.codes), share[order], width=1.0, color=label_colour(0), linewidth=0)
    ax.axhline(1.0 / vq.codes, color="black", linestyle="--", linewidth=1, label="uniform share 1/K")
    ax.set_xlabel("codes, most used first")
    ax.set_ylabel("share of the code vectors")
    ax.set_title(f"{unused} code(s) chosen by no point" if unused else "every code is chosen", fontsize="medium")
    ax.legend(loc="upper right", fontsize="small")
    if curves:
        assert history is not None
        ax = axes[1]
        epochs = history.column("epoch")
        ax.plot(epochs, history.column("perplexity"), color=label_colour(1), label="perplexity (batch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("perplexity of the batch's codes")
        ax.set_ylim(0, vq.codes * 1.05)
        lines = ax.get_lines()
        if "dead_codes" in history.columns:  # the learned codebook's (fsq's fixed grid has none)
            twin = ax.twinx()
            twin.plot(epochs, history.column("dead_codes"), color=label_colour(3), linestyle="--",
                      label="dead codes (restarted)" if vq.opts.restart else "dead codes")
            twin.set_ylabel("dead codes (mean over the epoch's steps)")
            twin.set_ylim(0, max(1.0, max(history.column("dead_codes")) * 1.1))
            lines += twin.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="lower right", fontsize="small")
        ax.set_title("during training", fontsize="medium")
    return fig


def _code_colours(index: np.ndarray, k: int) -> np.ndarray:
    palette = matplotlib.colormaps["tab20"] if k <= 20 else matplotlib.colormaps["hsv"]
    return palette((index % 20) / 20 if k <= 20 else index / k)


@torch.no_grad()
def plot_code_map(model: LatentModel, data: Dataset, *, c: Tensor | None = None) -> Figure:
    """Point data: each point coloured by its code (the first group's), and for d = 2 the encoder
    outputs z_e(x) with the codebook vectors e_k. Images: the code grids of a few images."""
    vq = _vq(model)
    if data.image_shape is not None:
        return _code_grids(vq, data)
    x = _points(data, vq)
    cc = None if c is None else c[:len(x)]
    index = to_numpy(vq.codes_of(x, cc))[:, 0].astype(int)  # (n,) first group
    xy = to_numpy(x)[:, :2]
    two_d = vq.dim == 2
    used = len(np.unique(index))
    group = "" if vq.groups == 1 else f" (group 1 of {vq.groups})"
    fig, axes = new_figure(2 if two_d else 1, size=(5.4, 4.6),
                           title=f"The code of each point{group}: {used} of K = {vq.codes} codes in use")
    ax = axes[0]
    ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), c=_code_colours(index, vq.codes), linewidths=0)
    set_view(ax, view_limits(xy))
    ax.set_xlabel(x_label(0, data.dim, data.columns))
    ax.set_ylabel(x_label(1, data.dim, data.columns))
    ax.set_title("data space, one colour per code", fontsize="medium")
    if two_d:
        ax = axes[1]
        z_e = to_numpy(vq.encode_vectors(x, cc)[:, 0])  # (n, 2)
        codebook = to_numpy(vq.codebook)
        ax.scatter(z_e[:, 0], z_e[:, 1], s=point_size(len(z_e)), c=_code_colours(index, vq.codes), linewidths=0,
                   label="encoder outputs z_e(x)")
        chosen = np.isin(np.arange(vq.codes), index)
        ax.scatter(codebook[chosen, 0], codebook[chosen, 1], s=60, marker="X", color="black", label="codes in use")
        if not chosen.all():
            ax.scatter(codebook[~chosen, 0], codebook[~chosen, 1], s=60, marker="X", facecolor="none",
                       edgecolor="0.4", label="codes no point chooses")
        set_view(ax, view_limits(np.concatenate([z_e, codebook[chosen]])))
        ax.set_xlabel("z_1")
        ax.set_ylabel("z_2")
        ax.set_title("code space: bounded z_e(x) and the fixed fsq grid" if vq.fsq else
                     "code space: z_e(x) and the codebook e_k", fontsize="medium")
        add_legend(ax, 3)
    return fig


def _code_grids(vq: VQVAE, data: Dataset) -> Figure:
    assert data.image_shape is not None
    x = data.x[:IMAGES].to(next(vq.parameters()).device)
    index = vq.codes_of(x)  # (n, N)
    images = as_images(x, data.image_shape)
    recon = as_images(vq.reconstruct(x), data.image_shape)
    grid = getattr(vq, "grid", None)
    fig, axes = new_figure(3, size=(4.2, 4.2), title=f"Code grids of {len(x)} training images: one colour per code "
                                                      f"(K = {vq.codes}), each cell of the {vq.groups}-cell grid")
    show(axes[0], tile(images, 4), "images")
    if grid is not None:
        h, w = grid
        colours = _code_colours(to_numpy(index).astype(int), vq.codes)[..., :3]  # (n, N, 3)
        cells = colours.reshape(len(x), h, w, 3).transpose(0, 3, 1, 2)  # (n, 3, h, w)
        axes[1].imshow(tile(cells, 4), interpolation="nearest")
        axes[1].set_xticks([])
        axes[1].set_yticks([])
        axes[1].set_title(f"their {h}x{w} code grids", fontsize="medium")
    else:
        axes[1].imshow(to_numpy(index), aspect="auto", interpolation="nearest", cmap="tab20")
        axes[1].set_title("their codes (one row per image)", fontsize="medium")
    show(axes[2], tile(recon, 4), "decoded from the codes")
    return fig


@torch.no_grad()
def plot_prior_samples(model: LatentModel, data: Dataset, *, generator: torch.Generator | None = None) -> Figure:
    """Decoder means at codes drawn from the learned prior, beside codes drawn uniformly."""
    vq = _vq(model)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    learned, uniform = vq.prior(), vq.uniform_prior()
    n = SAMPLES if data.image_shape is not None else POINT_SAMPLES
    panels: list[tuple[str, CodePrior]] = [("learned prior", learned), ("uniform prior", uniform)]
    if learned.is_uniform:
        panels = panels[1:]
    decoded = []
    for name, prior in panels:
        index = prior.sample_codes((n,), generator)  # (n, N)
        log_p = float(learned.log_prob_codes(index).mean()) if not learned.is_uniform else math.nan
        decoded.append((name, index, vq.decode(lookup(index, vq.codebook)), log_p))
    what = "a learned prior" if not learned.is_uniform else "the uniform prior (this model has no learned prior)"
    fig, axes = new_figure(len(panels), size=(5.0, 4.6), title=f"Samples decoded from codes drawn from {what}"
                           + (" and from the uniform prior" if len(panels) > 1 else ""))
    for ax, (name, index, p_x, log_p) in zip(axes, decoded, strict=True):
        note = f"\nmean log p_learned(k) of the codes: {log_p:.2f}" if not math.isnan(log_p) else ""
        if data.image_shape is not None:
            score = f" (mean log p_learned(k) = {log_p:.1f})" if not math.isnan(log_p) else ""
            show(ax, tile(as_images(p_x.mean, data.image_shape), 8), f"{name}{score}")
            continue
        # Point data: the decoder's few distinct means hide how often each code is drawn, so the
        # draws x ~ p(x|z) (with their noise) show the density, and each distinct code's mean is
        # drawn with an area proportional to how often it was drawn.
        xy = to_numpy(data.x)[:, :2]
        draws = to_numpy(sample_observation(p_x, generator))[:, :2]
        codes, first, counts = np.unique(to_numpy(index), axis=0, return_index=True, return_counts=True)
        means = to_numpy(p_x.mean)[first, :2]
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="0.82", linewidths=0, label="training data")
        ax.scatter(draws[:, 0], draws[:, 1], s=3, color=label_colour(0), alpha=0.35, linewidths=0,
                   label="x ~ p(x|z), z ~ prior")
        ax.scatter(means[:, 0], means[:, 1], s=600 * counts / n, color=label_colour(1), edgecolor="black",
                   linewidths=0.5, zorder=4, label="E[x|z] (area: how often drawn)")
        set_view(ax, view_limits(xy))
        ax.set_xlabel(x_label(0, data.dim, data.columns))
        ax.set_ylabel(x_label(1, data.dim, data.columns))
        ax.set_title(f"{name}: {len(codes)} codes in {n} draws{note}", fontsize="medium")
        if ax is axes[-1]:  # one legend for both panels
            add_legend(ax, 3)
    return fig


# registry entries -----------------------------------------------------------------------------


def needs_codebook(ctx: PlotContext) -> str | None:
    """The figure reads a codebook (``--model vq``)."""
    return None if isinstance(ctx.model, VQVAE) else f"the {ctx.model.config.kind} model has no codebook (--model vq)"


def _point_or_image(ctx: PlotContext) -> str | None:
    if ctx.is_image or ctx.data.dim >= 2:
        return None
    return f"needs at least 2 data coordinates to draw (this data has D = {ctx.data.dim})"


def _unconditional(ctx: PlotContext) -> str | None:
    return None if ctx.c is None else "a conditional model: its codes depend on the condition too"


FIGURES = [
    FigureSpec(
        "codebook_usage",
        lambda ctx: plot_codebook_usage(ctx.model, ctx.data, history=ctx.history, c=ctx.c),
        "How often each codebook vector is chosen over the training data, most used first, against the uniform "
        "share 1/K, and the perplexity exp(H) of these frequencies (K when every code is used equally). Codes no "
        "point chooses are wasted capacity; with restarts the history's dead codes should fall to about 0.",
        all_of(needs_codebook, _point_or_image),
        title="Codebook use",
    ),
    FigureSpec(
        "code_map",
        lambda ctx: plot_code_map(ctx.model, ctx.data, c=ctx.c),
        "Which code each input gets. Points: coloured by code in data space (each code a region, as in k-means) "
        "and, for 2-D codes, the encoder's outputs z_e(x) with the codebook vectors among them. Images: the grid "
        "of codes of a few images, one colour per code, beside the images decoded from those codes.",
        all_of(needs_codebook, _point_or_image),
        title="Codes of the data",
    ),
    FigureSpec(
        "prior_samples",
        lambda ctx: plot_prior_samples(ctx.model, ctx.data, generator=ctx.generator(31)),
        "Decoder means at codes drawn from the learned prior over the codes (the model's second stage) beside "
        "codes drawn uniformly. The decoder only knows the code configurations the data produced: uniform codes "
        "mix them into outputs unlike the data, the learned prior draws the configurations the data uses.",
        all_of(needs_codebook, _point_or_image, _unconditional),
        title="Samples: learned vs uniform prior",
    ),
]

__all__ = ["FIGURES", "needs_codebook", "plot_code_map", "plot_codebook_usage", "plot_prior_samples"]
