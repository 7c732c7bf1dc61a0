"""Honest held-out evaluation: ELBO, IWAE log-likelihood, KL per latent dimension, active units,
and, where the data density is known exactly, the gap between the model's NLL and the true one.

Two levels:

* ``evaluate(model, data)``: the metrics of a model on a data set you hand it.
* ``evaluate_run(run)``: a saved run evaluated exactly as ``vaelab eval`` does it (the
  binarized test view of Bernoulli image runs, each test point's condition for conditional
  runs, the conditional true density, conditioning accuracy), optionally written to
  ``metrics.json``. The CLI only prints what this returns.

Image runs can add the sample quality of ``vaelab.quality`` (``quality_samples``): a Fréchet
distance, precision / recall and density / coverage between samples and the test split, in the
feature space of a classifier trained once per dataset, each beside its real-vs-real floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from torch.distributions import Distribution

from vaelab import checkpoint as ckpt
from vaelab import distributed
from vaelab.checkpoint import METRICS_FILE, Run, RunDirError, write_metrics
from vaelab.conditions import conditional_metrics
from vaelab.config import check_seed_option
from vaelab.data.dataset import Dataset
from vaelab.data.download import dataset_folder, resolve_data_dir
from vaelab.data.mnist import locate_dataset
from vaelab.data.pixels import eval_view, resolve_binarize
from vaelab.data.registry import DATASETS, load_dataset
from vaelab.devices import pick_device
from vaelab.diagnostics import elbo_surgery
from vaelab.distributed import World
from vaelab.distributions import enumerable_support, kl_is_closed_form, kl_per_dim, rsample
from vaelab.distributions import kl as kl_qp
from vaelab.errors import InputError
from vaelab.likelihoods import BernoulliLogits
from vaelab.models import LatentModel, VariationalModel
from vaelab.models.vq import VQVAE, bound_parts
from vaelab.objectives import decode_log_px, importance_terms, kl_groups, latent_groups
from vaelab.progress import EvalProgress
from vaelab.protocols import Protocol, ProtocolError, get_protocol
from vaelab.quality import ClassifierSettings, QualityError, check_quality_samples, sample_quality
from vaelab.sizes import check_eval_fits

# Burda et al. (2016), section 5.2: a latent unit is active when Cov_x(E_q[z_u]) > 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01
DEFAULT_K = 1000
# Floats the decoder may hold at once while scoring importance samples (64 MiB in float32).
CHUNK_BUDGET = 2**24
# Live tensors per decoded sample at the widest layer under no_grad: its input, its output
# and a temporary (e.g. log_prob's elementwise terms).
_LIVE_COPIES = 3
# More test points than this are refused before anything is drawn (the audit's --n-test 1e11).
MAX_EVAL_POINTS = 10_000_000
# A prior with at most this many values z (a discrete latent: K^N codes) gets the exact
# log p(x) = log Σ_z p(x|z) p(z) beside the IWAE bound: every code decoded for every test point.
MAX_ENUMERATION = 4096


class EvaluationError(InputError):
    """An evaluation that cannot give honest numbers: wrong arguments, data that does not fit the model."""


def generator_for(seed: int, device: torch.device | str = "cpu", *, option: str = "seed") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``, refusing seeds torch cannot hold.

    ``option`` names the setting in the error (``--seed`` in the CLI).
    """
    check_seed_option(seed, option)
    return torch.Generator(device=device).manual_seed(seed)


