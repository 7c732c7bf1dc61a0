"""2-D figures and training curves: every figure renders for latent d = 1, 2, 5, labelled and
unlabelled data, with the panels and artists it should have, readable layout, and correct maths
(contour axes, aggregate-posterior and density orientation)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.image import imsave
from matplotlib.patches import Ellipse

from vaelab.analysis import aggregate_posterior, default_points
from vaelab.config import ModelConfig
from vaelab.data import toy2d
from vaelab.data.dataset import Dataset
from vaelab.history import History
from vaelab.models import build_model
from vaelab.plots import check_names, plan, registry, render
from vaelab.plots.common import PlotContext, view_limits
from vaelab.plots.curves import plot_training_curves
from vaelab.plots.data_space import plot_density
from vaelab.plots.latent import plot_latent_grid, plot_posterior_contours

TOY_FIGURES = ["samples", "reconstructions", "latent_params", "z_vs_eps", "latent_space",
               "posterior_contours", "latent_grid", "aggregate_posterior", "density", "training_curves"]
POSTERIOR_FIGURES = {"latent_params", "z_vs_eps", "posterior_contours", "aggregate_posterior", "density"}
# panels (data axes, colorbars excluded) each figure has, by latent dimension d
PANELS = {
    "samples": {1: 3, 2: 3}, "reconstructions": {1: 3, 2: 3}, "latent_params": {1: 2, 2: 2},
    "z_vs_eps": {1: 2, 2: 2}, "posterior_contours": {1: 2, 2: 2}, "latent_grid": {1: 1, 2: 2},
    "aggregate_posterior": {1: 1, 2: 2}, "density": {1: 2, 2: 2}, "training_curves": {1: 4, 2: 4},
}


def history(n: int = 6, nan_at: int | None = None) -> History:
    rows = []
    for e in range(1, n + 1):
        loss = float("nan") if e == nan_at else 5.0 / e
        rows.append({"epoch": e, "step": 4 * e, "loss": loss, "recon": loss - 0.5, "kl": 0.5 + 0.1 * e,
                     "diversity": 1.0 + e, "seconds": 0.1 * e})
    return History(rows)


def dataset(labelled: bool, n: int = 300, dim: int = 2) -> Dataset:
    data = toy2d.two_gmm(n, generator=torch.Generator().manual_seed(0))
    if dim != 2:
        extra = torch.randn(n, max(dim - 2, 0), generator=torch.Generator().manual_seed(1))
        data = Dataset("file:test", torch.cat([data.x, extra], 1)[:, :dim], data.labels)
    if not labelled:
        data = Dataset(data.name, data.x, log_prob=data.log_prob)
    return data


def context(d: int, labelled: bool = True, kind: str = "vae", dim: int = 2, **kw) -> PlotContext:
    data = dataset(labelled, dim=dim)
    model = build_model(ModelConfig(kind=kind, latent_dim=d, hidden=[16]), data.dim, seed=d).eval()
    return PlotContext(model=model, data=data, history=history(), density_grid=16, density_k=4, **kw)


def panels(fig) -> list:
    """The data axes of a figure (colorbars are axes too, with a colorbar attribute)."""
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar") and ax.get_label() != "<colorbar>"]


def draw(fig) -> tuple[list[str], bytes]:
    """Draw once: (titles / axis labels that leave the figure or overlap each other, PNG bytes)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [("suptitle", fig._suptitle)] if fig._suptitle is not None else []
    for k, ax in enumerate(fig.axes):
        texts += [(f"ax{k}.{n}", t) for n, t in (("title", ax.title), ("x", ax.xaxis.label), ("y", ax.yaxis.label))
                  if t.get_text()]
    boxes = [(n, t.get_window_extent(renderer)) for n, t in texts]
    problems = [f"{n} leaves the figure" for n, b in boxes
                if b.x0 < -1 or b.y0 < -1 or b.x1 > fig.bbox.width + 1 or b.y1 > fig.bbox.height + 1]
    problems += [f"{a} overlaps {b}" for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:]
                 if ba.overlaps(bb)]
    rgba = np.asarray(canvas.buffer_rgba())
    buf = io.BytesIO()
    imsave(buf, rgba, format="png")
    return problems, buf.getvalue()


