"""Figures a course on VAEs draws that the other modules do not: the IWAE bound against k, the
true posterior beside q(z|x), the KL split into I(x; z) and the marginal KL, the KL per latent
dimension, the reparameterization trick for one point, a PCA of d > 2 codes by class, the
data by label with the model's samples over it, and the model before and after training.

Every ``plot_*`` function takes the pieces it needs and returns a Figure; the registry entries
at the bottom feed them from a run's PlotContext.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Ellipse
from torch import Tensor

from vaelab.analysis import default_points, iwae_curve, row_indices, true_posterior_grid
from vaelab.config import RunConfig
from vaelab.data import registry as data_registry
from vaelab.data.dataset import Dataset
from vaelab.data.pixels import train_pixels
from vaelab.distributions import rsample
from vaelab.likelihoods import sample_observation
from vaelab.models import LatentModel, VariationalModel, build_model
from vaelab.objectives import ae_loss, elbo
from vaelab.plots.common import (
    DENSITY_CMAP,
    FigureSpec,
    PlotContext,
    _label_data_axes,
    _require_vae,
    _xy,
    add_legend,
    all_of,
    colorbar,
    label_colour,
    needs_normal_posterior,
    needs_point_data,
    needs_standard_prior,
    needs_vae,
    new_figure,
    point_size,
    scatter_labels,
    set_view,
    sub,
    text_panel,
    to_numpy,
    view_limits,
    z_label,
)

IWAE_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
IWAE_POINTS = 200  # held-out points the IWAE-vs-k curve averages over


# 1. the IWAE bound against k -------------------------------------------------------------------


def plot_iwae_vs_k(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, ks: Sequence[int] = IWAE_KS,
    generator: torch.Generator | None = None, true_nll: float | None = None,
) -> Figure:
    """L_k averaged over the points x against k (log axis): L_1 is the ELBO estimate, and L_k
    rises towards log p(x) as k grows (Burda et al. 2016). ``true_nll``: −log p(x) where the data's
    density is known, drawn as the limit."""
    curve = to_numpy(iwae_curve(model, x, c, ks=ks, generator=generator))
    fig, axes = new_figure(1, size=(6.6, 4.4), title=f"The IWAE bound L_k against k ({len(x)} held-out points)")
    ax = axes[0]
    ax.plot(list(ks), curve, marker="o", color="C0", label="L_k = E log (1/k) Σ w_i (nested draws)")
    ax.axhline(float(curve[0]), color="C2", linestyle="-.", linewidth=1, label=f"L_1 = ELBO estimate {curve[0]:.3f}")
    if true_nll is not None and math.isfinite(true_nll):
        ax.axhline(-true_nll, color="0.2", linestyle="--", linewidth=1.2, label=f"true log p(x) {-true_nll:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("importance samples k (log scale)")
    ax.set_ylabel("nats / point")
    ax.set_title(f"gap L_{ks[-1]} − L_1 = {curve[-1] - curve[0]:.3f} nats: how loose the ELBO is", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return fig


# 2. the true posterior beside q(z|x) ----------------------------------------------------------


@torch.no_grad()
def plot_true_posterior(
    model: VariationalModel, data: Dataset, *, points: Tensor | None = None, c: Tensor | None = None,
    grid: int = 120, extent: float = 3.5,
) -> Figure:
    """For a few points x: the true posterior p(z|x) ∝ p(x|z) p(z) on a grid (colour) with
    q(z|x)'s 1σ and 2σ ellipses over it. The ELBO's gap to log p(x) is KL(q(z|x) ‖ p(z|x)):
    where the ellipses miss the shape of the colour, the bound is loose. 2-D latents only.
    ``c``: each data point's condition (a chosen point takes the c of its nearest data point)."""
    pts = default_points(data.x, 3) if points is None else points.to(data.x.dtype)
    c_pts = None if c is None else c[row_indices(data.x, pts).to(c.device)]
    g = torch.linspace(-extent, extent, grid)
    q = model.encode(pts.to(next(model.parameters()).device), c_pts)
    mu, sd = to_numpy(q.mean), to_numpy(q.stddev)
    fig, axes = new_figure(len(pts), size=(4.2, 4.2),
                           title="True posterior p(z|x) ∝ p(x|z)p(z) (colour) and q(z|x) (1σ, 2σ ellipses)")
    im = None
    for m, ax in enumerate(axes):
        post = to_numpy(true_posterior_grid(model, pts[m], g, (0, 1), None if c_pts is None else c_pts[m : m + 1]))
        im = ax.imshow(post, origin="lower", extent=(-extent, extent, -extent, extent), cmap=DENSITY_CMAP,
                       interpolation="bilinear")
        for r, style in ((1, "-"), (2, "--")):
            ax.add_patch(Ellipse((float(mu[m, 0]), float(mu[m, 1])), 2 * r * float(sd[m, 0]), 2 * r * float(sd[m, 1]),
                                 fill=False, edgecolor="cyan", linestyle=style, linewidth=1.5))
        ax.add_patch(Circle((0, 0), 2, fill=False, edgecolor="white", linestyle=":", linewidth=0.8))
        coords = ", ".join(f"{v:.2g}" for v in to_numpy(pts[m])[:3])
        ax.set_title(f"point {m + 1}: x = ({coords})", fontsize="medium")
        ax.set_xlabel(z_label(0))
        ax.set_ylabel(z_label(1))
    colorbar(fig, im, axes, "p(z|x) (normalised on the grid)")
    return fig


