"""Posterior-collapse diagnostics: how much the code z says about x, and how far the
aggregate posterior is from the prior.

"ELBO surgery" (Hoffman & Johnson 2016) splits the average KL term of the ELBO over a data
set of N points into two parts, with the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n):

    E_x KL(q(z|x) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z))                        (HJ16, eq. 3)

The mutual information I_q(x; z) is what the code carries about x; the marginal KL is how far
the codes of all points together are from the prior. A collapsed posterior, q(z|x) = p(z) for
every x, has both at 0; a model whose KL term is large but whose mutual information is ~0 has
a code that ignores x. ``elbo_surgery`` estimates both on held-out points, with standard
errors, and ``collapse_verdict`` says in words whether the posterior has collapsed and what
to try.

The estimators use only ``log_prob`` of the model's distributions and one draw per point,
so they hold for any posterior family (diagonal Normal, flows, mixtures), not only Normals;
a diagonal Normal takes an equivalent, faster route to the same numbers (``_log_q_block``).
The one draw per point goes through ``vaelab.distributions.rsample`` with an explicit generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from vaelab.distributions import rsample
from vaelab.errors import InputError
from vaelab.models.base import VariationalModel

if TYPE_CHECKING:
    from vaelab.config import RunConfig

# The mutual information, in nats, below which the code is said to carry nothing about x:
# 0.1 nats is a seventh of a bit, less than the code of a single coin flip with a 98 / 2 bias.
# The estimate counts as near 0 only when its upper confidence limit MI + 2·SE is below this,
# so a noisy estimate on few points is not called collapsed on its mean alone.
MI_COLLAPSE_NATS = 0.1
# How many standard errors the upper confidence limit adds (about a 97.5 % one-sided limit).
COLLAPSE_SE_FACTOR = 2.0
# Floats one block of the N x N log-density matrix may hold while it is computed (64 MiB in
# float32): log_prob's elementwise terms are (rows, columns, d) before they are summed over d.
BLOCK_BUDGET = 2**24
# At most this many points enter the estimate for a posterior without the diagonal-Normal
# shortcut: scoring point i's z under point n's posterior costs a full log_prob (for a flow, an
# inversion), N² of them; 10,000 test points of an IAF run took hours.
GENERIC_POINTS = 2000
# The advice when the posterior has collapsed and the run's config is not at hand; the flags are
# `vaelab train`'s, given so that a VAE of any objective takes them (free bits need the ELBO:
# --free-bits alone is refused with --objective iwae). With the config, ``collapse_advice``
# keeps only what that run would take.
COLLAPSE_ADVICE = (
    "try KL warm-up (--beta-schedule warmup --warmup-epochs N), free bits on the ELBO (--objective elbo "
    "--free-bits λ), or a lower --beta"
)


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate in nats with its standard error (std of the per-point terms / √N)."""

    value: float
    se: float


@dataclass(frozen=True)
class Surgery:
    """The ELBO-surgery terms of a model on N held-out points, all from the same draws.

    ``avg_kl`` is the one-sample estimate of E_x KL(q(z|x) ‖ p(z)) on those draws; per point it
    is exactly the sum of the other two terms' per-point values, so
    ``mutual_info.value + marginal_kl.value == avg_kl.value`` up to rounding.
    """

    mutual_info: Estimate
    marginal_kl: Estimate
    avg_kl: Estimate
    n: int
    of: int | None = None  # the points given, where only the first n of them entered (GENERIC_POINTS)

    def as_metrics(self) -> dict[str, float]:
        """The keys ``evaluate`` writes to metrics.json."""
        out: dict[str, float] = {"mutual_info": self.mutual_info.value, "mutual_info_se": self.mutual_info.se,
                                 "marginal_kl": self.marginal_kl.value, "marginal_kl_se": self.marginal_kl.se}
        if self.of is not None and self.of > self.n:  # say on how many points, where not all of them
            out["mutual_info_points"] = self.n
        return out


