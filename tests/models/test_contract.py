"""The contract every model class passes (adding a family adds it to CASES).

Shapes; save -> load gives identical outputs; the same generator gives the same output;
gradients flow through ``rsample``; ``kl`` is the closed form where one exists and the Monte
Carlo estimate converges to the KL; IWAE with k = 1 equals the ELBO in expectation; ``sample()``
draws from ``prior()``. Then each test-only family (tests/models/families.py), registered at
runtime, trains, evaluates, saves, loads and draws its applicable figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch.distributions import Independent, Normal

from helpers import tiny_config
from models.families import CouplingFlowVAE, MixturePriorVAE
from vaelab import checkpoint as ckpt
from vaelab.config import RunConfig
from vaelab.distributions import KLNeedsSamples, kl, kl_is_closed_form, rsample
from vaelab.models import FAMILIES, LatentModel, VariationalModel, build_model, has_normal_posterior, register_family
from vaelab.objectives import elbo, iwae, iwae_bound

TEST_FAMILIES = {"flowvae": CouplingFlowVAE, "mogvae": MixturePriorVAE}


@pytest.fixture(scope="module", autouse=True)
def test_families() -> Iterator[None]:
    """Register the test-only families for this module, and take them out again after it."""
    for name, cls in TEST_FAMILIES.items():
        register_family(name, cls)
    yield
    for name in TEST_FAMILIES:
        FAMILIES.pop(name, None)


@dataclass(frozen=True)
class Case:
    id: str
    model: dict
    x_dim: int = 2
    cond_dim: int = 0
    data: dict | None = None


CASES = [
    Case("vae-mlp", {"kind": "vae", "latent_dim": 2}),
    Case("vae-conv", {"kind": "vae", "net": "conv", "channels": [2, 4], "latent_dim": 3, "likelihood": "bernoulli"},
         x_dim=64, data={"name": "digits"}),
    Case("ae", {"kind": "ae", "latent_dim": 2}),
    Case("vae-conditional", {"kind": "vae", "latent_dim": 2}, cond_dim=8, data={"condition": "label"}),
    Case("flow", {"kind": "flowvae", "latent_dim": 2}),
    Case("mixture-prior", {"kind": "mogvae", "latent_dim": 2}),
    Case("planar", {"kind": "planar", "latent_dim": 2}),
    Case("radial-conditional", {"kind": "radial", "latent_dim": 2}, cond_dim=8, data={"condition": "label"}),
    Case("iaf-conv", {"kind": "iaf", "net": "conv", "channels": [2, 4], "latent_dim": 3, "likelihood": "bernoulli"},
         x_dim=64, data={"name": "digits"}),
    Case("ladder", {"kind": "ladder", "latent_dim": 3}),
    Case("vamp", {"kind": "vamp", "latent_dim": 2}),
    Case("vamp-conv", {"kind": "vamp", "net": "conv", "channels": [2, 4], "latent_dim": 3, "likelihood": "bernoulli",
                       "vamp": {"components": 7}}, x_dim=64, data={"name": "digits"}),
    Case("mog", {"kind": "mog", "latent_dim": 2}),
    Case("mog-conditional", {"kind": "mog", "latent_dim": 3, "mog": {"components": 4}}, cond_dim=8,
         data={"condition": "label"}),
]
VARIATIONAL = [c for c in CASES if c.model["kind"] != "ae"]


def _config(case: Case) -> RunConfig:
    return tiny_config(model=dict(case.model), **({"data": dict(case.data)} if case.data else {}))


def _build(case: Case) -> LatentModel:
    return build_model(_config(case).model, case.x_dim, case.cond_dim, seed=0).eval()


def _inputs(case: Case, n: int = 5) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, case.x_dim, generator=g)
    if case.model.get("likelihood") == "bernoulli":
        x = (x > 0.5).float()
    c = None
    if case.cond_dim:
        c = torch.nn.functional.one_hot(torch.arange(n) % case.cond_dim, case.cond_dim).float()
    return x, c


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_shapes(case):
    model = _build(case)
    x, c = _inputs(case)
    d = model.latent_dim
    assert model.embed(x, c).shape == (5, d)
    assert model.decode(torch.zeros(5, d), c).batch_shape == (5,)
    assert model.reconstruct(x, c).shape == (5, case.x_dim)
    prior = model.prior(None if c is None else c[:1])
    assert prior.event_shape == (d,) and prior.batch_shape in ((), (1,))
    one_c = None if c is None else c[:1]
    assert model.sample(4, one_c, generator=_gen()).shape == (4, case.x_dim)
    if isinstance(model, VariationalModel):
        q_z = model.encode(x, c)
        assert q_z.batch_shape == (5,) and q_z.event_shape == (d,)
        assert rsample(q_z, (3,), _gen()).shape == (3, 5, d)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_save_load_gives_identical_outputs(case, tmp_path):
    model = _build(case)
    with torch.no_grad():  # move every weight away from its seed-0 initialisation
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=_gen(7)))
    cfg = _config(case)
    condition = None
    if case.cond_dim:
        from vaelab.conditions import fit_condition
        from vaelab.data.registry import load_dataset

        condition = fit_condition("label", load_dataset(cfg.data, "train"))
        assert condition.width == case.cond_dim
    ckpt.save(tmp_path / "run", model, cfg, condition=condition)
    loaded = ckpt.load(tmp_path / "run").model
    assert type(loaded) is type(model)
    x, c = _inputs(case)
    torch.testing.assert_close(loaded.embed(x, c), model.embed(x, c), rtol=0, atol=0)
    one_c = None if c is None else c[:1]
    torch.testing.assert_close(loaded.sample(6, one_c, generator=_gen(3)), model.sample(6, one_c, generator=_gen(3)),
                               rtol=0, atol=0)
    if isinstance(model, VariationalModel):
        assert isinstance(loaded, VariationalModel)
        torch.testing.assert_close(iwae_bound(loaded, x, c, k=4, generator=_gen(2)),
                                   iwae_bound(model, x, c, k=4, generator=_gen(2)), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_same_generator_same_output_and_another_differs(case):
    model = _build(case)
    x, c = _inputs(case)
    one_c = None if c is None else c[:1]
    a, b = model.sample(6, one_c, generator=_gen(4)), model.sample(6, one_c, generator=_gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(6, one_c, generator=_gen(5)))
    r1 = model.reconstruct(x, c, generator=_gen(4), stochastic=True)
    assert torch.equal(r1, model.reconstruct(x, c, generator=_gen(4), stochastic=True))
    if isinstance(model, VariationalModel):
        l1 = iwae(model, x, c, k=3, generator=_gen(4)).loss
        assert torch.equal(l1, iwae(model, x, c, k=3, generator=_gen(4)).loss)
        assert not torch.equal(l1, iwae(model, x, c, k=3, generator=_gen(5)).loss)


@pytest.mark.parametrize("case", VARIATIONAL, ids=lambda c: c.id)
def test_gradients_flow_through_rsample(case):
    model = _build(case)
    x, c = _inputs(case)
    z = rsample(model.encode(x, c), (2,), _gen())
    z.square().sum().backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad()
    z_p = rsample(model.prior(None if c is None else c[:1]), (16,), _gen())
    if any(p.requires_grad for p in _prior_parameters(model)):  # a learned prior: gradients reach it
        z_p.square().sum().backward()
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in _prior_parameters(model))


def _prior_parameters(model: LatentModel) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if name.startswith("prior_")]


@pytest.mark.parametrize("case", VARIATIONAL, ids=lambda c: c.id)
def test_kl_is_the_closed_form_or_a_converging_monte_carlo_estimate(case):
    model = _build(case)
    x, c = _inputs(case, n=3)
    with torch.no_grad():
        q_z, prior = model.encode(x, c), model.prior(c)
        z = rsample(q_z, (40_000,), _gen(8))  # (n, 3, d)
        log_ratio = q_z.log_prob(z) - prior.log_prob(z)  # (n, 3): unbiased draws of the KL
        mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
        if has_normal_posterior(model) and model.prior_is_standard_normal:
            assert kl_is_closed_form(q_z, prior)
            mu, var = q_z.mean, q_z.variance  # KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − 1 − log σ²)
            closed = 0.5 * (mu.square() + var - 1 - var.log()).sum(-1)
            torch.testing.assert_close(kl(q_z, prior), closed, rtol=1e-5, atol=1e-6)
            assert (mc - closed).abs().max() < 5 * se.max() + 1e-4  # the MC estimate converges to it
        else:
            assert not kl_is_closed_form(q_z, prior)
            with pytest.raises(KLNeedsSamples, match="Monte Carlo"):
                kl(q_z, prior)
            torch.testing.assert_close(kl(q_z, prior, z), mc)  # averaged over the sample dim
            few = kl(q_z, prior, z[:100])
            assert (few - mc).abs().max() < 6 * se.max() * math.sqrt(len(z) / 100)  # 100 draws: 20x the SE


@pytest.mark.parametrize("case", VARIATIONAL, ids=lambda c: c.id)
def test_iwae_with_one_sample_is_the_elbo_in_expectation(case):
    model = _build(case)
    x, c = _inputs(case, n=1)
    n = 20_000
    xs = x.expand(n, -1)
    cs = None if c is None else c.expand(n, -1)
    with torch.no_grad():
        bound = iwae_bound(model, xs, cs, k=1, generator=_gen(9))  # (n,) one-sample estimates of L_1
        out = elbo(model, xs, cs, generator=_gen(10))
        assert out.elbo is not None
        se = bound.std() / math.sqrt(n)
        assert abs(float(bound.mean() - out.elbo)) < 5 * float(se) + 1e-4
        # With the same draw and β = 1, the IWAE k = 1 loss is exactly the Monte Carlo ELBO.
        one = iwae(model, xs[:8], None if cs is None else cs[:8], k=1, generator=_gen(11))
        mc_elbo = elbo(model, xs[:8], None if cs is None else cs[:8], generator=_gen(11))
        if not kl_is_closed_form(model.encode(xs[:1], None if cs is None else cs[:1]), model.prior(c)):
            torch.testing.assert_close(one.loss, mc_elbo.loss)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sample_draws_from_the_prior(case):
    """A prior with its mean moved to 5 moves every code ``sample`` decodes to about 5."""
    model = _build(case)
    d = model.latent_dim
    shifted = Independent(Normal(torch.full((d,), 5.0), torch.full((d,), 0.01)), 1)
    model.prior = lambda c=None: shifted  # type: ignore[method-assign]
    seen: list[torch.Tensor] = []
    decode = model.decode
    model.decode = lambda z, c=None: (seen.append(z), decode(z, c))[1]  # type: ignore[method-assign]
    _, c = _inputs(case)
    model.sample(50, None if c is None else c[:1], generator=_gen())
    assert seen[0].shape == (50, d)
    torch.testing.assert_close(seen[0].mean(0), torch.full((d,), 5.0), atol=0.01, rtol=0)


# -- end to end: a family defined in the tests trains, evaluates, saves, loads, plots -----------


@pytest.mark.parametrize("kind", sorted(TEST_FAMILIES))
def test_a_runtime_family_trains_evaluates_saves_loads_and_plots(kind, tmp_path):
    from vaelab import evaluate_run, train_run
    from vaelab.plots import load_context, make_figures, plan
    from vaelab.report import metrics_table

    # Only settings every family takes: the rules that refuse settings a family cannot use
    # (train.objective, eval.k) still compare model.kind with "vae" until they read capabilities.
    cfg = RunConfig.from_dict({"data": {"name": "moons", "n_train": 256, "n_test": 64},
                               "model": {"kind": kind, "hidden": [16, 16]},
                               "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 64}})
    run = train_run(cfg, tmp_path / kind)
    assert len(run.history) == 2 and all(math.isfinite(v) for v in run.history.column("kl"))
    metrics = evaluate_run(run.path)
    assert math.isfinite(metrics["iwae_nll"]) and metrics["kl"] > 0
    assert metrics["kl_estimator"].startswith("Monte Carlo")  # no closed form for either family
    assert "KL estimated by</td><td class=\"num\">Monte Carlo" in metrics_table(metrics)
    loaded = ckpt.load(run.path)
    assert type(loaded.model) is TEST_FAMILIES[kind]
    x = torch.zeros(3, 2)
    torch.testing.assert_close(loaded.model.embed(x), run.model.embed(x), rtol=0, atol=0)
    ctx = load_context(run.path)
    apply, skip = plan(ctx)
    skipped = dict(skip)
    # What this family lacks is said, not drawn: the ellipses / μσ panels need a Normal q(z|x),
    # the N(0, I) circles a standard prior.
    if kind == "flowvae":
        assert "factorised Normal" in skipped["posterior_contours"]
        assert "z_vs_eps" not in skipped and "density" not in skipped
    else:
        assert "prior is not N(0, I)" in skipped["aggregate_posterior"]
    notes: list[str] = []
    paths = make_figures(run.path, ctx=ctx, notify=notes.append)
    assert sorted(p.stem for p in paths) == sorted(s.name for s in apply)
    assert not any("could not be drawn" in n for n in notes)
