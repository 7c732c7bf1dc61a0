"""The one run preparation, shared by ``vaelab train`` (``train_run``) and ``vaelab sweep``.

A run directory is prepared in one order, whoever trains it: the settings are checked, the
training split is loaded (binarized, with its condition), the schedule and the model's memory
are checked against the data, and only then is the folder taken: a new run is claimed and its
untrained model written as the first checkpoint (so there is always a last good one); a run to
continue is locked, a checkpoint a crash interrupted is finished or dropped, and the model,
state and history of its last checkpoint are loaded. A run that diverges keeps its history and
a failure record.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vaelab import checkpoint as ckpt
from vaelab import distributed
from vaelab.checkpoint import TrainState
from vaelab.conditions.spec import Condition, fit_condition
from vaelab.config import ConfigError, RunConfig, TrainConfig, absolute_path, flag_name
from vaelab.data.dataset import Dataset
from vaelab.data.pixels import Binarization, eval_view, resolve_binarize, train_pixels
from vaelab.data.registry import known_dim, load_dataset
from vaelab.devices import pick_device
from vaelab.distributed import DistributedError, World
from vaelab.errors import VaelabNote
from vaelab.history import History
from vaelab.memory import FLOAT_BYTES
from vaelab.memory import check_fits as check_bytes_fit
from vaelab.models import LatentModel, VariationalModel, build_model, family
from vaelab.objectives import describe_loss, requested_objective, resolve_objective
from vaelab.progress import ProgressLine, TrainProgress
from vaelab.schedules import check_schedule, total_steps
from vaelab.settings import check_settings, setting_value
from vaelab.sizes import _meta_model, check_budget, check_eval_fits, check_model_fits
from vaelab.train.loop import fit
from vaelab.train.members import HeldOut, StepInfo, TrainingDiverged


@dataclass
class TrainingData:
    """A run's training split as the loop takes it: x (N, D) on the device (fixed-binarized
    where the run says so), the condition c (N, C) or None, and how pixels are binarized."""

    data: Dataset
    x: Tensor
    c: Tensor | None
    condition: Condition | None
    pixels: Binarization

    @property
    def dynamic_binarization(self) -> bool:
        return self.pixels == "dynamic"


def training_data(config: RunConfig, data: Dataset, device: str | torch.device,
                  condition: Condition | None = None) -> TrainingData:
    """The training tensors of ``data`` under ``config``: binarization resolved, the condition
    fitted on this split (or the saved one a resumed run passes), and the sizes checked."""
    pixels = resolve_binarize(config, data)
    if condition is None and config.data.condition is not None:
        # The condition spec (label list / training range) comes from the training split only.
        condition = fit_condition(config.data.condition, data, config.model.cond_embed)
    x = train_pixels(config, data).to(device)
    c = None if condition is None else condition.tensor(data).to(device)  # (N, cond_dim)
    return TrainingData(data, x, c, condition, pixels)


def heldout_data(config: RunConfig, condition: Condition | None, device: str | torch.device) -> HeldOut:
    """The held-out points the loop scores every epoch (the history's ``heldout_*`` columns): the
    run's test split as ``evaluate_run`` scores it (fresh toy points; images binarized by the fixed
    test draw), with each point's condition, cut to a fixed seeded subset (``HeldOut.subset``)."""
    test, _ = eval_view(config, load_dataset(config.data, "test"))
    c = None if condition is None else condition.tensor(test).to(device)
    return HeldOut.subset(test.x.to(device), c)


DATA_FORMAT = "vaelab-data-1"


def _tensor_sha256(t: Tensor) -> str:
    """sha256 of a tensor's values (CPU, contiguous, its own dtype): the same points give the same hash."""
    arr = t.detach().to("cpu").contiguous().numpy()
    return hashlib.sha256(arr.tobytes()).hexdigest()


def data_fingerprint(config: RunConfig, data: Dataset) -> dict[str, object]:
    """What identifies a run's training split: its source, shape and the sha256 of its points
    (and labels), plus the size and sha256 of the file it came from. Recorded in ``data.json``
    with the run's first checkpoint; a resumed run (``vaelab train --resume``, a sweep's
    ``--resume``) refuses data whose fingerprint differs (:func:`check_same_data`)."""
    record: dict[str, object] = {
        "format": DATA_FORMAT, "source": config.data.path or config.data.name,
        "shape": list(data.x.shape), "x_sha256": _tensor_sha256(data.x),
        "labels_sha256": None if data.labels is None else _tensor_sha256(data.labels),
    }
    path = Path(config.data.path) if config.data.path else None
    if path is not None and path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        record["file"] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return record


