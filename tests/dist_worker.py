"""What each process of a torchrun test runs (tests/test_distributed.py starts it with torchrun).

    dist_worker.py train RUN_DIR WEIGHTS_DIR CONFIG_JSON [resume]   train_run, then save this rank's weights
    dist_worker.py die RUN_DIR WEIGHTS_DIR CONFIG_JSON STEP         rank 1 exits abruptly at step STEP
    dist_worker.py eval RUN_DIR OUT_DIR K|none                      evaluate_run on every rank; each writes its metrics

On every rank but 0 the run-directory writers are replaced by ones that fail: rank 0 alone writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from vaelab import checkpoint as ckpt
from vaelab.config import RunConfig
from vaelab.distributed import World
from vaelab.train import train_run


def _refuse(*args, **kwargs):
    raise AssertionError(f"rank {World.from_env().rank} wrote to the run directory")


def main() -> None:
    mode, run_dir, weights_dir, config_json, *rest = sys.argv[1:]
    world = World.from_env()
    if mode == "eval":
        from vaelab import distributed
        from vaelab.evaluate import evaluate_run

        distributed.init(world, torch.device("cpu"))
        metrics = evaluate_run(run_dir, k=None if config_json == "none" else int(config_json), write=False, world=world)
        Path(weights_dir).mkdir(parents=True, exist_ok=True)
        (Path(weights_dir) / f"metrics{world.rank}.json").write_text(json.dumps(metrics))
        distributed.shutdown()  # leave the process group before exiting (gloo's threads)
        return
    if not world.is_main:
        for name in ("write_checkpoint", "claim", "write_history", "write_json", "atomic_write_text"):
            setattr(ckpt, name, _refuse)
    config = RunConfig.from_dict(json.loads(config_json))
    on_step = None
    if mode == "die":
        die_at = int(rest[0])

        def on_step(info):  # noqa: F811
            if world.rank == 1 and info.step == die_at:
                os._exit(3)  # no clean-up, no message: as a killed process

    run = train_run(config, run_dir, resume="resume" in rest, on_step=on_step)
    weights = {name: t.detach().cpu() for name, t in run.model.state_dict().items()}
    Path(weights_dir).mkdir(parents=True, exist_ok=True)
    torch.save(weights, Path(weights_dir) / f"rank{world.rank}.pt")
    from vaelab import distributed

    distributed.shutdown()  # leave the process group before exiting (gloo's threads)


if __name__ == "__main__":
    main()