def decoder_width(model: LatentModel, c: Tensor | None = None) -> int:
    """Floats per decoded z at the decoder's widest point: the largest output of any layer that
    decoding one z runs through (condition embedding, hidden layers or conv feature maps, the
    likelihood's parameters), found by decoding a single z once."""
    widest = model.x_dim
    ref = next(model.parameters())

    def record(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal widest
        if isinstance(output, Tensor):
            widest = max(widest, output.numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            z = torch.zeros(1, model.latent_dim, device=ref.device, dtype=ref.dtype)
            model.decode(z, None if c is None else c[:1])
    finally:
        for handle in handles:
            handle.remove()
    return widest


def iwae_chunk(k: int, batch: int, width: int, budget: int | None = None) -> int:
    """How many of the k importance samples to decode at once for ``batch`` points when one
    decoded sample holds ``width`` floats at its widest layer (see ``decoder_width``): the
    activations of a chunk, chunk · batch · width · (a few live copies), stay near ``budget``
    floats (default ``CHUNK_BUDGET``)."""
    budget = CHUNK_BUDGET if budget is None else budget
    return max(1, min(k, budget // max(1, _LIVE_COPIES * batch * width)))


def bits_per_dim(metrics: dict[str, Any], dim: int) -> dict[str, float]:
    """The ELBO and IWAE NLL of ``metrics`` (nats per point) in bits per dimension.

    bits/dim = nats / (D · ln 2): the usual unit for images, comparable across image sizes.
    For binarized images with a Bernoulli likelihood it is the literature's number; for a
    Gaussian density on grey levels in [0, 1] it is a continuous density (it can be negative)
    and not comparable with the discrete 256-level bits/dim of e.g. PixelCNN papers.
    """
    scale = 1.0 / (dim * math.log(2.0))
    return {"elbo_bpd": -metrics["elbo"] * scale, "elbo_bpd_se": metrics["elbo_se"] * scale,
            "iwae_bpd": metrics["iwae_nll"] * scale, "iwae_bpd_se": metrics["iwae_nll_se"] * scale}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EvaluationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _mean_se(values: Tensor) -> tuple[float, float]:
    """Mean of per-point values (n,) and its standard error std/√n (NaN for a single point)."""
    n = values.shape[0]
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else float("nan")


def _as_dataset(data: Any) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Tensor):
        if data.ndim != 2:
            raise EvaluationError(f"data must be an (N, D) tensor or a Dataset, got a tensor of shape "
                                  f"{tuple(data.shape)}")
        return Dataset("tensor", data)
    raise EvaluationError(f"data must be a vaelab Dataset (e.g. vaelab.load_dataset(cfg.data, 'test')) or an "
                          f"(N, D) tensor, got {type(data).__name__}")


@torch.no_grad()
def evaluate(
    model: LatentModel, data: Dataset | Tensor, *, k: int | None = None, batch_size: int = 500,
    seed: int | None = None, c: Tensor | None = None, true_log_prob: Tensor | None = None,
    world: World | None = None, progress: bool = False, on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``data`` (held-out points, (N, D)); numbers in nats per data point.

    Every VAE number comes from the same ``k`` samples z_1..z_k ~ q(z|x) per point (default
    1000): ``iwae_nll`` = −L_k (Burda et al. 2016, eq. 8; an upper bound on −log p(x) that
    tightens with k), ``recon`` = −(1/k) Σ_i log p(x|z_i), ``kl`` = KL(q(z|x) ‖ p(z)) in
    closed form where torch has one for the pair (else the Monte Carlo mean of log q − log p
    over k further draws of q, and ``kl_estimator`` says so), ``elbo`` = −(recon + kl). Each
    has a standard error over the points (``*_se`` = std / √N), which covers both the spread
    of the data and the Monte Carlo noise left after averaging k samples; the ELBO's Monte
    Carlo noise per point is 1/√k of a one-sample estimate's. Also ``kl_per_dim`` (only where
    q and p both factorise over the latent dimensions), ``active_units`` (from the spread of
    ``model.embed``), ``latent_dim``, ``iwae_k``, ``eval_seed``, and the posterior-collapse
    diagnostics of every model with a posterior: ``mutual_info`` I_q(x; z) and ``marginal_kl``
    KL(q(z) ‖ p(z)) under the aggregate posterior of the N test points, with
    ``mutual_info_se`` and ``marginal_kl_se`` (see ``vaelab.diagnostics.elbo_surgery``; the
    mutual information cannot exceed log N).

    Latent groups (a model whose q(z|x) and p(z) split z into named groups, the layers z_1 … z_L
    of a ladder VAE; see ``vaelab.objectives``): ``kl_per_group`` {g: mean KL_g} with
    ``kl_per_group_se``, each the Monte Carlo mean over the k draws of log q_g − log p_g
    (``objectives.kl_groups``; they add up to ``kl``, which is then their sum per point), and
    ``active_units_per_group`` {g: active units among z_g's coordinates} (they add up to
    ``active_units``), and ``latent_groups`` {g: the number of coordinates of z_g}.

    Discrete latents (a prior that lists its values, ``enumerate_support``: the ``gumbel``
    family's K^N codes): where there are at most ``MAX_ENUMERATION`` of them, ``exact_nll`` =
    −mean log p(x) with log p(x) = log Σ_z p(x|z) p(z) summed over every code (no sampling;
    ``exact_nll_se`` its standard error over the points, ``exact_codes`` the number of codes);
    the IWAE bound stays beside it (``iwae_nll`` ≥ ``exact_nll`` up to noise). Where q(z|x)
    is discrete too and the data has labels (an unconditional run), ``code_label_ari`` is the
    adjusted Rand index between the most probable code argmax q(z|x) of each point and its
    label (1: the codes split the points exactly as the labels do, 0: chance), and
    ``codes_used`` the number of distinct most probable codes.

    Per-step scalars: a family that anneals scalars in training (``step_scalars``, e.g. the
    Gumbel-softmax temperature τ) reports the values the model holds (those of the last
    training step) as ``final_scalars`` {name: value}.

    True density: without ``c``, ``data.log_prob`` (when known) gives ``true_nll`` =
    −mean log p(x) and ``nll_gap`` = iwae_nll − true_nll (paired over the points, ≥ 0 up to
    noise for a perfect model) with ``nll_gap_se``. With ``c`` the model scores log p(x|c),
    so the gap needs the conditional density: pass it as ``true_log_prob`` (N,) (see
    ``evaluate_run``); without it no gap is reported. Image data (``data.image_shape``) also
    gets ``elbo_bpd``, ``iwae_bpd`` and their standard errors in bits per dimension.

    An autoencoder (no posterior) reports ``recon`` and ``recon_se`` only; it is
    deterministic, so ``k`` and ``seed`` are refused for it.

    ``world``: under torchrun (``vaelab.distributed.World`` of more than one process) every rank
    calls this with the same arguments; batch b is scored by rank b mod W, which alone decodes
    its k samples, and the per-point values are gathered, so every rank returns the numbers one
    process gives, bit for bit: each rank still encodes every batch and draws every batch's noise
    (cheap beside decoding), so the generator stands where one process has it at every batch.

    ``progress=True`` shows a line on stderr (``vaelab.progress``): the batch, the elapsed and
    the remaining time; nothing is printed without it. ``on_batch(done, total)`` is called with
    the number of batches done, 0 before the first one (so the total is known from the start),
    then after each; the collapse diagnostics follow the last batch. Neither changes a number.

    Raises:
        EvaluationError: k or batch_size not a positive integer, no points, data whose width
            is not the model's x_dim, conditions that do not match the points.
        DataSupportError: grey-level data under a Bernoulli likelihood (binarize it first).
    """
    data = _as_dataset(data)
    batch_size = _positive_int(batch_size, "batch_size")
    is_vae = isinstance(model, VariationalModel)
    if not is_vae and (k is not None or seed is not None):
        raise EvaluationError("an autoencoder's evaluation is deterministic: k and seed do not apply; drop them")
    k = _positive_int(DEFAULT_K if k is None else k, "k")
    seed = 0 if seed is None else seed
    n = len(data)
    if n == 0:
        raise EvaluationError(f"data {data.name!r} has no points to evaluate")
    if data.dim != model.x_dim:
        raise EvaluationError(f"data {data.name!r} has {data.dim} columns, but the model was trained on "
                              f"x_dim = {model.x_dim}; evaluate it on data of the same width")
    if c is not None and c.shape[0] != n:
        raise EvaluationError(f"c has {c.shape[0]} rows for {n} points; give one condition per point")
    if true_log_prob is not None and tuple(true_log_prob.shape) != (n,):
        raise EvaluationError(f"true_log_prob must have shape ({n},), got {tuple(true_log_prob.shape)}")
    model.likelihood.check_support(data.x, f"data {data.name!r}")
    if is_vae:  # before any work: k = 10^9 once ended in an allocator traceback, 10^7 in silence
        check_eval_fits(model, n, k, batch_size)
    model.eval()
    reporter = on_batch if isinstance(on_batch, EvalProgress) else None  # evaluate_run's line
    if not progress or reporter is not None or (world is not None and not world.is_main):
        return _evaluate(model, data, k, batch_size, seed, c, true_log_prob, world, on_batch, reporter)
    line = EvalProgress(_evaluating(n, k if is_vae else None), also=on_batch)
    try:
        metrics = _evaluate(model, data, k, batch_size, seed, c, true_log_prob, world, line, line)
    except BaseException:
        line.close()  # the line ends where it stopped; the error follows on a line of its own
        raise
    line.close("done")
    return metrics


def _evaluating(n: int, k: int | None) -> str:
    """What an evaluation scores, as its progress line names it."""
    return f"{n} points" + ("" if k is None else f", IWAE with k = {k}")


def _evaluate(
    model: LatentModel, data: Dataset, k: int, batch_size: int, seed: int, c: Tensor | None,
    true_log_prob: Tensor | None, world: World | None, on_batch: Callable[[int, int], None] | None,
    reporter: EvalProgress | None,
) -> dict[str, Any]:
    """``evaluate`` once its arguments are checked."""
    n = len(data)
    is_vae = isinstance(model, VariationalModel)
    device = next(model.parameters()).device
    generator = generator_for(seed, device)
    x = data.x.to(device)
    c = None if c is None else c.to(device)
    width = decoder_width(model, c)
    recon_pts: list[Tensor] = []
    kl_pts: list[Tensor] = []
    kl_dim_pts: list[Tensor] = []
    kl_group_pts: dict[str, list[Tensor]] = {}  # latent group -> its KL per point, batch by batch
    groups: dict[str, slice] | None = None
    kl_exact = per_dim = True  # every batch's KL closed form / split per latent dimension
    nll_pts: list[Tensor] = []
    exact_pts: list[Tensor] = []  # log p(x) summed over every code, where the prior lists them
    n_codes = 0
    modes: list[Tensor] = []  # argmax q(z|x), where q is discrete
    means: list[Tensor] = []
    posteriors: list[Distribution] = []  # q(z|x) of each batch: encoded once, shared with elbo_surgery
    sharded = world is not None and world.distributed
    n_batches = -(-n // batch_size)
    if on_batch is not None:
        on_batch(0, n_batches)
    for b, start in enumerate(range(0, n, batch_size)):
        if b and on_batch is not None:  # batch b - 1 is done (a batch ends at `continue` in some branches)
            on_batch(b, n_batches)
        xb = x[start:start + batch_size]
        cb = None if c is None else c[start:start + batch_size]
        # Under torchrun rank b mod W scores batch b; the others hold zeros there until the gather.
        mine = not sharded or b % cast(World, world).size == cast(World, world).rank
        skipped = torch.zeros(len(xb), dtype=torch.float64, device=device)  # (B,)
        if not is_vae:
            recon_pts.append(-model.decode(model.embed(xb, cb), cb).log_prob(xb).double() if mine else skipped)
            continue
        vae = cast(VariationalModel, model)
        q_z, prior = vae.encode(xb, cb), vae.prior(cb)
        posteriors.append(q_z)
        kl_d = kl_per_dim(q_z, prior)  # (B, d), or None where q or p does not factorise
        if kl_d is not None:
            kl_dim_pts.append(kl_d.double())
            kl_pts.append(kl_d.double().sum(1) if mine else skipped)
        else:
            per_dim = False
            # No closed form per dimension: the KL itself (closed form where one is registered,
            # else Monte Carlo from k draws of q, made before the importance samples).
            kl_exact = kl_exact and kl_is_closed_form(q_z, prior)
            z = None if kl_is_closed_form(q_z, prior) else rsample(q_z, (k,), generator)  # (k, B, d)
            by_group = None if z is None else kl_groups(q_z, prior, z)  # {g: (B,)} where z has groups
            if by_group is None:
                kl_pts.append(kl_qp(q_z, prior, z).double() if mine else skipped)
            else:  # the KL per point is the sum of its groups' (the same Monte Carlo draws)
                groups = latent_groups(q_z)
                for g, value in by_group.items():
                    kl_group_pts.setdefault(g, []).append(value.double() if mine else skipped)
                kl_pts.append(torch.stack([parts[-1] for parts in kl_group_pts.values()]).sum(0))
        means.append(vae.embed(xb, cb).double() if kl_d is None else q_z.mean.double())
        if getattr(q_z, "has_enumerate_support", False):
            modes.append(q_z.mode)  # (B, d): the most probable code of each point
        support = enumerable_support(prior, MAX_ENUMERATION)  # (n_z, [1,] d) or None
        n_codes = 0 if support is None else len(support)
        if not mine:  # another rank scores this batch: make its draws, decode nothing
            rsample(q_z, (k,), generator)  # (k, B, d): the importance samples' draws, as importance_terms makes them
            recon_pts.append(skipped)
            nll_pts.append(skipped)
            if support is not None:
                exact_pts.append(skipped)
            continue
        log_px, log_w = importance_terms(vae, xb, cb, k=k, generator=generator, q_z=q_z,
                                         chunk=iwae_chunk(k, len(xb), width))  # (k, B) each
        recon_pts.append(-log_px.double().mean(0))
        nll_pts.append(-(torch.logsumexp(log_w.double(), dim=0) - math.log(k)))
        if support is not None:
            exact_pts.append(exact_log_px(vae, xb, cb, prior, support, chunk=iwae_chunk(len(support), len(xb), width)))
    if on_batch is not None:
        on_batch(n_batches, n_batches)
    if sharded:  # every point's values from the rank that scored it (the others add zeros: exact)
        recon_pts = [distributed.sum_over_ranks(torch.cat(recon_pts))]
        if is_vae:
            nll_pts = [distributed.sum_over_ranks(torch.cat(nll_pts))]
            if exact_pts:
                exact_pts = [distributed.sum_over_ranks(torch.cat(exact_pts))]
            kl_pts = [distributed.sum_over_ranks(torch.cat(kl_pts))]
            kl_group_pts = {g: [distributed.sum_over_ranks(torch.cat(parts))] for g, parts in kl_group_pts.items()}
    recon = torch.cat(recon_pts)
    recon_mean, recon_se = _mean_se(recon)
    metrics: dict[str, Any] = {"n": n, "recon": recon_mean, "recon_se": recon_se}
    if not is_vae:
        return metrics
    kl = torch.cat(kl_pts)  # (n,)
    nll = torch.cat(nll_pts)
    mu = torch.cat(means)
    unit_var = mu.var(dim=0) if n > 1 else torch.zeros_like(mu[0])
    kl_mean, kl_se = _mean_se(kl)
    elbo_mean, elbo_se = _mean_se(-(recon + kl))
    nll_mean, nll_se = _mean_se(nll)
    metrics.update(
        kl=kl_mean, kl_se=kl_se, elbo=elbo_mean, elbo_se=elbo_se,
        iwae_k=k, iwae_nll=nll_mean, iwae_nll_se=nll_se, eval_seed=seed,
        **({"kl_per_dim": torch.cat(kl_dim_pts).mean(0).tolist()} if per_dim else {}),
        active_units=int((unit_var > ACTIVE_UNIT_THRESHOLD).sum()),
        latent_dim=model.latent_dim,
    )
    if groups is not None:  # KL and active units of each latent group (a ladder's layers)
        per_group = {g: _mean_se(torch.cat(parts)) for g, parts in kl_group_pts.items()}
        metrics.update(
            latent_groups={g: len(range(model.latent_dim)[cols]) for g, cols in groups.items()},  # g -> its size
            kl_per_group={g: mean for g, (mean, _) in per_group.items()},
            kl_per_group_se={g: se for g, (_, se) in per_group.items()},
            active_units_per_group={g: int((unit_var[cols] > ACTIVE_UNIT_THRESHOLD).sum())
                                    for g, cols in groups.items()},
        )
    if exact_pts:  # every code summed: the model's log p(x) itself, beside its IWAE bound
        exact_mean, exact_se = _mean_se(-torch.cat(exact_pts))
        metrics.update(exact_nll=exact_mean, exact_nll_se=exact_se, exact_codes=n_codes)
    if modes and c is None and data.labels is not None:
        metrics.update(code_label_agreement(torch.cat(modes), data.labels))
    scalars = model.step_scalars()
    if scalars:
        metrics["final_scalars"] = {name: float(getattr(model, name)) for name in scalars
                                    if isinstance(getattr(model, name, None), Tensor)}
    if not kl_exact:  # say how the KL was estimated where it is not exact
        metrics["kl_estimator"] = f"Monte Carlo, {k} draws of q(z|x) per point"
    if isinstance(model, VariationalModel):  # a posterior to diagnose (an autoencoder has none)
        if reporter is not None:
            reporter.note("mutual information and marginal KL over the test points")
        # Drawn after the importance samples, so adding these keys left the other numbers as they were.
        metrics.update(elbo_surgery(model, x, c, generator=generator, batch_size=batch_size,
                                    posteriors=posteriors).as_metrics())
    if data.image_shape is not None:
        metrics.update(bits_per_dim(metrics, data.dim))
    if isinstance(model, VQVAE):  # the bound's parts, with the uniform prior's bound beside them
        metrics.update(bound_parts(model, metrics, data.dim if data.image_shape is not None else None))
    if true_log_prob is None and c is None and data.log_prob is not None:
        true_log_prob = data.log_prob(data.x)
    if true_log_prob is not None:
        true_nll = -true_log_prob.double().to(nll.device)  # (n,)
        gap_mean, gap_se = _mean_se(nll - true_nll)
        metrics.update(true_nll=float(true_nll.mean()), nll_gap=gap_mean, nll_gap_se=gap_se)
    return metrics


def exact_log_px(
    model: VariationalModel, x: Tensor, c: Tensor | None, prior: Distribution, support: Tensor, *, chunk: int,
) -> Tensor:
    """log p(x) = log Σ_z p(x|z) p(z) over every value z of a discrete prior, per point: (B,) float64.

    ``support``: the prior's values, ``prior.enumerate_support(expand=False)``, (n_z, [1,] d);
    decoded ``chunk`` values at a time (each for all B points). No sampling: the model's own
    likelihood, which the IWAE bound approaches from below as k grows.
    """
    values = support.reshape(len(support), 1, support.shape[-1])  # (n_z, 1, d)
    log_pz = prior.log_prob(values).double()  # (n_z, 1) or (n_z, B)
    parts = []
    for start in range(0, len(values), chunk):
        z = values[start:start + chunk].expand(-1, len(x), -1)  # (m, B, d)
        parts.append(decode_log_px(model, z, x, c).double())  # (m, B)
    return torch.logsumexp(torch.cat(parts) + log_pz, dim=0)


def code_label_agreement(modes: Tensor, labels: Tensor) -> dict[str, Any]:
    """How the most probable codes split the points against their labels: ``code_label_ari``,
    the adjusted Rand index (Hubert & Arabie 1985; ``sklearn.metrics.adjusted_rand_score``:
    1 for the same partition up to renaming, about 0 for chance, negative below it), and
    ``codes_used``, the number of distinct codes. ``modes``: argmax q(z|x) (N, d), one-hot
    groups; ``labels``: (N,)."""
    from sklearn.metrics import adjusted_rand_score  # lazy: heavy to import, needed only here

    _, code_ids = torch.unique(modes.cpu(), dim=0, return_inverse=True)  # (N,) one id per distinct code
    ari = adjusted_rand_score(labels.cpu().numpy(), code_ids.numpy())
    return {"code_label_ari": float(ari), "codes_used": int(code_ids.max()) + 1}


def _test_config(run: Run, n_test: int | None) -> Any:
    """The run's data config, with ``n_test`` points drawn when given (toy datasets only)."""
    data_cfg = run.config.data
    if n_test is None:
        return data_cfg
    n_test = _positive_int(n_test, "n_test")
    spec = DATASETS.get(data_cfg.name) if data_cfg.path is None else None
    if spec is None or spec.kind != "toy2d":
        raise EvaluationError(
            f"n_test draws fresh points of a toy distribution; this run's data ({data_cfg.path or data_cfg.name}) "
            "has a fixed test split, which --n-test cannot change: drop --n-test (the run's config.json is checksummed "
            "and must not be edited; a run trained with --limit-test evaluates on that many points)"
        )
    if n_test > MAX_EVAL_POINTS:
        raise EvaluationError(f"n_test = {n_test} is too many test points (it would need "
                              f"{n_test * 2 * 4 / 1e9:.3g} GB for the points alone); use at most {MAX_EVAL_POINTS:,}")
    return data_cfg.model_copy(update={"n_test": n_test})


def settings_differ(run: Run, *, k: int | None = None, n_test: int | None = None,
                    seed: int | None = None, protocol: str | Protocol | None = None) -> list[str]:
    """Which given settings differ from the run's own evaluation settings (config ``eval`` and
    ``data.n_test``), e.g. ``["k = 5 (the run's: 1000)"]``; empty when none does.

    ``protocol``: its k and seed, and its number of test images against the run's own test split
    (``--limit-test``), are the given settings (k, n_test and seed must then be None)."""
    own = {"k": run.config.eval.k, "n_test": run.config.data.n_test, "seed": run.config.eval.seed}
    given = {"k": k, "n_test": n_test, "seed": seed}
    test_images: list[str] = []
    if protocol is not None:
        p = get_protocol(protocol)
        if any(value is not None for value in given.values()):
            raise ProtocolError(f"protocol {p.name!r} sets k, n_test and seed itself; give either the protocol or them")
        given = {"k": p.k, "n_test": None, "seed": p.seed}
        limit = run.config.data.limit_test
        if limit is not None and limit < p.n_test:
            test_images = [f"{p.n_test} test images (the run's: {limit}, --limit-test)"]
    return [f"{name} = {value} (the run's: {own[name]})" for name, value in given.items()
            if value is not None and value != own[name]] + test_images


def should_write_metrics(run: Run, *, k: int | None = None, n_test: int | None = None,
                         seed: int | None = None, protocol: str | Protocol | None = None) -> bool:
    """Whether ``evaluate_run(write=None)`` replaces the run's ``metrics.json``: when the run has
    none yet, or when it is evaluated with its own settings. An evaluation with other settings
    (``vaelab eval RUN --k 5``, or a protocol whose k differs from the run's) leaves the run's
    recorded metrics alone unless asked to write."""
    return not (Path(run.path) / METRICS_FILE).is_file() or not settings_differ(
        run, k=k, n_test=n_test, seed=seed, protocol=protocol)


def save_metrics(run: Run, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` to the run's ``metrics.json`` (atomically) and return its path."""
    path = Path(run.path) / METRICS_FILE
    try:
        # Tagged with the checkpoint: metrics of an eval during training never pass for the result.
        return write_metrics(run, metrics)
    except OSError as err:
        raise RunDirError(f"{path}: cannot write the metrics ({err.strerror or err}); evaluate a copy of the run "
                          "in a folder you can write to, or call evaluate_run with write=False") from None


def evaluate_run(
    run: Run | str | Path, *, k: int | None = None, n_test: int | None = None, seed: int | None = None,
    write: bool | None = None, device: str | torch.device | None = None, world: World | None = None,
    progress: bool = False, on_batch: Callable[[int, int], None] | None = None,
    quality_samples: int | None = None, quality_classifier: ClassifierSettings | None = None,
    protocol: str | Protocol | None = None,
) -> dict[str, Any]:
    """Evaluate a saved run on its held-out data, exactly as ``vaelab eval`` does.

    ``run`` is a loaded ``Run`` or a run directory, loaded on ``device``: by default ``"auto"``,
    as ``vaelab eval --device auto`` (CUDA if available, then MPS, else the CPU;
    ``vaelab.devices.pick_device``).
    ``k`` (importance samples), ``seed`` (evaluation noise) and ``n_test`` (fresh toy points)
    default to the run's own config. What it adds to ``evaluate``:

    * Bernoulli image runs are scored on the fixed seeded binarization of the test split
      (``binarization`` records it);
    * conditional runs score log p(x|c) with each test point's own condition, and report the
      gap against the exact conditional density where the data knows it (the mixtures'
      components, for label conditions); for a radius condition x lies on a circle given c,
      which has no density in the plane, so the gap is omitted and ``nll_gap_note`` says why;
      plus ``condition`` and ``conditioning_accuracy`` or ``radius_tracking``.

    ``write``: True writes ``metrics.json``, False never does, None (default) writes when the
    run has no metrics yet or is evaluated with its own settings (see ``should_write_metrics``).
    Returns the metrics dict (the content of ``metrics.json``).

    ``world``: under torchrun every rank calls this; the batches are shared out as in
    ``evaluate`` (the same numbers as one process) and rank 0 alone writes ``metrics.json``.

    ``progress=True`` shows the evaluation's progress on one line of stderr (the test batches
    of the importance-sampled bound, the long part; then the diagnostics); nothing is printed
    without it. ``on_batch(done, total)``: called as ``evaluate`` calls it.

    ``quality_samples`` (image runs; ``vaelab eval`` passes 10,000, so pass it too for the CLI's
    numbers): adds ``sample_quality``, the
    numbers of ``vaelab.quality.sample_quality`` for that many samples against the test split
    (grey levels, as loaded; the feature classifier is trained on the whole training split and
    cached in the user's data folder beside the dataset, see ``quality_cache_dir``;
    ``quality_classifier`` its settings). Where the data cannot give them (no labels to train the
    classifier, too few test images) ``sample_quality_note`` says why instead. None (default):
    no sample quality. Under torchrun rank 0 alone measures it.

    ``protocol`` (a name in ``vaelab.protocols.PROTOCOLS``, or a ``Protocol``): evaluate as that
    named protocol does: its test images (the first ``n_test`` of its split, whatever the run's
    ``limit_test``), its k and its seed, so ``k``, ``seed``, ``n_test`` and ``quality_samples``
    must be None. A run that cannot follow it (another dataset or split, a likelihood other than
    Bernoulli, another training binarization, a conditional model or an autoencoder, missing test
    files) is refused, saying what it would need. The result holds ``"protocol"``: its name,
    description, source and settings (``Protocol.record``). ``write=None`` writes when the run
    has no metrics yet or the protocol's k, seed and test images are the run's own.
    """
    if protocol is not None:  # before any work: a protocol fixes these settings itself
        protocol = get_protocol(protocol)
        given = [name for name, value in (("k", k), ("seed", seed), ("n_test", n_test),
                                          ("quality_samples", quality_samples)) if value is not None]
        if given:
            raise ProtocolError(
                f"protocol {protocol.name!r} fixes the evaluation (k = {protocol.k}, seed = {protocol.seed}, "
                f"{protocol.n_test} test images) and measures no sample quality; drop {', '.join(given)}, or drop the "
                "protocol to choose them yourself")
    if quality_samples is not None:  # before any work: a bad count is refused at once
        check_quality_samples(quality_samples)
    if isinstance(run, Run):
        if device is not None:
            raise EvaluationError("device applies when evaluate_run loads a run from its folder; a loaded Run "
                                  "is evaluated where its model is (move run.model first)")
    else:
        run = ckpt.load(run, pick_device("auto" if device is None else device))
    quality = (quality_samples, quality_classifier)
    if not progress or (world is not None and not world.is_main):
        return _evaluate_run(run, k, n_test, seed, write, world, on_batch, quality, protocol)
    line = EvalProgress(str(run.path), also=on_batch)  # says what it scores once the test data is loaded
    line.note("loading the test data")
    try:
        metrics = _evaluate_run(run, k, n_test, seed, write, world, line, quality, protocol)
    except BaseException:
        line.close()  # the line ends where it stopped; the error follows on a line of its own
        raise
    line.close("done")
    return metrics


def _evaluate_run(
    run: Run, k: int | None, n_test: int | None, seed: int | None, write: bool | None, world: World | None,
    on_batch: Callable[[int, int], None] | None,
    quality: tuple[int | None, ClassifierSettings | None] = (None, None), protocol: Protocol | None = None,
) -> dict[str, Any]:
    """``evaluate_run`` of a loaded run; an ``EvalProgress`` as ``on_batch`` is told each phase."""
    model = run.model
    is_vae = isinstance(model, VariationalModel)
    if not is_vae and (k is not None or seed is not None):
        raise EvaluationError("an autoencoder run's evaluation is deterministic: k and seed do not apply; "
                              "drop them")
    if protocol is None:
        data_cfg = _test_config(run, n_test)
        raw_test = load_dataset(data_cfg, "test")
    else:
        data_cfg, raw_test = _protocol_test_data(run, protocol)
        k, seed = protocol.k, protocol.seed
    if quality[0] is not None and raw_test.image_shape is None:
        raise EvaluationError(f"{data_cfg.path or data_cfg.name}: sample quality is measured on image runs only; "
                              "this run's data are points: drop --quality-samples / --no-quality")
    test, pixels = eval_view(run.config, raw_test)
    c = true_log_prob = None
    note = None
    if run.condition is not None:
        c = run.condition.tensor(raw_test)
        true_log_prob, note = run.condition.true_log_prob(raw_test)
    settings: dict[str, Any] = {}
    if is_vae:
        settings = {"k": run.config.eval.k if k is None else k, "seed": run.config.eval.seed if seed is None else seed}
    reporter = on_batch if isinstance(on_batch, EvalProgress) else None
    if reporter is not None:
        reporter.what = _evaluating(len(test), settings.get("k"))
    metrics = evaluate(model, test, batch_size=run.config.eval.batch_size, c=c, true_log_prob=true_log_prob,
                       world=world, on_batch=on_batch, **settings)
    if note is not None:
        metrics["nll_gap_note"] = note
    if run.condition is not None:
        if reporter is not None:
            reporter.note("conditioning accuracy")
        metrics.update(conditional_metrics(model, run.condition, load_dataset(data_cfg, "train"), raw_test,
                                           seed=settings.get("seed", run.config.eval.seed)))
    if test.image_shape is not None:
        metrics["binarization"] = pixels
    if protocol is not None:  # the protocol of every number, stated beside them
        metrics["protocol"] = protocol.record()
    check_finite_metrics(run, metrics)  # a broken model gets no sample quality either
    main = world is None or world.is_main  # under torchrun rank 0 alone writes
    if quality[0] is not None and main:
        metrics.update(_run_sample_quality(run, data_cfg, raw_test, quality[0], quality[1],
                                           settings.get("seed", run.config.eval.seed), reporter))
    if protocol is not None:
        k = seed = None  # should_write_metrics takes them from the protocol
    if main and (write or (write is None and should_write_metrics(run, k=k, n_test=n_test, seed=seed,
                                                                  protocol=protocol))):
        save_metrics(run, metrics)
    return metrics


def check_protocol(run: Run, protocol: str | Protocol) -> Protocol:
    """Refuse a run that cannot be evaluated under ``protocol``, saying what it would need: an
    autoencoder or a conditional model (the protocol scores log p(x)), data other than the
    protocol's registered dataset and ``image_split``, a likelihood other than Bernoulli, and
    test files that are not on disk (a protocol evaluation never downloads). The training
    binarization is checked once the test data is loaded (``_protocol_test_data``)."""
    p = get_protocol(protocol)
    where = f"{run.path}: protocol {p.name!r}"
    if not isinstance(run.model, VariationalModel):
        raise EvaluationError(f"{where} reports the IWAE bound of a model with a posterior q(z|x); this run is an "
                              "autoencoder: train a VAE (e.g. --model vae)")
    if run.condition is not None:
        raise EvaluationError(f"{where} scores log p(x); this conditional run scores log p(x|c), a different "
                              "number: train without --condition")
    data_cfg = run.config.data
    if data_cfg.path is not None or data_cfg.name != p.dataset:
        raise EvaluationError(f"{where} evaluates models trained on {p.dataset!r}; this run was trained on "
                              f"{data_cfg.path or data_cfg.name!r}: train on --data {p.dataset} --image-split "
                              f"{p.image_split}")
    if data_cfg.image_split != p.image_split:
        raise EvaluationError(f"{where} uses the {p.image_split!r} split ({p.split}); this run was trained on "
                              f"--image-split {data_cfg.image_split}: train again with --image-split {p.image_split}")
    if not isinstance(run.model.likelihood, BernoulliLogits):
        raise EvaluationError(f"{where} scores binary pixels with a {p.likelihood} likelihood (log p(x) of a "
                              f"binarized image); this run's likelihood is {run.config.model.likelihood!r}, whose "
                              f"numbers are densities of another kind: train again with --likelihood {p.likelihood}")
    location = locate_dataset(p.dataset, ("test",), data_cfg.data_dir)
    if location.missing:
        files = "\n".join(f"  {location.user_folder / r.filename}" for r in location.missing)
        raise EvaluationError(f"{where} needs the {p.dataset} test files, and these are missing:\n{files}\n"
                              "Place them there and evaluate again; `vaelab datasets` shows where each dataset is "
                              "looked for. A protocol evaluation never downloads.")
    return p


def _protocol_test_data(run: Run, protocol: Protocol) -> tuple[Any, Dataset]:
    """The test config and grey-level test split of ``protocol`` for ``run`` (after
    ``check_protocol``): the first ``n_test`` images of the split, the run's ``limit_test``
    aside; refused when the split holds fewer or the run's training binarization differs."""
    check_protocol(run, protocol)
    data_cfg = run.config.data.model_copy(update={"limit_test": protocol.n_test})
    raw_test = load_dataset(data_cfg, "test")
    where = f"{run.path}: protocol {protocol.name!r}"
    if len(raw_test) != protocol.n_test:
        raise EvaluationError(f"{where} scores {protocol.n_test} test images, but the {data_cfg.image_split} test "
                              f"split holds only {len(raw_test)}: check the dataset's files (`vaelab datasets`)")
    trained = resolve_binarize(run.config, raw_test)
    if protocol.train_binarization is not None and trained != protocol.train_binarization:
        raise EvaluationError(f"{where} compares models trained with {protocol.train_binarization} binarization; "
                              f"this run was trained with --binarize {trained}: train again with --binarize "
                              f"{protocol.train_binarization}")
    return data_cfg, raw_test


def quality_cache_dir(data_cfg: Any) -> Path:
    """Where the feature classifier of a run's data is cached: the user's folder of the dataset,
    ``<data_dir>/<name>`` (never a read-only system folder), or ``<data_dir>/image-folders`` for a
    folder of the user's images (its classifier's file name holds a hash of the images)."""
    if data_cfg.path is not None:
        return resolve_data_dir(data_cfg.data_dir) / "image-folders"
    return dataset_folder(data_cfg.name, data_cfg.data_dir)


def _run_sample_quality(
    run: Run, data_cfg: Any, raw_test: Dataset, n_samples: int, classifier: ClassifierSettings | None, seed: int,
    reporter: EvalProgress | None,
) -> dict[str, Any]:
    """``{"sample_quality": ...}`` of a run, or ``{"sample_quality_note": why not}`` where the data
    cannot give it. The classifier learns the whole training split and reports its accuracy on the
    whole test split (``limit_train`` / ``limit_test`` left out, so every run of a dataset shares one
    classifier); the real images are the run's test split, in grey levels."""
    full = data_cfg.model_copy(update={"limit_train": None, "limit_test": None})
    train = load_dataset(full, "train")
    test_all = raw_test if data_cfg.limit_test is None else load_dataset(full, "test")

    def phase(what: str) -> None:
        if reporter is not None:
            reporter.note(f"sample quality: {what}")

    try:
        quality = sample_quality(run.model, train, raw_test, n_samples=n_samples, seed=seed,
                                 condition=run.condition, cache_dir=quality_cache_dir(data_cfg),
                                 settings=classifier, on_phase=phase, classifier_test=test_all)
    except QualityError as err:  # n_samples was checked by evaluate_run: what is left is about the data
        return {"sample_quality_note": f"no sample quality: {err}"}
    return {"sample_quality": quality}


# The numbers a run's evaluation stands on: NaN or inf in any of them means a broken model.
CORE_METRICS = ("iwae_nll", "elbo", "recon", "kl", "mutual_info", "marginal_kl")


class NonFiniteMetricsError(EvaluationError):
    """A run's held-out metrics are NaN or infinite: the model is broken, and no number or
    verdict about it is honest."""


def check_finite_metrics(run: Run, metrics: Mapping[str, Any]) -> None:
    """Refuse held-out metrics that are NaN or infinite (a model whose weights exploded, e.g.
    under ``--nonfinite skip`` with far too large a learning rate): they are an error, never a
    table of nan and a collapse verdict."""
    bad = [f"{name} = {metrics[name]}" for name in CORE_METRICS
           if name in metrics and isinstance(metrics[name], int | float) and not math.isfinite(float(metrics[name]))]
    if not bad:
        return
    skips = ""
    if run.config.train.nonfinite == "skip":
        skips = (" The run was trained with --nonfinite skip: skipped steps hide a divergence until the weights "
                 "are useless.")
    raise NonFiniteMetricsError(
        f"{run.path}: the held-out evaluation is not finite ({', '.join(bad)}): the model is broken (its training "
        f"diverged), so no metric or collapse verdict describes it.{skips} Train it again with a smaller --lr "
        "(or --grad-clip); nothing was written to metrics.json")
