"""2D toy distributions where every quantity of a VAE can be seen.

Every generator returns exactly ``n`` points as a :class:`~vaelab.data.dataset.Dataset`, is
reproducible from a ``torch.Generator``, carries its labels (mode / component / class) and
the radius ``‖x‖`` of each point as ``extras["radius"]``. Where the density is known in
closed form (the Gaussian mixtures) the dataset carries an exact ``log_prob`` so evaluation
can report how far the model's likelihood is from the true entropy.
"""

from __future__ import annotations

import math

import torch
from sklearn import datasets as skd
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

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


def _sklearn_seed(generator: torch.Generator | None) -> int:
    """Draw an int seed for scikit-learn from the torch generator (reproducible either way)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


def _with_radius(ds: Dataset) -> Dataset:
    ds.extras["radius"] = ds.x.norm(dim=1)
    return ds


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n <= 0:
        raise InputError(f"number of points n must be a positive integer, got {n!r}")


def _gmm(weights: Tensor, means: Tensor, covs: Tensor) -> MixtureSameFamily:
    """A torch mixture of full-covariance Gaussians: weights (K,), means (K, 2), covs (K, 2, 2)."""
    return MixtureSameFamily(Categorical(probs=weights), MultivariateNormal(means, covariance_matrix=covs))


def _mixture_dataset(
    name: str, n: int, params: tuple[Tensor, Tensor, Tensor], label_names: list[str],
    generator: torch.Generator | None,
) -> Dataset:
    """n points of a Gaussian mixture (weights (K,), means (K, 2), covs (K, 2, 2)) with its
    exact density; the component of every point is drawn at random and is its label."""
    weights, means, covs = params
    labels = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,)
    # x = μ_k + L_k ε with L_k L_kᵀ = Σ_k (a column-vector Cholesky factor), so Cov(x) = Σ_k.
    chol = torch.linalg.cholesky(covs)  # (K, 2, 2)
    eps = torch.randn(n, 2, 1, generator=generator, dtype=means.dtype)
    x = means[labels] + (chol[labels] @ eps).squeeze(-1)
    mix = _gmm(weights, means, covs)
    components = MultivariateNormal(means, covariance_matrix=covs)  # batch (K,): one Gaussian per label

    def log_prob_given_label(x: Tensor, label: Tensor) -> Tensor:
        # log p(x | label = k) = log N(x; μ_k, Σ_k): the component's own density, (M, 2), (M,) -> (M,).
        per_component = components.log_prob(x.double()[:, None, :])  # (M, K)
        return per_component.gather(1, label.long().reshape(-1, 1).cpu()).squeeze(1).to(x.dtype)

    return _with_radius(
        Dataset(name, x.float(), labels, label_names, log_prob=lambda x: mix.log_prob(x.double()).to(x.dtype),
                log_prob_given_label=log_prob_given_label)
    )


def moons(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """scikit-learn's two interleaving half circles, noise 0.05; labels = which moon."""
    _check_n(n)
    x, y = skd.make_moons(n, noise=MOONS_NOISE, random_state=_sklearn_seed(generator))
    return _with_radius(
        Dataset("moons", torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64),
                ["upper moon", "lower moon"])
    )


def circles(n: int, *, generator: torch.Generator | None = None) -> Dataset:
    """scikit-learn's two concentric circles, noise 0.05, inner radius factor 0.5; labels = circle."""
    _check_n(n)
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


def mode_means(name: str) -> Tensor:
    """Means (K, 2) of the mixture components of ``2gmm``, ``radial_gmm`` or ``ring``."""
    params = {"2gmm": two_gmm_params, "radial_gmm": radial_gmm_params, "ring": ring_params}
    if name not in params:
        raise InputError(f"{name!r} is not a Gaussian mixture; choose one of {sorted(params)}")
    return params[name]()[1].float()
