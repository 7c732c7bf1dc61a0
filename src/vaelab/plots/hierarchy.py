"""Figures of hierarchical models (a ladder VAE, ``--model ladder``): what each layer does.

- ``kl_per_layer``: the KL of each layer z_1 … z_L over training (the history's kl_1 … kl_L
  columns) beside the held-out KL and active units of each layer. A layer whose KL falls to ~0
  is unused: q(z_i | z_{i+1}, x) = p(z_i | z_{i+1}), the well-known fate of the top layers of
  hierarchical VAEs trained without warm-up (Sønderby et al. 2016, section 3).
- ``layer_samples``: prior samples that vary one layer with the noise of the others held fixed.
  The prior draws top-down, z_L = ε_L, z_i = μ_p(z_{i+1}) + σ_p(z_{i+1}) ε_i, so holding every
  ε but one fixed and drawing that one anew shows what that layer's noise adds: a new ε_L moves
  every layer below through the top-down nets; a new ε_1 changes only z_1. The panels' titles
  carry each layer's held-out KL, because the two measure different things: a layer whose KL is
  ~0 (its posterior is its prior, whatever x) can still shape the samples through p(z_i|z_{i+1})
  (seen on moons: KL(z_2) = 0.05 nats, yet a new z_2 slides the sample along a moon).

Both read the model through the latent-group form of the contract: ``has_latent_groups`` and
a prior with ``groups`` and ``from_noise`` (vaelab.models.ladder); other models skip them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vaelab.models import LatentModel
from vaelab.plots.common import (
    FigureSpec,
    NotebookFigure,
    PlotContext,
    add_legend,
    all_of,
    label_colour,
    needs_history,
    new_figure,
    text_panel,
    to_numpy,
    unconditional,
)
from vaelab.plots.images import as_images, show, tile

CONTEXTS = 4  # settings of the other layers' noise per panel (rows / colours)
DRAWS = 8  # draws of the varied layer per context (image columns)
POINT_DRAWS = 300  # draws of the varied layer per context (2-D scatter)


def _layer_names(model: LatentModel) -> list[str]:
    """The names of the model's latent groups, bottom to top ("1" … "L")."""
    return list(getattr(model.prior(), "groups", {}))


def _layer_sizes(layers: list[str], metrics: dict[str, Any]) -> dict[str, int]:
    """d_i of each layer, from the held-out metrics' ``latent_groups`` (name -> size) where present."""
    sizes = metrics.get("latent_groups", {})
    return {name: int(sizes[name]) for name in layers if name in sizes}


def _layer_title(name: str, layers: list[str], kl: dict[str, float] | None) -> str:
    """"new z_2 (top layer; held-out KL 0.05 nats)": which layer a panel varies, and how much it is used."""
    which = "top" if name == layers[-1] else "bottom" if name == layers[0] else "middle"
    used = f"; held-out KL {kl[name]:.2g} nats" if kl and name in kl else ""
    return f"new z_{name} ({which} layer{used})"


