"""Stacked training (vaelab.train.fit_stack): every member equals its solo train.fit run."""

from __future__ import annotations

import copy

import pytest
import torch

from vaelab.checkpoint import TrainState
from vaelab.config import ModelConfig, RunConfig, TrainConfig
from vaelab.data.registry import load_dataset
from vaelab.errors import InputError
from vaelab.history import History
from vaelab.models import build_model
from vaelab.train import TrainingDiverged, TrainingInterrupted, can_stack, fit, fit_stack

# Tolerance of stacked against solo weights. The vmapped nn.Linear is a batched matrix product
# whose float32 sums may run in another order than the unbatched one: ~1 ulp (6e-8 relative)
# per product, which Adam (step size ≈ lr whatever the gradient's scale) carries into the
# weights. Over these tests' 24 steps the largest gap measured is 2.4e-7 (absolute, weights of
# order 0.1-1); 1e-5 leaves room for other CPUs' kernels, while one wrong draw, β, σ² or
# learning rate moves the weights by 1e-3 or more.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def base_config(**train: object) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "ring", "n_train": 200},
        "model": {"hidden": [16, 16], "likelihood": "gaussian", "recon_var": 0.1},
        "train": {"objective": "elbo", "epochs": 6, "batch_size": 64, "diversity_samples": 32,
                  "checkpoint_every": 2, **train},
    })


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return load_dataset(base_config().data, "train").x  # (200, 2)


def members(*variants: dict[str, dict[str, object]], **train: object) -> list[RunConfig]:
    base = base_config(**train)
    return [base.with_overrides(v) for v in variants]


def models_for(configs: list[RunConfig], x: torch.Tensor) -> list:
    return [build_model(cfg.model, x.shape[1], seed=cfg.train.seed) for cfg in configs]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, **tol: float) -> None:
    torch.testing.assert_close(a.state_dict(), b.state_dict(), **(tol or TOL))


VARIANTS = ({"train": {"beta": 0.0}}, {"train": {"beta": 4.0}}, {"train": {"seed": 7}},
            {"train": {"lr": 1e-2, "lr_schedule": "constant"}}, {"model": {"recon_var": 0.5}},
            {"train": {"beta_schedule": "warmup", "warmup_epochs": 2, "grad_clip": 1.0}})


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_every_member_equals_its_solo_run(x, objective):
    configs = members(*VARIANTS, objective=objective)
    stacked = models_for(configs, x)
    solo = [copy.deepcopy(m) for m in stacked]
    results = fit_stack(stacked, x, [c.train for c in configs])
    for model, alone, cfg, result in zip(stacked, solo, configs, results, strict=True):
        history, state = solo_fit(alone, x, cfg.train)
        assert result.error is None and result.state.complete
        assert_same_weights(model, alone)
        # Each member's generator made exactly fit's draws: the states are equal bit for bit.
        assert torch.equal(result.state.rng, state.rng)
        assert (result.state.step, result.state.epoch) == (state.step, state.epoch)
        for column in ("loss", "recon", "kl", "beta", "lr", "diversity"):
            torch.testing.assert_close(result.history.column(column), history.column(column), rtol=1e-4, atol=1e-4)
        assert [r["step"] for r in result.history.rows] == [r["step"] for r in history.rows]


def test_members_with_a_condition_and_dynamic_binarization_equal_their_solo_runs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(150, 6, generator=g)  # grey levels in [0, 1]: every epoch draws x_bin ~ Bernoulli(x)
    c = torch.nn.functional.one_hot(torch.randint(3, (150,), generator=g), 3).float()  # (150, 3)
    base = base_config(epochs=3).with_overrides({"model": {"likelihood": "bernoulli"}}, explicit=False)
    configs = [base.with_overrides({"train": {"beta": b, "seed": s}}) for b, s in ((0.5, 0), (2.0, 1))]
    stacked = [build_model(cfg.model, 6, cond_dim=3, seed=cfg.train.seed) for cfg in configs]
    solo = [copy.deepcopy(m) for m in stacked]
    fit_stack(stacked, x, [cfg.train for cfg in configs], c=c, dynamic_binarization=True)
    for model, alone, cfg in zip(stacked, solo, configs, strict=True):
        fit(alone, x, cfg.train, c=c, dynamic_binarization=True)
        assert_same_weights(model, alone)


