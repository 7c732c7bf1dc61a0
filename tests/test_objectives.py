"""Objectives checked against closed forms: KL, and a linear-Gaussian VAE whose ELBO and
exact log-likelihood are known (probabilistic PCA)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from vaelab.config import ModelConfig
from vaelab.models import build_model
from vaelab.objectives import ae_loss, elbo, iwae, iwae_bound, kl_standard_normal


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    log_scale=st.floats(-3, 2),
)
def test_closed_form_kl_equals_torch_kl_divergence(d, seed, log_scale):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(5, d, generator=g, dtype=torch.float64) * 3
    std = torch.exp(torch.randn(5, d, generator=g, dtype=torch.float64) + log_scale)
    q = Independent(Normal(mu, std), 1)
    prior = Independent(Normal(torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)), 1)
    ours = kl_standard_normal(q)
    assert ours.shape == (5, d)
    torch.testing.assert_close(ours.sum(-1), kl_divergence(q, prior))
    torch.testing.assert_close(ours, kl_divergence(Normal(mu, std), Normal(0.0, 1.0)))


def linear_vae(d=2, D=3, var=0.5, seed=0):
    """A VAE with a linear decoder (no hidden layers): p(x|z) = N(Wz + b, σ² I)."""
    cfg = ModelConfig(hidden=[], latent_dim=d, likelihood="gaussian", recon_var=var)
    model = build_model(cfg, D, seed=seed).double()
    return model


def closed_form_elbo(model, x):
    """E_q[log p(x|z)] - KL for a linear decoder, computed without sampling."""
    q = model.encode(x)
    mu, s = q.base_dist.loc, q.base_dist.scale
    lin = model.decoder[0]
    W, b = lin.weight, lin.bias  # (D, d), (D,)
    var = model.likelihood.var
    D = x.shape[1]
    mean_x = mu @ W.T + b
    expected_sq = ((x - mean_x) ** 2).sum(-1) + (s**2 @ (W**2).T).sum(-1)
    e_log_px = -expected_sq / (2 * var) - 0.5 * D * math.log(2 * math.pi * var)
    return e_log_px - kl_standard_normal(q).sum(-1)


def exact_log_px(model, x):
    """log p(x) = log N(x; b, W Wᵀ + σ² I) for the linear-Gaussian model."""
    lin = model.decoder[0]
    W, b = lin.weight, lin.bias
    cov = W @ W.T + model.likelihood.var * torch.eye(W.shape[0], dtype=W.dtype)
    return MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


@torch.no_grad()
def test_iwae_k1_is_unbiased_estimate_of_the_elbo():
    model = linear_vae()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = closed_form_elbo(model, x)  # (4,)
    g = torch.Generator().manual_seed(2)
    draws = torch.stack([iwae_bound(model, x, k=1, generator=g) for _ in range(4000)])  # (4000, 4)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - target).abs() < 4 * se), (draws.mean(0), target, se)
    # the training ELBO estimator agrees too
    e = torch.stack([elbo(model, x, generator=g).elbo for _ in range(4000)])
    assert abs(float(e.mean() - target.mean())) < 4 * float(e.std() / math.sqrt(len(e)))


@torch.no_grad()
def test_iwae_bound_increases_with_k_towards_exact_log_likelihood():
    model = linear_vae(seed=3)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    elbo_val = closed_form_elbo(model, x).mean()
    exact = exact_log_px(model, x).mean()
    means = {}
    for k in (1, 10, 100, 2000):
        means[k] = torch.stack([iwae_bound(model, x, k=k, generator=g).mean() for _ in range(30)]).mean()
    assert means[10] > elbo_val + 1e-3
    assert means[1] < means[10] < means[100] <= means[2000] + 1e-3
    assert means[2000] <= exact + 1e-3  # still a lower bound on average
    assert abs(float(means[2000] - exact)) < 0.02  # and close to log p(x)


@torch.no_grad()
def test_iwae_chunking_gives_identical_result():
    model = linear_vae(seed=6)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a = iwae_bound(model, x, k=64, generator=torch.Generator().manual_seed(8))
    b = iwae_bound(model, x, k=64, generator=torch.Generator().manual_seed(8), chunk=64)
    c = iwae_bound(model, x, k=64, generator=torch.Generator().manual_seed(8), chunk=7)
    # All k draws are made before decoding, so chunk size changes no draw and no number.
    assert a.shape == (5,) and torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, iwae_bound(model, x, k=64, generator=torch.Generator().manual_seed(9), chunk=7))


def test_beta_weights_only_the_kl():
    model = linear_vae()
    x = torch.randn(8, 3, dtype=torch.float64)
    o1 = elbo(model, x, beta=1.0, generator=torch.Generator().manual_seed(0))
    o4 = elbo(model, x, beta=4.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(o1.recon, o4.recon)
    torch.testing.assert_close(o4.loss, o4.recon + 4 * o4.kl)
    torch.testing.assert_close(o1.elbo, o4.elbo)  # the reported ELBO is always the β = 1 bound


def test_iwae_objective_matches_bound():
    model = linear_vae()
    x = torch.randn(8, 3, dtype=torch.float64)
    out = iwae(model, x, k=5, generator=torch.Generator().manual_seed(0))
    ref = iwae_bound(model, x, k=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.loss, -ref.mean())
    out.loss.backward()
    assert model.encoder[0].weight.grad is not None


def test_ae_loss_reports_reconstruction_only():
    cfg = ModelConfig(kind="ae", hidden=[8], latent_dim=2, likelihood="gaussian", recon_var=1.0)
    model = build_model(cfg, 3, seed=0)
    x = torch.randn(10, 3)
    out = ae_loss(model, x)
    assert out.elbo is None and float(out.kl) == 0.0
    mean = model.decode(model.embed(x)).mean
    expected = (0.5 * ((x - mean) ** 2).sum(-1) + 1.5 * math.log(2 * math.pi)).mean()
    torch.testing.assert_close(out.recon, expected)


# --- β under the IWAE objective (issue 8 item 1) and the learned-variance likelihood (item 9) ---

def closed_form_beta_elbo(model, x, beta):
    """E_q[log p(x|z)] - β KL for the linear decoder, without sampling."""
    kl = kl_standard_normal(model.encode(x)).sum(-1)
    return closed_form_elbo(model, x) + kl - beta * kl


@torch.no_grad()
def test_beta_iwae_with_one_sample_is_the_beta_elbo_in_expectation():
    model = linear_vae(seed=11)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    g = torch.Generator().manual_seed(13)
    for beta in (0.25, 4.0):
        losses = torch.stack([iwae(model, x, k=1, beta=beta, generator=g).loss for _ in range(4000)])
        target = -closed_form_beta_elbo(model, x, beta).mean()
        se = float(losses.std() / math.sqrt(len(losses)))
        assert abs(float(losses.mean() - target)) < 4 * se, (beta, losses.mean(), target, se)
        # and it is not the β = 1 value: β changes what is trained
        assert abs(float(target + closed_form_elbo(model, x).mean())) > 10 * se


@torch.no_grad()
def test_beta_iwae_with_beta_one_is_the_iwae_bound():
    model = linear_vae(seed=14)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    out = iwae(model, x, k=7, beta=1.0, generator=torch.Generator().manual_seed(16))
    ref = iwae_bound(model, x, k=7, generator=torch.Generator().manual_seed(16))
    torch.testing.assert_close(out.loss, -ref.mean())
    heavier = iwae(model, x, k=7, beta=4.0, generator=torch.Generator().manual_seed(16))
    assert not torch.equal(heavier.loss, out.loss) and torch.equal(heavier.recon, out.recon)  # same draws
    torch.testing.assert_close(heavier.elbo, out.elbo)  # the reported ELBO stays the β = 1 one


def test_beta_changes_the_trained_weights_under_every_objective(tmp_path):
    """Item 1: `--beta 4` trained bit-identical weights to β = 1 under the default IWAE objective."""
    from helpers import tiny_config
    from vaelab.train import train_run

    for objective in ("iwae", "elbo"):
        runs = [train_run(tiny_config(train={"objective": objective, "beta": beta, "epochs": 1}),
                          tmp_path / f"{objective}{beta}") for beta in (1.0, 4.0)]
        w = [dict(r.model.state_dict()) for r in runs]
        assert any(not torch.equal(w[0][n], w[1][n]) for n in w[0]), objective


def test_gaussian_learned_log_prob_is_the_closed_form_with_its_floor():
    from vaelab.likelihoods import GaussianLearned

    g = torch.Generator().manual_seed(0)
    mean, h = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g,
                                                                                dtype=torch.float64) * 3
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    lik = GaussianLearned(min_var=1e-2)
    var = 1e-2 + torch.exp(h)
    closed = (-0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)
    torch.testing.assert_close(lik(torch.cat([mean, h], -1)).log_prob(x), closed)


def test_variance_floor_bounds_the_density_on_repeated_values():
    """Item 9: on repeated values the learned variance shrinks and the NLL ran to -inf."""
    from vaelab.likelihoods import GaussianLearned

    x = torch.zeros(1, 4)
    params = torch.cat([x, torch.full((1, 4), -200.0)], -1)  # mean exactly on x, σ² → 0
    for min_var in (1e-6, 1e-3):
        log_p = GaussianLearned(min_var)(params).log_prob(x)
        assert torch.isfinite(log_p).all()
        torch.testing.assert_close(log_p, torch.tensor([-2.0 * math.log(2 * math.pi * min_var)]))


@given(d=st.integers(1, 5), seed=st.integers(0, 10_000), shift=st.floats(-30, 30))
@settings(max_examples=40, deadline=None)
def test_kl_from_the_log_variance_equals_torch_kl_divergence(d, seed, shift):
    from vaelab.models.vae import NormalLogVar

    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(4, d, generator=g, dtype=torch.float64)
    h = torch.randn(4, d, generator=g, dtype=torch.float64) + shift
    q = Independent(NormalLogVar(mu, h), 1)
    ours = kl_standard_normal(q)
    torch.testing.assert_close(ours, 0.5 * (mu**2 + torch.exp(h) - 1 - h))
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * h)), Normal(0.0, 1.0))
    torch.testing.assert_close(ours, ref)
    x = torch.randn(4, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(q.base_dist.log_prob(x), Normal(mu, torch.exp(0.5 * h)).log_prob(x))


def test_kl_from_the_log_variance_stays_finite_where_the_scale_underflows():
    from vaelab.models.vae import NormalLogVar

    mu, h = torch.zeros(1, 2), torch.tensor([[-300.0, -200.0]])  # exp(h/2) is 0 in float32
    kl = kl_standard_normal(Independent(NormalLogVar(mu, h), 1))
    torch.testing.assert_close(kl, 0.5 * (torch.exp(h) - 1 - h))
    assert torch.isfinite(kl).all()


def test_the_loss_is_described_once_from_the_objective_and_its_settings():
    from vaelab.config import TrainConfig
    from vaelab.models import AE, VAE
    from vaelab.objectives import OBJECTIVES, Objective, describe_loss, register_objective

    assert describe_loss(VAE, TrainConfig(objective="elbo")) == "−ELBO"
    assert describe_loss(VAE, TrainConfig(objective="elbo", beta=4.0)) == "−β-ELBO (β = 4)"
    assert describe_loss(VAE, TrainConfig(objective="elbo", beta_schedule="cyclical")) == (
        "−β-ELBO (β cyclical to 1 (4 cycles, ratio 0.5))")
    assert describe_loss(VAE, TrainConfig(objective="iwae", k=4)) == "−IWAE bound (k = 4)"
    assert describe_loss(VAE, TrainConfig(objective="iwae", k=4, beta=4.0)) == (
        "−β-weighted IWAE (k = 4, β = 4; a bound only at β = 1)")
    # the autoencoder trains on its reconstruction whatever train.objective says
    assert describe_loss(AE, TrainConfig(objective="iwae", beta=4.0)) == "reconstruction loss"
    # an objective registered without a label is named from what it uses
    register_objective(Objective("iwae_plain", iwae, uses_k=True, uses_beta=False))
    try:
        class PlainVAE(VAE):
            objectives = ("iwae_plain",)

        assert describe_loss(PlainVAE, TrainConfig(objective="iwae_plain", k=3, beta=2.0)) == "iwae_plain loss (k = 3)"
    finally:
        OBJECTIVES.pop("iwae_plain")
