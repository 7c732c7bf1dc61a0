"""The figures issue 20 adds for conditional runs, point interpolation and the model summary:
each is drawn where it applies and skipped with its reason where not, and each draws what it
claims (each label's own c, the same z down a column, the codes' decodings at the path's ends,
parameter counts that add up)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection

from vaelab import checkpoint as ckpt
from vaelab.analysis import model_log_density
from vaelab.conditions import fit_condition
from vaelab.config import DataConfig, ModelConfig
from vaelab.data.dataset import Dataset
from vaelab.data.registry import load_dataset
from vaelab.data.toy2d import mode_means, radial_gmm
from vaelab.models import build_model
from vaelab.plots import plan, render
from vaelab.plots.common import PlotContext, subset
from vaelab.plots.conditional import (
    class_style_grid,
    condition_panels,
    conditional_density_images,
    plot_class_style,
    plot_latent_grid_by_condition,
    style_and_class_change,
)
from vaelab.plots.data_space import density_grid_points
from vaelab.plots.images import as_images
from vaelab.plots.latent import interpolation_pairs, latent_path, plot_point_interpolations
from vaelab.report import model_summary, model_table, write_report

SMALL = ModelConfig(hidden=[16])
NEW = ["cond_density", "cond_latent_grid", "image_class_style", "point_interpolations"]


def points(n: int = 400) -> Dataset:
    return radial_gmm(n, generator=torch.Generator().manual_seed(0))


def label_context(data: Dataset | None = None, **kw) -> PlotContext:  # noqa: ANN003
    data = points() if data is None else data
    cond = fit_condition("label", data)
    model = build_model(SMALL, data.dim, cond.width, seed=0).eval()
    return PlotContext(model=model, data=data, condition=cond, density_grid=8, density_k=3, **kw)


@pytest.fixture(scope="module")
def trained_label_vae() -> tuple[torch.nn.Module, object, Dataset]:
    """A conditional VAE trained for a few seconds on radial_gmm's 8 labelled modes (ELBO)."""
    data = points(2000)
    cond = fit_condition("label", data)
    model = build_model(ModelConfig(hidden=[64, 64]), 2, cond.width, seed=0)
    c = cond.tensor(data)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        rows = torch.randint(0, len(data), (256,), generator=gen)
        x, cc = data.x[rows], c[rows]
        q = model.encode(x, cc)
        z = q.rsample()
        elbo = model.decode(z, cc).log_prob(x) + model.prior(cc).log_prob(z) - q.log_prob(z)
        opt.zero_grad()
        (-elbo.mean()).backward()
        opt.step()
    return model.eval(), cond, data


# applicability ---------------------------------------------------------------------------------


def test_each_new_figure_applies_where_it_should_and_says_why_not_elsewhere() -> None:
    apply, skip = plan(label_context(), NEW)
    assert [s.name for s in apply] == ["cond_density", "cond_latent_grid", "point_interpolations"]
    assert dict(skip) == {"image_class_style": "not image data (the per-condition point figures apply)"}

    unconditional = PlotContext(model=build_model(SMALL, 2, seed=0), data=points())
    apply, skip = plan(unconditional, NEW)
    assert [s.name for s in apply] == ["point_interpolations"]
    assert {n: r for n, r in skip} == {n: "unconditional model (no condition to vary)" for n in NEW[:3]}

    ae = label_context()
    ae = PlotContext(model=build_model(SMALL.model_copy(update={"kind": "ae"}), 2, ae.condition.width, seed=0),
                     data=ae.data, condition=ae.condition)
    assert dict(plan(ae, ["cond_density"])[1]) == {"cond_density": "the autoencoder has no posterior q(z|x)"}

    three = points()
    three = Dataset("three", torch.cat([three.x, three.x[:, :1]], 1), three.labels, three.label_names)
    assert dict(plan(label_context(three), ["cond_density"])[1]) == {
        "cond_density": "a density grid needs 2-D data (this data has D = 3)"}

    digits = subset(load_dataset(DataConfig(name="digits", limit_train=64), "train"), 64)
    cond = fit_condition("label", digits)
    images = PlotContext(model=build_model(SMALL.model_copy(update={"likelihood": "bernoulli"}), digits.dim,
                                           cond.width, seed=0), data=digits, condition=cond)
    apply, skip = plan(images, NEW)
    assert [s.name for s in apply] == ["image_class_style"]
    assert dict(skip)["point_interpolations"] == "image data (see the image figures)"
    assert dict(skip)["cond_density"] == "image data (see the image figures)"
    for spec in apply:
        assert spec.make(images).axes


