"""The figures leave the caller's world alone: the matplotlib backend, pyplot's figure list and
the global random number generators are the same after drawing and saving every figure."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run in a fresh interpreter: the backend can only be observed before anything else chose it.
SCRIPT = textwrap.dedent(
    """
    import matplotlib
    matplotlib.use("svg")                      # the user's choice (anything but Agg)
    import matplotlib.pyplot as plt            # a notebook user has pyplot loaded
    import numpy as np
    import random
    import torch
    from pathlib import Path
    import tempfile

    import sklearn.model_selection, sklearn.neighbors  # their import draws from Python's RNG: not ours

    import vaelab.plots as plots
    assert matplotlib.get_backend() == "svg", f"import switched the backend to {matplotlib.get_backend()}"

    from vaelab.history import History
    from vaelab.conditions import fit_condition
    from vaelab.config import ModelConfig, RunConfig
    from vaelab.data.dataset import Dataset
    from vaelab.data.registry import load_dataset
    from vaelab.config import DataConfig
    from vaelab.data.toy2d import ring
    from vaelab.models import build_model
    from vaelab.plots.common import PlotContext, subset

    small = ModelConfig(hidden=[16])
    rows = [{"epoch": e, "step": e, "loss": 3.0 / e, "recon": 2.0 / e, "kl": 1.0, "diversity": 1.0,
             "seconds": 0.1 * e} for e in range(1, 4)]
    points = ring(300, generator=torch.Generator().manual_seed(0))
    digits = subset(load_dataset(DataConfig(name="digits", limit_train=64), "train"), 64)
    label = fit_condition("label", points)
    radius = fit_condition("radius", points)
    digit_label = fit_condition("label", digits)
    contexts = [
        # With the run's config: the untrained model of before_after is rebuilt from it (seed 0).
        PlotContext(model=build_model(small, 2, seed=0), data=points, history=History(rows),
                    config=RunConfig.from_dict({"data": {"name": "ring", "n_test": 100}, "model": {"hidden": [16]}}),
                    density_k=2, density_grid=8,
                    metrics={"mutual_info": 0.5, "marginal_kl": 0.2, "kl": 0.7, "kl_per_dim": [0.4, 0.3]}),
        PlotContext(model=build_model(small.model_copy(update={"latent_dim": 3}), 2, seed=0), data=points),
        PlotContext(model=build_model(small, 2, label.width, seed=0), data=points, condition=label,
                    density_k=2, density_grid=8),  # p(x|c) per label, the latent grid per label
        PlotContext(model=build_model(small, 2, radius.width, seed=0), data=points, condition=radius),
        PlotContext(model=build_model(small.model_copy(update={"likelihood": "bernoulli"}), 784, seed=0),
                    data=digits),
        PlotContext(model=build_model(small.model_copy(update={"likelihood": "bernoulli"}), 784, digit_label.width,
                                      seed=0), data=digits, condition=digit_label),  # the class × style grid
        PlotContext(model=build_model(ModelConfig(kind="planar", hidden=[16]), 2, seed=0), data=points),
        PlotContext(model=build_model(ModelConfig(kind="ladder", hidden=[16], latent_dim=3), 2, seed=0), data=points,
                    history=History([{**row, "kl_1": 0.6, "kl_2": 0.4} for row in rows])),
        PlotContext(model=build_model(ModelConfig(kind="vamp", hidden=[16]), 2, seed=0), data=points),
        PlotContext(model=build_model(ModelConfig(kind="mog", hidden=[16]), 2, seed=0), data=points),
        # categorical latents: the class of each point and samples per class (2 groups of 3; digits: 1 of 8)
        PlotContext(model=build_model(ModelConfig.model_validate({"kind": "gumbel", "hidden": [16], "latent_dim": 6,
                                                                  "gumbel": {"groups": 2}}), 2, seed=0),
                    data=points),
        PlotContext(model=build_model(ModelConfig.model_validate({"kind": "gumbel", "hidden": [16], "latent_dim": 8,
                                                                  "likelihood": "bernoulli"}), 784, seed=0),
                    data=digits),
        # discrete codes of a VQ-VAE (6 codes): codebook usage, the code of each point, prior samples
        PlotContext(model=build_model(ModelConfig.model_validate({"kind": "vq", "hidden": [16], "vq": {"codes": 6}}),
                                      2, seed=0), data=points),
        PlotContext(model=build_model(small, 3, seed=0),  # 3 data coordinates: the pair plot
                    data=Dataset(name="ring3", x=torch.cat([points.x, points.x.norm(dim=1, keepdim=True)], 1))),
    ]
    drawn = set()
    out = Path(tempfile.mkdtemp())
    torch.manual_seed(123); np.random.seed(123); random.seed(123)
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    for i, ctx in enumerate(contexts):
        for item in plots.render_all(ctx):
            assert item.figure is not None, (item.spec.name, item.error)
            for fmt in ("png", "svg"):
                plots.save_figure(item.figure, out / f"{i}-{item.spec.name}.{fmt}")
            drawn.add(item.spec.name)
    missing = set(plots.figure_names()) - drawn
    assert not missing, f"not drawn by this test: {missing}"
    assert matplotlib.get_backend() == "svg", f"drawing switched the backend to {matplotlib.get_backend()}"
    assert plt.get_fignums() == [], f"pyplot figures left open: {plt.get_fignums()}"
    assert torch.equal(torch.get_rng_state(), torch_state), "the global torch RNG was drawn from"
    assert random.getstate() == py_state, "the global Python RNG was drawn from"
    now = np.random.get_state()
    assert now[0] == np_state[0] and (now[1] == np_state[1]).all() and now[2:] == np_state[2:], \\
        "the global numpy RNG was drawn from"
    print("ok", len(drawn))
    """
)


def test_drawing_every_figure_leaves_backend_pyplot_and_rngs_alone():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
