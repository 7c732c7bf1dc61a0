"""Training curves: the diversity reference is Var(x) − E tr Cov(x|z) (law of total variance),
and the loss panel says what the loss is (−IWAE bound for IWAE runs, not reconstruction + KL)."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from vaelab.config import DataConfig, ModelConfig, RunConfig
from vaelab.data.registry import load_dataset
from vaelab.data.toy2d import ring
from vaelab.history import History
from vaelab.models import build_model
from vaelab.plots import render
from vaelab.plots.common import PlotContext, subset
from vaelab.plots.curves import data_variance, expected_noise_variance


def history() -> History:
    return History([{"epoch": e, "step": e, "loss": 3.0 / e, "recon": 2.0 / e, "kl": 1.0, "diversity": 0.5,
                     "seconds": 0.1} for e in range(1, 5)])


def panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


@pytest.mark.parametrize("likelihood", ["gaussian-learned", "bernoulli"])
def test_noise_variance_completes_the_law_of_total_variance(likelihood):
    """Var(x ~ p(x)) = Var(E[x|z]) + E tr Cov(x|z), with both sides from the model's own samples."""
    model = build_model(ModelConfig(hidden=[16], likelihood=likelihood), 4, seed=0)
    n = 100_000
    with_noise = model.sample(n, generator=torch.Generator().manual_seed(1), noise=True)
    means = model.sample(n, generator=torch.Generator().manual_seed(2))
    noise = expected_noise_variance(model, n, generator=torch.Generator().manual_seed(3))
    total = float(with_noise.double().var(dim=0).sum())
    assert noise > 0.05 * total  # the check below is not dominated by the mean's variance
    assert float(means.double().var(dim=0).sum()) + noise == pytest.approx(total, rel=0.02)


def test_noise_variance_of_a_fixed_gaussian_is_d_sigma_squared():
    model = build_model(ModelConfig(hidden=[16], likelihood="gaussian", recon_var=0.07), 5, seed=0)
    assert expected_noise_variance(model, 64) == pytest.approx(5 * 0.07, rel=1e-6)


@pytest.mark.parametrize("recon_var", [0.05, 2.0])
def test_diversity_reference_is_the_data_variance_whatever_the_models_noise(recon_var):
    """Issue 20 D2: the reference never uses the model's own noise and is never negative (a noise
    larger than Var(x) made the old Var(x) − E tr Cov line negative)."""
    data = ring(400, generator=torch.Generator().manual_seed(0))
    cfg = RunConfig.from_dict({"data": {"name": "ring"}, "model": {"hidden": [16], "likelihood": "gaussian",
                                                                   "recon_var": recon_var}})
    model = build_model(cfg.model, 2, seed=0)
    fig = render(PlotContext(model=model, data=data, config=cfg, history=history()), "training_curves")
    div_ax = panels(fig)[3]
    var_x = float(data.x.double().var(dim=0).sum())
    levels = [float(line.get_ydata()[0]) for line in div_ax.lines[1:]]
    assert levels == [pytest.approx(var_x)] and var_x > 0
    assert div_ax.get_ylim()[0] >= 0
    # the final model's total sample variance (diversity + its noise) is the star to compare with Var(x)
    star = [c for c in div_ax.collections if c.get_offsets().shape == (1, 2)]
    assert star and float(star[0].get_offsets()[0, 1]) == pytest.approx(0.5 + 2 * recon_var, rel=0.05)
    labels = " ".join(t.get_text() for t in div_ax.get_legend().get_texts())
    assert "Var(x) of the data" in labels and "total variance of noisy samples" in labels
    assert "necessary" in div_ax.get_title()


def test_binarized_images_have_bernoulli_data_variance():
    cfg = RunConfig.from_dict({"data": {"name": "digits", "binarize": "dynamic"},
                               "model": {"likelihood": "bernoulli"}})
    data = subset(load_dataset(DataConfig(name="digits"), "train"), 200)
    ctx = PlotContext(model=build_model(cfg.model, 784, seed=0), data=data, config=cfg)
    m = data.x.double().mean(dim=0)
    assert data_variance(ctx) == pytest.approx(float((m * (1 - m)).sum()))
    assert data_variance(ctx) > float(data.x.double().var(dim=0).sum())  # grey levels spread less


@pytest.mark.parametrize(("objective", "says"), [("iwae", "total loss = −IWAE bound (k = 3)"),
                                                 ("elbo", "total loss = −ELBO")])
def test_loss_panel_names_the_objective(objective, says):
    cfg = tiny_config(train={"objective": objective, "k": 3} if objective == "iwae" else {"objective": objective})
    data = ring(200, generator=torch.Generator().manual_seed(0))
    ctx = PlotContext(model=build_model(cfg.model, 2, seed=0), data=data, config=cfg, history=history())
    title = " ".join(panels(render(ctx, "training_curves"))[0].get_title().split())  # wrapped to the panel
    assert title.startswith(says)
    # −L_k with k samples per point is not the reconstruction + KL of the next panels
    assert ("not reconstruction + KL" in title) == (objective == "iwae")
