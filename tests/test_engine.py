"""The one training engine: every contract family trains to the same weights through ``fit``
(eager executor) and through ``fit_stack`` (stacked executor), a family's per-step scalar
included; the step module, contexts and schedules it is built from."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch

from models.annealed import TAU, AnnealedVAE
from models.families import CouplingFlowVAE, MixturePriorVAE
from vaelab.config import ConfigError, RunConfig, ScheduleSpec
from vaelab.data.registry import load_dataset
from vaelab.history import HELDOUT_COLUMNS
from vaelab.models import FAMILIES, build_model, register_family
from vaelab.schedules import SCHEDULES, lr_spec, total_steps, value_at
from vaelab.train import StepContext, TrainStep, fit, fit_stack
from vaelab.train.run import heldout_data, training_data

FAMILY_CLASSES = {"flowvae": CouplingFlowVAE, "mogvae": MixturePriorVAE, "annealed": AnnealedVAE}


@pytest.fixture(scope="module", autouse=True)
def test_families() -> Iterator[None]:
    for name, cls in FAMILY_CLASSES.items():
        register_family(name, cls)
    yield
    for name in FAMILY_CLASSES:
        FAMILIES.pop(name, None)


# Every contract family (tests/models/test_contract.py) and the annealed one: (model, data, condition?).
CASES = {
    "vae-mlp": ({"kind": "vae"}, {"name": "ring", "n_train": 160}, False),
    "vae-conv": ({"kind": "vae", "net": "conv", "channels": [2, 4], "latent_dim": 3, "likelihood": "bernoulli"},
                 {"name": "digits", "limit_train": 160}, False),
    "ae": ({"kind": "ae"}, {"name": "ring", "n_train": 160}, False),
    "vae-conditional": ({"kind": "vae"}, {"name": "digits", "limit_train": 160, "condition": "label"}, True),
    "flow": ({"kind": "flowvae"}, {"name": "ring", "n_train": 160}, False),
    "mixture-prior": ({"kind": "mogvae"}, {"name": "ring", "n_train": 160}, False),
    "annealed": ({"kind": "annealed"}, {"name": "ring", "n_train": 160}, False),
}


def _configs(case: str) -> list[RunConfig]:
    model, data, _ = CASES[case]
    if model.get("net") != "conv":
        model = {"hidden": [16, 16], **model}
    if model.get("likelihood") != "bernoulli":
        model = {"likelihood": "gaussian", "recon_var": 0.1, **model}
    train = {"epochs": 3, "batch_size": 48, "diversity_samples": 16, "checkpoint_every": 2, "lr": 3e-3}
    if model["kind"] != "ae":
        train["objective"] = "elbo"
    base = RunConfig.from_dict({"data": data, "model": model, "train": train})
    variants = [{"train": {"seed": 0}}, {"train": {"seed": 5, "lr": 1e-2, "lr_schedule": "constant"}}]
    if model["kind"] != "ae":
        variants[1]["train"]["beta"] = 3.0
    return [base.with_overrides(v) for v in variants]


def _data(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor | None, int, bool]:
    """x (N, D), c (N, C) or None, C, and whether every epoch binarizes x: as train_run prepares them."""
    train = training_data(config, load_dataset(config.data, "train"), "cpu")
    return train.x, train.c, 0 if train.c is None else train.c.shape[1], train.dynamic_binarization


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_family_trains_to_the_same_weights_alone_and_stacked(case):
    configs = _configs(case)
    x, c, cond_dim, dynamic = _data(configs[0])
    stacked = [build_model(cfg.model, x.shape[1], cond_dim, seed=cfg.train.seed) for cfg in configs]
    alone = [copy.deepcopy(m) for m in stacked]
    # The run's own held-out points, as train_run scores them at every epoch's end.
    heldout = heldout_data(configs[0], training_data(configs[0], load_dataset(configs[0].data, "train"),
                                                     "cpu").condition, "cpu")
    results = fit_stack(stacked, x, [cfg.train for cfg in configs], c=c, dynamic_binarization=dynamic,
                        heldout=heldout)
    for model, solo, cfg, result in zip(stacked, alone, configs, results, strict=True):
        history = fit(solo, x, cfg.train, c=c, dynamic_binarization=dynamic, heldout=heldout)
        assert result.error is None and result.state.complete
        # Weights and buffers (the annealed family's τ among them): within the float tolerance
        # of batched against unbatched products (tests/test_sweep_stack.py explains it).
        torch.testing.assert_close(model.state_dict(), solo.state_dict(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result.history.column("loss"), history.column("loss"), rtol=1e-4, atol=1e-4)
        # Every family's held-out score (the autoencoder's reconstruction alone) is the solo run's.
        held = [col for col in HELDOUT_COLUMNS if col in history.columns]
        assert held == (["heldout_recon"] if cfg.model.kind == "ae" else list(HELDOUT_COLUMNS))
        assert any(math.isfinite(v) for v in history.column(held[0]))
        for column in held:
            torch.testing.assert_close(result.history.column(column), history.column(column), rtol=1e-4,
                                       atol=1e-4, equal_nan=True)
    # The members really differ (else equal weights would prove nothing about per-member state).
    assert not torch.allclose(next(stacked[0].parameters()), next(stacked[1].parameters()))


def test_the_annealed_scalar_reaches_the_model_every_step_and_changes_training():
    configs = _configs("annealed")
    x, *_ = _data(configs[0])
    cfg = configs[0]
    model = build_model(cfg.model, 2, seed=0)
    seen: list[float] = []
    real = AnnealedVAE.encode

    def spy(self, x, c=None):
        seen.append(float(self.tau))
        return real(self, x, c)

    AnnealedVAE.encode = spy  # type: ignore[method-assign]
    try:
        fit(model, x, cfg.train)
    finally:
        AnnealedVAE.encode = real  # type: ignore[method-assign]
    budget = total_steps(cfg.train, x.shape[0])
    # The training steps' encodes see τ_t of steps 0..T-1 in order (the diversity column samples
    # from the prior: no encode).
    assert seen == pytest.approx([value_at(TAU, t, budget) for t in range(budget)], rel=1e-6)
    assert seen[0] == 1.0 and seen[-1] < 0.3
    assert float(model.tau) == pytest.approx(value_at(TAU, budget - 1, budget))  # saved with the weights
    # A constant τ = 1 (the plain VAE) trains to other weights: the scalar is not decoration.
    plain = build_model(cfg.model.model_copy(update={"kind": "vae"}), 2, seed=0)
    fit(plain, x, cfg.train)
    assert not torch.allclose(next(plain.parameters()), next(model.parameters()))


def test_a_stacked_member_that_stops_keeps_its_own_scalar():
    """Members leave the stack (here one diverges at once): the running ones' buffers are still
    carried and written back per member."""
    configs = _configs("annealed")
    configs[1] = configs[1].with_overrides({"train": {"lr": 1e4}})
    x, *_ = _data(configs[0])
    models = [build_model(cfg.model, 2, seed=cfg.train.seed) for cfg in configs]
    solo = copy.deepcopy(models[0])
    results = fit_stack(models, x, [cfg.train for cfg in configs])
    assert results[0].error is None and results[1].error is not None
    fit(solo, x, configs[0].train)
    torch.testing.assert_close(models[0].state_dict(), solo.state_dict(), rtol=1e-5, atol=1e-5)


def test_train_step_is_the_objective_of_its_model():
    cfg = _configs("vae-mlp")[0]
    x, *_ = _data(cfg)
    model = build_model(cfg.model, 2, seed=0)
    from vaelab.objectives import elbo

    step = TrainStep(model, cfg.train)
    assert isinstance(step, torch.nn.Module) and step.objective_name == "elbo"
    out = step(x[:32], None, StepContext(0, 0, {"beta": 2.0}, torch.Generator().manual_seed(3)))
    ref = elbo(model, x[:32], beta=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.terms["kl"], ref.terms["kl"])
    # Its parameters are the model's: what DDP or functional_call sees through it.
    assert [p for p in step.parameters()] == [p for p in model.parameters()]


def test_schedules_are_pure_functions_of_the_step():
    budget = 10
    cos = ScheduleSpec(kind="cosine", value=2.0, end=0.5)
    assert value_at(cos, 0, budget) == 2.0 and value_at(cos, budget, budget) == pytest.approx(0.5)
    assert value_at(cos, 5, budget) == pytest.approx(0.5 + 1.5 * 0.5)
    exp = ScheduleSpec(kind="exponential", value=1.0, end=0.25, steps=4)
    assert [value_at(exp, t, budget) for t in (0, 2, 4, 9)] == pytest.approx([1.0, 0.5, 0.25, 0.25])
    warm = ScheduleSpec(kind="warmup", value=3.0, steps=3)
    assert [value_at(warm, t, budget) for t in range(5)] == pytest.approx([0.0, 1.0, 2.0, 3.0, 3.0])
    assert set(SCHEDULES) >= {"constant", "warmup", "cyclical", "cosine", "exponential"}
    with pytest.raises(ConfigError, match="unknown schedule 'nonesuch'"):
        value_at(ScheduleSpec(kind="nonesuch"), 0, budget)
    with pytest.raises(ConfigError, match="positive values"):
        value_at(ScheduleSpec(kind="exponential", value=1.0, end=0.0), 1, budget)
    # The learning rate's cosine is the float fit has always used: lr·½(1 + cos(π t / T)).
    cfg = _configs("vae-mlp")[0].train
    for t in (0, 3, 7):
        assert value_at(lr_spec(cfg, 4), t, budget) == cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t / budget))
