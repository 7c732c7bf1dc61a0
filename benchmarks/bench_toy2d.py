"""Benchmark the default 2D run against the course's seed setup, measured in the same process.

For radial_gmm, the IWAE NLL (k = 1000) on 2000 fresh held-out points is compared with the
exact entropy of the data on the same points (the paired gap, nats per point), and the
training wall time of vaelab's defaults is printed as a ratio to the seed setup's.

The seed setup: 2x128 ReLU MLPs, latent 2, fixed σ² = 0.1, β = 1, Adam 1e-3, 400 epochs of
2000 points, batch 256. Run: ``python benchmarks/bench_toy2d.py [--repeats N]``.

``--gaps`` instead trains only vaelab's defaults on every built-in data set with an exact
density and prints the gap per data set and the worst one: the defaults are chosen by their
worst case, since users bring their own points. ``--gaps --threads 1`` is the README table.
"""

from __future__ import annotations

import argparse
import time

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
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    main()
