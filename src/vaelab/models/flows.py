"""Flow posteriors: q(z|x) is the VAE's N(μ(x), diag σ²(x)) pushed through K invertible maps.

    z_0 ~ N(μ(x), diag σ²(x)),   z_K = f_K ∘ … ∘ f_1(z_0),
    log q(z_K|x) = log N(z_0; μ, σ²) − Σ_k log |det ∂f_k/∂z_{k−1}|     (Rezende & Mohamed 2015, eq. 6-7)

Three families, each a ``TransformedDistribution`` from ``encode`` (so objectives, evaluation
and figures read it like any other q):

- ``planar``: f(z) = z + û h(wᵀz + b), h = tanh, with u, w, b output by the encoder for each x
  (Rezende & Mohamed 2015, eq. 10-12; the invertibility constraint of their appendix A.1).
- ``radial``: f(z) = z + β̂ h(α, r)(z − z_0), r = ‖z − z_0‖, h = 1 / (α + r) (their eq. 14; α > 0,
  β̂ ≥ −α), again with z_0, α, β from the encoder.
- ``iaf``: inverse autoregressive flow (Kingma et al. 2016): each step is the gated update
  z ← σ ⊙ z + (1 − σ) ⊙ m (their eq. 14), where m and σ = sigmoid(s) come from a masked
  autoregressive network (MADE, Germain et al. 2015) of the previous z and a context vector h
  that the encoder outputs, so m_i and s_i see only z_{<i}: the Jacobian is triangular and
  log |det| = Σ_i log σ_i.

Every step keeps the log-determinant of its last forward pass (``FlowStep``), so scoring a z
that was just drawn (the ELBO's log q(z|x), the IWAE weights) costs no extra pass: one pass
to sample and score. A z from elsewhere (a grid, another point's draw) is scored through the
exact inverse: closed form for radial, a monotone scalar equation solved by bisection for
planar, d passes for IAF.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Transform, TransformedDistribution, constraints

from vaelab.config import FamilyOptions, ModelConfig
from vaelab.errors import InputError
from vaelab.models.vae import VAE
from vaelab.nets.mlp import activation_layer


class FlowStep(Transform):
    """One invertible map of a flow, over the last dimension (event dim 1), that remembers the
    log |det J| of its last forward call.

    Subclasses define ``forward_and_log_det(z) -> (f(z), log |det ∂f/∂z|)`` (shapes (..., d)
    and (...)) and ``_inverse(y)``. ``cache_size=1`` makes torch's ``TransformedDistribution``
    get the inverse of the output just computed from the cache; the log-determinant comes from
    the same pass, so sampling then scoring runs each step once.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self) -> None:
        super().__init__(cache_size=1)
        self._last: tuple[Tensor, Tensor, Tensor] | None = None

    def forward_and_log_det(self, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _call(self, x: Tensor) -> Tensor:
        y, log_det = self.forward_and_log_det(x)
        self._last = (x, y, log_det)
        return y

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        last = self._last
        if last is not None and x is last[0] and y is last[1]:
            return last[2]
        return self.forward_and_log_det(x)[1]

    def __eq__(self, other: object) -> bool:  # each step has its own parameters: equal only to itself
        return self is other

    def __hash__(self) -> int:
        return id(self)


# softplus is floored at this: in float32 softplus(a) underflows to 0 for a < −104, and then
# wᵀû = −1 exactly and the log-determinant is log 0 where tanh(wᵀz + b) = 0 (a NaN in training).
SOFTPLUS_FLOOR = 1e-6


def _softplus(a: Tensor) -> Tensor:
    return F.softplus(a).clamp_min(SOFTPLUS_FLOOR)


def planar_u_hat(u: Tensor, w: Tensor) -> Tensor:
    """The constrained û that makes the planar map invertible (Rezende & Mohamed 2015, App. A.1):

        û = u + (m(wᵀu) − wᵀu) · w / ‖w‖²,   m(a) = −1 + softplus(a),

    so wᵀû = m(wᵀu) > −1 and 1 + ûᵀψ(z) > 0 for every z (softplus floored at ``SOFTPLUS_FLOOR``,
    so that stays true in float32). u, w: (..., d) -> (..., d).
    """
    return _constrained(u, w)[0]


def _constrained(u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """û and softplus(wᵀu) = 1 + wᵀû (..., d), (...): the second exactly, where computing wᵀû
    again would round (for |wᵀu| ~ 10³ in float32, to below −1, and the log-determinant to NaN)."""
    wu = (w * u).sum(-1, keepdim=True)  # (..., 1)
    s = _softplus(wu)
    return u + (s - 1.0 - wu) * w / w.square().sum(-1, keepdim=True).clamp_min(1e-12), s.squeeze(-1)


class PlanarStep(FlowStep):
    """f(z) = z + û tanh(wᵀz + b) (Rezende & Mohamed 2015, eq. 10), with
    log |det ∂f/∂z| = log |1 + ûᵀψ(z)|, ψ(z) = tanh'(wᵀz + b) w (eq. 11-12).

    u, w: (B, d) and b: (B,), one map per data point (the encoder outputs them); z (..., B, d).
    """

    def __init__(self, u: Tensor, w: Tensor, b: Tensor) -> None:
        super().__init__()
        self.w, self.b = w, b
        self.u_hat, self.s = _constrained(u, w)  # û (B, d) and s = 1 + wᵀû > 0 (B,)

    def forward_and_log_det(self, z: Tensor) -> tuple[Tensor, Tensor]:
        a = (z * self.w).sum(-1) + self.b  # (..., B)
        t = torch.tanh(a)
        y = z + self.u_hat * t.unsqueeze(-1)
        # 1 + ûᵀψ = 1 + (1 − t²) wᵀû = t² + (1 − t²) s with s = 1 + wᵀû > 0: a sum of non-negative
        # terms, positive, written so that no rounding can take it below 0
        return y, torch.log(t.square() + (1 - t.square()) * self.s)

    def _inverse(self, y: Tensor) -> Tensor:
        """z from y = z + û tanh(wᵀz + b): with α = wᵀz, wᵀy = α + wᵀû tanh(α + b), whose right side
        increases with α (wᵀû > −1); α lies within |wᵀû| of wᵀy. Bisection on that interval, then
        z = y − û tanh(α + b). 64 halvings bring the interval below float64's resolution."""
        wy = (y * self.w).sum(-1).double()  # (..., B)
        w_u = (self.s.double() - 1).expand_as(wy)  # wᵀû
        b = self.b.double().expand_as(wy)
        lo, hi = wy - w_u.abs(), wy + w_u.abs()
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = mid + w_u * torch.tanh(mid + b) > wy
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        alpha = (0.5 * (lo + hi)).to(y.dtype)
        return y - self.u_hat * torch.tanh(alpha + self.b).unsqueeze(-1)


class RadialStep(FlowStep):
    """f(z) = z + β̂ h(α, r)(z − z_0), r = ‖z − z_0‖, h = 1/(α + r) (Rezende & Mohamed 2015, eq. 14),
    α = softplus(a) > 0 and β̂ = −α + softplus(β) ≥ −α (invertible, App. A.2), with

        log |det ∂f/∂z| = (d − 1) log(1 + β̂h) + log(1 + β̂h + β̂ h'(α, r) r),   h' = −1/(α + r)².

    z0: (B, d), a, beta: (B,), one map per data point; z (..., B, d).
    """

    def __init__(self, z0: Tensor, a: Tensor, beta: Tensor) -> None:
        super().__init__()
        self.z0 = z0
        self.alpha = _softplus(a)  # (B,)
        self.beta_hat = -self.alpha + _softplus(beta)

    def forward_and_log_det(self, z: Tensor) -> tuple[Tensor, Tensor]:
        diff = z - self.z0  # (..., B, d)
        r = diff.norm(dim=-1)  # (..., B)
        h = 1.0 / (self.alpha + r)
        bh = self.beta_hat * h
        y = z + bh.unsqueeze(-1) * diff
        d = z.shape[-1]
        # 1 + β̂h + β̂h'r = 1 + β̂α/(α + r)², positive for β̂ ≥ −α
        log_det = (d - 1) * torch.log1p(bh) + torch.log1p(self.beta_hat * self.alpha * h.square())
        return y, log_det

    def _inverse(self, y: Tensor) -> Tensor:
        """Closed form: with ρ = ‖y − z_0‖ = r (1 + β̂/(α + r)), r solves r² + (α + β̂ − ρ) r − ρα = 0,
        whose root ≥ 0 is r = (−(α + β̂ − ρ) + √((α + β̂ − ρ)² + 4ρα)) / 2; then
        z − z_0 = (y − z_0) / (1 + β̂/(α + r))."""
        diff = y - self.z0
        rho = diff.norm(dim=-1)
        p = self.alpha + self.beta_hat - rho
        r = 0.5 * (-p + torch.sqrt(p.square() + 4 * rho * self.alpha))
        return self.z0 + diff / (1 + self.beta_hat / (self.alpha + r)).unsqueeze(-1)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in) (Germain et al. 2015)."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """A masked autoencoder for distribution estimation (Germain et al. 2015) with a context input:
    (z (..., d), h (..., C)) -> (m, s), each (..., d), where m_i and s_i depend on h and on the
    z_j whose place in ``order`` comes before i's, never on z_i itself or later ones.

    Degrees: input i has degree order[i] + 1 (1..d); hidden units get degrees 1..d−1 in turn; a
    hidden unit sees the inputs of degree ≤ its own, an output of degree k the hidden units of
    degree < k. The context connects to every unit of the first layer.
    """

    def __init__(self, d: int, context: int, hidden: Sequence[int], order: Tensor, activation: str) -> None:
        super().__init__()
        deg_in = order + 1  # (d,)
        layers: list[nn.Module] = []
        prev = deg_in
        for i, width in enumerate(hidden):
            deg = torch.arange(width) % max(1, d - 1) + 1  # (width,)
            mask = (deg[:, None] >= prev[None, :]).float()  # (width, in)
            if i == 0:
                mask = torch.cat([mask, torch.ones(width, context)], dim=1)  # the context reaches every unit
            layers += [MaskedLinear(mask), activation_layer(activation)]
            prev = deg
        deg_out = torch.cat([deg_in, deg_in])  # m and s
        layers.append(MaskedLinear((deg_out[:, None] > prev[None, :]).float()))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        lead = torch.broadcast_tensors(z[..., 0], h[..., 0])[0].shape  # z's and h's leading dims, broadcast
        out = self.net(torch.cat([z.expand(*lead, z.shape[-1]), h.expand(*lead, h.shape[-1])], dim=-1))  # (..., 2d)
        m, s = out.chunk(2, dim=-1)
        return m, s


# σ = sigmoid(s + IAF_GATE_BIAS): near 1 at the start, so each step starts close to the identity
# (Kingma et al. 2016, appendix: "initialize ... so that σ is sufficiently positive, close to +1 or +2").
IAF_GATE_BIAS = 2.0


class IAFStep(FlowStep):
    """z ← σ ⊙ z + (1 − σ) ⊙ m, [m, s] = MADE(z, h), σ = sigmoid(s + 2) (Kingma et al. 2016, eq. 14);
    log |det ∂f/∂z| = Σ_i log σ_i (the Jacobian is triangular with σ on its diagonal).

    h: (B, C), the context of each data point; z (..., B, d).
    """

    def __init__(self, made: MADE, h: Tensor) -> None:
        super().__init__()
        self.made, self.h = made, h

    def _gate(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.made(z, self.h)
        return m, s + IAF_GATE_BIAS

    def forward_and_log_det(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self._gate(z)
        sigma = torch.sigmoid(s)
        return sigma * z + (1 - sigma) * m, F.logsigmoid(s).sum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        """d passes: after pass t the t first coordinates in the step's order are exact (each
        depends only on earlier ones), so after d passes z is."""
        z = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            m, s = self._gate(z)
            sigma = torch.sigmoid(s)
            z = (y - (1 - sigma) * m) / sigma
        return z


class FlowOptions(FamilyOptions):
    """Options of the planar and radial families."""

    flows: int = Field(4, ge=1, le=64, description="number K of flow steps after the Normal base")


class PlanarOptions(FlowOptions):
    """Options of the planar family. The default is 2 steps: on radial_gmm (2-D, −ELBO, 6000
    steps; benchmarks/bench_families.py) K = 2 reached IWAE NLL 2.96 against the plain VAE's
    3.03, while K = 4 trained to 3.46 and K = 8 collapsed (KL → 0, NLL 4.38)."""

    flows: int = Field(2, ge=1, le=64, description="number K of planar steps after the Normal base (more than 2 "
                       "trained worse on the 2-D sets: docs/models.md)")


class IAFOptions(FlowOptions):
    """Options of the iaf family."""

    flows: int = Field(2, ge=1, le=16, description="number of IAF steps (each reverses the order of the last)")
    context: int = Field(16, ge=1, le=1024, description="width of the context vector h the encoder outputs")
    hidden: list[int] = Field([64, 64], min_length=1, description="hidden widths of each step's masked network")


class FlowVAE(VAE):
    """The VAE with q(z|x) = f_K ∘ … ∘ f_1 # N(μ(x), diag σ²(x)): ``encode`` returns a
    ``TransformedDistribution``; its KL to the prior has no closed form, so objectives use the
    Monte Carlo estimate log q(z|x) − log p(z) at the drawn z. The encoder outputs μ, the scale
    and ``extra_outputs`` more numbers per point, the flow's parameters (or IAF's context)."""

    options: ClassVar[type[FamilyOptions] | None] = FlowOptions

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super(VAE, self).__init__()  # VAE.__init__ would build an encoder with 2d outputs
        opts = config.family_options(cast(type[FlowOptions], self.options))
        self._check_options(config, opts)
        self.flow_options = opts
        d = config.latent_dim
        self._build(config, x_dim, cond_dim, cond_embed, encoder_out=2 * d + self.extra_outputs(d, opts))

    def _check_options(self, config: ModelConfig, opts: Any) -> None:
        """Refuse options that cannot apply to this config (a message that names what to use)."""

    def extra_outputs(self, d: int, opts: Any) -> int:
        raise NotImplementedError

    def steps(self, params: Tensor) -> list[FlowStep]:
        """The flow of each point from the encoder's extra outputs (B, extra_outputs)."""
        raise NotImplementedError

    def encode(self, x: Tensor, c: Tensor | None = None) -> TransformedDistribution:  # type: ignore[override]
        """q(z|x, c): (B, D) -> a TransformedDistribution with batch shape (B,), event shape (d,)."""
        self._check_width(x, self.x_dim, "x", "x_dim")
        d = self.latent_dim
        out = self.encoder(self._with_condition(x, c))  # (B, 2d + extra)
        base = self._normal_posterior(out[..., :d], out[..., d:2 * d])
        steps: list[Transform] = [*self.steps(out[..., 2 * d:])]
        return TransformedDistribution(base, steps, validate_args=False)

    def embed(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """f(μ(x)): the flow applied to its base's mean, (B, D) -> (B, d). q has no closed-form
        mean; where the flow is mild this is near the mode of q(z|x)."""
        return push_forward(self.encode(x, c), self.encode(x, c).base_dist.mean)

    def base_and_flow(self, x: Tensor, c: Tensor | None = None) -> tuple[Independent, TransformedDistribution]:
        """The Normal base N(μ(x), diag σ²(x)) and q(z|x) itself, for figures that show what the flow did."""
        q_z = self.encode(x, c)
        base = q_z.base_dist
        assert isinstance(base, Independent)
        return base, q_z


def push_forward(q_z: TransformedDistribution, z0: Tensor) -> Tensor:
    """f_K ∘ … ∘ f_1(z0) for the flow of ``q_z``: (..., B, d) -> (..., B, d)."""
    z = z0
    for step in q_z.transforms:
        z = step(z)
    return z


class PlanarVAE(FlowVAE):
    """``planar``: K planar steps, each with its own (u, w, b) per data point (K(2d + 1) encoder outputs)."""

    options: ClassVar[type[FamilyOptions] | None] = PlanarOptions

    def extra_outputs(self, d: int, opts: Any) -> int:
        return opts.flows * (2 * d + 1)

    def steps(self, params: Tensor) -> list[FlowStep]:
        d = self.latent_dim
        chunks = params.unflatten(-1, (self.flow_options.flows, 2 * d + 1))  # (B, K, 2d + 1)
        return [PlanarStep(p[..., :d], p[..., d:2 * d], p[..., 2 * d]) for p in chunks.unbind(-2)]


class RadialVAE(FlowVAE):
    """``radial``: K radial steps, each with its own (z_0, α, β) per data point (K(d + 2) encoder outputs)."""

    def extra_outputs(self, d: int, opts: Any) -> int:
        return opts.flows * (d + 2)

    def steps(self, params: Tensor) -> list[FlowStep]:
        d = self.latent_dim
        chunks = params.unflatten(-1, (self.flow_options.flows, d + 2))  # (B, K, d + 2)
        return [RadialStep(p[..., :d], p[..., d], p[..., d + 1]) for p in chunks.unbind(-2)]


class IAFVAE(FlowVAE):
    """``iaf``: K inverse autoregressive steps (Kingma et al. 2016, eq. 14), each a masked
    network of (z, h), h the context the encoder outputs (``context`` numbers per point). Steps
    alternate between the orders 1..d and d..1, so every coordinate can depend on every other."""

    options: ClassVar[type[FamilyOptions] | None] = IAFOptions

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__(config, x_dim, cond_dim, cond_embed)
        opts = config.family_options(IAFOptions)
        d = config.latent_dim
        order = torch.arange(d)
        self.made = nn.ModuleList(
            MADE(d, opts.context, opts.hidden, order if i % 2 == 0 else order.flip(0), config.activation)
            for i in range(opts.flows)
        )

    def _check_options(self, config: ModelConfig, opts: Any) -> None:
        if config.latent_dim < 2:
            raise InputError(f"model iaf with latent_dim = {config.latent_dim}: an autoregressive flow needs at least "
                             "2 latent dimensions (in 1-D each step is an affine map of z_0 given x, which the "
                             "Normal q(z|x) already is); use --latent-dim 2 or more, or --model planar / radial")

    def extra_outputs(self, d: int, opts: Any) -> int:
        return opts.context

    def steps(self, params: Tensor) -> list[FlowStep]:
        h = params  # (B, context)
        return [IAFStep(cast(MADE, made), h) for made in self.made]


def log_abs_det_jacobian(q_z: TransformedDistribution, z0: Tensor) -> Tensor:
    """Σ_k log |det ∂f_k/∂z_{k−1}| along the flow of ``q_z`` from z0: (..., B)."""
    total = torch.zeros(z0.shape[:-1], dtype=z0.dtype, device=z0.device)
    z = z0
    for step in q_z.transforms:
        y = step(z)
        total = total + step.log_abs_det_jacobian(z, y)
        z = y
    return total


def is_flow_posterior(q_z: Distribution) -> bool:
    """Whether ``q_z`` is a Normal base pushed through flow steps (this module's families)."""
    return isinstance(q_z, TransformedDistribution) and all(isinstance(t, FlowStep) for t in q_z.transforms)


__all__ = ["FlowOptions", "FlowStep", "FlowVAE", "IAFOptions", "IAFStep", "IAFVAE", "MADE", "MaskedLinear",
           "PlanarOptions", "PlanarStep", "PlanarVAE", "RadialStep", "RadialVAE", "is_flow_posterior",
           "log_abs_det_jacobian", "planar_u_hat", "push_forward"]
