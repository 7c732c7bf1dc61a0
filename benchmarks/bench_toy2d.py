"""Benchmark the default 2D run against the course's seed setup, measured in the same process.

For radial_gmm, the IWAE NLL (k = 1000) on 2000 fresh held-out points is compared with the
exact entropy of the data on the same points (the paired gap, nats per point), and the
training wall time of vaelab's defaults is printed as a ratio to the seed setup's.

The seed setup: 2x128 ReLU MLPs, latent 2, fixed σ² = 0.1, β = 1, Adam 1e-3, 400 epochs of
2000 points, batch 256. Run: ``python benchmarks/bench_toy2d.py [--repeats N]``.

``--gaps`` instead trains only vaelab's defaults on every built-in data set with an exact
density and prints the gap per data set and the worst one: the defaults are chosen by their
worst case, since users bring their own points. ``--gaps --threads 1`` is the README table.

``--candidates NAME ...`` trains each named candidate of :data:`CANDIDATES` (overrides laid
over the defaults; ``default`` is the defaults themselves) on ``--datasets`` (default: every
exact-density data set) with ``--seeds``, and prints per candidate the mean train time, its
ratio to the first candidate named (same process, same load), and the gap
per data set as mean ± SE over the seeds, then the worst. docs/defaults-2d.md records the
results and the commands. Example (the screen):
``python benchmarks/bench_toy2d.py --threads 1 --candidates 2x128-k4 2x256-k4 --datasets pinwheel banana``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from vaelab.config import RunConfig
from vaelab.data.registry import DATASETS, load_dataset
from vaelab.evaluate import evaluate
from vaelab.models import build_model
from vaelab.train import fit

SEED_SETUP = {
    "model": {"hidden": [128, 128], "activation": "relu", "latent_dim": 2, "likelihood": "gaussian",
              "recon_var": 0.1},
    "train": {"objective": "elbo", "beta": 1.0, "lr": 1e-3, "lr_schedule": "constant", "epochs": 400,
              "batch_size": 256},
}


# The built-in 2-D data sets whose exact log p(x) the evaluation compares against.
EXACT_2D = ("2gmm", "radial_gmm", "ring", "spiral", "pinwheel", "banana")

# Candidate 2-D defaults (--candidates): partial configs laid over RunConfig(). Each names its
# nets, k and epochs in full, so that a name means the same run whatever the defaults are
# ("2x128-k4" is the default before the worst-gap screen, docs/defaults-2d.md); "default" is
# the defaults.


def _candidate(hidden: list[int], k: int, epochs: int = 400, **model: Any) -> dict[str, dict[str, Any]]:
    return {"model": {"hidden": hidden, **model}, "train": {"k": k, "epochs": epochs}}


CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "2x128-k4": _candidate([128, 128], 4),
    "2x128-k8": _candidate([128, 128], 8),
    "2x128-k16": _candidate([128, 128], 16),
    "3x128-k4": _candidate([128, 128, 128], 4),
    "2x128-k4-silu": _candidate([128, 128], 4, activation="silu"),
    "2x128-k4-600ep": _candidate([128, 128], 4, 600),
    "2x192-k4": _candidate([192, 192], 4),
    "2x256-k4": _candidate([256, 256], 4),
    "2x256-k4-300ep": _candidate([256, 256], 4, 300),
    "2x256-k4-250ep": _candidate([256, 256], 4, 250),
    "2x256-k16": _candidate([256, 256], 16),
}


def measure(name: str, cfg: RunConfig, seed: int) -> dict[str, float]:
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    model = build_model(cfg.model, train.dim, seed=seed)
    start = time.perf_counter()
    fit(model, train.x, cfg.train)
    seconds = time.perf_counter() - start
    m = evaluate(model, test, k=1000, seed=seed)
    print(f"{name:<10} seed {seed}: train {seconds:6.1f} s   IWAE NLL {m['iwae_nll']:.3f}   "
          f"true NLL {m['true_nll']:.3f}   gap {m['nll_gap']:.3f} ± {m['nll_gap_se']:.3f} nats/point", flush=True)
    return {"seconds": seconds, "gap": m["nll_gap"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="seeds per setup")
    parser.add_argument("--gaps", action="store_true",
                        help="the defaults' gap on every built-in data set with an exact density")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=None,
                        help="compare these candidate 2-D defaults (see CANDIDATES)")
    parser.add_argument("--datasets", nargs="+", choices=EXACT_2D, default=list(EXACT_2D),
                        help="data sets of --candidates (default: every exact-density one)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of --candidates")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.candidates:
        candidates(args.candidates, args.datasets, args.seeds)
        return
    if args.gaps:
        gaps()
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data radial_gmm, 2000 train / 2000 test")
    default = RunConfig()
    seed_setup = RunConfig.from_dict(SEED_SETUP)
    rows: dict[str, list[dict[str, float]]] = {"seed setup": [], "vaelab": []}
    for s in range(args.repeats):
        rows["seed setup"].append(measure("seed setup", seed_setup, s))
        rows["vaelab"].append(measure("vaelab", default, s))

    def mean(name: str, key: str) -> float:
        return sum(r[key] for r in rows[name]) / len(rows[name])

    print()
    print(f"mean gap:  seed setup {mean('seed setup', 'gap'):.3f}   vaelab defaults {mean('vaelab', 'gap'):.3f} "
          "nats/point (target <= 0.10)")
    print(f"train time ratio vaelab / seed setup: {mean('vaelab', 'seconds') / mean('seed setup', 'seconds'):.2f} "
          f"(vaelab {mean('vaelab', 'seconds'):.1f} s; target < 30 s)")


def gaps() -> None:
    """The default run's gap to the true entropy on each exact-density data set, and the worst."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vaelab defaults, seed 0, "
          "2000 train / 2000 test per data set")
    missing = [name for name in EXACT_2D if name not in DATASETS]
    if missing:
        raise SystemExit(f"not built in here: {', '.join(missing)}")
    rows = {name: measure(name, RunConfig.from_dict({"data": {"name": name}}), 0) for name in EXACT_2D}
    worst = max(rows, key=lambda name: rows[name]["gap"])
    print()
    print("| data set | gap (nats/point) | train (s) |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['gap']:.3f} | {r['seconds']:.1f} |")
    print(f"worst gap: {worst} {rows[worst]['gap']:.3f} nats/point (target <= 0.08)")


