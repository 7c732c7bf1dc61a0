"""The vector-quantised family (vaelab.models.vq): codebook, EMA updates, restarts, the bound.

The contract suite on MLP, conditional and conv bodies; the EMA update against a direct
computation of the paper's eqs. 6-8; the straight-through gradient; restarts drawn from the
run's generator (deterministic, never the global RNG); fit == stacked sweep with the codebook's
buffers carried per member; exact resume; the uniform prior's masses over every code; the bound
(ELBO = −recon − N log K, exact p(x) by enumeration ≥ it); refusals.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from helpers import assert_stacked_equals_solo, tiny_config
from vaelab import testing
from vaelab.config import ConfigError, RunConfig, TrainConfig
from vaelab.data.registry import load_dataset
from vaelab.distributions import rsample
from vaelab.evaluate import evaluate
from vaelab.models import VQVAE, build_model
from vaelab.models.code_prior import GroupCodes, PixelCNNCodes
from vaelab.models.vq import CodePoint, CodePrior, lookup, nearest
from vaelab.objectives import elbo, get_objective, iwae_bound, objective_name, vq_loss
from vaelab.testing import Case
from vaelab.train import fit

CONV = {"net": "conv", "channels": [2, 4, 4], "latent_dim": 3, "likelihood": "bernoulli"}
CASES = [
    Case("vq", {"latent_dim": 2, "vq": {"codes": 6}}, id="vq-mlp"),
    Case("vq", {"latent_dim": 4, "vq": {"codes": 5, "groups": 2}}, cond_dim=8, id="vq-groups-conditional"),
    Case("vq", {**CONV, "vq": {"codes": 7}}, x_dim=64, data={"name": "digits"}, id="vq-conv"),
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _build(latent_dim: int = 2, x_dim: int = 2, cond_dim: int = 0, **options: object) -> VQVAE:
    cfg = tiny_config(model={"kind": "vq", "latent_dim": latent_dim, "vq": options})
    model = build_model(cfg.model, x_dim, cond_dim, seed=0).eval()
    assert isinstance(model, VQVAE)
    return model


# -- the contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("check", list(testing.CHECKS))
def test_the_contract(case, check, tmp_path):
    fn = testing.CHECKS[check][0]
    fn(case, tmp_path) if fn is testing.check_save_load else fn(case)


def test_the_conv_body_has_a_7x7_code_grid_for_28x28_images():
    cfg = RunConfig.from_dict({"data": {"name": "digits"}, "model": {"kind": "vq", "net": "conv", "latent_dim": 16,
                                                                     "likelihood": "bernoulli"}})
    model = build_model(cfg.model, 784, seed=0)
    assert isinstance(model, VQVAE)
    assert (model.groups, model.dim, model.latent_dim) == (49, 16, 49 * 16)
    x = torch.zeros(3, 784)
    assert model.codes_of(x).shape == (3, 49)
    assert model.reconstruct(x).shape == (3, 784)


# -- quantisation, the straight-through gradient --------------------------------------------------


def test_quantisation_picks_the_nearest_code_and_the_prior_sees_it():
    model = _build(latent_dim=4, groups=2, codes=5)
    x = torch.randn(9, 2, generator=_gen(1))
    q_z = model.encode(x)
    z_e = model.encode_vectors(x)  # (9, 2, 2)
    brute = (z_e.unsqueeze(-2) - model.codebook).square().sum(-1).argmin(-1)  # (9, 2, 5) -> (9, 2)
    assert torch.equal(q_z.index, brute)
    assert torch.equal(q_z.mean, model.codebook[brute].reshape(9, 4))
    # z_q lies exactly on the codebook: the prior gives it N log K, q gives it mass 1
    torch.testing.assert_close(model.prior().log_prob(q_z.mean), torch.full((9,), -2 * math.log(5)))
    assert torch.equal(q_z.log_prob(q_z.mean), torch.zeros(9))
    off = q_z.mean + 1e-3
    assert bool(torch.isinf(model.prior().log_prob(off)).all()) and bool(torch.isinf(q_z.log_prob(off)).all())


def test_the_straight_through_gradient_copies_the_decoders_gradient_onto_z_e():
    model = _build(latent_dim=2, codes=4, commitment=0.0)
    x = torch.randn(6, 2, generator=_gen(2))
    q_z = model.encode(x)
    z = rsample(q_z, (), _gen(0))
    assert torch.equal(z, q_z.z_q)  # the value is z_q exactly
    z_q = q_z.z_q.clone().requires_grad_()
    model.decode(z_q).log_prob(x).sum().backward()  # the decoder's gradient at z_q
    g_zq = z_q.grad
    assert g_zq is not None and float(g_zq.abs().sum()) > 0
    z_e = q_z.z_e
    z_e.retain_grad()
    model.decode(z).log_prob(x).sum().backward()
    assert z_e.grad is not None
    torch.testing.assert_close(z_e.grad.reshape(6, 2), g_zq)


def test_the_commitment_term_pulls_z_e_towards_its_code():
    model = _build(latent_dim=2, codes=4, commitment=0.25)
    x = torch.randn(6, 2, generator=_gen(2))
    out = vq_loss(model, x, generator=_gen(0))
    q_z = model.encode(x)
    expected = (q_z.z_e.reshape(6, 2) - q_z.z_q).square().sum(-1).mean()
    torch.testing.assert_close(out.terms["commitment"], expected)
    torch.testing.assert_close(out.loss, out.terms["recon"] + 0.25 * expected)
    # eval mode: the codebook does not move
    before = model.codebook.clone()
    vq_loss(model, x, generator=_gen(0))
    assert torch.equal(model.codebook, before)


# -- the EMA codebook ----------------------------------------------------------------------------


def _direct_ema(count, total_sum, z, index, k, gamma, eps=1e-5):
    """Eqs. 6-8 written out code by code with Python loops."""
    count, total_sum = count.clone().double(), total_sum.clone().double()
    z = z.double()
    new_codes = []
    for j in range(k):
        members = [z[i] for i in range(len(z)) if int(index[i]) == j]
        n_j = len(members)
        s_j = torch.stack(members).sum(0) if members else torch.zeros(z.shape[1], dtype=torch.float64)
        count[j] = gamma * count[j] + (1 - gamma) * n_j
        total_sum[j] = gamma * total_sum[j] + (1 - gamma) * s_j
    n = count.sum()
    for j in range(k):
        new_codes.append(total_sum[j] / ((count[j] + eps) / (n + k * eps) * n))
    return count, total_sum, torch.stack(new_codes)


@pytest.mark.parametrize("gamma", [0.99, 0.5])
def test_the_ema_update_matches_the_papers_equations_computed_directly(gamma):
    model = _build(latent_dim=4, groups=2, codes=5, decay=gamma, restart=False).train()
    with torch.no_grad():  # a state away from the initial one
        model.ema_count.copy_(torch.tensor([0.5, 2.0, 1.0, 3.0, 0.7]))
        model.ema_sum.copy_(torch.randn(5, 2, generator=_gen(3)))
    x = torch.randn(11, 2, generator=_gen(4))
    q_z = model.encode(x)
    count, total, codes = _direct_ema(model.ema_count, model.ema_sum, q_z.z_e.detach().reshape(-1, 2),
                                      q_z.index.reshape(-1), 5, gamma)
    usage = model.update_codebook(q_z, _gen(0))
    torch.testing.assert_close(model.ema_count.double(), count, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.ema_sum.double(), total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.codebook.double(), codes, rtol=1e-5, atol=1e-6)
    # perplexity of the batch's code frequencies
    freq = torch.bincount(q_z.index.reshape(-1), minlength=5).double() / 22
    nz = freq[freq > 0]
    torch.testing.assert_close(float(usage["perplexity"]), float(torch.exp(-(nz * nz.log()).sum())), rtol=1e-5,
                               atol=1e-6)


def test_training_moves_the_codebook_and_not_by_gradients():
    model = _build(latent_dim=2, codes=4).train()
    assert all(not name.startswith("codebook") for name, _ in model.named_parameters())
    before = model.codebook.clone()
    vq_loss(model, torch.randn(8, 2, generator=_gen(1)), generator=_gen(0))
    assert not torch.equal(model.codebook, before)


# -- restarts -----------------------------------------------------------------------------------


def test_dead_codes_restart_on_batch_vectors_drawn_from_the_generator_only():
    model = _build(latent_dim=2, codes=6).train()  # every code starts dead (count 0)
    x = torch.randn(32, 2, generator=_gen(5))
    runs = []
    for seed in (0, 0, 1):
        m = copy.deepcopy(model)
        torch.manual_seed(seed + 100)  # the global RNG must not matter
        q_z = m.encode(x)
        m.update_codebook(q_z, _gen(seed))
        runs.append((m.codebook.clone(), q_z))
    (a, q_z), (b, _), (c, _) = runs
    assert torch.equal(a, b)  # the same generator seed: the same restarts
    assert not torch.equal(a, c)  # another seed: other restarts
    # the codes no vector chose sit on encoder vectors of the batch now
    chosen = set(q_z.index.reshape(-1).tolist())
    z_e = q_z.z_e.detach().reshape(-1, 2)
    for j in set(range(6)) - chosen:
        assert bool((a[j] == z_e).all(-1).any()), f"code {j} was not restarted on a batch vector"
    assert bool((model.ema_count == 0).all())


def test_a_code_restarts_only_when_dead_and_restarts_can_be_turned_off():
    for restart in (True, False):
        model = _build(latent_dim=2, codes=3, restart=restart, dead_below=0.5, decay=0.9).train()
        with torch.no_grad():
            model.ema_count.copy_(torch.tensor([1.0, 1.0, 0.3]))  # code 2 is dead (0.3·0.9 < 0.5)
            model.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0]]))
            model.ema_sum.copy_(model.codebook * model.ema_count.unsqueeze(-1))
        q_z = model.encode(torch.randn(16, 2, generator=_gen(6)))
        assert 2 not in q_z.index.tolist()
        usage = model.update_codebook(q_z, _gen(0))
        z_e = q_z.z_e.detach().reshape(-1, 2)
        on_batch = bool((model.codebook[2] == z_e).all(-1).any())
        assert on_batch is restart
        assert float(usage["dead_codes"]) == 1.0  # found dead this step (and restarted, with restarts)
        assert float(model.usage(q_z.index)["dead_codes"]) == (0.0 if restart else 1.0)


def test_training_restarts_use_the_codebook_and_the_history_reports_usage():
    cfg = tiny_config(model={"kind": "vq", "latent_dim": 2, "vq": {"codes": 16}}, data={"name": "pinwheel"})
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, 2, seed=0)
    history = fit(model, x, cfg.train)
    assert {"perplexity", "dead_codes", "commitment"} <= set(history.columns)
    # the first step puts the codebook on the data: many codes in use, not one
    assert history.column("perplexity")[-1] > 4


# -- exactness: stacked sweep, resume ------------------------------------------------------------


@pytest.mark.parametrize("model", [{"latent_dim": 2, "vq": {"codes": 8}},
                                   {"latent_dim": 4, "vq": {"codes": 6, "groups": 2, "dead_below": 0.2}},
                                   {**CONV, "likelihood": "gaussian", "vq": {"codes": 5, "dead_below": 0.2,
                                                                            "prior_width": 4}}],
                         ids=["one-group", "two-groups-restarting", "conv-restarting"])
def test_stacked_members_equal_their_solo_fit_buffers_included(model):
    data = {"name": "digits", "limit_train": 160} if model.get("net") == "conv" else {}
    base = tiny_config(data=data, model={"kind": "vq", "likelihood": "gaussian", "recon_var": 0.1, **model})
    configs = [base.with_overrides({"train": {"seed": 0}}),
               base.with_overrides({"train": {"seed": 3, "lr": 1e-2, "lr_schedule": "constant"},
                                    "model": {"recon_var": 0.05}})]
    results = assert_stacked_equals_solo(configs, columns=("loss", "kl", "perplexity", "dead_codes"))
    assert len(results) == 2
    if model["vq"].get("dead_below"):  # the restarts ran inside the stack (and matched the solo runs')
        assert any(v > 0 for v in results[1].history.column("dead_codes"))


def test_resume_from_a_checkpoint_is_bit_identical():
    cfg = tiny_config(model={"kind": "vq", "latent_dim": 2, "vq": {"codes": 8, "dead_below": 0.2}},
                      train={"epochs": 4, "checkpoint_every": 1})
    x = load_dataset(cfg.data, "train").x
    whole = build_model(cfg.model, 2, seed=0)
    fit(whole, x, cfg.train)
    saved = {}

    def keep(model, history, state):
        if state.epoch == 2:
            saved.update(weights=copy.deepcopy(model.state_dict()), history=copy.deepcopy(history),
                         state=copy.deepcopy(state))  # (as written to disk: the live Adam moments move on)

    first = build_model(cfg.model, 2, seed=0)
    fit(first, x, cfg.train, on_checkpoint=keep)
    resumed = build_model(cfg.model, 2, seed=0)
    resumed.load_state_dict(saved["weights"])
    fit(resumed, x, cfg.train, state=saved["state"], history=saved["history"])
    for name, t in whole.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), f"{name} differs after resume"


# -- the prior, the bound ------------------------------------------------------------------------


def test_the_uniform_prior_puts_mass_one_on_the_codes_and_kl_is_n_log_k():
    model = _build(latent_dim=4, groups=2, codes=3)
    prior = model.prior()
    support = prior.enumerate_support()  # (9, 4)
    assert support.shape == (9, 4) and prior.support_size == 9
    torch.testing.assert_close(prior.log_prob(support).exp().sum(), torch.tensor(1.0))
    assert len(torch.unique(support, dim=0)) == 9
    x = torch.randn(5, 2, generator=_gen(1))
    out = elbo(model, x, generator=_gen(0))
    torch.testing.assert_close(out.terms["kl"], torch.tensor(2 * math.log(3)))
    draws = rsample(prior, (3000,), _gen(1))  # uniform over the 9 configurations
    index, exact = prior.index_of(draws)
    assert bool(exact.all())
    counts = torch.bincount(index[:, 0] * 3 + index[:, 1], minlength=9).double()
    assert float(((counts - 3000 / 9) ** 2 / (3000 / 9)).sum()) < 30  # χ² with 8 d.o.f.: p ≈ 2e-4


def test_the_bound_equals_its_parts_and_the_exact_likelihood_is_above_it():
    cfg = tiny_config(model={"kind": "vq", "latent_dim": 2, "likelihood": "gaussian", "recon_var": 0.1,
                             "vq": {"codes": 8}})
    data = load_dataset(cfg.data, "train")
    model = build_model(cfg.model, 2, seed=0)
    fit(model, data.x, cfg.train)
    test = load_dataset(cfg.data, "test")
    metrics = evaluate(model, test, k=4)
    assert metrics["kl"] == pytest.approx(math.log(8), abs=1e-6)  # float32 log K
    assert metrics["elbo"] == pytest.approx(-(metrics["recon"] + metrics["kl"]), abs=1e-9)
    # q is a point mass: every importance weight is the same, so the IWAE bound is the ELBO
    assert metrics["iwae_nll"] == pytest.approx(-metrics["elbo"], abs=1e-6)
    # p(x) = Σ_k p(x|e_k) / K ≥ p(x|z_q(x)) / K: the exact NLL is at most the bound
    assert metrics["exact_codes"] == 8
    assert metrics["exact_nll"] <= -metrics["elbo"] + 1e-9


def test_the_generic_bounds_agree_on_a_point_mass_posterior():
    model = _build(latent_dim=2, codes=4)
    x = torch.randn(7, 2, generator=_gen(2))
    out = elbo(model, x, generator=_gen(0))
    bound = iwae_bound(model, x, k=5, generator=_gen(1))
    torch.testing.assert_close(bound.mean(), out.elbo)


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "match"), [
    ({"latent_dim": 3, "vq": {"groups": 2}}, "multiple of N"),
    ({"latent_dim": 2, "vq": {"codes": 1}}, "greater than or equal to 2"),
    ({"latent_dim": 2, "vq": {"decay": 1.0}}, "less than 1"),
    ({"latent_dim": 2, "vq": {"dead_below": 1.0}}, "less than 1"),
    ({"latent_dim": 2, "vq": {"commitment": -0.1}}, "greater than or equal to 0"),
    ({"latent_dim": 2, "vq": {"temperature": 0}}, "greater than 0"),
    ({"latent_dim": 2, "vq": {"cdes": 3}}, "unknown option"),
    ({**CONV, "vq": {"groups": 2}}, "grid"),
    ({"latent_dim": 2, "vq": {"prior": "uniform", "temperature": 0.5}}, "learned prior"),
    ({"latent_dim": 2, "vq": {"prior_blocks": 2}}, "PixelCNN prior of --net conv"),
    ({"latent_dim": 2, "vq": {"prior": "pixelcnn"}}, "learned"),
])
def test_bad_options_are_refused_with_the_fix(model, match):
    cfg = {"data": {"name": "digits"} if model.get("net") == "conv" else {"name": "ring"},
           "model": {"kind": "vq", **model}}
    with pytest.raises(ConfigError, match=match):
        build_model(RunConfig.from_dict(cfg).model, 64 if model.get("net") == "conv" else 2, seed=0)


def test_a_condition_with_the_conv_body_and_other_objectives_are_refused():
    cfg = RunConfig.from_dict({"data": {"name": "digits"}, "model": {"kind": "vq", **CONV}})
    with pytest.raises(ConfigError, match="no condition"):
        build_model(cfg.model, 64, 10, seed=0)
    vae = build_model(tiny_config(model={"kind": "vae"}).model, 2, seed=0)
    with pytest.raises(Exception, match="codebook"):
        get_objective("vq")(vae, torch.zeros(3, 2), generator=_gen(0))
    assert VQVAE.objectives == ("vq", "vq_prior")
    uniform = _build(latent_dim=2, prior="uniform")
    with pytest.raises(Exception, match="learned"):
        get_objective("vq_prior")(uniform, torch.zeros(3, 2), generator=_gen(0))
    with pytest.raises(ConfigError):
        TrainConfig(beta=float("nan"))


def test_codes_and_lookup_round_trip():
    model = _build(latent_dim=4, groups=2, codes=5)
    index = torch.tensor([[0, 4], [3, 3]])
    z = lookup(index, model.codebook)
    assert torch.equal(nearest(z.reshape(2, 2, 2), model.codebook), index)
    q = CodePoint(z.reshape(2, 2, 2), index, z, 5)
    assert torch.equal(q.enumerate_support()[0], z)


# -- the learned prior over the codes (second stage) ---------------------------------------------


def _all_codes(k: int, n: int) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(k)] * n, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)  # (K^N, N)


def _jiggle(module: torch.nn.Module, seed: int = 7, scale: float = 1.0) -> None:
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("prior", [GroupCodes(1, 4), GroupCodes(3, 3, hidden=8),
                                   PixelCNNCodes((2, 2), 3, channels=4, blocks=2),
                                   PixelCNNCodes((3, 2), 2, channels=4, blocks=1)],
                         ids=["categorical", "groups-3x3", "pixelcnn-2x2", "pixelcnn-3x2"])
def test_the_learned_priors_masses_sum_to_one_over_every_code(prior):
    codes = _all_codes(prior.codes, prior.groups)
    log_p = prior.log_prob_codes(codes)
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0))  # uniform at first
    torch.testing.assert_close(log_p, torch.full_like(log_p, -prior.groups * math.log(prior.codes)))
    _jiggle(prior)
    log_p = prior.log_prob_codes(codes)
    assert float(log_p.detach().std()) > 0.1  # no longer uniform
    torch.testing.assert_close(log_p.double().exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-5,
                               atol=1e-5)
    # ancestral draws follow the masses (χ² over the configurations), from the generator alone
    n = 6000
    draws = prior.sample_codes((n,), _gen(3), 1.0)
    assert torch.equal(draws, prior.sample_codes((n,), _gen(3), 1.0))
    ids = (draws * prior.codes ** torch.arange(prior.groups - 1, -1, -1)).sum(-1)
    counts = torch.bincount(ids, minlength=len(codes)).double()
    expected = n * log_p.detach().double().exp()
    keep = expected > 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof), f"χ² = {chi2:.1f} with {dof} degrees of freedom"


def test_the_pixelcnn_prior_is_causal_in_raster_order():
    prior = PixelCNNCodes((3, 3), 4, channels=6, blocks=2)
    _jiggle(prior)
    index = torch.randint(4, (1, 9), generator=_gen(1))
    with torch.no_grad():
        logits = prior.logits(index)
    for cell in range(9):
        changed = index.clone()
        changed[0, cell] = (changed[0, cell] + 1) % 4
        with torch.no_grad():
            moved = (prior.logits(changed) - logits).abs().amax(-1)[0]  # (9,)
        assert float(moved[:cell + 1].max()) == 0, f"cell {cell} changes the logits of itself or an earlier cell"


def test_temperature_sharpens_the_learned_priors_draws():
    model = _build(latent_dim=2, codes=6, temperature=0.2)
    assert model.code_prior is not None
    _jiggle(model.code_prior, scale=0.5)
    hot = CodePrior(model.codebook, 1, model.code_prior, temperature=1.0)  # type: ignore[arg-type]
    cold = model.prior()
    top = int(model.code_prior.first.argmax())
    share = [float((p.sample_codes((4000,), _gen(2))[:, 0] == top).double().mean()) for p in (hot, cold)]
    assert share[1] > share[0] + 0.1


def _two_stage(tmp_path=None, *, stop_after: int | None = None):
    cfg = tiny_config(model={"kind": "vq", "latent_dim": 4, "vq": {"codes": 6, "groups": 2, "prior_width": 16}},
                      data={"name": "pinwheel"}, train={"epochs": 3, "checkpoint_every": 1})
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, 2, seed=0)
    fit(model, x, cfg.train)
    stage2 = cfg.train.model_copy(update={"objective": "vq_prior", "epochs": 4, "lr": 1e-2})
    return model, x, stage2


def test_the_second_stage_trains_the_prior_alone_and_lowers_the_codes_nll():
    model, x, stage2 = _two_stage()
    frozen = {name: t.clone() for name, t in model.state_dict().items() if not name.startswith("code_prior")}
    history = fit(model, x, stage2)
    for name, t in frozen.items():
        assert torch.equal(model.state_dict()[name], t), f"{name} moved in the second stage"
    kl = history.column("kl")
    assert kl[-1] < kl[0] - 0.05  # −log p(k(x)) falls below its uniform value 2 log 6
    assert kl[0] < 2 * math.log(6) + 1e-4
    codes = model.codes_of(x)
    with torch.no_grad():
        learned = -model.prior().log_prob_codes(codes).mean()
    assert float(learned) < 2 * math.log(6) - 0.05


def test_two_stage_resume_is_bit_identical():
    model, x, stage2 = _two_stage()
    start = copy.deepcopy(model.state_dict())
    fit(model, x, stage2)
    saved = {}

    def keep(m, history, state):
        if state.epoch == 2:
            saved.update(weights=copy.deepcopy(m.state_dict()), history=copy.deepcopy(history),
                         state=copy.deepcopy(state))

    first = copy.deepcopy(model)
    first.load_state_dict(start)
    fit(first, x, stage2, on_checkpoint=keep)
    resumed = copy.deepcopy(model)
    resumed.load_state_dict(saved["weights"])
    fit(resumed, x, stage2, state=saved["state"], history=saved["history"])
    for name, t in model.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), f"{name} differs after resume"


def test_sampling_draws_codes_from_the_learned_prior():
    model, x, stage2 = _two_stage()
    fit(model, x, stage2)
    with torch.no_grad():
        z = rsample(model.prior(), (500,), _gen(4))
    index, exact = model.prior().index_of(z)
    assert bool(exact.all())
    used = model.codes_of(x)
    # the configurations the learned prior draws are mostly ones the data uses
    seen = {tuple(r) for r in used.tolist()}
    share = sum(tuple(r) in seen for r in index.tolist()) / 500
    uniform_share = len(seen) / 36
    assert share > uniform_share


def test_the_second_stage_is_a_run_of_its_own_that_resumes_exactly(tmp_path):
    from vaelab import checkpoint as ckpt
    from vaelab import evaluate_run, train_run
    from vaelab.train import TrainingInterrupted

    cfg = tiny_config(model={"kind": "vq", "latent_dim": 4, "vq": {"codes": 6, "groups": 2, "prior_width": 16}},
                      data={"name": "pinwheel"}, train={"epochs": 3})
    first = train_run(cfg, tmp_path / "run")
    assert objective_name(first.model, first.config.train) == "vq"  # the family's own, unless named
    stage2 = cfg.with_overrides({"train": {"objective": "vq_prior", "epochs": 4, "lr": 1e-2}})
    whole = train_run(stage2, tmp_path / "run" / "prior", init_from=tmp_path / "run")
    steps = {"n": 0}

    def stop() -> bool:
        steps["n"] += 1
        return steps["n"] == 7  # in the middle of the second epoch

    with pytest.raises(TrainingInterrupted):
        train_run(stage2, tmp_path / "again", init_from=tmp_path / "run", should_stop=stop)
    resumed = train_run(stage2, tmp_path / "again", resume=True)
    for name, t in whole.model.state_dict().items():
        assert torch.equal(t, resumed.model.state_dict()[name]), f"{name} differs after resume"
    assert whole.history.column("kl") == resumed.history.column("kl")
    # the first stage's weights are where the second started
    for name, t in first.model.state_dict().items():
        if not name.startswith("code_prior"):
            assert torch.equal(t, whole.model.state_dict()[name])
    before, after = evaluate_run(tmp_path / "run"), evaluate_run(tmp_path / "run" / "prior")
    assert before["prior_gain"] == pytest.approx(0, abs=1e-5)  # the learned prior starts uniform
    assert after["prior_gain"] > 0.05 and after["kl"] < after["uniform_kl"]
    assert after["uniform_bound"] == pytest.approx(before["uniform_bound"], rel=1e-6)  # same codes, same decoder
    assert after["elbo"] == pytest.approx(-(after["recon"] + after["kl"]), abs=1e-9)
    assert ckpt.load(tmp_path / "run" / "prior").config.train.objective == "vq_prior"
    with pytest.raises(ConfigError, match="other model settings"):
        other = stage2.with_overrides({"model": {"vq": {"codes": 7, "groups": 2, "prior_width": 16}}})
        train_run(other, tmp_path / "bad", init_from=tmp_path / "run")


# -- figures ------------------------------------------------------------------------------------


def _figure_run(tmp_path, data: dict, model: dict):
    from vaelab import train_run

    cfg = tiny_config(data=data, model={"kind": "vq", **model}, train={"epochs": 2})
    return train_run(cfg, tmp_path / "run")


@pytest.mark.parametrize(("data", "model"), [
    ({"name": "pinwheel"}, {"latent_dim": 2, "vq": {"codes": 8}}),
    ({"name": "digits", "limit_train": 200}, {**CONV, "vq": {"codes": 5, "prior_width": 8}}),
], ids=["points", "images-conv"])
def test_the_vq_figures_draw_for_point_and_image_runs(tmp_path, data, model):
    from vaelab.plots import load_context, make_figures, plan

    run = _figure_run(tmp_path, data, model)
    ctx = load_context(run.path)
    apply, skip = plan(ctx)
    names = {s.name for s in apply}
    assert {"codebook_usage", "code_map", "prior_samples"} <= names, dict(skip)
    notes: list[str] = []
    paths = make_figures(run.path, ctx=ctx, names=["codebook_usage", "code_map", "prior_samples"],
                         notify=notes.append)
    assert len(paths) == 3 and all(p.stat().st_size > 1000 for p in paths)
    assert not any("could not be drawn" in n for n in notes)


def test_the_usage_figure_shows_the_datas_code_shares():
    from vaelab.plots.vq import plot_codebook_usage, plot_prior_samples

    cfg = tiny_config(model={"kind": "vq", "latent_dim": 2, "vq": {"codes": 8, "prior": "uniform"}})
    data = load_dataset(cfg.data, "train")
    model = build_model(cfg.model, 2, seed=0)
    fit(model, data.x, cfg.train)
    fig = plot_codebook_usage(model, data)
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    counts = torch.bincount(model.codes_of(data.x).reshape(-1), minlength=8).double()
    assert heights == pytest.approx(sorted((counts / counts.sum()).tolist(), reverse=True))
    assert len(plot_prior_samples(model, data).axes) == 1  # no learned prior: the uniform panel alone


# -- torchrun ------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_processes_share_one_codebook_and_end_where_one_process_ends(tmp_path):
    """Two ranks under torchrun: the EMA statistics are summed over the ranks, so with restarts
    off the codebook and weights are one process's to float rounding (restarts draw noise: one
    process from the generator that also shuffles, a rank from its own noise generator, so the
    later epochs' orders would differ, as for every family that draws). The learned prior's
    parameters, unused by the first stage, do not stall DDP."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from vaelab import train_run

    worker = Path(__file__).parents[1] / "dist_worker.py"
    cfg = {"data": {"name": "ring", "n_train": 300},
           "model": {"kind": "vq", "hidden": [16, 16], "latent_dim": 4, "likelihood": "gaussian", "recon_var": 0.1,
                     "vq": {"codes": 6, "groups": 2, "restart": False, "prior_width": 8}},
           "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 16, "checkpoint_every": 1}}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAELAB_DIST_TIMEOUT": "30"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker),
           "train", str(tmp_path / "two"), str(tmp_path / "w"), json.dumps(cfg)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=worker.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / "w" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])
    one = train_run(RunConfig.from_dict(cfg), tmp_path / "one")
    torch.testing.assert_close(ranks[0], one.model.state_dict(), rtol=1e-4, atol=1e-5)


