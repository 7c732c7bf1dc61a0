"""Sweeps in shares (`vaelab sweep --shard I/N`, `--collect`) and on SLURM (`--slurm`): shares run
by hand as separate processes, the job-array and torchrun scripts, and a real one-node SLURM
cluster (tests/slurm_cluster.py; skipped, with the reason, where it cannot start)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import slurm_cluster
from vaelab.cluster.slurm import ClusterError, SlurmOptions, sweep_array_script
from vaelab.sweep.folder import METRICS_CSV, REPORT_FILE, SWEEP_FILE
from vaelab.sweep.grid import GridError
from vaelab.sweep.shards import parse_shard, split_groups

# Two shapes (latent_dim) x two β: two groups of two stackable members.
GRID = ["--data", "ring", "--n-train", "300", "--n-test", "100", "--hidden", "8", "--epochs", "3",
        "--batch-size", "50", "--eval-k", "10", "--latent-dim", "1,2", "--beta", "0.5,1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}


def vaelab(*args: object, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env or ENV, timeout=timeout)


def popen(*args: object, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vaelab", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env or ENV)


def _rows(path: Path, drop: tuple[str, ...] = ("seconds",)) -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def assert_same_sweep(a: Path, b: Path) -> None:
    """The same table (but the seconds) and, member by member, the same weights bit for bit and
    the same history."""
    assert _rows(a / METRICS_CSV) == _rows(b / METRICS_CSV)
    members = sorted(p.name for p in (a / "runs").iterdir())
    assert members == sorted(p.name for p in (b / "runs").iterdir()) and members
    for name in members:
        wa, wb = load_file(a / "runs" / name / "model.safetensors"), load_file(b / "runs" / name / "model.safetensors")
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
        assert _rows(a / "runs" / name / "history.csv") == _rows(b / "runs" / name / "history.csv"), name


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The grid as one sweep, in one process: what every split must give."""
    cwd = tmp_path_factory.mktemp("whole")
    done = vaelab("sweep", *GRID, "--out", "S", "--no-report", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "S"


# -- the split -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parsed"), [("1/1", (1, 1)), ("2/4", (2, 4)), (" 3 / 3 ", (3, 3))])
def test_a_share_is_i_of_n_counted_from_1(text, parsed):
    assert parse_shard(text) == parsed


@pytest.mark.parametrize(("text", "message"), [("0/4", "1 <= I <= N"), ("5/4", "I = 5, N = 4"),
                                               ("2", "give the share as I/N"), ("a/b", "I/N"), ("1/0", "1 <= I")])
def test_a_share_that_cannot_be_is_refused(text, message):
    with pytest.raises(GridError, match=message):
        parse_shard(text)


def test_groups_go_to_shares_whole_balanced_and_always_the_same_way():
    groups = [["a", "b", "c"], ["d"], ["e", "f"], ["g"], ["h", "i"]]
    split = split_groups(groups, 3)
    assert split == split_groups(groups, 3)  # a pure function of the grid
    assert sorted(m for share in split for g in share for m in g) == sorted("abcdefghi")  # each member once
    assert [sum(len(g) for g in share) for share in split] == [3, 3, 3]
    assert all(g in groups for share in split for g in share)  # groups stay whole
    one_each = split_groups(groups, 5)
    assert all(len(share) == 1 for share in one_each) and sorted(s[0] for s in one_each) == sorted(groups)
    with pytest.raises(GridError, match="trains as 5 group.*use at most 5 shares"):
        split_groups(groups, 6)


# -- shares by hand ------------------------------------------------------------------------------


def test_two_shares_run_at_once_by_hand_collect_to_the_whole_sweep(whole, tmp_path):
    shares = [popen("sweep", *GRID, "--out", "S", "--shard", f"{i}/2", "--no-report", cwd=tmp_path) for i in (1, 2)]
    outs = [p.communicate(timeout=300) for p in shares]
    for p, (stdout, stderr) in zip(shares, outs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
        assert "share" in stdout and "--collect" in stdout
    sweep = tmp_path / "S"
    assert not (sweep / METRICS_CSV).exists() and not (sweep / REPORT_FILE).exists()  # shares never write these
    assert json.loads((sweep / SWEEP_FILE).read_text())["shards"] == 2
    done = vaelab("sweep", "--collect", "S", "--no-report", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sweep / REPORT_FILE).is_file()
    assert_same_sweep(sweep, whole)


def test_collect_names_what_is_missing_and_writes_nothing(tmp_path):
    done = vaelab("sweep", *GRID, "--out", "S", "--shard", "2/2", "--no-report", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    early = vaelab("sweep", "--collect", "S", cwd=tmp_path)
    assert early.returncode == 2
    said = " ".join(early.stderr.split())
    assert "2 of 4 members are not trained yet" in said and "(share 1/2, not started)" in said
    assert "--resume --shard 1/2" in said and "Traceback" not in early.stderr
    assert not (tmp_path / "S" / METRICS_CSV).exists() and not (tmp_path / "S" / REPORT_FILE).exists()
    # A share of another split, or of another grid, is refused before anything is trained.
    other = vaelab("sweep", *GRID, "--out", "S", "--shard", "1/1", cwd=tmp_path)
    assert other.returncode == 2 and "split into 2 shares, not 1: give --shard I/2" in " ".join(other.stderr.split())
    changed = vaelab("sweep", *GRID[:-1], "0.25,1", "--out", "S", "--shard", "1/2", cwd=tmp_path)
    assert changed.returncode == 2 and "started with another grid" in " ".join(changed.stderr.split())
    assert sorted(p.name for p in (tmp_path / "S" / "runs").iterdir()) == ["latent_dim=2,beta=0.5",
                                                                          "latent_dim=2,beta=1.0"]


def test_more_shares_than_groups_are_refused_before_any_folder(tmp_path):
    done = vaelab("sweep", *GRID, "--out", "S", "--shard", "1/3", cwd=tmp_path)
    assert done.returncode == 2 and "use at most 2 shares" in " ".join(done.stderr.split())
    assert not (tmp_path / "S").exists() and "sweep of" not in done.stdout


def test_a_share_killed_after_a_checkpoint_continues_exactly(tmp_path):
    # Long enough to be caught between checkpoints (one per epoch).
    slow = [*GRID[:GRID.index("--epochs")], "--epochs", "60", "--checkpoint-every", "1",
            *GRID[GRID.index("--epochs") + 2:]]
    straight = vaelab("sweep", *slow, "--out", "straight", "--shard", "1/2", "--no-report", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    share = popen("sweep", *slow, "--out", "S", "--shard", "1/2", "--no-report", cwd=tmp_path)
    end, caught = time.monotonic() + 120, False
    while time.monotonic() < end and not caught and share.poll() is None:
        caught = any((p / "state.pt").is_file() for p in (tmp_path / "S" / "runs").glob("*"))
        time.sleep(0.02)
    share.send_signal(signal.SIGKILL)
    share.communicate(timeout=60)
    assert caught and share.returncode == -signal.SIGKILL  # killed in training, after a checkpoint
    again = vaelab("sweep", "--out", "S", "--resume", "--shard", "1/2", "--no-report", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("latent_dim=1,beta=0.5", "latent_dim=1,beta=1.0"):
        a, b = (load_file(tmp_path / d / "runs" / name / "model.safetensors") for d in ("S", "straight"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert _rows(tmp_path / "S" / "runs" / name / "history.csv") == \
            _rows(tmp_path / "straight" / "runs" / name / "history.csv")


# -- the scripts ---------------------------------------------------------------------------------


def test_sweep_slurm_dry_run_writes_the_array_script_and_the_record(tmp_path):
    done = vaelab("sweep", *GRID, "--out", "S", "--slurm", "--dry-run", "--partition", "gpu,debug", "--time",
                  "1-02:00", "--cpus-per-task", "2", "--gpus-per-task", "1", "--array-limit", "1", "--jobs", "2",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    script = tmp_path / "S" / "slurm" / "sweep.sbatch"
    text = script.read_text()
    assert text in done.stdout and f"submit it with: sbatch {script}" in " ".join(done.stdout.split())
    for line in ("#SBATCH --array=1-2%1", "#SBATCH --partition=gpu,debug", "#SBATCH --time=1-02:00",
                 "#SBATCH --cpus-per-task=2", "#SBATCH --gpus-per-task=1", "#SBATCH --requeue",
                 f"#SBATCH --output={tmp_path}/S/slurm/%A_%a.log"):
        assert line in text.splitlines()
    assert f'--out {tmp_path}/S --resume --jobs 2 --shard "$SLURM_ARRAY_TASK_ID/2" &' in text
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert json.loads((tmp_path / "S" / SWEEP_FILE).read_text())["shards"] == 2  # the tasks read the grid here
    assert not (tmp_path / "S" / "runs" / "latent_dim=1,beta=0.5").exists()  # nothing trained
    # Given again with --resume, the same split is kept; another one is refused.
    again = vaelab("sweep", "--out", "S", "--resume", "--slurm", "--dry-run", cwd=tmp_path)
    assert again.returncode == 0 and "#SBATCH --array=1-2\n" in (tmp_path / "S/slurm/sweep.sbatch").read_text()
    other = vaelab("sweep", "--out", "S", "--resume", "--slurm", "--shards", "1", "--dry-run", cwd=tmp_path)
    assert other.returncode == 2 and "split into 2 shares, not 1" in " ".join(other.stderr.split())


@pytest.mark.parametrize(("args", "message"), [
    (["--partition", "gpu"], "--partition: option(s) of --slurm"),
    (["--slurm", "--time", "3 hours"], "give the time limit in one of SLURM's forms"),
    (["--slurm", "--partition", "a b"], "give a partition name"),
    (["--slurm", "--cpus-per-task", "0"], "--cpus-per-task takes a whole number of at least 1"),
    (["--slurm", "--shard", "1/2"], "--slurm gives every array task its own share"),
    (["--slurm", "--shards", "3"], "use at most 2 shares"),
])
def test_slurm_settings_that_cannot_work_are_refused_before_the_folder(tmp_path, args, message):
    done = vaelab("sweep", *GRID, "--out", "S", *args, cwd=tmp_path)
    assert done.returncode == 2 and message in " ".join(done.stderr.split()), done.stderr
    assert not (tmp_path / "S").exists()


def test_without_sbatch_the_script_is_kept_and_the_error_says_how_to_submit(tmp_path):
    env = {**ENV, "PATH": str(Path(sys.executable).parent)}  # python, but no sbatch
    done = vaelab("sweep", *GRID, "--out", "S", "--slurm", cwd=tmp_path, env=env)
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "sbatch is not on PATH" in said and f"sbatch {tmp_path}/S/slurm/sweep.sbatch" in said
    assert (tmp_path / "S" / "slurm" / "sweep.sbatch").is_file()


def test_train_slurm_dry_run_writes_torchrun_under_srun(tmp_path):
    done = vaelab("train", "--data", "ring", "--n-train", "300", "--epochs", "2", "--out", "R", "--slurm", "--nodes",
                  "2", "--nproc", "4", "--gpus-per-node", "4", "--time", "30", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "R.slurm" / "train.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4", "#SBATCH --time=30",
                 f"  args=(train --data ring --n-train 300 --epochs 2 --out {tmp_path}/R)",
                 f"  args=(train --out {tmp_path}/R --resume)"):
        assert line in text.splitlines()
    assert "--nproc-per-node=4 --rdzv-backend=c10d" in text and "--slurm" not in text.split("#SBATCH")[-1]
    assert subprocess.run(["bash", "-n", str(tmp_path / "R.slurm" / "train.sbatch")]).returncode == 0
    assert not (tmp_path / "R").exists()
    (tmp_path / "R").mkdir()
    (tmp_path / "R" / "x").write_text("mine")
    taken = vaelab("train", "--data", "ring", "--out", "R", "--slurm", "--dry-run", cwd=tmp_path)
    assert taken.returncode == 2 and "already exists" in taken.stderr


def test_the_array_script_of_the_library_names_every_share():
    text = sweep_array_script(Path("/shared/S"), 4, SlurmOptions(), python="/venv/bin/python")
    assert "#SBATCH --array=1-4\n" in text and "--partition" not in text and "--gpus" not in text
    assert "/venv/bin/python -m vaelab sweep --collect /shared/S" in text
    with pytest.raises(ClusterError, match="--array-limit takes a whole number of at least 1"):
        SlurmOptions(array_limit=0)


# -- a real SLURM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_cluster.why_not()
    if why is not None:
        pytest.skip(why)
    with slurm_cluster.running_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def _job_id(stdout: str) -> str:
    words = stdout.split()
    return words[words.index("job") + (2 if words[words.index("job") + 1] == "array" else 1)].rstrip(":")


def test_a_four_share_job_array_collects_to_the_whole_sweep_and_a_requeued_task_resumes_exactly(cluster, tmp_path):
    grid = ["--data", "ring", "--n-train", "600", "--n-test", "100", "--hidden", "8", "--epochs", "40",
            "--checkpoint-every", "1", "--batch-size", "50", "--eval-k", "10", "--latent-dim", "1,2,3,4"]
    whole = vaelab("sweep", *grid, "--out", "whole", "--no-report", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    env = {**cluster.env, "OMP_NUM_THREADS": "1", "CI": "1"}
    done = vaelab("sweep", *grid, "--out", "S", "--slurm", "--shards", "4", "--cpus-per-task", "1", "--no-report",
                  cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    job = _job_id(done.stdout)
    assert f"squeue -j {job}" in done.stdout and "--collect" in done.stdout
    # Task 1 is cancelled once it has a checkpoint, then put back in the queue: it must go on from there.
    member = tmp_path / "S" / "runs" / "latent_dim=1"
    end = time.monotonic() + 120
    while not (member / "state.pt").is_file() and time.monotonic() < end:
        time.sleep(0.1)
    cancelled = cluster.run("scancel", f"{job}_1", check=False)
    assert cancelled.returncode == 0, cancelled.stderr
    time.sleep(2)
    assert cluster.run("scontrol", "requeue", f"{job}_1", check=False).returncode == 0
    _start_now(cluster, f"{job}_1")
    # Task 2 gets the signal SLURM sends near the time limit (USR1 to the batch shell): it saves a
    # checkpoint and requeues itself.
    member = tmp_path / "S" / "runs" / "latent_dim=2"
    while not (member / "state.pt").is_file() and time.monotonic() < end:
        time.sleep(0.1)
    signalled = cluster.run("scancel", "--signal=USR1", "--batch", f"{job}_2", check=False)
    assert signalled.returncode == 0, signalled.stderr
    _start_now(cluster, f"{job}_2")
    cluster.wait(job, timeout=600)
    logs = [(tmp_path / "S" / "slurm" / f"{job}_{i}.log").read_text() for i in (1, 2)]
    assert logs[0].count("sweep of 4 members") == 2, logs[0][-3000:]  # it ran twice
    assert logs[1].count("sweep of 4 members") == 2 and "the time limit is near" in logs[1], logs[1][-3000:]
    assert "interrupted (SIGTERM)" in logs[1]  # the share saved its step before the requeue
    collected = vaelab("sweep", "--collect", "S", "--no-report", cwd=tmp_path)
    assert collected.returncode == 0, collected.stderr[-3000:] + logs[0][-3000:]
    assert_same_sweep(tmp_path / "S", tmp_path / "whole")


def _start_now(cluster: slurm_cluster.Cluster, task: str) -> None:
    """Once ``task`` is back in the queue, let it start at once (SLURM delays a requeued job)."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if any(line.split()[1] == "PENDING" for line in cluster.jobs(task)):
            cluster.run("scontrol", "update", f"jobid={task}", "StartTime=now", check=False)
            return
        time.sleep(0.2)
    raise AssertionError(f"{task} did not go back in the queue: {cluster.jobs(task)}")


def test_train_slurm_runs_torchrun_under_srun_and_ends_like_nproc_2(cluster, tmp_path):
    run = ["--data", "ring", "--n-train", "300", "--hidden", "16,16", "--epochs", "2", "--eval-k", "20",
           "--no-report", "--nproc", "2"]
    env = {**cluster.env, "OMP_NUM_THREADS": "1", "CI": "1", "VAELAB_DIST_TIMEOUT": "60"}
    local = vaelab("train", *run, "--out", "local", cwd=tmp_path, env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    done = vaelab("train", *run, "--out", "R", "--slurm", "--cpus-per-task", "2", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    job = _job_id(done.stdout)
    cluster.wait(job, timeout=300)
    log = (tmp_path / "R.slurm" / f"{job}.log").read_text()
    assert "run directory:" in log, log[-3000:]
    a, b = load_file(tmp_path / "R" / "model.safetensors"), load_file(tmp_path / "local" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "R" / "metrics.json").read_text())["iwae_nll"] == \
        json.loads((tmp_path / "local" / "metrics.json").read_text())["iwae_nll"]
