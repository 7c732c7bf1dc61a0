"""Free bits (Kingma et al. 2016): the floored KL term, its gradient, and where it is refused."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from vaelab.config import ConfigError, TrainConfig
from vaelab.data.registry import load_dataset
from vaelab.errors import InputError
from vaelab.models import build_model
from vaelab.objectives import elbo, free_bits_kl, kl_standard_normal
from vaelab.train import TrainStep

KL = torch.tensor([[0.1, 2.0, 0.5],
                   [0.3, 4.0, 0.1]])  # (B = 2, d = 3): batch means 0.2, 3.0, 0.3


def test_dim_group_floors_each_dimensions_batch_mean():
    assert free_bits_kl(KL, 0.25, "dim").item() == pytest.approx(0.25 + 3.0 + 0.3)
    assert free_bits_kl(KL, 1.0, "dim").item() == pytest.approx(1.0 + 3.0 + 1.0)


def test_all_group_floors_the_whole_latents_batch_mean():
    assert free_bits_kl(KL, 3.0, "all").item() == pytest.approx(3.5)  # mean_B Σ_j KL_j = 3.5 > λ
    assert free_bits_kl(KL, 5.0, "all").item() == 5.0
    assert free_bits_kl(None, 5.0, "all", kl=KL.sum(-1)).item() == 5.0  # a posterior without per-dim KL


def test_zero_floor_is_the_plain_kl_term_exactly():
    for group in ("dim", "all"):
        assert torch.equal(free_bits_kl(KL, 0.0, group), KL.sum(-1).mean())


def test_dim_group_is_refused_without_a_per_dimension_kl():
    with pytest.raises(InputError, match="does not factorise.*--free-bits-group all"):
        free_bits_kl(None, 0.5, "dim", kl=KL.sum(-1))
    with pytest.raises(InputError, match="free_bits_group must be one of dim, all"):
        free_bits_kl(KL, 0.5, "unit")  # ("layer" is a group now: the layers of a ladder VAE)


def test_a_dimension_below_the_floor_gets_no_kl_gradient():
    kl = KL.clone().requires_grad_(True)
    free_bits_kl(kl, 0.25, "dim").backward()
    # dim 0 (mean 0.2) is below λ = 0.25: no gradient; dims 1 and 2 above it: d mean_B / d KL_bj = 1/B
    assert torch.equal(kl.grad, torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]))
    kl.grad = None
    free_bits_kl(kl, 5.0, "all").backward()
    assert torch.equal(kl.grad, torch.zeros_like(kl))


def _model_and_batch():
    cfg = tiny_config(model={"latent_dim": 3}, train={"objective": "elbo"})
    x = load_dataset(cfg.data).x[:64]
    return build_model(cfg.model, 2, seed=0), x


def _grads(model, loss):
    return torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)


def test_above_the_floor_the_gradient_is_the_plain_elbos():
    model, x = _model_and_batch()
    kl_means = kl_standard_normal(model.encode(x)).detach().mean(0)  # (d,)
    floor = 0.5 * float(kl_means.min())
    assert floor > 0  # every dimension's KL is above λ
    plain = elbo(model, x, beta=2.0, generator=torch.Generator().manual_seed(1))
    floored = elbo(model, x, beta=2.0, generator=torch.Generator().manual_seed(1), free_bits=floor)
    assert torch.equal(plain.loss, floored.loss) and torch.equal(plain.kl, floored.kl)
    for a, b in zip(_grads(model, plain.loss), _grads(model, floored.loss), strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_below_the_floor_a_dimensions_kl_leaves_the_gradient():
    model, x = _model_and_batch()
    q_z = model.encode(x)
    kl_means = kl_standard_normal(q_z).detach().mean(0)  # (d,)
    lowest = int(kl_means.argmin())
    floor = float(kl_means.sort().values[:2].mean())  # between the two smallest: only `lowest` is below
    gen = torch.Generator().manual_seed(1)
    out = elbo(model, x, beta=2.0, generator=gen, free_bits=floor)
    # The reported KL is the true one; the loss carries λ for the floored dimension instead of its KL.
    true = elbo(model, x, beta=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.kl, true.kl) and torch.equal(out.recon, true.recon)
    assert torch.equal(out.elbo, true.elbo)
    keep = [j for j in range(3) if j != lowest]
    expected_loss = true.recon + 2.0 * (kl_standard_normal(q_z)[:, keep].sum(-1).mean() + floor)
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    for a, b in zip(_grads(model, out.loss), _grads(model, expected_loss), strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # and the floored dimension's KL itself has no gradient through the free-bits term
    kl = kl_standard_normal(q_z).detach().requires_grad_(True)
    free_bits_kl(kl, floor, "dim").backward()
    assert torch.all(kl.grad[:, lowest] == 0) and torch.all(kl.grad[:, keep] > 0)


def test_the_training_objective_refuses_free_bits_with_iwae():
    model, x = _model_and_batch()
    cfg = TrainConfig(objective="iwae", free_bits=0.5)  # what check_settings refuses for the CLI / train_run
    with pytest.raises(ConfigError, match="use objective = 'elbo'"):
        TrainStep(model, cfg)  # refused when the step is built, before any batch


def test_free_bits_keep_a_dimension_in_use_during_training():
    """With a floor, training stops pushing a dimension's KL below λ, so a 3-d latent on 2-d data keeps
    more KL in its least-used dimension than the plain ELBO does."""
    from vaelab.train import fit

    def least_used_kl(**train):
        cfg = tiny_config(model={"latent_dim": 3}, train={"objective": "elbo", "epochs": 30, **train})
        model = build_model(cfg.model, 2, seed=0)
        x = load_dataset(cfg.data).x
        fit(model, x, cfg.train)
        with torch.no_grad():
            return float(kl_standard_normal(model.encode(x)).mean(0).min())

    plain, floored = least_used_kl(), least_used_kl(free_bits=0.5)
    assert floored > plain
