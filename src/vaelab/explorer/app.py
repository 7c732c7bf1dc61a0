"""The explorer's server: a small JSON API over loaded runs, and the page's own static files.

Every run is loaded once and its held-out set encoded and scored once (per-point KL, σ,
reconstruction error, log p(x)); requests then only decode, encode or draw from the prior,
under ``torch.no_grad()``. Requests run side by side in werkzeug's threads, with no lock
around the models (inference changes no state): a small request is never queued behind a
large one. What bounds the work instead is the size of one request: at most ``max_rows``
rows, so that a request asks for at most ``MAX_VALUES`` numbers (``max_rows`` is in each
run's metadata: 4,096 for 2-D data, 334 for 28×28 images), and answers are written as JSON
a slice of rows at a time, so one long answer never holds the interpreter for long.

The API (run = index into the runs given, 0-based):

- ``GET /api/runs``: ``{"runs": [{"id", "name"}]}``
- ``GET /api/run?run=ID``: metadata (kind, family, sizes, KL per dim, labels, condition, prior,
  training progress, metrics as rows, config, max_rows, the per-point statistics on offer)
- ``GET /api/points?run=ID``: the encoded held-out set (at most ``MAX_POINTS`` points) and its
  per-point statistics; for a discrete latent also each point's ``codes`` (``snap_codes`` of its
  embedding: the most probable class of each gumbel group, each VQ group's code)
- ``POST /api/decode`` ``{"run", "z": [[...]], "c", "draws", "seed"}`` -> ``{"mean", "std", "x"}``
- ``POST /api/decode_codes`` ``{"run", "codes": [[k_1 … k_N], ...], "c", "draws", "seed"}`` ->
  ``{"codes", "z", "mean", "std", "x"}``: discrete runs only (``latent.kind`` "categorical" or
  "codes"): integer codes, one per group / grid cell, in 0..K-1 -> their z and its decoding. Or
  ``"z": [[...]]`` in place of ``"codes"``: any z, snapped to its nearest codes first (``snap_codes``:
  each gumbel group's largest coordinate, each VQ group's nearest codebook vector), so that the
  plane and the points decode only codes the model can draw
- ``POST /api/encode`` ``{"run", "x": [[...]], "c"}`` -> ``{"mu", "sigma"}``
- ``POST /api/prior`` ``{"run", "n", "seed", "c", "decode", "draws"}`` -> ``{"z", "mean", "std",
  "x", "prior", "codes"}``: z ~ the model's own ``prior(c)``, drawn with a ``torch.Generator`` seeded
  with ``seed`` (the global RNG is never used), decoded as ``model.sample`` decodes them;
  ``codes`` (n, N) the draws' integer codes for a discrete latent (the learned code prior's draws
  where a VQ run has one), else null.

Safety: only the files in ``static/`` (listed at start-up) are served, so no request path
reaches the file system; every request is validated (unknown keys too) and a bad one answers
4xx with ``{"error": ...}``; an unexpected failure answers a JSON 500 without a traceback and
the server keeps serving. When bound to the local machine (the default), requests naming
another Host are refused: a web page elsewhere cannot reach the API through DNS rebinding.
"""

from __future__ import annotations

import json
import math
import mimetypes
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flask import Flask, Response, request
from torch import Tensor
from torch.distributions import Distribution
from werkzeug.exceptions import HTTPException

from vaelab import checkpoint as ckpt
from vaelab.conditions import ConditionError
from vaelab.config import RunConfig
from vaelab.data.pixels import eval_view
from vaelab.data.registry import load_dataset, take
from vaelab.distributions import is_factorised_normal, kl, kl_is_closed_form, rsample
from vaelab.distributions import kl_per_dim as kl_by_dim
from vaelab.errors import InputError, VaelabError
from vaelab.evaluate import generator_for
from vaelab.likelihoods import sample_observation
from vaelab.models import LatentModel, VariationalModel, has_normal_posterior, has_standard_prior
from vaelab.models.gumbel import GumbelSoftmaxVAE, OneHotGroups
from vaelab.models.vq import VQVAE, CodePrior, lookup, nearest
from vaelab.objectives import iwae_bound

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_POINTS = 2000  # held-out points sent to the page
MAX_ROWS = 4096  # rows of one decode / encode / prior request, at most
MAX_VALUES = 1 << 18  # numbers one request may ask the model for (rows × width): bounds the work per request
MAX_BYTES = 2 * 1024 * 1024  # request body
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed holds
JSON_SLICE = 1 << 14  # numbers written per json.dumps call: other requests run between slices
DIGITS = 7  # significant digits sent: float32's own precision, half the JSON of full doubles
LOG_PX_K = 32  # importance samples of the per-point log p(x) (the IWAE bound, Burda et al. 2016, eq. 8)
STATS_SEED = 0  # the seed of the per-point statistics' draws, as `vaelab eval`'s default
STATS_BATCH = 500  # points scored at once, as evaluate()'s default batch: the same draws for the same seed
# Burda et al. (2016), section 5.2: a latent unit is active when Cov_x(E_q[z_u]) > 0.01.
ACTIVE_THRESHOLD = 0.01
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}