def plot_kl_per_layer(history_rows: list[dict[str, float]], layers: list[str], *,
                      metrics: dict[str, Any] | None = None) -> Figure:
    """KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1})) of each layer i per epoch (training batches' means,
    the history's ``kl_<i>`` columns), with the total KL dashed; beside it the held-out KL per layer
    (bars, with ±2 SE) and its active units where ``metrics`` has them."""
    held_out = metrics is not None and "kl_per_group" in metrics
    fig, axes = new_figure(2 if held_out else 1, size=(5.2, 3.8), title="KL per layer")
    ax = axes[0]
    top = layers[-1] if layers else ""
    epoch = np.array([float(r["epoch"]) for r in history_rows])
    for k, name in enumerate(layers):
        values = np.array([float(r.get(f"kl_{name}", math.nan)) for r in history_rows])
        where = " (bottom: decoded to x)" if k == 0 else " (top: prior N(0, I))" if name == top else ""
        ax.plot(epoch, values, color=label_colour(k), linewidth=1.8, label=f"z_{name}{where}")
    total = np.array([float(r.get("kl", math.nan)) for r in history_rows])
    ax.plot(epoch, total, color="k", linestyle="--", linewidth=1.2, label="total KL (their sum)")
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats / point (training batches)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.set_title("during training", fontsize="medium")
    add_legend(ax, len(layers) + 1)
    if held_out:
        assert metrics is not None
        bar = axes[1]
        kl = [float(metrics["kl_per_group"].get(name, math.nan)) for name in layers]
        se = [float(metrics.get("kl_per_group_se", {}).get(name, 0.0)) for name in layers]
        se = [e if math.isfinite(e) else 0.0 for e in se]  # NaN for a single test point: no error bar
        active = metrics.get("active_units_per_group", {})
        sizes = _layer_sizes(layers, metrics)
        xs = np.arange(len(layers))
        bar.bar(xs, kl, yerr=2 * np.array(se), color=[label_colour(k) for k in range(len(layers))], capsize=4)
        bar.set_xticks(xs, [f"z_{name}" for name in layers])
        for x, (value, error, name) in enumerate(zip(kl, se, layers, strict=True)):
            if name in active:  # above the error bar
                of = f" of {sizes[name]}" if name in sizes else ""
                bar.annotate(f"{active[name]}{of} units active", (x, value + 2 * error), textcoords="offset points",
                             xytext=(0, 4), ha="center", fontsize="small")
        bar.set_ylabel("nats / point (held out, ± 2 SE)")
        bar.set_title(f"held out (n = {metrics.get('n', '?')})", fontsize="medium")
        bar.axhline(0, color="0.6", linewidth=0.8)
        tops = [v + 2 * e for v, e in zip(kl, se, strict=True) if math.isfinite(v + 2 * e)]
        if tops and max(tops) > 0:
            bar.set_ylim(top=1.15 * max(tops))  # room for the active-unit labels
        bar.grid(True, axis="y", alpha=0.3)
    return fig


@torch.no_grad()
def layer_noise(model: LatentModel, varied: int, *, contexts: int, draws: int,
                generator: torch.Generator) -> list[torch.Tensor]:
    """Noise ε_1 … ε_L of the prior, (contexts, draws, d_i) each: layer ``varied`` (0-based) gets a
    fresh ε per draw, every other layer one ε per context shared by all its draws."""
    prior = model.prior()
    fresh = prior.noise((contexts, draws), generator)  # type: ignore[attr-defined]
    fixed = prior.noise((contexts, 1), generator)  # type: ignore[attr-defined]
    return [e if i == varied else f.expand_as(e) for i, (e, f) in enumerate(zip(fresh, fixed, strict=True))]


@torch.no_grad()
def vary_layer(model: LatentModel, varied: int, *, contexts: int, draws: int,
               generator: torch.Generator) -> torch.Tensor:
    """Decoder means E[x|z] of prior draws that vary one layer: (contexts, draws, D); within a
    context only ε of layer ``varied`` changes (see ``layer_noise``)."""
    z = model.prior().from_noise(layer_noise(model, varied, contexts=contexts, draws=draws,  # type: ignore[attr-defined]
                                             generator=generator))  # (contexts, draws, Σ d_i)
    return model.decode(z).mean