def test_the_pixelcnns_first_rows_are_computed_alone_exactly():
    prior = PixelCNNCodes((4, 3), 5, channels=6, blocks=2)
    _jiggle(prior)
    index = torch.randint(5, (7, 12), generator=_gen(2))
    with torch.no_grad():
        whole = prior.logits(index)
        for rows in range(1, 5):
            # (to float rounding: the convolution kernels may sum in another order on a smaller input)
            torch.testing.assert_close(prior.logits(index, rows=rows), whole[:, :rows * 3], rtol=1e-5, atol=1e-6)


def test_the_cli_trains_the_code_prior_as_a_second_stage_with_init_from(tmp_path):
    """`vaelab train --init-from RUN --objective vq_prior --out RUN/prior`: the second stage starts from
    the first's weights and settings, moves only the prior, and its evaluation shows the learned
    prior's bound beside the uniform one."""
    from typer.testing import CliRunner

    from helpers import cli_ok
    from vaelab import checkpoint as ckpt
    from vaelab.cli import app

    run = tmp_path / "V"
    common = ["--epochs", 3, "--no-report"]
    cli_ok("train", "--data", "ring", "--n-train", 300, "--model", "vq", "--hidden", 16, "--vq-codes", 8,
           "--eval-k", 4, *common, "--out", run)
    cli_ok("train", "--init-from", run, "--objective", "vq_prior", *common, "--out", run / "prior")
    first, second = ckpt.load(run), ckpt.load(run / "prior")
    assert second.config.train.objective == "vq_prior" and second.config.model == first.config.model
    before, after = first.model.state_dict(), second.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("code_prior.") for k in moved)
    m = second.metrics
    assert m["uniform_kl"] == pytest.approx(first.metrics["uniform_kl"]) and m["kl"] != pytest.approx(m["uniform_kl"])
    assert m["prior_gain"] == pytest.approx(m["uniform_kl"] - m["kl"])
    refused = CliRunner().invoke(app, ["train", "--init-from", str(run), "--data", "moons", "--out",
                                       str(tmp_path / "x")])
    assert refused.exit_code == 2 and "drop --data" in refused.output