# 3. KL = I(x; z) + KL(q(z) ‖ p(z)) ---------------------------------------------------------------


def plot_rate_split(metrics: dict, title: str = "") -> Figure:
    """The average KL term split into the mutual information I(x; z) and the marginal
    KL(q(z) ‖ p(z)) (Hoffman & Johnson 2016, eq. 3), as one stacked bar: a KL that is mostly
    marginal KL is a code that costs rate but carries little about x."""
    mi, marginal, kl = (float(metrics.get(k, math.nan)) for k in ("mutual_info", "marginal_kl", "kl"))
    fig, axes = new_figure(1, size=(5.6, 4.4), title=title or "KL = I(x; z) + KL(q(z) ‖ p(z)) (held-out)")
    ax = axes[0]
    ax.bar([0], [mi], color="C0", width=0.5, label=f"I(x; z) = {mi:.3g}")
    ax.bar([0], [marginal], bottom=[max(mi, 0.0)], color="C1", width=0.5, label=f"KL(q(z) ‖ p(z)) = {marginal:.3g}")
    if math.isfinite(kl):
        ax.scatter([0], [kl], marker="_", s=2000, color="k", zorder=5, label=f"KL(q(z|x) ‖ p(z)) = {kl:.3g}")
    ax.set_xticks([0], ["this run"])
    ax.set_xlim(-1, 1)
    ax.set_ylabel("nats / point")
    ax.legend(fontsize="small", loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


# 4. KL per latent dimension --------------------------------------------------------------------


def plot_kl_per_dim(kl_per_dim: Sequence[float], *, threshold: float = 0.01) -> Figure:
    """The held-out KL of each latent dimension as bars: dimensions near 0 are unused (collapsed
    units); the count of the others is a view of the active units."""
    values = np.asarray(kl_per_dim, dtype=float)
    d = len(values)
    fig, axes = new_figure(1, size=(max(5.0, 0.35 * d + 2.0), 3.8), title="KL(q(z_j|x) ‖ p(z_j)) per latent dimension")
    ax = axes[0]
    colours = ["C0" if v > threshold else "0.7" for v in values]
    ax.bar(range(d), values, color=colours)
    ax.set_xticks(range(d), [z_label(j) for j in range(d)], fontsize="small" if d > 12 else None)
    ax.set_ylabel("nats / point")
    used = int((values > threshold).sum())
    ax.set_title(f"{used} of {d} dimensions carry more than {threshold:g} nats (grey: unused)", fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


# 5. the reparameterization trick ---------------------------------------------------------------


@torch.no_grad()
def plot_reparameterization(
    model: VariationalModel, data: Dataset, *, point: Tensor | None = None, c: Tensor | None = None,
    dims: tuple[int, int] = (0, 1), n: int = 400, generator: torch.Generator | None = None,
) -> Figure:
    """The reparameterization trick for one data point: ε ~ N(0, I) | z = μ(x) + σ(x)·ε | the
    decoded x ~ p(x|z) over the data. The randomness is all in ε, so the gradient flows through
    μ and σ (Kingma & Welling 2014, section 2.4)."""
    x0 = default_points(data.x, 1)[0] if point is None else point.to(data.x.dtype)
    c0 = None if c is None else c[row_indices(data.x, x0[None]).to(c.device)]
    dev = next(model.parameters()).device
    q = model.encode(x0[None].to(dev), c0)
    mu, sd = q.mean[0], q.stddev[0]
    eps = torch.randn(n, model.latent_dim, generator=generator, device=dev)  # (n, d)
    z = mu + sd * eps  # (n, d): z = μ(x) + σ(x)·ε
    x_new = to_numpy(sample_observation(model.decode(z, None if c0 is None else c0.expand(n, -1)), generator))
    i, j = (0, 0) if model.latent_dim == 1 else dims
    fig, axes = new_figure(3, title="The reparameterization trick for one point: z = μ(x) + σ(x)·ε")
    e, zz = to_numpy(eps), to_numpy(z)
    if model.latent_dim == 1:
        axes[0].hist(e[:, 0], bins=40, color="0.5")
        axes[0].set_xlabel("ε₁")
        axes[1].hist(zz[:, 0], bins=40, color="C0")
        axes[1].set_xlabel("z₁")
        for ax in axes[:2]:
            ax.set_ylabel("number of draws")
    else:
        axes[0].scatter(e[:, i], e[:, j], s=point_size(n), color="0.45", linewidths=0)
        axes[1].scatter(zz[:, i], zz[:, j], s=point_size(n), color="C0", linewidths=0)
        lims = view_limits(np.concatenate([e[:, [i, j]], zz[:, [i, j]], [[-2.5, -2.5], [2.5, 2.5]]]))
        for ax, (a, b) in ((axes[0], (f"ε{sub(i + 1)}", f"ε{sub(j + 1)}")), (axes[1], (z_label(i), z_label(j)))):
            for r in (1, 2):
                ax.add_patch(Circle((0, 0), r, fill=False, color="0.25", linestyle="--", linewidth=1))
            set_view(ax, lims)
            ax.set_xlabel(a)
            ax.set_ylabel(b)
    axes[0].set_title("ε ~ N(0, I): the only randomness", fontsize="medium")
    axes[1].set_title(f"z = μ(x) + σ(x)·ε\nμ = ({', '.join(f'{v:.2f}' for v in to_numpy(mu)[:2])}), "
                      f"σ = ({', '.join(f'{v:.2f}' for v in to_numpy(sd)[:2])})", fontsize="medium")
    ax = axes[2]
    if data.image_shape is None and data.dim >= 2:
        xy = _xy(to_numpy(data.x))
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="0.82", linewidths=0, label="training data")
        ax.scatter(x_new[:, 0], x_new[:, 1], s=point_size(n), color="C1", linewidths=0, label="x ~ p(x|z)")
        ax.scatter([float(x0[0])], [float(x0[1])], marker="X", s=150, color="red", edgecolor="white", zorder=5,
                   label="the point x")
        set_view(ax, view_limits(np.concatenate([xy, x_new[:, :2]])))
        _label_data_axes(ax, data.dim, data.columns)
        ax.legend(fontsize="x-small", loc="best")
    else:
        text_panel(ax, "decoded samples are images\n(see image_reconstructions)")
    ax.set_title("decoded: x ~ p(x|z) for each z", fontsize="medium")
    return fig


# 6. PCA of d > 2 codes by class ----------------------------------------------------------------


@torch.no_grad()
def plot_latent_pca(codes: Tensor, labels: np.ndarray | None, names: Sequence[str] | None) -> Figure:
    """The codes μ(x) (N, d > 2) projected on their first two principal components, coloured by
    label: a 2-D view of the whole code, where a pair of latent dimensions shows only a slice."""
    z = codes.double().cpu()
    z = z - z.mean(0)
    _, s, v = torch.linalg.svd(z, full_matrices=False)
    xy = to_numpy(z @ v[:2].T)
    share = (s[:2] ** 2 / (s**2).sum()).numpy()
    fig, axes = new_figure(1, size=(6.4, 5.0), title=f"PCA of the {codes.shape[1]}-D codes μ(x)")
    ax = axes[0]
    if labels is not None:
        scatter_labels(ax, xy, labels, names)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="C0", linewidths=0)
    ax.set_xlabel(f"PC 1 ({100 * share[0]:.0f} % of the variance)")
    ax.set_ylabel(f"PC 2 ({100 * share[1]:.0f} % of the variance)")
    set_view(ax, view_limits(xy))
    return fig


