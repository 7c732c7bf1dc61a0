"""A training run survives signals and kills: real `vaelab train` processes are interrupted
(SIGINT, SIGTERM) or killed (SIGKILL, at random moments and inside a checkpoint write),
resumed, and end with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from vaelab import checkpoint as ckpt
from vaelab.cli import app

EPOCHS = 16
# 256 points in batches of 32: 8 steps per epoch, a checkpoint every 2 epochs. A few seconds of training
# on an idle machine: long enough to be killed at many moments.
FLAGS = ["--data", "ring", "--n-train", "256", "--n-test", "64", "--hidden", "16,16", "--batch-size", "32",
         "--checkpoint-every", "2", "--seed", "3", "--no-eval", "--no-report", "--device", "cpu"]
# The subprocess trains on one thread, like this test process (conftest): the same floating-point
# reduction order, so "identical weights" is a fair demand.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# Kill the process right after its n-th fsync: the file is written but not yet renamed into place.
KILL_AT_FSYNC = (
    "import os, signal, sys\n"
    "n, calls, real = int(os.environ['VAELAB_TEST_KILL_AT_FSYNC']), [0], os.fsync\n"
    "def fsync(fd):\n"
    "    real(fd)\n"
    "    calls[0] += 1\n"
    "    if calls[0] == n:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "os.fsync = fsync\n"
    "from vaelab.cli import app\n"
    "app(prog_name='vaelab')\n"
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, trained in this process through the same command line."""
    out = tmp_path_factory.mktemp("crash") / "ref"
    result = CliRunner().invoke(app, ["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _vaelab(out: Path, *extra: str, script: str | None = None, env: dict | None = None) -> subprocess.Popen:
    code = ["-c", script] if script else ["-m", "vaelab"]
    return subprocess.Popen([sys.executable, *code, "train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(out),
                             *extra], env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(proc: subprocess.Popen, out: Path, epochs: int, timeout: float = 300) -> None:
    """Poll until the checkpoint on disk has ``epochs`` epochs (or the process ended). state.pt
    is the last file of a checkpoint, so the wait ends just after a complete checkpoint."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if ckpt.load_state(out).epoch >= epochs:
                return
        except (OSError, ValueError, RuntimeError, KeyError):
            pass  # not written yet
        time.sleep(0.005)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / ckpt.WEIGHTS_FILE), load_file(b / ckpt.WEIGHTS_FILE)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    # the files themselves are identical bytes (canonical safetensors header)
    assert (a / ckpt.WEIGHTS_FILE).read_bytes() == (b / ckpt.WEIGHTS_FILE).read_bytes()
    assert ckpt.load_state(b).complete
    assert ckpt.load_history(b).column("loss") == ckpt.load_history(a).column("loss")


def _resume(out: Path) -> None:
    """Finish the run in this process (the interruptions are what needs a real process)."""
    result = CliRunner().invoke(app, ["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output


def _kill_later(proc: subprocess.Popen, out: Path, epochs: int, rng: random.Random) -> None:
    """SIGKILL at a random moment after the checkpoint of ``epochs`` epochs is on disk."""
    _wait_for_epochs(proc, out, epochs)
    time.sleep(rng.uniform(0.0, 0.05))  # anywhere in the next steps: a step, a diversity draw, a write
    proc.kill()
    proc.wait()
    assert ckpt.load(out).model is not None  # what is on disk loads after every kill


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, reference):
    out = tmp_path / "run"
    rng = random.Random(8)
    first, second = sorted(rng.sample(range(1, EPOCHS), 2))
    _kill_later(_vaelab(out), out, first, rng)
    _kill_later(_vaelab(out, "--resume"), out, second, rng)
    _resume(out)
    _assert_same_weights(reference, out)


def test_sigkill_inside_a_checkpoint_write_then_resume_gives_the_uninterrupted_weights(tmp_path, reference):
    out = tmp_path / "run"
    # fsync 20 falls in the 5th checkpoint after the initial save: with one file per fsync, the
    # weights are already replaced and the training state is not.
    proc = _vaelab(out, script=KILL_AT_FSYNC, env={**ENV, "VAELAB_TEST_KILL_AT_FSYNC": "20"})
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    _resume(out)
    _assert_same_weights(reference, out)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_the_current_step_says_how_to_resume_and_resumes_exactly(tmp_path, reference, signum, code):
    out = tmp_path / "run"
    proc = _vaelab(out)
    _wait_for_epochs(proc, out, 3 if signum == signal.SIGINT else 5)
    time.sleep(0.01)  # most likely mid-epoch
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err
    name = signal.Signals(signum).name
    assert f"interrupted ({name}) at step" in err
    assert f"vaelab train --out {out} --resume" in err.replace("\n", " ")
    assert "Traceback" not in err
    state = ckpt.load_state(out)
    step = int(err.split(" at step ")[1].split()[0])
    assert state.step == step and not state.complete  # the checkpoint is of the step the signal came at
    _resume(out)
    _assert_same_weights(reference, out)


def test_sigint_in_process_checkpoints_the_current_step_and_restores_the_handlers(tmp_path, reference,
                                                                                  monkeypatch):
    import vaelab.train.loop as train_mod  # the loop draws the diversity column

    real_diversity = train_mod.diversity
    epochs_done = []

    def diversity_then_ctrl_c(*args, **kwargs):
        epochs_done.append(1)
        if len(epochs_done) == 5:  # Ctrl-C at the end of epoch 5: the next step is the first of epoch 6
            signal.raise_signal(signal.SIGINT)
        return real_diversity(*args, **kwargs)

    monkeypatch.setattr(train_mod, "diversity", diversity_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "interrupted (SIGINT) at step 40 (epoch 6)" in result.output
    assert signal.getsignal(signal.SIGINT) is before
    state = ckpt.load_state(out)
    assert (state.step, state.epoch, state.batch) == (40, 5, 0)
    monkeypatch.setattr(train_mod, "diversity", real_diversity)
    result = CliRunner().invoke(app, ["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    _assert_same_weights(reference, out)


def test_a_second_ctrl_c_leaves_at_once_and_the_run_still_loads(tmp_path, monkeypatch):
    import vaelab.train.loop as train_mod  # the loop draws the diversity column

    real_diversity = train_mod.diversity
    calls = []

    def diversity_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return real_diversity(*args, **kwargs)

    real_fsync, fsyncs = os.fsync, []

    def fsync_interrupted_by_a_second_ctrl_c(fd):
        real_fsync(fd)
        if len(calls) >= 3:  # the checkpoint of the first Ctrl-C is being written
            fsyncs.append(fd)
            if len(fsyncs) == 2:  # its second file is written, not yet renamed into place
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(train_mod, "diversity", diversity_then_ctrl_c)
    monkeypatch.setattr(os, "fsync", fsync_interrupted_by_a_second_ctrl_c)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "stopped at once (SIGINT again)" in result.output
    assert "Traceback" not in result.output
    run = ckpt.load(out)  # the last completed checkpoint (end of epoch 2) is intact
    assert ckpt.load_state(out).step == 16 and len(run.history) == 2
    assert not list(out.glob(".*.tmp"))


def test_cli_skip_policy_says_when_it_skips_and_records_it(tmp_path, monkeypatch):
    from vaelab.train import TrainStep

    real_forward = TrainStep.forward
    calls = []

    def nan_on_the_third_step(self, *args, **kwargs):  # every step runs the TrainStep's forward
        calls.append(1)
        out = real_forward(self, *args, **kwargs)
        if len(calls) == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(TrainStep, "forward", nan_on_the_third_step)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", *FLAGS, "--epochs", "2", "--out", str(out), "--nonfinite", "skip",
                                      "--max-skips", "2", "--grad-clip", "5"])
    assert result.exit_code == 0, result.output
    assert "step 3 (epoch 1): non-finite loss or gradient; step skipped" in result.output
    run = ckpt.load(out)
    assert run.history.column("skipped") == [1, 0]
    assert (run.config.train.nonfinite, run.config.train.max_skips, run.config.train.grad_clip) == ("skip", 2, 5.0)


def test_cli_refuses_max_skips_without_the_skip_policy(tmp_path):
    result = CliRunner().invoke(app, ["train", *FLAGS, "--epochs", "1", "--out", str(tmp_path / "r"),
                                      "--max-skips", "3"])
    assert result.exit_code == 2
    assert "max_skips" in result.output and "--nonfinite skip" in result.output
    assert not (tmp_path / "r").exists()