def test_beta_really_differs_per_member(x):
    configs = members({"train": {"beta": 0.0}}, {"train": {"beta": 4.0}}, epochs=20, lr=1e-2, lr_schedule="constant")
    results = fit_stack(models_for(configs, x), x, [c.train for c in configs])
    kl_free, kl_heavy = (r.history.last["kl"] for r in results)
    # β = 0 leaves the KL unpenalised (q(z|x) shrinks to near-points: ~12 nats here); β = 4
    # pushes q(z|x) towards the prior (~1.7 nats).
    assert kl_free > 4 * kl_heavy
    assert [r.history.last["beta"] for r in results] == [0.0, 4.0]


def test_a_diverging_member_stops_alone(x):
    configs = members({"train": {"beta": 1.0}}, {"train": {"lr": 1e4, "lr_schedule": "constant"}},
                      {"train": {"beta": 2.0, "seed": 3}})
    stacked = models_for(configs, x)
    solo = [copy.deepcopy(m) for m in stacked]
    saved: list[tuple[int, int]] = []
    results = fit_stack(stacked, x, [c.train for c in configs],
                        on_checkpoint=lambda i, m, h, s: saved.append((i, s.epoch)))
    bad = results[1]
    assert isinstance(bad.error, TrainingDiverged)
    with pytest.raises(TrainingDiverged) as solo_err:  # the same failure as fit's "stop" policy
        fit(solo[1], x, configs[1].train)
    assert (bad.error.step, bad.error.epoch, bad.error.term) == (solo_err.value.step, solo_err.value.epoch,
                                                                 solo_err.value.term)
    solo_rows = solo_err.value.history.rows
    assert len(bad.history) == len(solo_rows)  # the failing epoch's row last, as fit records it
    for column in ("loss", "recon", "kl", "grad_norm", "lr", "beta"):
        torch.testing.assert_close(bad.history.column(column), [r[column] for r in solo_rows], equal_nan=True,
                                   rtol=1e-4, atol=1e-4)
    # Its state is its last good checkpoint: here, diverging in epoch 1, the untrained start.
    assert (bad.state.step, bad.state.optimizer, bad.error.epoch) == (0, None, 1)
    assert all((1, e) not in saved for e in range(bad.error.epoch, 7))
    for i in (0, 2):  # the others went on, exactly as alone
        assert results[i].error is None and results[i].state.complete
        fit(solo[i], x, configs[i].train)
        assert_same_weights(stacked[i], solo[i])


def test_interrupted_stack_resumes_exactly(x):
    configs = members({"train": {"beta": 0.5}}, {"train": {"beta": 3.0, "seed": 2, "checkpoint_every": 1}})
    trains = [c.train for c in configs]
    through = models_for(configs, x)
    fit_stack(through, x, trains)

    stacked = models_for(configs, x)
    asked = iter(range(1000))
    with pytest.raises(TrainingInterrupted) as err:  # stop in the middle of epoch 3 (4 steps per epoch)
        fit_stack(stacked, x, trains, should_stop=lambda: next(asked) == 10)
    assert isinstance(err.value, TrainingInterrupted)
    results = err.value.results
    assert [r.state.step for r in results] == [10, 10] and results[0].state.batch == 2
    resumed = fit_stack(stacked, x, trains, states=[r.state for r in results],
                        histories=[r.history for r in results])
    for model, again in zip(stacked, through, strict=True):
        assert_same_weights(model, again, rtol=0.0, atol=0.0)
    assert [len(r.history) for r in resumed] == [6, 6]


def test_a_stacked_members_state_resumes_with_fit(x):
    configs = members({"train": {"beta": 0.5}}, {"train": {"beta": 3.0, "seed": 2}})
    stacked = models_for(configs, x)
    solo = copy.deepcopy(stacked[1])
    asked = iter(range(1000))
    with pytest.raises(TrainingInterrupted) as err:
        fit_stack(stacked, x, [c.train for c in configs], should_stop=lambda: next(asked) == 9)
    member = err.value.results[1]
    fit(stacked[1], x, configs[1].train, state=member.state, history=member.history)
    fit(solo, x, configs[1].train)
    assert_same_weights(stacked[1], solo)


