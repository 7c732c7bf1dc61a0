"""Training curves: total loss, reconstruction, KL (log scale) and diversity against epoch.

A failed run (a NaN / infinite loss) keeps its finite epochs on the curves and marks the
epoch where training stopped in red on every panel, so the report shows *where* it broke.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vaelab.checkpoint import History
from vaelab.plots.common import FigureSpec, PlotContext, needs_history, new_figure, text_panel


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
    title: str | None = None,
) -> Figure:
    """Four panels against epoch: loss, reconstruction -E log p(x|z), KL (log y) and diversity.

    ``data_variance`` (total variance of the training data, summed over coordinates) is drawn
    as the diversity target: decoded prior samples should spread as much as the data does;
    a diversity near 0 means every z decodes to the same x (posterior collapse).
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
        ("loss", "total loss (nats / point)", "total loss (training objective)"),
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
            ax.axhline(data_variance, color="0.35", linestyle="--", linewidth=1.2, label="variance of the data")
            ax.legend(fontsize="small", loc="lower right")
        if bad is not None:
            ax.axvline(bad, color="red", linewidth=1.5, linestyle=":")
    if bad is not None:
        fig.suptitle(
            f"Training curves — training stopped: the loss became NaN / infinite at epoch {bad}",
            color="red",
            fontsize="large",
        )
    return fig


def _training_curves(ctx: PlotContext) -> Figure:
    assert ctx.history is not None
    variance = None
    if not ctx.is_image:
        variance = float(ctx.data.x.double().var(dim=0).sum())
    return plot_training_curves(ctx.history, ctx.failure, data_variance=variance)


FIGURES = [
    FigureSpec(
        "training_curves",
        _training_curves,
        "Loss, reconstruction, KL and diversity per epoch: the loss should flatten; a KL near 0 "
        "with diversity near 0 is posterior collapse; diversity should approach the data's variance "
        "(dashed).",
        needs_history,
        title="Training curves",
    ),
]
