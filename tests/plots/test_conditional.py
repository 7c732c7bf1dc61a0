"""Conditional figures: they draw for label and continuous conditions, on points and images, and
only apply to the runs they are meant for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import checkpoint as ckpt
from vaelab.conditions import fit_condition
from vaelab.config import ModelConfig, RunConfig
from vaelab.data.dataset import Dataset
from vaelab.data.toy2d import radial_gmm, ring
from vaelab.models import build_model
from vaelab.plots import make_figures, plan
from vaelab.plots.common import PlotContext
from vaelab.plots.conditional import (
    condition_in_latent,
    default_values,
    plot_label_samples,
    plot_latent_by_condition,
    plot_value_samples,
)

SMALL = ModelConfig(hidden=[16, 16])


def _points(fn, n: int = 300) -> Dataset:  # noqa: ANN001
    return fn(n, generator=torch.Generator().manual_seed(0))


def test_label_samples_on_points_have_one_legend_entry_per_label() -> None:
    data = _points(ring)
    cond = fit_condition("label", data)
    model = build_model(SMALL, 2, cond.width, seed=0)
    fig = plot_label_samples(model, cond, data, n_per_label=20, generator=torch.Generator().manual_seed(0))
    data_ax, _, samples_ax = fig.axes[:3]  # data | decoder means | noisy samples (with the legend)
    assert [t.get_text() for t in samples_ax.get_legend().get_texts()] == cond.labels
    assert sum(len(c.get_offsets()) for c in samples_ax.collections) == len(data) + 8 * 20
    assert data_ax.get_xlim() == samples_ax.get_xlim()  # same view, so the colours can be compared


def test_value_samples_for_a_radius_draw_the_tracking_panel() -> None:
    data = _points(radial_gmm)
    cond = fit_condition("radius", data)
    values = default_values(cond)
    assert values.shape[1] == 1 and len(values) >= 3
    assert cond.low[0] <= float(values.min()) and float(values.max()) <= cond.high[0]
    model = build_model(SMALL, 2, 1, seed=0, cond_embed=cond.embed_widths)
    fig = plot_value_samples(model, cond, data, n_per_value=25, generator=torch.Generator().manual_seed(0))
    track_ax = [ax for ax in fig.axes if ax.get_xlabel() == "requested radius"]
    assert len(track_ax) == 1 and "mean |mean ‖x‖ − requested|" in track_ax[0].get_title()
    # a column condition (no radius) gets the scatter panel only
    col = fit_condition("radius", data)
    col.kind, col.names = "column:t", ["t"]
    fig = plot_value_samples(model, col, data, values=[2.0, 3.0], n_per_value=10)
    assert not [ax for ax in fig.axes if ax.get_xlabel() == "requested radius"]
    with pytest.raises(ValueError, match="continuous"):
        plot_value_samples(model, fit_condition("label", data), data)


def test_image_label_samples_are_one_row_per_label() -> None:
    rng = np.random.default_rng(0)
    labels = torch.arange(40) % 4
    data = Dataset("tiny-images", torch.tensor(rng.uniform(size=(40, 36)), dtype=torch.float32), labels,
                   ["a", "b", "c", "d"], image_shape=(1, 6, 6))
    cond = fit_condition("label", data)
    model = build_model(ModelConfig(hidden=[16], likelihood="bernoulli"), 36, 4, seed=0)
    fig = plot_label_samples(model, cond, data, n_per_label=5)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c", "d"]
    canvas = ax.get_images()[0].get_array()
    assert canvas.shape == (4 * 7 + 1, 5 * 7 + 1)  # 4 rows x 5 tiles of 6x6 with 1-pixel padding


def test_latent_probe_tells_a_label_carrying_code_from_a_label_free_one() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    informative = rng.normal(size=(400, 2)) * 0.1 + np.stack([labels, -labels], 1)
    uninformative = rng.normal(size=(400, 2))
    acc, chance = condition_in_latent(informative, labels, True)
    assert chance == pytest.approx(0.25) and acc > 0.95
    acc, _ = condition_in_latent(uninformative, labels, True)
    assert acc < 0.4
    r2, _ = condition_in_latent(informative, labels.astype(float), False)
    assert r2 > 0.9


def test_latent_figure_reports_the_probe_in_its_title() -> None:
    data = _points(ring)
    cond = fit_condition("label", data)
    model = build_model(SMALL, 2, cond.width, seed=0)
    fig = plot_latent_by_condition(model, cond, data)
    assert "k-NN accuracy of the label from z ~ q(z|x, c)" in fig.axes[0].get_title()
    one_d = build_model(ModelConfig(hidden=[16], latent_dim=1), 2, cond.width, seed=0)
    fig = plot_latent_by_condition(one_d, cond, data)
    assert fig.axes[0].get_ylabel() == "label"


def test_registry_applies_conditional_figures_to_conditional_runs_only(tmp_path: Path) -> None:
    data = _points(ring)
    label = fit_condition("label", data)
    model = build_model(SMALL, 2, label.width, seed=0)
    ctx = PlotContext(model=model, data=data, condition=label)
    names = ["cond_label_samples", "cond_value_samples", "cond_latent"]
    apply, skip = plan(ctx, names)
    assert [s.name for s in apply] == ["cond_label_samples", "cond_latent"]
    assert skip == [("cond_value_samples", "the condition is not continuous")]
    plain = PlotContext(model=build_model(SMALL, 2, 0, seed=0), data=data)
    apply, skip = plan(plain, names)
    assert apply == [] and all("unconditional" in reason for _, reason in skip)
    # From a saved run directory: the condition spec is read back and the figures are written.
    cfg = RunConfig.from_dict({"data": {"name": "ring", "condition": "label", "n_train": 200},
                               "model": SMALL.model_dump()})
    ckpt.save(tmp_path / "run", model, cfg, condition=label)
    paths = make_figures(tmp_path / "run", names, n_points=200)
    assert sorted(p.name for p in paths) == ["cond_label_samples.png", "cond_latent.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_collapsed_latent_keeps_the_prior_circles_in_view() -> None:
    """All means within ±0.02 of 0: the view still holds the 2σ circle, so the code looks collapsed."""
    data = _points(ring)
    cond = fit_condition("label", data)
    model = build_model(SMALL, 2, cond.width, seed=0)
    noise = torch.Generator().manual_seed(0)
    model.embed = lambda x, c=None: 0.01 * torch.randn(len(x), 2, generator=noise)  # a collapsed code
    ax = plot_latent_by_condition(model, cond, data).axes[0]
    for lo, hi in (ax.get_xlim(), ax.get_ylim()):
        assert lo <= -2.0 and hi >= 2.0


def test_label_samples_show_noisy_samples_beside_the_means() -> None:
    data = _points(ring)
    cond = fit_condition("label", data)
    model = build_model(ModelConfig(hidden=[16], likelihood="gaussian", recon_var=0.5), 2, cond.width, seed=0)
    fig = plot_label_samples(model, cond, data, n_per_label=200, generator=torch.Generator().manual_seed(0))
    means_ax, noisy_ax = fig.axes[1], fig.axes[2]
    assert "E[x|z, c]" in means_ax.get_title() and "p(x|z, c)" in noisy_ax.get_title()

    def spread(ax) -> float:  # variance of the first label's drawn points (the grey data is collection 0)
        return float(np.asarray(ax.collections[1].get_offsets()).var(axis=0).sum())

    # σ² = 0.5 per coordinate: the noisy samples spread by about 2 · 0.5 more than the means
    assert spread(noisy_ax) - spread(means_ax) == pytest.approx(1.0, abs=0.35)


@pytest.mark.parametrize("kind", ["label", "radius"])
def test_conditional_titles_name_the_condition(kind) -> None:
    data = _points(radial_gmm)
    cond = fit_condition(kind, data)
    model = build_model(SMALL, 2, cond.width, seed=0, cond_embed=cond.embed_widths)
    draw = plot_label_samples if kind == "label" else plot_value_samples
    for fig in (draw(model, cond, data, generator=torch.Generator().manual_seed(0)),
                plot_latent_by_condition(model, cond, data)):
        assert kind in fig._suptitle.get_text()


def test_the_traversal_per_label_decodes_one_grid_under_each_label() -> None:
    from vaelab.plots.conditional import plot_traversal_by_condition
    from vaelab.plots.images import traversal_grid

    rng = np.random.default_rng(0)
    labels = torch.arange(40) % 3
    data = Dataset("tiny-images", torch.tensor(rng.uniform(size=(40, 36)), dtype=torch.float32), labels,
                   ["a", "b", "c"], image_shape=(1, 6, 6))
    cond = fit_condition("label", data)
    model = build_model(ModelConfig(hidden=[16], latent_dim=3, likelihood="bernoulli"), 36, cond.width, seed=0)
    fig = plot_traversal_by_condition(model, cond, (1, 6, 6), dims=(2, 0), steps=5)
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in shown] == ["c = a", "c = b", "c = c"]
    assert all(ax.get_images()[0].get_array().shape == (5 * 7 + 1, 5 * 7 + 1) for ax in shown)
    assert "z₃ across, z₁ up, over [-2, 2]², the other dimension at 0" in " ".join(fig._suptitle.get_text().split())
    # Each panel is the grid decoded under its own c: the top-left tile is E[x | z = (-2 · e₃ + 2 · e₁), c].
    from vaelab.plots.conditional import condition_panels

    c = [cond.encode(raw)[0] for _, raw in condition_panels(cond)[:2]]
    grids = [traversal_grid(model, (2, 0), steps=5, c=ci) for ci in c]
    z = torch.tensor([[2.0, 0.0, -2.0]])
    for grid, ci in zip(grids, c, strict=True):
        torch.testing.assert_close(grid[0], model.decode(z, ci[None]).mean[0])
    assert not torch.allclose(grids[0], grids[1])  # c reaches the decoder
