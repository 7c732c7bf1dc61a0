"""docs/objectives.md, checked against vaelab's own numbers: the convention (sums over dimensions,
batch means, nats), λ_rec = 1/σ², the per-pixel MSE / BCE translations and what they mean for β."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from helpers import tiny_config
from vaelab.config import RunConfig
from vaelab.data.registry import load_dataset
from vaelab.models import build_model
from vaelab.objectives import elbo

DOC = Path(__file__).resolve().parents[1] / "docs" / "objectives.md"
SIGMA2 = 0.3


def _run(likelihood: str, beta: float, **model):
    """A model, a batch and vaelab's ELBO output, with the z the ELBO drew (captured at decode)."""
    cfg = tiny_config(model={"likelihood": likelihood, "latent_dim": 3, **model})
    x = load_dataset(cfg.data).x[:48]
    if likelihood == "bernoulli":
        x = (x > 0).to(x.dtype)  # {0, 1} pixels
    net = build_model(cfg.model, 2, seed=0)
    drawn = {}
    decode = net.decode

    def spy(z, c=None):
        drawn["z"] = z
        return decode(z, c)

    net.decode = spy  # type: ignore[method-assign]
    out = elbo(net, x, beta=beta, generator=torch.Generator().manual_seed(3))
    net.decode = decode  # type: ignore[method-assign]
    return net, x, drawn["z"], out


def _kl_torch(net, x):
    """KL(q(z|x) ‖ N(0, I)) per point from torch.distributions alone: (B,)."""
    q = net.encode(x).base_dist
    q_z = Independent(Normal(q.loc, q.scale), 1)
    prior = Independent(Normal(torch.zeros_like(q.loc), torch.ones_like(q.loc)), 1)
    return kl_divergence(q_z, prior)


def _grads(net, loss):
    return [g for g in torch.autograd.grad(loss, list(net.parameters()), retain_graph=True, allow_unused=True)
            if g is not None]


def test_terms_are_summed_over_dimensions_and_averaged_over_the_batch():
    net, x, z, out = _run("gaussian", 1.0, recon_var=SIGMA2)
    mu = net.decode(z).mean  # (B, D)
    per_coord = -Normal(mu, math.sqrt(SIGMA2)).log_prob(x)  # (B, D)
    assert out.recon.item() == pytest.approx(per_coord.sum(-1).mean().item(), rel=1e-6)
    assert out.kl.item() == pytest.approx(_kl_torch(net, x).mean().item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((out.recon + out.kl).item(), rel=1e-7)
    assert out.elbo.item() == pytest.approx(-(out.recon + out.kl).item(), rel=1e-7)


def test_fixed_gaussian_recon_in_terms_of_lambda_rec_and_mse():
    lam = 1 / SIGMA2
    assert RunConfig.from_dict({"model": {"likelihood": "gaussian", "lambda_rec": lam}}).model.recon_var == \
        pytest.approx(SIGMA2)
    net, x, z, out = _run("gaussian", 1.0, recon_var=SIGMA2)
    d_x = x.shape[1]
    sq = (x - net.decode(z).mean).square().sum(-1).mean()  # mean_b ‖x − μ(z)‖²
    # −log p(x|z) = (λ_rec/2)‖x − μ‖² − (D/2) log(λ_rec / 2π)
    assert out.recon.item() == pytest.approx((lam / 2 * sq - d_x / 2 * math.log(lam / (2 * math.pi))).item(), rel=1e-6)
    # MSE = recon · 2σ²/D − σ² log(2πσ²)
    mse = F.mse_loss(net.decode(z).mean, x)
    assert mse.item() == pytest.approx(
        out.recon.item() * 2 * SIGMA2 / d_x - SIGMA2 * math.log(2 * math.pi * SIGMA2), rel=1e-5)


def test_bernoulli_recon_is_d_times_the_per_pixel_bce():
    net, x, z, out = _run("bernoulli", 1.0)
    bce = F.binary_cross_entropy_with_logits(net.decode(z).base_dist.logits, x)
    assert bce.item() == pytest.approx(out.recon.item() / x.shape[1], rel=1e-6)


@pytest.mark.parametrize("kl_mean_over_latents", [False, True])
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_a_per_pixel_codebases_beta_is_ours_times_d_over_2_sigma2(likelihood, kl_mean_over_latents):
    """Their L' = per-pixel recon + β'·KL trains our β = β'·D/(2σ²) (Gaussian) or β'·D (Bernoulli),
    divided by d when their KL is a mean over latent dimensions: the gradients are proportional."""
    beta_theirs, d_x, d_z = 0.7, 2, 3
    scale = d_x / (2 * SIGMA2) if likelihood == "gaussian" else d_x  # ours = scale × theirs
    beta_ours = beta_theirs * scale / (d_z if kl_mean_over_latents else 1)
    extra = {"recon_var": SIGMA2} if likelihood == "gaussian" else {}
    net, x, z, out = _run(likelihood, beta_ours, **extra)
    p_x = net.decode(z)
    if likelihood == "gaussian":
        recon_theirs = F.mse_loss(p_x.mean, x)
    else:
        recon_theirs = F.binary_cross_entropy_with_logits(p_x.base_dist.logits, x)
    kl_theirs = _kl_torch(net, x).mean() / (d_z if kl_mean_over_latents else 1)
    loss_theirs = recon_theirs + beta_theirs * kl_theirs
    for ours, theirs in zip(_grads(net, out.loss), _grads(net, loss_theirs), strict=True):
        assert torch.allclose(ours, scale * theirs, rtol=1e-4, atol=1e-6)
    # and a β that ignores the factor does not give proportional gradients
    wrong = recon_theirs + beta_ours * kl_theirs
    assert not all(torch.allclose(a, scale * b, rtol=1e-3, atol=1e-5)
                   for a, b in zip(_grads(net, out.loss), _grads(net, wrong), strict=True))


def test_the_page_states_the_formulas_these_tests_check():
    text = DOC.read_text()
    for formula in ("MSE = recon · 2σ²/D − σ² log(2πσ²)", "BCE = recon / D", "β = β'·D/(2σ²)", "β = β'·D",
                    "β_t = β · min(1, t / N)", "τ_t = (t mod L) / L", "Σ_{j=1..d} max(λ, (1/B) Σ_b KL_j(x_b))"):
        assert formula in text, formula


def test_lambda_rec_trades_against_beta():
    """recon + β·kl at λ_rec is λ_rec × (recon + (β/λ_rec)·kl at λ_rec = 1) + a constant: proportional gradients."""
    lam, beta = 1 / SIGMA2, 2.0
    net, x, _, out = _run("gaussian", beta, recon_var=SIGMA2)
    net1, _, _, out1 = _run("gaussian", beta / lam, recon_var=1.0)  # same weights, same z
    for a, b in zip(_grads(net, out.loss), _grads(net1, out1.loss), strict=True):
        assert torch.allclose(a, lam * b, rtol=1e-4, atol=1e-6)


def test_free_bits_raise_the_logged_loss_by_at_most_beta_groups_lambda():
    beta, lam = 1.5, 0.4
    for group, groups in (("dim", 3), ("all", 1)):
        cfg = tiny_config(model={"latent_dim": 3}, train={"objective": "elbo"})
        net = build_model(cfg.model, 2, seed=0)
        x = load_dataset(cfg.data).x[:48]
        out = elbo(net, x, beta=beta, generator=torch.Generator().manual_seed(3), free_bits=lam,
                   free_bits_group=group)
        excess = (out.loss - (out.recon + beta * out.kl)).item()
        assert 0 < excess <= beta * groups * lam + 1e-6
