"""Issue 20, "pictures that teach the truth": one test per defect of the figures review
(D1–D28 of reviews/figures-0.2.md) that failed on the code it reviewed, and the numbers behind
the course's figures checked against closed forms."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from matplotlib.patches import Circle
from PIL import Image

from helpers import tiny_config
from vaelab.analysis import iwae_curve, points_per_label, true_posterior_grid
from vaelab.config import ModelConfig, RunConfig
from vaelab.data.toy2d import ring
from vaelab.diagnostics import collapse_verdict
from vaelab.history import History
from vaelab.html import figure_png
from vaelab.models import build_model
from vaelab.plots import plan, registry, render
from vaelab.plots.common import PlotContext, label_colour, most_active_dims, new_figure, scatter_labels
from vaelab.plots.curves import plot_training_curves
from vaelab.plots.data_space import plane_colours
from vaelab.plots.latent import (
    plot_aggregate_posterior,
    plot_latent_grid,
    plot_latent_params,
    plot_latent_space,
    plot_z_vs_eps,
)
from vaelab.report import config_tables, metric_label, render_report


def collapsed_vae(latent_dim: int, mu: float = -1.5, sigma: float = 2.0):
    """A VAE whose q(z|x) is N(mu, sigma²) for every x (a collapsed code far from the prior), as
    the reviewed runs under the β-weighted IWAE ended up."""
    model = build_model(ModelConfig(hidden=[8], latent_dim=latent_dim), 2, seed=0)
    last = model.encoder[-1]
    with torch.no_grad():
        last.weight.mul_(1e-3)  # a tiny dependence on x: the means spread over ~0.01
        last.bias[:latent_dim] = mu
        last.bias[latent_dim:] = math.log(sigma**2)
    return model


def data(n: int = 400):
    return ring(n, generator=torch.Generator().manual_seed(0))


def test_d9_ten_labels_get_ten_colours_that_all_leave_pixels():
    colours = [tuple(np.round(label_colour(k), 3)) for k in range(10)]
    assert len(set(colours)) == 10
    fig, axes = new_figure(1)
    xy = np.stack([np.arange(10.0).repeat(30), np.tile(np.linspace(0, 1, 30), 10)], 1)
    scatter_labels(axes[0], xy, np.arange(10).repeat(30), None, s=30, legend=False)
    pixels = np.asarray(Image.open(io.BytesIO(figure_png(fig))).convert("RGB")).reshape(-1, 3).astype(int)
    for colour in colours:
        target = ((0.8 * np.array(colour[:3]) + 0.2) * 255).round().astype(int)  # alpha 0.8 over white
        assert (np.abs(pixels - target).max(axis=1) <= 12).sum() > 20, colour


def test_d1_a_collapsed_code_is_drawn_inside_the_priors_two_sigma_circle():
    model = collapsed_vae(2)
    fig = plot_latent_space(model, data(), mi="I(x; z) = 0.01 nats (held out)")
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 <= -2 and x1 >= 2 and y0 <= -2 and y1 >= 2  # the view holds the 2σ disc (the means span 0.01)
    assert any(isinstance(p, Circle) and p.get_radius() == 2 for p in ax.patches)
    assert len([p for p in ax.patches if not isinstance(p, Circle)]) > 10  # σ(x) ellipses on a sample of points
    assert "I(x; z)" in fig._suptitle.get_text()
    params = plot_latent_params(model, data(), mi="I(x; z) = 0.01 nats")
    (x0, x1), (y0, y1) = params.axes[0].get_xlim(), params.axes[0].get_ylim()
    assert x0 <= -2 and x1 >= 2 and y0 <= -2 and y1 >= 2


def test_d4_captions_describe_collapse_as_it_happens():
    specs = registry()
    assert "whatever their values" in specs["latent_params"].caption
    assert "σ ≈ 1 with μ ≈ 0 for every point means" not in specs["latent_params"].caption
    assert "I(x; z)" in specs["training_curves"].caption and "KL near 0 with diversity near 0" not in (
        specs["training_curves"].caption)


def test_d16_one_dimensional_histograms_drop_points_outside_their_range():
    model = collapsed_vae(1, mu=0.0, sigma=1.0)
    x = data(400).x.clone()
    x[:5] = 1e3  # far points whose codes leave the range
    from vaelab.data.dataset import Dataset

    far = Dataset(name="far", x=x)
    fig = plot_z_vs_eps(model, far, generator=torch.Generator().manual_seed(0))
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert max(heights[0], heights[-1]) < 0.5 * max(heights)  # no spike of clipped points in an edge bin


def test_d17_the_1d_aggregate_posterior_covers_the_mass_of_q():
    fig = plot_aggregate_posterior(collapsed_vae(1), data())
    lo, hi = fig.axes[0].get_xlim()
    assert lo <= -1.5 - 3 * 2.0 + 0.1 and hi >= -1.5 + 3 * 2.0 - 0.1


def test_d24_the_epsilon_panel_is_labelled_epsilon():
    fig = plot_z_vs_eps(collapsed_vae(2), data(), generator=torch.Generator().manual_seed(0))
    assert fig.axes[1].get_xlabel().startswith("ε") and fig.axes[1].get_ylabel().startswith("ε")


def test_d23_1d_latent_grid_labels_do_not_overprint():
    fig = plot_latent_grid(collapsed_vae(1), data())
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) < 7 and any("…" in t for t in texts)  # a collapsed code decodes every z to one point


def test_d2_d12_curves_have_integer_epochs_no_constant_beta_axis_and_a_readable_kl_axis():
    rows = [{"epoch": e, "step": e, "loss": 3.0, "recon": 2.0, "kl": 9.0 + e, "beta": 1.0, "diversity": 0.5,
             "seconds": 0.1} for e in range(1, 4)]
    fig = plot_training_curves(History(rows), data_variance=1.0, noise_variance=5.0)
    loss_ax, _, kl_ax, div_ax = fig.axes[:4]
    assert len(fig.axes) == 4  # no twin axis for a β that never changes
    assert kl_ax.get_yscale() == "linear"  # 10 to 12 nats: a log axis would show one tick
    assert all(float(t).is_integer() for t in loss_ax.get_xticks())
    assert div_ax.get_ylim()[0] >= 0


def test_d15_reconstruction_colours_tell_top_from_bottom():
    xy = np.array([[0.0, 2.0], [0.0, -2.0], [2.0, 0.0], [-2.0, 0.0], [0.0, 0.0]])
    colours = plane_colours(xy)
    assert np.abs(colours[0] - colours[1]).max() > 0.2 and np.abs(colours[2] - colours[3]).max() > 0.2


def test_d20_posterior_points_come_from_different_labels():
    d = data(400)
    pts = points_per_label(d.x, d.labels, 4)
    nearest = torch.cdist(pts, d.x).argmin(1)
    assert len(set(d.labels[nearest].tolist())) == 4


def test_d8_an_exact_conditional_model_is_not_told_to_fix_anything():
    metrics = {"mutual_info": 0.0001, "mutual_info_se": 0.001, "nll_gap": 4.3e-5, "nll_gap_se": 0.0027,
               "condition": "label", "n": 2000}
    verdict = collapse_verdict(metrics)
    assert verdict is not None and not verdict.needed
    assert "fix" not in verdict.text.replace("nothing to fix", "") and "not needed" in verdict.text
    assert "condition c" in verdict.text


def test_d10_d11_conditional_labels_and_the_saturated_mutual_information():
    assert "H(x|c)" in metric_label("true_nll", {"condition": "label"})
    assert "p(x|z, c)" in metric_label("recon", {"condition": "label"})
    saturated = {"mutual_info": 6.54, "mutual_info_se": 0.01, "n": 1000, "kl": 18.5}
    verdict = collapse_verdict(saturated)
    assert verdict is not None and "ln N" in verdict.text and "lower bound" in verdict.text
    assert "lower bound" in metric_label("mutual_info", saturated)


def test_d21_settings_that_do_not_apply_are_not_listed():
    cfg = RunConfig().with_overrides({"model": {"likelihood": "bernoulli"}, "train": {"objective": "elbo"}})
    html = config_tables(cfg)
    assert "<td>recon_var</td>" not in html and "<td>channels</td>" not in html
    train_table = html[html.index("[train]"):html.index("[eval]")]
    assert "<td>k</td>" not in train_table and "<td>beta</td>" in train_table  # the ELBO draws one sample
    assert "<td>hidden</td>" in html and "Not used by this run" in html and ">train.k<" in html


def test_d22_image_runs_open_with_their_images():
    cfg = tiny_config(data={"name": "digits8"}, model={"likelihood": "bernoulli"})
    from vaelab.data.registry import load_dataset

    d = load_dataset(cfg.data, "train")
    ctx = PlotContext(model=build_model(cfg.model, d.dim, seed=0), data=d, config=cfg)
    apply, _ = plan(ctx)
    assert apply[0].name.startswith("image_")


def test_d25_most_active_dims_of_a_conditional_model_use_the_condition():
    model = build_model(ModelConfig(hidden=[8], latent_dim=4), 2, cond_dim=3, seed=0)
    with torch.no_grad():
        model.encoder[-1].weight[:4].zero_()
        model.encoder[-1].weight[2, 0] = 5.0  # only z₃ and z₄ depend on x
        model.encoder[-1].weight[3, 1] = 5.0
    d = data()
    c = torch.nn.functional.one_hot(d.labels % 3, 3).float()
    assert most_active_dims(model, d, c) == (2, 3)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    from vaelab.train.run import train_run

    cfg = tiny_config(data={"name": "ring", "condition": "label"}, train={"epochs": 1})
    return train_run(cfg, tmp_path_factory.mktemp("runs") / "cond")


def test_d7_a_conditional_run_draws_the_figures_that_apply_with_each_points_own_c(conditional_run):
    ctx = PlotContext.from_run(conditional_run, n_points=300)
    apply, skipped = plan(ctx)
    drawn = {s.name for s in apply}
    for name in ("samples", "reconstructions", "latent_params", "z_vs_eps", "latent_space", "posterior_contours",
                 "aggregate_posterior", "data_and_samples", "reparameterization", "true_posterior", "iwae_vs_k"):
        assert name in drawn, (name, dict(skipped).get(name))
    for name in ("latent_space", "reconstructions", "posterior_contours"):
        render(ctx, name)


def test_d6_value_samples_draw_noisy_samples_beside_the_means(tmp_path):
    from vaelab.train.run import train_run

    run = train_run(tiny_config(data={"name": "radial_gmm", "condition": "radius"}, train={"epochs": 1}),
                    tmp_path / "radius")
    fig = render(PlotContext.from_run(run, n_points=300), "cond_value_samples")
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "x ~ p(x|z, c)" in titles and "noisy samples" in titles and "decoder means" in titles


def test_figures_render_themselves_in_ipython():
    fig, _ = new_figure(1)
    png = fig._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    formatters = pytest.importorskip("IPython.core.formatters")
    data, _ = formatters.DisplayFormatter().format(fig)
    assert "image/png" in data


def test_d3_the_report_says_which_objective_a_beta_run_trained(tmp_path):
    from vaelab.train.run import train_run

    run = train_run(tiny_config(train={"epochs": 1, "beta": 4.0, "objective": "iwae"}), tmp_path / "b4")
    html = render_report(run, [])
    assert "weighted" in html and "only at β = 1" in html


# The numbers behind the course's figures ---------------------------------------------------------


class LinearGaussian(torch.nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s² I), q(z|x) = N(A x, diag v): the true posterior is
    Gaussian in closed form (the conjugate case)."""

    latent_dim = 2
    x_dim = 2
    cond_dim = 0

    def __init__(self):
        super().__init__()
        self.W = torch.tensor([[1.5, 0.3], [-0.4, 0.8]])
        self.b = torch.tensor([0.2, -0.1])
        self.s = 0.5
        self.A = torch.nn.Parameter(torch.eye(2) * 0.5)

    def prior(self, c=None):
        return torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)

    def decode(self, z, c=None):
        return torch.distributions.Independent(torch.distributions.Normal(z @ self.W.T + self.b, self.s), 1)

    def encode(self, x, c=None):
        return torch.distributions.Independent(torch.distributions.Normal(x @ self.A.T, 0.6 * torch.ones_like(x)), 1)


