"""Training: one readable loop (``fit``) and the run-directory driver around it (``train_run``).

``fit`` keeps the whole training set as one tensor on the model's device and shuffles it by
index every epoch, so the hot loop does no per-item Python work. All randomness (shuffling,
the reparameterisation noise) comes from one ``torch.Generator`` whose state is saved with
each checkpoint: a resumed run continues exactly where it left off.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vaelab import checkpoint as ckpt
from vaelab.checkpoint import History, TrainState
from vaelab.conditions import Condition, fit_condition
from vaelab.config import ConfigError, RunConfig, TrainConfig
from vaelab.data.pixels import binarize, fixed_binarization, resolve_binarize
from vaelab.data.registry import load_dataset
from vaelab.models import LatentModel, build_model
from vaelab.objectives import ObjectiveOutput, ae_loss, elbo, iwae

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite (and the skip policy, if chosen, ran
    out of skips). ``step`` and ``epoch`` say where, ``term`` what: "reconstruction", "KL",
    "reconstruction and KL", "loss" (the objective itself, e.g. β·KL or the IWAE bound) or
    "gradients"; ``history`` ends with the failing epoch."""

    def __init__(self, step: int, epoch: int, history: History, *, term: str = "loss", advice: str = "",
                 skips: int = 0) -> None:
        what = {"gradients": "gradients were", "loss": "loss was",
                "reconstruction and KL": "reconstruction and KL terms were"}.get(term, f"{term} term was")
        after = f" after {skips} skipped steps (train.max_skips = {skips})" if skips else ""
        super().__init__(
            f"training stopped{after}: the {what} NaN or infinite at step {step} (epoch {epoch}). {advice}".rstrip()
        )
        self.step, self.epoch, self.history, self.term = step, epoch, history, term


class TrainingInterrupted(Exception):
    """``should_stop`` asked fit() to stop. A checkpoint of the current step (``state``, mid-epoch
    included) was handed to ``on_checkpoint``; fit() with that state resumes exactly."""

    def __init__(self, step: int, epoch: int, state: TrainState, history: History) -> None:
        super().__init__(f"training interrupted at step {step} (epoch {epoch}); a checkpoint of this step was saved")
        self.step, self.epoch, self.state, self.history = step, epoch, state, history


class TrainingDataError(ValueError):
    """What fit() was given cannot be trained on: no rows, the wrong width, or NaN / inf values."""


