"""The course's before-and-after figure (the untrained model at step 0 beside the trained one),
and the held-out curves of the training-curves figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import tiny_config
from vaelab import checkpoint as ckpt
from vaelab.history import History
from vaelab.plots import render
from vaelab.plots.common import PlotContext
from vaelab.plots.course import initial_model, neg_elbo
from vaelab.plots.curves import plot_training_curves
from vaelab.train import TrainingInterrupted
from vaelab.train.run import train_run


def _untrained_run(cfg, path):
    """The run's folder as train_run leaves it when stopped before its first step: the weights
    it started from, saved."""
    with pytest.raises(TrainingInterrupted):
        train_run(cfg, path, device="cpu", should_stop=lambda: True)
    return ckpt.load(path, "cpu")


@pytest.mark.parametrize("data", [{"name": "ring"},
                                  {"name": "radial_gmm", "condition": "radius", "n_train": 256}])
def test_the_before_model_is_the_one_training_started_from(tmp_path, data):
    cfg = tiny_config(data=data, train={"seed": 7, "epochs": 2})
    started = _untrained_run(cfg, tmp_path / "untrained")
    assert started.history.last is None  # no step was taken
    run = train_run(cfg, tmp_path / "trained", device="cpu")
    before = initial_model(run.model, run.config)
    start_weights = started.model.state_dict()
    assert before.state_dict().keys() == start_weights.keys()
    for name, value in before.state_dict().items():
        assert torch.equal(value, start_weights[name]), name
    # ... and not the trained weights, nor another seed's.
    assert any(not torch.equal(v, run.model.state_dict()[k]) for k, v in before.state_dict().items())
    other = initial_model(run.model, run.config.with_overrides({"train": {"seed": 8}}))
    assert any(not torch.equal(v, start_weights[k]) for k, v in other.state_dict().items())


def test_before_after_draws_both_models_on_one_view(tmp_path):
    run = train_run(tiny_config(train={"epochs": 30, "lr": 1e-2}), tmp_path / "run", device="cpu")
    ctx = PlotContext.from_run(run, n_points=300)
    fig = render(ctx, "before_after")
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    titles = [ax.get_title() for ax in axes]
    assert len(axes) == 4
    assert all("before training" in t for t in titles[:2]) and all("after training" in t for t in titles[2:])
    assert all(ax.get_xlim() == axes[0].get_xlim() and ax.get_ylim() == axes[0].get_ylim() for ax in axes)
    # Training lowered the −ELBO of the shown points, and the titles say by how much.
    seed = ctx.seed * 7919 + 804  # the figure's draws (PlotContext.generator's rule, offset 804)
    before_loss = neg_elbo(initial_model(run.model, run.config), ctx.data.x[:300], seed=seed)
    after_loss = neg_elbo(run.model, ctx.data.x[:300], seed=seed)
    assert after_loss < before_loss - 0.5
    assert f"{before_loss:.3g}" in titles[1] and f"{after_loss:.3g}" in titles[3]
    # The untrained decoder maps the data to a blob; training spreads the reconstructions out.
    recon_before = float(np.var(axes[1].collections[-1].get_offsets(), axis=0).sum())
    recon_after = float(np.var(axes[3].collections[-1].get_offsets(), axis=0).sum())
    assert recon_before < 0.05 * float(ctx.data.x.var(dim=0).sum())
    assert recon_after > 10 * recon_before


def test_before_after_for_images(tmp_path):
    cfg = tiny_config(data={"name": "digits", "limit_train": 200}, model={"likelihood": "bernoulli"},
                      train={"epochs": 1})
    run = train_run(cfg, tmp_path / "digits", device="cpu")
    fig = render(PlotContext.from_run(run, n_points=200), "before_after")
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 4  # reconstructions and samples, before and after
    assert "before training" in fig.axes[0].get_title() and "after training" in fig.axes[2].get_title()


def test_training_curves_draw_held_out_beside_training(tmp_path):
    run = train_run(tiny_config(train={"epochs": 4, "objective": "iwae"},
                                data={"n_train": 2000, "n_test": 600}), tmp_path / "run", device="cpu")
    assert run.history.has_heldout()
    fig = render(PlotContext.from_run(run, n_points=300), "training_curves")
    loss, recon, kl = fig.axes[0], fig.axes[1], fig.axes[2]
    held = {ax: [ln for ln in ax.get_lines() if ln.get_label().startswith("held-out")] for ax in (loss, recon, kl)}
    assert all(len(lines) == 1 and lines[0].get_linestyle() == "--" for lines in held.values())
    # The loss panel's held-out line is −heldout_elbo, in the colour of the training −ELBO it is compared with.
    line = held[loss][0]
    np.testing.assert_allclose(line.get_ydata(), [-v for v in run.history.column("heldout_elbo")])
    train_line = next(ln for ln in loss.get_lines() if ln.get_label().startswith("training −ELBO"))
    assert line.get_color() == train_line.get_color()
    last = run.history.rows[-1]
    gap = -last["heldout_elbo"] - (last["recon"] + last["kl"])
    assert f"{gap:+.3g} nats" in line.get_label()
    np.testing.assert_allclose(held[kl][0].get_ydata(), run.history.column("heldout_kl"))


def test_an_autoencoders_curves_draw_its_held_out_reconstruction():
    rows = [{"epoch": e, "step": e, "loss": 2.0 / e, "recon": 2.0 / e, "kl": 0.0, "diversity": 0.5, "seconds": 0.1,
             "heldout_recon": 2.5 / e + 0.1 * e} for e in range(1, 6)]
    fig = plot_training_curves(History(rows))
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("held-out reconstruction")]
    assert len(lines) == 1
    assert "+0.6 nats" in lines[0].get_label()  # the last epoch: 2.5/5 + 0.5 held-out − 2/5 training
    assert not any(ln.get_label().startswith("held-out") for ln in fig.axes[2].get_lines())  # no KL


def test_sparsely_scored_history_draws_markers_at_the_scored_epochs():
    rows = [{"epoch": e, "step": e, "loss": 3.0 / e, "recon": 2.0 / e, "kl": 1.0, "diversity": 0.5, "seconds": 0.1,
             "heldout_elbo": -(3.5 / e) if e in (1, 4, 6) else math.nan,
             "heldout_recon": 2.5 / e if e in (1, 4, 6) else math.nan,
             "heldout_kl": 1.0 if e in (1, 4, 6) else math.nan} for e in range(1, 7)]
    fig = plot_training_curves(History(rows))
    line = next(ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("held-out"))
    assert list(line.get_xdata()) == [1, 4, 6] and line.get_marker() == "o"
    assert "every few epochs" in line.get_label()