# 7. the data by label, samples over it --------------------------------------------------------


@torch.no_grad()
def plot_data_and_samples(
    model: LatentModel, data: Dataset, *, generator: torch.Generator | None = None, c: Tensor | None = None,
) -> Figure:
    """The training data coloured by label (or in grey), and the model's samples x ~ p(x|z) (with
    noise) drawn over the data in grey: where the samples fall off the data is seen at once."""
    x = to_numpy(data.x)
    xy = _xy(x)
    n = len(x)
    cc = None if c is None else c[torch.arange(n, device=c.device) % len(c)]
    prior = model.prior(cc)
    z = rsample(prior, (n,) if prior.batch_shape == torch.Size() else (), generator)
    samples = _xy(to_numpy(sample_observation(model.decode(z, cc), generator)))
    fig, axes = new_figure(2, title="The data, and the model's samples over it")
    lims = view_limits(np.concatenate([xy, samples]))
    if data.labels is not None:
        scatter_labels(axes[0], xy, data.labels.cpu().numpy(), data.label_names)
        axes[0].set_title("training data by label", fontsize="medium")
    else:
        axes[0].scatter(xy[:, 0], xy[:, 1], s=point_size(n), color="0.3", linewidths=0)
        axes[0].set_title("training data", fontsize="medium")
    axes[1].scatter(xy[:, 0], xy[:, 1], s=point_size(n), color="0.75", linewidths=0, label="training data")
    axes[1].scatter(samples[:, 0], samples[:, 1], s=point_size(n), color=label_colour(3), alpha=0.6, linewidths=0,
                    label="samples x ~ p(x|z), z ~ p(z)")
    axes[1].set_title("samples (red) over the data (grey)", fontsize="medium")
    add_legend(axes[1], 2)
    for ax in axes:
        set_view(ax, lims)
        _label_data_axes(ax, data.dim, data.columns)
    return fig