class RequestError(InputError):
    """A request the API cannot answer: the message says what was wrong and what to send."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Loaded:
    """One run as the explorer serves it: the model, its metadata and its encoded held-out set."""

    run: Any  # vaelab.checkpoint.Run
    meta: dict[str, Any]
    points_json: bytes

    @property
    def model(self) -> LatentModel:
        return self.run.model

    @property
    def max_rows(self) -> int:
        return int(self.meta["max_rows"])


def max_rows_for(width: int) -> int:
    """Rows one request may hold for a model whose widest side (x or z) is ``width`` numbers."""
    return max(1, min(MAX_ROWS, MAX_VALUES // max(1, width)))


# -- what a run is: names, settings, progress, metrics ------------------------------------------


def run_names(run_dirs: list[Path]) -> list[str]:
    """A short unique name per run: the folder's name, with as many parent folders as it takes
    to tell runs apart (two sweeps' ``beta=4.0`` members become ``a/beta=4.0`` and ``b/beta=4.0``).

    Raises:
        InputError: the same folder given twice.
    """
    resolved = [Path(d).resolve() for d in run_dirs]
    seen: dict[Path, int] = {}
    for i, path in enumerate(resolved):
        if path in seen:
            raise InputError(f"{run_dirs[i]}: given twice (as run {seen[path]} and run {i}); give each run folder once")
        seen[path] = i
    depth = [1] * len(resolved)

    def name(i: int) -> str:
        return "/".join(resolved[i].parts[-depth[i]:])

    while True:
        names = [name(i) for i in range(len(resolved))]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(resolved[i].parts)]
        if not clash:
            return names
        for i in clash:
            depth[i] += 1


def _flat_config(config: Any) -> dict[str, Any]:
    """The settings that differ from the library defaults, as {"section.field": value}."""
    default = RunConfig().model_dump(mode="json")
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any, ref: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub, ref.get(key) if isinstance(ref, dict) else None)
        elif value != ref:
            out[prefix] = value

    for section, values in config.model_dump(mode="json").items():
        walk(section, values, default.get(section, {}))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of metrics.json (lists, tags and non-finite values left out: JSON has no NaN)."""
    return {k: v for k, v in metrics.items() if _number(v)}


# The metrics a student reads first, in this order: (key, name, unit, what it is).
METRIC_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("elbo", "ELBO", "nats", "the evidence lower bound E_q[log p(x|z)] − KL, per held-out point (higher is better)"),
    ("iwae_nll", "−log p(x) (IWAE)", "nats", "importance-weighted estimate of the negative log-likelihood, "
     "an upper bound that tightens with k (lower is better)"),
    ("recon", "reconstruction −E_q[log p(x|z)]", "nats", "the ELBO's reconstruction term"),
    ("kl", "KL(q(z|x) ‖ p(z))", "nats", "the ELBO's prior-matching term, averaged over points"),
    ("elbo_bpd", "ELBO", "bits/dim", "the ELBO in bits per pixel"),
    ("iwae_bpd", "−log p(x) (IWAE)", "bits/dim", "the IWAE estimate in bits per pixel"),
    ("true_nll", "true −log p(x)", "nats", "the data distribution's own negative log-density"),
    ("nll_gap", "gap to the truth", "nats", "IWAE −log p(x) minus the true one (0 for a perfect model)"),
    ("mutual_info", "mutual information I(x; z)", "nats", "how much the codes say about x (at most log N)"),
    ("marginal_kl", "KL(q(z) ‖ p(z))", "nats", "how far the aggregate posterior is from the prior"),
)
METRIC_COUNTS: tuple[tuple[str, str], ...] = (
    ("active_units", "active latent units"), ("n", "held-out points"), ("iwae_k", "importance samples k"),
    ("eval_seed", "evaluation seed"),
)


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics.json as rows a person reads: the key metrics first, each mean paired with its
    standard error and unit ({"key", "name", "value", "se", "unit", "help"}), then counts, then
    any other number under its own key. ``se`` is None where the metrics give none."""
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for key, name, unit, what in METRIC_ROWS:
        if _number(metrics.get(key)):
            se = metrics.get(f"{key}_se")
            rows.append({"key": key, "name": name, "value": metrics[key], "se": se if _number(se) else None,
                         "unit": unit, "help": what})
            used.update((key, f"{key}_se"))
    for key, name in METRIC_COUNTS:
        if _number(metrics.get(key)):
            value = metrics[key]
            if key == "active_units" and _number(metrics.get("latent_dim")):
                name = f"active latent units (of {metrics['latent_dim']})"
                used.add("latent_dim")
            rows.append({"key": key, "name": name, "value": value, "se": None, "unit": "", "help": ""})
            used.add(key)
    for key, value in metrics.items():
        if key in used or key.endswith("_se") or not _number(value):
            continue
        se = metrics.get(f"{key}_se")
        rows.append({"key": key, "name": key.replace("_", " "), "value": value, "se": se if _number(se) else None,
                     "unit": "", "help": ""})
    return rows


def training_progress(run: Any) -> dict[str, Any]:
    """Whether training finished: {"finished": bool or None (unknown), "step", "epoch", "epochs",
    "steps", "failure": the failure message or None}, from the run's saved training state."""
    out: dict[str, Any] = {"finished": None, "step": run.step, "epoch": None, "epochs": run.config.train.epochs,
                           "steps": run.config.train.steps, "failure": None}
    try:
        state = ckpt.load_state(run.path)
        out.update(finished=bool(state.complete), step=int(state.step), epoch=int(state.epoch))
    except VaelabError:
        pass  # no readable state: the page says nothing it cannot know
    try:
        failure = run.failure
    except VaelabError:
        failure = None
    if failure is not None:
        out["failure"] = str(failure.get("message") or "training stopped on a non-finite loss")
        out["finished"] = False
    return out