@dataclass
class StepInfo:
    """Passed to the progress callback after every optimizer step (and every skipped one)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    recon: float
    kl: float
    lr: float = math.nan  # the learning rate of this step (for a skipped step: the one it would have used)
    skipped: bool = False  # nonfinite = "skip" skipped this step
    grad_norm: float = math.nan  # gradient norm over all parameters, before clipping


def objective(model: LatentModel, x: Tensor, c: Tensor | None, config: TrainConfig,
              generator: torch.Generator) -> ObjectiveOutput:
    """The training objective the config asks for (autoencoders always use reconstruction)."""
    if model.config.kind == "ae":
        return ae_loss(model, x, c)
    if config.objective == "iwae":
        return iwae(model, x, c, k=config.k, generator=generator)
    return elbo(model, x, c, beta=config.beta, generator=generator)


@torch.no_grad()
def diversity(model: LatentModel, n: int, generator: torch.Generator, c: Tensor | None = None) -> float:
    """Variance of n decoded prior samples (decoder mean), summed over data dimensions.

    Near 0 means every z decodes to the same x (posterior collapse); it should approach the
    total variance of the data as the model learns.
    """
    return float(model.sample(n, c, generator=generator).var(dim=0).sum())


def total_steps(config: TrainConfig, n: int) -> int:
    """The step budget: ``steps`` if set, else epochs × ceil(n / batch_size)."""
    return config.steps if config.steps is not None else config.epochs * math.ceil(n / config.batch_size)


def fit(
    model: LatentModel,
    x: Tensor,
    config: TrainConfig,
    *,
    c: Tensor | None = None,
    state: TrainState | None = None,
    history: History | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_checkpoint: Callable[[LatentModel, History, TrainState], None] | None = None,
    dynamic_binarization: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> History:
    """Train ``model`` on x (N, D) [with conditions c (N, C)] with Adam; returns the History.

    ``state`` / ``history`` resume an earlier run (weights must already be loaded into the
    model), also from the middle of an epoch. ``on_checkpoint`` is called every
    ``checkpoint_every`` epochs and at the end with a state that resumes exactly. With
    ``dynamic_binarization`` x holds grey levels in [0, 1] and every epoch trains on a fresh
    draw x_bin ~ Bernoulli(x).

    ``should_stop`` is asked before every step (a ``threading.Event().is_set`` works: the
    library installs no signal handlers, the caller does). When it returns True, fit()
    hands a checkpoint of the current step to ``on_checkpoint`` and raises
    TrainingInterrupted.

    A NaN or infinite loss, reconstruction or KL term, or gradient is handled by
    ``config.nonfinite``: "stop" raises TrainingDiverged (naming the step and the term,
    before any checkpoint of the bad epoch is written); "skip" drops that step without
    updating, halves the learning rate for the rest of training, and counts the skip in the
    history; after ``config.skip_limit`` skips the next one stops. ``config.grad_clip``
    rescales the gradient to at most that norm before each step.
    """
    _check_training_data(model, x, c)
    n = x.shape[0]
    device = x.device
    history = history if history is not None else History()
    state = state if state is not None else TrainState()
    # The fused kernel updates every parameter in one pass instead of ~10 elementwise ops per
    # tensor: on CPU it makes a 784-400-20 MNIST epoch ~25 % faster (benchmarks/bench_mnist_speed.py).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused or None)
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device=device).manual_seed(config.seed)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    if state.rng is not None:
        generator.set_state(state.rng)
    budget = total_steps(config, n)
    elapsed = history.last["seconds"] if history.last else 0.0
    bs = config.batch_size
    n_batches = math.ceil(n / bs)
    skip_limit = config.skip_limit if config.nonfinite == "skip" else 0

    def learning_rate(step: int) -> float:
        """Adam's step size at optimizer step ``step`` (0-based): constant, or cosine decay to 0,
        halved once for every step skipped so far."""
        lr = config.lr
        if config.lr_schedule == "cosine":
            lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / budget))
        return lr * 0.5 ** state.skips

    def snapshot(complete: bool) -> TrainState:
        return TrainState(step=state.step, epoch=state.epoch, optimizer=optimizer.state_dict(),
                          rng=generator.get_state(), complete=complete, skips=state.skips)

    model.train()
    while state.step < budget:
        start = time.perf_counter()
        first_batch, seen, skipped, grad_norm_max, lr = 0, 0, 0, 0.0, learning_rate(state.step)
        sums = torch.zeros(3, device=device, dtype=torch.float64)  # Σ loss, recon, kl weighted by batch size
        if state.epoch_rng is not None:  # resuming in the middle of an epoch
            epoch_rng, rng = state.epoch_rng, generator.get_state()
            generator.set_state(epoch_rng)
        else:
            epoch_rng = generator.get_state()
        # Dynamic binarization: a fresh x_bin ~ Bernoulli(x) every epoch, from the training
        # generator, so a resumed run draws the same bits (see vaelab.data.pixels).
        x_epoch = binarize(x, generator) if dynamic_binarization else x
        perm = torch.randperm(n, generator=generator, device=device)
        if state.epoch_rng is not None:
            # The epoch's shuffle and bits are regenerated above; continue with the generator
            # state and the partial sums of the step where the run stopped.
            generator.set_state(rng)
            first_batch, seen, skipped = state.batch, state.epoch_seen, state.epoch_skipped
            grad_norm_max = state.grad_norm_max
            if state.epoch_sums is not None:
                sums = state.epoch_sums.to(device=device, dtype=torch.float64)
            start -= state.epoch_seconds
            state.epoch_rng = None
        for b in range(first_batch, n_batches):
            if state.step >= budget:
                break
            if should_stop is not None and should_stop():
                mid = snapshot(False)
                mid.epoch_rng, mid.batch, mid.epoch_sums = epoch_rng, b, sums.cpu().clone()
                mid.epoch_seen, mid.epoch_skipped = seen, skipped
                mid.epoch_seconds, mid.grad_norm_max = time.perf_counter() - start, grad_norm_max
                model.eval()
                if on_checkpoint is not None:
                    on_checkpoint(model, history, mid)
                raise TrainingInterrupted(state.step, state.epoch + 1, mid, history)
            idx = perm[b * bs:(b + 1) * bs]
            xb, cb = x_epoch[idx], (None if c is None else c[idx])
            out = objective(model, xb, cb, config, generator)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            values = torch.stack([out.loss.detach(), out.recon.detach(), out.kl.detach()])
            loss, recon, kl, norm = torch.cat([values, grad_norm.reshape(1).to(values)]).tolist()  # one sync
            state.step += 1
            lr = learning_rate(state.step - 1)
            if not all(math.isfinite(v) for v in (loss, recon, kl, norm)):
                term = _nonfinite_term(loss, recon, kl, norm)
                if state.skips >= skip_limit:
                    # Record the failing epoch so the report can show it; the last checkpoint stays.
                    history.append(_row(state.epoch + 1, state.step, values.double() * len(idx), len(idx),
                                        math.nan, elapsed + time.perf_counter() - start, lr, skipped, norm))
                    model.eval()
                    raise TrainingDiverged(state.step, state.epoch + 1, history, term=term,
                                           advice=_divergence_advice(term, model, config), skips=state.skips)
                # Skip: no update (Adam's moments stay as they were), and a smaller step from now on.
                optimizer.zero_grad(set_to_none=True)
                state.skips += 1
                skipped += 1
                if on_step is not None:
                    on_step(StepInfo(state.step, budget, state.epoch + 1, loss, recon, kl, lr, True, norm))
                continue
            if config.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(params, config.grad_clip, grad_norm)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            sums += values.double() * len(idx)
            seen += len(idx)
            grad_norm_max = max(grad_norm_max, norm)
            if on_step is not None:
                on_step(StepInfo(state.step, budget, state.epoch + 1, loss, recon, kl, lr, False, norm))
        state.epoch += 1
        model.eval()
        div_gen = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + state.epoch)
        div = diversity(model, config.diversity_samples, div_gen,
                        None if c is None else c[torch.randint(n, (config.diversity_samples,), generator=div_gen,
                                                                device=device)])
        model.train()
        elapsed += time.perf_counter() - start
        history.append(_row(state.epoch, state.step, sums, seen, div, elapsed, lr, skipped, grad_norm_max))
        done = state.step >= budget
        if on_checkpoint is not None and (done or state.epoch % config.checkpoint_every == 0):
            model.eval()
            on_checkpoint(model, history, snapshot(done))
            model.train()
    model.eval()
    return history


def _check_training_data(model: LatentModel, x: Tensor, c: Tensor | None) -> None:
    """Refuse what fit() cannot train on, naming what is wrong, before anything is drawn or updated."""
    if x.ndim != 2:
        raise TrainingDataError(f"x must be a (N, D) tensor of training points; got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise TrainingDataError("x has 0 rows: fit() needs at least one training point")
    if x.shape[1] != model.x_dim:
        raise TrainingDataError(
            f"x has {x.shape[1]} columns but the model was built for x_dim = {model.x_dim}; pass data of "
            f"width {model.x_dim}, or build the model for this data with build_model(config, {x.shape[1]})"
        )
    if c is not None and c.shape[0] != n:
        raise TrainingDataError(f"x has {n} rows but c has {c.shape[0]}; give one condition per training point")
    for name, t in (("x", x), ("c", c)):
        if t is None or not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            row, *col = (int(i) for i in bad.nonzero()[0])
            where = f"row {row}" + (f", column {col[0]}" if col else "")
            # A NaN here would surface as a diverged loss, and advice about the learning rate.
            raise TrainingDataError(
                f"{name} holds {int(bad.sum())} NaN or infinite values (first at {where}); remove or impute "
                "them before training (values beyond ±3.4e38 become inf in float32)"
            )


def _nonfinite_term(loss: float, recon: float, kl: float, grad_norm: float) -> str:
    """Which part of a step went non-finite: the reconstruction or KL term, the objective
    built from finite terms (β·KL, the IWAE bound), or only the gradients."""
    bad = [name for name, v in (("reconstruction", recon), ("KL", kl)) if not math.isfinite(v)]
    if bad:
        return " and ".join(bad)
    return "loss" if not math.isfinite(loss) else "gradients"


def _divergence_advice(term: str, model: LatentModel, config: TrainConfig) -> str:
    """What to change when training stops on a non-finite value. A setting that is itself
    infinite is named first: no learning rate fixes β = inf or σ² = inf."""
    mcfg = model.config
    uses_beta = mcfg.kind != "ae" and config.objective == "elbo"
    gaussian_fixed = mcfg.likelihood == "gaussian"
    if not math.isfinite(config.lr):
        return f"train.lr (--lr) is {config.lr}: use a finite learning rate such as 1e-3."
    if uses_beta and not math.isfinite(config.beta) and term in ("KL", "loss", "reconstruction and KL"):
        return (f"train.beta (--beta) is {config.beta}: the KL term β·KL is then infinite (NaN where KL = 0); "
                "use a finite β such as 4.")
    if term == "loss":  # finite terms, non-finite total: β·KL overflowed, or the IWAE bound did
        return ("The terms were finite, the objective built from them was not: "
                + ("use a smaller --beta." if uses_beta else "try a smaller learning rate (--lr) or a smaller --k."))
    if gaussian_fixed and not math.isfinite(mcfg.recon_var) and "reconstruction" in term:
        return (f"model.recon_var (--recon-var) is {mcfg.recon_var}: log p(x|z) is then −inf for every x; "
                "use a finite σ² such as 0.1 (a smaller σ² weights the reconstruction more).")
    tips = ["a smaller learning rate (--lr)", "gradient clipping (--grad-clip)"]
    if "reconstruction" in term and gaussian_fixed:
        tips.append("a larger --recon-var (a small σ² makes the reconstruction term steep)")
    if "KL" in term:
        tips.append("a bounded encoder scale (--scale softplus)")
        if uses_beta and config.beta > 1:
            tips.append("a smaller --beta")
    if config.nonfinite == "stop":
        tips.append("--nonfinite skip to step over rare bad batches")
    return "Try " + ", ".join(tips[:-1]) + f" or {tips[-1]}."


def _row(epoch: int, step: int, sums: Tensor, seen: int, div: float, seconds: float, lr: float, skipped: int,
         grad_norm: float) -> dict[str, float]:
    # An epoch whose every step was skipped has no loss to report: NaN, not 0.
    loss, recon, kl = (sums / seen).tolist() if seen else (math.nan,) * 3
    return {"epoch": epoch, "step": step, "loss": loss, "recon": recon, "kl": kl, "diversity": div,
            "seconds": seconds, "lr": lr, "skipped": skipped, "grad_norm": grad_norm}


def prepare_run_dir(run_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse to train into a folder that already holds a run, unless told to overwrite.

    With ``overwrite`` the files of the replaced run are removed first (only those a run
    writes: anything else the user keeps in the folder stays).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ckpt.RunDirError(f"{run_dir}: exists and is a file; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise ckpt.RunDirError(
                f"{run_dir}: already exists and is not empty; choose another --out, "
                "pass --overwrite to replace it, or --resume to continue it"
            )
        for name in ckpt.RUN_ARTIFACTS:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def train_run(
    config: RunConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ckpt.Run:
    """Train the configured model and write the run directory; returns the loaded Run.

    With ``resume`` the run in ``run_dir`` is continued from its last checkpoint (its saved
    config is used; ``config.train.epochs`` / ``steps`` may extend the budget).
    ``should_stop`` (see fit) saves a checkpoint of the current step and raises
    TrainingInterrupted; ``resume`` continues it exactly.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"train_run needs a vaelab.RunConfig, got {type(config).__name__}; build one with "
                          "RunConfig.from_dict(...) or RunConfig.from_toml(path)")
    run_dir = Path(run_dir)
    history: History | None = None
    state: TrainState | None = None
    condition: Condition | None = None
    if resume:
        saved = ckpt.load(run_dir, device)
        model = saved.model
        condition = saved.condition
        config = saved.config.model_copy(update={"train": saved.config.train.model_copy(
            update={"epochs": config.train.epochs, "steps": config.train.steps})})
        state = ckpt.load_state(run_dir)
        history = History([r for r in saved.history.rows if r["epoch"] <= state.epoch])
        (run_dir / ckpt.FAILURE_FILE).unlink(missing_ok=True)
    else:
        prepare_run_dir(run_dir, overwrite=overwrite)
    data = load_dataset(config.data, "train")
    pixels = resolve_binarize(config, data)
    x = data.x.to(device)
    if pixels == "fixed":
        x = fixed_binarization(x, "train", config.data.seed)
    if not resume and config.data.condition is not None:
        # The condition spec (label list / training range) comes from the training split
        # only; a resumed run keeps the one it saved.
        condition = fit_condition(config.data.condition, data, config.model.cond_embed)
    c = None if condition is None else condition.tensor(data).to(device)  # (N, cond_dim)
    if not resume:
        model = build_model(config.model, data.dim, 0 if condition is None else condition.width,
                            seed=config.train.seed,
                            cond_embed=() if condition is None else condition.embed_widths).to(device)
        # Save the untrained model first, so there is always a last good checkpoint.
        ckpt.save(run_dir, model, config, history=History(), state=TrainState(), condition=condition)
        (run_dir / ckpt.METRICS_FILE).unlink(missing_ok=True)
        (run_dir / ckpt.FAILURE_FILE).unlink(missing_ok=True)

    def on_checkpoint(m: LatentModel, h: History, s: TrainState) -> None:
        ckpt.save(run_dir, m, config, history=h, state=s, condition=condition)

    try:
        fit(model, x, config.train, c=c, state=state, history=history, on_step=on_step, on_checkpoint=on_checkpoint,
            dynamic_binarization=pixels == "dynamic", should_stop=should_stop)
    except TrainingDiverged as err:
        ckpt.atomic_write_text(run_dir / ckpt.HISTORY_FILE, err.history.to_csv())
        ckpt.write_json(run_dir / ckpt.FAILURE_FILE,
                        {"step": err.step, "epoch": err.epoch, "term": err.term, "message": str(err)})
        raise
    return ckpt.load(run_dir, device)

