"""Likelihoods for grey-level images (issue 24): gaussian-sigmoid, continuous-bernoulli, logistic256.

Each head is checked against a closed form or an enumeration: the discretized logistic's 256
probabilities sum to 1 and match a float64 CDF difference; the continuous Bernoulli's density
integrates to 1 (also where torch's own is off) and matches torch's where torch's is exact; the
sigmoid-mean Gaussian is torch's Normal at a mean in (0, 1); ``discrete_log_prob`` is a pmf for
every head. Then bad data is refused, and each head trains, is scored by ``vaelab eval`` and samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import ContinuousBernoulli, Independent, Normal
from typer.testing import CliRunner

from vaelab.checkpoint import load
from vaelab.cli import app
from vaelab.config import ConfigError, RunConfig
from vaelab.likelihoods import (
    LIKELIHOODS,
    ContinuousBernoulliLogits,
    DataSupportError,
    DiscretizedLogistic,
    build_likelihood,
    discrete_log_prob,
    sample_observation,
)
from vaelab.settings import check_settings

GREY = ("gaussian-sigmoid", "continuous-bernoulli", "logistic256")
LEVELS = torch.arange(256, dtype=torch.float64) / 255  # (256,)
runner = CliRunner()

# (μ, s) from the ordinary to the extreme: far outside [0, 1], far below and above a bin's width 1/255
LOGISTIC_PARAMS = [(-3.0, 1e-5), (0.0, 1e-3), (0.3, 0.05), (0.5, 1.0), (1.0, 10.0), (4.0, 0.2),
                   (0.5 + 0.5 / 255, 1e-4), (0.7, 1e3)]
LOGITS = [-40.0, -16.0, -5.0, -0.3, -1e-4, 0.0, 1e-7, 0.05, 2.0, 16.0, 40.0]


def _levels_log_prob(p_x_of_one_dim: Independent) -> torch.Tensor:
    """log P of each of the 256 levels under a one-dimensional head (batch (n,), event (1,)): (256, n)."""
    n = p_x_of_one_dim.batch_shape[0]
    return discrete_log_prob(p_x_of_one_dim, LEVELS.view(256, 1, 1).expand(256, n, 1))


# ----- the discretized logistic -----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_levels_sum_to_one(dtype):
    loc = torch.tensor([p[0] for p in LOGISTIC_PARAMS], dtype=dtype)
    scale = torch.tensor([p[1] for p in LOGISTIC_PARAMS], dtype=dtype)
    d = DiscretizedLogistic(loc, scale)
    lp = d.log_prob(LEVELS.to(dtype).view(256, 1))  # (256, n)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    total = lp.double().logsumexp(0).exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5 if dtype == torch.float32 else 1e-12)
    # the mean computed threshold by threshold is Σ_k (k/255) P(k)
    assert torch.allclose(d.mean.double(), (lp.double().exp() * LEVELS.view(256, 1)).sum(0), atol=1e-5)


def test_logistic_log_prob_is_the_cdf_difference():
    """log P(k) = log(F(c + δ) − F(c − δ)) with the edge bins taking the tails, F the logistic CDF
    σ((y − μ)/s), computed plainly in float64 where it has no cancellation trouble (moderate s)."""
    loc = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.3], dtype=torch.float64).view(1, 5)
    scale = torch.tensor([0.01, 0.05, 0.3, 0.1, 0.5], dtype=torch.float64).view(1, 5)
    c = LEVELS.view(256, 1)
    delta = 0.5 / 255
    upper = torch.where(c >= 1, torch.ones(()), torch.sigmoid((c + delta - loc) / scale))
    lower = torch.where(c <= 0, torch.zeros(()), torch.sigmoid((c - delta - loc) / scale))
    direct = torch.log(upper - lower)  # (256, 5)
    ours = DiscretizedLogistic(loc, scale).log_prob(c.expand(256, 5))
    # where the float64 difference keeps ≥ 9 digits (rounding 1e-16 over P ≥ 4.5e-5); ours is exact beyond
    finite = direct > -10
    assert finite.sum() > 400
    assert torch.allclose(ours[finite], direct[finite], rtol=1e-9, atol=1e-9)
    # in the tails, where the plain difference is 0 − 0, ours stays finite and decreasing
    far = DiscretizedLogistic(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1e-3, dtype=torch.float64))
    lp = far.log_prob(LEVELS)
    assert torch.isfinite(lp).all() and (lp[2:].diff() < 0).all()


def test_logistic_sampling_uses_the_generator_and_the_grid():
    d = DiscretizedLogistic(torch.full((50_000,), 0.4), torch.full((50_000,), 0.05))
    a = d.sample(generator=torch.Generator().manual_seed(1))
    b = d.sample(generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(a * 255, torch.round(a * 255)) and a.min() >= 0 and a.max() <= 1
    # the empirical frequency of each level is its probability
    freq = torch.bincount(torch.round(a * 255).long(), minlength=256).double() / len(a)
    prob = d.log_prob(LEVELS.float().view(256, 1))[:, 0].double().exp()
    assert (freq - prob).abs().max() < 0.01
    assert abs(float(a.mean()) - float(d.mean[0])) < 0.002


@pytest.mark.parametrize("name", ["logistic256", "continuous-bernoulli"])
def test_gradients_stay_finite_at_extreme_parameters(name):
    """Every level, with decoder outputs from −60 to 60 (scales e^{±60}, logits ±60): finite log_prob
    and finite gradients (an unused branch of a torch.where must not leak a NaN into the gradient)."""
    head = build_likelihood(name)
    raw = torch.tensor([-60.0, -20.0, -1e-7, 0.0, 3.0, 20.0, 60.0])
    grid = torch.cartesian_prod(raw, raw) if head.params_per_dim == 2 else raw.view(-1, 1)  # (P, params per dim)
    # one dimension per (parameters, level): the head reads the first D outputs as μ (or ℓ), the next D as h
    params = grid.repeat_interleave(256, 0).T.reshape(1, -1).detach().requires_grad_(True)  # (1, params · D)
    x = LEVELS.float().repeat(len(grid)).view(1, -1)  # (1, D), D = 256 P: every level under every pair
    lp = head(params).log_prob(x)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()


# ----- the continuous Bernoulli -----

def test_continuous_bernoulli_integrates_to_one_and_matches_torch():
    ell = torch.tensor(LOGITS, dtype=torch.float64)
    cb = ContinuousBernoulliLogits(ell)
    y = torch.linspace(0, 1, 400_001, dtype=torch.float64).view(-1, 1)
    density = cb.log_prob(y).exp()  # (Y, n)
    assert torch.allclose(torch.trapezoid(density, y[:, 0], dim=0), torch.ones(len(ell), dtype=torch.float64),
                          atol=1e-8)
    assert torch.allclose(torch.trapezoid(density * y, y[:, 0], dim=0), cb.mean, atol=1e-8)
    # torch's own agrees where its clamp of λ to [eps, 1 − eps] does not bind (|ℓ| well below 36 in float64)
    moderate = ell.abs() < 20
    ref = ContinuousBernoulli(logits=ell[moderate])
    x = torch.tensor([0.0, 0.013, 0.5, 0.77, 1.0], dtype=torch.float64).view(-1, 1)
    assert torch.allclose(cb.log_prob(x)[:, moderate], ref.log_prob(x), atol=1e-9)
    assert torch.allclose(cb.mean[moderate], ref.mean, atol=1e-9)


def test_continuous_bernoulli_is_exact_where_torch_float32_is_not():
    """In float32 torch clamps λ to [1.2e-7, 1 − 1.2e-7]: at ℓ = −40 its log C is log 15.9, the truth is
    log 40 (C = ℓ / tanh(ℓ/2)); ours keeps the density normalised."""
    ell = torch.tensor([-40.0])
    ours = float(ContinuousBernoulliLogits(ell).log_prob(torch.zeros(1)))
    exact = -math.log1p(math.exp(-40.0)) * 0 + math.log(40.0 / math.tanh(20.0)) - 40.0 * 0 - math.log1p(math.exp(-40))
    assert ours == pytest.approx(exact, abs=1e-5)
    assert float(ContinuousBernoulli(logits=ell).log_prob(torch.zeros(1))) < ours - 0.5


def test_continuous_bernoulli_sampling_follows_the_cdf():
    ell = torch.tensor([-30.0, -2.0, 0.0, 3.0, 30.0]).repeat(20_000, 1)  # (N, 5)
    p_x = Independent(ContinuousBernoulliLogits(ell), 1)
    x = sample_observation(p_x, torch.Generator().manual_seed(0))
    assert x.shape == ell.shape and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x.mean(0), p_x.mean[0], atol=0.01)


# ----- the sigmoid-mean Gaussian -----

def test_gaussian_sigmoid_is_a_normal_with_a_bounded_mean():
    head = build_likelihood("gaussian-sigmoid", min_var=1e-4)
    params = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * 5  # (B, 2D), D = 5
    p_x = head(params)
    assert (p_x.mean > 0).all() and (p_x.mean < 1).all()
    wild = head(params * 100).mean  # float32's sigmoid rounds to 0 or 1 out there, never beyond
    assert (wild >= 0).all() and (wild <= 1).all()
    m, h = params.chunk(2, -1)
    ref = Independent(Normal(torch.sigmoid(m), (1e-4 + h.exp()).sqrt()), 1)
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(p_x.log_prob(x), ref.log_prob(x), rtol=1e-5)
    assert torch.allclose(head.noise_std(p_x), (1e-4 + h.exp()).sqrt())


# ----- the common scale -----

def test_discrete_log_prob_is_a_pmf_for_every_head():
    gauss = Independent(Normal(torch.tensor([[-1.0], [0.0], [0.2], [0.5], [1.3]]),
                               torch.tensor([[1e-3], [1e-2], [0.1], [1.0], [5.0]])), 1)
    cb = Independent(ContinuousBernoulliLogits(torch.tensor(LOGITS).view(-1, 1)), 1)
    logistic = Independent(DiscretizedLogistic(torch.tensor([[p[0]] for p in LOGISTIC_PARAMS]),
                                               torch.tensor([[p[1]] for p in LOGISTIC_PARAMS])), 1)
    for p_x in (gauss, cb, logistic):
        lp = _levels_log_prob(p_x)  # (256, n)
        assert torch.isfinite(lp).all() and (lp <= 1e-12).all()
        assert torch.allclose(lp.logsumexp(0).exp(), torch.ones(lp.shape[1], dtype=torch.float64), atol=1e-9)
    # the logistic's is its own log_prob; the Gaussian's interior bin is Φ(b) − Φ(a)
    assert torch.allclose(_levels_log_prob(logistic),
                          logistic.base_dist.log_prob(LEVELS.float().view(256, 1, 1))[..., 0].double(), rtol=1e-4,
                          atol=1e-5)
    a, b = (100 - 0.5) / 255, (100 + 0.5) / 255
    normal = Normal(torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64))
    direct = math.log(float(normal.cdf(torch.tensor(b)) - normal.cdf(torch.tensor(a))))
    got = discrete_log_prob(Independent(Normal(torch.tensor([0.4]), torch.tensor([0.1])), 1), torch.tensor([100 / 255]))
    assert float(got) == pytest.approx(direct, abs=1e-6)


def test_discrete_log_prob_continuous_bernoulli_bins_match_integration():
    ell = torch.tensor([-40.0, -3.0, 0.0, 1e-6, 5.0, 40.0], dtype=torch.float64)
    got = _levels_log_prob(Independent(ContinuousBernoulliLogits(ell.view(-1, 1)), 1))  # (256, 6)
    cb = ContinuousBernoulliLogits(ell)
    for k in (0, 1, 100, 254, 255):
        lo, hi = max(0.0, (k - 0.5) / 255), min(1.0, (k + 0.5) / 255)
        y = torch.linspace(lo, hi, 20_001, dtype=torch.float64).view(-1, 1)
        mass = torch.trapezoid(cb.log_prob(y).exp(), y[:, 0], dim=0)
        big = mass > 1e-200
        assert torch.allclose(got[k][big], mass[big].log(), atol=1e-6)


def test_discrete_log_prob_refuses_other_heads():
    with pytest.raises(Exception, match="Bernoulli"):
        discrete_log_prob(build_likelihood("bernoulli")(torch.zeros(2, 3)), torch.zeros(2, 3))


# ----- bad data and settings -----

@pytest.mark.parametrize("name", GREY)
def test_grey_heads_refuse_data_outside_unit_interval(name):
    head = build_likelihood(name)
    head.check_support(LEVELS.view(1, -1).float())  # every 8-bit level is fine
    for bad in (torch.tensor([[0.2, 1.5]]), torch.tensor([[-0.1, 0.5]]), torch.tensor([[0.2, math.nan]])):
        with pytest.raises(DataSupportError, match=r"not in \[0, 1\].*--likelihood"):
            head.check_support(bad, "the training data")


def test_logistic256_refuses_values_off_the_grid():
    head = build_likelihood("logistic256")
    with pytest.raises(DataSupportError, match=r"256-level grid k/255.*continuous-bernoulli or gaussian-sigmoid"):
        head.check_support(torch.tensor([[0.0, 0.5, 1.0]]), "the test data")  # 0.5 = 127.5/255
    with pytest.raises(DataSupportError, match="not on the 256-level grid"):
        head.check_support(torch.arange(17).view(1, -1) / 16)  # scikit-learn's digits: 17 levels


def test_settings_of_the_grey_heads():
    for name in GREY:
        assert name in LIKELIHOODS
    # min_var floors gaussian-sigmoid's variance as it does gaussian-learned's, and changes its numbers
    cfg = RunConfig.from_dict({"model": {"likelihood": "gaussian-sigmoid", "min_var": 1e-3}})
    check_settings(cfg)
    params = torch.full((1, 4), -20.0)
    a, b = build_likelihood("gaussian-sigmoid", min_var=1e-3)(params), build_likelihood("gaussian-sigmoid")(params)
    assert float(a.base_dist.scale[0, 0]) == pytest.approx(math.sqrt(1e-3), rel=1e-4)
    assert float(b.base_dist.scale[0, 0]) < 1e-2
    for name in ("continuous-bernoulli", "logistic256"):  # no variance to floor: refused with the reason
        with pytest.raises(ConfigError, match=f"min-var.*{name}"):
            check_settings(RunConfig.from_dict({"model": {"likelihood": name, "min_var": 1e-3}}))
    with pytest.raises(ConfigError, match="recon-var.*gaussian-sigmoid"):
        check_settings(RunConfig.from_dict({"model": {"likelihood": "gaussian-sigmoid", "recon_var": 0.5}}))


# ----- end to end: train, vaelab eval, sample -----

def _eight_bit_digits(folder: Path) -> Path:
    """scikit-learn's 8x8 digits as 8-bit PNGs (two classes, 40 each): grey levels on the k/255 grid."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in (0, 1):
        (folder / str(label)).mkdir(parents=True)
        images = digits.images[digits.target == label][:40]
        for i, image in enumerate(images):
            Image.fromarray(np.round(image / 16 * 255).astype(np.uint8)).save(folder / str(label) / f"{i}.png")
    return folder