def _condition_meta(condition: Any) -> dict[str, Any] | None:
    if condition is None:
        return None
    if condition.labels is not None:
        return {"kind": "label", "labels": list(condition.labels)}
    one = len(condition.names) == 1  # a vector condition (CSV columns) keeps one value per column
    return {"kind": "continuous", "name": ",".join(condition.names),
            "low": condition.low[0] if one else list(condition.low),
            "high": condition.high[0] if one else list(condition.high)}


def prior_meta(model: LatentModel) -> dict[str, Any]:
    """What the page is told about p(z): its type, whether it is N(0, I), whether training
    shaped the codes towards it (a VAE) or not (an autoencoder)."""
    return {"standard": has_standard_prior(model), "trained": isinstance(model, VariationalModel)}


def latent_meta(model: LatentModel) -> dict[str, Any]:
    """What z is, so that the page offers sliders (a continuous z) or code pickers (a discrete one):

    - ``{"kind": "continuous"}``;
    - ``{"kind": "categorical", "groups": N, "classes": K}``: p(z) is N categorical groups of K
      classes, each uniform (gumbel; z: their one-hot vectors side by side);
    - ``{"kind": "codes", "groups": N, "classes": K, "grid": [H', W'] or None, "prior": "learned" or
      "uniform"}``: a VQ-VAE, N code vectors each one of K codebook vectors; ``grid`` is the conv
      body's code grid (N = H'·W', cells row by row), None for the MLP body's N groups. The
      explorer's run metadata adds ``"prior_trained"`` for a learned prior: whether the run is the
      second stage (``--objective vq_prior``) that trains it (before, it is exactly uniform).

    Both discrete kinds are decoded from integer codes by ``POST /api/decode_codes`` (one class /
    code index per group or cell) and drawn with their codes by ``POST /api/prior``."""
    with torch.no_grad():
        prior = model.prior()
    if isinstance(prior, OneHotGroups):
        return {"kind": "categorical", "groups": prior.groups, "classes": prior.classes}  # p(z) uniform
    if isinstance(model, VQVAE) and isinstance(prior, CodePrior):
        grid = getattr(model, "grid", None)
        return {"kind": "codes", "groups": prior.groups, "classes": prior.codes,
                "grid": None if grid is None else [int(grid[0]), int(grid[1])],
                "prior": "uniform" if prior.is_uniform else "learned"}
    return {"kind": "continuous"}


def codes_to_z(model: LatentModel, codes: Tensor) -> Tensor:
    """The z of integer codes: (B, N) in 0..K-1 -> (B, latent_dim). Gumbel: the groups' one-hot
    vectors side by side; VQ: the chosen codebook vectors e_k side by side (eq. 1-2's z_q)."""
    if isinstance(model, GumbelSoftmaxVAE):
        return model.one_hot(codes)
    if isinstance(model, VQVAE):
        return lookup(codes, model.codebook)
    raise InputError("this run's latent is continuous: it has no codes; send z to /api/decode")


def snap_codes(model: LatentModel, z: Tensor) -> Tensor:
    """The nearest codes of any z: (B, latent_dim) -> (B, N) integers in 0..K-1. Gumbel: each
    group's largest coordinate (for E[z|x], the class probabilities, the most probable class; for
    a one-hot z its class); VQ: each group's nearest codebook vector (for z_q(x) its own code)."""
    if isinstance(model, GumbelSoftmaxVAE):
        codes = prior_codes(model.prior(), z)  # each group's largest coordinate
        assert codes is not None  # a gumbel prior is OneHotGroups
        return codes
    if isinstance(model, VQVAE):
        return nearest(z.reshape(len(z), model.groups, model.dim), model.codebook)
    raise InputError("this run's latent is continuous: it has no codes; send z to /api/decode")


def prior_codes(prior: Distribution, z: Tensor) -> Tensor | None:
    """The classes of one-hot prior draws z (n, N·K) -> (n, N) (the class of each group's one-hot
    vector), or None where p(z) is not ``OneHotGroups`` (a VQ prior draws its codes itself)."""
    if isinstance(prior, OneHotGroups):
        return z.reshape(len(z), prior.groups, prior.classes).argmax(dim=-1)
    return None


def describe_prior(prior: Distribution) -> dict[str, Any]:
    """{"type": "Independent(Normal)", "loc", "scale"}: loc and scale (lists, one per latent
    dimension) only where p(z) is a factorised Normal with a single row, else None."""
    kind = type(prior).__name__
    if hasattr(prior, "base_dist"):
        kind = f"{kind}({type(prior.base_dist).__name__})"
    loc = scale = None
    if is_factorised_normal(prior) and prior.batch_shape in (torch.Size(), torch.Size([1])):
        base = prior.base_dist  # type: ignore[attr-defined]
        loc = base.loc.expand(prior.event_shape).reshape(-1).tolist()
        scale = base.scale.expand(prior.event_shape).reshape(-1).tolist()
    return {"type": kind, "loc": loc, "scale": scale}


# -- per-point statistics -----------------------------------------------------------------------


POINT_STATS = {
    "kl": {"name": "KL(q(z|x) ‖ p(z))", "unit": "nats",
           "note": "closed form where torch has one, as vaelab eval computes it"},
    "sigma": {"name": "posterior σ (mean over dims)", "unit": "", "note": "the spread of q(z|x)"},
    "recon": {"name": "reconstruction error", "unit": "",
              "note": "mean squared difference between x and the decoder mean at z = E[z|x]"},
    "log_px": {"name": "log p(x)", "unit": "nats",
               "note": f"the IWAE bound with k = {LOG_PX_K} importance samples (seed {STATS_SEED})"},
}


