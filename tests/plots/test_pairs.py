"""User data with more than two coordinates (review D19): the CSV header's column names label the
data axes, and the pair plot draws every pair of coordinates, data against samples."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vaelab.config import RunConfig
from vaelab.errors import InputError
from vaelab.plots import load_context, plan, render
from vaelab.plots.data_space import plot_pairs
from vaelab.train import train_run


def _labels(fig) -> list[str]:
    return [t for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel()) if t]


@pytest.fixture(scope="module")
def helix_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("helix")
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 4 * np.pi, 400)
    rows = ["east,north,height,part"] + [
        f"{np.cos(a):.5f},{np.sin(a):.5f},{a / np.pi:.5f},{'low' if a < 2 * np.pi else 'high'}" for a in t]
    (folder / "helix.csv").write_text("\n".join(rows) + "\n")
    cfg = RunConfig.from_dict({
        "data": {"path": str(folder / "helix.csv"), "label_column": "part"},
        "model": {"hidden": [16], "latent_dim": 2},
        "train": {"epochs": 2, "batch_size": 100, "diversity_samples": 16},
    })
    return train_run(cfg, folder / "run")


def test_data_axes_carry_the_csv_column_names(helix_run):
    ctx = load_context(helix_run)
    assert ctx.data.columns == ["east", "north", "height"]  # the label column is not a data column
    labels = _labels(render(ctx, "samples"))
    assert "east (coordinate 1 of 3)" in labels and "north (coordinate 2 of 3)" in labels
    assert not any("x₁" in s for s in labels)


def test_pair_plot_draws_every_coordinate_with_its_name(helix_run):
    ctx = load_context(helix_run)
    fig = render(ctx, "pairs")
    labels = _labels(fig)
    assert any(s.startswith("height") for s in labels), labels  # the third coordinate is drawn
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 6  # 3 histograms + 3 pairs below the diagonal
    # Each off-diagonal panel holds the data and the samples: two point clouds of N points each.
    pair_panels = [ax for ax in visible if ax.collections]
    assert len(pair_panels) == 3
    assert all([len(c.get_offsets()) for c in ax.collections] == [len(ctx.data)] * 2 for ax in pair_panels)


def test_chosen_coordinates_and_their_refusals(helix_run):
    ctx = load_context(helix_run, data_dims=(2, 0))
    labels = _labels(render(ctx, "pairs"))
    assert any(s.startswith("height") for s in labels) and not any(s.startswith("north") for s in labels)
    for bad in [(0,), (0, 0), (0, 3), (-1, 1)]:
        with pytest.raises(InputError, match="different data coordinates between 1 and 3"):
            plot_pairs(ctx.model, ctx.data, dims=bad)


def test_pair_plot_applies_where_there_is_more_than_one_pair(trained_run, helix_run):
    _, skipped = plan(load_context(trained_run), ["pairs"])
    assert skipped and "2-D data" in skipped[0][1]
    _, skipped = plan(load_context(helix_run), ["pairs"])
    assert not skipped


def test_data_dims_on_the_command_line(helix_run, trained_run, tmp_path):
    from typer.testing import CliRunner

    from vaelab.cli import app

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    run = tmp_path / "helix"
    shutil.copytree(helix_run.path, run)
    done = invoke("plot", run, "--figures", "pairs", "--data-dims", "3,1")
    assert done.exit_code == 0, done.output
    assert (run / "figures" / "pairs.png").is_file()
    for bad, words in [("1,4", "between 1 and 3"), ("2", "2 to 5 different"), ("1,1", "2 to 5 different"),
                       ("a,b", "--data-dims")]:
        refused = invoke("plot", run, "--figures", "pairs", "--data-dims", bad)
        assert refused.exit_code == 2 and words in refused.output.replace("\n", " "), (bad, refused.output)
    # On 2-D data the pair plot is skipped by default and drawn when asked for.
    ring = tmp_path / "ring"
    shutil.copytree(trained_run, ring)
    assert invoke("plot", ring, "--figures", "pairs").exit_code == 2  # nothing applies: refused, says why
    done = invoke("plot", ring, "--figures", "pairs", "--data-dims", "2,1")
    assert done.exit_code == 0 and (ring / "figures" / "pairs.png").is_file(), done.output
