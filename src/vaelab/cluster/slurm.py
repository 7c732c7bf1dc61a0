"""SLURM batch scripts for vaelab: a sweep as a job array, one run as torchrun across nodes.

vaelab has no scheduler of its own: it writes an ordinary ``sbatch`` script that a user can
read, keep and submit again, and submits it with ``sbatch`` (the cluster's own command).

- ``sweep_array_script``: one array task per share of the sweep (``vaelab.sweep.shards``);
  task I runs ``vaelab sweep --out SWEEP --resume --shard I/N``, which reads the grid from the
  sweep folder, so the script repeats no setting.
- ``train_script``: ``srun`` starts torchrun once per node, with the rendezvous on the job's
  first node; the run's processes are nodes × processes per node.

Both are restartable: ``--requeue`` lets SLURM put a preempted task back in the queue, and near
the time limit SLURM signals the batch shell (``--signal=B:USR1@…``), which asks vaelab to save
a checkpoint at its current step (SIGTERM, as Ctrl-C does) and requeues the task. A requeued
task continues from its checkpoints: a sweep share with ``--resume``, a run with
``vaelab train --resume`` once the run has a training state.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vaelab.errors import InputError

# Seconds before the time limit at which SLURM signals the batch shell: time to finish the
# current step and write one checkpoint.
SIGNAL_BEFORE_END = 120

# SLURM's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds.
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$")


class ClusterError(InputError):
    """A SLURM setting or submission that cannot work; the message says what to do."""


@dataclass(frozen=True)
class SlurmOptions:
    """What a job asks of the cluster (None: the cluster's default).

    ``partition``: one or more partitions (comma list); ``time``: the time limit in SLURM's
    formats (``90``, ``4:00:00``, ``1-12``); ``cpus_per_task``, ``gpus_per_task``; ``array_limit``:
    at most this many array tasks at once (``%M``).
    """

    partition: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    array_limit: int | None = None

    def __post_init__(self) -> None:
        if self.partition is not None and not _PARTITION.match(self.partition):
            raise ClusterError(f"--partition {self.partition!r}: give a partition name (letters, digits, _ . -), or "
                               "several as a comma list; `sinfo -s` lists the cluster's partitions")
        if self.time is not None and not _TIME.match(self.time):
            raise ClusterError(f"--time {self.time!r}: give the time limit in one of SLURM's forms: minutes (90), "
                               "hours:minutes:seconds (4:00:00) or days-hours[:minutes[:seconds]] (1-12)")
        for flag, value, least in (("--cpus-per-task", self.cpus_per_task, 1), ("--gpus-per-task",
                                   self.gpus_per_task, 0), ("--array-limit", self.array_limit, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ClusterError(f"{flag} takes a whole number of at least {least}; got {value!r}")

    def directives(self) -> list[str]:
        """The #SBATCH lines of the settings given (resources and placement)."""
        lines = []
        if self.partition is not None:
            lines.append(f"#SBATCH --partition={self.partition}")
        if self.time is not None:
            lines.append(f"#SBATCH --time={self.time}")
        if self.cpus_per_task is not None:
            lines.append(f"#SBATCH --cpus-per-task={self.cpus_per_task}")
        return lines


# The requeue-before-the-time-limit part of every script: the batch shell waits for its
# command, which runs in the background so that the shell can take SLURM's signal.
_REQUEUE = """\
# Near the time limit SLURM sends USR1 to this shell (--signal above): vaelab saves a checkpoint at
# its current step (on SIGTERM, as on Ctrl-C) and the task goes back in the queue to continue.
on_time_limit() {{
  echo "vaelab: the time limit is near: saving a checkpoint and requeueing {task}"
  kill -TERM "$child"
  wait "$child"
  scontrol requeue "{task}"
  exit 0
}}
trap on_time_limit USR1
wait "$child"
"""


def sweep_array_script(out: Path, shards: int, options: SlurmOptions, *, python: str,
                       extra: Sequence[str] = ()) -> str:
    """The job-array script of a sweep in ``shards`` shares, whose folder ``out`` (absolute, on
    a file system every node sees) already holds sweep.json; ``python`` runs vaelab on the
    nodes, ``extra``: options every task passes on (``--jobs 2``, ``--no-report``)."""
    limit = f"%{options.array_limit}" if options.array_limit is not None else ""
    gpus = [f"#SBATCH --gpus-per-task={options.gpus_per_task}"] if options.gpus_per_task else []
    command = [python, "-m", "vaelab", "sweep", "--out", str(out), "--resume", *extra]
    collect = shlex.join([python, "-m", "vaelab", "sweep", "--collect", str(out)])
    lines = [
        "#!/bin/bash",
        f"# vaelab sweep {out}: {shards} shares as one SLURM job array (written by `vaelab sweep --slurm`).",
        "# Array task I trains share I of the sweep into its folder and, requeued, continues from its",
        "# members' checkpoints. Submit again with: sbatch THIS_FILE. When every task has ended:",
        f"#   {collect}",
        "#SBATCH --job-name=vaelab-sweep",
        f"#SBATCH --array=1-{shards}{limit}",
        f"#SBATCH --output={out}/slurm/%A_%a.log",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{SIGNAL_BEFORE_END}",
        "#SBATCH --ntasks=1",
        *options.directives(),
        *gpus,
        "set -u",
        "# torch's threads: the CPUs SLURM gave this task, not every core of the node",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        f'{shlex.join(command)} --shard "$SLURM_ARRAY_TASK_ID/{shards}" &',
        "child=$!",
        _REQUEUE.format(task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"),
    ]
    return "\n".join(lines)


def train_script(out: Path, train_args: Sequence[str], options: SlurmOptions, *, nodes: int, nproc: int,
                 python: str, root: Sequence[str] = ()) -> str:
    """The script of one run on ``nodes`` nodes × ``nproc`` processes each: ``srun`` starts
    torchrun on every node, with the rendezvous (c10d) on the job's first node, and torchrun
    starts ``vaelab train TRAIN_ARGS --out OUT`` in each process. Requeued, the run continues
    with ``vaelab train --out OUT --resume`` once it has a training state (state.pt). ``root``:
    options of vaelab itself, before the command (``--plugin M``)."""
    for flag, value in (("--nodes", nodes), ("--nproc", nproc)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClusterError(f"{flag} takes a whole number of at least 1; got {value!r}")
    gpus = [f"#SBATCH --gpus-per-node={options.gpus_per_task}"] if options.gpus_per_task else []
    start = shlex.join([*root, "train", *train_args, "--out", str(out)])
    resume = shlex.join([*root, "train", "--out", str(out), "--resume"])
    lines = [
        "#!/bin/bash",
        f"# vaelab train -> {out}: {nodes} node(s) x {nproc} process(es) under torchrun (written by",
        "# `vaelab train --slurm`). Submit again with: sbatch THIS_FILE",
        "#SBATCH --job-name=vaelab-train",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --output={out}.slurm/%j.log",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{SIGNAL_BEFORE_END}",
        *options.directives(),
        *gpus,
        "set -u",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        "# The rendezvous: the job's first node, on a port of this job's own.",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "port=$((20000 + SLURM_JOB_ID % 20000))",
        f"if [ -e {shlex.quote(str(out / 'state.pt'))} ]; then  # requeued: continue from the last checkpoint",
        f"  args=({resume})",
        f"elif [ -e {shlex.quote(str(out))} ]; then  # requeued before the first checkpoint: start again",
        f"  args=({start} --overwrite)",
        "else",
        f"  args=({start})",
        "fi",
        f"srun --kill-on-bad-exit=1 {shlex.quote(python)} -m torch.distributed.run --nnodes=\"$SLURM_JOB_NUM_NODES\" "
        f"--nproc-per-node={nproc} --rdzv-backend=c10d --rdzv-endpoint=\"$head:$port\" --rdzv-id=\"$SLURM_JOB_ID\" "
        '-m vaelab "${args[@]}" &',
        "child=$!",
        _REQUEUE.format(task="${SLURM_JOB_ID}"),
    ]
    return "\n".join(lines)


def submit(script: Path) -> str:
    """Submit ``script`` with ``sbatch --parsable``; returns the job id (ClusterError: why not)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ClusterError(f"sbatch is not on PATH, so {script} cannot be submitted here: run the command on the "
                           f"cluster's login node, or submit the script there with `sbatch {script}` (--dry-run "
                           "writes it without submitting)")
    try:
        done = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ClusterError(f"sbatch {script} failed ({err}); the script is kept: submit it with `sbatch {script}` "
                           "once SLURM answers") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise ClusterError(f"sbatch refused {script}: {said}; the script is kept: change the --slurm options "
                           f"(or the script) and submit it with `sbatch {script}`")
    return done.stdout.strip().split(";")[0]