@torch.no_grad()
def point_stats(model: LatentModel, x: Tensor, c: Tensor | None) -> dict[str, list[float]]:
    """Per-point numbers to colour the plane by, each (N,), computed as vaelab computes them:

    - ``kl``: KL(q(z|x) ‖ p(z|c)) by ``vaelab.distributions.kl`` (closed form where torch has
      one; else the Monte Carlo mean of log q − log p over ``LOG_PX_K`` draws of q);
    - ``sigma``: the mean over dimensions of q(z|x)'s standard deviation (factorised Normal q);
    - ``recon``: mean over x's dimensions of (x − E[x | z = E_q[z|x]])²; for every model;
    - ``log_px``: the IWAE bound L_k(x) (``vaelab.objectives.iwae_bound``, k = ``LOG_PX_K``).

    The draws come from one generator seeded with ``STATS_SEED`` over batches of ``STATS_BATCH``
    points, in evaluate()'s order: where the KL is closed form, the mean of ``log_px`` is
    −iwae_nll of ``evaluate(model, x, k=LOG_PX_K, seed=STATS_SEED)`` and the mean of ``kl`` its kl.
    """
    out: dict[str, list[Tensor]] = {"recon": []}
    can_score = True
    try:
        model.likelihood.check_support(x)
    except VaelabError:
        can_score = False  # data the likelihood cannot score (grey levels under a Bernoulli): no log p(x)
    generator = generator_for(STATS_SEED)
    for start in range(0, len(x), STATS_BATCH):
        xb = x[start:start + STATS_BATCH]
        cb = None if c is None else c[start:start + STATS_BATCH]
        x_hat = model.decode(model.embed(xb, cb), cb).mean  # (B, D)
        out["recon"].append(((xb - x_hat) ** 2).mean(-1))
        if not isinstance(model, VariationalModel):
            continue
        q_z, prior = model.encode(xb, cb), model.prior(cb)
        z = None if kl_is_closed_form(q_z, prior) else rsample(q_z, (LOG_PX_K,), generator)  # (k, B, d)
        out.setdefault("kl", []).append(kl(q_z, prior, z))
        if has_normal_posterior(model):
            out.setdefault("sigma", []).append(q_z.stddev.mean(-1))
        if can_score:
            out.setdefault("log_px", []).append(iwae_bound(model, xb, cb, k=LOG_PX_K, generator=generator))
    return {key: torch.cat(parts).tolist() for key, parts in out.items() if parts}


# -- loading ------------------------------------------------------------------------------------


@torch.no_grad()
def _load(run_dir: Path, name: str) -> _Loaded:
    """Load a run, encode (at most MAX_POINTS of) its held-out set and describe it."""
    run = ckpt.load(run_dir, "cpu")
    model = run.model.eval()
    raw = load_dataset(run.config.data, "test", expect_dim=model.x_dim)
    if len(raw) > MAX_POINTS:
        raw = take(raw, slice(0, MAX_POINTS))
    # The held-out set as the model is scored on it (`vaelab eval`): a Bernoulli image run sees
    # the fixed binarization of the test split, so the per-point KL and log p(x) are vaelab's own.
    data, pixels = eval_view(run.config, raw)
    raw_c, c = None, None
    if run.condition is not None:
        raw_c = run.condition.values(raw)  # (N,) labels or (N, C) values
        c = run.condition.encode(raw_c)  # (N, width)
    family = run.config.model.kind
    # What the model can do decides: a factorised Normal q(z|x) gives μ, σ and, against a
    # factorised prior, the KL of each latent dimension.
    kl_d, sigma = None, None
    if has_normal_posterior(model):
        q_z = model.encode(data.x, c)
        mu, sigma = q_z.mean, q_z.stddev  # (N, d) each
        kl_d = kl_by_dim(q_z, model.prior(c))  # (N, d), or None for a prior that does not factorise
    else:
        mu = model.embed(data.x, c)
    kl_per_dim: list[float] | None = None
    if kl_d is not None:
        kl_mean = kl_d.mean(dim=0)  # (d,): KL of each latent dimension, averaged over x
        kl_per_dim = kl_mean.tolist()
        order = sorted(range(model.latent_dim), key=lambda j: -kl_mean[j].item())
    else:
        spread = mu.var(dim=0) if len(mu) > 1 else torch.zeros(model.latent_dim)
        order = sorted(range(model.latent_dim), key=lambda j: -spread[j].item())
    active = (mu.var(dim=0) > ACTIVE_THRESHOLD).tolist() if len(mu) > 1 else [True] * model.latent_dim
    image_shape = list(data.image_shape) if data.image_shape is not None else None
    if image_shape is not None and image_shape[0] == 1:
        image_shape = image_shape[1:]  # grey images: [H, W]
    labels = data.label_names
    if labels is None and data.labels is not None and len(data.labels):
        labels = [str(i) for i in range(int(data.labels.max()) + 1)]
    if run.condition is not None and run.condition.labels is not None:
        labels = list(run.condition.labels)
    p_x = model.decode(mu[:1], None if c is None else c[:1])
    latent = latent_meta(model)
    if latent.get("prior") == "learned":
        # the learned code prior starts exactly uniform; only the second stage (--objective vq_prior) trains it
        latent["prior_trained"] = run.config.train.objective == "vq_prior"
    stats = point_stats(model, data.x, c)
    metrics = run.metrics
    meta = {
        "name": name, "path": str(run_dir), "kind": "image" if image_shape is not None else "points",
        "family": family,
        # Whether p(z) is N(0, I) (an autoencoder's is not one training shaped the codes towards:
        # its "prior sample" is a Gaussian fitted to the codes, labelled as such).
        "standard_prior": isinstance(model, VariationalModel) and has_standard_prior(model),
        "prior": prior_meta(model), "latent": latent,
        "x_dim": model.x_dim, "image_shape": image_shape, "latent_dim": model.latent_dim,
        "kl_per_dim": kl_per_dim, "dim_order": order, "active": active,
        "noise": model.likelihood.noise_std(p_x) is not None, "labels": labels,
        "likelihood": run.config.model.likelihood, "pixels": None if image_shape is None else pixels,
        "condition": _condition_meta(run.condition), "metrics": _scalar_metrics(metrics),
        "metric_rows": metric_rows(metrics), "progress": training_progress(run),
        "config": _flat_config(run.config), "data": run.config.data.model_dump(mode="json").get("name"),
        "max_rows": max_rows_for(max(model.x_dim, model.latent_dim)),
        "point_stats": [{"key": k, **POINT_STATS[k]} for k in POINT_STATS if k in stats],
    }
    x = data.x.numpy().astype(np.float64)
    if image_shape is not None:
        x = np.round(x, 4)  # pixels: 4 decimals are far below what a screen shows, and keep the answer small
    points = {
        "x": x.tolist(), "mu": _rounded(mu), "sigma": None if sigma is None else _rounded(sigma),
        "labels": None if data.labels is None else data.labels.tolist(),
        "c": None if raw_c is None else (raw_c[:, None] if raw_c.ndim == 1 else raw_c).tolist(),
        "stats": stats,
        "codes": snap_codes(model, mu).tolist() if latent["kind"] in ("categorical", "codes") else None,
    }
    # Written once here: the largest answer (5 MB for 1,000 MNIST points) costs nothing per request.
    return _Loaded(run=run, meta=meta, points_json=json.dumps(points, allow_nan=False).encode())


