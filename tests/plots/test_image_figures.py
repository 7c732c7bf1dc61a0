"""Image figures: the numpy tiler, each figure on a tiny digits model, and the registry entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from vaelab.config import RunConfig
from vaelab.plots import make_figures, registry
from vaelab.plots.images import (
    FIGURES,
    plot_image_samples,
    plot_interpolations,
    plot_latent_classes,
    plot_reconstructions,
    plot_traversal,
    tile,
    traversal_grid,
)
from vaelab.train import train_run

IMAGE_FIGURES = [spec.name for spec in FIGURES]


def test_tile_layout():
    imgs = np.stack([np.full((1, 2, 3), v, dtype=np.float32) for v in (0.0, 1.0, 0.25)])
    canvas = tile(imgs, ncols=2, pad=1, pad_value=0.5)
    assert canvas.shape == (2 * 3 + 1, 2 * 4 + 1)
    assert (canvas[1:3, 1:4] == 0.0).all() and (canvas[1:3, 5:8] == 1.0).all()
    assert (canvas[4:6, 1:4] == 0.25).all() and (canvas[4:6, 5:8] == 0.5).all()  # empty tile stays padding
    rgb = tile(np.zeros((4, 3, 2, 2)), ncols=4)
    assert rgb.shape == (4, 13, 3)
    with pytest.raises(ValueError, match="shape"):
        tile(np.zeros((2, 2, 2)), 2)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    cfg = RunConfig.from_dict({
        "data": {"name": "digits8", "limit_train": 200, "limit_test": 40},
        "model": {"hidden": [32], "latent_dim": 2, "likelihood": "bernoulli"},
        "train": {"epochs": 1, "batch_size": 50, "diversity_samples": 16},
    })
    return train_run(cfg, tmp_path_factory.mktemp("img") / "run")


def test_traversal_grid_orientation(digits_run):
    model = digits_run.model
    grid = traversal_grid(model, (0, 1), steps=3, span=2.0)
    assert grid.shape == (9, 64)
    # Top-left tile decodes z = (-2, +2): up is positive z_j, right is positive z_i.
    expected = model.decode(torch.tensor([[-2.0, 2.0]])).mean
    assert torch.allclose(grid[0], expected[0], atol=1e-6)


def test_every_image_figure_draws(digits_run):
    model, shape = digits_run.model, (1, 8, 8)
    x = torch.rand(12, 64)
    from vaelab.data.registry import load_dataset

    data = load_dataset(digits_run.config.data, "test")
    figs = [plot_reconstructions(model, x, shape, n=6), plot_image_samples(model, shape, n=9),
            plot_traversal(model, shape, (0, 1), steps=5), plot_interpolations(model, x[:3], x[3:6], shape),
            plot_latent_classes(model, data)]
    assert all(isinstance(f, Figure) for f in figs)


def test_registry_renders_image_figures(digits_run, tmp_path):
    assert set(IMAGE_FIGURES) <= set(registry())
    paths = make_figures(digits_run.path, IMAGE_FIGURES, out_dir=tmp_path)
    assert sorted(p.stem for p in paths) == sorted(IMAGE_FIGURES)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_image_figures_skip_toy_runs(trained_run):
    from vaelab.plots import load_context, plan

    apply, skip = plan(load_context(trained_run), IMAGE_FIGURES)
    assert apply == [] and {name for name, _ in skip} == set(IMAGE_FIGURES)


def _titles(fig) -> str:
    return " | ".join([ax.get_title() for ax in fig.axes] + ([fig._suptitle.get_text()] if fig._suptitle else []))


SHOWN = ["image_reconstructions", "image_interpolations", "image_latent_classes"]


def test_image_figures_say_they_show_test_images(digits_run):
    from vaelab.plots import load_context, render

    ctx = load_context(digits_run)
    for name in SHOWN:
        assert "test images" in _titles(render(ctx, name)), name


def test_missing_test_split_falls_back_to_training_images_and_says_so(digits_run, monkeypatch):
    """Only a missing dataset is expected; the figures then say they show training images."""
    import vaelab.data.registry as registry_module
    from vaelab.data.download import DatasetNotFoundError
    from vaelab.plots import load_context, render

    ctx = load_context(digits_run)
    real = registry_module.load_dataset

    def no_test_split(config, split="train"):
        if split == "test":
            raise DatasetNotFoundError("t10k files are not on disk")
        return real(config, split)

    monkeypatch.setattr(registry_module, "load_dataset", no_test_split)
    for name in SHOWN:
        titles = _titles(render(ctx, name))
        assert "training images" in titles and "test images" not in titles, (name, titles)


@pytest.mark.parametrize("error", [PermissionError("data folder: permission denied"),
                                   ValueError("t10k-images: truncated IDX file")])
def test_other_data_errors_are_not_swallowed(digits_run, monkeypatch, error):
    """A corrupt or unreadable test split is an error to show, not a reason to swap in other images."""
    import vaelab.data.registry as registry_module
    from vaelab.plots import load_context, render

    ctx = load_context(digits_run)

    def broken(config, split="train"):
        raise error

    monkeypatch.setattr(registry_module, "load_dataset", broken)
    with pytest.raises(type(error), match=str(error)):
        render(ctx, "image_reconstructions")


def test_binarized_originals_are_drawn_in_grey_and_the_title_says_what_the_model_reads(digits_run):
    """Review D27: a Bernoulli run's figures drew the binarized test digits (speckle). The originals'
    rows and the strips' ends show the grey levels; the reconstructions are still of the binary
    images the model is scored on."""
    from vaelab.data.pixels import eval_view
    from vaelab.data.registry import load_dataset
    from vaelab.plots import load_context, render

    ctx = load_context(digits_run)
    test = load_dataset(digits_run.config.data.model_copy(update={"limit_test": 2000}), "test")
    scored = eval_view(digits_run.config, test)[0].x
    assert set(scored.unique().tolist()) <= {0.0, 1.0} and not set(test.x.unique().tolist()) <= {0.0, 1.0}

    fig = render(ctx, "image_reconstructions")
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    first_original = canvas[1:9, 1:9]  # pad 1, 8x8 tiles: row 0 holds originals
    assert np.allclose(first_original, test.x[0].reshape(8, 8).numpy(), atol=1e-6)
    first_recon = canvas[10:18, 1:9]  # row 1: the reconstruction of the binarized image
    expected = digits_run.model.reconstruct(scored[:1]).reshape(8, 8).detach().numpy()
    assert np.allclose(first_recon, expected, atol=1e-5)
    assert "drawn in grey" in _titles(fig) and "binarization" in _titles(fig)

    strip = np.asarray(render(ctx, "image_interpolations").axes[0].images[0].get_array())
    assert np.allclose(strip[1:9, 1:9], test.x[0].reshape(8, 8).numpy(), atol=1e-6)
    assert "drawn in grey" not in _titles(render(ctx, "image_latent_classes"))


@pytest.mark.parametrize("kind", ["vamp", "mog", "ladder"])
def test_traversal_of_a_learned_prior_sweeps_where_the_prior_is(kind):
    """Issue 22: the traversal swept [-2, 2] around 0 for every family; a learned prior's mass may
    sit elsewhere. It now sweeps each dimension over the prior's mean ± 2 sd, and says so."""
    from vaelab.config import ModelConfig
    from vaelab.models import build_model
    from vaelab.plots.images import prior_moments

    model = build_model(ModelConfig(kind=kind, hidden=[16], latent_dim=4, likelihood="bernoulli"), 64, seed=0)
    with torch.no_grad():  # move the prior away from N(0, I), as training would
        for p in model.parameters():
            p.add_(0.3)
    gen = torch.Generator().manual_seed(0)
    centre, scale = prior_moments(model, generator=gen)
    prior = model.prior()
    z = prior.sample((4000,)) if prior.batch_shape == torch.Size() else prior.sample()
    z = z.reshape(-1, 4)
    assert torch.allclose(centre, z.mean(0), atol=6 * float(z.std(0).max()) / 4000 ** 0.5)
    assert not torch.allclose(centre, torch.zeros(4), atol=0.05)
    grid = traversal_grid(model, (0, 1), steps=3, span=2.0, base=centre, centre=centre, scale=scale)
    corner = centre.clone()
    corner[0], corner[1] = centre[0] - 2 * scale[0], centre[1] + 2 * scale[1]
    assert torch.allclose(grid[0], model.decode(corner[None]).mean[0], atol=1e-6)
    fig = plot_traversal(model, (1, 8, 8), (0, 1), generator=torch.Generator().manual_seed(0))
    text = fig.texts[0].get_text() if fig.texts else fig._suptitle.get_text()
    assert "learned prior's mean ± 2 sd" in text.replace("\n", " ")
    assert fig.axes[0].get_title().startswith("others at the prior's mean")
