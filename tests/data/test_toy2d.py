import math

import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data import toy2d
from vaelab.data.registry import DATASETS, load_dataset

ALL = [toy2d.moons, toy2d.circles, toy2d.two_gmm, toy2d.radial_gmm, toy2d.ring, toy2d.pinwheel, toy2d.banana,
       toy2d.spiral]
EXACT = [toy2d.two_gmm, toy2d.radial_gmm, toy2d.ring, toy2d.pinwheel, toy2d.banana, toy2d.spiral]


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("n", [1, 7, 1001])
def test_exactly_n_points_with_labels(fn, n):
    ds = fn(n, generator=torch.Generator().manual_seed(0))
    assert ds.x.shape == (n, 2)
    assert ds.x.dtype == torch.float32
    assert ds.labels is not None and ds.labels.shape == (n,)
    assert torch.allclose(ds.extras["radius"], ds.x.norm(dim=1))


@pytest.mark.parametrize("fn", ALL)
def test_reproducible_from_generator(fn):
    a = fn(300, generator=torch.Generator().manual_seed(3))
    b = fn(300, generator=torch.Generator().manual_seed(3))
    c = fn(300, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize("fn", ALL)
def test_rejects_non_positive_n(fn):
    with pytest.raises(ValueError, match="positive"):
        fn(0)


def test_radial_gmm_is_elongated_along_the_radius():
    ds = toy2d.radial_gmm(40_000, generator=torch.Generator().manual_seed(0))
    _, means, covs = toy2d.radial_gmm_params()
    for k in (0, 1, 2):  # angles 0, 45, 90 degrees
        pts = ds.x[ds.labels == k].double()
        emp = torch.cov(pts.T)
        assert torch.allclose(emp, covs[k], atol=0.02), (k, emp, covs[k])
        r = means[k] / means[k].norm()
        t = torch.stack([-r[1], r[0]])
        # variance along the radius 0.3, across 0.05
        assert abs(float(r @ emp @ r) - 0.3) < 0.02
        assert abs(float(t @ emp @ t) - 0.05) < 0.01
    counts = torch.bincount(ds.labels, minlength=8).double() / len(ds)
    assert torch.allclose(counts, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)


def test_two_gmm_weights_and_covariances():
    ds = toy2d.two_gmm(30_000, generator=torch.Generator().manual_seed(1))
    frac = float((ds.labels == 0).double().mean())
    assert abs(frac - 1 / 3) < 0.01
    a1 = torch.tensor([[0.05, -0.02], [-0.02, 0.4]], dtype=torch.float64)
    emp = torch.cov(ds.x[ds.labels == 0].double().T)
    assert torch.allclose(emp, a1.T @ a1, atol=0.005)


@pytest.mark.parametrize("fn", EXACT)
def test_exact_log_prob_is_a_normalised_density(fn):
    ds = fn(10, generator=torch.Generator().manual_seed(0))
    grid, cell = _grid(top=16)  # the banana's ridge rises to x2 ≈ 11 at 4 σ
    mass = ds.log_prob(grid).exp().sum() * cell
    assert abs(float(mass) - 1.0) < 1e-3


def test_ring_geometry():
    ds = toy2d.ring(8000, generator=torch.Generator().manual_seed(2))
    means = toy2d.mode_means("ring")
    assert torch.allclose(means.norm(dim=1), torch.full((8,), toy2d.RING_RADIUS))
    resid = ds.x - means[ds.labels]
    assert abs(float(resid.std()) - toy2d.RING_STD) < 0.01


def test_registry_splits_are_different_draws():
    cfg = DataConfig(name="moons", n_train=50, n_test=20)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert len(train) == 50 and len(test) == 20
    assert not torch.equal(train.x[:20], test.x)
    assert set(["moons", "circles", "2gmm", "radial_gmm", "ring"]) <= set(DATASETS)


def test_unknown_dataset_names_the_choices():
    # config.py is a leaf, so the name is checked where the registry is: when the data is loaded.
    with pytest.raises(ValueError, match=r"data.name \(--data\): unknown dataset 'spirals'; choose one of: .*ring"):
        load_dataset(DataConfig(name="spirals"), "train")


def test_entropy_estimate_matches_closed_form_for_gaussian_ring_limit():
    # A sanity anchor for the exact density: E[-log p(x)] of ring is at least the entropy
    # of one isotropic mode and at most that plus log 8 (mixture of well-separated modes).
    ds = toy2d.ring(20_000, generator=torch.Generator().manual_seed(0))
    h = float(-ds.log_prob(ds.x).mean())
    h_mode = 1 + math.log(2 * math.pi * toy2d.RING_STD**2)
    assert h_mode < h <= h_mode + math.log(8) + 0.01
    assert abs(h - (h_mode + math.log(8))) < 0.03  # modes barely overlap


def _grid(lo: float = -6, hi: float = 6, m: int = 601, top: float | None = None) -> tuple[torch.Tensor, float]:
    """Cell centres of a grid over [lo, hi] x [lo, top] (top: hi) and the area of one cell."""
    lin = torch.linspace(lo, hi, m, dtype=torch.float64)
    step = float(lin[1] - lin[0])
    lin_y = lin if top is None else torch.arange(lo, top + step / 2, step, dtype=torch.float64)
    gx, gy = torch.meshgrid(lin, lin_y, indexing="xy")
    return torch.stack([gx.ravel(), gy.ravel()], 1), step**2


@pytest.mark.parametrize("fn", EXACT)
def test_samples_follow_the_exact_density(fn):
    # E_samples[log p(x)] equals -H = ∫ p log p only if the points are drawn from p: a wrong
    # Jacobian in a warp, or a sampler that differs from the density, moves one but not the other.
    ds = fn(200_000, generator=torch.Generator().manual_seed(5))
    from_samples = ds.log_prob(ds.x.double())
    grid, cell = _grid(top=16)
    log_p = ds.log_prob(grid)
    p = log_p.exp()
    neg_entropy = float((p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum() * cell)
    se = float(from_samples.std()) / len(ds) ** 0.5
    assert abs(float(from_samples.mean()) - neg_entropy) < 4 * se + 2e-3, (float(from_samples.mean()), neg_entropy)


def test_banana_entropy_is_that_of_its_gaussian():
    # The bend has Jacobian determinant 1, so it keeps the entropy of N(0, diag(σ1², σ2²)).
    sx, sy = toy2d.BANANA_STD
    entropy = math.log(2 * math.pi * math.e * sx * sy)
    ds = toy2d.banana(200_000, generator=torch.Generator().manual_seed(6))
    log_p = ds.log_prob(ds.x.double())
    assert abs(-float(log_p.mean()) - entropy) < 4 * float(log_p.std()) / len(ds) ** 0.5
    assert abs(float(ds.x[:, 1].double().mean())) < 0.01  # -b σ1² centres the ridge


@pytest.mark.parametrize("fn", [toy2d.pinwheel, toy2d.banana, toy2d.spiral])
def test_label_densities_mix_to_the_density(fn):
    # p(x) = Σ_k P(k) p(x|k): the conditional densities that conditional runs are scored against.
    ds = fn(4000, generator=torch.Generator().manual_seed(7))
    grid, _ = _grid(-4, 4, 41)
    counts = torch.bincount(ds.labels, minlength=ds.num_classes).double() / len(ds)
    weights = torch.full((ds.num_classes,), 1.0 / ds.num_classes, dtype=torch.float64)
    assert torch.allclose(counts, weights, atol=0.03)  # every family here has equal label masses
    mixed = sum(w * ds.log_prob_given_label(grid, torch.full((len(grid),), k)).exp() for k, w in enumerate(weights))
    assert torch.allclose(mixed, ds.log_prob(grid).exp(), rtol=1e-9, atol=1e-12)


def test_pinwheel_arms_bend():
    # Un-swirled, every arm is a straight radial Gaussian; swirled, the points of an arm change angle with radius.
    ds = toy2d.pinwheel(20_000, generator=torch.Generator().manual_seed(8))
    arm = ds.x[ds.labels == 0].double()
    r, angle = arm.norm(dim=1), torch.atan2(arm[:, 1], arm[:, 0])
    slope = float(((r - r.mean()) * (angle - angle.mean())).sum() / (r - r.mean()).square().sum())
    assert abs(slope - toy2d.PINWHEEL_SWIRL) < 0.05



@pytest.mark.parametrize("params", ["two_gmm_params", "radial_gmm_params", "ring_params", "spiral_params",
                                    "pinwheel_params", "banana_params"])
def test_hand_written_mixture_density_is_torchs(params):
    """gmm_log_prob / gaussian_log_probs (written out to keep sympy out of start-up) agree with
    torch's MixtureSameFamily of MultivariateNormals and with each component's log_prob."""
    from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

    weights, means, covs = getattr(toy2d, params)()
    chol = torch.linalg.cholesky(covs)
    y = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    components = MultivariateNormal(means, covariance_matrix=covs)
    mix = MixtureSameFamily(Categorical(probs=weights), components)
    torch.testing.assert_close(toy2d.gaussian_log_probs(y, means, chol), components.log_prob(y[:, None, :]),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(toy2d.gmm_log_prob(y, weights, means, chol), mix.log_prob(y), rtol=1e-12, atol=1e-12)
