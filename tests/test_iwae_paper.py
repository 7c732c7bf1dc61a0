"""What the `iwae-paper` preset needs from the engine (Burda et al. 2016 as their code trains):
the staged learning rate, Adam's β1, β2 and ε, the decoder's output bias at the data mean, and
the preset itself. The closed forms are restated from the authors' code (yburda/iwae)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import (
    assert_interrupted_run_resumes_exactly,
    assert_stacked_equals_solo,
    invoke,
    parsed_train_config,
    tiny_config,
)
from vaelab.config import RunConfig, ScheduleSpec
from vaelab.data.registry import load_dataset
from vaelab.errors import InputError
from vaelab.models import build_model, init_output_bias
from vaelab.plots.course import initial_model
from vaelab.presets import apply_preset
from vaelab.schedules import burda_stage, value_at
from vaelab.train import can_stack, fit, train_run


def authors_lr(stage: int) -> float:
    """experiments.py: stage i = 1..8 trains 3^(i-1) epochs at 1e-4 · round(10^(1 - (i-1)/7), 1)."""
    return 1e-4 * round(10.0 ** (1 - (stage - 1) / 7.0), 1)


def test_the_burda_schedule_is_the_authors_epoch_by_epoch():
    spec = ScheduleSpec(kind="burda", value=1e-3, steps=3)  # 3 steps per epoch
    expected = []
    for stage in range(1, 9):
        expected += [authors_lr(stage)] * 3 ** (stage - 1)
    assert len(expected) == 3280
    got = [value_at(spec, 3 * epoch + 2, budget=1) for epoch in range(3280)]  # the last step of each epoch
    assert got == pytest.approx(expected, rel=1e-12)
    assert value_at(spec, 0, 1) == pytest.approx(1e-3) and value_at(spec, 3, 1) == pytest.approx(7.2e-4)
    assert value_at(spec, 3 * 4, 1) == pytest.approx(5.2e-4)  # epoch 4 starts stage 3 (after 1 + 3 epochs)
    # after 3,280 epochs it stays at the last stage's rate
    assert value_at(spec, 3 * 10_000, 1) == pytest.approx(1e-4)
    assert [burda_stage(e, 1) for e in (0, 1, 3, 4, 12, 13, 39, 40, 1092, 1093, 3279, 9999)] == \
        [0, 1, 1, 2, 2, 3, 3, 4, 6, 7, 7, 7]


def test_a_burda_schedule_needs_its_epoch_length():
    with pytest.raises(Exception, match="one epoch in steps"):
        value_at(ScheduleSpec(kind="burda", value=1.0), 0, 10)


def test_fit_trains_each_epoch_at_its_stage_rate():
    cfg = tiny_config(train={"objective": "elbo", "lr_schedule": "burda", "lr": 2e-3, "epochs": 5})
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, x.shape[1], seed=0)
    history = fit(model, x, cfg.train)
    ratios = [round(10 ** (1 - i / 7), 1) / 10 for i in (0, 1, 1, 1, 2)]
    assert history.column("lr") == pytest.approx([2e-3 * r for r in ratios])


def test_the_adam_settings_reach_the_optimizer_and_change_training():
    base = tiny_config(train={"objective": "elbo", "epochs": 2})
    tuned = base.with_overrides({"train": {"adam_betas": [0.5, 0.9], "adam_eps": 1e-3}})
    x = load_dataset(base.data, "train").x
    states = {}
    weights = {}
    for name, cfg in (("base", base), ("tuned", tuned)):
        model = build_model(cfg.model, x.shape[1], seed=0)
        fit(model, x, cfg.train, on_checkpoint=lambda m, h, s, name=name: states.__setitem__(name, s))
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    group = states["tuned"].optimizer["param_groups"][0]
    assert tuple(group["betas"]) == (0.5, 0.9) and group["eps"] == 1e-3
    assert tuple(states["base"].optimizer["param_groups"][0]["betas"]) == (0.9, 0.999)
    assert (weights["base"] - weights["tuned"]).abs().max() > 1e-3


@pytest.mark.parametrize("betas", [[1.0, 0.999], [0.9], [0.9, 0.99, 0.999], [-0.1, 0.9]])
def test_adam_betas_outside_0_1_or_not_two_are_refused(betas):
    with pytest.raises(InputError, match="two numbers in \\[0, 1\\)"):
        RunConfig.from_dict({"train": {"adam_betas": betas}})


@pytest.mark.parametrize(("flag", "message"), [("--adam-betas 0.9,", "empty value"),
                                                ("--adam-betas a,b", "comma-separated numbers"),
                                                ("--adam-eps 0", "adam_eps"),
                                                ("--lr-schedule stepwise", "lr_schedule")])
def test_bad_adam_and_schedule_flags_are_refused(tmp_path, flag, message):
    result = invoke("train", *flag.split(), "--epochs", "1", "--out", tmp_path / "r")
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "r").exists()


def test_stacked_members_with_the_papers_adam_equal_their_solo_runs():
    configs = [tiny_config(train={"objective": "elbo", "epochs": 3, "seed": s, "adam_betas": [0.99, 0.999],
                                  "adam_eps": 5e-6, "lr_schedule": "burda"}) for s in (0, 1)]
    assert_stacked_equals_solo(configs, ("loss", "kl", "lr"))


def test_members_with_their_own_adam_settings_stack_and_each_ends_as_alone():
    # One stack, four Adam variants: each member takes its own β1, β2 and ε (grouped with the others
    # of its learning rate), and ends where fit ends with the same settings.
    variants = [{}, {"adam_betas": [0.99, 0.999]}, {"adam_eps": 1e-3}, {"adam_betas": [0.5, 0.9], "adam_eps": 1e-3}]
    configs = [tiny_config(train={"objective": "elbo", "epochs": 2, "seed": 3, **v}) for v in variants]
    assert can_stack([c.model for c in configs], [c.train for c in configs]) is None
    results = assert_stacked_equals_solo(configs)
    # The settings matter: from the same seed, the four end with four different losses.
    assert len({round(float(r.history.column("loss")[-1]), 6) for r in results}) == 4


@pytest.mark.parametrize("stop_at", [4, 9])
def test_an_interrupted_run_with_the_papers_optimizer_resumes_exactly(tmp_path, stop_at):
    cfg = tiny_config(train={"objective": "elbo", "epochs": 3, "lr_schedule": "burda", "adam_betas": [0.99, 0.999],
                             "adam_eps": 5e-6})
    assert_interrupted_run_resumes_exactly(cfg, tmp_path, stop_at, ("lr",))


# ----- the decoder's output bias -------------------------------------------------------------

def digits_config(**model: object) -> RunConfig:
    return tiny_config(data={"name": "digits", "limit_train": 160, "binarize": "dynamic"},
                       model={"likelihood": "bernoulli", **model}, train={"objective": "elbo", "epochs": 1})


def test_data_mean_sets_the_logits_of_the_clipped_training_mean():
    cfg = digits_config(output_bias="data-mean")
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, x.shape[1], seed=0, train_x=x)
    mean = x.double().mean(0).clamp(0.001, 0.999)
    expected = torch.log(mean / (1 - mean)).float()
    assert torch.allclose(model.decoder[-1].bias, expected, atol=1e-6)
    assert (x.mean(0) == 0).any()  # digits has pixels never inked: their logit is log(0.001/0.999)
    assert model.decoder[-1].bias.min().item() == pytest.approx(math.log(0.001 / 0.999), rel=1e-5)
    # the weights are those of the default build: only the bias changed
    plain = build_model(cfg.model, x.shape[1], seed=0)
    assert torch.equal(plain.decoder[-1].weight, model.decoder[-1].weight)
    assert not torch.allclose(plain.decoder[-1].bias, model.decoder[-1].bias)


def test_a_run_with_data_mean_starts_from_it_and_its_before_figure_rebuilds_it(tmp_path):
    cfg = digits_config(output_bias="data-mean")
    run = train_run(cfg, tmp_path / "r")
    x = load_dataset(cfg.data, "train").x
    fresh = build_model(cfg.model, x.shape[1], seed=cfg.train.seed, train_x=x)
    before = initial_model(run.model, run.config)
    assert torch.equal(before.decoder[-1].bias, fresh.decoder[-1].bias)
    default = train_run(digits_config(), tmp_path / "d")
    assert not torch.allclose(default.model.decoder[-1].bias, run.model.decoder[-1].bias, atol=1e-2)


@pytest.mark.parametrize(("model", "message"), [({"likelihood": "gaussian"}, "the likelihood is gaussian"),
                                                ({"net": "conv", "channels": [4, 8]}, "one bias per channel")])
def test_data_mean_is_refused_where_there_is_no_per_pixel_logit(model, message):
    with pytest.raises(InputError, match=message):
        digits_config(output_bias="data-mean", **model)


def test_init_output_bias_refuses_a_family_without_a_linear_output():
    cfg = digits_config(kind="vq", net="conv", channels=[4, 8], likelihood="bernoulli")
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, x.shape[1], seed=0)
    with pytest.raises(InputError, match=f"linear layer onto the {x.shape[1]} pixels"):
        init_output_bias(model, x)


# ----- the preset ----------------------------------------------------------------------------

def test_the_preset_is_the_papers_model_and_training():
    cfg = apply_preset(RunConfig(), "iwae-paper")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (m.kind, m.net, m.hidden, m.latent_dim, m.activation, m.scale, m.likelihood, m.output_bias) == \
        ("vae", "mlp", [200, 200], 50, "tanh", "exp", "bernoulli", "data-mean")
    assert (t.objective, t.lr, t.lr_schedule, t.batch_size, t.epochs) == ("elbo", 1e-3, "burda", 20, 3280)
    assert t.adam_betas == [0.99, 0.999] and t.adam_eps == pytest.approx(1e-4 / 20)
    assert (d.binarize, d.limit_train) == ("dynamic", 59_600)


def test_the_iwae_rows_are_the_preset_and_two_flags(monkeypatch):
    cfg = parsed_train_config(monkeypatch, "vaelab train --data mnist --preset iwae-paper --objective iwae --k 50")
    assert (cfg.train.objective, cfg.train.k, cfg.train.lr_schedule, cfg.model.hidden) == \
        ("iwae", 50, "burda", [200, 200])


def test_a_run_of_the_preset_reproduces_with_the_preset(monkeypatch, tmp_path):
    from vaelab.reproduce import reproduce_command

    cfg = parsed_train_config(monkeypatch, f"vaelab train --data mnist --data-dir {tmp_path} --preset iwae-paper "
                                           "--objective iwae --k 50")
    command, needs_toml = reproduce_command(cfg, tmp_path / "again")
    assert not needs_toml and "--preset iwae-paper" in command
    assert parsed_train_config(monkeypatch, command) == cfg
    # a run that left --limit-train unset is not rebuilt from the preset, which sets it
    plain = cfg.with_overrides({"data": {"limit_train": None}})
    command, _ = reproduce_command(plain, tmp_path / "again")
    assert "None" not in command and parsed_train_config(monkeypatch, command) == plain


# docs/protocols.md: the paper's two stochastic layers, one command
TWO_LAYERS = ("vaelab train --data mnist --preset iwae-paper --model ladder --latent-dim 150 --ladder-layers 100,50 "
              "--ladder-hidden 100,100 --ladder-bottom-up chain --ladder-decode bottom")


def linear_shapes(module: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)]


def test_the_two_layer_command_builds_the_papers_nets(monkeypatch):
    """experiments.py, layers = 2: q(z_1|x) 784-200-200-(100 μ, 100 σ), q(z_2|z_1) 100-100-100-(50, 50),
    p(z_1|z_2) 50-100-100-(100, 100), p(x|z_1) 100-200-200-784; every σ = exp(linear)."""
    cfg = parsed_train_config(monkeypatch, TWO_LAYERS)
    model = build_model(cfg.model, 784, seed=0, train_x=torch.rand(50, 784))
    assert linear_shapes(model.encoder) == [(784, 200), (200, 200), (200, 200)]  # the last: μ_1 and log σ_1
    assert linear_shapes(model.upward) == [(100, 100), (100, 100), (100, 100)]  # μ_2, log σ_2: 2 · 50
    assert linear_shapes(model.top_down) == [(50, 100), (100, 100), (100, 200)]
    assert linear_shapes(model.decoder) == [(100, 200), (200, 200), (200, 784)]
    assert model.sizes == [100, 50] and model.config.scale == "exp" and model.decode_from == "bottom"
    assert cfg.train.lr_schedule == "burda" and cfg.train.batch_size == 20
    # the whole model, weights and biases: nothing else is trained
    by_hand = sum(i * o + o for net in (model.encoder, model.upward, model.top_down, model.decoder)
                  for i, o in linear_shapes(net))
    assert sum(p.numel() for p in model.parameters()) == by_hand


def test_a_sweep_takes_adam_settings_as_alternatives():
    from vaelab.sweep.grid import GridError, parse_flags

    grid = parse_flags(["--adam-betas", "0.9,0.999/0.99,0.999", "--adam-eps", "1e-8,5e-6", "--lr-schedule",
                        "burda,constant"])
    assert grid == {"train.adam_betas": [[0.9, 0.999], [0.99, 0.999]], "train.adam_eps": [1e-8, 5e-6],
                    "train.lr_schedule": ["burda", "constant"]}
    with pytest.raises(GridError, match="'0.9,x' is not numbers separated by commas"):
        parse_flags(["--adam-betas", "0.9,x"])


def test_the_training_curves_draw_the_learning_rate_where_it_changes():
    from vaelab.plots.curves import plot_training_curves

    def lr_twins(fig):
        return [ax for ax in fig.axes if ax.get_ylabel().startswith("learning rate")]

    cfg = tiny_config(train={"objective": "elbo", "lr_schedule": "burda", "epochs": 5})
    x = load_dataset(cfg.data, "train").x
    history = fit(build_model(cfg.model, x.shape[1], seed=0), x, cfg.train)
    fig = plot_training_curves(history)
    (twin,) = lr_twins(fig)
    (line,) = twin.get_lines()
    assert list(line.get_ydata()) == history.column("lr")
    assert twin.get_shared_x_axes().joined(twin, fig.axes[0])  # beside the loss
    # a constant rate draws none
    flat = tiny_config(train={"objective": "elbo", "lr_schedule": "constant", "epochs": 3})
    assert not lr_twins(plot_training_curves(fit(build_model(flat.model, x.shape[1], seed=0), x, flat.train)))
    # with a β schedule on the loss panel's twin, the rate goes beside the reconstruction
    both = tiny_config(train={"objective": "elbo", "lr_schedule": "cosine", "epochs": 3, "beta_schedule": "warmup",
                              "warmup_steps": 5})
    fig = plot_training_curves(fit(build_model(both.model, x.shape[1], seed=0), x, both.train))
    (twin,) = lr_twins(fig)
    assert twin.get_shared_x_axes().joined(twin, fig.axes[1])
    assert [ax.get_ylabel() for ax in fig.axes].count("β used") == 1