@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "unlabelled"])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_every_figure_renders_with_its_panels(d, labelled):
    ctx = context(d, labelled)
    apply, skip = plan(ctx, TOY_FIGURES)
    assert [s.name for s in apply] == TOY_FIGURES and skip == []
    for spec in apply:
        fig = spec.make(ctx)
        axes = panels(fig)
        if spec.name == "latent_space":
            expected = 2  # (label | x1) when labelled, (x1 | x2) when not
        else:
            expected = PANELS[spec.name][min(d, 2)]
        assert len(axes) == expected, spec.name
        for ax in axes:
            drawn = len(ax.collections) + len(ax.images) + len(ax.lines) + len(ax.patches) + len(ax.texts)
            assert drawn > 0, f"{spec.name}: empty panel {ax.get_title()!r}"
            assert ax.get_xlabel() and ax.get_title(), f"{spec.name}: panel without title / x label"
        assert fig._suptitle is not None and fig._suptitle.get_text()
        problems, png = draw(fig)
        assert problems == [], spec.name
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_latent_axes_name_the_chosen_dims():
    ctx = context(5, dims=(3, 1))
    fig = render(ctx, "latent_space")
    assert panels(fig)[0].get_xlabel() == "z₄" and panels(fig)[0].get_ylabel() == "z₂"
    assert "dimensions 4, 2 of 5" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="between 1 and 5"):
        context(5, dims=(0, 5))


@pytest.mark.parametrize("dims", [(0, 1), (1, 0), (2, 0)])
def test_posterior_contours_are_not_swapped(dims):
    """Each ellipse's width is 2rσ along the horizontal latent axis, height along the vertical one."""
    ctx = context(3)
    pts = ctx.data.x[:2]
    fig = plot_posterior_contours(ctx.model, ctx.data, points=pts, dims=dims)
    with torch.no_grad():
        q = ctx.model.encode(pts)
    mu, sd = q.mean.numpy(), q.stddev.numpy()
    ellipses = [p for p in panels(fig)[1].patches if type(p) is Ellipse]
    assert len(ellipses) == 4  # 1σ and 2σ for each point
    i, j = dims
    for k, e in enumerate(ellipses):
        m, r = divmod(k, 2)
        r += 1
        assert e.center == pytest.approx((mu[m, i], mu[m, j]), rel=1e-5)
        assert e.width == pytest.approx(2 * r * sd[m, i], rel=1e-5)
        assert e.height == pytest.approx(2 * r * sd[m, j], rel=1e-5)


