"""2D toy distributions where every quantity of a VAE can be seen.

Every generator returns exactly ``n`` points as a :class:`~vaelab.data.dataset.Dataset`, is
reproducible from a ``torch.Generator``, carries its labels (mode / component / class) and
the radius ``‖x‖`` of each point as ``extras["radius"]``. Where the density is known in
closed form (the Gaussian mixtures, and the pinwheel and banana: Gaussian mixtures bent by a
volume-preserving map) the dataset carries an exact ``log_prob`` so evaluation can report how
far the model's likelihood is from the true entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vaelab.data.dataset import Dataset
from vaelab.errors import InputError

# Parameters of the named distributions, kept as module constants so docs, tests and
# plots read the same numbers.
MOONS_NOISE = 0.05
CIRCLES_NOISE = 0.05
CIRCLES_FACTOR = 0.5
TWO_GMM_WEIGHTS = (1.0 / 3.0, 2.0 / 3.0)
TWO_GMM_MEANS = ((0.0, 1.0), (-1.0, 0.0))
TWO_GMM_A = (((0.05, -0.02), (-0.02, 0.4)), ((0.3, 0.05), (0.05, 0.05)))
RADIAL_MODES = 8
RADIAL_RADIUS = 3.0
RADIAL_VAR_RADIAL = 0.3
RADIAL_VAR_TANGENTIAL = 0.05
RING_MODES = 8
RING_RADIUS = 2.0
RING_STD = 0.15
PINWHEEL_ARMS = 5
PINWHEEL_RADIUS = 1.5
PINWHEEL_STD_RADIAL = 0.45
PINWHEEL_STD_TANGENTIAL = 0.1
PINWHEEL_SWIRL = 0.75  # radians of extra rotation per unit of radius
BANANA_STD = (1.2, 0.35)
BANANA_BEND = 0.5
SPIRAL_MODES = 10
SPIRAL_STD = 0.1


def _sklearn_seed(generator: torch.Generator | None) -> int:
    """Draw an int seed for scikit-learn from the torch generator (reproducible either way)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


def _with_radius(ds: Dataset) -> Dataset:
    ds.extras["radius"] = ds.x.norm(dim=1)
    return ds


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n <= 0:
        raise InputError(f"number of points n must be a positive integer, got {n!r}")


def gaussian_log_probs(y: Tensor, means: Tensor, chol: Tensor) -> Tensor:
    """log N(y; μ_k, Σ_k) of every point under every component: y (M, 2), means (K, 2), chol (K, 2, 2)
    the lower Cholesky factors L_k of Σ_k -> (M, K).

        log N(y; μ, LLᵀ) = −½ ‖L⁻¹(y − μ)‖² − Σ_i log L_ii − (D/2) log 2π,

    what torch's ``MultivariateNormal.log_prob`` computes. It is written out here because that
    class's constructor calls ``torch.broadcast_shapes``, whose first call imports sympy: about
    a second at the start of every command that loads a toy data set.
    """
    diff = (y[:, None, :] - means).unsqueeze(-1)  # (M, K, 2, 1)
    white = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)  # L_k⁻¹(y − μ_k): (M, K, 2)
    half_log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # ½ log |Σ_k| = Σ_i log L_ii: (K,)
    return -0.5 * white.square().sum(-1) - half_log_det - 0.5 * means.shape[-1] * math.log(2 * math.pi)


def gmm_log_prob(y: Tensor, weights: Tensor, means: Tensor, chol: Tensor) -> Tensor:
    """log Σ_k w_k N(y; μ_k, L_k L_kᵀ): y (M, 2) -> (M,)."""
    return torch.logsumexp(weights.log() + gaussian_log_probs(y, means, chol), dim=1)


def _identity(x: Tensor) -> Tensor:
    return x