def _rounded(t: Tensor) -> Any:
    """``t`` as nested lists of numbers with ``DIGITS`` significant digits (float32's precision):
    each number prints in at most ~13 characters instead of 19. The nearest double to a short
    decimal prints as that decimal, so dividing the rounded integer by an exact power of ten
    (correctly rounded) gives it."""
    t = t.detach().double()
    mag = torch.floor(torch.log10(t.abs().clamp_min(1e-300)))
    k = (DIGITS - 1 - mag).clamp(-300, 300)
    p = torch.pow(10.0, k.abs())
    return torch.where(k >= 0, torch.round(t * p) / p, torch.round(t / p) * p).tolist()


# -- request parsing ----------------------------------------------------------------------------


def _run_index(value: Any, n_runs: int) -> int:
    hint = f"give run as an integer from 0 to {n_runs - 1} (see GET /api/runs)"
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
        value = int(value)  # "-1" is an integer too: out of range, not "not an integer" (audit EX13)
    if value is None:
        raise RequestError(f"no run given; {hint}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"run must be an integer, got {value!r}; {hint}")
    if not 0 <= value < n_runs:
        raise RequestError(f"unknown run {value}; {hint}", 404)
    return value


def _keys(body: dict[str, Any], allowed: tuple[str, ...], path: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError(f"{path} does not take {', '.join(map(repr, unknown))}; it takes {', '.join(allowed)}")


def _check_rows(value: Any, name: str, max_rows: int, send: str, limit: str = "") -> None:
    """Refuse ``value`` unless it is a non-empty JSON list of at most ``max_rows`` lists (413 when
    longer); ``send`` says what to send instead, ``limit`` what bounds the rows."""
    if not isinstance(value, list) or not value:
        raise RequestError(f"{name} must be a non-empty list of rows; {send}")
    if len(value) > max_rows:
        raise RequestError(f"{name} has {len(value)} rows, more than the {max_rows} one request may hold for this "
                           f"run{limit}; split it into several requests", 413)
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise RequestError(f"{name}[{i}] is not a list; {send}")


def _matrix(value: Any, name: str, width: int, what: str, max_rows: int = MAX_ROWS) -> Tensor:
    """A JSON list of rows of ``width`` finite numbers -> (B, width) float32."""
    send = (f"send {name} as a list of rows, each a list of {width} finite numbers ({what}), "
            f"at most {max_rows} rows")
    _check_rows(value, name, max_rows, send, f" (at most {MAX_VALUES:,} numbers per request)")
    for i, row in enumerate(value):
        if len(row) != width:
            raise RequestError(f"{name}[{i}] has {len(row)} numbers, this run needs {width}; {send}")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in row):
            raise RequestError(f"{name}[{i}] holds something that is not a number; {send}")
    try:
        t = torch.tensor(value, dtype=torch.float64)
    except (OverflowError, ValueError, TypeError, RuntimeError):
        raise RequestError(f"{name} could not be read as numbers; {send}") from None
    t32 = t.float()
    if not bool(torch.isfinite(t32).all()):
        raise RequestError(f"{name} holds NaN, infinity or a number beyond float32's range; {send}")
    return t32


def _codes(value: Any, latent: dict[str, Any], max_rows: int) -> Tensor:
    """A JSON list of rows of N integer codes in 0..K-1 -> (B, N) int64 (``latent``: ``latent_meta``)."""
    n, k = int(latent["groups"]), int(latent["classes"])
    where = (f"one per cell of the {latent['grid'][0]}×{latent['grid'][1]} code grid, row by row"
             if latent.get("grid") else f"one per group: {n} group{'' if n == 1 else 's'}")
    send = (f"send codes as a list of rows, each a list of {n} integers from 0 to {k - 1} ({where}), "
            f"at most {max_rows} rows")
    _check_rows(value, "codes", max_rows, send)
    for i, row in enumerate(value):
        if len(row) != n:
            raise RequestError(f"codes[{i}] has {len(row)} codes, this run needs {n}; {send}")
        for j, v in enumerate(row):
            # 3.0 is refused too: a code is chosen, not a number near one
            if isinstance(v, bool) or not isinstance(v, int):
                raise RequestError(f"codes[{i}][{j}] is {v!r}, not an integer; {send}")
            if not 0 <= v < k:
                raise RequestError(f"codes[{i}][{j}] is {v}, outside 0..{k - 1} (this run has K = {k} "
                                   f"{'classes' if latent['kind'] == 'categorical' else 'codebook vectors'}); {send}")
    return torch.tensor(value, dtype=torch.int64)


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"{key} must be true or false, got {value!r}")
    return value


