"""Throughput of one run on 1 and on 2 processes (torchrun, gloo on the CPU; nccl on GPUs).

Two runs, each trained for ``--steps`` optimizer steps with the global batch of its config:

* **2-D default**: the default run (2x256 tanh MLPs, IWAE k = 4, batch 256) on radial_gmm;
* **MNIST MLP**: the ``mnist-mlp-bernoulli`` preset (784-400-20, batch 128, dynamic
  binarization) on the 9,000-image split of ../shared/data/mnist (skipped without it).

Each is launched with ``python -m torch.distributed.run --standalone --nproc-per-node N`` for
N = 1 and 2 (``--threads`` torch threads per process, default 1, so that 2 processes use the 2
cores a 1-thread single process leaves half idle) and reports samples per second (global
batch × steps / wall time of the training loop, measured inside rank 0 after a warm-up
epoch), and the ratio 2-process / 1-process in the same run. ``--baseline`` adds one plain
process with all cores' threads, the way a user runs without torchrun.
Run: ``python benchmarks/bench_distributed.py [--steps 200] [--threads 1] [--baseline]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def worker(spec: dict) -> None:
    """In each process: build the run, train a warm-up epoch, then time ``steps`` steps."""
    import torch

    from vaelab.config import RunConfig
    from vaelab.data.registry import load_dataset
    from vaelab.distributed import World, init
    from vaelab.models import build_model
    from vaelab.presets import apply_preset
    from vaelab.train import fit
    from vaelab.train.run import training_data

    torch.set_num_threads(spec["threads"])
    world = World.from_env()
    init(world, torch.device("cpu"))
    cfg = RunConfig()
    if spec["run"] == "mnist":
        cfg = apply_preset(cfg, "mnist-mlp-bernoulli").with_overrides(
            {"data": {"name": "mnist", "image_split": "test-9k", "data_dir": str(DATA_DIR)}}, explicit=False)
    train = training_data(cfg, load_dataset(cfg.data, "train"), "cpu")
    model = build_model(cfg.model, train.data.dim, seed=0)
    n_batches = -(-len(train.data) // cfg.train.batch_size)
    warm = cfg.train.model_copy(update={"steps": n_batches, "epochs": 1})
    fit(model, train.x, warm, dynamic_binarization=train.dynamic_binarization, world=world)
    timed = cfg.train.model_copy(update={"steps": spec["steps"], "lr_schedule": "constant"})
    start = time.perf_counter()
    fit(model, train.x, timed, dynamic_binarization=train.dynamic_binarization, world=world)
    seconds = time.perf_counter() - start
    if world.is_main:
        print(json.dumps({"samples_per_s": spec["steps"] * cfg.train.batch_size / seconds, "seconds": seconds}))


def launch(run: str, nproc: int, steps: int, threads: int, torchrun: bool = True) -> dict:
    spec = json.dumps({"run": run, "steps": steps, "threads": threads})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
           if torchrun else [sys.executable]) + [__file__, "--worker", spec]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", action="store_true", help="also one plain process with os.cpu_count() threads")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    runs = ["2d"] + (["mnist"] if (DATA_DIR / "mnist").is_dir() else [])
    for run in runs:
        one = launch(run, 1, args.steps, args.threads)
        two = launch(run, 2, args.steps, args.threads)
        line = (f"{run:6s} 1 process {one['samples_per_s']:9.0f} samples/s | 2 processes "
                f"{two['samples_per_s']:9.0f} samples/s | 2 / 1 = {two['samples_per_s'] / one['samples_per_s']:.2f}")
        if args.baseline:
            cores = os.cpu_count() or 1
            plain = launch(run, 1, args.steps, cores, torchrun=False)
            line += f" | plain, {cores} threads {plain['samples_per_s']:9.0f} samples/s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
