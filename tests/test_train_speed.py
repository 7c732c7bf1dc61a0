"""The speed work on fit() keeps the numbers: pinned weights and history of short default runs.

The digests were taken before any of the overhead was removed (issue 12): removing host syncs,
caching dispatch and batching bookkeeping must leave every weight and every history value
bit-identical on the eager path. They are exact float32 results of this machine's torch
build (2.13 CPU, one thread); a different BLAS or CPU could round differently.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from vaelab.config import RunConfig
from vaelab.data.registry import load_dataset
from vaelab.models import build_model
from vaelab.train import TrainingDiverged, fit


def _run(train: dict, data: str = "moons"):
    cfg = RunConfig.from_dict({"data": {"name": data}, "train": train})
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, x.shape[1], seed=cfg.train.seed)
    return model, fit(model, x, cfg.train), cfg


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _history_values(history) -> list[tuple]:
    """Every history value except the wall-clock seconds."""
    return [tuple(v for k, v in row.items() if k != "seconds") for row in history.rows]


PINNED = {
    # the default 2-D run (IWAE k = 4, cosine lr 3e-3, batch 256) for 30 steps on moons
    "default": ({"steps": 30},
                "0bf8a3093b198f0a1d790ab84f15b8bd5f6f3bc57272ffd90db629f8c8e4c7f7", 1.9018543163935344,
                1.4283199310302734),
    # the ELBO with gradient clipping and another seed
    "elbo-clip": ({"steps": 30, "objective": "elbo", "grad_clip": 1.0, "seed": 3},
                  "13986e430b8e5a26e95df50e58a87fc7bd74d43876d28be224bbb3b408d93162", 1.9595786531766255,
                  1.3600430488586426),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_short_runs_keep_their_pinned_weights(name):
    train, digest, last_loss, last_grad_norm = PINNED[name]
    model, history, _ = _run(train)
    assert _digest(model) == digest
    assert history.rows[-1]["loss"] == last_loss
    assert history.rows[-1]["grad_norm"] == last_grad_norm


def test_skip_policy_keeps_the_skipped_steps_and_weights():
    """lr = 1e3 breaks the model after one step: every later step is skipped, each by its own number."""
    cfg = RunConfig.from_dict({"data": {"name": "moons"}, "train": {
        "steps": 24, "lr": 1e3, "nonfinite": "skip", "max_skips": 50, "lr_schedule": "constant"}})
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, 2, seed=0)
    infos = []
    history = fit(model, x, cfg.train, on_step=infos.append)
    assert [i.step for i in infos if i.skipped] == list(range(2, 25))
    assert [i.step for i in infos] == list(range(1, 25))
    assert [r["skipped"] for r in history.rows] == [7, 8, 8]
    assert history.rows[0]["loss"] == 2.508491039276123 and math.isnan(history.rows[1]["loss"])
    assert _digest(model) == "937c7e313ba2d250d3bb34032345fda3f68852835be5aa6a71dc61096d6265f4"


def test_stop_policy_names_the_exact_step_and_term():
    cfg = RunConfig.from_dict({"data": {"name": "moons"}, "train": {"steps": 24, "lr": 1e3}})
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, 2, seed=0)
    with pytest.raises(TrainingDiverged) as err:
        fit(model, x, cfg.train)
    assert (err.value.step, err.value.epoch, err.value.term) == (2, 1, "reconstruction and KL")
    assert err.value.history.rows[-1]["step"] == 2
