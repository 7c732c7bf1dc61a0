"""The distributions layer: generator-aware rsample for every supported type, kl closed form vs Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    AffineTransform,
    Categorical,
    Distribution,
    ExpTransform,
    Independent,
    LogNormal,
    MixtureSameFamily,
    Normal,
    RelaxedOneHotCategorical,
    TransformedDistribution,
    Uniform,
    kl_divergence,
)
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from vaelab.distributions import (
    KLNeedsSamples,
    NormalLogVar,
    UnsupportedDistribution,
    kl,
    kl_is_closed_form,
    kl_per_dim,
    normal,
    register_rsample,
    rsample,
    standard_normal,
)
from vaelab.errors import VaelabError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _diag(loc: list[float], scale: list[float]) -> Independent:
    return Independent(Normal(torch.tensor(loc), torch.tensor(scale)), 1)


def _mixture() -> MixtureSameFamily:
    comps = Independent(Normal(torch.tensor([[-2.0, 0.0], [3.0, 1.0]]), torch.tensor([[0.5, 0.5], [1.0, 0.2]])), 1)
    return MixtureSameFamily(Categorical(probs=torch.tensor([0.3, 0.7])), comps)


DISTRIBUTIONS = {
    "normal": lambda: Normal(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])),
    "normal-logvar": lambda: NormalLogVar(torch.tensor([1.0, -2.0]), torch.tensor([-1.0, 1.0])),
    "independent": lambda: _diag([0.5, -1.0, 2.0], [1.0, 0.3, 2.0]),
    "flow": lambda: TransformedDistribution(_diag([0.0, 1.0], [0.5, 0.2]), [AffineTransform(1.0, 2.0), ExpTransform()]),
    "mixture": _mixture,
    "relaxed-one-hot": lambda: RelaxedOneHotCategorical(torch.tensor(0.5), probs=torch.tensor([0.2, 0.3, 0.5])),
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_rsample_shape_reproducible_and_leaves_the_global_rng_alone(name):
    dist: Distribution = DISTRIBUTIONS[name]()
    before = torch.random.get_rng_state()
    a = rsample(dist, (7, 3), _gen(1))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert a.shape == (7, 3, *dist.batch_shape, *dist.event_shape)
    assert torch.equal(a, rsample(dist, (7, 3), _gen(1)))
    assert not torch.equal(a, rsample(dist, (7, 3), _gen(2)))


@pytest.mark.parametrize("name", ["normal", "normal-logvar", "independent", "flow", "mixture"])
def test_rsample_draws_from_the_distribution(name):
    """Sample means and variances match the distribution's (torch's own rsample is the law)."""
    dist: Distribution = DISTRIBUTIONS[name]()
    n = 200_000
    z = rsample(dist, (n,), _gen(3))
    if name == "flow":  # LogNormal(1 + 2μ, 2σ): mean exp(m + s²/2)
        mean = LogNormal(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.4])).mean
        var = LogNormal(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.4])).variance
    else:
        mean, var = dist.mean, dist.variance
    se = (var / n).sqrt()
    assert ((z.mean(0) - mean).abs() < 5 * se).all()
    assert ((z.var(0) / var - 1).abs() < 0.05).all()


def test_mixture_index_follows_the_weights_and_gradients_reach_components_only():
    means = torch.tensor([[-5.0], [5.0]], requires_grad=True)
    logits = torch.tensor([0.0, math.log(3.0)], requires_grad=True)  # π = (0.25, 0.75)
    dist = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(means, torch.ones(2, 1)), 1))
    z = rsample(dist, (40_000,), _gen(4))  # (n, 1)
    frac_right = float((z > 0).float().mean())
    assert abs(frac_right - 0.75) < 0.01
    z.sum().backward()
    assert means.grad is not None and float(means.grad.abs().sum()) > 0
    assert logits.grad is None  # the discrete index carries no gradient to the mixing weights


def test_relaxed_categorical_argmax_is_categorical_with_the_probs():
    """Gumbel-max: argmax of a Gumbel-softmax draw is distributed as Categorical(π)."""
    probs = torch.tensor([0.2, 0.3, 0.5])
    y = rsample(ExpRelaxedCategorical(torch.tensor(0.7), probs=probs), (60_000,), _gen(5))
    torch.testing.assert_close(y.exp().sum(-1), torch.ones(60_000))
    freq = torch.bincount(y.argmax(-1), minlength=3).float() / 60_000
    assert (freq - probs).abs().max() < 0.01


def test_gradients_flow_through_rsample_of_a_flow():
    loc = torch.zeros(2, requires_grad=True)
    dist = TransformedDistribution(Independent(Normal(loc, torch.ones(2)), 1), [ExpTransform()])
    rsample(dist, (5,), _gen()).sum().backward()
    assert loc.grad is not None and (loc.grad > 0).all()


def test_an_unsupported_type_is_refused_naming_it_and_a_registered_one_works():
    with pytest.raises(UnsupportedDistribution, match=r"Uniform.*register_rsample\(Uniform\)") as err:
        rsample(Uniform(0.0, 1.0), (3,), _gen())
    assert isinstance(err.value, VaelabError)

    class Shifted(Uniform):
        pass

    @register_rsample(Shifted)
    def _draw(dist: Shifted, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(shape + tuple(dist.batch_shape), generator=generator)
        return dist.low + (dist.high - dist.low) * u

    z = rsample(Shifted(torch.tensor(2.0), torch.tensor(3.0)), (1000,), _gen())
    assert z.shape == (1000,) and bool(((z >= 2) & (z <= 3)).all())


def test_kl_normal_logvar_is_torch_normal_kl_and_keeps_precision():
    mu, h = torch.tensor([[0.3, -1.0], [2.0, 0.0]]), torch.tensor([[-2.0, 1.5], [0.5, -0.3]])
    p = Normal(torch.tensor([0.5, -0.2]), torch.tensor([1.5, 0.7]))
    torch.testing.assert_close(kl_divergence(NormalLogVar(mu, h), p), kl_divergence(Normal(mu, (0.5 * h).exp()), p))
    # h = log σ² = −200: through σ = exp(h/2), σ² underflows float32 to 0 and log σ² = −inf;
    # read from h, KL = ½ (e^h − 1 − h) = 99.5 stays exact.
    h = torch.tensor([-200.0])
    assert torch.isinf(kl_divergence(Normal(torch.zeros(1), (0.5 * h).exp()), Normal(0.0, 1.0))).all()
    tiny = kl_divergence(NormalLogVar(torch.zeros(1), h), Normal(0.0, 1.0))
    torch.testing.assert_close(tiny, torch.tensor([0.5 * (math.exp(-200) - 1 + 200)]))


def test_kl_closed_form_where_registered_else_monte_carlo_that_converges():
    q = Independent(NormalLogVar(torch.tensor([[0.5, -1.0], [1.0, 0.2]]), torch.tensor([[-1.0, 0.3], [0.0, -0.5]])), 1)
    p = standard_normal(2, torch.zeros(1))
    assert kl_is_closed_form(q, p)
    exact = kl(q, p)
    assert exact.shape == (2,)
    torch.testing.assert_close(exact, kl_per_dim(q, p).sum(-1))
    # The same q as a TransformedDistribution with no transforms has no registered KL: Monte Carlo.
    q_mc = TransformedDistribution(q, [])
    assert not kl_is_closed_form(q_mc, p)
    with pytest.raises(KLNeedsSamples, match="no closed form"):
        kl(q_mc, p)
    z = rsample(q_mc, (100_000,), _gen(6))  # (n, 2, 2)
    estimate = kl(q_mc, p, z)
    assert estimate.shape == (2,)
    draws = q.log_prob(z) - p.log_prob(z)
    se = draws.std(0) / math.sqrt(len(z))
    assert ((estimate - exact).abs() < 5 * se).all()
    # One draw per point (no sample dim): the per-point log ratio itself.
    one = z[0]
    torch.testing.assert_close(kl(q_mc, p, one), q.log_prob(one) - p.log_prob(one))


def test_kl_per_dim_only_where_both_sides_factorise():
    q = _diag([0.5, -1.0], [0.7, 1.2])
    p = _diag([0.0, 1.0], [1.0, 2.0])
    per = kl_per_dim(q, p)
    assert per is not None and per.shape == (2,)
    torch.testing.assert_close(per, kl_divergence(q.base_dist, p.base_dist))
    assert kl_per_dim(q, _mixture()) is None  # a mixture prior does not split per dimension
    assert kl_per_dim(TransformedDistribution(q, [ExpTransform()]), p) is None
    assert kl_per_dim(Independent(Normal(torch.zeros(2, 2), torch.ones(2, 2)), 2),
                      Independent(Normal(torch.zeros(2, 2), torch.ones(2, 2)), 2)) is None


def _values_and_grads(make, *leaves):
    """The output of ``make(*leaves)`` and the gradients of its sum, for exact comparison."""
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    out = make(*leaves)
    return (out.detach(), *torch.autograd.grad(out.sum(), leaves))


def _bits_equal(a: tuple, b: tuple) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_the_cached_standard_normal_prior_gives_torchs_floats_and_gradients_exactly():
    """The training loop's speed-ups (issue 12) must not move a bit: the cached N(0, I) prior and
    its cached log-density constants, the KL against it and the Normal built without broadcasting
    give exactly the values and gradients of the torch.distributions objects they replace."""
    z = torch.randn(4, 64, 3, generator=_gen(1)) * 3
    prior = standard_normal(3, z)
    assert standard_normal(3, z) is prior  # built once
    torch_prior = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    assert _bits_equal(_values_and_grads(prior.log_prob, z), _values_and_grads(torch_prior.log_prob, z))

    mu, h = torch.randn(64, 3, generator=_gen(2)) * 2, torch.randn(64, 3, generator=_gen(3)) * 3
    general = Normal(torch.zeros(3), torch.ones(3))  # the (NormalLogVar, Normal) formula
    fast = _values_and_grads(lambda m, v: kl_divergence(NormalLogVar(m, v), prior.base_dist), mu, h)
    assert _bits_equal(fast, _values_and_grads(lambda m, v: kl_divergence(NormalLogVar(m, v), general), mu, h))

    scale = h.exp()
    assert _bits_equal(_values_and_grads(lambda m, v: normal(m, v).log_prob(z), mu, scale),
                       _values_and_grads(lambda m, v: Normal(m, v).log_prob(z), mu, scale))
    # q(z|x) = NormalLogVar draws z = μ + exp(h/2) ε as Normal(μ, exp(h/2)) does
    assert _bits_equal(_values_and_grads(lambda m, v: rsample(NormalLogVar(m, v), (4,), _gen(5)), mu, h),
                       _values_and_grads(lambda m, v: rsample(Normal(m, (0.5 * v).exp()), (4,), _gen(5)), mu, h))
    assert normal(mu, scale).batch_shape == Normal(mu, scale).batch_shape == (64, 3)
    assert normal(mu, torch.tensor(2.0)).scale.shape == (64, 3)  # other shapes still broadcast


def test_a_prior_made_under_inference_mode_does_not_leak_into_training():
    """Inference tensors cannot be saved for backward: the prior cached under
    torch.inference_mode() (evaluation) is not the one a training step then differentiates through."""
    like = torch.zeros(5)
    with torch.inference_mode():
        frozen = standard_normal(5, like)
        frozen.log_prob(torch.zeros(2, 5))  # its constants are made under inference mode too
    z = torch.randn(2, 5, generator=_gen(), requires_grad=True)
    prior = standard_normal(5, like)
    assert prior is not frozen
    prior.log_prob(z).sum().backward()  # would raise if the inference-mode tensors were used
    torch.testing.assert_close(z.grad, -z.detach())


def test_rsample_lookup_per_type_follows_a_later_more_specific_registration():
    class Wide(Uniform):
        pass

    class Wider(Wide):
        pass

    @register_rsample(Wide)
    def _wide(dist: Wide, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        return torch.zeros(shape)

    d = Wider(torch.tensor(0.0), torch.tensor(1.0))
    assert float(rsample(d, (2,), _gen()).sum()) == 0.0  # looked up (and remembered) through Wide

    @register_rsample(Wider)
    def _wider(dist: Wider, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        return torch.ones(shape)

    assert float(rsample(d, (2,), _gen()).sum()) == 2.0


def test_broadcasts_to_agrees_with_torch_broadcast_shapes():
    from vaelab.distributions import broadcasts_to

    shapes = [(), (1,), (3,), (1, 3), (2, 3), (2, 1), (4, 2, 3), (4, 1, 3), (5, 2, 3), (2, 2, 3)]
    for s in shapes:
        for t in shapes:
            try:
                grows_not = torch.broadcast_shapes(s, t) == torch.Size(t)
            except RuntimeError:
                grows_not = False
            assert broadcasts_to(torch.Size(s), torch.Size(t)) == grows_not, (s, t)