@pytest.mark.parametrize("name", GREY)
def test_train_eval_and_sample_each_grey_head(tmp_path, name):
    data = _eight_bit_digits(tmp_path / "imgs")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--image-size", "8", "--likelihood", name,
                                 "--hidden", "32", "--latent-dim", "2", "--epochs", "3", "--batch-size", "16",
                                 "--eval-k", "4", "--device", "cpu", "--no-report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["model"]["likelihood"] == name
    result = runner.invoke(app, ["eval", str(out), "--k", "8", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert math.isfinite(metrics["iwae_nll"]) and math.isfinite(metrics["elbo"])
    if name == "logistic256":  # a pmf: −log P(x) ≥ 0
        assert metrics["iwae_nll"] > 0
    model = load(out).model
    g = torch.Generator().manual_seed(0)
    means = model.sample(5, generator=g)
    draws = model.sample(5, generator=g, noise=True)
    assert means.shape == draws.shape == (5, 64)
    assert (means >= 0).all() and (means <= 1).all() and not torch.equal(means, draws)
    if name != "gaussian-sigmoid":  # the Gaussian's draws are on R; the others' stay in [0, 1]
        assert (draws >= 0).all() and (draws <= 1).all()
    if name == "logistic256":
        assert torch.equal(draws * 255, torch.round(draws * 255))


# ---------------------------------------------------------------------------------------------
# The grey-level default: --binarize none under the image preset, likelihood not given
# ---------------------------------------------------------------------------------------------


def _preset(**data: object) -> RunConfig:
    from vaelab.presets import apply_preset

    return apply_preset(RunConfig(), "mnist-mlp-bernoulli").with_overrides({"data": data})


@pytest.mark.parametrize(("data", "expected"), [
    ({"name": "mnist", "binarize": "none"}, "logistic256"),
    ({"name": "fashion-mnist", "binarize": "none"}, "logistic256"),
    ({"name": "kmnist", "binarize": "none"}, "logistic256"),
    ({"name": "digits", "binarize": "none"}, "gaussian-learned"),  # 17 levels: off the 256-level grid
])
def test_grey_images_get_the_grey_level_likelihood(data, expected):
    from vaelab.data.registry import grey_levels
    from vaelab.presets import grey_level_likelihood

    cfg = _preset(**data)
    cfg, note = grey_level_likelihood(cfg, image=True, levels=grey_levels(cfg.data))
    assert cfg.model.likelihood == expected
    assert note is not None and expected in note and "--likelihood" in note
    assert "likelihood" not in cfg.model.model_fields_set  # a default, not a setting the user gave
    assert cfg.data == _preset(**data).data and cfg.train == _preset(**data).train


@pytest.mark.parametrize("over", [
    {"data": {"name": "mnist", "binarize": "dynamic"}},  # binary pixels: the Bernoulli applies
    {"data": {"name": "mnist", "binarize": "none"}, "model": {"likelihood": "bernoulli"}},  # the user's choice
    {"data": {"name": "mnist", "binarize": "none"}, "model": {"likelihood": "gaussian-sigmoid"}},
])
def test_grey_level_default_leaves_other_configs_alone(over):
    from vaelab.presets import apply_preset, grey_level_likelihood

    cfg = apply_preset(RunConfig(), "mnist-mlp-bernoulli").with_overrides(over)
    assert grey_level_likelihood(cfg, image=True, levels=256) == (cfg, None)


def test_grey_level_default_needs_image_data():
    from vaelab.presets import grey_level_likelihood

    cfg = RunConfig().with_overrides({"model": {"likelihood": "bernoulli"},
                                      "data": {"name": "moons", "binarize": "none"}}, explicit=False)
    assert grey_level_likelihood(cfg, image=False, levels=None) == (cfg, None)


SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[2:4]
               if (p / "shared" / "data" / "mnist").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="the MNIST test split is not in ../shared/data/mnist")
def test_train_grey_mnist_without_a_likelihood_uses_logistic256(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", "mnist", "--data-dir", str(SHARED), "--image-split",
                                 "test-9k", "--binarize", "none", "--limit-train", "256", "--steps", "2",
                                 "--no-eval", "--no-report", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "likelihood logistic256" in " ".join(result.output.split())
    assert json.loads((out / "config.json").read_text())["model"]["likelihood"] == "logistic256"
