"""torchrun: one run on two processes over gloo on 127.0.0.1 (tests/dist_worker.py is each process).

A 2-process run with global batch B ends where one process with batch B and the same order and
noise ends; the parameters are identical on every rank; resume works from 1 process to 2 and
back, and exactly from 2 to 2; a rank that dies ends the job non-zero within a bounded time with
the last checkpoint intact; rank 0 alone writes the run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vaelab import checkpoint as ckpt
from vaelab.config import RunConfig
from vaelab.data.registry import load_dataset
from vaelab.distributed import World, noise_seed, share
from vaelab.distributions import NoiseTape
from vaelab.models import build_model
from vaelab.train import EagerExecutor, StepContext, make_members, train_members, train_run

WORKER = Path(__file__).with_name("dist_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def config(kind: str = "vae", **train: object) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "ring", "n_train": 300},
        "model": {"kind": kind, "hidden": [16, 16], "likelihood": "gaussian", "recon_var": 0.1},
        "train": {**({"objective": "elbo"} if kind == "vae" else {}), "epochs": 3, "batch_size": 64,
                  "diversity_samples": 16, "checkpoint_every": 1, **train},
        **({"eval": {}} if kind == "vae" else {}),
    })


def torchrun(mode: str, run_dir: Path, weights: Path, cfg: RunConfig, *extra: str, nproc: int = 2,
             timeout: float = 240, extra_k: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAELAB_DIST_TIMEOUT": "30"}
    third = extra_k if extra_k is not None else json.dumps(_given(cfg))  # eval mode: k
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(WORKER), mode, str(run_dir), str(weights), third, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).parent)


def _given(cfg: RunConfig) -> dict:
    """The settings the user gave, as a config dict (a full dump would give every default as set)."""
    out: dict = {}
    for dotted in cfg.user_settings():
        section, field = dotted.split(".", 1)
        out.setdefault(section, {})[field] = getattr(getattr(cfg, section), field)
    return out


def rank_weights(weights: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(weights / f"rank{rank}.pt", weights_only=True)


def test_two_autoencoder_processes_end_where_one_process_ends(tmp_path):
    # The autoencoder draws no noise: the same data order and the averaged gradient of the whole
    # batch must give one process's weights, to float rounding (sums over shards in another order).
    cfg = config("ae")
    done = torchrun("train", tmp_path / "two", tmp_path / "w", cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    one = train_run(cfg, tmp_path / "one")
    for rank in (0, 1):
        torch.testing.assert_close(rank_weights(tmp_path / "w", rank), one.model.state_dict(), rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.cat([t.flatten() for t in rank_weights(tmp_path / "w", 0).values()]),
                       torch.cat([t.flatten() for t in rank_weights(tmp_path / "w", 1).values()]))
    two = ckpt.load(tmp_path / "two")
    torch.testing.assert_close(two.history.column("loss"), one.history.column("loss"), rtol=1e-6, atol=1e-6)
    assert [r["step"] for r in two.history.rows] == [r["step"] for r in one.history.rows]


class _RankNoise(EagerExecutor):
    """One process replaying a 2-rank step: each rank's share of the batch takes its ELBO noise
    (B_r, d) from that rank's noise generator, the shares' draws stacked in rank order."""

    def __init__(self, *args, seed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ranks = [World(r, 2) for r in range(2)]
        self.noise = [torch.Generator().manual_seed(noise_seed(seed, r)) for r in range(2)]

    def forward_backward(self, members, xb, cb, contexts):
        rows = torch.arange(xb.shape[0])
        d = self.model.latent_dim
        draws = [torch.randn((share(rows, w)[0].numel(), d), generator=g)
                 for w, g in zip(self.ranks, self.noise, strict=True)]
        ctx = contexts[0]
        return super().forward_backward(members, xb, cb, [StepContext(ctx.step, ctx.epoch, ctx.scalars,
                                                                      NoiseTape([torch.cat(draws)]))])


def test_two_vae_processes_end_where_one_process_with_their_noise_ends(tmp_path):
    cfg = config()
    done = torchrun("train", tmp_path / "two", tmp_path / "w", cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, 2, seed=cfg.train.seed)
    (member,) = make_members([model], [cfg.train], x.shape[0])
    executor = _RankNoise(model, cfg.train, member.state, seed=cfg.train.seed)
    (result,) = train_members(executor, [member], x)
    assert result.error is None
    torch.testing.assert_close(rank_weights(tmp_path / "w", 0), model.state_dict(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rank_weights(tmp_path / "w", 1), rank_weights(tmp_path / "w", 0), rtol=0, atol=0)
    two = ckpt.load(tmp_path / "two")
    torch.testing.assert_close(two.history.column("loss"), result.history.column("loss"), rtol=1e-5, atol=1e-5)
    # The noise of 2 ranks is not one process's: the plain 1-process run ends elsewhere.
    one = train_run(cfg, tmp_path / "one")
    assert not torch.allclose(one.model.state_dict()["encoder.0.weight"], model.state_dict()["encoder.0.weight"])


def test_resume_from_one_process_to_two_and_back(tmp_path):
    run_dir = tmp_path / "run"
    train_run(config(epochs=1, lr_schedule="constant"), run_dir)
    done = torchrun("train", run_dir, tmp_path / "w", config(epochs=2, lr_schedule="constant"), "resume")
    assert done.returncode == 0, done.stderr[-3000:]
    state = ckpt.load_state(run_dir)
    assert state.epoch == 2 and state.noise_rngs is not None and len(state.noise_rngs) == 2
    run = train_run(config(epochs=3, lr_schedule="constant"), run_dir, resume=True)
    assert [r["epoch"] for r in run.history.rows] == [1, 2, 3]
    assert ckpt.load_state(run_dir).complete
    torch.testing.assert_close(run.model.state_dict(), rank_weights(tmp_path / "w", 0), rtol=1.0, atol=1.0)


def test_two_processes_resume_exactly(tmp_path):
    cfg = config(epochs=4, lr_schedule="constant")
    straight = torchrun("train", tmp_path / "straight", tmp_path / "ws", cfg)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = torchrun("train", tmp_path / "split", tmp_path / "w1", config(epochs=2, lr_schedule="constant"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun("train", tmp_path / "split", tmp_path / "w2", cfg, "resume")
    assert second.returncode == 0, second.stderr[-3000:]
    for rank in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(rank_weights(tmp_path / "ws", rank).values(),
                                                    rank_weights(tmp_path / "w2", rank).values(), strict=True))


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_two_processes_evaluate_to_the_numbers_of_one(tmp_path, kind):
    # 300 test points in batches of 64: 5 batches shared out unevenly (3 and 2); every metric
    # must be the one a single process computes, bit for bit.
    cfg = config(kind, epochs=2).with_overrides({"data": {"n_test": 300}, "eval": {"batch_size": 64}})
    train_run(cfg, tmp_path / "run")
    k = None if kind == "ae" else 50  # an autoencoder's evaluation draws nothing: no k
    done = torchrun("eval", tmp_path / "run", tmp_path / "m", RunConfig(), nproc=2, extra_k=str(k).lower())
    assert done.returncode == 0, done.stderr[-3000:]
    from vaelab.evaluate import evaluate_run

    one = evaluate_run(tmp_path / "run", write=False, k=k)
    for rank in (0, 1):
        two = json.loads((tmp_path / "m" / f"metrics{rank}.json").read_text())
        assert two == json.loads(json.dumps(one)), rank


def test_a_rank_that_dies_ends_the_job_with_the_last_checkpoint_intact(tmp_path):
    cfg = config(epochs=6)  # 5 steps per epoch: rank 1 dies in epoch 3, after 2 checkpoints
    start = time.monotonic()
    done = torchrun("die", tmp_path / "run", tmp_path / "w", cfg, "12", timeout=180)
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert elapsed < 150  # bounded: the job did not wait for the dead rank (VAELAB_DIST_TIMEOUT = 30 s)
    run = ckpt.load(tmp_path / "run")  # the last checkpoint loads, intact
    state = ckpt.load_state(tmp_path / "run")
    assert state.epoch == 2 and not state.complete and len(run.history) == 2
    assert not (tmp_path / "w").exists()


def test_vaelab_train_nproc_runs_torchrun_and_rank_0_alone_reports(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAELAB_DIST_TIMEOUT": "30"}
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "vaelab", "train", "--nproc", "2", "--data", "ring", "--n-train",
                           "300", "--hidden", "16,16", "--epochs", "2", "--eval-k", "20", "--no-report", "--out",
                           str(out)], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("launching 2 processes") == 1
    assert done.stdout.count("done: 2 epochs") == 1  # rank 1 is quiet
    assert done.stdout.count("metrics.json") == 1  # evaluated once, by rank 0
    assert done.stdout.count("run directory:") == 1
    assert ckpt.load(out).metrics["iwae_k"] == 20 and ckpt.load_state(out).noise_rngs is not None


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--nproc", "0"], {}, "--nproc is the number of processes to train on, a positive integer; got 0"),
    (["--nproc", "2"], {"WORLD_SIZE": "2", "RANK": "0"}, "already runs under torchrun (WORLD_SIZE=2); drop --nproc"),
    ([], {"WORLD_SIZE": "2", "RANK": "1"}, "under torchrun every process writes to one run directory: give --out"),
    ([], {"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is outside WORLD_SIZE=2"),
])
def test_torchrun_settings_that_cannot_work_are_refused(tmp_path, args, env, message):
    from typer.testing import CliRunner

    from vaelab.cli import app

    result = CliRunner().invoke(app, ["train", "--data", "ring", "--epochs", "1", *args], env=env)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()


def test_shutdown_leaves_the_gil_to_gloos_threads_before_the_process_may_exit(tmp_path, monkeypatch):
    # A gloo worker thread that still has to drop a finished collective's tensor needs the GIL; if
    # it asks while the interpreter finalizes, the process aborts ("terminate called without an
    # active exception", seen in CI after a run that succeeded). shutdown() must hand the GIL over
    # after it has left the group and before it returns. Here a thread asks for the GIL just as
    # the group is destroyed, while the main thread would otherwise keep it (a switch interval of
    # an hour): it has run once shutdown() is back.
    import threading

    from vaelab import distributed

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    ran: list[bool] = []
    go = threading.Event()
    waiter = threading.Thread(target=lambda: (go.wait(), ran.append(True)))
    waiter.start()
    destroy = torch.distributed.destroy_process_group

    def destroy_then_wake_the_waiter() -> None:
        destroy()
        go.set()

    monkeypatch.setattr(torch.distributed, "destroy_process_group", destroy_then_wake_the_waiter)
    monkeypatch.setattr(distributed, "_GLOO_DRAIN_S", 1.0)  # room for a busy machine to schedule the waiter
    interval = sys.getswitchinterval()
    sys.setswitchinterval(3600.0)
    try:
        distributed.shutdown()
        done = list(ran)
    finally:
        sys.setswitchinterval(interval)
        go.set()
        waiter.join()
    assert not torch.distributed.is_initialized()
    assert done == [True]
