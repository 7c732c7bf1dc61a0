"""The flow posteriors (planar, radial, iaf): exact log-determinants and inverses, the
invertibility constraints, one pass to sample and score, training that improves the bound,
stacked == solo, and the combinations that are refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from helpers import assert_stacked_equals_solo, tiny_config
from vaelab.config import ConfigError, RunConfig
from vaelab.data.registry import load_dataset
from vaelab.distributions import rsample
from vaelab.errors import InputError
from vaelab.models import build_model
from vaelab.models.flows import MADE, FlowVAE, IAFStep, PlanarStep, RadialStep, planar_u_hat
from vaelab.objectives import elbo, iwae_bound
from vaelab.train import fit

FLOWS = ("planar", "radial", "iaf")
D, B = 3, 4


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _steps() -> dict[str, object]:
    """One step of each kind, in float64, with parameters far from the identity."""
    g = _gen(1)
    r = lambda *shape, s=1.0: s * torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    made = MADE(D, 5, [16, 16], torch.arange(D), "tanh").double()
    with torch.no_grad():
        for p in made.parameters():
            p.mul_(3)  # a strongly non-linear map
    return {"planar": PlanarStep(r(B, D, s=2.0), r(B, D), r(B)),
            "radial": RadialStep(r(B, D), r(B), r(B, s=3.0)),
            "iaf": IAFStep(made, r(B, 5))}


@pytest.mark.parametrize("kind", FLOWS)
def test_log_determinant_is_the_autograd_jacobians(kind):
    step = _steps()[kind]
    z = torch.randn(B, D, generator=_gen(2), dtype=torch.float64)
    _, log_det = step.forward_and_log_det(z)
    for i in range(B):  # point i has its own map: the Jacobian of row i alone
        def f(zi, i=i):
            return step.forward_and_log_det(torch.cat([z[:i], zi[None], z[i + 1:]]))[0][i]

        jac = jacobian(f, z[i])  # (D, D)
        torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", FLOWS)
def test_inverse_undoes_the_step(kind):
    step = _steps()[kind]
    z = 2 * torch.randn(5, B, D, generator=_gen(3), dtype=torch.float64)  # (k, B, d): k draws per point
    y, _ = step.forward_and_log_det(z)
    torch.testing.assert_close(step._inverse(y), z, rtol=1e-9, atol=1e-9)


def test_iaf_step_is_autoregressive_in_its_order():
    made = MADE(4, 2, [8], torch.tensor([2, 0, 3, 1]), "tanh").double()
    step = IAFStep(made, torch.randn(1, 2, dtype=torch.float64))
    jac = jacobian(lambda z: step.forward_and_log_det(z[None])[0][0], torch.randn(4, dtype=torch.float64))
    order = torch.tensor([2, 0, 3, 1])
    later = order[None, :] > order[:, None]  # output i must not depend on inputs later in the order
    assert torch.all(jac[later] == 0)
    assert torch.all(jac.diagonal() > 0)  # σ_i > 0 on the diagonal


def test_planar_constraint_keeps_every_map_invertible():
    # u pointing against w: without the constraint wᵀu < −1 and the map folds.
    w = torch.tensor([[1.0, 0.0]])
    u = torch.tensor([[-5.0, 0.3]])
    u_hat = planar_u_hat(u, w)
    assert float((w * u_hat).sum()) > -1  # wᵀû = m(wᵀu) = −1 + softplus(−5)
    torch.testing.assert_close((w * u_hat).sum(), torch.tensor(-1 + math.log1p(math.exp(-5.0))))
    step = PlanarStep(u, w, torch.zeros(1))
    z = torch.linspace(-4, 4, 401)[:, None, None] * torch.tensor([1.0, 0.0])  # along w
    y, log_det = step.forward_and_log_det(z)
    assert torch.all(torch.diff(y[:, 0, 0]) > 0) and torch.all(torch.isfinite(log_det))  # monotone along w


def test_radial_constraint_keeps_beta_above_minus_alpha():
    step = RadialStep(torch.zeros(1, 2), torch.tensor([0.5]), torch.tensor([-20.0]))
    assert float(step.beta_hat) >= -float(step.alpha)
    z = torch.randn(100, 1, 2, generator=_gen(4))
    y, log_det = step.forward_and_log_det(z)
    assert torch.all(torch.isfinite(log_det))
    torch.testing.assert_close(step._inverse(y), z, rtol=1e-4, atol=1e-4)


def _model(kind: str, d: int = 2, **options: object) -> FlowVAE:
    model = {"kind": kind, "latent_dim": d, "hidden": [16]}
    if options:
        model[kind] = options
    m = build_model(RunConfig.from_dict({"model": model}).model, 2, seed=0)
    assert isinstance(m, FlowVAE)
    return m


@pytest.mark.parametrize("kind", FLOWS)
def test_scoring_a_fresh_draw_equals_scoring_through_the_inverse(kind):
    model = _model(kind)
    x = torch.randn(6, 2, generator=_gen(5))
    q_z = model.encode(x)
    z = rsample(q_z, (3,), _gen(6))  # (3, 6, 2)
    cached = q_z.log_prob(z)  # the log-determinants of the draw's own pass
    fresh = model.encode(x).log_prob(z.detach().clone())  # no cache: through the exact inverse
    torch.testing.assert_close(cached, fresh, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", FLOWS)
@torch.no_grad()
def test_q_is_a_density_that_integrates_to_one(kind):
    model = _model(kind)
    q_z = model.encode(torch.tensor([[0.5, -1.0]]))
    g = torch.linspace(-8, 8, 401)
    zj, zi = torch.meshgrid(g, g, indexing="ij")
    z = torch.stack([zi, zj], -1).reshape(-1, 1, 2)
    mass = float(q_z.log_prob(z).double().exp().sum() * (g[1] - g[0]).double() ** 2)
    assert abs(mass - 1) < 2e-3


@pytest.mark.parametrize("kind", FLOWS)
def test_sampling_takes_its_noise_from_the_generator_only(kind):
    model = _model(kind)
    x = torch.randn(4, 2, generator=_gen(7))
    state = torch.random.get_rng_state()
    a, b = (rsample(model.encode(x), (2,), _gen(8)) for _ in range(2))
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)


def test_flows_refuse_what_does_not_apply():
    with pytest.raises(InputError, match=r"autoregressive flow needs at least 2 latent dimensions.*--latent-dim 2"):
        _model("iaf", d=1)
    with pytest.raises(ConfigError, match=r"model\.planar\.flows \(--planar-flows\).*greater than or equal to 1"):
        _model("planar", flows=0)
    with pytest.raises(ConfigError, match=r"--radial-flows\): it is an option of the radial.*add --model radial"):
        build_model(RunConfig.from_dict({"model": {"kind": "planar", "radial": {"flows": 2}}}).model, 2)
    with pytest.raises(InputError, match="does not factorise over dimensions; use --free-bits-group all"):
        elbo(_model("planar"), torch.zeros(3, 2), free_bits=0.5, free_bits_group="dim")


def test_the_options_change_the_model():
    assert len(_model("planar", flows=7).encode(torch.zeros(1, 2)).transforms) == 7
    assert len(_model("iaf", flows=3).made) == 3
    widths = [m.out_features for m in _model("iaf", hidden=[8, 12]).made[0].modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [8, 12, 4]
    assert _model("iaf", context=5).encoder[-1].out_features == 2 * 2 + 5


@pytest.mark.parametrize("kind", FLOWS)
def test_every_stacked_member_equals_its_solo_run(kind):
    cfg = tiny_config(model={"kind": kind, "hidden": [16, 16]},
                      train={"objective": "iwae", "k": 3, "epochs": 3, "batch_size": 64})
    assert_stacked_equals_solo([cfg.with_overrides({"train": t}) for t in ({"beta": 0.5}, {"seed": 3})])


def _held_out_bound(model, x) -> torch.Tensor:
    with torch.no_grad():
        return iwae_bound(model, x, k=20, generator=_gen(9)).double()  # (N,)


@pytest.mark.parametrize("kind", FLOWS)
@pytest.mark.parametrize("data", ["moons", "digits"])
def test_a_few_hundred_steps_improve_the_held_out_bound(kind, data):
    cfg = RunConfig.from_dict({
        "data": {"name": data, **({"n_train": 1024, "n_test": 256} if data == "moons" else {})},
        "model": {"kind": kind, "latent_dim": 2 if data == "moons" else 4, "hidden": [32, 32],
                  **({"likelihood": "bernoulli"} if data == "digits" else {})},
        "train": {"epochs": 20 if data == "moons" else 25, "batch_size": 64, "objective": "elbo",
                  "diversity_samples": 32},
    })
    x_train, x_test = (load_dataset(cfg.data, split).x for split in ("train", "test"))
    if data == "digits":  # grey levels -> {0, 1}, the support of the Bernoulli likelihood
        x_train, x_test = (x_train > 0.5).float(), (x_test > 0.5).float()
    model = build_model(cfg.model, x_train.shape[1], seed=0)
    before = _held_out_bound(model, x_test)
    steps: list[int] = []
    fit(model, x_train, cfg.train, on_step=lambda info: steps.append(info.step))
    assert len(steps) >= 300  # a few hundred steps
    gain = _held_out_bound(model, x_test) - before  # per held-out point, paired
    se = float(gain.std() / math.sqrt(len(gain)))
    assert float(gain.mean()) > 5 * se, (float(gain.mean()), se)


def test_flow_posterior_figure_shows_base_flow_and_truth_with_their_gaps():
    import re

    from vaelab.plots.flows import plot_flow_posterior

    cfg = tiny_config(model={"kind": "planar", "hidden": [16]})
    model = build_model(cfg.model, 2, seed=0)
    fig = plot_flow_posterior(model, load_dataset(cfg.data, "test"), grid=50)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 9 and sum("true posterior" in t for t in titles) == 3
    gaps = [float(re.search(r"gap (-?[\d.]+)", t).group(1)) for t in titles if "gap" in t]  # type: ignore[union-attr]
    assert len(gaps) == 6 and min(gaps) > -0.05  # each is a KL(q ‖ p(z|x)) ≥ 0, up to Monte Carlo noise
    with pytest.raises(ValueError, match="2-D latent"):
        plot_flow_posterior(_model("radial", d=3), load_dataset(cfg.data, "test"))


def test_planar_log_determinant_stays_finite_where_float32_rounds():
    # Found in training (radial_gmm, step 740): with |wᵀu| ~ 10³, recomputing wᵀû in float32 gave
    # a value below −1 and the log-determinant NaN where tanh(wᵀz + b) ≈ 0.
    w = torch.tensor([[30.0, -20.0]])
    u = -w * 1.5  # wᵀu = −1950
    b = torch.tensor([0.0])
    step = PlanarStep(u, w, b)
    z = torch.tensor([[0.0, 0.0], [1e-4, 0.0], [-3e-5, 2e-5]])[:, None, :]  # wᵀz + b ≈ 0: tanh ≈ 0
    _, log_det = step.forward_and_log_det(z)
    assert torch.all(torch.isfinite(log_det))
    step64 = PlanarStep(u.double(), w.double(), b.double())
    torch.testing.assert_close(log_det.double(), step64.forward_and_log_det(z.double())[1], rtol=1e-3, atol=1e-3)