class DataChangedError(ConfigError):
    """A run is resumed on training data that differ from those it began on."""


def check_same_data(run_dir: Path, config: RunConfig, data: Dataset) -> dict[str, object] | None:
    """Refuse to continue a run on training data other than those it began on, naming the
    source and what changed. A run from before vaelab recorded the fingerprint resumes with a
    warning (it cannot be checked) and gets the fingerprint from now on. Returns the fingerprint."""
    saved = ckpt.load_data_fingerprint(run_dir)
    now = data_fingerprint(config, data)
    if saved is None:
        warnings.warn(f"{run_dir}: this run was written before vaelab recorded a fingerprint of the training data, "
                      f"so whether {now['source']} changed since it began cannot be checked; it is recorded now, "
                      "and later resumes are checked against it", DataFingerprintNote, stacklevel=2)
        ckpt.write_data_fingerprint(run_dir, now)
        return now
    changes = []
    if saved.get("shape") != now["shape"]:
        changes.append(f"the training split was {' x '.join(map(str, saved.get('shape') or []))} values, now "
                       f"{' x '.join(map(str, now['shape']))}")  # type: ignore[call-overload]
    old_file, new_file = saved.get("file"), now.get("file")
    if isinstance(old_file, dict) and isinstance(new_file, dict):
        if old_file.get("size") != new_file.get("size"):
            changes.append(f"the file was {old_file.get('size'):,} bytes, now {new_file['size']:,}")
        elif old_file.get("sha256") != new_file.get("sha256"):
            changes.append("the file has the same size but other contents (its sha256 differs)")
    if saved.get("x_sha256") != now["x_sha256"] and not changes:
        changes.append("the training points differ (their sha256 differs)")
    if saved.get("labels_sha256") != now["labels_sha256"]:
        changes.append("the labels differ")
    if changes:
        raise DataChangedError(
            f"{run_dir}: the training data changed since the run began ({now['source']}: {'; '.join(changes)}); "
            "continuing would train the saved model on other data and break the exact resume. Restore the "
            f"data the run began on, or train a new run on these data with another --out")
    return now


class DataFingerprintNote(VaelabNote):
    """A resumed run carries no fingerprint of its training data (written before vaelab recorded one)."""


def check_fits(config: RunConfig, train: TrainingData) -> None:
    """Refuse, before the run directory is taken, a schedule the budget cannot hold and a
    model or step that cannot fit in memory."""
    n = len(train.data)
    steps = total_steps(config.train, n)
    check_budget(steps, _budget_words(config.train))
    check_schedule(config.train, math.ceil(n / config.train.batch_size), steps)
    cond = train.condition
    check_model_fits(config.model, config.train, train.data.dim, 0 if cond is None else cond.width,
                     () if cond is None else cond.embed_widths)
    model = _meta_model(config.model, train.data.dim, 0 if cond is None else cond.width,
                        () if cond is None else cond.embed_widths)
    if isinstance(model, VariationalModel):  # the final evaluation's k, checked before training (audit TR79)
        check_eval_fits(model, config.eval.batch_size, config.eval.k, config.eval.batch_size, "--eval-k",
                        passes=False)


def check_fits_before_reading(config: RunConfig) -> None:
    """Refuse a model or step that cannot fit, before the data is read, where the data's width
    is known from the settings alone (a folder of images: --image-size): a huge --image-size was
    refused only after every image had been read and resized (audit IF15). The condition's
    width is not known yet, so this is a lower bound; ``check_fits`` checks it all again."""
    dim = known_dim(config.data)
    if dim is None:
        return
    # A batch of the images first, named by --image-size: a size of 10^9 (10^18 pixels) would
    # overflow torch's size arithmetic while building even the shapes of the model (audit TR124).
    size = config.data.image_size
    check_bytes_fit(2.0 * config.train.batch_size * dim * FLOAT_BYTES,
                    f"a batch of --batch-size {config.train.batch_size} images of --image-size {size} ({dim:,} "
                    "grey values each, with their reconstructions)",
                    "use a smaller --image-size (28 for MNIST-like images)")
    check_model_fits(config.model, config.train, dim)