def test_aggregate_posterior_orientation_and_value():
    ctx = context(3)
    grid = torch.linspace(-3, 3, 13)
    q = aggregate_posterior(ctx.model, ctx.data.x, grid, (2, 0))
    with torch.no_grad():
        post = ctx.model.encode(ctx.data.x)
    mu, sd = post.mean.double(), post.stddev.double()
    a, b = 3, 9  # z_i = grid[b] on the horizontal axis, z_j = grid[a] on the vertical one
    normal = torch.distributions.Normal
    direct = (normal(mu[:, 2], sd[:, 2]).log_prob(grid[b].double()).exp()
              * normal(mu[:, 0], sd[:, 0]).log_prob(grid[a].double()).exp()).mean()
    assert float(q[a, b]) == pytest.approx(float(direct), rel=1e-6)
    # it is a density: the grid sum times the cell area is close to 1 over a wide enough grid
    wide = torch.linspace(-8, 8, 161)
    mass = float(aggregate_posterior(ctx.model, ctx.data.x, wide, (0, 1)).sum()) * float(wide[1] - wide[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.02)


def test_density_images_are_oriented_like_the_data():
    """The true-density panel at row a, column b shows p at (x1 = column value, x2 = row value)."""
    ctx = context(2)
    fig = plot_density(ctx.model, ctx.data, grid=12, k=4)
    img = panels(fig)[1].images[0]
    x0, x1, y0, y1 = img.get_extent()
    arr = np.asarray(img.get_array())
    gx, gy = np.linspace(x0, x1, 12), np.linspace(y0, y1, 12)
    a, b = 2, 8
    point = torch.tensor([[gx[b], gy[a]]], dtype=torch.float32)
    assert arr[a, b] == pytest.approx(float(ctx.data.log_prob(point).exp()), rel=1e-4)
    model_img = np.asarray(panels(fig)[0].images[0].get_array())
    assert model_img.shape == (12, 12) and np.isfinite(model_img).all() and (model_img >= 0).all()


def test_latent_grid_decodes_the_grid():
    ctx = context(2)
    fig = plot_latent_grid(ctx.model, ctx.data, n_grid=5, extent=2.0)
    scatter = [c for c in panels(fig)[1].collections if isinstance(c, PathCollection)][-1]
    offsets = np.asarray(scatter.get_offsets())
    g = torch.linspace(-2, 2, 5)
    with torch.no_grad():
        expected = ctx.model.decode(torch.tensor([[g[1], g[3]]])).mean.numpy()[0]
    assert offsets[1 * 5 + 3] == pytest.approx(expected, rel=1e-5)


def test_default_points_avoid_outliers_and_are_distinct():
    x = torch.cat([torch.randn(200, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([[50.0, 50.0]])])
    pts = default_points(x, 3)
    assert pts.shape == (3, 2) and pts.abs().max() < 10
    assert torch.cdist(pts, pts).fill_diagonal_(1.0).min() > 0


def test_autoencoder_skips_posterior_figures_with_reasons():
    ctx = context(2, kind="ae")
    apply, skip = plan(ctx, TOY_FIGURES)
    assert {n for n, _ in skip} == POSTERIOR_FIGURES
    assert all("autoencoder" in reason for _, reason in skip)
    for spec in apply:
        assert panels(spec.make(ctx))


def test_higher_dimensional_user_data():
    ctx = context(2, dim=3)
    apply, skip = plan(ctx, TOY_FIGURES)
    assert skip == [("density", "a density grid needs 2-D data (this data has D = 3)")]
    fig = render(ctx, "samples")
    assert panels(fig)[0].get_xlabel() == "x₁ (coordinate 1 of 3)"
    for spec in apply:
        spec.make(ctx)


def test_one_dimensional_data_keeps_latent_figures():
    ctx = context(2, dim=1)
    apply, skip = plan(ctx, TOY_FIGURES)
    skipped = {n for n, _ in skip}
    assert {"samples", "reconstructions", "latent_grid", "posterior_contours", "density"} <= skipped
    assert {"latent_params", "z_vs_eps", "latent_space", "aggregate_posterior", "training_curves"} <= {
        s.name for s in apply}
    for spec in apply:
        spec.make(ctx)


def test_image_data_skips_point_figures():
    data = Dataset("imgs", torch.rand(64, 4), image_shape=(1, 2, 2))
    model = build_model(ModelConfig(latent_dim=2, hidden=[8]), 4, seed=0).eval()
    ctx = PlotContext(model=model, data=data)
    _, skip = plan(ctx, TOY_FIGURES)
    assert {"samples", "reconstructions", "latent_grid", "posterior_contours", "density"} <= {n for n, _ in skip}


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown figure name 'nope'; valid names: samples, "):
        check_names(["samples", "nope"])
    assert set(TOY_FIGURES) <= set(registry())


def test_failed_history_marks_the_failure_and_keeps_finite_epochs():
    fig = plot_training_curves(history(6, nan_at=6), {"epoch": 6, "step": 24})
    assert "epoch 6" in fig._suptitle.get_text() and fig._suptitle.get_color() == "red"
    loss_ax = panels(fig)[0]
    assert len(loss_ax.lines[0].get_xdata()) == 5
    assert any(list(line.get_xdata()) == [6, 6] for line in loss_ax.lines[1:])


def test_autoencoder_history_has_no_kl_panel_and_shows_data_variance():
    h = history()
    for row in h.rows:
        row["kl"] = 0.0
    fig = plot_training_curves(h, data_variance=4.0)
    kl_ax, div_ax = panels(fig)[2], panels(fig)[3]
    assert "no KL term" in kl_ax.texts[0].get_text()
    assert any(list(line.get_ydata()) == [4.0, 4.0] for line in div_ax.lines)


def test_view_limits_ignore_a_far_outlier_but_keep_ordinary_range():
    pts = np.random.default_rng(0).normal(size=(1000, 2))
    (x0, x1), _ = view_limits(pts)
    assert x0 <= pts[:, 0].min() and x1 >= pts[:, 0].max()
    (x0, x1), _ = view_limits(np.vstack([pts, [[1e6, 0.0]]]))
    assert x1 < 100
    assert math.isfinite(x0)


def test_density_grid_in_chunks_matches_the_one_pass_estimate(monkeypatch):
    """The density image decoded in small chunks of k has the values of the old path (each block of
    points scored by iwae_bound in one pass): same draws, float tolerance only."""
    from vaelab import analysis
    from vaelab.objectives import iwae_bound

    ctx = context(2)
    pts = torch.rand(40, 2, generator=torch.Generator().manual_seed(3)) * 6 - 3
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        old = torch.cat([iwae_bound(ctx.model, pts[s:s + 16], k=9, generator=g) for s in range(0, 40, 16)])
    monkeypatch.setattr(analysis, "DENSITY_CHUNK_FLOATS", 16 * 16 * 2)  # 2 of the 9 samples per chunk
    new = analysis.model_log_density(ctx.model, pts, k=9, generator=torch.Generator().manual_seed(7), batch=16)
    assert new.shape == (40,)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    # and the figure shows exactly that estimate at each grid point
    fig = plot_density(ctx.model, ctx.data, grid=6, k=9, generator=torch.Generator().manual_seed(7))
    x0, x1, y0, y1 = panels(fig)[0].images[0].get_extent()
    yy, xx = torch.meshgrid(torch.linspace(y0, y1, 6), torch.linspace(x0, x1, 6), indexing="ij")
    grid_pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    with torch.no_grad():
        expected = iwae_bound(ctx.model, grid_pts, k=9, generator=torch.Generator().manual_seed(7)).exp()
    image = np.asarray(panels(fig)[0].images[0].get_array())
    np.testing.assert_allclose(image.reshape(-1), expected.double().numpy(), rtol=1e-5)


def test_figures_of_one_context_encode_the_data_once_and_draw_what_direct_calls_draw():
    """A report's figures share one q(z|x) of the data (PlotContext.posterior / codes); each
    figure shows the same numbers as the plot function called on its own."""
    from vaelab.plots.data_space import plot_reconstructions
    from vaelab.plots.latent import plot_aggregate_posterior, plot_latent_params, plot_latent_space

    ctx = context(2)
    n = len(ctx.data)
    encoded = []
    original = ctx.model.encode
    ctx.model.encode = lambda x, c=None: (encoded.append(len(x)), original(x, c))[1]
    figures = {name: render(ctx, name) for name in
               ("latent_params", "z_vs_eps", "latent_space", "posterior_contours", "aggregate_posterior",
                "reconstructions")}
    del ctx.model.encode
    # the shared posterior once, and the stochastic reconstruction's own draw z ~ q(z|x) (model.reconstruct)
    assert encoded.count(n) == 2, encoded

    def offsets(fig, panel: int) -> list[np.ndarray]:
        return [np.asarray(c.get_offsets()) for c in panels(fig)[panel].collections if isinstance(c, PathCollection)]

    for name, direct, panel in (
        ("latent_params", plot_latent_params(ctx.model, ctx.data), 1),
        ("latent_space", plot_latent_space(ctx.model, ctx.data), 0),
        ("reconstructions", plot_reconstructions(ctx.model, ctx.data), 1),
    ):
        for shared, alone in zip(offsets(figures[name], panel), offsets(direct, panel), strict=True):
            np.testing.assert_array_equal(shared, alone)
    q_shared = np.asarray(panels(figures["aggregate_posterior"])[0].images[0].get_array())
    q_alone = np.asarray(panels(plot_aggregate_posterior(ctx.model, ctx.data))[0].images[0].get_array())
    np.testing.assert_array_equal(q_shared, q_alone)
