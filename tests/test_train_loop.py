"""fit()'s loop: interruption mid-epoch, non-finite values (stop / skip), gradient clipping,
the learning-rate schedule, divergence advice and the checks on what fit() is given."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from helpers import tiny_config
from vaelab import checkpoint as ckpt
from vaelab.checkpoint import TrainState
from vaelab.config import ConfigError, RunConfig
from vaelab.data.registry import load_dataset
from vaelab.history import History
from vaelab.models import build_model
from vaelab.train import TrainingDiverged, TrainingInterrupted, fit, train_run


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _setup(**train):
    cfg = tiny_config(train=train)
    x = load_dataset(cfg.data).x
    return cfg, x, build_model(cfg.model, 2, seed=cfg.train.seed)


class _NaNGrads:
    """A gradient hook that returns NaN gradients on the given (1-based) backward passes."""

    def __init__(self, steps):
        self.steps, self.calls = set(steps), 0

    def __call__(self, grad):
        self.calls += 1
        return torch.full_like(grad, float("nan")) if self.calls in self.steps else grad


# -- learning rate --------------------------------------------------------------------------


def test_cosine_learning_rate_at_the_first_and_last_step():
    cfg, x, model = _setup(epochs=5, lr=1e-2, lr_schedule="cosine")
    seen = []
    hist = fit(model, x, cfg.train, on_step=lambda info: seen.append(info.lr))
    budget = 5 * 4
    assert len(seen) == budget
    assert seen[0] == pytest.approx(1e-2, rel=1e-12)  # cos(0) = 1: the full rate first
    # the last step uses step index budget-1, so the rate is small but not 0
    assert seen[-1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * (budget - 1) / budget)), rel=1e-12)
    assert seen[-1] < 1e-4
    assert hist.column("lr")[-1] == seen[-1]  # the history records the rate of the epoch's last step


def test_constant_learning_rate_is_constant():
    cfg, x, model = _setup(epochs=2, lr=1e-2, lr_schedule="constant")
    seen = []
    fit(model, x, cfg.train, on_step=lambda info: seen.append(info.lr))
    assert seen == [1e-2] * 8


# -- what fit() is given (audit A31, A36, A38, A38b) -------------------------------------------


def test_fit_refuses_data_with_nan_instead_of_blaming_the_learning_rate():  # A36
    cfg, x, model = _setup()
    x = x.clone()
    x[7, 1] = float("nan")
    before = _weights(model)
    with pytest.raises(ValueError, match=r"x .*NaN or infinite.*row 7, column 1") as err:
        fit(model, x, cfg.train)
    assert "learning rate" not in str(err.value)
    assert _equal(before, _weights(model))


@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
def test_fit_refuses_infinite_data(value):  # T20: 1e39 becomes inf in float32
    cfg, x, model = _setup()
    x = x.clone()
    x[3, 0] = value
    with pytest.raises(ValueError, match=r"row 3, column 0"):
        fit(model, x, cfg.train)


def test_fit_refuses_a_non_finite_condition():
    cfg = tiny_config(data={"condition": "radius"}, model={"cond_embed": []})
    x = load_dataset(cfg.data).x
    model = build_model(cfg.model, 2, cond_dim=1, seed=0)
    c = torch.ones(len(x), 1)
    c[5, 0] = float("nan")
    with pytest.raises(ValueError, match=r"c .*NaN or infinite.*row 5"):
        fit(model, x, cfg.train, c=c)


def test_fit_refuses_zero_rows():  # A38b: returned an empty History before
    cfg, x, model = _setup()
    with pytest.raises(ValueError, match="0 rows"):
        fit(model, x[:0], cfg.train)


def test_fit_refuses_data_of_the_wrong_width():  # A38: a raw "mat1 and mat2" error before
    cfg, x, model = _setup()
    with pytest.raises(ValueError, match=r"3 columns.*x_dim = 2"):
        fit(model, torch.cat([x, x[:, :1]], dim=1), cfg.train)


def test_train_run_says_it_needs_a_run_config(tmp_path):  # A31
    with pytest.raises(ConfigError, match=r"RunConfig.*RunConfig\.from_dict"):
        train_run({"train": {"epochs": 1}}, tmp_path / "r")
    assert not (tmp_path / "r").exists()


# -- non-finite values: stop ----------------------------------------------------------------------


def test_stop_names_the_step_and_the_reconstruction_term():
    cfg, x, model = _setup(epochs=3, objective="elbo")

    def poison(info):
        if info.step == 5:
            with torch.no_grad():
                model.decoder[-1].bias.fill_(float("nan"))  # only p(x|z) breaks; q(z|x) is intact

    with pytest.raises(TrainingDiverged) as err:
        fit(model, x, cfg.train, on_step=poison)
    msg = str(err.value)
    assert "step 6 (epoch 2)" in msg
    assert "reconstruction" in msg and "KL" not in msg
    assert err.value.step == 6 and err.value.term == "reconstruction"


def test_stop_names_the_kl_term_when_beta_is_infinite():  # T40b: advised a smaller lr before
    cfg, x, model = _setup(objective="elbo")
    with pytest.raises(TrainingDiverged) as err:
        fit(model, x, cfg.train.model_copy(update={"beta": float("inf")}))
    msg = str(err.value)
    assert "step 1 (epoch 1)" in msg and "KL" in msg
    assert "--beta" in msg and "learning rate" not in msg


def test_advice_for_an_infinite_recon_var_is_not_a_larger_one():  # T54c: advised "a larger recon_var"
    cfg = tiny_config(model={"likelihood": "gaussian"})
    x = load_dataset(cfg.data).x
    model = build_model(cfg.model.model_copy(update={"recon_var": float("inf")}), 2, seed=0)
    with pytest.raises(TrainingDiverged) as err:
        fit(model, x, cfg.train)
    msg = str(err.value)
    assert "reconstruction" in msg and "--recon-var" in msg
    assert "larger" not in msg and "learning rate" not in msg


def test_advice_for_an_infinite_learning_rate_names_lr():
    cfg, x, model = _setup()
    with pytest.raises(TrainingDiverged) as err:
        fit(model, x, cfg.train.model_copy(update={"lr": float("inf")}))
    assert "--lr" in str(err.value) and "finite" in str(err.value)


def test_stop_names_the_gradients_when_only_they_are_non_finite():
    cfg, x, model = _setup(epochs=2)
    next(model.parameters()).register_hook(_NaNGrads({3}))
    before = {}

    def remember(info):
        before[info.step] = _weights(model)

    with pytest.raises(TrainingDiverged) as err:
        fit(model, x, cfg.train, on_step=remember)
    assert "step 3" in str(err.value) and "gradient" in str(err.value)
    assert err.value.term == "gradients"
    assert _equal(before[2], _weights(model))  # the bad step was not taken
    assert err.value.history.rows[-1]["step"] == 3  # the failing epoch is recorded


# -- non-finite values: skip ----------------------------------------------------------------------


def test_skip_policy_skips_halves_the_lr_and_records_every_skip():
    cfg, x, model = _setup(epochs=3, lr=1e-2, lr_schedule="constant", nonfinite="skip", max_skips=3)
    next(model.parameters()).register_hook(_NaNGrads({2, 6, 7}))
    lrs, weights = {}, {}

    def watch(info):
        lrs[info.step] = info.lr
        weights[info.step] = _weights(model)

    hist = fit(model, x, cfg.train, on_step=watch)
    assert hist.column("skipped") == [1, 2, 0]
    assert hist.column("lr") == [5e-3, 1.25e-3, 1.25e-3]  # 1e-2 · 0.5^skips; step 8 follows three skips
    assert lrs[1] == 1e-2 and lrs[3] == 5e-3 and lrs[8] == 1.25e-3
    assert _equal(weights[1], weights[2])  # a skipped step leaves the weights alone
    assert _equal(weights[6], weights[7]) and not _equal(weights[7], weights[8])
    assert len(hist) == 3 and hist.column("step")[-1] == 12
    assert all(math.isfinite(v) for v in hist.column("loss"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_policy_stops_after_max_skips():
    cfg, x, model = _setup(epochs=3, nonfinite="skip", max_skips=2)
    next(model.parameters()).register_hook(_NaNGrads({2, 3, 9}))
    with pytest.raises(TrainingDiverged) as err:
        fit(model, x, cfg.train)
    assert "step 9 (epoch 3)" in str(err.value)
    assert "max_skips" in str(err.value) and "2 " in str(err.value)
    assert err.value.history.column("skipped") == [2, 0, 0]


def test_skip_policy_survives_a_non_finite_loss():
    cfg, x, model = _setup(epochs=2, objective="elbo", nonfinite="skip", max_skips=5)
    calls = {"n": 0}
    forward = model.decoder.forward

    def sometimes_nan(h):
        calls["n"] += 1
        out = forward(h)
        return out * float("nan") if calls["n"] == 3 else out

    model.decoder.forward = sometimes_nan
    hist = fit(model, x, cfg.train)
    assert hist.column("skipped") == [1, 0]
    assert all(math.isfinite(v) for v in hist.column("loss"))


def test_max_skips_needs_the_skip_policy():
    with pytest.raises(ConfigError, match=r"max_skips.*nonfinite"):
        tiny_config(train={"max_skips": 3})
    with pytest.raises(ConfigError, match="grad_clip"):
        tiny_config(train={"grad_clip": 0.0})
    assert tiny_config(train={"nonfinite": "skip"}).train.max_skips is None  # the documented default applies


# -- gradient clipping ------------------------------------------------------------------------------


def test_grad_clip_bounds_the_gradient_norm_at_each_step():
    cfg, x, model = _setup(epochs=2, grad_clip=0.05)
    norms = []

    def pre_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(pre_step)
    try:
        hist = fit(model, x, cfg.train)
        _, _, free = _setup(epochs=2)
        free_hist = fit(free, x, cfg.train.model_copy(update={"grad_clip": None}))
    finally:
        handle.remove()
    clipped, unclipped = norms[:8], norms[8:]
    assert max(clipped) <= 0.05 * (1 + 1e-5)
    assert min(unclipped) > 0.05  # so the clip acted at every step
    assert not _equal(_weights(model), _weights(free))
    # the history keeps the largest norm of each epoch, measured before clipping
    assert free_hist.column("grad_norm") == pytest.approx([max(unclipped[:4]), max(unclipped[4:])], rel=1e-5)
    assert min(hist.column("grad_norm")) > 0.05


# -- interruption (should_stop) ---------------------------------------------------------------------


@pytest.mark.parametrize("stop_at", [0, 1, 6, 8])
@pytest.mark.parametrize("variant", ["plain", "dynamic", "skip"])
def test_interrupt_mid_epoch_then_resume_is_exact(stop_at, variant):
    train = {"epochs": 3, "checkpoint_every": 2, "lr_schedule": "cosine"}
    if variant == "skip":
        train.update(nonfinite="skip", max_skips=4)
    cfg, x, model = _setup(**train)
    dynamic = variant == "dynamic"
    if dynamic:
        x = torch.sigmoid(x)  # grey levels in [0, 1]: every epoch draws x_bin ~ Bernoulli(x)

    def run(m, **kw):
        if variant == "skip":
            hook = _NaNGrads({3, 7})
            hook.calls = kw.get("state").step if kw.get("state") is not None else 0
            m.parameters().__next__().register_hook(hook)
        return fit(m, x, cfg.train, dynamic_binarization=dynamic, **kw)

    ref_model = build_model(cfg.model, 2, seed=0)
    ref = run(ref_model)

    saved = {}

    def on_checkpoint(m, h, s):
        saved.update(weights=_weights(m), history=History(list(h.rows)), state=s)

    steps = {"n": 0}

    def should_stop():
        return steps["n"] >= stop_at

    def count(info):
        steps["n"] = info.step

    with pytest.raises(TrainingInterrupted) as err:
        run(model, on_step=count, on_checkpoint=on_checkpoint, should_stop=should_stop)
    assert err.value.step == stop_at
    state = saved["state"]
    assert state.step == stop_at and not state.complete
    assert state.batch == stop_at % 4  # 4 batches per epoch
    # a fresh process: the weights of the checkpoint, then the state and history
    resumed = build_model(cfg.model, 2, seed=123)
    resumed.load_state_dict(saved["weights"])
    hist = run(resumed, state=state, history=saved["history"])
    assert _equal(_weights(ref_model), _weights(resumed))
    for a, b in zip(ref.rows, hist.rows, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_interrupted_train_run_writes_a_mid_epoch_checkpoint_and_resumes_exactly(tmp_path):
    cfg = tiny_config(train={"epochs": 3, "checkpoint_every": 3})
    ref = train_run(cfg, tmp_path / "ref")
    steps = {"n": 0}
    with pytest.raises(TrainingInterrupted) as err:
        train_run(cfg, tmp_path / "r", should_stop=lambda: steps["n"] >= 6,
                  on_step=lambda info: steps.__setitem__("n", info.step))
    assert (err.value.step, err.value.epoch) == (6, 2)
    state = ckpt.load_state(tmp_path / "r")
    assert (state.step, state.epoch, state.batch) == (6, 1, 2)
    assert len(ckpt.load_history(tmp_path / "r")) == 1  # the unfinished epoch is in state.pt, not the history
    assert not list((tmp_path / "r").glob(".*.tmp"))
    run = train_run(cfg, tmp_path / "r", resume=True)
    assert _equal(_weights(ref.model), _weights(run.model))
    assert run.history.column("loss") == ref.history.column("loss")
    assert ckpt.load_state(tmp_path / "r").complete


# -- history ----------------------------------------------------------------------------------------


def test_history_reads_a_csv_from_before_the_new_columns():
    old = "epoch,step,loss,recon,kl,diversity,seconds\n1,4,2.5,2.0,0.5,1.0,0.1\n"
    hist = History.from_csv(old)
    assert hist.rows[0]["skipped"] == 0 and math.isnan(hist.rows[0]["lr"])
    assert History.from_csv(hist.to_csv()).rows[0]["loss"] == 2.5


def test_train_state_round_trips_the_mid_epoch_fields(tmp_path):
    state = TrainState(step=6, epoch=1, rng=torch.Generator().get_state(), epoch_rng=torch.Generator().get_state(),
                       batch=2, epoch_sums=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), epoch_seen=128,
                       epoch_skipped=1, epoch_seconds=0.5, skips=3, grad_norm_max=2.5)
    cfg = tiny_config()
    ckpt.save(tmp_path / "r", build_model(cfg.model, 2, seed=0), cfg, state=state)  # through the checkpoint unit
    back = ckpt.load_state(tmp_path / "r")
    assert (back.batch, back.epoch_seen, back.epoch_skipped, back.skips) == (2, 128, 1, 3)
    assert torch.equal(back.epoch_sums, state.epoch_sums) and torch.equal(back.epoch_rng, state.epoch_rng)
    assert back.epoch_seconds == 0.5 and back.grad_norm_max == 2.5


def test_config_round_trips_the_new_train_fields():
    cfg = tiny_config(train={"nonfinite": "skip", "max_skips": 4, "grad_clip": 1.5})
    back = RunConfig.from_dict(cfg.model_dump())
    assert (back.train.nonfinite, back.train.max_skips, back.train.grad_clip) == ("skip", 4, 1.5)


def test_a_bernoulli_model_refuses_grey_training_data_unless_binarized_on_the_fly():
    from vaelab.likelihoods import DataSupportError

    cfg = tiny_config(model={"likelihood": "bernoulli"})
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(0))  # grey levels in (0, 1)
    model = build_model(cfg.model, 2, seed=0)
    with pytest.raises(DataSupportError, match="the training data is not binary"):
        fit(model, x, cfg.train)
    fit(model, x, cfg.train.model_copy(update={"epochs": 1}), dynamic_binarization=True)  # draws {0, 1}
    fit(model, (x > 0.5).float(), cfg.train.model_copy(update={"epochs": 1}))


def test_train_run_refuses_a_bernoulli_model_on_real_valued_points_before_writing(tmp_path):
    from vaelab.errors import InputError
    from vaelab.train import train_run

    with pytest.raises(InputError, match=r"Bernoulli likelihood is a distribution over \{0, 1\}, but ring"):
        train_run(tiny_config(model={"likelihood": "bernoulli"}), tmp_path / "r")
    assert not (tmp_path / "r").exists()
