"""The contract every model class passes: shapes, distributions, save/load, determinism."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaelab import checkpoint as ckpt
from vaelab.config import ModelConfig, RunConfig
from vaelab.likelihoods import GaussianFixed, build_likelihood, sample_observation
from vaelab.models import build_model

CASES = [
    dict(kind="vae", likelihood="gaussian"),
    dict(kind="vae", likelihood="gaussian-learned", scale="softplus"),
    dict(kind="vae", likelihood="bernoulli", scale="exp"),
    dict(kind="ae", likelihood="gaussian"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("d", [1, 2, 5])
def test_shapes_and_distributions(case, d):
    model = build_model(ModelConfig(hidden=[16], latent_dim=d, **case), 3, seed=0)
    x = torch.rand(7, 3)
    z = model.embed(x)
    assert z.shape == (7, d)
    p_x = model.decode(z)
    assert p_x.batch_shape == (7,) and p_x.event_shape == (3,)
    assert model.sample(11, generator=torch.Generator().manual_seed(0)).shape == (11, 3)
    assert model.sample(4, generator=torch.Generator().manual_seed(0), noise=True).shape == (4, 3)
    assert model.reconstruct(x).shape == (7, 3)
    assert model.reconstruct(x, generator=torch.Generator().manual_seed(0), stochastic=True).shape == (7, 3)
    if case["kind"] == "vae":
        q_z = model.encode(x)
        assert isinstance(q_z, Independent) and isinstance(q_z.base_dist, Normal)
        assert q_z.batch_shape == (7,) and q_z.event_shape == (d,)
        assert torch.all(q_z.stddev > 0)
        assert torch.equal(model.embed(x), q_z.mean)


@pytest.mark.parametrize("case", CASES)
def test_same_generator_same_output(case):
    model = build_model(ModelConfig(hidden=[16], **case), 2, seed=0)
    a = model.sample(5, generator=torch.Generator().manual_seed(1), noise=True)
    b = model.sample(5, generator=torch.Generator().manual_seed(1), noise=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip_identical_outputs(case, tmp_path):
    cfg = RunConfig.from_dict({"model": {"hidden": [16], **case}})
    model = build_model(cfg.model, 2, seed=0)
    ckpt.save(tmp_path, model, cfg)
    loaded = ckpt.load(tmp_path)
    x = torch.randn(9, 2)
    assert torch.equal(model.embed(x), loaded.model.embed(x))
    assert torch.equal(model.sample(5, generator=torch.Generator().manual_seed(3)),
                       loaded.model.sample(5, generator=torch.Generator().manual_seed(3)))
    assert loaded.config == cfg


def test_seeded_init_does_not_touch_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(ModelConfig(), 2, seed=5)
    assert torch.equal(before, torch.get_rng_state())
    b = build_model(ModelConfig(), 2, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_scale_parameterisations():
    h = torch.tensor([[-1.0, 0.0, 2.0]])
    for scale, expected in [("logvar", torch.exp(0.5 * h)), ("softplus", torch.nn.functional.softplus(h)),
                            ("exp", torch.exp(h))]:
        model = build_model(ModelConfig(latent_dim=3, scale=scale), 2, seed=0)
        torch.testing.assert_close(model._scale(h), expected)


def test_likelihood_log_probs_match_closed_forms():
    params = torch.randn(4, 3)
    x = torch.randn(4, 3)
    lik = GaussianFixed(0.1)
    expected = -((x - params) ** 2).sum(-1) / 0.2 - 1.5 * math.log(2 * math.pi * 0.1)
    torch.testing.assert_close(lik(params).log_prob(x), expected)
    model = build_model(ModelConfig(likelihood="bernoulli"), 3, seed=0)
    logits = torch.randn(4, 3)
    xb = (torch.rand(4, 3) > 0.5).float()
    p = model.likelihood(logits)
    torch.testing.assert_close(p.log_prob(xb), Bernoulli(logits=logits).log_prob(xb).sum(-1))
    draws = torch.stack([sample_observation(p, torch.Generator().manual_seed(i)) for i in range(3000)])
    torch.testing.assert_close(draws.mean(0), torch.sigmoid(logits), atol=0.04, rtol=0)


def test_condition_checks():
    model = build_model(ModelConfig(), 2, seed=0)
    with pytest.raises(ValueError, match="without a condition"):
        model.embed(torch.randn(3, 2), torch.randn(3, 1))
    cond = build_model(ModelConfig(), 2, cond_dim=3, seed=0)
    with pytest.raises(ValueError, match="conditional"):
        cond.embed(torch.randn(3, 2))
    with pytest.raises(ValueError, match="width 2"):
        cond.embed(torch.randn(3, 2), torch.randn(3, 2))
    assert cond.embed(torch.randn(3, 2), torch.randn(3, 3)).shape == (3, 2)


@pytest.mark.parametrize("logit_shape, x_shape",
                         [((5, 4, 784), (4, 784)), ((4, 784), (4, 784)), ((2, 3, 6), (2, 3, 6))])
def test_bernoulli_log_prob_is_the_bernoulli_mass_for_samples_and_batches(logit_shape, x_shape):
    """p(x|z) = Π_d σ(ℓ_d)^x_d (1 − σ(ℓ_d))^(1 − x_d): the fast form Σ_d x_d ℓ_d − softplus(ℓ_d)
    agrees with torch's Bernoulli (float64 reference) whether x is shared by k decoded samples
    (importance weights) or matches the logits one to one (training), with its gradient x − σ(ℓ)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(logit_shape, generator=g) * 6).requires_grad_()
    x = (torch.rand(x_shape, generator=g) > 0.4).float()
    p = build_likelihood("bernoulli")(logits)
    got = p.log_prob(x)
    expected = Independent(Bernoulli(logits=logits.detach().double()), 1).log_prob(x.double())
    assert got.shape == expected.shape == logit_shape[:-1]
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-4)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    torch.testing.assert_close(grad, (x - torch.sigmoid(logits.detach())).expand_as(grad))
    # the rest of the distribution is torch's: mean, and the event/batch shapes
    torch.testing.assert_close(p.mean, torch.sigmoid(logits.detach()))
    assert p.event_shape == logit_shape[-1:] and p.batch_shape == logit_shape[:-1]


@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_log_prob_without_grad_is_the_same_mass_as_with_grad(binary):
    """Evaluation (no autograd) takes a different route for k samples sharing x (the terms
    softplus(ℓ) − x·ℓ in place, not the batched matrix product training differentiates): the same
    log-mass as torch's Bernoulli in float64 and as the gradient route, to float rounding, for
    binary x and for grey levels (where it is the negative cross-entropy, as torch's Bernoulli
    gives); the logits are left as they were."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 5, 784, generator=g) * 8
    u = torch.rand(5, 784, generator=g)
    x = (u > 0.5).float() if binary else u
    expected = Independent(Bernoulli(logits=logits.double(), validate_args=False), 1).log_prob(x.double())
    before = logits.clone()
    with torch.no_grad():
        fast = build_likelihood("bernoulli")(logits).log_prob(x)
        one_to_one = build_likelihood("bernoulli")(logits[0]).log_prob(x)  # (B, D) against (B, D)
    torch.testing.assert_close(one_to_one.double(), expected[0], rtol=1e-6, atol=1e-4)
    assert torch.equal(logits, before)
    differentiable = build_likelihood("bernoulli")(logits.clone().requires_grad_()).log_prob(x)
    assert fast.shape == differentiable.shape == (7, 5)
    torch.testing.assert_close(fast.double(), expected, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(fast, differentiable.detach(), rtol=1e-6, atol=1e-4)