def test_true_posterior_on_a_grid_normalises_and_matches_the_conjugate_gaussian():
    model = LinearGaussian()
    x = torch.tensor([0.7, -0.3])
    grid = torch.linspace(-4, 4, 161)
    post = true_posterior_grid(model, x, grid)
    cell = float(grid[1].double() - grid[0].double()) ** 2
    assert float(post.sum()) * cell == pytest.approx(1.0, abs=1e-9)
    cov = torch.linalg.inv(torch.eye(2) + model.W.T @ model.W / model.s**2).double()
    mean = cov @ (model.W.T.double() @ (x - model.b).double()) / model.s**2
    exact = torch.distributions.MultivariateNormal(mean, cov)
    zj, zi = torch.meshgrid(grid.double(), grid.double(), indexing="ij")
    expected = exact.log_prob(torch.stack([zi, zj], -1)).exp()
    assert torch.allclose(post, expected, atol=2e-3 * float(expected.max()))


def test_iwae_curve_starts_at_the_elbo_and_rises_in_expectation():
    model = LinearGaussian()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    ks = (1, 2, 5, 20, 100)
    curves = torch.stack([iwae_curve(model, x, ks=ks, generator=torch.Generator().manual_seed(s)) for s in range(8)])
    # k = 1 is the one-sample ELBO estimate with the same draw
    from vaelab.objectives import log_importance_weights

    log_w = log_importance_weights(model, x, k=100, generator=torch.Generator().manual_seed(0))  # (k, M)
    assert float(curves[0, 0]) == pytest.approx(float(log_w[0].double().mean()), abs=1e-9)
    mean = curves.mean(0)
    assert all(float(a) <= float(b) + 1e-3 for a, b in zip(mean[:-1], mean[1:], strict=True))
    # and it stays below log p(x), known in closed form for the linear-Gaussian model
    cov = model.W @ model.W.T + model.s**2 * torch.eye(2)
    log_px = torch.distributions.MultivariateNormal(model.b, cov).log_prob(x).mean()
    assert float(mean[-1]) <= float(log_px) + 0.02 and float(mean[-1]) > float(mean[0])


def test_metric_figure_skips_say_why_a_metric_is_missing():
    """Issue 22: kl_per_dim's skip said 'run vaelab eval' for a flow run that had been evaluated
    (its KL has no per-dimension closed form, so the evaluation never reports it)."""
    from vaelab.config import ModelConfig
    from vaelab.data.toy2d import ring
    from vaelab.models import build_model
    from vaelab.plots import plan
    from vaelab.plots.common import PlotContext

    points = ring(50, generator=torch.Generator().manual_seed(0))
    model = build_model(ModelConfig(kind="planar", hidden=[8]), 2, seed=0)
    fresh = PlotContext(model=model, data=points)
    _, skipped = plan(fresh, ["kl_per_dim"])
    assert "run vaelab eval" in skipped[0][1]
    evaluated = PlotContext(model=model, data=points, metrics={"iwae_nll": 2.0, "elbo": -2.5, "kl": 1.0})
    _, skipped = plan(evaluated, ["kl_per_dim"])
    assert "run vaelab eval" not in skipped[0][1] and "no closed form per dimension" in skipped[0][1]