def test_sample_temperature_sharpens_the_learned_code_prior(tmp_path):
    """`vaelab sample RUN/prior --temperature T` draws the codes from p(k)^(1/T), renormalised: a
    lower T gives the most probable code a larger share of the samples; the default is the run's 1.0."""
    from typer.testing import CliRunner

    from helpers import cli_ok
    from vaelab.cli import app

    run = tmp_path / "V"
    # 2gmm's two modes of unequal width leave the codes unequally used: a prior that is not uniform.
    cli_ok("train", "--data", "2gmm", "--n-train", 300, "--model", "vq", "--hidden", 16, "--vq-codes", 8,
           "--epochs", 3, "--no-report", "--no-eval", "--out", run)
    cli_ok("train", "--init-from", run, "--objective", "vq_prior", "--epochs", 10, "--lr", 0.03, "--no-report",
           "--no-eval", "--out", run / "prior")
    outs = {}
    for t in ("0.2", "1", "5"):
        cli_ok("sample", run / "prior", "-n", 2000, "--temperature", t, "--out", tmp_path / f"t{t}.npy")
        outs[t] = np.load(tmp_path / f"t{t}.npy")
    cli_ok("sample", run / "prior", "-n", 2000, "--out", tmp_path / "default.npy")
    assert np.array_equal(np.load(tmp_path / "default.npy"), outs["1"])  # the run's own temperature, 1.0

    def top_share(x):  # the share of the samples that decode the most frequent code
        return np.unique(x.round(5), axis=0, return_counts=True)[1].max() / len(x)

    assert top_share(outs["0.2"]) > top_share(outs["1"]) + 0.1 > top_share(outs["5"]) + 0.1
    for args, words in [((run, "--temperature", "0.5"), "still exactly uniform"),
                        ((run / "prior", "--temperature", "0"), "must be a positive number"),
                        ((run / "prior", "--temperature", "nan"), "must be a positive number")]:
        result = CliRunner().invoke(app, ["sample", str(args[0]), *args[1:], "--out", str(tmp_path / "no.npy")])
        assert result.exit_code != 0 and words in " ".join(result.output.split()), result.output
        assert not (tmp_path / "no.npy").exists()


