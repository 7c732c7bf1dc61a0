"""The ladder VAE (vaelab.models.ladder) and the latent-group form of objectives and evaluation.

Densities against Normal log-densities written out by hand; the per-layer KLs add up to the
total in training terms and in evaluation; draws come only from the passed generator, top-down;
it trains on 2-D data and on digits; a stacked sweep gives fit's numbers; free bits per layer;
bad options refused; save -> load; ``vaelab eval`` reports KL per layer. Both forms: the
defaults (residual merge, shared encoder, decoder reading all of z) and the paper's (precision
weighting, the deterministic ladder path, p(x|z_1)); the defaults with zero top-down nets are the
plain VAE; and the defaults train as well as the VAE where the paper's form fell far behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import (
    assert_stacked_equals_solo,
    normal_log_prob,
    perturbed_ladder,
    points_2d,
    tiny_config,
    variance_from_scale,
)
from vaelab import checkpoint as ckpt
from vaelab.config import ConfigError, RunConfig
from vaelab.data.pixels import eval_view
from vaelab.data.registry import load_dataset
from vaelab.distributions import kl, rsample
from vaelab.errors import InputError
from vaelab.evaluate import evaluate
from vaelab.models import LadderVAE, build_model
from vaelab.models.ladder import LadderPosterior, LadderPrior, combine, residual
from vaelab.objectives import elbo, free_bits_kl, iwae, kl_groups, log_importance_weights
from vaelab.settings import check_settings
from vaelab.train import fit
from vaelab.train.run import training_data

# The paper's form (Sønderby et al. 2016): precision weighting, the deterministic ladder path, p(x|z_1).
PAPER = {"merge": "precision", "bottom_up": "ladder", "decode": "bottom"}
FORMS = {"default": {}, "paper": PAPER}


def _model(layers=(2, 1, 2), scale="logvar", form="default", **model) -> LadderVAE:
    return perturbed_ladder(layers, scale, FORMS[form], **model)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _estimates_by_hand(model: LadderVAE, x: torch.Tensor, form: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(μ̂_i, h_i) of the 3 layers (2, 1, 2) of ``_model``, bottom to top, written out."""
    if form == "paper":  # d_1 = act(encoder(x)), d_i = act(MLP(d_{i-1})), heads -> (μ̂_i, h_i)
        act = torch.tanh  # tiny_config's activation
        d = [act(model.encoder(x))]
        d += [act(model.bottom_up[0](d[0]))]
        d += [act(model.bottom_up[1](d[1]))]
        return [tuple(model.heads[i](d[i]).chunk(2, -1)) for i in range(3)]  # type: ignore[misc]
    loc, h = model.encoder(x).chunk(2, -1)  # the VAE's encoder: [μ̂_1 μ̂_2 μ̂_3 | h_1 h_2 h_3]
    return [(loc[:, :2], h[:, :2]), (loc[:, 2:3], h[:, 2:3]), (loc[:, 3:], h[:, 3:])]


def _merge_by_hand(form: str, loc_hat, var_hat, loc_p, var_p):
    """(μ_q, σ²_q): precision weighting (LVAE eqs. 18-19) for the paper's form, residual (NVAE eq. 3) else."""
    if form == "paper":  # σ_q² = 1/(σ̂⁻² + σ_p⁻²), μ_q = (μ̂ σ̂⁻² + μ_p σ_p⁻²) σ_q²
        var_q = 1 / (1 / var_hat + 1 / var_p)
        return (loc_hat / var_hat + loc_p / var_p) * var_q, var_q
    return loc_p + loc_hat, var_p * var_hat  # μ_q = μ_p + μ̂, σ_q² = σ_p² σ̂²