# 8. before and after training ------------------------------------------------------------------

BEFORE_AFTER_POINTS = 400  # data points reconstructed (and samples drawn) per panel of point data
BEFORE_AFTER_IMAGES = 10  # images per row of the image version


def initial_model(model: LatentModel, config: RunConfig) -> LatentModel:
    """The run's model at step 0, before any update: ``build_model`` with the run's seed, which is
    what ``vaelab train`` starts from (``train.run.new_model``); the initial weights are a pure
    function of the model config, the data's width, the condition's and ``train.seed``, so they
    are rebuilt, not stored (with ``model.output_bias = "data-mean"`` the training split is read
    again for its mean). On the trained model's device and dtype, in eval mode."""
    ref = next(model.parameters())
    train_x = None
    if config.model.output_bias == "data-mean":
        train_x = train_pixels(config, data_registry.load_dataset(config.data, "train"))
    before = build_model(config.model, model.x_dim, getattr(model, "cond_dim", 0), seed=config.train.seed,
                         cond_embed=getattr(model, "cond_embed", ()), train_x=train_x)
    return before.to(device=ref.device, dtype=ref.dtype).eval()


@torch.no_grad()
def neg_elbo(model: LatentModel, x: Tensor, c: Tensor | None = None, *, seed: int = 0) -> float:
    """−ELBO (β = 1, one draw z ~ q(z|x) per point) of the points x, nats per point; for an
    autoencoder its reconstruction loss −log p(x|f(x))."""
    if isinstance(model, VariationalModel):
        generator = torch.Generator(device=x.device).manual_seed(seed)
        out = elbo(model, x, c, generator=generator)
        return float(out.recon + out.kl)
    return float(ae_loss(model, x, c).recon)