def _mixture_dataset(
    name: str, n: int, params: tuple[Tensor, Tensor, Tensor], label_names: list[str],
    generator: torch.Generator | None, *, warp: Callable[[Tensor], Tensor] = _identity,
    unwarp: Callable[[Tensor], Tensor] = _identity,
) -> Dataset:
    """n points x = warp(y) of a Gaussian mixture y (weights (K,), means (K, 2), covs (K, 2, 2))
    with the exact density; the component of every point is drawn at random and is its label.

    ``warp`` must be a bijection of the plane with Jacobian determinant 1 (``unwarp`` its
    inverse): then p(x) = p_mix(unwarp(x)) exactly, with no volume term.
    """
    weights, means, covs = params
    labels = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,)
    # y = μ_k + L_k ε with L_k L_kᵀ = Σ_k (a column-vector Cholesky factor), so Cov(y) = Σ_k.
    chol = torch.linalg.cholesky(covs)  # (K, 2, 2)
    eps = torch.randn(n, 2, 1, generator=generator, dtype=means.dtype)
    x = warp(means[labels] + (chol[labels] @ eps).squeeze(-1))

    def log_prob(x: Tensor) -> Tensor:  # (M, 2) -> (M,)
        return gmm_log_prob(unwarp(x.double()), weights, means, chol).to(x.dtype)

    def log_prob_given_label(x: Tensor, label: Tensor) -> Tensor:
        # log p(x | label = k) = log N(unwarp(x); μ_k, Σ_k): the component's own density, (M, 2), (M,) -> (M,).
        per_component = gaussian_log_probs(unwarp(x.double()), means, chol)  # (M, K)
        return per_component.gather(1, label.long().reshape(-1, 1).cpu()).squeeze(1).to(x.dtype)

    return _with_radius(
        Dataset(name, x.float(), labels, label_names, log_prob=log_prob, log_prob_given_label=log_prob_given_label)
    )


def moons(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """scikit-learn's two interleaving half circles, noise 0.05; labels = which moon."""
    _check_n(n)
    from sklearn import datasets as skd  # imported here: it costs ~1 s at `import vaelab` otherwise

    x, y = skd.make_moons(n, noise=MOONS_NOISE, random_state=_sklearn_seed(generator))
    return _with_radius(
        Dataset("moons", torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64),
                ["upper moon", "lower moon"])
    )


def circles(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """scikit-learn's two concentric circles, noise 0.05, inner radius factor 0.5; labels = circle."""
    _check_n(n)
    from sklearn import datasets as skd

    x, y = skd.make_circles(n, noise=CIRCLES_NOISE, factor=CIRCLES_FACTOR, random_state=_sklearn_seed(generator))
    return _with_radius(
        Dataset("circles", torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64),
                ["outer circle", "inner circle"])
    )


def two_gmm_params() -> tuple[Tensor, Tensor, Tensor]:
    """Weights (2,), means (2, 2) and covariances AᵀA (2, 2, 2) of ``2gmm`` in float64."""
    weights = torch.tensor(TWO_GMM_WEIGHTS, dtype=torch.float64)
    means = torch.tensor(TWO_GMM_MEANS, dtype=torch.float64)
    a = torch.tensor(TWO_GMM_A, dtype=torch.float64)
    covs = a.transpose(1, 2) @ a  # Σ_k = A_kᵀ A_k
    return weights, means, covs


