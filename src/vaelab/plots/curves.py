"""Training curves: total loss, reconstruction, KL and diversity against epoch; and the loss
terms on one axis.

A failed run (a NaN / infinite loss) keeps its finite epochs on the curves and marks the
epoch where training stopped in red on every panel, so the report shows *where* it broke.

The diversity column is Var(E[x|z]), z ~ p(z): the spread of decoder *means*. By the law of
total variance the model's noisy samples x ~ p(x) have

    Var(x ~ p(x)) = Var(E[x|z]) + E_z tr Cov(x|z),

and a model whose samples match the data has Var(x ~ p(x)) = Var(x). The panel draws the
diversity per epoch, the total variance of the final model's noisy samples (diversity + its
noise) and the data's Var(x): a reference that never depends on the model, and is never
negative. Matching it is a second-moment check, necessary and not sufficient (a model that
explains the whole data as noise matches it too).

Where the history holds held-out columns (``heldout_elbo``, ``heldout_recon``, ``heldout_kl``:
a fixed subset of the test split scored at the end of each epoch), the loss, reconstruction and
KL panels draw them dashed beside the training values, in the same colour: the training −ELBO
against the held-out −ELBO. A held-out curve that turns up while the training one keeps falling,
a gap that widens, is overfitting.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from vaelab.data.pixels import resolve_binarize
from vaelab.distributions import rsample
from vaelab.history import History
from vaelab.models import LatentModel
from vaelab.objectives import describe_loss, get_objective, objective_name, weights_kl
from vaelab.plots.common import FigureSpec, PlotContext, add_legend, needs_history, new_figure, text_panel

CURVES_PANEL = (5.0, 3.4)  # inches per panel of the training curves
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
    mutual_info: float | None = None,
    loss_note: str = "",
) -> Figure:
    """Four panels against epoch: loss, reconstruction -E log p(x|z), KL and diversity.

    The loss panel also draws −ELBO = reconstruction + KL (β = 1, the bound every objective
    is evaluated with) where the training loss is another objective, and, on a twin axis, the β
    the KL schedule used in each epoch where β changes over training, and the learning rate
    where it changes (on the reconstruction panel's twin axis when β has the loss panel's). ``loss_note``: one line
    under the loss panel's title (why a term may rise while the loss falls).

    The KL panel (log scale where it spans more than a decade) carries the final held-out
    I(x; z) (``mutual_info``): the KL is not the collapse signal, the mutual information is.

    Held-out columns in the history (``History.has_heldout``) are drawn dashed in the colour of
    the training value they match: −heldout_elbo beside −ELBO = recon + KL of the training
    batches (or, for an autoencoder, heldout_recon beside its loss), heldout_recon and
    heldout_kl in their panels; the loss panel's legend gives the last epoch's gap.

    Diversity is Var(E[x|z]), z ~ p(z), summed over coordinates. ``data_variance`` is Var(x)
    of the training data (summed over coordinates), the reference line; ``noise_variance`` the
    final model's E_z tr Cov(x|z) (see :func:`expected_noise_variance`), drawn as the total
    variance of its noisy samples at the last epoch (diversity + noise), which should reach Var(x).
    """
    fig, axes = new_figure(2, 2, size=CURVES_PANEL, title=title or "Training curves")
    if len(history) == 0:
        for ax in axes:
            text_panel(ax, "no epochs recorded")
        return fig
    epoch = np.array(history.column("epoch"), dtype=float)
    marker = "o" if len(epoch) <= 30 else None
    bad = failure_epoch(history, failure)
    recon = np.array(history.column("recon"), dtype=float)
    kl = np.array(history.column("kl"), dtype=float)
    no_kl = bool(np.all(kl[np.isfinite(kl)] == 0))
    heldout = history.has_heldout()
    beta_drawn = False
    panels = [
        ("loss", "nats / point", loss_label + (f"\n{loss_note}" if loss_note else "")),
        ("recon", "reconstruction (nats / point)", "reconstruction  −E log p(x|z)"),
        ("kl", "KL (nats / point)", "KL(q(z|x) ‖ p(z))" + ("" if mutual_info is None else " and the final I(x; z)")),
        ("diversity", "variance (summed over coordinates)",
         "diversity Var(E[x|z]) of prior samples: a necessary check"),
    ]
    for ax, (col, ylabel, panel_title) in zip(axes, panels, strict=True):
        y = np.array(history.column(col), dtype=float)
        ok = np.isfinite(y)
        if col == "kl":
            ok &= y > 0
        # Wrapped to the panel (about 8 characters per inch), so a long loss label spans lines
        # instead of running over the next panel.
        ax.set_title("\n".join(textwrap.fill(line, int(8 * CURVES_PANEL[0])) for line in panel_title.splitlines()),
                     fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        if not ok.any():
            text_panel(ax, "no KL term (autoencoder)" if col == "kl" and no_kl else "no finite values")
        else:
            ax.plot(epoch[ok], y[ok], marker=marker, markersize=3, color="C0",
                    label={"loss": "training loss", "diversity": "Var(E[x|z]) per epoch",
                           "kl": "KL per epoch", "recon": "reconstruction"}.get(col, col))
            if col == "kl" and y[ok].max() / y[ok].min() > 10:
                ax.set_yscale("log")
                ax.set_ylabel("KL (nats / point, log scale)")
        if col == "loss" and not no_kl:
            neg_elbo = recon + kl
            same = np.allclose(neg_elbo[np.isfinite(neg_elbo)], y[np.isfinite(y)], rtol=1e-5, atol=1e-6) if (
                np.isfinite(neg_elbo).sum() == np.isfinite(y).sum()) else False
            elbo_colour = "C0" if same else "C2"
            if not same and np.isfinite(neg_elbo).any():
                fin = np.isfinite(neg_elbo)
                ax.plot(epoch[fin], neg_elbo[fin], color="C2", linewidth=1.2,
                        label="training −ELBO = reconstruction + KL (β = 1)")
            if heldout:
                _draw_heldout(ax, epoch, -np.array(history.column("heldout_elbo"), dtype=float), neg_elbo,
                              elbo_colour, "held-out −ELBO (β = 1)")
            ax.legend(fontsize="x-small", loc="best" if heldout else "upper right", framealpha=0.9)
            beta_drawn = _draw_beta(ax, history, epoch, marker)
        elif col == "loss" and heldout:  # an autoencoder: its loss is the reconstruction
            _draw_heldout(ax, epoch, np.array(history.column("heldout_recon"), dtype=float), y, "C0",
                          "held-out reconstruction")
            ax.legend(fontsize="x-small", loc="upper right")
        if col in ("recon", "kl") and heldout and ok.any() and not (col == "kl" and no_kl):
            _draw_heldout(ax, epoch, np.array(history.column(f"heldout_{col}"), dtype=float), None, "C0",
                          f"held-out {'reconstruction' if col == 'recon' else 'KL'}")
            ax.legend(fontsize="x-small", loc="best")
        if col == "kl" and mutual_info is not None and math.isfinite(mutual_info) and ok.any():
            if ax.get_yscale() == "log" and mutual_info <= 0:
                ax.text(0.02, 0.04, f"final I(x; z) = {mutual_info:.3g} nats (≤ 0: off the log axis)",
                        transform=ax.transAxes, fontsize="x-small", color="C3")
            else:
                ax.axhline(mutual_info, color="C3", linestyle="--", linewidth=1.2,
                           label=f"final held-out I(x; z) = {mutual_info:.3g} nats")
                ax.legend(fontsize="x-small", loc="best")
        if col == "diversity" and data_variance is not None and math.isfinite(data_variance):
            ax.axhline(data_variance, color="0.3", linestyle=":", linewidth=1.4,
                       label="Var(x) of the data: the reference")
            if noise_variance is not None and math.isfinite(noise_variance) and ok.any():
                last = int(np.flatnonzero(ok)[-1])
                total = float(y[last]) + noise_variance
                ax.scatter([epoch[last]], [total], marker="*", s=120, color="C1", zorder=5,
                           label="final model: Var(E[x|z]) + E tr Cov(x|z)\n(total variance of noisy samples)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize="x-small", loc="best", framealpha=0.9)
        if bad is not None:
            ax.axvline(bad, color="red", linewidth=1.5, linestyle=":")
    # The learning rate beside the loss; where β already has that twin axis, beside the reconstruction.
    _draw_lr(axes[1] if beta_drawn else axes[0], history, epoch, marker)
    if bad is not None:
        fig.suptitle(
            f"Training curves — training stopped: the loss became NaN / infinite at epoch {bad}",
            color="red",
            fontsize="large",
        )
    return fig


def _draw_heldout(ax: Any, epoch: np.ndarray, held: np.ndarray, train: np.ndarray | None, colour: str,
                  what: str) -> None:
    """A held-out column dashed in the colour of the training value it matches (markers where
    only some epochs were scored); with ``train``, the gap at the last scored epoch in the label."""
    ok = np.isfinite(held)
    if not ok.any():
        return
    sparse = ok.sum() < len(held)
    label = what + (" (scored every few epochs)" if sparse else "")
    if train is not None:
        last = int(np.flatnonzero(ok)[-1])
        if math.isfinite(float(train[last])):
            gap = float(held[last] - train[last])
            label += f"\nlast gap held-out − training: {gap:+.3g} nats"
    ax.plot(epoch[ok], held[ok], color=colour, linestyle="--", linewidth=1.4, marker="o" if sparse else None,
            markersize=3, label=label)


def _draw_lr(ax: Any, history: History, epoch: np.ndarray, marker: str | None) -> bool:
    """The learning rate used (the history's ``lr``: each epoch's last step) on a twin axis of
    ``ax``, where it changes over training: a schedule (cosine, burda's stages) or the halvings of
    ``--nonfinite skip``. Returns whether it drew one."""
    lr = np.array([float(r.get("lr", math.nan)) for r in history.rows], dtype=float)  # rows may lack it
    ok = np.isfinite(lr)
    if not ok.any() or np.ptp(lr[ok]) == 0:
        return False
    twin = ax.twinx()
    twin.plot(epoch[ok], lr[ok], color="C4", linestyle="-.", marker=marker, markersize=2,
              label="learning rate (each epoch's last step)")
    twin.set_ylabel("learning rate (dash-dot)", color="C4")
    twin.tick_params(axis="y", colors="C4")
    twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    twin.set_ylim(bottom=0, top=float(lr[ok].max()) * 1.05)  # no legend: the axis, in the line's colour, names it
    return True


def _draw_beta(ax: Any, history: History, epoch: np.ndarray, marker: str | None) -> bool:
    """β used (the history's per-epoch mean of the schedule) on a twin axis of the loss panel.

    Drawn only where β changes over training (a schedule): a constant β is in the title. Not
    drawn for runs without a KL term (an autoencoder: KL 0 throughout) or histories written
    before the column existed (NaN). Returns whether it drew one.
    """
    beta = np.array([float(r.get("beta", math.nan)) for r in history.rows], dtype=float)  # rows may predate it
    kl = np.array(history.column("kl"), dtype=float)
    ok = np.isfinite(beta)
    if not ok.any() or np.all(kl[np.isfinite(kl)] == 0) or np.ptp(beta[ok]) == 0:
        return False
    twin = ax.twinx()
    twin.plot(epoch[ok], beta[ok], color="C1", linestyle="--", marker=marker, markersize=2, label="β used")
    twin.set_ylabel("β used", color="C1")
    twin.tick_params(axis="y", colors="C1")
    twin.set_ylim(bottom=0, top=max(1e-12, float(beta[ok].max())) * 1.05)
    twin.legend(fontsize="x-small", loc="center right")
    return True


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
        mode = resolve_binarize(ctx.config, ctx.data)
    if mode == "none":
        return float(x.var(dim=0).sum())
    m = x.mean(dim=0)
    return float((m * (1 - m)).sum())


def loss_label(ctx: PlotContext) -> str:
    """What the history's loss column is for this run, in the objective registry's words
    (``objectives.describe_loss``). An objective that draws k samples per point trains on −L_k,
    which is not the reconstruction + KL of the next two panels: the title says so."""
    cfg = ctx.config
    if cfg is None:
        return "total loss (training objective)"
    label = f"total loss = {describe_loss(ctx.model, cfg.train)}"
    if get_objective(objective_name(ctx.model, cfg.train)).uses_k:
        label += ", not reconstruction + KL"
    return label


def loss_note(ctx: PlotContext) -> str:
    """One line on what the training loss optimises where the curves could mislead: an IWAE
    run's reconstruction may rise while −L_k falls; a weighted objective is no bound."""
    cfg = ctx.config
    if cfg is None:
        return ""
    objective = get_objective(objective_name(ctx.model, cfg.train))
    if objective.uses_k and cfg.train.k > 1:
        return ("IWAE trains −L_k: its q(z|x) is broader than the ELBO's, so the reconstruction and −ELBO may "
                "rise while −L_k falls")
    if objective.uses_beta and weights_kl(cfg.train):
        return "a weighted objective: compare runs by −ELBO (β = 1), not by this loss"
    if not ctx.is_vae:
        return "the autoencoder's loss is its reconstruction"
    return ""


def _final_mi(ctx: PlotContext) -> float | None:
    mi = ctx.metrics.get("mutual_info")
    return None if mi is None else float(mi)


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
                                noise_variance=noise, loss_label=loss_label(ctx), mutual_info=_final_mi(ctx),
                                loss_note=loss_note(ctx))


def plot_loss_terms(history: History, *, beta_label: str = "β", loss_label: str = "training loss") -> Figure:
    """The loss terms per epoch on one axis: reconstruction, KL, β·KL (the β the schedule used)
    and the training loss, so their relative size shows (a log axis where all are positive)."""
    fig, axes = new_figure(1, size=(7.0, 4.4), title="Loss terms on one axis")
    ax = axes[0]
    if len(history) == 0:
        text_panel(ax, "no epochs recorded")
        return fig
    epoch = np.array(history.column("epoch"), dtype=float)
    recon = np.array(history.column("recon"), dtype=float)
    kl = np.array(history.column("kl"), dtype=float)
    loss = np.array(history.column("loss"), dtype=float)
    beta = np.array([float(r.get("beta", math.nan)) for r in history.rows], dtype=float)
    curves = [("reconstruction −E log p(x|z)", recon, "C0", "-"), ("training loss: " + loss_label, loss, "k", "-")]
    if not np.all(kl[np.isfinite(kl)] == 0):
        curves.insert(1, ("KL(q(z|x) ‖ p(z))", kl, "C1", "-"))
        if np.isfinite(beta).any() and not np.allclose(beta[np.isfinite(beta)], 1.0):
            curves.insert(2, (f"{beta_label} · KL (the weighted term)", beta * kl, "C1", "--"))
    values = np.concatenate([v[np.isfinite(v)] for _, v, _, _ in curves])
    for name, v, colour, style in curves:
        ok = np.isfinite(v)
        ax.plot(epoch[ok], v[ok], color=colour, linestyle=style, linewidth=1.6, label=name)
    if len(values) and values.min() > 0 and values.max() / values.min() > 10:
        ax.set_yscale("log")
        ax.set_ylabel("nats / point (log scale)")
    else:
        ax.set_ylabel("nats / point")
        ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    add_legend(ax, len(curves))
    return fig


def _loss_terms(ctx: PlotContext) -> Figure:
    assert ctx.history is not None
    return plot_loss_terms(ctx.history, loss_label=loss_label(ctx).removeprefix("total loss = "))


FIGURES = [
    FigureSpec(
        "training_curves",
        _training_curves,
        "Loss, reconstruction, KL and diversity per epoch. The loss should flatten; where it is another objective "
        "than the ELBO (IWAE's −L_k, a β-weighted loss) the panel also draws −ELBO = reconstruction + KL (β = 1). "
        "Dashed, in the same colour: the same quantity on held-out points (a fixed subset of the test split, "
        "scored at each epoch's end; the training value is the mean over the epoch's batches). Held-out above "
        "training is normal; a gap that widens, the held-out curve turning up while the training one keeps "
        "falling, is overfitting: the model is memorising its training points. "
        "The KL is the rate of the code, but not the collapse signal: the dashed line in its panel is the final "
        "I(x; z), which is ≈ 0 for a collapsed code even when the KL is not. Diversity is the variance of decoder "
        "means E[x|z] of prior samples; with the observation noise added (star: the final model) it should reach "
        "the data's Var(x) (dotted), a second-moment check that is necessary, not sufficient.",
        needs_history,
        title="Training curves",
    ),
    FigureSpec(
        "loss_terms",
        _loss_terms,
        "Reconstruction, KL, the weighted β·KL and the training loss on one axis, so their relative size shows: "
        "with β > 1 the weighted KL dominates and the code is squeezed; a KL far below the reconstruction means "
        "the code is cheap.",
        needs_history,
        title="Loss terms on one axis",
    ),
]
