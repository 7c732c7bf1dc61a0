"""Per-step cost of ``vaelab.train.fit`` on the default 2-D run, against a bare torch loop of the same model.

The default 2-D run (2x256 tanh MLPs, latent 2, learned-variance Gaussian p(x|z), IWAE k = 4,
batch 256, cosine Adam 3e-3) is made of ~40 small kernels per step, so Python and
host work around them show directly in the time. Three loops train the same model from the
same initial weights on the same 2,000 points, timed in the same run:

* **bare**: forward, IWAE bound (Burda et al. 2016, eq. 8) written with raw tensor ops,
  backward, fused Adam, nothing else (one randperm per epoch to batch the data);
* **fit**: ``vaelab.train.fit`` with the default config (history, diversity samples, the
  non-finite check, the β and learning-rate schedules, the objective registry);
* **fit --compile** (with ``--compile``): ``fit`` with ``train.compile = true``;
* **mm+tanh floor**: only the step's matrix multiplies (forward and both backward products)
  and tanh (forward and backward), at the same sizes: what no step, compiled or not, can beat.

Each is timed ``--repeats`` times, interleaved so that other load on the machine hits all
alike; the median per-step time of each is reported with its ratio to the bare loop. Times
are CPU seconds of this process (``time.process_time``), which other processes on a shared
machine disturb less than wall time; with ``--threads 1`` they equal the step's own work.
Targets: fit / bare ≤ 1.1, compiled fit / bare ≤ 0.5.
Run: ``python benchmarks/bench_fit_overhead.py [--steps 800] [--repeats 3] [--threads 1] [--compile]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from vaelab.config import RunConfig
from vaelab.data.registry import load_dataset
from vaelab.models import build_model
from vaelab.train import fit

LOG_2PI = math.log(2 * math.pi)


def bare_loop(cfg: RunConfig, x: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` steps of the same model and objective as raw torch; nothing else."""
    model = build_model(cfg.model, x.shape[1], seed=cfg.train.seed)
    encoder, decoder, min_var = model.encoder, model.decoder, model.likelihood.min_var
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    n, bs, k = x.shape[0], cfg.train.batch_size, cfg.train.k
    step = 0
    start = time.process_time()
    while step < steps:
        perm = torch.randperm(n, generator=generator)
        for b in range(math.ceil(n / bs)):
            if step >= steps:
                break
            xb = x[perm[b * bs:(b + 1) * bs]]  # (B, D)
            loc, log_var = encoder(xb).chunk(2, dim=-1)  # (B, d) each
            eps = torch.randn((k, *loc.shape), generator=generator)  # (k, B, d)
            z = loc + torch.exp(0.5 * log_var) * eps  # (k, B, d)
            mean, h = decoder(z).chunk(2, dim=-1)  # (k, B, D) each
            var = min_var + torch.exp(h)
            log_px = -0.5 * ((xb - mean).square() / var + var.log() + LOG_2PI).sum(-1)  # (k, B)
            log_pz = -0.5 * (z.square() + LOG_2PI).sum(-1)
            log_q = -0.5 * (eps.square() + log_var + LOG_2PI).sum(-1)  # (z - μ)²/σ² = ε²
            loss = -(torch.logsumexp(log_px + log_pz - log_q, dim=0) - math.log(k)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return time.process_time() - start


def kernel_floor(cfg: RunConfig, x: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` steps' worth of only the matrix multiplies and tanh of the step.

    Per layer of each MLP (encoder on B rows, decoder on k·B rows): the forward product, the
    two backward products (input and weight gradients), and tanh with its backward. No step
    can take less than this with these kernels, compiled or not; a compiled step at 0.5x of
    the bare loop needs this floor to be well under half of it.
    """
    bs, k, hidden = cfg.train.batch_size, cfg.train.k, cfg.model.hidden
    d, latent = x.shape[1], cfg.model.latent_dim
    widths = {"enc": [d, *hidden, 2 * latent], "dec": [latent, *hidden, 2 * d]}
    gen = torch.Generator().manual_seed(0)
    mats, acts = [], []
    for net, rows in (("enc", bs), ("dec", k * bs)):
        w = widths[net]
        for i, o in zip(w[:-1], w[1:], strict=True):
            mats.append((torch.randn(rows, i, generator=gen), torch.randn(i, o, generator=gen),
                         torch.randn(rows, o, generator=gen)))
        acts += [torch.randn(rows, h, generator=gen) for h in hidden]
    start = time.process_time()
    for _ in range(steps):
        for a, w_, grad_out in mats:
            torch.mm(a, w_), torch.mm(grad_out, w_.T), torch.mm(a.T, grad_out)
        for a in acts:
            torch.ops.aten.tanh_backward(a, torch.tanh(a))
    return time.process_time() - start


def fit_loop(cfg: RunConfig, x: torch.Tensor, steps: int, compile_step: bool = False) -> float:
    """Seconds for ``steps`` steps of ``vaelab.train.fit`` with ``cfg`` (all its bookkeeping included)."""
    model = build_model(cfg.model, x.shape[1], seed=cfg.train.seed)
    train = cfg.train.model_copy(update={"steps": steps, "compile": compile_step})
    start = time.process_time()
    fit(model, x, train)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="steps per timed loop (default run: 3200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed loops of each (median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a busy machine)")
    parser.add_argument("--compile", action="store_true", help="also time fit with train.compile = true")
    parser.add_argument("--data", default="radial_gmm", help="built-in 2-D data set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = RunConfig.from_dict({"data": {"name": args.data}})
    x = load_dataset(cfg.data, "train").x  # (2000, 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.data}, {x.shape[0]} points, "
          f"batch {cfg.train.batch_size}, k {cfg.train.k}, {args.steps} steps per loop, median of {args.repeats}",
          flush=True)
    loops = {"bare": lambda: bare_loop(cfg, x, args.steps), "fit": lambda: fit_loop(cfg, x, args.steps),
             "mm+tanh floor": lambda: kernel_floor(cfg, x, args.steps)}
    if args.compile:
        loops["fit --compile"] = lambda: fit_loop(cfg, x, args.steps, compile_step=True)
    for run in loops.values():  # warm-up: lazy imports, first-call allocations, compilation caches
        run()
    times: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.repeats):
        for name, run in loops.items():
            times[name].append(run() / args.steps * 1e3)
        print(f"  round {r + 1}: " + "  ".join(f"{k} {v[-1]:.3f} ms/step" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, ms in med.items():
        print(f"{name:<15} {ms:.3f} ms/step   {ms / med['bare']:.2f}x bare")
    print("targets: fit / bare <= 1.1, fit --compile / bare <= 0.5")


if __name__ == "__main__":
    main()
