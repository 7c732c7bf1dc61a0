"""Time of ``vaelab report`` on the default 2-D run (issue 12, target 4: under 4 s).

A default run (``RunConfig()``: radial_gmm, 2x256 tanh MLPs) is trained for ``--steps``
optimizer steps first (default 200: the report's work does not depend on how long the model
trained, only on its sizes). Then, median of ``--repeats`` (default 3), interleaved:

* ``vaelab report RUN`` as a user runs it, in a fresh process (imports included): its PNGs are
  encoded in a second process while this one computes (``vaelab.png_worker``) where that
  process finds a CPU of its own (``png_worker.spare_cpu``),
* the same report drawn entirely in one fresh process (``write_report(background=False)``) and
  with its PNGs always drawn by a second process (``background=True``);
* ``write_report`` in this process, split into what each figure costs to compute and draw
  (``spec.make``) and to encode as PNG (``figure_png``), beside loading the run.

References, measured in the same run: ``python -c "import torch"`` (what any command that
touches a model pays first), and the floor of the density image: its decoder's bare arithmetic
(the matrix products and tanh of 80 x 80 points x k = 100 samples in the same chunks, nothing
else). ``import torch`` + that arithmetic is what a report cannot go below with this density
image, however its figures are drawn. A benchmark prints; it asserts nothing. On a shared
machine the figures are noisy: the in-process report also prints its CPU seconds, which other
processes' load disturbs less than the wall clock, and ``--threads N`` sets the torch threads of
this process and (through ``OMP_NUM_THREADS``) of the fresh processes, since two threads waiting
on each other on a busy machine can be several times slower than one.

Run: ``python benchmarks/bench_report.py [--steps 200] [--repeats 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from vaelab import checkpoint as ckpt
from vaelab.config import RunConfig
from vaelab.html import figure_png
from vaelab.plots import PlotContext, render_all
from vaelab.png_worker import usable_cpus
from vaelab.train import train_run


def fresh_process(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def in_process(run_dir: Path) -> dict[str, float]:
    """Seconds per phase of one report, drawn in this process."""
    phases: dict[str, float] = {}
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    run = ckpt.load(run_dir)
    ctx = PlotContext.from_run(run)
    phases["load run + context"] = time.perf_counter() - t0
    t = time.perf_counter()
    for item in render_all(ctx):  # a generator: the time up to each yield is that figure's make()
        made = time.perf_counter()
        phases[f"make {item.spec.name}"] = made - t
        if item.figure is not None:
            figure_png(item.figure)
        t = time.perf_counter()
        phases[f"png  {item.spec.name}"] = t - made
    phases["(CPU seconds of all of the above)"] = time.process_time() - cpu0
    return phases


@torch.no_grad()
def density_floor(run_dir: Path, grid: int = 80, k: int = 100) -> float:
    """Seconds of the density image's bare decoder arithmetic: Linear and tanh on grid² · k
    latent points, in the chunks ``model_log_density`` decodes (no sampling, no log-density)."""
    from vaelab.analysis import DENSITY_CHUNK_FLOATS
    from vaelab.evaluate import decoder_width

    model = ckpt.load(run_dir).model
    layers = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear | torch.nn.Tanh)]
    n, batch = grid * grid, 1024
    z = torch.zeros(k * batch, model.latent_dim)
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        b = min(batch, n - s)
        chunk = max(1, DENSITY_CHUNK_FLOATS // (b * decoder_width(model)))
        for c in range(0, k, chunk):
            h = z[: min(chunk, k - c) * b]
            for layer in layers:
                h = layer(h)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in this process (default torch's)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)  # the fresh processes' torch threads
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "default"
        cfg = RunConfig()
        train_run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": args.steps})}), run_dir)
        cli, serial, worker, ref, floor = [], [], [], [], []
        call = f"from vaelab.report import write_report; write_report({str(run_dir)!r}, background="
        phases: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.repeats):  # interleaved: load on a shared machine hits each alike
            ref.append(fresh_process([sys.executable, "-c", "import torch"], env))
            cli.append(fresh_process([sys.executable, "-m", "vaelab", "report", str(run_dir)], env))
            serial.append(fresh_process([sys.executable, "-c", call + "False)"], env))
            worker.append(fresh_process([sys.executable, "-c", call + "True)"], env))
            floor.append(density_floor(run_dir))
            for name, seconds in in_process(run_dir).items():
                phases[name].append(seconds)
    r, c, o, w, f = (statistics.median(v) for v in (ref, cli, serial, worker, floor))
    print(f"vaelab report (fresh process)   {c:6.2f} s   = {c / r:4.1f}x  python -c 'import torch' ({r:.2f} s)")
    print(f"  all drawn in one process      {o:6.2f} s   (write_report(background=False))")
    print(f"  PNGs drawn by a 2nd process   {w:6.2f} s   (write_report(background=True); the CLI does this "
          f"where png_worker.spare_cpu: usable CPUs {usable_cpus()}, load {os.getloadavg()[0]:.1f} now)")
    print(f"  floor: import torch + the density's bare decoder arithmetic ({f:.2f} s) = {r + f:.2f} s; "
          f"report / floor {c / (r + f):.2f}x")
    cpu = statistics.median(phases.pop("(CPU seconds of all of the above)"))
    total = sum(statistics.median(v) for v in phases.values())
    print(f"in process, by phase (total {total:.2f} s wall, {cpu:.2f} s CPU):")
    for name, values in sorted(phases.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {name:<36} {statistics.median(values):6.2f} s")


if __name__ == "__main__":
    main()