def test_every_new_figure_draws_for_a_run_it_applies_to() -> None:
    ctx = label_context()
    for name in ["cond_density", "cond_latent_grid", "point_interpolations"]:
        assert render(ctx, name).axes
    radius = fit_condition("radius", ctx.data)
    model = build_model(SMALL, 2, radius.width, seed=0, cond_embed=radius.embed_widths).eval()
    value_ctx = PlotContext(model=model, data=ctx.data, condition=radius, density_grid=8, density_k=3)
    fig = render(value_ctx, "cond_density")  # one panel per value, with the requested circle, no true density
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == len(condition_panels(radius)) and titles[0].startswith("radius = ")


# p(x|c) per label ----------------------------------------------------------------------------


def test_each_density_panel_is_the_model_density_under_its_own_c() -> None:
    ctx = label_context()
    model, cond, data = ctx.model, ctx.condition, ctx.data
    ext, images = conditional_density_images(model, cond, data, grid=6, k=5, generator=torch.Generator().manual_seed(3))
    pts, ext2 = density_grid_points(data, 6)
    assert ext == ext2 and len(images) == 8
    gen = torch.Generator().manual_seed(3)  # the figure uses one generator, panel after panel
    for label, (title, p_model, p_true) in enumerate(images):
        c = torch.nn.functional.one_hot(torch.tensor(label), 8).float()
        direct = model_log_density(model, pts, c, k=5, generator=gen).exp().reshape(6, 6).double().numpy()
        assert title == f"c = {cond.labels[label]}"
        assert np.allclose(p_model, direct, rtol=1e-5)
        truth = data.log_prob_given_label(pts, torch.full((36,), label)).exp().reshape(6, 6).double().numpy()
        assert np.allclose(p_true, truth)
    assert not np.allclose(images[0][1], images[1][1])  # the panels differ: c reaches the decoder


def test_a_trained_models_density_for_label_k_sits_on_component_k(trained_label_vae) -> None:
    model, cond, data = trained_label_vae
    (x0, x1, y0, y1), images = conditional_density_images(model, cond, data, grid=30, k=20,
                                                          generator=torch.Generator().manual_seed(0))
    gx, gy = np.linspace(x0, x1, 30), np.linspace(y0, y1, 30)
    xx, yy = np.meshgrid(gx, gy)  # imshow layout: row a is x₂ = gy[a], column b is x₁ = gx[b]
    means = mode_means("radial_gmm").numpy()
    for k, (_, p_model, _) in enumerate(images):
        w = p_model / p_model.sum()
        centre = np.array([(w * xx).sum(), (w * yy).sum()])
        near = np.hypot(xx - means[k, 0], yy - means[k, 1]) < 1.2
        assert np.linalg.norm(means - centre, axis=1).argmin() == k
        assert w[near].sum() > 0.6, (k, w[near].sum())


# latent grid per label ---------------------------------------------------------------------------


def test_each_latent_grid_panel_decodes_the_grid_under_its_label() -> None:
    ctx = label_context()
    fig = plot_latent_grid_by_condition(ctx.model, ctx.condition, ctx.data, n_grid=5, extent=2.0)
    g = torch.linspace(-2.0, 2.0, 5)
    for label in (0, 5):
        panel = fig.axes[1 + label]  # the first panel is the grid in z
        assert panel.get_title() == f"c = {ctx.condition.labels[label]}"
        mesh = [c for c in panel.collections if isinstance(c, PathCollection)][-1]
        c = torch.nn.functional.one_hot(torch.tensor([label]), 8).float()
        with torch.no_grad():
            expected = ctx.model.decode(torch.tensor([[g[1], g[3]]]), c).mean.numpy()[0]
        assert np.asarray(mesh.get_offsets())[1 * 5 + 3] == pytest.approx(expected, rel=1e-5)


# class × style ---------------------------------------------------------------------------------------


def test_the_class_style_grid_holds_the_same_z_down_every_column() -> None:
    digits = subset(load_dataset(DataConfig(name="digits", limit_train=64), "train"), 64)
    cond = fit_condition("label", digits)
    model = build_model(SMALL.model_copy(update={"likelihood": "bernoulli"}), digits.dim, cond.width, seed=0).eval()
    fig = plot_class_style(model, cond, digits.image_shape, n_styles=5, generator=torch.Generator().manual_seed(4))
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    z = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(4))
    h = digits.image_shape[1]
    for label in (0, 3, 9):
        c = torch.nn.functional.one_hot(torch.tensor([label]), 10).float().expand(5, -1)
        with torch.no_grad():
            expected = as_images(model.decode(z, c).mean, digits.image_shape)[:, 0]  # (5, H, W)
        for col in (0, 4):
            y, x = 1 + label * (h + 1), 1 + col * (h + 1)
            assert np.allclose(canvas[y:y + h, x:x + h], expected[col], atol=1e-6)
    grid = class_style_grid(model, cond, z)
    assert grid.shape == (10, 5, digits.dim)
    assert not torch.allclose(grid[0], grid[9])  # c changes the image