def two_gmm(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """A two-component Gaussian mixture with an exact density.

    One third of the mass is N([0, 1], A1ᵀA1) with A1 = [[.05, -.02], [-.02, .4]] (a thin
    vertical ellipse), the rest N([-1, 0], A2ᵀA2) with A2 = [[.3, .05], [.05, .05]] (a flat
    horizontal one). Each point's component is drawn at random with these weights, so the
    sample follows the mixture density exactly; labels = component (0 or 1).
    """
    _check_n(n)
    return _mixture_dataset("2gmm", n, two_gmm_params(), ["N([0,1], A1ᵀA1)", "N([-1,0], A2ᵀA2)"], generator)


def radial_gmm_params() -> tuple[Tensor, Tensor, Tensor]:
    """Weights (8,), means (8, 2) and covariances (8, 2, 2) of ``radial_gmm`` in float64."""
    angles = torch.arange(RADIAL_MODES, dtype=torch.float64) * (2 * math.pi / RADIAL_MODES)
    r = torch.stack([angles.cos(), angles.sin()], dim=1)  # (8, 2) radial unit vectors
    t = torch.stack([-angles.sin(), angles.cos()], dim=1)  # (8, 2) tangential unit vectors
    means = RADIAL_RADIUS * r
    covs = RADIAL_VAR_RADIAL * r[:, :, None] * r[:, None, :] + RADIAL_VAR_TANGENTIAL * t[:, :, None] * t[:, None, :]
    weights = torch.full((RADIAL_MODES,), 1.0 / RADIAL_MODES, dtype=torch.float64)
    return weights, means, covs


def radial_gmm(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """8 equal Gaussians on a circle of radius 3, each elongated along its radius.

    Mode k has mean 3·r_k and covariance 0.3·r_k r_kᵀ + 0.05·t_k t_kᵀ, where r_k is the
    radial and t_k the tangential unit vector at angle 2πk/8 (std √0.3 ≈ 0.55 along the
    radius, √0.05 ≈ 0.22 across it). Labels = mode.

    Note: the course code this distribution comes from draws ``randn @ cholesky(cov)``,
    which gives covariance LᵀL instead of LLᵀ = cov (so its modes are not elongated
    radially), and it drops the ``n mod 8`` remainder. Here x = μ + Lε with LLᵀ = cov,
    which is the intended distribution, and exactly n points are returned (each point's
    mode drawn uniformly at random).
    """
    _check_n(n)
    return _mixture_dataset("radial_gmm", n, radial_gmm_params(), [f"mode {k}" for k in range(RADIAL_MODES)], generator)


def ring_params() -> tuple[Tensor, Tensor, Tensor]:
    """Weights (8,), means (8, 2) and covariances (8, 2, 2) of ``ring`` in float64."""
    angles = torch.arange(RING_MODES, dtype=torch.float64) * (2 * math.pi / RING_MODES)
    means = RING_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)
    covs = (RING_STD**2) * torch.eye(2, dtype=torch.float64).expand(RING_MODES, 2, 2).clone()
    weights = torch.full((RING_MODES,), 1.0 / RING_MODES, dtype=torch.float64)
    return weights, means, covs


def ring(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """A ring of 8 isotropic Gaussian modes: means on a circle of radius 2, std 0.15 each.

    Mode k sits at angle 2πk/8; labels = mode. The density is exact (equal-weight mixture).
    """
    _check_n(n)
    return _mixture_dataset("ring", n, ring_params(), [f"mode {k}" for k in range(RING_MODES)], generator)


def _radial_arms(k: int, radius: float, var_radial: float, var_tangential: float) -> tuple[Tensor, Tensor, Tensor]:
    """k equal Gaussians at angles 2πj/k on a circle, each with its own radial and tangential variance."""
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    r = torch.stack([angles.cos(), angles.sin()], dim=1)  # (k, 2) radial unit vectors
    t = torch.stack([-angles.sin(), angles.cos()], dim=1)  # (k, 2) tangential unit vectors
    covs = var_radial * r[:, :, None] * r[:, None, :] + var_tangential * t[:, :, None] * t[:, None, :]
    return torch.full((k,), 1.0 / k, dtype=torch.float64), radius * r, covs


def _rotate(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate each row of x (M, 2) by its own angle (M,)."""
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([cos * x[:, 0] - sin * x[:, 1], sin * x[:, 0] + cos * x[:, 1]], dim=1)


def _swirl(y: Tensor) -> Tensor:
    # Rotation by an angle that grows with the radius: in polar coordinates (r, θ) -> (r, θ + s·r),
    # whose Jacobian [[1, 0], [s, 1]] has determinant 1 (areas are kept), and r is unchanged,
    # so the inverse is the rotation by -s·r.
    return _rotate(y, PINWHEEL_SWIRL * y.norm(dim=1))


def _unswirl(x: Tensor) -> Tensor:
    return _rotate(x, -PINWHEEL_SWIRL * x.norm(dim=1))


def pinwheel_params() -> tuple[Tensor, Tensor, Tensor]:
    """Weights (5,), means (5, 2) and covariances (5, 2, 2) of ``pinwheel`` before the swirl, float64."""
    return _radial_arms(PINWHEEL_ARMS, PINWHEEL_RADIUS, PINWHEEL_STD_RADIAL**2, PINWHEEL_STD_TANGENTIAL**2)


def pinwheel(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """5 curved arms: radially elongated Gaussians (radius 1.5, std 0.45 along it, 0.1 across),
    each point then rotated by 0.75 rad per unit of its radius.

    The swirl keeps areas (Jacobian determinant 1), so the density is exact: p(x) is the
    mixture density at the un-swirled point. The arms bend, so no Gaussian mixture with a
    few components fits them, unlike radial_gmm. Labels = arm. After Johnson et al. (2016).
    """
    _check_n(n)
    return _mixture_dataset("pinwheel", n, pinwheel_params(), [f"arm {k}" for k in range(PINWHEEL_ARMS)],
                            generator, warp=_swirl, unwarp=_unswirl)


def _bend(y: Tensor) -> Tensor:
    # x = (y1, y2 + b (y1² - σ1²)): a shear along x2 that depends on x1 only, so the Jacobian is
    # [[1, 0], [2 b y1, 1]] with determinant 1; -b σ1² keeps E[x2] = 0.
    return torch.stack([y[:, 0], y[:, 1] + BANANA_BEND * (y[:, 0].square() - BANANA_STD[0] ** 2)], dim=1)


def _unbend(x: Tensor) -> Tensor:
    return torch.stack([x[:, 0], x[:, 1] - BANANA_BEND * (x[:, 0].square() - BANANA_STD[0] ** 2)], dim=1)


def banana_params() -> tuple[Tensor, Tensor, Tensor]:
    """The Gaussian before the bend as a two-component mixture of its halves is not Gaussian, so
    ``banana`` is one component: weights (1,), means (1, 2), covariances (1, 2, 2), float64."""
    sx, sy = BANANA_STD
    covs = torch.tensor([[[sx**2, 0.0], [0.0, sy**2]]], dtype=torch.float64)
    return torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), covs


def banana(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """A bent Gaussian: y ~ N(0, diag(1.2², 0.35²)), x = (y1, y2 + 0.5 (y1² - 1.2²)).

    One curved, unimodal ridge (a "sheared" or "bent" Gaussian); the bend keeps areas, so the
    density is exact. Labels = which half (x1 < 0 or x1 ≥ 0): each half holds exactly half of
    the mass, so p(x | half) = 2 p(x) on that half.
    """
    _check_n(n)
    ds = _mixture_dataset("banana", n, banana_params(), ["one component"], generator, warp=_bend, unwarp=_unbend)
    labels = (ds.x[:, 0] >= 0).long()
    joint = ds.log_prob
    assert joint is not None

    def log_prob_given_half(x: Tensor, label: Tensor) -> Tensor:
        inside = (x[:, 0] >= 0).long() == label.long().to(x.device)
        return torch.where(inside, joint(x) + math.log(2.0), torch.full_like(x[:, 0], -math.inf))

    return Dataset("banana", ds.x, labels, ["left half (x1 < 0)", "right half (x1 ≥ 0)"], log_prob=joint,
                   log_prob_given_label=log_prob_given_half, extras=ds.extras)


def spiral_params() -> tuple[Tensor, Tensor, Tensor]:
    """Weights (10,), means (10, 2) and covariances (10, 2, 2) of ``spiral`` in float64: isotropic
    Gaussians (std 0.1) at angles θ_j = 1.2 + 0.5 j on the spiral r = 0.4 + 0.45 θ (neighbours at
    least 0.47 apart, 4.7 std)."""
    theta = 1.2 + 0.5 * torch.arange(SPIRAL_MODES, dtype=torch.float64)
    r = 0.4 + 0.45 * theta
    means = torch.stack([r * theta.cos(), r * theta.sin()], dim=1)
    covs = (SPIRAL_STD**2) * torch.eye(2, dtype=torch.float64).expand(SPIRAL_MODES, 2, 2).clone()
    return torch.full((SPIRAL_MODES,), 1.0 / SPIRAL_MODES, dtype=torch.float64), means, covs


def spiral(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """10 small Gaussians along one arm of a spiral, from radius 0.94 out to 2.97: modes of
    different spacing and distance from the origin. Exact density; labels = mode along the arm."""
    _check_n(n)
    return _mixture_dataset("spiral", n, spiral_params(), [f"mode {k}" for k in range(SPIRAL_MODES)], generator)


def mode_means(name: str) -> Tensor:
    """Means (K, 2) of the mixture components of ``2gmm``, ``radial_gmm``, ``ring`` or ``spiral``."""
    params = {"2gmm": two_gmm_params, "radial_gmm": radial_gmm_params, "ring": ring_params,
              "spiral": spiral_params}
    if name not in params:
        raise InputError(f"{name!r} is not a Gaussian mixture; choose one of {sorted(params)}")
    return params[name]()[1].float()