def candidates(names: list[str], datasets: list[str], seeds: list[int]) -> None:
    """Each candidate's train time and gap (mean ± SE over seeds) on each data set, and its worst."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seeds {seeds}, "
          "2000 train / 2000 test per data set")
    rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name in names:
        rows[name] = {}
        for data in datasets:
            overrides = {section: dict(values) for section, values in CANDIDATES[name].items()}
            overrides.setdefault("data", {})["name"] = data
            cfg = RunConfig.from_dict(overrides)
            rows[name][data] = [measure(f"{name}/{data}", cfg, seed) for seed in seeds]

    def seconds(name: str) -> float:
        runs = [r["seconds"] for per in rows[name].values() for r in per]
        return sum(runs) / len(runs)

    def gap(runs: list[dict[str, float]]) -> tuple[float, float]:
        """Mean gap over the seeds and its standard error (0 for one seed)."""
        g = torch.tensor([r["gap"] for r in runs], dtype=torch.float64)
        se = float(g.std() / len(g) ** 0.5) if len(g) > 1 else 0.0
        return float(g.mean()), se

    print()
    print(f"| candidate | train (s) | vs {names[0]} | " + " | ".join(datasets) + " | worst |")
    print("|---" * (len(datasets) + 4) + "|")
    for name in names:
        ratio = f"{seconds(name) / seconds(names[0]):.2f}x"
        gaps_ = {data: gap(runs) for data, runs in rows[name].items()}
        worst = max(gaps_, key=lambda d: gaps_[d][0])
        cells = " | ".join(f"{m:.3f} ± {se:.3f}" if len(seeds) > 1 else f"{m:.3f}" for m, se in gaps_.values())
        print(f"| {name} | {seconds(name):.1f} | {ratio} | {cells} | {worst} {gaps_[worst][0]:.3f} |")


if __name__ == "__main__":
    main()
