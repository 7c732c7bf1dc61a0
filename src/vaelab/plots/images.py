"""Figures for image models: reconstructions, prior samples, latent traversals, interpolations,
and for 2-D latents the encoded test set by class beside the decoded manifold.

Images are tiled into one array with the small numpy function :func:`tile` (torchvision's
``make_grid`` is not available here) and drawn with a single ``imshow``, so a 10x10 grid is
one artist, not a hundred. Decoded images are decoder means E[x|z]: pixel probabilities for a
Bernoulli likelihood, mean grey levels (clipped to [0, 1] for display) for a Gaussian one.

Every function takes a model and images as (N, D) tensors plus the (C, H, W) shape and returns
a ``matplotlib.figure.Figure``; the registry entries at the bottom feed them from a run's
PlotContext (the test split when the run's config can load it).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from vaelab.data import registry as data_registry
from vaelab.data.dataset import Dataset
from vaelab.data.download import DatasetNotFoundError
from vaelab.data.pixels import eval_view
from vaelab.distributions import rsample
from vaelab.errors import InputError
from vaelab.models import LatentModel, has_standard_prior
from vaelab.plots.common import (
    FigureSpec,
    NotebookFigure,
    PlotContext,
    all_of,
    needs_continuous_latent,
    new_figure,
    scatter_labels,
    to_numpy,
    unconditional,
    z_label,
)
from vaelab.plots.latent import latent_path

PAD_VALUE = 0.5  # mid grey between tiles: visible against both black and white backgrounds


def tile(images: np.ndarray, ncols: int, pad: int = 1, pad_value: float = PAD_VALUE) -> np.ndarray:
    """Arrange images (N, C, H, W) in rows of ``ncols`` with ``pad`` pixels between them.

    Returns (rows·(H+pad)+pad, ncols·(W+pad)+pad) for grey images, or the same with a trailing
    RGB axis of 3 for colour ones; missing tiles in the last row stay ``pad_value``.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InputError(f"tile expects images of shape (N, 1 or 3, H, W), got {images.shape}")
    n, c, h, w = images.shape
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, -(-n // ncols))
    canvas = np.full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value, dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[:, y:y + h, x:x + w] = images[k]
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def as_images(x: Tensor, image_shape: Sequence[int]) -> np.ndarray:
    """(N, D) tensor -> (N, C, H, W) numpy array clipped to [0, 1] for display."""
    return np.clip(to_numpy(x).reshape(-1, *image_shape), 0.0, 1.0)


def show(ax: Axes, canvas: np.ndarray, title: str | None = None) -> None:
    """Draw a tiled canvas without axes ticks; grey images in the grey colormap on [0, 1]."""
    ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        # Wrapped to the figure's width (about 10 characters per inch at this size), so a long
        # title over a narrow grid is not cut off at the figure's edges.
        inches = ax.get_window_extent().width / ax.figure.dpi
        width = max(20, int(10 * inches))
        ax.set_title(textwrap.fill(title, width=width), fontsize="medium")


def _size(canvas: np.ndarray, scale: float = 0.035, longest: float = 7.0) -> tuple[float, float]:
    """Figure size in inches that shows one image pixel as ~``scale`` inches (MNIST tile ≈ 1 in),
    shrunk so the longer side stays within ``longest`` inches: a large grid drawn at full
    scale would make its titles and labels unreadably small once the figure is fitted to a screen."""
    h, w = canvas.shape[:2]
    scale = min(scale, longest / max(h, w))
    return (max(3.0, w * scale + 0.4), max(1.2, h * scale + 0.6))


def _code(model: LatentModel, x: Tensor, c: Tensor | None = None) -> Tensor:
    """The code of x used for traversals and interpolations: the posterior mean (VAE) or f(x) (AE)."""
    return model.embed(x, c)


@torch.no_grad()
def _decode_mean(model: LatentModel, z: Tensor, c: Tensor | None = None) -> Tensor:
    return model.decode(z, c).mean


@torch.no_grad()
def plot_reconstructions(model: LatentModel, x: Tensor, image_shape: Sequence[int], *, n: int = 10,
                         rows: int = 2, source: str = "images", shown: Tensor | None = None) -> Figure:
    """Originals over their reconstructions (decoder mean at the posterior mean).

    ``rows`` pairs of rows of ``n`` images: row 2k holds originals, row 2k+1 their
    reconstructions, so each reconstruction sits right under its input. ``source`` says in
    the title which images x are (e.g. "test images"). ``shown``: the images drawn in the
    originals' rows when they are not x itself (the grey levels of a binarized x: one
    Bernoulli draw of a small or upscaled digit is speckle a reader cannot judge).
    """
    x = x[: n * rows].to(next(model.parameters()).device)
    recon = model.reconstruct(x)
    originals = as_images(x if shown is None else shown[: len(x)], image_shape)
    recons = as_images(recon, image_shape)
    n = min(n, len(x))
    order = []
    for r in range(-(-len(x) // n)):
        block = list(range(r * n, min((r + 1) * n, len(x))))
        order += [originals[i] for i in block] + [recons[i] for i in block]
    canvas = tile(np.stack(order), n)
    fig = NotebookFigure(figsize=_size(canvas), dpi=110, layout="constrained")
    show(fig.subplots(), canvas, f"{source} (odd rows) over their reconstructions (even rows)")
    return fig


@torch.no_grad()
def plot_image_samples(model: LatentModel, image_shape: Sequence[int], *, n: int = 64,
                       generator: torch.Generator | None = None) -> Figure:
    """Decoder means E[x|z] of ``n`` draws z ~ p(z) (the model's prior), in a square-ish grid."""
    x = model.sample(n, generator=generator)
    ncols = int(np.ceil(np.sqrt(n)))
    canvas = tile(as_images(x, image_shape), ncols)
    fig = NotebookFigure(figsize=_size(canvas), dpi=110, layout="constrained")
    prior = "N(0, I)" if has_standard_prior(model) else f"the learned prior p(z) of {model.config.kind}"
    show(fig.subplots(), canvas, f"decoded prior samples E[x|z], z ~ {prior} (n = {n})")
    return fig


@torch.no_grad()
def traversal_grid(model: LatentModel, dims: tuple[int, int], *, steps: int = 11, span: float = 2.0,
                   base: Tensor | None = None, centre: Tensor | None = None, scale: Tensor | None = None,
                   c: Tensor | None = None) -> Tensor:
    """Decoder means over a grid of (z_i, z_j) ∈ [-span, span]², other dims fixed at ``base``.

    ``centre`` and ``scale`` (d,) move and stretch the grid: z_i runs over centre_i ± span·scale_i
    (a learned prior's mean and standard deviation; default 0 and 1, N(0, I)'s).
    Returns (steps·steps, D): row r of the grid has z_j = +span … -span from top to bottom
    (so "up" is positive, like a plot), column q has z_i = -span … +span. ``c`` (C,): the
    condition every point is decoded under (a conditional model).
    """
    ref = next(model.parameters())
    i, j = dims
    d = model.latent_dim
    base = torch.zeros(d, device=ref.device, dtype=ref.dtype) if base is None else base
    centre = torch.zeros(d, device=ref.device, dtype=ref.dtype) if centre is None else centre.to(ref.device)
    scale = torch.ones(d, device=ref.device, dtype=ref.dtype) if scale is None else scale.to(ref.device)
    unit = torch.linspace(-span, span, steps, device=ref.device, dtype=ref.dtype)
    z = base.to(ref.device).expand(steps, steps, -1).clone()  # (rows, cols, d)
    z[:, :, i] = (centre[i] + scale[i] * unit)[None, :]
    z[:, :, j] = (centre[j] + scale[j] * unit.flip(0))[:, None]
    cc = None if c is None else c.to(ref.device).reshape(1, -1).expand(steps * steps, -1)
    return _decode_mean(model, z.reshape(steps * steps, -1), cc)


@torch.no_grad()
def prior_moments(model: LatentModel, n: int = 4000, generator: torch.Generator | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (d,) of the model's prior p(z), from ``n`` of its samples (the
    exact 0 and 1 for N(0, I)): where a traversal of a learned prior should look."""
    ref = next(model.parameters())
    if has_standard_prior(model):
        return (torch.zeros(model.latent_dim, device=ref.device, dtype=ref.dtype),
                torch.ones(model.latent_dim, device=ref.device, dtype=ref.dtype))
    prior = model.prior()
    z = rsample(prior, (n,) if prior.batch_shape == torch.Size() else (), generator).reshape(-1, model.latent_dim)
    return z.mean(0), z.std(0)


@torch.no_grad()
def plot_traversal(model: LatentModel, image_shape: Sequence[int], dims: tuple[int, int] = (0, 1), *,
                   anchor: Tensor | None = None, steps: int = 11, span: float = 2.0,
                   anchor_source: str = "image", generator: torch.Generator | None = None) -> Figure:
    """Latent traversal: z_i across, z_j up, the other dimensions at the prior's mean (left panel)
    and, when ``anchor`` (one image, (D,)) is given, at that image's code (right panel, titled with
    ``anchor_source``, e.g. "test image"). Each swept dimension covers its prior's mean ± ``span``
    standard deviations: [-2, 2] for N(0, I); for a learned prior (VampPrior, mixture, a ladder's
    top-down prior) the moments of its samples (drawn with ``generator``)."""
    i, j = dims
    centre, scale = prior_moments(model, generator=generator)
    standard = has_standard_prior(model)
    rest = "others at 0" if standard else "others at the prior's mean"
    panels: list[tuple[str, Tensor | None]] = [(rest, centre)]
    if anchor is not None and model.latent_dim > 2:
        code = _code(model, anchor[None].to(next(model.parameters()).device))[0]
        panels.append((f"others at an encoded {anchor_source}", code))
    canvases = [tile(as_images(traversal_grid(model, dims, steps=steps, span=span, base=b, centre=centre,
                                              scale=scale), image_shape), steps) for _, b in panels]
    w, h = _size(canvases[0])
    where = "" if standard else f" (each over its learned prior's mean ± {span:g} sd)"
    fig, axes = new_figure(len(panels), size=(w, h + 0.3),
                           title=f"Latent traversal: {z_label(i)} across, {z_label(j)} up{where}")
    for ax, (title, _), canvas in zip(axes, panels, canvases, strict=True):
        show(ax, canvas, title)
        for k, setter in ((i, ax.set_xlabel), (j, ax.set_ylabel)):
            lo, hi = float(centre[k] - span * scale[k]), float(centre[k] + span * scale[k])
            setter(f"{z_label(k)}: {lo:.3g} → {hi:.3g}")
    return fig


@torch.no_grad()
def plot_interpolations(model: LatentModel, x_a: Tensor, x_b: Tensor, image_shape: Sequence[int], *,
                        steps: int = 10, source: str = "images",
                        shown: tuple[Tensor, Tensor] | None = None) -> Figure:
    """One strip per pair: the decoder mean along the straight line between the codes of x_a[k]
    and x_b[k] (both (P, D)), with the two originals (``source``, e.g. "test images") at the
    ends of the strip. ``shown``: the images drawn at the ends when they are not x_a, x_b
    themselves (the grey levels of binarized inputs)."""
    dev = next(model.parameters()).device
    x_a, x_b = x_a.to(dev), x_b.to(dev)
    _, decoded = latent_path(model, x_a, x_b, steps=steps)  # (steps, P, D)
    decoded = decoded.transpose(0, 1)  # (P, steps, D)
    ends_a, ends_b = (x_a, x_b) if shown is None else (shown[0].to(dev), shown[1].to(dev))
    rows = [torch.cat([ends_a[k:k + 1], decoded[k], ends_b[k:k + 1]]) for k in range(len(x_a))]
    canvas = tile(as_images(torch.cat(rows), image_shape), steps + 2)
    fig = NotebookFigure(figsize=_size(canvas), dpi=110, layout="constrained")
    show(fig.subplots(), canvas, f"interpolation between the codes of {source} (originals at both ends)")
    return fig


@torch.no_grad()
def plot_latent_classes(model: LatentModel, data: Dataset, *, steps: int = 15, span: float = 2.0,
                        source: str = "images") -> Figure:
    """For d = 2: encoded images (``source``, e.g. "test images") coloured by class (left) and
    the decoded manifold over [-span, span]² (right, same orientation: z₂ up)."""
    if model.latent_dim != 2 or data.image_shape is None:
        raise InputError("plot_latent_classes needs a model with 2 latent dimensions and image data")
    dev = next(model.parameters()).device
    z = to_numpy(_code(model, data.x.to(dev)))
    canvas = tile(as_images(traversal_grid(model, (0, 1), steps=steps, span=span), data.image_shape), steps)
    fig, (ax_z, ax_m) = new_figure(2, size=(5.2, 5.0))
    if data.labels is not None:
        scatter_labels(ax_z, z, data.labels.cpu().numpy(), data.label_names, s=8.0)
    else:
        ax_z.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6, linewidths=0)
    ax_z.add_patch(_square(span))
    ax_z.set_xlabel(z_label(0))
    ax_z.set_ylabel(z_label(1))
    ax_z.set_aspect("equal", adjustable="datalim")
    ax_z.set_title(f"encoded {source} (dashed: the decoded square)", fontsize="medium")
    show(ax_m, canvas, f"decoded manifold, z ∈ [{-span:g}, {span:g}]²")
    ax_m.set_xlabel(f"{z_label(0)} →")
    ax_m.set_ylabel(f"{z_label(1)} →")
    return fig


def _square(span: float):  # noqa: ANN202 (a matplotlib patch)
    from matplotlib.patches import Rectangle

    return Rectangle((-span, -span), 2 * span, 2 * span, fill=False, linestyle="--", color="0.3")


# ---------------------------------------------------------------------------------------------
# Registry entries
# ---------------------------------------------------------------------------------------------


def _shown_data(ctx: PlotContext) -> tuple[Dataset, Tensor | None, str]:
    """The images the figures encode, the grey levels to draw in their place (None: draw them
    as they are) and what they are, for the titles: the test split as the model is scored on it
    (binarized for a Bernoulli model, drawn in its grey levels), or the context's training
    images when there is no run config or the test split's files are not on disk.

    Only a missing dataset is expected here; a corrupt file or an unreadable folder raises
    (the report shows the figure's error), so nothing is relabelled silently.
    """
    if ctx.config is None:
        return ctx.data, None, "training images"
    data_cfg = ctx.config.data.model_copy(update={"limit_test": 2000})
    try:
        test = data_registry.load_dataset(data_cfg, "test")
    except DatasetNotFoundError:
        return ctx.data, None, "training images (the test split is not on disk)"
    scored, mode = eval_view(ctx.config, test)
    if mode == "none":
        return scored, None, "test images"
    return scored, test.x, "test images (drawn in grey; the model reads and is scored on a fixed binarization)"


def _needs_images(ctx: PlotContext) -> str | None:
    return None if ctx.is_image else "not image data"


def _image_shape(data: Dataset) -> tuple[int, int, int]:
    """(C, H, W) of the images a figure shows (``_needs_images`` admits only image data)."""
    if data.image_shape is None:
        raise InputError(f"{data.name} is not image data")
    return data.image_shape


def _needs_two_dims(ctx: PlotContext) -> str | None:
    return None if ctx.model.latent_dim >= 2 else "a traversal needs at least 2 latent dimensions"


def _needs_d2(ctx: PlotContext) -> str | None:
    d = ctx.model.latent_dim
    return None if d == 2 else f"needs d = 2 latent dimensions (this model has {d})"


def _reconstructions(ctx: PlotContext) -> Figure:
    data, grey, source = _shown_data(ctx)
    return plot_reconstructions(ctx.model, data.x, _image_shape(data), source=source, shown=grey)


def _samples(ctx: PlotContext) -> Figure:
    return plot_image_samples(ctx.model, _image_shape(ctx.data), generator=ctx.generator(11))


def _traversal(ctx: PlotContext) -> Figure:
    data, _, source = _shown_data(ctx)
    # "test images" -> "test image"; the note in brackets stays as it is
    one = source.replace("images", "image", 1)
    return plot_traversal(ctx.model, _image_shape(data), ctx.dims, anchor=data.x[0], anchor_source=one,
                          generator=ctx.generator(12))


def _interpolations(ctx: PlotContext) -> Figure:
    data, grey, source = _shown_data(ctx)
    pairs = min(6, len(data) // 2)
    if pairs == 0:
        raise InputError("interpolations need at least two images")
    # Pair images of different classes where labels exist: those lines cross the most space.
    idx_a, idx_b = list(range(pairs)), []
    labels = None if data.labels is None else data.labels.tolist()
    for a in idx_a:
        others = [b for b in range(pairs, len(data)) if labels is None or labels[b] != labels[a]]
        idx_b.append(next((b for b in others if b not in idx_b), pairs + a))
    shown = None if grey is None else (grey[idx_a], grey[idx_b])
    return plot_interpolations(ctx.model, data.x[idx_a], data.x[idx_b], _image_shape(data), source=source,
                               shown=shown)


def _latent_classes(ctx: PlotContext) -> Figure:
    data, grey, source = _shown_data(ctx)
    # No image is drawn here, so the note on how they are drawn does not apply.
    return plot_latent_classes(ctx.model, data, source="test images" if grey is not None else source)


FIGURES = [
    FigureSpec("image_reconstructions", _reconstructions,
               "Test images (training images when the test split is not on disk: the figure's title says "
               "which) over their reconstructions (decoder mean at the posterior mean): blur and "
               "swapped identities show what the code forgets. A Bernoulli model reads a fixed binarization "
               "of each image; the originals are drawn in their grey levels, so they can be recognised.",
               all_of(_needs_images, unconditional), title="Reconstructions"),
    FigureSpec("image_samples", _samples,
               "Decoded prior samples E[x|z], z ~ p(z) (N(0, I), or a family's learned prior): they should look "
               "like the data, varied; "
               "blobs or repeated shapes mean the prior and the codes disagree or the model collapsed.",
               all_of(_needs_images, unconditional), title="Samples from the prior"),
    FigureSpec("image_traversal", _traversal,
               "Two latent dimensions swept over [-2, 2] (a learned prior: its mean ± 2 sd), the others at the "
               "prior's mean and at an encoded test image "
               "(a training image when the test split is not on disk; the panel says which): "
               "smooth change along an axis means the dimension encodes a factor; no change means it "
               "is unused.",
               all_of(_needs_images, unconditional, _needs_two_dims, needs_continuous_latent),
               title="Latent traversal"),
    FigureSpec("image_interpolations", _interpolations,
               "Straight lines between the codes of test-image pairs (training images when the test split "
               "is not on disk; the title says which): intermediate images should stay "
               "plausible; nonsense midway marks holes in the latent space.",
               all_of(_needs_images, unconditional, needs_continuous_latent), title="Interpolations"),
    FigureSpec("image_latent_classes", _latent_classes,
               "Encoded test images (or training images, as the panel title says) coloured by class beside "
               "the decoded manifold over the same square: "
               "classes should occupy regions, and each region should decode to its class.",
               all_of(_needs_images, unconditional, _needs_d2, needs_continuous_latent),
               title="2-D latent space by class"),
]
