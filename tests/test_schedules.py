"""KL schedules (vaelab.schedules): the documented β at every step, the history's β column,
exact resume under a warm-up, the settings rules, the CLI flags and the curves' "β used" axis."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from helpers import assert_interrupted_run_resumes_exactly, tiny_config
from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.config import ConfigError, RunConfig, TrainConfig
from vaelab.data.registry import load_dataset
from vaelab.models import build_model
from vaelab.schedules import beta_at, check_schedule
from vaelab.settings import check_settings
from vaelab.train import fit, train_run


def betas(config: TrainConfig, steps_per_epoch: int, budget: int) -> list[float]:
    return [beta_at(t, config, steps_per_epoch, budget) for t in range(budget)]


def test_constant_is_beta_at_every_step():
    assert betas(TrainConfig(beta=2.5), 3, 5) == [2.5] * 5


def test_warmup_in_steps_starts_at_zero_and_reaches_beta_at_step_n():
    # β_t = β·min(1, t/N): step 0 trains with β = 0, step N (the N+1-th) with β.
    cfg = TrainConfig(beta=2.0, beta_schedule="warmup", warmup_steps=4)
    assert betas(cfg, 3, 7) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]  # the last step (t = 6) included


def test_warmup_in_epochs_counts_steps_per_epoch():
    # N = warmup_epochs × steps per epoch = 2 × 3 = 6 steps.
    cfg = TrainConfig(beta=3.0, beta_schedule="warmup", warmup_epochs=2)
    assert betas(cfg, 3, 9) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 3.0]
    assert betas(cfg, 4, 9)[4] == 3.0 * 4 / 8  # another epoch size, another N


def test_cyclical_restarts_every_ceil_t_over_m_steps():
    # T = 10, M = 3: cycles of L = ⌈10/3⌉ = 4 steps (the last has 2); τ = (t mod 4)/4, β = min(1, τ/R).
    cfg = TrainConfig(beta=1.0, beta_schedule="cyclical", cycles=3, cycle_ratio=0.5)
    assert betas(cfg, 5, 10) == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    ramp = TrainConfig(beta=2.0, beta_schedule="cyclical", cycles=2, cycle_ratio=1.0)  # L = 4, β·τ
    assert betas(ramp, 5, 8) == [0.0, 0.5, 1.0, 1.5, 0.0, 0.5, 1.0, 1.5]
    short = TrainConfig(beta=1.0, beta_schedule="cyclical", cycles=4, cycle_ratio=0.25)  # L = 4: τ/R = t mod 4
    assert betas(short, 5, 16) == [0.0, 1.0, 1.0, 1.0] * 4


def test_schedules_that_cannot_work_in_the_budget_are_refused():
    long_warmup = TrainConfig(beta_schedule="warmup", warmup_epochs=3)
    check_schedule(long_warmup, 4, 13)  # 12 steps < 13
    with pytest.raises(ConfigError, match=r"--warmup-epochs 3 \(12 steps\) is not shorter than the budget of 12"):
        check_schedule(long_warmup, 4, 12)
    one_step_cycles = TrainConfig(beta_schedule="cyclical", cycles=5)
    with pytest.raises(ConfigError, match=r"--cycles 5 .* cycles of one step.*at most 2 cycles"):
        check_schedule(one_step_cycles, 4, 5)
    cfg = tiny_config(train={"beta_schedule": "warmup", "warmup_steps": 12, "epochs": 3})  # 12 steps
    with pytest.raises(ConfigError, match="warmup-steps 12"):
        fit(build_model(cfg.model, 2, seed=0), load_dataset(cfg.data).x, cfg.train)


def test_train_run_refuses_an_impossible_schedule_before_writing(tmp_path):
    cfg = tiny_config(train={"beta_schedule": "cyclical", "cycles": 13, "epochs": 3})  # 12 steps
    with pytest.raises(ConfigError, match="--cycles 13 over a budget of 12 steps"):
        train_run(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_fit_trains_each_step_with_beta_at_and_records_the_epoch_mean(monkeypatch):
    import dataclasses

    from vaelab.objectives import OBJECTIVES

    cfg = tiny_config(train={"objective": "elbo", "beta": 2.0, "beta_schedule": "warmup", "warmup_epochs": 2,
                             "epochs": 3})  # 256 points, batches of 64: 4 steps per epoch, N = 8
    used: list[float] = []
    real_elbo = OBJECTIVES["elbo"].fn

    def spy(*args, **kw):
        used.append(kw["beta"])
        return real_elbo(*args, **kw)

    monkeypatch.setitem(OBJECTIVES, "elbo", dataclasses.replace(OBJECTIVES["elbo"], fn=spy))
    hist = fit(build_model(cfg.model, 2, seed=0), load_dataset(cfg.data).x, cfg.train)
    assert used == [beta_at(t, cfg.train, 4, 12) for t in range(12)] == [t / 4 if t < 8 else 2.0 for t in range(12)]
    expected = [sum(used[4 * e:4 * e + 4]) / 4 for e in range(3)]
    assert hist.column("beta") == pytest.approx(expected, abs=1e-15)
    assert hist.column("beta") == pytest.approx([0.375, 1.375, 2.0])


def test_the_beta_column_round_trips_and_old_histories_read_nan():
    cfg = tiny_config(train={"beta_schedule": "cyclical", "cycles": 2, "epochs": 2})
    hist = fit(build_model(cfg.model, 2, seed=0), load_dataset(cfg.data).x, cfg.train)
    back = ckpt.History.from_csv(hist.to_csv())
    assert back.column("beta") == hist.column("beta")
    old = "epoch,step,loss,recon,kl,diversity,seconds\n1,4,2.5,2.0,0.5,1.0,0.1\n"
    assert ckpt.History.from_csv(old).column("beta")[0] != ckpt.History.from_csv(old).column("beta")[0]  # NaN


def test_a_warmup_changes_training_and_its_length_matters():
    def trained(**train):
        cfg = tiny_config(train={"objective": "elbo", "epochs": 2, **train})
        model = build_model(cfg.model, 2, seed=0)
        fit(model, load_dataset(cfg.data).x, cfg.train)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain, short, longer = trained(), trained(beta_schedule="warmup", warmup_steps=2), trained(
        beta_schedule="warmup", warmup_steps=5)
    assert not torch.equal(plain, short) and not torch.equal(short, longer)
    assert not torch.equal(longer, trained(beta_schedule="warmup", warmup_epochs=1))  # 4 steps, not 5


@pytest.mark.parametrize("stop_at", [3, 6])
def test_an_interrupted_warmup_run_resumes_to_identical_weights(tmp_path, stop_at):
    cfg = tiny_config(train={"objective": "elbo", "beta_schedule": "warmup", "warmup_steps": 7, "epochs": 3,
                             "checkpoint_every": 3})
    assert_interrupted_run_resumes_exactly(cfg, tmp_path, stop_at, ("beta", "loss"))


def test_schedule_settings_are_not_resumable(tmp_path):
    cfg = tiny_config(train={"objective": "elbo", "beta_schedule": "warmup", "warmup_steps": 3, "epochs": 1})
    train_run(cfg, tmp_path / "r")
    given = RunConfig().with_overrides({"train": {"warmup_steps": 2, "beta_schedule": "warmup"}})
    with pytest.raises(ConfigError, match=r"train.warmup_steps \(--warmup-steps\): the run has 3"):
        train_run(given, tmp_path / "r", resume=True)


@pytest.mark.parametrize("train,model,message", [
    ({"warmup_epochs": 2}, {}, r"train.warmup_epochs \(--warmup-epochs\).*add --beta-schedule warmup"),
    ({"beta_schedule": "cyclical", "warmup_steps": 2}, {},
     r"train.warmup_steps .*schedule is cyclical; add --beta-schedule warmup"),
    ({"cycles": 3}, {}, r"train.cycles \(--cycles\).*add --beta-schedule cyclical"),
    ({"cycle_ratio": 0.3, "beta_schedule": "warmup", "warmup_steps": 3}, {}, r"train.cycle_ratio.*cyclical"),
    ({"beta_schedule": "cyclical"}, {"kind": "ae"}, r"train.beta_schedule.*ae model .AE. has no KL term"),
    ({"beta_schedule": "warmup", "warmup_steps": 3, "beta": 0.0}, {}, r"β = 0: a schedule of β = 0.*--beta > 0"),
    # free bits without a named objective make a β-VAE, which trains the β-ELBO (issue 20)
    ({"free_bits": 0.5, "objective": "iwae"}, {}, r"train.free_bits \(--free-bits\).*IWAE.*add --objective elbo"),
    ({"free_bits": 0.5, "objective": "elbo"}, {"kind": "ae"}, r"train.free_bits.*has no KL term"),
    ({"free_bits_group": "all", "objective": "elbo"}, {}, r"train.free_bits_group.*add --free-bits"),
])
def test_settings_rules_refuse_the_combinations_that_do_nothing(train, model, message):
    cfg = RunConfig().with_overrides({"train": train, "model": model})
    with pytest.raises(ConfigError, match=message):
        check_settings(cfg)


def test_warmup_needs_exactly_one_length():
    with pytest.raises(ConfigError, match="needs its length: give --warmup-epochs N or --warmup-steps N"):
        RunConfig.from_dict({"train": {"beta_schedule": "warmup"}})
    with pytest.raises(ConfigError, match="give only one"):
        RunConfig.from_dict({"train": {"beta_schedule": "warmup", "warmup_epochs": 1, "warmup_steps": 4}})
    with pytest.raises(ConfigError, match="cycle_ratio"):
        RunConfig.from_dict({"train": {"beta_schedule": "cyclical", "cycle_ratio": 1.5}})


def test_cli_flags_and_toml_keys_set_the_schedule(tmp_path):
    runner = CliRunner()
    args = ["train", "--data", "ring", "--n-train", "128", "--n-test", "64", "--hidden", "8", "--batch-size", "64",
            "--epochs", "3", "--objective", "elbo", "--device", "cpu", "--no-eval", "--no-report"]
    result = runner.invoke(app, [*args, "--beta-schedule", "cyclical", "--cycles", "3", "--cycle-ratio", "1",
                                 "--free-bits", "0.1", "--free-bits-group", "all", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    train = RunConfig.from_json_file(tmp_path / "a" / "config.json").train
    assert (train.beta_schedule, train.cycles, train.cycle_ratio, train.free_bits, train.free_bits_group) == (
        "cyclical", 3, 1.0, 0.1, "all")
    assert ckpt.load_history(tmp_path / "a").column("beta") == pytest.approx([1 / 4, 1 / 4, 1 / 4])  # L = 2: 0, ½
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nbeta_schedule = "warmup"\nwarmup_epochs = 2\n')
    result = runner.invoke(app, [*args, "--config", str(toml), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert ckpt.load_history(tmp_path / "b").column("beta") == pytest.approx([0.125, 0.625, 1.0])  # N = 4: ¼ t
    result = runner.invoke(app, [*args, "--warmup-steps", "3", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--beta-schedule warmup" in result.output


def test_training_curves_draw_the_beta_used():
    from vaelab.plots.curves import plot_training_curves

    cfg = tiny_config(train={"objective": "elbo", "beta_schedule": "warmup", "warmup_steps": 5})
    hist = fit(build_model(cfg.model, 2, seed=0), load_dataset(cfg.data).x, cfg.train)
    fig = plot_training_curves(hist)
    twins = [ax for ax in fig.axes if ax.get_ylabel() == "β used"]
    assert len(twins) == 1
    (line,) = twins[0].get_lines()
    assert list(line.get_ydata()) == hist.column("beta")
    ae = tiny_config(model={"kind": "ae"})
    ae_hist = fit(build_model(ae.model, 2, seed=0), load_dataset(ae.data).x, ae.train)
    assert not [ax for ax in plot_training_curves(ae_hist).axes if ax.get_ylabel() == "β used"]  # no KL term


def test_the_loss_label_names_the_schedule_and_the_floor():
    from types import SimpleNamespace

    from vaelab.plots.curves import loss_label

    def label(**train):
        cfg = RunConfig.from_dict({"train": train})
        model = build_model(cfg.model, 2, seed=0)
        return loss_label(SimpleNamespace(config=cfg, model=model, is_vae=True))  # type: ignore[arg-type]

    assert label(objective="elbo") == "total loss = −ELBO"
    assert label(objective="elbo", beta=2.0) == "total loss = −β-ELBO (β = 2)"
    assert label(objective="elbo", beta_schedule="warmup", warmup_steps=3) == (
        "total loss = −β-ELBO (β warm-up to 1 over 3 steps)")
    assert label(objective="elbo", free_bits=0.5, free_bits_group="all") == (
        "total loss = −β-ELBO (β = 1, free bits λ = 0.5 nats per latent)")
    assert label(objective="iwae", k=4, beta=4.0) == (
        "total loss = −β-weighted IWAE (k = 4, β = 4; a bound only at β = 1), not reconstruction + KL")


def test_describe_says_the_kl_weighting_in_words():
    from vaelab.schedules import describe

    assert describe(TrainConfig(beta=4.0)) == "β = 4"
    assert describe(TrainConfig(beta_schedule="warmup", warmup_epochs=10)) == "β warm-up to 1 over 10 epochs"
    assert describe(TrainConfig(beta_schedule="cyclical", beta=2.0, free_bits=0.5, objective="elbo")) == (
        "β cyclical to 2 (4 cycles, ratio 0.5), free bits λ = 0.5 nats per dimension")