def plot_layer_samples_images(model: LatentModel, image_shape: tuple[int, ...], *,
                              generator: torch.Generator, kl: dict[str, float] | None = None) -> Figure:
    """One panel per layer, top layer first: rows hold the other layers' noise fixed, columns draw
    the panel's layer anew (decoder means E[x|z]). ``kl``: each layer's held-out KL, for the titles."""
    layers = _layer_names(model)
    panels = []
    for varied in range(len(layers) - 1, -1, -1):
        x = vary_layer(model, varied, contexts=CONTEXTS, draws=DRAWS, generator=generator)
        panels.append((layers[varied], tile(as_images(x.reshape(-1, x.shape[-1]), image_shape), DRAWS)))
    h, w = panels[0][1].shape[:2]
    fig = NotebookFigure(figsize=(max(4.0, w * 0.03 + 0.6), len(panels) * (h * 0.03 + 0.5) + 0.6), dpi=110,
                         layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    fig.suptitle("Prior samples varying one layer (each row: the other layers' noise fixed)", fontsize="medium")
    for ax, (name, canvas) in zip(axes, panels, strict=True):
        show(ax, canvas, _layer_title(name, layers, kl) + " in each column")
    return fig


def plot_layer_samples_points(model: LatentModel, data: np.ndarray, *, generator: torch.Generator,
                              kl: dict[str, float] | None = None) -> Figure:
    """One panel per layer, top layer first: decoder means of prior draws where only that layer's
    noise changes, one colour per setting of the other layers' noise, over the data in grey.
    ``kl``: each layer's held-out KL, for the titles."""
    layers = _layer_names(model)
    order = list(range(len(layers) - 1, -1, -1))
    fig, axes = new_figure(len(order), size=(4.0, 4.0), title="Prior samples varying one layer: decoder means "
                           "E[x|z]; each colour keeps the other layers' noise fixed")
    lims = [(float(data[:, j].min()), float(data[:, j].max())) for j in (0, 1)]
    pad = [0.15 * (hi - lo) for lo, hi in lims]
    for ax, varied in zip(axes, order, strict=True):
        x = to_numpy(vary_layer(model, varied, contexts=CONTEXTS, draws=POINT_DRAWS, generator=generator))
        ax.scatter(data[:, 0], data[:, 1], s=3, color="0.8", linewidths=0, label="data")
        for k in range(CONTEXTS):
            ax.scatter(x[k, :, 0], x[k, :, 1], s=4, color=label_colour(k), alpha=0.7, linewidths=0)
        ax.set_title(_layer_title(layers[varied], layers, kl), fontsize="medium")
        ax.set_xlim(lims[0][0] - pad[0], lims[0][1] + pad[0])
        ax.set_ylim(lims[1][0] - pad[1], lims[1][1] + pad[1])
        ax.set_aspect("equal", adjustable="box")
    return fig


# -- registry -----------------------------------------------------------------------------------


def needs_layers(ctx: PlotContext) -> str | None:
    """The figure needs a model whose z is made of layers (latent groups) with a top-down prior."""
    if not getattr(ctx.model, "has_latent_groups", False):
        kind = ctx.model.config.kind
        return f"the {kind} model has one latent layer (hierarchical models have several: --model ladder)"
    if not callable(getattr(ctx.model.prior(), "from_noise", None)):
        return f"the {ctx.model.config.kind} model's prior cannot be drawn from given noise (from_noise)"
    return None


def _needs_layer_history(ctx: PlotContext) -> str | None:
    assert ctx.history is not None
    names = _layer_names(ctx.model)
    if not names or f"kl_{names[0]}" not in ctx.history.columns:
        return "the training history has no KL per layer (kl_1, ...)"
    return None


def _needs_points_or_images(ctx: PlotContext) -> str | None:
    if ctx.is_image or ctx.data.dim == 2:
        return None
    return f"the data are neither images nor 2-D points (D = {ctx.data.dim}): no picture of x to draw"


def _kl_per_layer(ctx: PlotContext) -> Figure:
    assert ctx.history is not None
    return plot_kl_per_layer(ctx.history.rows, _layer_names(ctx.model), metrics=ctx.metrics or None)


def _layer_samples(ctx: PlotContext) -> Figure:
    if ctx.is_image:
        assert ctx.data.image_shape is not None
        return plot_layer_samples_images(ctx.model, tuple(ctx.data.image_shape), generator=ctx.generator(1301),
                                         kl=ctx.metrics.get("kl_per_group"))
    data = to_numpy(ctx.data.x)
    if len(data) == 0:
        fig, axes = new_figure(1)
        text_panel(axes[0], "no data points to draw")
        return fig
    return plot_layer_samples_points(ctx.model, data, generator=ctx.generator(1301),
                                     kl=ctx.metrics.get("kl_per_group"))


FIGURES = [
    FigureSpec("kl_per_layer", _kl_per_layer,
               "KL of each layer z_i, KL(q(z_i | z_(i+1), x) ‖ p(z_i | z_(i+1))), during training and held out: "
               "they add up to the total KL. A layer near 0 nats is unused: its posterior is its prior, whatever x. "
               "Active units (the spread over x of a unit's posterior mean above 0.01, Burda et al. 2016) may count "
               "a unit of a layer whose KL is small.",
               all_of(needs_layers, needs_history, _needs_layer_history), title="KL per layer"),
    FigureSpec("layer_samples", _layer_samples,
               "Prior samples where only one layer's noise changes, the others' held fixed: the spread within one "
               "colour (one row of images) is what that layer's noise adds. A new top layer reaches x through every "
               "layer below it; a new bottom layer changes z_1 alone. The held-out KL in each title says whether the "
               "encoder uses the layer: a layer with KL near 0 may still shape the samples through the prior "
               "p(z_i | z_(i+1)), but it holds nothing about any particular x.",
               all_of(needs_layers, unconditional, _needs_points_or_images), title="Samples varying one layer"),
]

__all__ = ["FIGURES", "layer_noise", "plot_kl_per_layer", "plot_layer_samples_images", "plot_layer_samples_points",
           "vary_layer"]