def new_model(config: RunConfig, train: TrainingData, device: str | torch.device) -> LatentModel:
    """The run's untrained model, seeded with ``train.seed`` (its output bias from the training
    points where ``model.output_bias`` says so)."""
    cond = train.condition
    return build_model(config.model, train.data.dim, 0 if cond is None else cond.width, seed=config.train.seed,
                       cond_embed=() if cond is None else cond.embed_widths, train_x=train.x).to(device)


def start_from(model: LatentModel, config: RunConfig, source_dir: Path, device: str | torch.device) -> None:
    """Load the weights (parameters and buffers) of the run in ``source_dir`` into ``model``.

    Raises:
        ConfigError: the run's model settings or data differ from ``config``'s.
    """
    source = ckpt.load(source_dir, device)
    for section in ("model", "data"):
        if getattr(source.config, section) != getattr(config, section):
            raise ConfigError(f"init_from: the run in {source_dir} has other {section} settings than this one; a run "
                              f"starts from another's weights only with the same {section} settings (copy them from "
                              f"{source_dir / 'config.json'})")
    model.load_state_dict(source.model.state_dict())


def start_run(run_dir: Path, model: LatentModel, config: RunConfig, condition: Condition | None, *,
              overwrite: bool, data: dict[str, object] | None = None) -> ckpt.RunLock:
    """Take the folder (replacing a run vaelab made, with ``overwrite``) and write the untrained
    model as its first checkpoint, with the training data's fingerprint ``data``
    (:func:`data_fingerprint`); returns the held lock."""
    lock = ckpt.claim(run_dir, overwrite=overwrite)
    try:
        ckpt.write_checkpoint(run_dir, model, config, history=History(), state=TrainState(), condition=condition,
                              data=data)
    except BaseException:
        lock.release()
        raise
    return lock


@dataclass
class Resumed:
    """A run directory opened to continue: its last checkpoint, state and history, and the held lock."""

    run: ckpt.Run
    state: TrainState
    history: History
    lock: ckpt.RunLock


def resume_run(run_dir: Path, device: str | torch.device) -> Resumed:
    """Lock the run, finish (or drop) a checkpoint a crash interrupted, and load the last one:
    the model, its state and the history rows up to it."""
    if not run_dir.is_dir():
        ckpt.load(run_dir, device)  # raises the error that explains what a run directory is
    lock = ckpt.RunLock(run_dir).acquire()
    try:
        ckpt.recover(run_dir)
        run = ckpt.load(run_dir, device)
        state = ckpt.load_state(run_dir)
    except BaseException:
        lock.release()
        raise
    return Resumed(run, state, History([r for r in run.history.rows if r["epoch"] <= state.epoch]), lock)


def resolve_objective_of(config: RunConfig) -> RunConfig:
    """``config`` with the objective it trains with written out where that is not the configured
    one: a β-VAE run (β ≠ 1, a β schedule or free bits) without a named objective trains the
    β-ELBO (``objectives.requested_objective``), and its config.json must say so. Sweeps resolve
    every member before grouping them, so that a stack never mixes objectives."""
    if requested_objective(config.train) == config.train.objective:
        return config
    return config.model_copy(update={"train": resolve_objective(config.train, family(config.model.kind))})


def record_failure(run_dir: Path, err: TrainingDiverged) -> None:
    """What a diverged run keeps: its history up to the failing epoch and what went wrong."""
    ckpt.write_history(run_dir, err.history)
    ckpt.write_json(run_dir / ckpt.FAILURE_FILE,
                    {"step": err.step, "epoch": err.epoch, "term": err.term, "message": str(err)})


# What may change when a run is resumed: the budget, the step size, how often it is
# saved, and how it is evaluated. Everything else defines the model or its data.
RESUMABLE = frozenset({"train.epochs", "train.steps", "train.lr", "train.checkpoint_every", "train.compile",
                       "eval.k", "eval.batch_size", "eval.seed"})


def resolve_paths(config: RunConfig) -> RunConfig:
    """``config`` with relative data paths made absolute, so the run can be evaluated from
    another working directory (the user's explicit settings are kept as such)."""
    update = {}
    for key in ("path", "data_dir"):
        value = getattr(config.data, key)
        if value is not None and not Path(value).expanduser().is_absolute():
            update[key] = absolute_path(value)
    if not update:
        return config
    data = config.data.model_copy(update=update)
    data.__pydantic_fields_set__ = set(config.data.model_fields_set)
    return config.model_copy(update={"data": data})