def test_checkpoints_follow_each_members_cadence(x):
    configs = members({"train": {"checkpoint_every": 1}}, {"train": {"checkpoint_every": 4, "beta": 2.0}})
    calls: list[tuple[int, int, bool]] = []
    kept: list[tuple[TrainState, dict]] = []

    def on_checkpoint(i, model, history, state):
        assert model is stacked[i] and len(history) == state.epoch
        calls.append((i, state.epoch, state.complete))
        kept.append((state, copy.deepcopy(state.optimizer)))

    stacked = models_for(configs, x)
    fit_stack(stacked, x, [c.train for c in configs], on_checkpoint=on_checkpoint)
    # A state handed out is a snapshot: later Adam steps (in place) do not change it.
    for state, then in kept:
        torch.testing.assert_close(state.optimizer, then, rtol=0.0, atol=0.0)
    assert [c for c in calls if c[0] == 0] == [(0, e, e == 6) for e in range(1, 7)]
    assert [c for c in calls if c[0] == 1] == [(1, 4, False), (1, 6, True)]


def test_can_stack_names_why_not():
    model, train = ModelConfig(), TrainConfig()
    assert can_stack([model, model], [train, train.model_copy(update={"beta": 4.0, "lr": 1e-2, "seed": 3})]) is None
    assert can_stack([model, model.model_copy(update={"recon_var": 0.5})], [train, train]) is None
    assert "latent sizes differ" in can_stack([model, model.model_copy(update={"latent_dim": 3})], [train, train])
    assert "batch sizes differ" in can_stack([model, model], [train, train.model_copy(update={"batch_size": 32})])
    assert "budgets differ" in can_stack([model, model], [train, train.model_copy(update={"epochs": 10})])
    skip = train.model_copy(update={"nonfinite": "skip"})
    assert "nonfinite" in can_stack([model, model], [skip, skip])


def test_fit_stack_refuses_what_it_cannot_stack(x):
    configs = members({"train": {}}, {"model": {"latent_dim": 3}})
    with pytest.raises(InputError, match="latent sizes differ"):
        fit_stack(models_for(configs, x), x, [c.train for c in configs])
    same = members({"train": {}}, {"train": {"beta": 2.0}})
    models = models_for(same, x)
    with pytest.raises(InputError, match="share their parameters"):
        fit_stack([models[0], models[0]], x, [c.train for c in same])
    with pytest.raises(InputError, match="different points of training"):
        fit_stack(models, x, [c.train for c in same], states=[None, fit_state_after(models[1], x, same[1])])


def solo_fit(model, x, train: TrainConfig) -> tuple[History, TrainState]:
    """train.fit of model alone: its history and the state of its last checkpoint."""
    saved: list[TrainState] = []
    history = fit(model, x, train, on_checkpoint=lambda m, h, s: saved.append(s))
    return history, saved[-1]


def fit_state_after(model, x, cfg: RunConfig) -> TrainState:
    return solo_fit(copy.deepcopy(model), x, cfg.train.model_copy(update={"epochs": 1}))[1]


def test_members_whose_draws_no_tape_can_hold_equal_their_solo_runs(x, monkeypatch):
    # An objective whose draws a NoiseTape cannot stand in for (torch.rand or torch.multinomial
    # given the tape as generator raise TypeError) trains with the per-call replay of every
    # member's generator instead: made to happen here by a tape that refuses to record.
    import vaelab.train.stacked as stack

    class NoRecordTape(stack.NoiseTape):
        def normal(self, shape, like):
            if self.record is not None:
                raise TypeError("this draw takes a torch.Generator")
            return super().normal(shape, like)

    monkeypatch.setattr(stack, "NoiseTape", NoRecordTape)
    configs = members({"train": {"beta": 0.5}}, {"train": {"beta": 2.0, "seed": 4}}, epochs=2, objective="iwae")
    stacked = models_for(configs, x)
    solo = [copy.deepcopy(m) for m in stacked]
    replays = []
    monkeypatch.setattr(stack._MemberDraws, "__enter__",
                        lambda self: (replays.append(1), stack.TorchFunctionMode.__enter__(self))[1])
    fit_stack(stacked, x, [c.train for c in configs])
    assert replays  # the replay path ran
    for model, alone, cfg in zip(stacked, solo, configs, strict=True):
        fit(alone, x, cfg.train)
        assert_same_weights(model, alone)
