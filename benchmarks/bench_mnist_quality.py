"""Quality per wall-clock second: test IWAE NLL (k = 1000) of vaelab vs the classic pipeline.

Both train on the 9,000-image split (first 9,000 images of the MNIST test files) for the same
wall-clock budget and are scored by the same code (``vaelab.evaluate``) on the same 1,000
held-out images (the last 1,000), binarized once with vaelab's fixed test seed:

* **vaelab default**: the ``mnist-mlp-bernoulli`` preset (784-400-20, Bernoulli logits, dynamic
  binarization, Adam 1e-3, batch 128) trained until the budget is spent.
* **reference**: the pytorch/examples pipeline (``mnist_reference.py``: PIL Dataset, DataLoader,
  sigmoid + BCE on grey levels, Adam 1e-3, batch 128) for the same budget; its weights are
  copied into a vaelab VAE of the same architecture for scoring.
* **vaelab cosine**: the same preset with lr 2e-3 decayed to 0 by a cosine schedule over the
  number of steps that fit the budget (estimated from the default run's speed). The better of
  the two vaelab runs is "vaelab's best NLL within the budget".

Lower NLL is better (nats per image; bits/dim = nats / (784 ln 2)). Run:
``python benchmarks/bench_mnist_quality.py [--budget 300] [--threads 1] [--k 1000]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from mnist_reference import ReferenceVAE, loss_function, make_loader, to_vaelab

from vaelab.config import RunConfig
from vaelab.data.idx import read_idx
from vaelab.data.pixels import eval_view
from vaelab.data.registry import load_dataset
from vaelab.evaluate import evaluate
from vaelab.models import LatentModel, build_model
from vaelab.presets import apply_preset
from vaelab.train import fit

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
N_TRAIN = 9000


class _BudgetSpent(Exception):
    pass


def train_vaelab(cfg: RunConfig, x: torch.Tensor, budget: float) -> tuple[LatentModel, int, float]:
    """Train until ``budget`` seconds have passed; returns (model, steps, seconds)."""
    model = build_model(cfg.model, x.shape[1], seed=cfg.train.seed)
    start = time.perf_counter()
    steps = 0

    def on_step(info) -> None:  # noqa: ANN001
        nonlocal steps
        steps = info.step
        if time.perf_counter() - start >= budget:
            raise _BudgetSpent

    try:
        fit(model, x, cfg.train, on_step=on_step, dynamic_binarization=True)
    except _BudgetSpent:
        pass
    return model.eval(), steps, time.perf_counter() - start


def train_reference(images: torch.Tensor, labels: torch.Tensor, budget: float) -> tuple[LatentModel, int, float]:
    torch.manual_seed(0)
    model = ReferenceVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = make_loader(images.numpy(), labels.numpy(), 0)
    start = time.perf_counter()
    steps = 0
    while time.perf_counter() - start < budget:
        model.train()
        for data, _ in loader:
            optimizer.zero_grad()
            recon, mu, logvar = model(data)
            loss_function(recon, data, mu, logvar).backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - start >= budget:
                break
    return to_vaelab(model), steps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding mnist/")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per model")
    parser.add_argument("--k", type=int, default=1000, help="importance samples of the NLL estimate")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    cfg = apply_preset(RunConfig(), "mnist-mlp-bernoulli").with_overrides(
        {"data": {"name": "mnist", "data_dir": str(args.data_dir), "image_split": "test-9k"},
         "train": {"epochs": 10_000, "checkpoint_every": 10_000}})
    x = load_dataset(cfg.data, "train").x
    test, note = eval_view(cfg, load_dataset(cfg.data, "test"))
    images = read_idx(args.data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")[:N_TRAIN]
    labels = read_idx(args.data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")[:N_TRAIN]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; train {len(x)} / test {len(test)} "
          f"MNIST images; test pixels {note}; budget {args.budget:.0f} s per model; k = {args.k}", flush=True)

    results: dict[str, dict[str, float]] = {}

    def score(name: str, model: LatentModel, steps: int, seconds: float) -> None:
        t = time.perf_counter()
        m = evaluate(model, test, k=args.k, batch_size=500, seed=0)
        results[name] = {"nll": m["iwae_nll"], "se": m["iwae_nll_se"], "bpd": m["iwae_bpd"], "elbo": m["elbo"]}
        print(f"{name:<15} {steps:6d} steps ({steps * 128 / len(x):5.1f} epochs) in {seconds:5.0f} s: "
              f"IWAE NLL {m['iwae_nll']:.2f} ± {m['iwae_nll_se']:.2f} nats ({m['iwae_bpd']:.4f} bits/dim), "
              f"ELBO {m['elbo']:.2f}; eval {time.perf_counter() - t:.0f} s", flush=True)

    model, steps, seconds = train_vaelab(cfg, x, args.budget)
    score("vaelab default", model, steps, seconds)
    score("reference", *train_reference(images, labels, args.budget))
    planned = max(1, int(steps * args.budget / seconds))
    cosine = cfg.with_overrides({"train": {"lr": 2e-3, "lr_schedule": "cosine", "steps": planned}})
    score("vaelab cosine", *train_vaelab(cosine, x, args.budget * 1.05))

    best = min(("vaelab default", "vaelab cosine"), key=lambda n: results[n]["nll"])
    ref = results["reference"]["nll"]
    print(f"reference NLL / vaelab default NLL = {ref / results['vaelab default']['nll']:.3f} "
          f"(difference {ref - results['vaelab default']['nll']:+.2f} nats; > 0: vaelab better)")
    print(f"vaelab's best NLL within {args.budget:.0f} s: {results[best]['nll']:.2f} nats "
          f"({results[best]['bpd']:.4f} bits/dim), {best}; reference / best = {ref / results[best]['nll']:.3f}")


if __name__ == "__main__":
    main()