def test_sample_temperature_is_refused_without_a_learned_code_prior(tmp_path):
    from typer.testing import CliRunner

    from helpers import cli_ok
    from vaelab.cli import app

    cli_ok("train", "--data", "ring", "--n-train", 200, "--epochs", 1, "--hidden", 8, "--no-report", "--no-eval",
           "--out", tmp_path / "vae")
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "vae"), "--temperature", "0.5", "--out",
                                      str(tmp_path / "x.npy")])
    assert result.exit_code == 2 and "draws z from a fixed prior" in " ".join(result.output.split())


# -- finite scalar quantization (--vq-quantizer fsq) ---------------------------------------------


def _fsq(levels=(3, 4), groups=1, **model):
    return tiny_config(model={"kind": "vq", "latent_dim": groups * len(levels),
                              "vq": {"quantizer": "fsq", "levels": list(levels), "groups": groups}, **model})


def test_fsq_grid_is_the_product_of_each_coordinates_levels():
    from vaelab.models.vq import fsq_grid

    grid = fsq_grid([3, 4, 2])
    assert grid.shape == (24, 3)
    assert [sorted(set(grid[:, i].tolist())) for i in range(3)] == [[-1.0, 0.0, 1.0], [-1.0, -0.5, 0.0, 0.5],
                                                                     [-1.0, 0.0]]
    assert len({tuple(row) for row in grid.tolist()}) == 24  # every code once
    # code k's digits, the last coordinate fastest: k = 13 = (1·4 + 2)·2 + 1 -> digits (1, 2, 1)
    assert grid[13].tolist() == [0.0, 0.0, 0.0] and grid[23].tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize("levels", [(3, 4), (8, 5, 5, 5), (2, 7)])
