"""Start-up time of the command line and of ``import vaelab`` (issue 12, target 5).

Each case is a fresh interpreter, timed from launch to exit (the median of ``--repeats``,
default 5). Reference, measured in the same run: ``python -c "import torch"``.
Aims: ``vaelab --help`` and ``vaelab datasets`` under 0.5 s (they need no torch), and
``import vaelab`` at most 0.3 s more than ``import torch``; the last row loads the whole public
API (``vaelab.train_run``, which needs torch), for what a notebook pays on first use.
A benchmark prints; it asserts nothing. On a shared machine the figures are noisy.

Run: ``python benchmarks/bench_startup.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import torch

CASES = {
    'python -c "import torch" (reference)': [sys.executable, "-c", "import torch"],
    "vaelab --help": [sys.executable, "-m", "vaelab", "--help"],
    "vaelab datasets": [sys.executable, "-m", "vaelab", "datasets"],
    'python -c "import vaelab"': [sys.executable, "-c", "import vaelab"],
    "import vaelab + the whole API (vaelab.train_run)": [sys.executable, "-c", "import vaelab; vaelab.train_run"],
}


def time_once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}; "
          f"median of {args.repeats} fresh interpreters per row (rows interleaved)")
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):  # interleaved, so load on a shared machine hits every row alike
        for name, cmd in CASES.items():
            times[name].append(time_once(cmd))
    ref = statistics.median(next(iter(times.values())))
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<50} {med:6.2f} s   {med - ref:+6.2f} s vs import torch   (min {min(ts):.2f} s)")


if __name__ == "__main__":
    main()