def resume_config(saved: RunConfig, given: RunConfig, n_train: int) -> RunConfig:
    """The config a resumed run continues with: the saved one, with the settings the user
    gave in ``given`` (its ``model_fields_set``) that may change (``RESUMABLE``).

    Without a new budget the run keeps its own. Raises ConfigError for a setting that cannot
    change (naming it) or a budget smaller than the saved one.
    """
    refused = []
    train_update: dict[str, object] = {}
    eval_update: dict[str, object] = {}
    given = resolve_paths(given)
    for dotted in given.user_settings():
        section, field = dotted.split(".", 1)
        value = setting_value(given, dotted)
        if dotted in RESUMABLE:
            (train_update if section == "train" else eval_update)[field] = value
        elif value != setting_value(saved, dotted):
            refused.append(f"  {flag_name(dotted)}: the run has {setting_value(saved, dotted)!r}")
    if refused:
        raise ConfigError(
            "a resumed run keeps its data and model; these settings cannot change:\n" + "\n".join(refused)
            + "\n(drop them; --epochs / --steps, --lr, --checkpoint-every and --eval-k may change; "
            "start a new run with another --out for the rest)"
        )
    if "epochs" in train_update and "steps" not in train_update:
        train_update["steps"] = None  # an epoch budget replaces a saved step budget
    train = saved.train.model_copy(update=train_update)
    old_budget, new_budget = total_steps(saved.train, n_train), total_steps(train, n_train)
    if new_budget < old_budget:
        raise ConfigError(
            f"the run's budget is {old_budget} steps ({_budget_words(saved.train)}); the given "
            f"{_budget_words(train)} is {new_budget} steps. A resumed run is continued, never "
            "shortened: drop --epochs / --steps to keep its budget, or give a larger one"
        )
    return saved.model_copy(update={
        "train": train, "eval": saved.eval.model_copy(update=eval_update),
    })


def _check_writable(run_dir: Path) -> None:
    """Fail before training, not at the first checkpoint after the whole budget (audit T78d)."""
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise ckpt.RunDirError(
            f"{run_dir}: cannot write in the run directory ({err.strerror or err}); a resumed run could not "
            "save its checkpoints. Make the folder writable, or copy the run to a writable place and resume there"
        ) from None


def _budget_words(train: TrainConfig) -> str:
    return f"--steps {train.steps}" if train.steps is not None else f"--epochs {train.epochs}"


