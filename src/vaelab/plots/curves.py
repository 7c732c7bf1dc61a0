"""Training curves: total loss, reconstruction, KL (log scale) and diversity against epoch.

A failed run (a NaN / infinite loss) keeps its finite epochs on the curves and marks the
epoch where training stopped in red on every panel, so the report shows *where* it broke.

The diversity column is Var(E[x|z]), z ~ p(z): the spread of decoder *means*. By the law of
total variance a model whose samples match the data has

    Var(x) = Var(E[x|z]) + E_z tr Cov(x|z),

so its diversity should reach Var(x) − E_z tr Cov(x|z), not Var(x): a model that explains part
of the data's spread as observation noise sits below the data variance, correctly. The panel
draws that reference (with the final model's noise) and the data variance itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vaelab.history import History
from vaelab.models import LatentModel
from vaelab.plots.common import FigureSpec, PlotContext, needs_history, new_figure, text_panel

NOISE_SAMPLES = 2048  # prior draws for E_z tr Cov(x|z): once per figure, more than the per-epoch diversity column


def failure_epoch(history: History, failure: dict[str, Any] | None = None) -> int | None:
    """The epoch where training stopped on a non-finite loss, or None when it did not."""
    if failure is not None and "epoch" in failure:
        return int(failure["epoch"])
    for row in history.rows:
        if not math.isfinite(float(row["loss"])):
            return int(row["epoch"])
    return None


def plot_training_curves(
    history: History,
    failure: dict[str, Any] | None = None,
    *,
    data_variance: float | None = None,
    noise_variance: float | None = None,
    loss_label: str = "total loss (training objective)",
    title: str | None = None,
) -> Figure:
    """Four panels against epoch: loss, reconstruction -E log p(x|z), KL (log y) and diversity.

    The loss panel carries, on a twin axis, the β the KL schedule used in each epoch ("β used",
    the history's ``beta`` column) for runs with a KL term.

    Diversity is Var(E[x|z]), z ~ p(z), summed over coordinates. ``data_variance`` is Var(x)
    of the training data (summed over coordinates) and ``noise_variance`` the model's
    E_z tr Cov(x|z) (see :func:`expected_noise_variance`). A model whose samples match the
    data reaches Var(x) − E tr Cov(x|z) (dashed), below Var(x) (dotted) by the observation
    noise; a diversity near 0 means every z decodes to the same x (posterior collapse).
    ``loss_label`` names what the loss column is (for IWAE it is −L_k, not recon + KL).
    """
    fig, axes = new_figure(2, 2, size=(5.0, 3.4), title=title or "Training curves")
    if len(history) == 0:
        for ax in axes:
            text_panel(ax, "no epochs recorded")
        return fig
    epoch = np.array(history.column("epoch"), dtype=float)
    marker = "o" if len(epoch) <= 30 else None
    bad = failure_epoch(history, failure)
    panels = [
        ("loss", "total loss (nats / point)", loss_label),
        ("recon", "reconstruction (nats / point)", "reconstruction  −E log p(x|z)"),
        ("kl", "KL (nats / point, log scale)", "KL(q(z|x) ‖ p(z))"),
        ("diversity", "variance of samples", "diversity of prior samples"),
    ]
    for ax, (col, ylabel, panel_title) in zip(axes, panels, strict=True):
        y = np.array(history.column(col), dtype=float)
        ok = np.isfinite(y)
        if col == "kl":
            ok &= y > 0
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if not ok.any():
            text_panel(
                ax, "no KL term (autoencoder)" if col == "kl" and np.all(y[np.isfinite(y)] == 0) else "no finite values"
            )
        else:
            ax.plot(epoch[ok], y[ok], marker=marker, markersize=3, color="C0", label=col)
            if col == "kl":
                ax.set_yscale("log")
        if col == "diversity" and data_variance is not None and math.isfinite(data_variance):
            if noise_variance is not None and math.isfinite(noise_variance):
                ax.axhline(data_variance - noise_variance, color="0.2", linestyle="--", linewidth=1.2,
                           label="Var(x) − E tr Cov(x|z): reached by a\ncorrect model (noise of the final model)")
            ax.axhline(data_variance, color="0.55", linestyle=":", linewidth=1.2,
                       label="Var(x) of the data (includes noise)")
            ax.legend(fontsize="x-small", loc="lower right")
        if col == "loss":
            _draw_beta(ax, history, epoch, marker)
        if bad is not None:
            ax.axvline(bad, color="red", linewidth=1.5, linestyle=":")
    if bad is not None:
        fig.suptitle(
            f"Training curves — training stopped: the loss became NaN / infinite at epoch {bad}",
            color="red",
            fontsize="large",
        )
    return fig


def _draw_beta(ax: Any, history: History, epoch: np.ndarray, marker: str | None) -> None:
    """β used (the history's per-epoch mean of the schedule) on a twin axis of the loss panel.

    Not drawn for runs without a KL term (an autoencoder: KL 0 throughout) or histories
    written before the column existed (NaN).
    """
    beta = np.array([float(r.get("beta", math.nan)) for r in history.rows], dtype=float)  # rows may predate it
    kl = np.array(history.column("kl"), dtype=float)
    ok = np.isfinite(beta)
    if not ok.any() or np.all(kl[np.isfinite(kl)] == 0):
        return
    twin = ax.twinx()
    twin.plot(epoch[ok], beta[ok], color="C1", linestyle="--", marker=marker, markersize=2, label="β used")
    twin.set_ylabel("β used", color="C1")
    twin.tick_params(axis="y", colors="C1")
    twin.set_ylim(bottom=0, top=max(1e-12, float(beta[ok].max())) * 1.05)
    twin.legend(fontsize="x-small", loc="upper right")


@torch.no_grad()
def expected_noise_variance(
    model: LatentModel, n: int = NOISE_SAMPLES, *, c: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """E_{z ~ p(z)} tr Cov(x|z, c): the observation-noise variance of the decoder, summed over
    the D data coordinates and averaged over ``n`` prior draws (a Monte Carlo estimate).

    Gaussian heads: Σ_i σ_i²(z) (D·σ² for a fixed σ²); Bernoulli: Σ_i p_i(z)(1 − p_i(z)).
    ``c``: (n, C) conditions for a conditional model, one per draw.
    """
    from vaelab.distributions import rsample

    prior = model.prior(c)
    z = rsample(prior, (n,) if prior.batch_shape == torch.Size() else (), generator)  # (n, d): z ~ p(z|c)
    p_x = model.decode(z, c)
    return float(p_x.variance.double().sum(dim=-1).mean())  # variance: (n, D)


def data_variance(ctx: PlotContext) -> float:
    """Var(x) of the data the model is trained on, summed over coordinates.

    Binarized images (x_bin ~ Bernoulli(g) per pixel, dynamic or fixed) have per-pixel
    variance m(1 − m), m the mean grey level of that pixel over the data, since x_bin² = x_bin.
    """
    x = ctx.data.x.double()
    mode = "none"
    if ctx.config is not None and ctx.is_image:
        from vaelab.data.pixels import resolve_binarize

        mode = resolve_binarize(ctx.config, ctx.data)
    if mode == "none":
        return float(x.var(dim=0).sum())
    m = x.mean(dim=0)
    return float((m * (1 - m)).sum())


def loss_label(ctx: PlotContext) -> str:
    """What the history's loss column is for this run (it is recon + β·KL only for the ELBO)."""
    from vaelab.train import objective_name

    cfg = ctx.config
    if not ctx.is_vae:
        return "total loss = reconstruction (autoencoder)"
    if cfg is None:
        return "total loss (training objective)"
    objective = objective_name(ctx.model, cfg.train)
    if objective == "iwae":
        return f"total loss = −L_k, the IWAE bound (k = {cfg.train.k}),\nnot reconstruction + KL"
    if objective != "elbo":
        return f"total loss ({objective})"
    t = cfg.train
    if t.free_bits == 0 and t.beta_schedule == "constant":
        return f"total loss = −ELBO = reconstruction + β·KL (β = {t.beta:g})"
    weight = "β" if t.beta_schedule == "constant" else "β_t"
    per = "dimension" if t.free_bits_group == "dim" else "latent"
    kl = "KL" if t.free_bits == 0 else f"max(λ, KL) (λ = {t.free_bits:g} nats per {per})"
    note = f"β = {t.beta:g}" if t.beta_schedule == "constant" else f"β_t: {t.beta_schedule} to {t.beta:g} (dashed)"
    return f"total loss = reconstruction + {weight}·{kl},\n{note}"


def _training_curves(ctx: PlotContext) -> Figure:
    assert ctx.history is not None
    c = None
    if ctx.condition is not None and ctx.is_conditional:
        # Conditions of random training points, as the diversity column draws them.
        c_all = ctx.condition.tensor(ctx.data).to(ctx.device)
        rows = torch.randint(len(c_all), (NOISE_SAMPLES,), generator=ctx.generator(701), device=ctx.device)
        c = c_all[rows]
    noise = expected_noise_variance(ctx.model, c=c, generator=ctx.generator(702))
    return plot_training_curves(ctx.history, ctx.failure, data_variance=data_variance(ctx),
                                noise_variance=noise, loss_label=loss_label(ctx))


FIGURES = [
    FigureSpec(
        "training_curves",
        _training_curves,
        "Loss, reconstruction, KL and diversity per epoch: the loss should flatten (for IWAE runs it is "
        "−L_k, not reconstruction + KL); a KL near 0 with diversity near 0 is posterior collapse. "
        "Diversity is the variance of decoder means E[x|z]: a model that fits the data reaches "
        "Var(x) − E tr Cov(x|z) (dashed), below the data variance Var(x) (dotted) by its observation noise.",
        needs_history,
        title="Training curves",
    ),
]