def test_class_and_style_change_measures_what_each_input_does() -> None:
    style = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    ignores_c = style.expand(4, -1, -1)  # every row the same: c does nothing
    change_c, change_z = style_and_class_change(ignores_c)
    assert change_c == 0.0 and change_z > 0.5
    ignores_z = style[:4, None, :].expand(-1, 6, -1)  # every column the same: z does nothing
    change_c, change_z = style_and_class_change(ignores_z)
    assert change_z == 0.0 and change_c > 0.5


# interpolation between points --------------------------------------------------------------------------


def test_interpolation_paths_end_at_the_decoded_codes_of_both_points() -> None:
    ctx = PlotContext(model=build_model(SMALL, 2, seed=0).eval(), data=points())
    rows_a, rows_b = interpolation_pairs(ctx.data)
    labels = ctx.data.labels
    assert len(rows_a) == len(rows_b) == 3 and all(labels[a] != labels[b] for a, b in zip(rows_a, rows_b, strict=True))
    x = ctx.data.x
    z, dec = latent_path(ctx.model, x[rows_a], x[rows_b], steps=7)
    with torch.no_grad():
        z_a, z_b = ctx.model.embed(x[rows_a]), ctx.model.embed(x[rows_b])
        assert torch.allclose(z[0], z_a) and torch.allclose(z[-1], z_b)
        assert torch.allclose(z[3], (z_a + z_b) / 2, atol=1e-6)  # a straight line in z
        assert torch.allclose(dec[0], ctx.model.decode(z_a).mean)
        assert torch.allclose(dec[-1], ctx.model.decode(z_b).mean)
    fig = plot_point_interpolations(ctx.model, ctx.data, rows_a, rows_b, steps=7)
    data_panel = fig.axes[1]
    path = [c for c in data_panel.collections if isinstance(c, LineCollection)][0]
    first = np.asarray(path.get_segments()[0])  # pair 1's first step starts at x_a's reconstruction
    assert first[0] == pytest.approx(dec[0, 0].numpy(), rel=1e-5)
    assert "different labels" in fig.get_suptitle()


def test_a_label_conditioned_model_interpolates_within_one_label_with_c_fixed() -> None:
    ctx = label_context()
    rows_a, rows_b = interpolation_pairs(ctx.data, same_label=True)
    labels = ctx.data.labels
    assert rows_a and all(labels[a] == labels[b] and a != b for a, b in zip(rows_a, rows_b, strict=True))
    fig = render(ctx, "point_interpolations")
    assert "c held fixed" in fig.get_suptitle()


# model summary -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SMALL, ModelConfig(kind="vamp", hidden=[16]), ModelConfig(kind="iaf", hidden=[16]),
                                    ModelConfig(kind="ae", hidden=[16]),
                                    ModelConfig(net="conv", likelihood="bernoulli", latent_dim=4)])
def test_the_model_summary_counts_every_parameter_once(config: ModelConfig) -> None:
    model = build_model(config, 784 if config.net == "conv" else 2, seed=0)
    parts = model_summary(model)
    assert sum(p.parameters for p in parts) == sum(p.numel() for p in model.parameters())
    names = [p.name for p in parts]
    assert "encoder" in names and "decoder" in names
    encoder = parts[names.index("encoder")]
    assert encoder.parameters == sum(p.numel() for p in model.encoder.parameters()) > 0 and encoder.layers
    if config.kind == "vamp":
        assert any(p.name == "prior_w" and p.parameters == model.prior_w.numel() for p in parts)


def test_a_shared_parameter_is_counted_once() -> None:
    shared = torch.nn.Linear(3, 4)
    model = torch.nn.Module()
    model.encoder = torch.nn.Sequential(shared, torch.nn.Tanh())
    model.decoder = torch.nn.Sequential(shared)
    model.scale = torch.nn.Parameter(torch.ones(5))
    parts = model_summary(model)
    assert [(p.name, p.parameters) for p in parts] == [("encoder", 16), ("decoder", 0), ("scale", 5)]
    assert parts[0].layers == ["Linear 3→4", "Tanh"]
    assert sum(p.parameters for p in parts) == sum(p.numel() for p in model.parameters()) == 21
    assert "<b>21</b>" in model_table(model)


def test_the_report_has_the_model_table(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    text = write_report(run_dir, names=["samples"], n_points=100).read_text()
    total = sum(p.numel() for p in ckpt.load(run_dir).model.parameters())
    assert '<h2 id="model">Model</h2>' in text and f"<b>{total:,}</b>" in text and "Linear 2→" in text