def train_run(
    config: RunConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    init_from: str | Path | None = None,
) -> ckpt.Run:
    """Train the configured model and write the run directory; returns the loaded Run.

    Every setting given in ``config`` must apply (``check_settings``); relative data paths
    are stored absolute. With ``resume`` the run in ``run_dir`` is continued from its last
    checkpoint with its saved config and budget; the settings given in ``config`` that may
    change (a larger budget, ``lr``, ``checkpoint_every``, evaluation) replace the saved ones
    and are recorded in config.json; any other given setting that differs is refused.
    Nothing is allocated or written before the sizes are checked against memory.

    The run directory is locked for the whole training (a second training into it is
    refused). With ``overwrite`` the data is loaded and the model built before anything of
    the replaced run is removed, so a bad setting leaves the old run intact; only a folder
    vaelab made is replaced.
    ``should_stop`` (see fit) saves a checkpoint of the current step and raises
    TrainingInterrupted; ``resume`` continues it exactly.

    ``device``: ``"auto"`` (the default, as ``vaelab train --device auto``) takes CUDA if this
    machine has it, then MPS, else the CPU (``vaelab.devices.pick_device``); or ``"cpu"``,
    ``"cuda"``, ``"cuda:N"``, ``"mps"``, a ``torch.device``. The run's model is loaded there.

    ``init_from``: a finished run whose weights the model starts from instead of its seeded
    initialisation (the same model settings and data; refused with ``resume``). A two-stage
    model trains its second stage so, as a run of its own: a VQ-VAE's prior over the codes is
    ``train_run(config with train.objective = "vq_prior", RUN / "prior", init_from=RUN)``, with
    its own budget, optimizer, history, checkpoints and exact resume.

    ``progress=True`` shows one line on stderr, redrawn in a terminal or a notebook cell: the
    step out of the budget, the loss under its objective's name (``−IWAE bound (k = 4)``) with
    its terms, and the elapsed and remaining time (``vaelab.progress``). Without it nothing is
    printed. ``on_step`` is called after every step either way, with a ``StepInfo``.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"train_run needs a vaelab.RunConfig, got {type(config).__name__}; build one with "
                          "RunConfig.from_dict(...) or RunConfig.from_toml(path)")
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; give only one")
    if resume and init_from is not None:
        raise ConfigError("init_from starts a run from another run's weights, and resume continues this run from its "
                          "own; give only one")
    world = World.from_env()
    device = world.device(pick_device(device))
    distributed.init(world, device)
    line = ProgressLine() if progress and world.is_main else None
    if line is not None:
        line.show(f"train_run: {'opening' if resume else 'preparing'} {run_dir} (loading the data, building the "
                  "model)", force=True)
    lock: ckpt.RunLock | None = None
    try:
        state: TrainState | None = None
        history: History | None = None
        if world.is_main:
            try:
                if resume:
                    resumed = resume_run(run_dir, device)
                    lock, model, state, history = resumed.lock, resumed.run.model, resumed.state, resumed.history
                    data = load_dataset(resumed.run.config.data, "train", expect_dim=model.x_dim)
                    config = resume_config(resumed.run.config, config, len(data))
                    check_same_data(run_dir, config, data)
                    train = training_data(config, data, device, resumed.run.condition)  # the condition it saved
                    heldout = heldout_data(config, train.condition, device)
                    check_fits(config, train)
                    _check_writable(run_dir)
                    (run_dir / ckpt.FAILURE_FILE).unlink(missing_ok=True)
                else:
                    check_settings(config)
                    config = resolve_objective_of(resolve_paths(config))
                    ckpt.check_run_dir(run_dir, overwrite=overwrite)  # before any work: nothing is removed yet
                    check_fits_before_reading(config)
                    train = training_data(config, load_dataset(config.data, "train"), device)
                    check_fits(config, train)
                    heldout = heldout_data(config, train.condition, device)  # a missing test split: nothing taken yet
                    model = new_model(config, train, device)
                    if init_from is not None:
                        start_from(model, config, Path(init_from), device)
                    # Only now, with the data read and the model built, is the folder taken (and a
                    # replaced run cleared).
                    lock = start_run(run_dir, model, config, train.condition, overwrite=overwrite,
                                     data=data_fingerprint(config, train.data))
            except BaseException:
                if world.distributed:
                    distributed.broadcast_flag(False, device)  # the other ranks stop too, instead of waiting
                raise
            if world.distributed:
                distributed.broadcast_flag(True, device)
        else:
            # Rank 0 prepared the folder (claimed it, or recovered the run to continue); every
            # other rank starts from the checkpoint it left there.
            if not distributed.broadcast_flag(False, device):
                raise DistributedError(f"rank {world.rank}: rank 0 could not prepare {run_dir} (its message says "
                                       "why); this rank stops too")
            resumed_run = ckpt.load(run_dir, device)
            model, state = resumed_run.model, ckpt.load_state(run_dir)
            history = History([r for r in resumed_run.history.rows if r["epoch"] <= state.epoch])
            data = load_dataset(resumed_run.config.data, "train", expect_dim=model.x_dim)
            config = (resume_config(resumed_run.config, config, len(data)) if resume
                      else resolve_objective_of(resolve_paths(config)))
            train = training_data(config, data, device, resumed_run.condition)
            heldout = heldout_data(config, train.condition, device)
        condition, run_config = train.condition, config

        def on_checkpoint(m: LatentModel, h: History, s: TrainState) -> None:
            if world.is_main:  # rank 0 alone writes; the others computed the same state
                ckpt.write_checkpoint(run_dir, m, run_config, history=h, state=s, condition=condition)

        if line is not None:
            on_step = TrainProgress(describe_loss(model, config.train), line, also=on_step)
        try:
            fit(model, train.x, config.train, c=train.c, state=state, history=history, on_step=on_step,
                on_checkpoint=on_checkpoint, dynamic_binarization=train.dynamic_binarization,
                should_stop=should_stop, world=world, heldout=heldout)
        except TrainingDiverged as err:
            if world.is_main:
                record_failure(run_dir, err)
            raise
        finally:
            if line is not None:
                line.close()  # whatever ended the training, the next output starts on a line of its own
            distributed.barrier()  # the others wait for rank 0's last write
        run = ckpt.load(run_dir, device)
        if world.is_main:
            ckpt.discard_stale_metrics(run)  # e.g. from an eval while this run trained
        return run
    finally:
        if line is not None:
            line.close()  # a refusal before the first step ends the preparing line too
        if lock is not None:
            lock.release()