def test_fsq_nearest_code_is_the_rounding_of_each_bounded_coordinate(levels):
    from vaelab.models.vq import fsq_bound, fsq_grid, nearest

    z = 3 * torch.randn(4000, len(levels), generator=_gen(0))
    bounded = fsq_bound(z, levels)  # (n, d) on the grid's scale
    half = torch.tensor([level // 2 for level in levels])
    digits = torch.round(bounded * half) + half  # (n, d): each coordinate's value j = 0 .. L − 1
    index = torch.zeros(len(z), dtype=torch.long)
    for i, level in enumerate(levels):  # mixed radix, the last coordinate fastest
        index = index * level + digits[:, i].long()
    assert torch.equal(nearest(bounded.unsqueeze(1), fsq_grid(levels)).squeeze(1), index)
    for i, level in enumerate(levels):  # every value of every coordinate is reached, no other
        assert sorted(set(digits[:, i].long().tolist())) == list(range(level))


def test_fsq_straight_through_gradient_is_the_bounds_derivative():
    from vaelab.models.vq import fsq_bound

    model = build_model(_fsq().model, 2, seed=0)
    x = torch.randn(5, 2, generator=_gen(1))
    q_z = model.encode(x)
    z = rsample(q_z, (), _gen(2))  # z_q exactly, the gradient onto the bounded z_e
    assert torch.equal(z, q_z.z_q) and set(torch.unique(z[:, 0]).tolist()) <= {-1.0, 0.0, 1.0}
    h = model.encoder(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fsq_bound(h.reshape(5, 1, 2), [3, 4]).sum(), h)
    (g_model,) = torch.autograd.grad(z.sum(), q_z.z_e)
    assert torch.allclose(g_model, torch.ones_like(g_model))  # identity onto z_e = f(h) / ⌊L/2⌋ ...
    assert (g > 0).all() and (g <= 1.0).all()  # ... whose tanh carries a positive, bounded gradient to h


def test_fsq_trains_without_moving_its_grid_or_a_commitment_loss():
    cfg = tiny_config(model={"kind": "vq", "latent_dim": 2, "vq": {"quantizer": "fsq", "levels": [5, 5]}},
                      data={"name": "pinwheel"}, train={"epochs": 30})
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, 2, seed=0)
    grid = model.codebook.clone()
    assert model.codes == 25 and model.commitment == 0.0
    history = fit(model, x, cfg.train)
    assert torch.equal(model.codebook, grid)  # a fixed grid
    assert "dead_codes" not in history.columns and "perplexity" in history.columns
    recon = history.column("recon")
    assert recon[-1] < recon[0] - 0.5  # it learns
    assert history.column("loss") == pytest.approx(recon)  # no commitment term in the loss
    assert history.column("perplexity")[-1] > 5  # many of the 25 codes in use


def test_fsq_stacked_members_equal_their_solo_fits():
    base = _fsq((3, 3), groups=2, likelihood="gaussian", recon_var=0.1)
    configs = [base.with_overrides({"train": {"seed": 0}}),
               base.with_overrides({"train": {"seed": 3, "lr": 1e-2, "lr_schedule": "constant"},
                                    "model": {"recon_var": 0.05}})]
    assert len(assert_stacked_equals_solo(configs, columns=("loss", "kl", "perplexity"))) == 2


def test_fsq_learned_prior_is_a_distribution_over_the_grid():
    cfg = tiny_config(model={"kind": "vq", "latent_dim": 4,
                             "vq": {"quantizer": "fsq", "levels": [3, 2], "groups": 2, "prior_width": 8}})
    model = build_model(cfg.model, 2, seed=0)
    assert model.codes == 6 and model.groups == 2
    with torch.no_grad():
        for p in model.code_prior.parameters():  # any prior, not only the uniform start
            p.copy_(torch.randn(p.shape, generator=_gen(3)))
        every = torch.cartesian_prod(torch.arange(6), torch.arange(6))  # all 36 configurations
        total = model.prior().log_prob_codes(every).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("vq", "latent_dim", "words"), [
    ({"quantizer": "fsq"}, 2, "needs its levels"),
    ({"levels": [3, 3]}, 2, "give --vq-quantizer fsq"),
    ({"quantizer": "fsq", "levels": [3, 1]}, 2, "at least 2"),
    ({"quantizer": "fsq", "levels": [256, 256, 2]}, 3, "at most 65,536"),
    ({"quantizer": "fsq", "levels": [3, 3], "codes": 9}, 2, "--vq-codes"),
    ({"quantizer": "fsq", "levels": [3, 3], "commitment": 0.5}, 2, "--vq-commitment"),
    ({"quantizer": "fsq", "levels": [3, 3], "restart": False}, 2, "--vq-restart"),
    ({"quantizer": "fsq", "levels": [3, 3, 3]}, 2, "give --latent-dim 3"),
    ({"quantizer": "fsq", "levels": [3, 3], "groups": 2}, 2, "give --latent-dim 4"),
])
def test_fsq_bad_settings_are_refused(vq, latent_dim, words):
    with pytest.raises(ConfigError) as err:
        cfg = tiny_config(model={"kind": "vq", "latent_dim": latent_dim, "vq": vq})
        build_model(cfg.model, 2, seed=0)
    assert words in " ".join(str(err.value).split())
