"""Likelihoods for grey-level MNIST side by side (issue 24): same model, same budget, several seeds.

Each likelihood trains the same VAE (784-400-20 ReLU MLP by default; ``--net conv`` for the
mnist-conv bodies) on the same grey-level images (no binarization) with the -ELBO, the same
number of Adam steps (batch 128, lr 1e-3) and the same seeds, and is scored on the same test
images. Data: the fixed MNIST split of the benchmarks (first 9,000 images of ../shared/data/mnist's
test file to train, the last 1,000 to test), pixels k/255.

The numbers are of two kinds, and only one is compared across likelihoods:
- ``native``: −L_k with each head's own log p(x|z). For gaussian-learned, gaussian-sigmoid and
  continuous-bernoulli that is a *density* on R^784 or [0, 1]^784 (nats, can be negative); for
  logistic256 it is a *pmf* over the 256^784 8-bit images. Not comparable across kinds.
- ``discrete`` (the common scale): −L_k with log p(x|z) replaced by log P(x|z), each pixel's density
  integrated over its level's bin [k/255 − 1/510, k/255 + 1/510] (the edge bins reach the end of the
  support), ``vaelab.likelihoods.discrete_log_prob``. Every model is then a pmf over the same 8-bit
  images, P(x) = ∫ p(z) Π_d P(x_d|z) dz, and −L_k estimates −log P(x) from above. For logistic256
  the two kinds coincide. This is exact discretization, not uniform dequantization: it needs no
  noise and it is never worse than the dequantized bound E_u[−log p(x + u)] + D log 256 style number.
  Bits/dim = nats / (784 ln 2).

Columns: the discrete NLL, mean over seeds ± the standard error over seeds; the difference to
gaussian-learned paired over the same test images and seed, averaged over seeds (± the SE over
seeds, which holds the training randomness); the same in bits/dim; the native number with its kind;
the training time as a ratio to gaussian-learned's, wall clock and process CPU time (same process,
same seeds, the likelihoods interleaved seed by seed so that a shared machine's load falls on all).

Run: ``python benchmarks/bench_likelihoods.py [--steps 1500] [--seeds 3] [--k 100] [--threads 2]``
(a few minutes per likelihood on 2 CPU cores at the defaults). Not a test: it prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from vaelab.config import RunConfig
from vaelab.data.registry import load_dataset
from vaelab.distributions import rsample
from vaelab.evaluate import generator_for
from vaelab.likelihoods import build_likelihood, discrete_log_prob
from vaelab.models import VariationalModel, build_model
from vaelab.train import fit

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
LIKELIHOODS = ("gaussian-learned", "gaussian-sigmoid", "continuous-bernoulli", "logistic256")
KIND = {"gaussian-learned": "density", "gaussian-sigmoid": "density", "continuous-bernoulli": "density",
        "logistic256": "pmf"}
D = 784


def config(likelihood: str, seed: int, steps: int, net: str, data_dir: Path) -> RunConfig:
    model: dict[str, Any] = {"kind": "vae", "net": net, "latent_dim": 20, "activation": "relu",
                             "likelihood": likelihood}
    if net == "mlp":
        model["hidden"] = [400]
    return RunConfig.from_dict({
        "data": {"name": "mnist", "data_dir": str(data_dir), "image_split": "test-9k", "binarize": "none"},
        "model": model,
        "train": {"objective": "elbo", "steps": steps, "batch_size": 128, "lr": 1e-3, "seed": seed,
                  "checkpoint_every": 10**9},
    })


@torch.no_grad()
def nll_both(model: VariationalModel, x: torch.Tensor, k: int, seed: int = 0,
             batch: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """−L_k per test point (N,) twice, from the same draws z_1..z_k ~ q(z|x): with the head's own
    log p(x|z) (native) and with the 256-level log P(x|z) (discrete). Burda et al. 2016, eq. 8."""
    g = generator_for(seed)
    native, discrete = [], []
    prior = model.prior()
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]  # (B, D)
        q_z = model.encode(xb)
        z = rsample(q_z, (k,), g)  # (k, B, d)
        log_prior_ratio = (prior.log_prob(z) - q_z.log_prob(z)).double()  # (k, B)
        p_x = model.decode(z)
        for out, log_px in ((native, p_x.log_prob(xb).double()), (discrete, discrete_log_prob(p_x, xb))):
            out.append(-(torch.logsumexp(log_px + log_prior_ratio, dim=0) - math.log(k)))
    return torch.cat(native), torch.cat(discrete)


def head_costs(names: list[str], repeats: int = 7, iters: int = 20) -> dict[str, tuple[float, float]]:
    """Seconds per call of each head alone, the fastest of ``repeats`` interleaved rounds (the minimum
    is what a shared machine's load disturbs least): a training step's part, −log p(x|z) and its
    gradient on a (128, 784) batch, and an evaluation chunk's, log p(x|z) of (50, 50, 784) decoded
    samples without gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (128, D), generator=g).float() / 255  # (B, D) on the 8-bit grid
    best: dict[str, list[float]] = {n: [math.inf, math.inf] for n in names}
    heads = {n: build_likelihood(n) for n in names}
    params = {n: torch.randn(128, D * heads[n].params_per_dim, generator=g) for n in names}
    eval_params = {n: torch.randn(50, 50, D * heads[n].params_per_dim, generator=g) for n in names}
    for _ in range(repeats):
        for n in names:
            p = params[n].clone().requires_grad_(True)
            start = time.perf_counter()
            for _ in range(iters):
                loss = -heads[n](p).log_prob(x).sum()
                loss.backward()
            best[n][0] = min(best[n][0], (time.perf_counter() - start) / iters)
            with torch.no_grad():
                start = time.perf_counter()
                for _ in range(iters // 4):
                    heads[n](eval_params[n]).log_prob(x[:50])
                best[n][1] = min(best[n][1], (time.perf_counter() - start) / (iters // 4))
    return {n: (t[0], t[1]) for n, t in best.items()}


def mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps per run (batch 128)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--k", type=int, default=100, help="importance samples of the NLL estimate")
    parser.add_argument("--net", default="mlp", choices=["mlp", "conv"])
    parser.add_argument("--likelihoods", default=",".join(LIKELIHOODS), help="comma list, gaussian-learned first")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--costs-only", action="store_true", help="only the heads' own costs (seconds)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = [n for n in args.likelihoods.split(",") if n]
    if names[0] != "gaussian-learned":
        names = ["gaussian-learned", *[n for n in names if n != "gaussian-learned"]]
    base = config(names[0], 0, args.steps, args.net, args.data_dir)
    x = load_dataset(base.data, "train").x
    x_test = load_dataset(base.data, "test").x
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MNIST test-9k grey levels: train {len(x)} / "
          f"test {len(x_test)}; {args.net} body, latent 20, -ELBO, {args.steps} steps of batch 128, Adam 1e-3; "
          f"seeds 0..{args.seeds - 1}; IWAE k = {args.k}\n", flush=True)
    if args.costs_only:
        print_costs(names)
        return
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in range(args.seeds):  # seed-major: every likelihood meets the same load on a shared machine
        for name in names:
            cfg = config(name, seed, args.steps, args.net, args.data_dir)
            model = build_model(cfg.model, x.shape[1], seed=seed)
            start, cpu = time.perf_counter(), time.process_time()
            fit(model, x, cfg.train)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
            model.eval()
            native, discrete = nll_both(model, x_test, args.k)  # type: ignore[arg-type]
            results.setdefault(name, []).append({"native": native, "discrete": discrete, "seconds": seconds,
                                                 "cpu": cpu_seconds})
            print(f"  {name} seed {seed}: discrete {float(discrete.mean()):.2f} nats, native "
                  f"{float(native.mean()):.2f} ({KIND[name]}), train {seconds:.0f} s ({cpu_seconds:.0f} s CPU)",
                  flush=True)
    ref = results[names[0]]
    bpd = 1.0 / (D * math.log(2.0))
    print("\n| likelihood | NLL, 256 levels (nats) | − gaussian-learned, paired | bits/dim | − g-l (bits/dim) | "
          "native −L_k (kind) | train time ratio, wall (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        runs = results[name]
        nll, nll_se = mean_se([float(r["discrete"].mean()) for r in runs])
        diffs = [float((r["discrete"] - q["discrete"]).mean()) for r, q in zip(runs, ref, strict=True)]
        diff, diff_se = mean_se(diffs)
        native, native_se = mean_se([float(r["native"].mean()) for r in runs])
        ratio = sum(r["seconds"] for r in runs) / sum(q["seconds"] for q in ref)
        cpu_ratio = sum(r["cpu"] for r in runs) / sum(q["cpu"] for q in ref)
        def pm(value: float, se: float, digits: int) -> str:  # "± se", or the reason there is none
            return f"{value:.{digits}f}" + (" (1 seed)" if math.isnan(se) else f" ± {se:.{digits}f}")

        diff_cell = "—" if name == names[0] else "+" * (diff >= 0) + pm(diff, diff_se, 2)
        diff_bpd = "—" if name == names[0] else "+" * (diff >= 0) + pm(diff * bpd, diff_se * bpd, 4)
        print(f"| {name} | {pm(nll, nll_se, 2)} | {diff_cell} | {nll * bpd:.4f} | {diff_bpd} | "
              f"{pm(native, native_se, 2)} ({KIND[name]}) | {ratio:.2f} ({cpu_ratio:.2f}) |", flush=True)

    print_costs(names)


def print_costs(names: list[str]) -> None:
    costs = head_costs(names)
    ref_step, ref_eval = costs[names[0]]
    print("\n| likelihood | head, train step (ms) | ratio | head, eval chunk (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name, (step, chunk) in costs.items():
        print(f"| {name} | {step * 1e3:.2f} | {step / ref_step:.2f} | {chunk * 1e3:.1f} | {chunk / ref_eval:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