def _draw(q_z: Distribution, generator: torch.Generator) -> Tensor:
    """One z ~ q(z|x) per point, (B, d), from ``generator`` (never the global RNG): the one
    place this module draws, through ``vaelab.distributions.rsample``, so every posterior
    family that can be sampled works here."""
    return rsample(q_z, (), generator)


def _diagonal_normal(q_z: Distribution) -> bool:
    """Whether ``_log_q_block`` scores ``q_z`` by the matrix-product shortcut (a (C, d) diagonal Normal)."""
    return (isinstance(q_z, Independent) and isinstance(q_z.base_dist, Normal)
            and q_z.reinterpreted_batch_ndims == 1 and q_z.base_dist.loc.ndim == 2)


def _log_q_block(q_z: Distribution, z: Tensor) -> Tensor:
    """log q(z_i|x_n) for every draw z_i (R, d) and every posterior n of ``q_z`` (batch (C,)): (R, C), float64.

    Any family goes through its own ``log_prob``, broadcasting (R, 1, d) against the batch (C,).
    A diagonal Normal takes a shortcut that is the same number: expanding the square in
    log N(z; μ, diag σ²) = −½ Σ_d (z_d − μ_d)²/σ_d² − Σ_d log σ_d − (d/2) log 2π gives
    −½ [z² · (1/σ²) − 2 z · (μ/σ²) + Σ_d μ_d²/σ_d²] − ..., two (R, d) x (d, C) matrix products
    instead of an (R, C, d) tensor (about 30x faster at N = 10,000, d = 16). It runs in float64 so
    the expanded square does not lose the digits that a float32 difference of large terms would.
    """
    if _diagonal_normal(q_z):
        assert isinstance(q_z, Independent) and isinstance(q_z.base_dist, Normal)
        loc = q_z.base_dist.loc.double()  # (C, d)
        scale = q_z.base_dist.scale.double().expand_as(loc)  # (C, d)
        z = z.double()
        precision = scale.pow(-2)  # (C, d)
        quad = z.square() @ precision.T - 2.0 * z @ (loc * precision).T  # (R, C)
        quad = quad + (loc.square() * precision).sum(-1)  # + Σ_d μ²/σ², (C,)
        norm = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)  # (C,)
        return -0.5 * quad - norm
    return q_z.log_prob(z.unsqueeze(1)).double()  # (R, 1, d) against batch (C,) -> (R, C)


def _mean_se(values: Tensor) -> Estimate:
    """Mean of per-point values (N,) and its standard error std/√N (NaN for one point)."""
    n = values.shape[0]
    se = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
    return Estimate(float(values.mean()), se)