@pytest.mark.parametrize("form", ["default", "paper"])
@pytest.mark.parametrize("scale", ["logvar", "softplus", "exp"])
def test_log_probs_are_the_sums_of_the_layers_normal_densities_written_out(scale, form):
    model = _model(scale=scale, form=form)
    x = points_2d()
    q_z, prior = model.encode(x), model.prior()
    z = rsample(q_z, (4,), _gen())  # (4, 6, 5)
    z1, z2, z3 = z[..., :2], z[..., 2:3], z[..., 3:]
    with torch.no_grad():
        hat = _estimates_by_hand(model, x, form)
        var_hat = [variance_from_scale(h, scale) for _, h in hat]

        def p_layer(i: int, above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loc, h = model.top_down[i](above).chunk(2, -1)
            return loc, variance_from_scale(h, scale)

        # q: z_3 ~ N(μ̂_3, σ̂_3²); q(z_i | z_{i+1}) the estimate merged with p(z_i | z_{i+1}).
        q_terms = {"3": normal_log_prob(z3, hat[2][0], var_hat[2])}
        for i, z_i, z_above in ((1, z2, z3), (0, z1, z2)):
            loc_q, var_q = _merge_by_hand(form, hat[i][0], var_hat[i], *p_layer(i, z_above))
            q_terms[str(i + 1)] = normal_log_prob(z_i, loc_q, var_q)
        p_terms = {"3": normal_log_prob(z3, torch.zeros(2), torch.ones(2)),
                   "2": normal_log_prob(z2, *p_layer(1, z3)), "1": normal_log_prob(z1, *p_layer(0, z2))}
        q_groups, p_groups = q_z.log_prob_groups(z), prior.log_prob_groups(z)
        assert list(q_groups) == list(p_groups) == ["1", "2", "3"]
        for g in "123":
            torch.testing.assert_close(q_groups[g], q_terms[g], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(p_groups[g], p_terms[g], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q_z.log_prob(z), sum(q_terms.values()), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prior.log_prob(z), sum(p_terms.values()), rtol=1e-5, atol=1e-5)
        assert q_z.log_prob(z).shape == (4, 6) and prior.log_prob(z).shape == (4, 6)
        assert q_z.groups == prior.groups == {"1": slice(0, 2), "2": slice(2, 3), "3": slice(3, 5)}


def test_combine_is_the_precision_weighted_mean_and_variance():
    loc_hat, loc_p = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([3.0, 0.5, 1e3])
    var_hat, var_p = torch.tensor([0.5, 4.0, 1e-6]), torch.tensor([2.0, 4.0, 1e6])
    loc, log_var = combine(loc_hat, var_hat.log(), loc_p, var_p.log())
    var = 1 / (1 / var_hat + 1 / var_p)
    torch.testing.assert_close(log_var.exp(), var)
    torch.testing.assert_close(loc, (loc_hat / var_hat + loc_p / var_p) * var)


def test_residual_is_the_prior_shifted_and_scaled():
    loc_hat, loc_p = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([3.0, 0.5, 1e3])
    var_hat, var_p = torch.tensor([0.5, 4.0, 1.0]), torch.tensor([2.0, 4.0, 1e-6])
    loc, log_var = residual(loc_hat, var_hat.log(), loc_p, var_p.log())
    torch.testing.assert_close(loc, loc_p + loc_hat)
    torch.testing.assert_close(log_var.exp(), var_p * var_hat)


def test_only_the_residual_merge_lets_a_unit_leave_a_sharp_prior():
    """The trap that made the paper's form 13 nats worse than the VAE on MNIST: a unit whose q is its
    prior p(z_1|z_2) = N(μ_p, σ_p²) with σ_p ≪ 1 (trained: σ_p ~ 0.03, σ̂ ~ 20) is reached by precision
    weighting only at σ̂ ≫ σ_p, where the estimate's weight σ_p²/(σ̂² + σ_p²), and with it every gradient
    that could move q away from p, vanishes; the residual merge reaches q = p at μ̂ = 0, σ̂ = 1, where
    ∂μ_q/∂μ̂ = 1 and ∂ log σ_q²/∂ log σ̂² = 1 whatever σ_p."""
    loc_p, log_var_p = torch.tensor([0.7]), torch.tensor([2 * math.log(0.03)])
    grads = {}
    for name, merge, log_var_hat in (("precision", combine, 2 * math.log(20.0)), ("residual", residual, 0.0)):
        loc_hat = torch.zeros(1, requires_grad=True)
        h = torch.tensor([log_var_hat], requires_grad=True)
        loc_q, log_var_q = merge(loc_hat, h, loc_p, log_var_p)
        torch.testing.assert_close(loc_q.detach(), loc_p, atol=2e-3, rtol=0)  # q(z_1|z_2) ≈ p(z_1|z_2) ...
        torch.testing.assert_close(log_var_q.detach(), log_var_p, atol=5e-6, rtol=0)
        grads[name] = [float(g) for g in torch.autograd.grad(loc_q.sum() + log_var_q.sum(), (loc_hat, h))]
    assert all(abs(g) < 1e-5 for g in grads["precision"])  # ... from where no gradient leads away
    assert grads["residual"] == [1.0, 1.0]


@pytest.mark.parametrize("form", ["default", "paper"])
def test_draws_come_from_the_generator_only_top_down_and_reparameterised(form):
    model = _model(form=form)
    x = points_2d()
    q_z = model.encode(x)
    state = torch.get_rng_state()
    a = rsample(q_z, (3,), _gen(4))
    assert torch.equal(a, rsample(q_z, (3,), _gen(4)))
    assert not torch.equal(a, rsample(q_z, (3,), _gen(5)))
    p_a = rsample(model.prior(), (7,), _gen(4))
    assert p_a.shape == (7, 5) and torch.equal(p_a, rsample(model.prior(), (7,), _gen(4)))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not used
    # The draw written out: ε_3, then ε_2, then ε_1 from the generator, each z_i = μ_q + σ_q ε_i.
    g = _gen(4)
    with torch.no_grad():
        merge = combine if form == "paper" else residual
        (l1, h1), (l2, h2), (l3, h3) = model.bottom_up_estimates(x)
        z3 = l3 + (0.5 * h3).exp() * torch.randn((3, 6, 2), generator=g)
        loc, log_var = merge(l2, h2, *model.prior_layer(1, z3))
        z2 = loc + (0.5 * log_var).exp() * torch.randn((3, 6, 1), generator=g)
        loc, log_var = merge(l1, h1, *model.prior_layer(0, z2))
        z1 = loc + (0.5 * log_var).exp() * torch.randn((3, 6, 2), generator=g)
    torch.testing.assert_close(a, torch.cat([z1, z2, z3], -1))
    a.square().sum().backward()  # reparameterised: gradients reach the bottom-up and top-down nets
    nets = (model.encoder, model.heads, model.top_down) if form == "paper" else (model.encoder, model.top_down)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for net in nets for p in net.parameters())


def test_the_prior_draws_what_it_scores():
    """Draws of p(z) have the moments its densities say: z_L ~ N(0, I), and z_i given z_{i+1}
    standardised by p(z_i | z_{i+1}) is N(0, I)."""
    model = _model()
    with torch.no_grad():
        z = rsample(model.prior(), (40_000,), _gen(2))
        top = z[:, 3:]
        loc, log_var = model.prior_layer(0, z[:, 2:3])
        eps_1 = (z[:, :2] - loc) / (0.5 * log_var).exp()
    for e in (top, eps_1):
        torch.testing.assert_close(e.mean(0), torch.zeros(2), atol=0.03, rtol=0)
        torch.testing.assert_close(e.std(0), torch.ones(2), atol=0.03, rtol=0)


def test_per_layer_kls_add_up_to_the_total():
    model = _model()
    x = points_2d(32)
    out = elbo(model, x, generator=_gen(3))
    layers = [out.terms[f"kl_{g}"] for g in "123"]
    torch.testing.assert_close(sum(layers), out.terms["kl"], rtol=1e-6, atol=1e-6)
    assert all(float(t.detach()) != 0 for t in layers)
    # The total is the Monte Carlo KL log q(z) − log p(z) at the same draw.
    z = rsample(model.encode(x), (), _gen(3))
    torch.testing.assert_close(out.terms["kl"], kl(model.encode(x), model.prior(), z).mean(), rtol=1e-5, atol=1e-5)
    by_group = kl_groups(model.encode(x), model.prior(), rsample(model.encode(x), (5,), _gen(1)))
    assert by_group is not None and all(v.shape == (32,) for v in by_group.values())
    out_k = iwae(model, x, k=5, generator=_gen(1))
    torch.testing.assert_close(sum(out_k.terms[f"kl_{g}"] for g in "123"), out_k.terms["kl"], rtol=1e-6, atol=1e-6)
    # Evaluation: KL per layer sums to the KL, active units per layer to the active units.
    metrics = evaluate(model, x, k=20, seed=0)
    assert math.isclose(sum(metrics["kl_per_group"].values()), metrics["kl"], rel_tol=1e-9, abs_tol=1e-9)
    assert sum(metrics["active_units_per_group"].values()) == metrics["active_units"]
    assert set(metrics["kl_per_group_se"]) == {"1", "2", "3"}
    assert metrics["kl_estimator"].startswith("Monte Carlo")


def test_free_bits_per_layer_floor_each_layers_batch_mean_and_are_refused_without_layers():
    model = _model(form="paper")  # its layers' KLs straddle λ = 10
    x = points_2d(32)
    plain = elbo(model, x, generator=_gen(3))
    lam = 10.0
    floored = elbo(model, x, generator=_gen(3), free_bits=lam, free_bits_group="layer", beta=2.0)
    layers = [float(plain.terms[f"kl_{g}"].detach()) for g in "123"]
    expected = float(plain.terms["recon"].detach()) + 2.0 * sum(max(lam, v) for v in layers)
    assert min(layers) < lam < max(layers)  # some layers are floored, some are not
    assert math.isclose(float(floored.loss.detach()), expected, rel_tol=1e-6)
    assert floored.terms["kl"] == plain.terms["kl"] and floored.elbo == plain.elbo  # reported KL: the true one
    # Above every layer's KL the floor is constant: no gradient reaches the KL, only the reconstruction.
    high = elbo(model, x, generator=_gen(3), free_bits=100.0, free_bits_group="layer")
    assert math.isclose(float(high.loss.detach()), float(plain.terms["recon"].detach()) + 300.0, rel_tol=1e-6)
    # Refused: per layer for a plain VAE; per dimension for a ladder (its KL is not per dimension).
    vae = build_model(tiny_config(model={"latent_dim": 2}).model, 2, seed=0)
    with pytest.raises(InputError, match="'layer'.*have no groups; use --free-bits-group dim"):
        elbo(vae, x, generator=_gen(3), free_bits=0.5, free_bits_group="layer")
    with pytest.raises(InputError, match="does not factorise.*--free-bits-group layer"):
        elbo(model, x, generator=_gen(3), free_bits=0.5, free_bits_group="dim")
    with pytest.raises(InputError, match="have no groups"):
        free_bits_kl(torch.ones(4, 2), 0.5, "layer")
    cfg = RunConfig.from_dict({"data": {"name": "moons"}, "model": {"kind": "vae"},
                               "train": {"objective": "elbo", "free_bits": 0.5, "free_bits_group": "layer"}})
    with pytest.raises(ConfigError, match=r"free-bits-group\) does not apply here: layer .* has one latent layer"):
        check_settings(cfg)
    check_settings(cfg.with_overrides({"model": {"kind": "ladder"}}))  # a ladder takes it


@pytest.mark.parametrize(("model", "match"), [
    ({"latent_dim": 4, "ladder": {"layers": [2, 1]}},
     r"model.ladder.layers \(--ladder-layers\) = \[2, 1\] sums to 3, but model.latent_dim .* = 4.*--latent-dim 3"),
    ({"latent_dim": 1}, r"latent_dim.* = 1: a ladder needs L >= 2 layers.*--latent-dim 2 or more"),
    ({"latent_dim": 3, "ladder": {"layers": [3]}}, r"L >= 2 stochastic layers.*--model vae"),
    ({"latent_dim": 3, "ladder": {"layers": [3, 0]}}, r"at least one dimension"),
    ({"latent_dim": 3, "ladder": {"hidden": [0]}}, r"hidden layer sizes must be positive"),
    ({"latent_dim": 3, "ladder": {"width": 0}}, r"ladder.width.*greater than 0"),
    ({"latent_dim": 3, "ladder": {"width": 16}},
     r"bottom_up = shared has none.*\(--ladder-bottom-up ladder\).*or drop width"),
    ({"latent_dim": 3, "ladder": {"merge": "sum"}}, r"ladder.merge.*'residual' or 'precision'"),
])
def test_bad_options_are_refused_with_what_to_use(model, match):
    with pytest.raises(ConfigError, match=match):
        cfg = tiny_config(model={"kind": "ladder", **model})
        build_model(cfg.model, 2, seed=0)


def test_layer_sizes_default_to_two_halves_and_every_option_changes_the_model():
    cfg = tiny_config(model={"kind": "ladder", "latent_dim": 5})
    model = build_model(cfg.model, 2, seed=0)
    assert isinstance(model, LadderVAE) and model.sizes == [3, 2] and model.latent_dim == 5
    # The defaults: the VAE's encoder outputs every layer's (μ̂_i, h_i), the decoder reads all of z.
    assert model.encoder[-1].out_features == 10 and model.decoder[0].in_features == 5
    assert model.merge is residual and not hasattr(model, "heads")
    changed = tiny_config(model={"kind": "ladder", "latent_dim": 5,
                                 "ladder": {"width": 12, "hidden": [7, 9], **PAPER}})
    other = build_model(changed.model, 2, seed=0)
    assert isinstance(other, LadderVAE)
    assert other.heads[0].in_features == 12 and other.top_down[0][0].out_features == 7
    assert other.top_down[0][2].out_features == 9
    assert other.encoder[-1].out_features == 12 and other.decoder[0].in_features == 3  # d_1; z_1 only
    assert other.merge is combine


def _eval_split(cfg: RunConfig):
    test, _ = eval_view(cfg, load_dataset(cfg.data, "test"))
    return test


def _train_and_measure(cfg: RunConfig) -> tuple[dict, dict, LadderVAE]:
    data = training_data(cfg, load_dataset(cfg.data, "train"), "cpu")
    model = build_model(cfg.model, data.x.shape[1], seed=0)
    assert isinstance(model, LadderVAE)
    test = _eval_split(cfg)
    before = evaluate(model, test, k=20, seed=0)
    history = fit(model, data.x, cfg.train, dynamic_binarization=data.dynamic_binarization)
    assert {"kl_1", "kl_2"} <= set(history.rows[-1])  # the history has a column per layer
    return before, evaluate(model, test, k=20, seed=0), model


def test_trains_on_moons_and_improves_its_held_out_bound():
    cfg = RunConfig.from_dict({
        "data": {"name": "moons", "n_train": 1000, "n_test": 300},
        "model": {"kind": "ladder", "latent_dim": 4, "hidden": [32, 32], "likelihood": "gaussian",
                  "recon_var": 0.02, "ladder": {"hidden": [32]}},
        "train": {"objective": "elbo", "steps": 300, "batch_size": 100, "lr": 3e-3, "diversity_samples": 32}})
    before, after, _ = _train_and_measure(cfg)
    # Measured: IWAE NLL 22.8 ± 1.1 -> 1.72 ± 0.04 nats, ELBO −27.5 -> −2.01; KL per layer 1.03 (z_1), 1.78 (z_2)
    # (the paper's form, precision / ladder path / p(x|z_1): 3.71 ± 0.16, KL 1.83 and 0.06).
    assert after["iwae_nll"] < before["iwae_nll"] - 20 and after["elbo"] > before["elbo"] + 20
    assert after["iwae_nll"] < 5.0 and after["kl_per_group"]["1"] > 0.5


def test_trains_on_digits_and_improves_its_held_out_bound():
    cfg = RunConfig.from_dict({
        "data": {"name": "digits"},
        "model": {"kind": "ladder", "latent_dim": 6, "hidden": [64], "likelihood": "bernoulli",
                  "ladder": {"hidden": [32]}},
        "train": {"objective": "elbo", "steps": 200, "batch_size": 64, "lr": 3e-3, "diversity_samples": 32}})
    before, after, model = _train_and_measure(cfg)
    # Measured: IWAE NLL 547.8 ± 0.2 -> 338.8 ± 2.4 nats per image; KL per layer 2.01 (z_1), 3.05 (z_2)
    # (the paper's form: 341.5 ± 2.4, KL 2.04 and 0.26).
    assert after["iwae_nll"] < before["iwae_nll"] - 150
    assert after["kl"] > 1.0 and math.isclose(sum(after["kl_per_group"].values()), after["kl"], rel_tol=1e-9)


def test_with_zero_top_down_nets_the_default_ladder_is_the_plain_vae():
    """p(z_i | z_{i+1}) = N(0, I) (the top-down nets output 0) makes the default ladder the VAE whose
    encoder and decoder it carries: the VAE's state dict loads into it, and q(z|x), p(z), p(x|z) and
    the log-weights agree at the same z. (The paper's form, p(x|z_1) with its own ladder path, has no
    such limit: it lost 13 nats to the VAE on MNIST.)"""
    vae_cfg = tiny_config(model={"latent_dim": 5, "likelihood": "bernoulli"})
    vae = build_model(vae_cfg.model, 6, seed=1)
    ladder = build_model(vae_cfg.with_overrides({"model": {"kind": "ladder", "ladder": {"layers": [2, 3]}}}).model,
                         6, seed=2)
    missing, unexpected = ladder.load_state_dict(vae.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("top_down.") for key in missing)
    assert isinstance(ladder, LadderVAE)
    with torch.no_grad():
        for net in ladder.top_down:
            net[-1].weight.zero_()
            net[-1].bias.zero_()
    x = (torch.rand(7, 6, generator=_gen(3)) > 0.5).float()
    z = torch.randn(4, 7, 5, generator=_gen(4))
    with torch.no_grad():
        q_vae, q_ladder = vae.encode(x), ladder.encode(x)
        torch.testing.assert_close(q_ladder.log_prob(z), q_vae.log_prob(z))
        torch.testing.assert_close(ladder.prior().log_prob(z), vae.prior().log_prob(z))
        torch.testing.assert_close(ladder.decode(z).log_prob(x), vae.decode(z).log_prob(x))
        torch.testing.assert_close(ladder.embed(x), vae.embed(x))
        # Drawn the same way (z_2's noise first, then z_1's: the VAE's one ε with its halves swapped).
        g = _gen(5)
        eps_top, eps_bottom = torch.randn(3, 7, 3, generator=g), torch.randn(3, 7, 2, generator=g)
        z_ladder = rsample(q_ladder, (3,), _gen(5))
        torch.testing.assert_close(z_ladder, q_vae.mean + q_vae.stddev * torch.cat([eps_bottom, eps_top], -1))
        torch.testing.assert_close(log_importance_weights(ladder, x, k=3, generator=_gen(5)),
                                   ladder.decode(z_ladder).log_prob(x) + vae.prior().log_prob(z_ladder)
                                   - q_vae.log_prob(z_ladder))


def test_the_default_ladder_trains_as_well_as_the_vae():
    """The regression test of the ladder's 13-nat loss to the plain VAE on MNIST: on digits, at the same
    widths, steps and seed, the default ladder stays within a few nats of the VAE and uses both layers.
    Measured (IWAE NLL, k = 50, 180 test images): VAE 306.8, ladder 309.9; the paper's form (precision
    weighting, the ladder path, p(x|z_1); the old default) 335.6, with 2.1 nats of KL in all."""
    nll = {}
    for name, model_cfg in (("vae", {"kind": "vae"}), ("ladder", {"kind": "ladder"})):
        cfg = RunConfig.from_dict({
            "data": {"name": "digits"},
            "model": {**model_cfg, "latent_dim": 8, "hidden": [64], "likelihood": "bernoulli"},
            "train": {"objective": "elbo", "steps": 800, "batch_size": 64, "lr": 3e-3, "diversity_samples": 32}})
        data = training_data(cfg, load_dataset(cfg.data, "train"), "cpu")
        model = build_model(cfg.model, data.x.shape[1], seed=0)
        fit(model, data.x, cfg.train, dynamic_binarization=data.dynamic_binarization)
        metrics = evaluate(model, _eval_split(cfg), k=50, seed=0)
        nll[name] = metrics["iwae_nll"]
    assert nll["ladder"] < nll["vae"] + 8.0, nll
    assert metrics["kl"] > 4.0


def test_conv_body_encodes_and_decodes_images():
    cfg = tiny_config(data={"name": "digits"}, model={"kind": "ladder", "net": "conv", "channels": [2, 4],
                                                       "latent_dim": 5, "likelihood": "bernoulli"})
    model = build_model(cfg.model, 784, seed=0)
    assert isinstance(model, LadderVAE) and type(model.encoder).__name__ == "ConvEncoder"
    x = (torch.rand(3, 784, generator=_gen()) > 0.5).float()
    q_z = model.encode(x)
    assert q_z.batch_shape == (3,) and q_z.event_shape == (5,)
    z = rsample(q_z, (2,), _gen())
    assert model.decode(z).batch_shape == (2, 3)
    assert torch.isfinite(iwae(model, x, k=2, generator=_gen()).loss)


def test_decode_reads_every_layer_by_default():
    model = _model()
    z = torch.randn(4, 5, generator=_gen())
    for cols in (slice(0, 2), slice(2, 3), slice(3, 5)):
        moved = z.clone()
        moved[:, cols] += 1.0
        assert not torch.equal(model.decode(z).mean, model.decode(moved).mean)


def test_decode_bottom_reads_z_1_only():
    model = _model(form="paper")
    z = torch.randn(4, 5, generator=_gen())
    moved = z.clone()
    moved[:, 2:] += 3.0  # z_2, z_3
    assert torch.equal(model.decode(z).mean, model.decode(moved).mean)
    moved[:, 0] += 1.0
    assert not torch.equal(model.decode(z).mean, model.decode(moved).mean)
    with pytest.raises(InputError, match=r"latent_dim \(the width of z = \[z_1, ..., z_L\]\) is 5"):
        model.decode(torch.zeros(4, 2))


@pytest.mark.parametrize("form", ["default", "paper"])
def test_embed_is_the_top_down_path_of_means(form):
    model = _model(form=form)
    merge = combine if form == "paper" else residual
    x = points_2d()
    with torch.no_grad():
        (l1, h1), (l2, h2), (l3, _) = model.bottom_up_estimates(x)
        m2 = merge(l2, h2, *model.prior_layer(1, l3))[0]
        m1 = merge(l1, h1, *model.prior_layer(0, m2))[0]
        torch.testing.assert_close(model.embed(x), torch.cat([m1, m2, l3], -1))


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_a_stacked_sweep_gives_the_numbers_of_fit(objective):
    base = RunConfig.from_dict({
        "data": {"name": "ring", "n_train": 200},
        "model": {"kind": "ladder", "latent_dim": 3, "hidden": [16], "likelihood": "gaussian", "recon_var": 0.1,
                  "ladder": {"hidden": [8]}},
        "train": {"objective": objective, "epochs": 4, "batch_size": 64, "diversity_samples": 32}})
    configs = [base.with_overrides(v) for v in ({"train": {"beta": 0.5}}, {"train": {"beta": 2.0, "seed": 3}})]
    assert_stacked_equals_solo(configs, ("loss", "kl", "kl_1", "kl_2"))


def test_save_load_and_vaelab_eval_report_kl_per_layer(tmp_path: Path):
    from typer.testing import CliRunner

    from vaelab import train_run
    from vaelab.cli import app

    cfg = RunConfig.from_dict({"data": {"name": "moons", "n_train": 256, "n_test": 64},
                               "model": {"kind": "ladder", "latent_dim": 3, "hidden": [16, 16],
                                         "ladder": {"layers": [2, 1]}},
                               "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 64}, "eval": {"k": 8}})
    run = train_run(cfg, tmp_path / "ladder")
    assert {"kl_1", "kl_2"} <= set(run.history.rows[-1])
    loaded = ckpt.load(run.path).model
    assert isinstance(loaded, LadderVAE) and loaded.sizes == [2, 1]
    x = points_2d()
    torch.testing.assert_close(loaded.embed(x), run.model.embed(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.sample(5, generator=_gen(2)), run.model.sample(5, generator=_gen(2)),
                               rtol=0, atol=0)
    result = CliRunner().invoke(app, ["eval", str(run.path), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert "KL per layer" in result.output and "z_1" in result.output and "active units per layer" in result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert set(metrics["kl_per_group"]) == {"1", "2"} and metrics["latent_groups"] == {"1": 2, "2": 1}
    assert math.isclose(sum(metrics["kl_per_group"].values()), metrics["kl"], rel_tol=1e-9, abs_tol=1e-12)
    # The hierarchy figures apply and draw; the report has them.
    from vaelab.plots import load_context, make_figures, plan

    ctx = load_context(run.path)
    applied = {spec.name for spec in plan(ctx)[0]}
    assert {"kl_per_layer", "layer_samples"} <= applied
    paths = make_figures(run.path, ctx=ctx, names=["kl_per_layer", "layer_samples"])
    assert sorted(p.stem for p in paths) == ["kl_per_layer", "layer_samples"]


def test_hierarchy_figures_skip_a_plain_vae_and_vary_exactly_one_layer(tmp_path: Path):
    from vaelab.plots import PlotContext, plan
    from vaelab.plots.hierarchy import layer_noise

    vae = build_model(tiny_config(model={"latent_dim": 2}).model, 2, seed=0)
    skipped = dict(plan(PlotContext(model=vae, data=load_dataset(tiny_config().data, "train")))[1])
    assert "one latent layer" in skipped["kl_per_layer"] and "one latent layer" in skipped["layer_samples"]
    model = _model()
    for varied in range(3):
        eps = layer_noise(model, varied, contexts=2, draws=5, generator=_gen())
        z = model.prior().from_noise(eps)  # (2, 5, 5)
        for i, cols in enumerate((slice(0, 2), slice(2, 3), slice(3, 5))):
            same = bool((z[:, :, cols] == z[:, :1, cols]).all())  # within a context, across its draws
            assert same == (i > varied)  # the layers above the varied one stay; it and those below change
        assert not torch.equal(z[0, 0], z[1, 0])  # contexts differ


def test_the_collapse_verdict_names_unused_layers():
    from vaelab.diagnostics import collapse_verdict

    metrics = {"mutual_info": 2.0, "mutual_info_se": 0.05, "active_units": 3, "latent_dim": 4,
               "kl_per_group": {"1": 2.5, "2": 0.01}, "kl_per_group_se": {"1": 0.1, "2": 0.002}}
    verdict = collapse_verdict(metrics)
    assert verdict is not None and not verdict.collapsed
    assert "Unused layer: z_2 (KL 0.010 nats)" in verdict.text and "--free-bits-group layer" in verdict.text
    metrics["kl_per_group_se"]["2"] = 0.1  # not confidently below 0.1 nats: nothing said
    assert "Unused" not in collapse_verdict(metrics).text


def test_the_distributions_have_the_contracts_shapes():
    model = _model()
    q_z, prior = model.encode(points_2d()), model.prior()
    assert isinstance(q_z, LadderPosterior) and isinstance(prior, LadderPrior)
    assert q_z.batch_shape == (6,) and q_z.event_shape == (5,) and prior.batch_shape == () and prior.event_shape == (5,)
    # The collapse diagnostics score every draw under every point's posterior: (R, 1, d) against (C,).
    z = rsample(q_z, (), _gen())
    assert q_z.log_prob(z.unsqueeze(1)).shape == (6, 6)