def _integer(body: dict[str, Any], key: str, default: int | None, low: int, high: int, what: str) -> int:
    value = body.get(key, default)
    if value is None:
        raise RequestError(f"no {key} given; send {key} as an integer from {low} to {high} ({what})")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{key} must be an integer from {low} to {high} ({what}), got {value!r}",
                           413 if key == "n" and isinstance(value, int) and value > high else 400)
    return value


def _condition(loaded: _Loaded, value: Any, rows: int) -> Tensor | None:
    """The request's ``c`` -> the model's c: (1 or rows, width), or None for an unconditional run."""
    condition = loaded.run.condition
    if condition is None:
        if value is not None:
            raise RequestError("this run has no condition: send \"c\": null (or leave c out)")
        return None
    if condition.labels is not None:
        send = (f"send c as a label index 0..{len(condition.labels) - 1}, a label name "
                f"({', '.join(condition.labels[:12])}), or a list of them with one per row")
    else:
        send = (f"send c as a number ({condition.describe()}), or a list with one per row "
                + ("" if condition.width == 1 else f"(each a list of {condition.width} numbers)"))
    if value is None:
        raise RequestError(f"this run is conditional; {send}")
    many = isinstance(value, list) and (condition.labels is not None or condition.width == 1
                                        or (value and isinstance(value[0], list)))
    items = value if many else [value]
    if many and len(items) != rows:
        raise RequestError(f"c has {len(items)} entries for {rows} rows; {send}")
    try:
        if condition.labels is not None:
            idx = []
            for v in items:
                if isinstance(v, bool) or not isinstance(v, int | str):
                    raise RequestError(f"c holds {v!r}, which is not a label; {send}")
                idx.append(condition._label_index(v))
            raw = torch.tensor(idx, dtype=torch.int64)
        else:
            rows_c = []
            for v in items:
                vals = v if isinstance(v, list) else [v]
                if any(isinstance(u, bool) or not isinstance(u, int | float) for u in vals):
                    raise RequestError(f"c holds {v!r}, which is not a number; {send}")
                rows_c.append([float(u) for u in vals])
            raw = _matrix(rows_c, "c", condition.width, "the condition values")
        return condition.encode(raw)
    except ConditionError as err:
        raise RequestError(f"{err}; {send}") from None


# -- answers ------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, allow_nan=False), status=status, mimetype="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