@torch.no_grad()
def elbo_surgery(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator,
    batch_size: int = 500, posteriors: list[Distribution] | None = None,
) -> Surgery:
    """Estimate I_q(x; z) and KL(q(z) ‖ p(z)) on the N points ``x`` (N, D) (Hoffman & Johnson 2016).

    ``model`` needs ``encode(x, c) -> q(z|x, c)`` (batch shape (B,), event shape (d,)) and
    ``prior``; ``c`` (N, cond_dim) gives each point its own condition. The encoder runs once per
    point, in batches of ``batch_size``; one z_i ~ q(z|x_i) is drawn per point from ``generator``.

    Estimator: the aggregate posterior is the mixture of the N held-out posteriors,

        log q(z_i) ≈ logsumexp_n log q(z_i|x_n) − log N,

    computed in blocks of the N x N matrix log q(z_i|x_n) so that N = 10,000 fits in memory.
    Per point, t_i = log q(z_i|x_i) − log q(z_i) and m_i = log q(z_i) − log p(z_i|c_i);
    ``mutual_info`` is mean t_i and ``marginal_kl`` mean m_i, each with its standard error
    std/√N. Their sum per point, log q(z_i|x_i) − log p(z_i|c_i), is a one-sample estimate of
    KL(q(z|x_i) ‖ p(z|c_i)), so the two add up to the average KL term on the same draws
    (``avg_kl``).

    Bias: N is the number of points given (all of them; ``evaluate`` passes the whole test
    split), or the first ``GENERIC_POINTS`` of them where q(z|x) is not a diagonal Normal (a flow
    scores another point's z by inverting itself: N² inversions; ``n`` and ``mutual_info_points``
    say how many entered). Because the mixture contains q(z_i|x_i) itself, t_i ≤ log N: the mutual
    information estimate can never exceed log N, and in expectation it is a lower bound on
    the true I_q(x; z) (it is the InfoNCE bound with the encoder as critic, Poole et al. 2019),
    which tightens as N grows and is close when I_q ≪ log N. ``marginal_kl`` is biased up by
    the same amount, since the sum is unbiased. The standard errors cover the spread over
    points and draws, not this bias.

    Conditional models: q(z) aggregates q(z|x_n, c_n) over the (x, c) pairs, so
    ``mutual_info`` is I_q((x, c); z); ``marginal_kl`` is E[log q(z) − log p(z|c)], which is
    KL(q(z) ‖ p(z)) when the prior ignores c (and can be negative when it does not).

    ``posteriors``: the caller's q(z|x) of the consecutive batches of ``batch_size`` points
    (``model.encode`` of each), when it has them already (``evaluate`` does), so the encoder
    does not run again; the numbers are the same as without.

    Raises:
        InputError: no points, c that does not give one row per point, a model without
            ``encode`` (an autoencoder has no posterior), a batch_size that is not positive.
    """
    if not callable(getattr(model, "encode", None)):
        raise InputError(f"{type(model).__name__} has no posterior (no encode method): the collapse "
                         "diagnostics apply to variational models only")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = x.shape[0]
    if n == 0:
        raise InputError("x has no points: the collapse diagnostics need held-out points")
    if c is not None and c.shape[0] != n:
        raise InputError(f"c has {c.shape[0]} rows for {n} points; give one condition per point")
    if posteriors is not None and len(posteriors) != -(-n // batch_size):
        raise InputError(f"posteriors holds {len(posteriors)} batches; {n} points in batches of {batch_size} "
                         f"make {-(-n // batch_size)}")

    # Encode once per point; keep each batch's q(z|x_n) (its parameters are only B x d numbers).
    q_batches: list[Distribution] = []
    z_parts: list[Tensor] = []
    log_p: list[Tensor] = []
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size]
        cb = None if c is None else c[start:start + batch_size]
        q_z = model.encode(xb, cb) if posteriors is None else posteriors[start // batch_size]
        z = _draw(q_z, generator)  # (B, d)
        q_batches.append(q_z)
        z_parts.append(z)
        log_p.append(model.prior(cb).log_prob(z).double())  # (B,)
    # Other posteriors than diagonal Normals (flows, mixtures, point masses) score every pair with a
    # full log_prob: the first GENERIC_POINTS points alone (draws and mixture), so the bound on the
    # mutual information is log GENERIC_POINTS instead of log N (as_metrics says so).
    given = n
    if not all(_diagonal_normal(q) for q in q_batches):
        n = min(n, GENERIC_POINTS)
    z_all = torch.cat(z_parts)[:n]  # (N, d)
    log_prior = torch.cat(log_p)[:n]  # (N,)
    d = z_all.shape[-1] if z_all.ndim > 1 else 1

    # log q(z_i) by blocks: rows i (the draws) x columns n (the posteriors of one encoder batch).
    widest = max(len(z) for z in z_parts)
    rows = max(1, BLOCK_BUDGET // (widest * d))
    log_q_agg = torch.empty(n, dtype=torch.float64, device=z_all.device)
    log_q_own = torch.empty(n, dtype=torch.float64, device=z_all.device)
    for r0 in range(0, n, rows):
        z_rows = z_all[r0:r0 + rows]  # (R, d)
        r1 = r0 + len(z_rows)
        # Each block's logsumexp over its columns, (R, number of column batches), then over those.
        partial: list[Tensor] = []
        c0 = 0
        for q_z in q_batches:
            if c0 >= n:  # past the points that enter the estimate
                break
            block = _log_q_block(q_z, z_rows)[:, :n - c0]  # (R, C)
            c1 = c0 + block.shape[1]
            # The diagonal log q(z_i|x_i) comes from the same matrix, so a posterior that ignores x
            # gives t_i = 0 exactly rather than up to rounding differences.
            lo = max(r0, c0)
            i = torch.arange(lo, max(lo, min(r1, c1)), device=z_all.device)  # rows that are also columns
            log_q_own[i] = block[i - r0, i - c0]
            partial.append(torch.logsumexp(block, dim=1))
            c0 = c1
        log_q_agg[r0:r1] = torch.logsumexp(torch.stack(partial, dim=1), dim=1) - math.log(n)
    t = log_q_own - log_q_agg  # (N,) per-point mutual information terms
    m = log_q_agg - log_prior  # (N,) per-point marginal KL terms
    return Surgery(mutual_info=_mean_se(t), marginal_kl=_mean_se(m), avg_kl=_mean_se(t + m), n=n, of=given)


def mutual_info(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator,
    batch_size: int = 500,
) -> Estimate:
    """I_q(x; z) under the aggregate posterior of the N points ``x`` (N, D), in nats, with its
    standard error. See ``elbo_surgery`` for the estimator and its bias (≤ log N)."""
    return elbo_surgery(model, x, c, generator=generator, batch_size=batch_size).mutual_info


def marginal_kl(
    model: VariationalModel, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator,
    batch_size: int = 500,
) -> Estimate:
    """KL(q(z) ‖ p(z)) for the aggregate posterior of the N points ``x`` (N, D), in nats, with its
    standard error. See ``elbo_surgery``: ``mutual_info + marginal_kl`` is the average KL term."""
    return elbo_surgery(model, x, c, generator=generator, batch_size=batch_size).marginal_kl


# A model whose held-out NLL is within this many nats of the true NLL (upper confidence limit
# gap + 2·SE) fits the data: a z it leaves unused is then not needed, and nothing is to be fixed.
GOOD_FIT_NATS = 0.02
# The MI estimator's terms are each ≤ log N (the mixture holds q(z_i|x_i) itself): above this share
# of log N the estimate is saturated, a lower bound, and the marginal KL = KL − MI is over-estimated.
MI_SATURATION_SHARE = 0.9


@dataclass(frozen=True)
class Verdict:
    """Whether the posterior has collapsed, and the sentence that says so (with advice if it has).

    ``needed``: False when the code is unused but the model fits the data anyway (its held-out
    NLL is at the true one: the condition and the observation noise explain the data), so the
    unused z is an optimum, not a failure to fix.
    """

    collapsed: bool
    text: str
    needed: bool = True


def _fits_the_data(metrics: Mapping[str, Any]) -> bool:
    """Whether the held-out NLL is confidently within ``GOOD_FIT_NATS`` of the true NLL."""
    gap, se = metrics.get("nll_gap"), metrics.get("nll_gap_se", 0.0)
    if gap is None or not math.isfinite(float(gap)) or not math.isfinite(float(se)):
        return False
    return float(gap) + COLLAPSE_SE_FACTOR * float(se) < GOOD_FIT_NATS


def mi_saturation_note(metrics: Mapping[str, Any]) -> str:
    """A caveat when I(x; z) is near log N, the most the estimator can give on N points, else ""."""
    n, mi = metrics.get("n"), metrics.get("mutual_info")
    if not n or mi is None or int(n) < 2 or float(mi) <= MI_SATURATION_SHARE * math.log(int(n)):
        return ""
    return (f" I(x; z) = {float(mi):.3f} nats is near ln N = {math.log(int(n)):.3f}, the most this estimator can "
            f"give on N = {int(n)} test points: it is a lower bound, and the marginal KL (= KL − I(x; z)) is "
            "over-estimated by as much; evaluate on more points (--n-test, or a larger test split) to tighten both.")


def idle_layers_note(metrics: Mapping[str, Any], config: RunConfig | None = None) -> str:
    """A sentence naming the latent groups (a ladder's layers z_i) that carry almost nothing, else "".

    A layer is idle when its held-out KL, KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1})) averaged over x
    and the layers above (``kl_per_group``), is confidently below ``MI_COLLAPSE_NATS``: KL + 2·SE
    (``kl_per_group_se``) < 0.1 nats. Its posterior is then its prior whatever x, the usual fate of
    the top layers of a hierarchical VAE trained without help (Sønderby et al. 2016). Nothing is
    said when every layer is idle: the posterior as a whole has collapsed, and the verdict says so.
    """
    kl, se = metrics.get("kl_per_group"), metrics.get("kl_per_group_se") or {}
    if not kl:
        return ""
    upper = {g: float(value) + COLLAPSE_SE_FACTOR * float(se.get(g, 0.0)) for g, value in kl.items()}
    idle = [g for g, limit in upper.items() if math.isfinite(limit) and limit < MI_COLLAPSE_NATS]
    if not idle or len(idle) == len(kl):
        return ""
    names = ", ".join(f"z_{g} (KL {float(kl[g]):.3f} nats)" for g in idle)
    advice = collapse_advice(config, layers=True)
    return (f" Unused layer{'s' if len(idle) > 1 else ''}: {names}, below {MI_COLLAPSE_NATS:g} nats: "
            f"q(z_i | z_(i+1), x) is the prior p(z_i | z_(i+1)) whatever x."
            + (f" To use {'them' if len(idle) > 1 else 'it'}, {advice}." if advice else ""))


def _takes(config: RunConfig, overrides: dict[str, Any]) -> bool:
    """Whether ``vaelab train`` would take ``overrides``, given as flags, for the run ``config``:
    the config with them is valid, and each of them applies to it (its rule in
    ``vaelab.settings.SETTING_RULES``, which ``check_settings`` applies to every setting given).
    Only their own rules are asked: a saved config counts every field as given."""
    from vaelab.settings import SETTING_RULES

    try:
        changed = config.with_overrides(overrides)
    except InputError:
        return False
    return all(SETTING_RULES[f"{section}.{field}"](changed) is None
               for section, values in overrides.items() for field in values)


def collapse_advice(config: RunConfig | None = None, *, layers: bool = False) -> str:
    """What to try against a collapsed posterior, as flags of `vaelab train`: KL warm-up, free
    bits, a lower β. With the run's ``config``, only what that run would take (each suggestion
    is checked against the rules of ``vaelab.settings`` on the run with it): free bits for an IWAE run
    come with --objective elbo, an objective without a KL term gets none of them. Without a
    config, ``COLLAPSE_ADVICE``. ``layers``: free bits per layer (--free-bits-group layer), for
    the unused layers of a hierarchical model. "" when nothing applies."""
    group = " --free-bits-group layer" if layers else ""
    if config is None:
        if layers:
            return f"try free bits per layer (--objective elbo --free-bits λ{group}) or KL warm-up " \
                   "(--beta-schedule warmup --warmup-epochs N)"
        return COLLAPSE_ADVICE
    train = config.train
    group_over = {"free_bits_group": "layer"} if layers else {}
    tips = []
    if train.free_bits == 0:
        if _takes(config, {"train": {"free_bits": 0.5, **group_over}}):
            tips.append(f"free bits (--free-bits λ{group})")
        elif _takes(config, {"train": {"objective": "elbo", "free_bits": 0.5, **group_over}}):
            tips.append(f"free bits, which floor the ELBO's KL (--objective elbo --free-bits λ{group})")
    elif _takes(config, {"train": {"free_bits": 2 * train.free_bits, **group_over}}):
        tips.append(f"more free bits (a --free-bits above {train.free_bits:g}{group})")
    if train.beta_schedule == "constant" and _takes(config, {"train": {"beta_schedule": "warmup",
                                                                      "warmup_epochs": 1}}):
        tips.append("KL warm-up (--beta-schedule warmup --warmup-epochs N)")
    if not layers and train.beta > 0 and _takes(config, {"train": {"beta": train.beta / 2}}):
        tips.append(f"a lower --beta (this run: {train.beta:g})")
    if not tips:
        return ""
    return "try " + (tips[0] if len(tips) == 1 else ", ".join(tips[:-1]) + f"{',' if len(tips) > 2 else ''} or "
                     + tips[-1])


def collapse_verdict(metrics: Mapping[str, Any], config: RunConfig | None = None) -> Verdict | None:
    """The collapse verdict for a run's metrics (``mutual_info``, ``mutual_info_se``, and
    ``active_units`` / ``latent_dim`` / ``nll_gap`` / ``condition`` / ``n`` / ``kl_per_group`` when
    present); None
    when the metrics have no mutual information (an autoencoder, or metrics written before
    these diagnostics). ``config``: the run's, so that the advice names only flags that the run
    would take (``collapse_advice``); without it, advice that suits a VAE of either objective.

    Collapsed: no active unit (Burda et al. 2016: Cov_x E_q[z_u] > 0.01 for none of the units),
    or a mutual information confidently near 0, MI + 2·SE < ``MI_COLLAPSE_NATS`` (0.1 nats).
    A collapsed model whose NLL is at the true NLL (``GOOD_FIT_NATS``) does not need z: the
    verdict says so and gives no advice. An MI near ln N carries the estimator's caveat; a model
    with latent groups (a ladder's layers) whose posterior has not collapsed names its unused
    layers (``idle_layers_note``).
    """
    if "mutual_info" not in metrics:
        return None
    if not math.isfinite(float(metrics["mutual_info"])):
        return None  # a broken model (evaluate_run refuses its metrics): no verdict on NaN (audit TR115)
    mi = float(metrics["mutual_info"])
    se = float(metrics.get("mutual_info_se", float("nan")))
    active = metrics.get("active_units")
    reasons = []
    if active == 0:
        reasons.append("no latent unit is active")
    # A NaN estimate (a diverged model) or standard error (a single point) decides nothing.
    if mi + COLLAPSE_SE_FACTOR * se < MI_COLLAPSE_NATS:
        reasons.append(f"the code carries almost no information about x (I(x; z) = {mi:.3f} ± {se:.3f} nats, "
                       f"below {MI_COLLAPSE_NATS:g} nats)")
    if reasons and _fits_the_data(metrics):
        explains = "the condition c and the observation noise explain" if metrics.get("condition") else \
            "the observation noise alone explains"
        gap, gap_se = float(metrics["nll_gap"]), float(metrics.get("nll_gap_se", 0.0))
        return Verdict(True, f"z is unused ({' and '.join(reasons)}) because it is not needed: {explains} the "
                             f"data, and the held-out NLL is at the true one (gap {gap:.2g} ± {gap_se:.2g} nats). "
                             "q(z|x) = p(z) is then the optimum of the ELBO; there is nothing to fix.",
                       needed=False)
    if reasons:
        advice = collapse_advice(config)
        return Verdict(True, f"The posterior has collapsed: {' and '.join(reasons)}; q(z|x) is nearly the "
                             "same for every x (whatever its mean and spread: it need not be the prior N(0, I)), "
                             "so the decoder ignores z." + (f" To fix it, {advice}." if advice else ""))
    units = f" with {active} of {metrics['latent_dim']} latent units active" if (
        active is not None and "latent_dim" in metrics) else ""
    return Verdict(False, f"No posterior collapse: the code carries I(x; z) = {mi:.3f} ± {se:.3f} nats about "
                          f"x{units}.{mi_saturation_note(metrics)}{idle_layers_note(metrics, config)}")
