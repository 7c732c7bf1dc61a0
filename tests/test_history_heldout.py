"""The history's held-out columns: the β = 1 ELBO of a fixed subset of held-out points at the end
of an epoch, beside the training columns. Scoring them changes no training draw and no weight;
they resume exactly, a stacked member gets its solo run's column, and train_run scores the run's
own test split."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import tiny_config
from vaelab.config import RunConfig
from vaelab.data.registry import load_dataset
from vaelab.history import HELDOUT_COLUMNS, History
from vaelab.models import build_model
from vaelab.train import HeldOut, TrainingDataError, TrainingInterrupted, fit, fit_stack, heldout_terms
from vaelab.train.loop import heldout_every
from vaelab.train.members import HELDOUT_POINTS
from vaelab.train.run import heldout_data, train_run


def config(**train: object) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "ring", "n_train": 200, "n_test": 700},
        "model": {"hidden": [16, 16], "likelihood": "gaussian", "recon_var": 0.1},
        "train": {"objective": "iwae", "epochs": 6, "batch_size": 64, "diversity_samples": 32,
                  "checkpoint_every": 2, **train},
    })


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    cfg = config()
    return load_dataset(cfg.data, "train").x, load_dataset(cfg.data, "test").x  # (200, 2), (700, 2)


def fresh(cfg: RunConfig) -> torch.nn.Module:
    return build_model(cfg.model, 2, seed=cfg.train.seed)


def test_scoring_held_out_points_changes_no_weight_and_no_draw(data):
    x, x_test = data
    cfg = config()
    plain, scored = fresh(cfg), fresh(cfg)
    saved: list = []
    h_plain = fit(plain, x, cfg.train)
    h_scored = fit(scored, x, cfg.train, heldout=x_test, on_checkpoint=lambda m, h, s: saved.append(s))
    for name, value in plain.state_dict().items():  # bit for bit
        assert torch.equal(value, scored.state_dict()[name]), name
    for column in History.COLUMNS:
        if column != "seconds":
            assert h_plain.column(column) == h_scored.column(column), column
    # The training generator made the same draws: its saved state is that of a fit without scoring.
    saved_plain: list = []
    fit(fresh(cfg), x, cfg.train, on_checkpoint=lambda m, h, s: saved_plain.append(s))
    assert torch.equal(saved[-1].rng, saved_plain[-1].rng)
    assert not any(c in h_plain.columns for c in HELDOUT_COLUMNS)
    assert set(HELDOUT_COLUMNS) <= set(h_scored.columns)


def test_the_held_out_elbo_is_its_terms_and_is_deterministic(data):
    x, x_test = data
    cfg = config()
    a = fit(fresh(cfg), x, cfg.train, heldout=x_test)
    b = fit(fresh(cfg), x, cfg.train, heldout=x_test)
    assert a.column("heldout_elbo") == b.column("heldout_elbo")  # fixed subset, fixed draws
    scored = [r for r in a.rows if math.isfinite(r["heldout_elbo"])]
    assert scored[-1]["epoch"] == 6  # the last epoch is always scored
    for r in scored:
        assert r["heldout_elbo"] == pytest.approx(-(r["heldout_recon"] + r["heldout_kl"]), abs=1e-9)
        assert r["heldout_kl"] > 0
    # The score leaves the global RNG alone and draws nothing from a generator it is not given.
    model = fresh(cfg)
    before = torch.get_rng_state()
    first = heldout_terms(model, HeldOut.subset(x_test))
    assert torch.equal(before, torch.get_rng_state())
    assert heldout_terms(model, HeldOut.subset(x_test)) == first


def test_the_score_shows_overfitting():
    """16 training points and a flexible decoder for 800 steps: the training −ELBO keeps falling
    while the held-out one turns up, and ends far above it."""
    cfg = RunConfig.from_dict({
        "data": {"name": "ring", "n_train": 16, "n_test": 400},
        "model": {"hidden": [64, 64]},
        "train": {"objective": "elbo", "epochs": 800, "batch_size": 16, "lr": 3e-3, "diversity_samples": 16},
    })
    x, x_test = load_dataset(cfg.data, "train").x, load_dataset(cfg.data, "test").x
    history = fit(fresh(cfg), x, cfg.train, heldout=x_test)
    scored = [r for r in history.rows if math.isfinite(r["heldout_elbo"])]
    held = [-r["heldout_elbo"] for r in scored]
    train = [r["recon"] + r["kl"] for r in scored]
    assert len(scored) >= 4 and scored[-1]["epoch"] == 800
    assert train[-1] < train[0] - 1.0  # training keeps improving
    assert held[-1] > min(held) + 1.0  # the held-out bound got worse after its best epoch
    assert held[-1] - train[-1] > 3.0, (train[-1], held[-1])  # a wide gap: memorised points


def test_held_out_columns_resume_exactly(data):
    x, x_test = data
    cfg = config(epochs=5)
    whole = fit(fresh(cfg), x, cfg.train, heldout=x_test)
    model, saved = fresh(cfg), []
    steps = iter(range(10_000))
    with pytest.raises(TrainingInterrupted):  # stopped in the middle of epoch 3
        fit(model, x, cfg.train, heldout=x_test, should_stop=lambda: next(steps) == 10,
            on_checkpoint=lambda m, h, s: saved.append((copy.deepcopy(m.state_dict()), copy.deepcopy(h), s)))
    weights, history, state = saved[-1]
    assert state.epoch == 2 and state.batch == 2
    resumed = fresh(cfg)
    resumed.load_state_dict(weights)
    rest = fit(resumed, x, cfg.train, state=state, history=History(list(history.rows)), heldout=x_test)
    assert any(math.isfinite(v) for v in whole.column("heldout_elbo")[2:])  # scored epochs after the resume
    for column in HELDOUT_COLUMNS:  # bit for bit, NaN (an epoch not scored) where the whole run has NaN
        assert [repr(v) for v in rest.column(column)] == [repr(v) for v in whole.column(column)], column


def test_a_stacked_member_gets_its_solo_runs_held_out_column(data):
    x, x_test = data
    configs = [config(), config(seed=3, beta=4.0, lr=1e-2)]
    stacked = [fresh(c) for c in configs]
    results = fit_stack(stacked, x, [c.train for c in configs], heldout=x_test)
    for cfg, result in zip(configs, results, strict=True):
        solo = fit(fresh(cfg), x, cfg.train, heldout=x_test)
        for column in HELDOUT_COLUMNS:
            torch.testing.assert_close(result.history.column(column), solo.column(column), rtol=1e-4, atol=1e-4,
                                       equal_nan=True)
    a, b = (r.history.column("heldout_elbo") for r in results)
    assert a != b  # the members' own weights, not one score for all


def test_how_often_the_held_out_points_are_scored():
    default = RunConfig()
    vae = build_model(default.model, 2, seed=0)
    # The default run (2,000 points, IWAE k = 4): every epoch. Under the ELBO: every 2nd. Tiny: rarely.
    assert heldout_every(vae, default.train, 2000) == 1
    assert heldout_every(vae, default.train.model_copy(update={"objective": "elbo"}), 2000) == 2
    assert heldout_every(vae, default.train, 10_000, points=HELDOUT_POINTS) == 1
    assert heldout_every(vae, default.train.model_copy(update={"objective": "elbo"}), 160) == 25


def test_a_small_training_set_is_scored_every_few_epochs_and_at_the_end(data):
    x, x_test = data  # 200 points, k = 4: every 5th epoch
    cfg = config(epochs=7)
    history = fit(fresh(cfg), x, cfg.train, heldout=x_test)
    scored = [int(r["epoch"]) for r in history.rows if math.isfinite(r["heldout_elbo"])]
    assert scored == [1, 6, 7]
    assert history.has_heldout() and not History(history.rows[1:5]).has_heldout()


def test_the_held_out_subset_is_fixed_and_seeded():
    x = torch.arange(3000, dtype=torch.float32).reshape(1500, 2)
    c = torch.arange(1500, dtype=torch.float32)[:, None]
    a, b = HeldOut.subset(x, c), HeldOut.subset(x.clone(), c)
    assert len(a.x) == HELDOUT_POINTS and torch.equal(a.x, b.x)
    assert torch.equal(a.x[:, 0] / 2, a.c[:, 0])  # each point keeps its own condition
    assert not torch.equal(a.x, x[:HELDOUT_POINTS])  # a random choice, not the first rows
    small = HeldOut.subset(x[:10])
    assert torch.equal(small.x, x[:10])


def test_held_out_points_that_do_not_fit_the_model_are_refused(data):
    x, _ = data
    cfg = config(epochs=1)
    with pytest.raises(TrainingDataError, match="held-out points: x has 3 columns"):
        fit(fresh(cfg), x, cfg.train, heldout=torch.zeros(10, 3))
    with pytest.raises(TrainingDataError, match="held-out points: x holds 1 NaN"):
        fit(fresh(cfg), x, cfg.train, heldout=torch.tensor([[0.0, float("nan")]]))


def test_an_autoencoder_has_a_held_out_reconstruction(data):
    x, x_test = data
    cfg = RunConfig.from_dict({"data": {"name": "ring"}, "model": {"kind": "ae", "hidden": [16, 16]},
                               "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 16}})
    history = fit(build_model(cfg.model, 2, seed=0), x, cfg.train, heldout=x_test)
    assert "heldout_recon" in history.columns and "heldout_elbo" not in history.columns
    assert math.isfinite(history.rows[-1]["heldout_recon"])


def test_train_run_scores_its_own_test_split_with_its_conditions(tmp_path):
    cfg = tiny_config(data={"name": "radial_gmm", "condition": "label", "n_train": 256, "n_test": 600},
                      train={"epochs": 2})
    run = train_run(cfg, tmp_path / "run", device="cpu")
    assert run.history.has_heldout()
    text = (tmp_path / "run" / "history.csv").read_text()
    assert "heldout_elbo,heldout_recon,heldout_kl" in text.splitlines()[0]
    held = heldout_data(run.config, run.condition, "cpu")
    test = load_dataset(run.config.data, "test")
    train = load_dataset(run.config.data, "train")
    assert len(held.x) == HELDOUT_POINTS and held.c is not None
    rows = [int(torch.nonzero((test.x == p).all(dim=1))[0]) for p in held.x[:50]]
    assert torch.equal(held.c[:50], run.condition.tensor(test)[rows])  # the test points' own labels
    assert not any(bool((train.x == p).all(dim=1).any()) for p in held.x[:50])  # none is a training point
    # What the loop recorded is the score of the final model on those points.
    last = run.history.rows[-1]
    assert heldout_terms(run.model, held)["heldout_elbo"] == pytest.approx(last["heldout_elbo"], abs=1e-5)


def test_a_held_out_split_that_cannot_be_read_leaves_no_run_folder(tmp_path, monkeypatch):
    """The held-out points are read before the folder is taken: a failing test split is refused
    with nothing written (not an untrained checkpoint left behind)."""
    import vaelab.train.run as run_module
    from vaelab.data.download import DatasetNotFoundError
    from vaelab.train import train_run

    real = run_module.load_dataset

    def no_test_split(config, split="train", **kw):
        if split == "test":
            raise DatasetNotFoundError("the test split is not on disk")
        return real(config, split, **kw)

    monkeypatch.setattr(run_module, "load_dataset", no_test_split)
    with pytest.raises(DatasetNotFoundError):
        train_run(tiny_config(train={"epochs": 1}), tmp_path / "run")
    assert not (tmp_path / "run").exists()