@torch.no_grad()
def plot_before_after(
    before: LatentModel, after: LatentModel, data: Dataset, *, c: Tensor | None = None,
    scored: Tensor | None = None, epochs: int | None = None, generator_seed: int = 0,
) -> Figure:
    """The untrained model (step 0) over the trained one: its samples x ~ p(x|z), z ~ p(z), and
    its reconstructions E[x|z] at the code of data points, each row under its −ELBO on those
    points. Point data: scatter panels over the data (grey), reconstructions joined to their
    points by a line, one view for all four panels. Images: originals over their
    reconstructions, and decoder means of prior samples. The same noise in both rows.

    ``c``: each data point's condition (a conditional model reconstructs x with its own c, and
    draws one sample per point with that point's c). ``scored``: the points the −ELBO is
    computed on (data.x by default; binarized images for a Bernoulli run).
    """
    dev = next(after.parameters()).device
    image = data.image_shape is not None
    n = min(len(data), BEFORE_AFTER_IMAGES if image else BEFORE_AFTER_POINTS)
    x = data.x[:n].to(dev)
    cc = None if c is None else c[:n].to(dev)
    x_scored = x if scored is None else scored[:n].to(dev)
    after_words = "after training" + (f" ({epochs} epochs)" if epochs is not None else "")
    rows = [("before training (step 0)", before), (after_words, after)]
    drawn = []
    for _, model in rows:
        gen = torch.Generator(device=dev).manual_seed(generator_seed)  # the same z in both rows
        samples = model.sample(n, cc, generator=gen, noise=not image)
        recon = model.reconstruct(x, cc)
        drawn.append((samples, recon, neg_elbo(model, x_scored, cc, seed=generator_seed)))
    what = "−ELBO" if isinstance(after, VariationalModel) else "reconstruction loss"
    fig, axes = new_figure(2, 2, size=(4.6, 4.2) if not image else (4.6, 2.6),
                           title=f"Before training (the seeded initial weights) and after: samples and "
                                 f"reconstructions, {what} of the shown points")
    if image:
        from vaelab.plots.images import as_images, show, tile

        shape = data.image_shape
        assert shape is not None
        for r, ((row, _), (samples, recon, loss)) in enumerate(zip(rows, drawn, strict=True)):
            pair = np.concatenate([as_images(x, shape), as_images(recon, shape)])
            show(axes[2 * r], tile(pair, n), f"{row}: images (top) and their reconstructions; {what} "
                                             f"{loss:.1f} nats")
            show(axes[2 * r + 1], tile(as_images(samples, shape), n // 2 or 1),
                 f"{row}: samples E[x|z], z ~ p(z)")
        return fig
    xy = _xy(to_numpy(data.x))
    shown = [xy] + [_xy(to_numpy(t)) for samples, recon, _ in drawn for t in (samples, recon)]
    lims = view_limits(np.concatenate(shown))
    x_np = _xy(to_numpy(x))
    for r, ((row, _), (samples, recon, loss)) in enumerate(zip(rows, drawn, strict=True)):
        ax_s, ax_r = axes[2 * r], axes[2 * r + 1]
        s_np, r_np = _xy(to_numpy(samples)), _xy(to_numpy(recon))
        for ax in (ax_s, ax_r):
            ax.scatter(xy[:, 0], xy[:, 1], s=point_size(len(xy)), color="0.8", linewidths=0, zorder=0,
                       label="data")
        ax_s.scatter(s_np[:, 0], s_np[:, 1], s=point_size(n), color=label_colour(3), alpha=0.7, linewidths=0,
                     label="samples")
        ax_s.set_title(f"{row}\nsamples x ~ p(x|z), z ~ p(z) (with noise)", fontsize="medium")
        m = min(n, 60)  # lines from a few points to their reconstructions
        ax_r.plot(np.stack([x_np[:m, 0], r_np[:m, 0]]), np.stack([x_np[:m, 1], r_np[:m, 1]]), color="C0",
                  linewidth=0.5, alpha=0.5, zorder=1)
        ax_r.scatter(r_np[:, 0], r_np[:, 1], s=point_size(n), color="C0", linewidths=0, zorder=2,
                     label="reconstructions")
        ax_r.set_title(f"{row}\nreconstructions E[x|z] (lines from x); {what} {loss:.3g}", fontsize="medium")
        for ax in (ax_s, ax_r):
            set_view(ax, lims)
            _label_data_axes(ax, data.dim, data.columns)
    handles = [axes[0].collections[0], axes[0].collections[1], axes[1].collections[-1]]
    fig.legend(handles, ["data", "samples", "reconstructions"], loc="outside lower center", ncols=3,
               fontsize="small", markerscale=3)
    return fig


# registry ---------------------------------------------------------------------------------------


def _held_out(ctx: PlotContext, n: int) -> tuple[Tensor, Tensor | None, float | None]:
    """Up to n held-out points of the run (its test split; the context's data without a config),
    their conditions, and their true −log p(x) where the data knows it."""
    test = data_registry.load_dataset(ctx.config.data, "test") if ctx.config is not None else ctx.data
    x = test.x[:n]
    c = None
    if ctx.is_conditional and ctx.condition is not None:
        c = ctx.condition.tensor(test)[:n]
    true_nll = None
    if c is None and test.log_prob is not None:
        true_nll = float(-test.log_prob(x).double().mean())
    return x, c, true_nll


def _iwae_vs_k(ctx: PlotContext) -> Figure:
    x, c, true_nll = _held_out(ctx, IWAE_POINTS)
    return plot_iwae_vs_k(_require_vae(ctx.model, "the IWAE-vs-k figure"), x, c, generator=ctx.generator(801),
                          true_nll=true_nll)


def _true_posterior(ctx: PlotContext) -> Figure:
    return plot_true_posterior(_require_vae(ctx.model, "the true-posterior figure"), ctx.data, points=ctx.points,
                               c=ctx.c)


def _rate_split(ctx: PlotContext) -> Figure:
    return plot_rate_split(ctx.metrics)


def _kl_per_dim(ctx: PlotContext) -> Figure:
    return plot_kl_per_dim(ctx.metrics["kl_per_dim"])


def _reparameterization(ctx: PlotContext) -> Figure:
    point = None if ctx.points is None else ctx.points[0]
    return plot_reparameterization(_require_vae(ctx.model, "the reparameterization figure"), ctx.data, point=point,
                                   c=ctx.c, dims=ctx.dims, generator=ctx.generator(802))


def _latent_pca(ctx: PlotContext) -> Figure:
    return plot_latent_pca(ctx.codes(), ctx.labels, ctx.data.label_names)


def _data_and_samples(ctx: PlotContext) -> Figure:
    return plot_data_and_samples(ctx.model, ctx.data, generator=ctx.generator(803), c=ctx.c)


def _before_after(ctx: PlotContext) -> Figure:
    assert ctx.config is not None
    scored = None
    if ctx.is_image:  # a Bernoulli run scores binarized pixels: the fixed draw evaluation uses
        from vaelab.data.pixels import eval_view

        scored = eval_view(ctx.config, ctx.data)[0].x
    epochs = int(ctx.history.last["epoch"]) if ctx.history is not None and ctx.history.last else None
    return plot_before_after(initial_model(ctx.model, ctx.config), ctx.model, ctx.data, c=ctx.c, scored=scored,
                             epochs=epochs, generator_seed=ctx.seed * 7919 + 804)


def _rebuildable(ctx: PlotContext) -> str | None:
    if ctx.config is None:
        return "needs the run's config: the untrained model is rebuilt from it and its seed"
    if not ctx.is_image and ctx.data.dim < 2:
        return f"needs at least 2 data coordinates to draw (this data has D = {ctx.data.dim})"
    return None


def _two_d_latent(ctx: PlotContext) -> str | None:
    d = ctx.model.latent_dim
    return None if d == 2 else f"the true posterior is drawn on a 2-D latent grid (d = {d})"


# Why an evaluation leaves a metric out, for the skip notice of a run that was evaluated.
_NOT_COMPUTED = {
    "kl_per_dim": "this model's KL does not split per latent dimension (no closed form per dimension: a flow "
                  "posterior or a learned prior); kl_per_layer shows a hierarchical model's split",
}


def _needs_metric(*keys: str):  # noqa: ANN202 (a check)
    def check(ctx: PlotContext) -> str | None:
        missing = [k for k in keys if k not in ctx.metrics]
        if not missing:
            return None
        if not any(k in ctx.metrics for k in ("iwae_nll", "elbo", "recon")):  # never evaluated
            return f"needs the held-out {', '.join(missing)} (run vaelab eval)"
        why = "; ".join(_NOT_COMPUTED.get(k, f"the evaluation reports no {k} for this model") for k in missing)
        return f"needs the held-out {', '.join(missing)}: {why}"

    return check


def _wide_latent(ctx: PlotContext) -> str | None:
    return None if ctx.model.latent_dim > 2 else "d ≤ 2: latent_space shows the whole code"


FIGURES = [
    FigureSpec("before_after", _before_after,
               "The same model before training (its seeded initial weights, step 0) and after: an untrained "
               "decoder maps every z to nearly the same place, so its samples and reconstructions sit in a blob "
               "whatever x was; training spreads the samples over the data and pulls each reconstruction to its "
               "own point (short lines). The −ELBO in the titles is on the shown points.",
               _rebuildable, title="Before and after training"),
    FigureSpec("data_and_samples", _data_and_samples,
               "The training data by label, and the model's noisy samples over the data: samples should fall on "
               "the data and nowhere else.", needs_point_data, title="Data and samples over it"),
    FigureSpec("reparameterization", _reparameterization,
               "ε ~ N(0, I) becomes z = μ(x) + σ(x)·ε for one point x, then x ~ p(x|z): the draw is a deterministic, "
               "differentiable function of μ and σ, which is what lets the gradient reach the encoder.",
               all_of(needs_normal_posterior, needs_standard_prior), title="The reparameterization trick"),
    FigureSpec("true_posterior", _true_posterior,
               "The exact posterior p(z|x) ∝ p(x|z)p(z) on a grid beside q(z|x)'s ellipses: the ELBO is below "
               "log p(x) by KL(q(z|x) ‖ p(z|x)), the mismatch seen here.",
               all_of(needs_normal_posterior, _two_d_latent), title="True posterior vs q(z|x)", heavy=True),
    FigureSpec("iwae_vs_k", _iwae_vs_k,
               "The IWAE bound L_k on held-out points for k = 1 … 1000: L_1 is the ELBO, and L_k rises towards "
               "log p(x); the rise is how loose the ELBO is.", needs_vae, title="IWAE bound against k", heavy=True),
    FigureSpec("rate_split", _rate_split,
               "The KL term split into I(x; z), what the code says about x, and KL(q(z) ‖ p(z)), how far the codes "
               "together are from the prior: a collapsed code has I(x; z) ≈ 0, whatever its KL.",
               _needs_metric("mutual_info", "marginal_kl", "kl"), title="KL = I(x; z) + marginal KL"),
    FigureSpec("kl_per_dim", _kl_per_dim,
               "The held-out KL of each latent dimension: grey bars are unused dimensions.",
               _needs_metric("kl_per_dim"), title="KL per latent dimension"),
    FigureSpec("latent_pca", _latent_pca,
               "The codes of all d dimensions on their first two principal components, by class: a pair of "
               "dimensions (latent_space) shows only a slice of a d > 2 code.", _wide_latent,
               title="PCA of the latent codes"),
]

__all__ = [
    "initial_model", "neg_elbo", "plot_before_after",
    "plot_data_and_samples", "plot_iwae_vs_k", "plot_kl_per_dim", "plot_latent_pca", "plot_rate_split",
    "plot_reparameterization", "plot_true_posterior",
]