def _rows_json(t: Tensor | None) -> str:
    """(B, W) -> a JSON list of rows, written ``JSON_SLICE`` numbers at a time (the interpreter
    switches to other requests' threads between slices), or "null"."""
    if t is None:
        return "null"
    if not bool(torch.isfinite(t).all()):
        raise RequestError("the model gave NaN or infinity for this input (a diverged run?); nothing to show", 422)
    step = max(1, JSON_SLICE // max(1, t.shape[-1]))
    parts = [json.dumps(_rounded(t[i:i + step]))[1:-1] for i in range(0, len(t), step)]
    return "[" + ",".join(p for p in parts if p) + "]"


def _answer(**fields: Tensor | Any) -> Response:
    """A JSON object whose tensor fields are written row-slice by row-slice (see ``_rows_json``)."""
    body = ",".join(f"{json.dumps(k)}:{_rows_json(v) if isinstance(v, Tensor) or v is None else json.dumps(v)}"
                    for k, v in fields.items())
    return Response("{" + body + "}", mimetype="application/json")


def _decoded(model: LatentModel, z: Tensor, c: Tensor | None, draws: bool,
             generator: torch.Generator | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Decoder mean (B, D), observation noise (B, D) or None, and x ~ p(x|z) (B, D) when ``draws``."""
    p_x = model.decode(z, c)
    mean = p_x.mean  # (B, D)
    std = model.likelihood.noise_std(p_x)  # (B, D) observation noise, or None
    x = sample_observation(p_x, generator) if draws else None
    return mean, None if std is None else std.expand_as(mean), x


def create_app(run_dirs: list[Path], *, check_host: bool = True) -> Flask:
    """Load every run in ``run_dirs`` (errors name the bad folder) and return the explorer app.

    ``check_host``: refuse requests whose Host header is not the local machine (the default,
    right for a server bound to 127.0.0.1); switch off only when serving on a network address.
    """
    if not run_dirs:
        raise InputError("give at least one run directory to explore")
    names = run_names([Path(d) for d in run_dirs])
    loaded = [_load(Path(d), name) for d, name in zip(run_dirs, names, strict=True)]
    static_files = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else {}
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BYTES

    @app.before_request
    def _local_only() -> Response | None:
        if check_host:
            host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
                else (request.host or "").split("]")[0] + "]"
            if host not in LOCAL_HOSTS:
                return _error(f"this explorer serves only the local machine, not Host {request.host!r}; "
                              "open it at http://127.0.0.1:PORT/", 403)
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(RequestError)
    def _bad(err: RequestError) -> Response:
        return _error(str(err), err.status)

    @app.errorhandler(VaelabError)
    def _user(err: VaelabError) -> Response:
        return _error(str(err), 400)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        status = err.code or 500
        if status == 413:
            return _error(f"request body over {MAX_BYTES // (1024 * 1024)} MB; send fewer rows per request", 413)
        if status == 404:
            return _error("not found: the explorer serves /, /static/<its own files> and /api/...", 404)
        if status == 405:
            return _error(f"{request.method} is not allowed here: GET /api/runs, /api/run, /api/points; "
                          "POST /api/decode, /api/decode_codes, /api/encode, /api/prior", 405)
        return _error(err.description or err.name, status)

    @app.errorhandler(Exception)
    def _bug(err: Exception) -> Response:  # a bug in vaelab: answered without a traceback, the server goes on
        app.logger.exception("explorer request failed")
        return _error(f"internal error ({type(err).__name__}); the server keeps running", 500)

    def _file(name: str) -> Response:
        path = static_files.get(name)
        if path is None:
            return _error(f"no file {name!r} in the explorer's static files", 404)
        kind = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(path.read_bytes(), mimetype=kind)

    @app.get("/")
    def index() -> Response:
        return _file("index.html")

    @app.get("/static/<name>")
    def static(name: str) -> Response:
        return _file(name)  # only names listed at start-up: no path from a request reaches the disk

    def _get_run() -> _Loaded:
        return loaded[_run_index(request.args.get("run"), len(loaded))]

    def _json_body() -> Any:
        """The request's JSON body, read here rather than by Flask's get_json, so that each way it
        can be wrong gets its own answer (audit EX29, EX52, EX54): not declared JSON, another
        charset, sent chunked (no length to check against MAX_BYTES), not UTF-8, nested too deeply."""
        if not request.is_json:
            raise RequestError("send a JSON body with Content-Type: application/json", 415)
        charset = request.mimetype_params.get("charset")
        if charset is not None and charset.strip().lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise RequestError(f"send the JSON body as UTF-8, not charset={charset}", 415)
        if request.content_length is None:
            raise RequestError("send the body with a Content-Length header (a chunked body is not read); "
                               f"at most {MAX_BYTES // (1024 * 1024)} MB", 411)
        raw = request.get_data(cache=False)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(f"the body is not UTF-8 text (byte 0x{raw[err.start]:02x} at position {err.start}); "
                               "send the JSON body as UTF-8", 415) from None
        try:
            return json.loads(text)
        except RecursionError:
            raise RequestError("the body is not valid JSON: it is nested too deeply; send {\"run\": 0, ...}") from None
        except ValueError as err:
            raise RequestError(f"the body is not valid JSON ({err}); send {{\"run\": 0, ...}}") from None

    def _body(allowed: tuple[str, ...]) -> tuple[dict[str, Any], _Loaded]:
        body = _json_body()
        if not isinstance(body, dict):
            raise RequestError("the body is not a JSON object; send {\"run\": 0, ...}")
        _keys(body, allowed, request.path)
        return body, loaded[_run_index(body.get("run"), len(loaded))]

    @app.get("/api/runs")
    def runs() -> Response:
        return _json({"runs": [{"id": i, "name": r.meta["name"]} for i, r in enumerate(loaded)]})

    @app.get("/api/run")
    def run_meta() -> Response:
        r = _get_run()
        return _json({"id": loaded.index(r), **r.meta})

    @app.get("/api/points")
    def points() -> Response:
        return Response(_get_run().points_json, mimetype="application/json")

    def _seeded(body: dict[str, Any], used: bool, what: str) -> torch.Generator | None:
        if "seed" in body and not used:
            raise RequestError(f"seed applies only to {what}; drop it or ask for them")
        if not used:
            return None
        return generator_for(_integer(body, "seed", 0, 0, MAX_SEED, "the seed of the draws"))

    @app.post("/api/decode")
    @torch.no_grad()
    def decode() -> Response:
        body, r = _body(("run", "z", "c", "draws", "seed"))
        model = r.model
        z = _matrix(body.get("z"), "z", model.latent_dim, "one latent code per row", r.max_rows)
        c = _condition(r, body.get("c"), len(z))
        draws = _flag(body, "draws", False)
        generator = _seeded(body, draws, "draws (\"draws\": true)")
        mean, std, x = _decoded(model, z, c, draws, generator)
        return _answer(mean=mean, std=std, x=x)

    @app.post("/api/decode_codes")
    @torch.no_grad()
    def decode_codes() -> Response:
        """Chosen discrete codes (one class per gumbel group; one code index per VQ group or grid
        cell) -> their z (one-hot vectors / codebook vectors side by side) and its decoding."""
        body, r = _body(("run", "codes", "z", "c", "draws", "seed"))
        model, latent = r.model, r.meta["latent"]
        if latent["kind"] not in ("categorical", "codes"):
            raise RequestError("this run's latent is continuous: it has no codes to choose; send z to /api/decode")
        if ("codes" in body) == ("z" in body):
            raise RequestError("send either codes (integers, one per group / cell) or z (snapped to its nearest "
                               "codes), one of the two")
        if "z" in body:
            codes = snap_codes(model, _matrix(body["z"], "z", model.latent_dim, "one latent code per row",
                                              r.max_rows))
        else:
            codes = _codes(body.get("codes"), latent, r.max_rows)  # (B, N)
        z = codes_to_z(model, codes)  # (B, latent_dim)
        c = _condition(r, body.get("c"), len(z))
        draws = _flag(body, "draws", False)
        generator = _seeded(body, draws, "draws (\"draws\": true)")
        mean, std, x = _decoded(model, z, c, draws, generator)
        return _answer(codes=codes.tolist(), z=z, mean=mean, std=std, x=x)

    @app.post("/api/encode")
    @torch.no_grad()
    def encode() -> Response:
        body, r = _body(("run", "x", "c"))
        model = r.model
        what = "pixels in [0, 1], flattened" if r.meta["kind"] == "image" else "one data point per row"
        x = _matrix(body.get("x"), "x", model.x_dim, what, r.max_rows)
        if r.meta["kind"] == "image" and (bool((x < 0).any()) or bool((x > 1).any())):
            raise RequestError("x holds pixels outside [0, 1]; send grey levels scaled to [0, 1]")
        c = _condition(r, body.get("c"), len(x))
        if has_normal_posterior(model):
            q_z = model.encode(x, c)
            return _answer(mu=q_z.mean, sigma=q_z.stddev)  # (B, d) each
        return _answer(mu=model.embed(x, c), sigma=None)

    @app.post("/api/prior")
    @torch.no_grad()
    def prior() -> Response:
        """n draws z ~ p(z | c) from the model's own prior, decoded as ``model.sample`` does."""
        body, r = _body(("run", "n", "seed", "c", "decode", "draws"))
        model = r.model
        n = _integer(body, "n", None, 1, r.max_rows, "how many prior samples")
        generator = generator_for(_integer(body, "seed", 0, 0, MAX_SEED, "the seed of the draws"))
        decode_z = _flag(body, "decode", True)
        draws = _flag(body, "draws", False)
        if draws and not decode_z:
            raise RequestError("draws (x ~ p(x|z)) need the decoded z: drop \"decode\": false or \"draws\": true")
        c = _condition(r, body.get("c"), n)
        if c is not None and len(c) == 1 and n > 1:
            c = c.expand(n, -1)  # one condition for all: a prior that depends on c then has one row per draw
        p_z = model.prior(c)
        if p_z.batch_shape not in (torch.Size(), torch.Size([n])):
            raise RequestError(f"this model's prior(c) has batch shape {tuple(p_z.batch_shape)}; send one c, "
                               f"or one per draw ({n})")
        codes: Tensor | None
        if isinstance(p_z, CodePrior):  # k ~ p(k) (the learned code prior where the run has one), z = e_k
            codes = p_z.sample_codes((n,), generator)  # (n, N): the draws rsample makes, kept as integers
            z = lookup(codes, p_z.codebook)
        else:
            z = rsample(p_z, (n,) if p_z.batch_shape == torch.Size() else (), generator)  # (n, d), as model.sample
            codes = prior_codes(p_z, z)
        mean = std = x = None
        if decode_z:
            mean, std, x = _decoded(model, z, c, draws, generator)
        one = model.prior(None if c is None else c[:1])
        return _answer(z=z, mean=mean, std=std, x=x, prior=describe_prior(one),
                       codes=None if codes is None else codes.tolist())

    return app


def make_server(app: Flask, host: str, port: int) -> Any:
    """werkzeug's threaded server (what ``app.run`` uses) bound to host:port, without a line per
    request (hovering sends many); ``serve_forever()`` serves, ``server_port`` is the bound port."""
    from werkzeug.serving import WSGIRequestHandler
    from werkzeug.serving import make_server as _make_server

    class QuietHandler(WSGIRequestHandler):
        # werkzeug writes the headers and the body apart: without TCP_NODELAY the body may wait
        # for the client's (delayed) acknowledgement of the headers.
        disable_nagle_algorithm = True

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """Errors the HTTP server answers before the app sees the request (a request line over
            64 kB: 414; a malformed request: 400) in the API's own form, {"error": ...}, not
            http.server's HTML page (audit EX57)."""
            short, long = self.responses.get(code, ("error", ""))
            text = f"{message or short}: {explain or long}"
            if code == 414:
                text = ("the request line is over 64 kB; the explorer's GET requests take only ?run=ID, "
                        "send points and codes as a JSON body with POST")
            body = json.dumps({"error": text}).encode()
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self._linger()

        def _linger(self) -> None:
            """Read what the client is still sending (up to 1 MB, for at most 2 s) before the
            connection closes. An answer given before the whole request was read (the 414 of a
            100 kB request line) leaves the rest unread, and closing a socket with unread input
            resets the connection: the client's send fails and the answer just written may be lost
            (seen 2 times in 300). The usual "lingering close" of HTTP servers."""
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)  # the answer is complete: the client sees its end
                self.connection.settimeout(2.0)
                left = 1 << 20
                while left > 0 and (chunk := self.connection.recv(65536)):
                    left -= len(chunk)
            except OSError:  # the client went away, or kept sending past the time: close anyway
                pass

    return _make_server(host, port, app, threaded=True, request_handler=QuietHandler)
