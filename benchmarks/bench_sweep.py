"""Benchmark stacked training: one default 2-D run against 8 and 32 β values trained as one stack.

In one process: the wall time of ``train.fit`` of the default RunConfig (radial_gmm), then of
``vaelab.sweep.fit_stack`` of the same model with 8 (and 32) values of β, the same epochs, and
the ratio of each to the single run (target: at most 2.5x for 8 members on a 2-core CPU).
It also times the stack's arithmetic floor: only the batched matrix products and tanh (forward
and backward) that M members' steps must run, on preallocated tensors. No stacked engine built
from these kernels can take less, so a floor ratio above the target puts the target out of reach.
Each ratio is the median over ``--repeats`` alternations, so a busy machine shifts it less.
Run: ``python benchmarks/bench_sweep.py [--epochs 400] [--repeats 3] [--sizes 8,32] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vaelab.config import RunConfig
from vaelab.data.registry import load_dataset
from vaelab.models import build_model
from vaelab.train import fit, fit_stack


def betas(m: int) -> list[float]:
    """m values of β, log-spaced from 1/16 to 16 (the values a β sweep covers)."""
    return [16.0 ** (2 * i / max(1, m - 1) - 1) for i in range(m)]


def time_single(cfg: RunConfig, x: torch.Tensor) -> float:
    model = build_model(cfg.model, x.shape[1], seed=cfg.train.seed)
    start = time.perf_counter()
    fit(model, x, cfg.train)
    return time.perf_counter() - start


def time_stack(cfg: RunConfig, x: torch.Tensor, m: int) -> float:
    configs = [cfg.train.model_copy(update={"beta": beta}) for beta in betas(m)]
    models = [build_model(cfg.model, x.shape[1], seed=cfg.train.seed) for _ in configs]
    start = time.perf_counter()
    results = fit_stack(models, x, configs)
    seconds = time.perf_counter() - start
    diverged = sum(r.error is not None for r in results)
    if diverged:
        print(f"  ({diverged} of {m} members diverged)")
    return seconds


def arithmetic_floor(cfg: RunConfig, x: torch.Tensor, m: int) -> float:
    """Wall seconds of only the matrix products and tanh of ``m`` stacked members' training.

    Per step and layer of each MLP (encoder on B rows, decoder on k·B rows): the forward product
    and the input- and weight-gradient products as (m, ·, ·) batched products, and tanh with its
    backward on every hidden activation, for the run's exact batch sizes and steps.
    """
    n, bs, k, hidden = x.shape[0], cfg.train.batch_size, cfg.train.k, cfg.model.hidden
    d, latent = x.shape[1], cfg.model.latent_dim
    widths = {"enc": [d, *hidden, 2 * latent], "dec": [latent, *hidden, 2 * d]}
    batches = [bs] * (n // bs) + ([n % bs] if n % bs else [])
    gen = torch.Generator().manual_seed(0)

    def tensors(b: int) -> tuple[list[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
        mats, acts = [], []
        for net, rows in (("enc", b), ("dec", k * b)):
            w = widths[net]
            for i, o in zip(w[:-1], w[1:], strict=True):
                mats.append((torch.randn(m, rows, i, generator=gen), torch.randn(m, i, o, generator=gen),
                             torch.randn(m, rows, o, generator=gen)))
            acts += [torch.randn(m, rows, h, generator=gen) for h in hidden]
        return mats, acts

    shapes = {b: tensors(b) for b in set(batches)}
    start = time.perf_counter()
    for _ in range(cfg.train.epochs):
        for b in batches:
            mats, acts = shapes[b]
            for a, w, grad_out in mats:
                torch.bmm(a, w), torch.bmm(grad_out, w.transpose(1, 2)), torch.bmm(a.transpose(1, 2), grad_out)
            for a in acts:
                torch.ops.aten.tanh_backward(a, torch.tanh(a))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=400, help="epochs of every run (default: the default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="alternations; ratios are their medians")
    parser.add_argument("--sizes", default="8,32", help="stack sizes to time, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = RunConfig().with_overrides({"train": {"epochs": args.epochs}})
    x = load_dataset(cfg.data, "train").x
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default RunConfig on {cfg.data.name} "
          f"({x.shape[0]} points), {args.epochs} epochs, objective {cfg.train.objective} (k = {cfg.train.k}), "
          f"{args.repeats} repeats")
    # One untimed epoch of each first: the first fit / fit_stack in a process pays one-time set-up
    # (allocator, kernels' first calls, vmap's tracing caches) that would flatter the first ratio.
    warm = cfg.with_overrides({"train": {"epochs": 1}})
    time_single(warm, x)
    for m in sizes:
        time_stack(warm, x, m)
    ratios: dict[int, list[float]] = {m: [] for m in sizes}
    floors: dict[int, list[float]] = {m: [] for m in sizes}
    singles: list[float] = []
    for r in range(args.repeats):
        single = time_single(cfg, x)
        singles.append(single)
        line = f"repeat {r + 1}: single run {single:6.1f} s"
        for m in sizes:
            seconds = time_stack(cfg, x, m)
            ratios[m].append(seconds / single)
            floor = arithmetic_floor(cfg, x, m)
            floors[m].append(floor / single)
            line += f"   stack of {m}: {seconds:6.1f} s ({seconds / single:.2f}x; floor {floor / single:.2f}x)"
        print(line, flush=True)
    print()
    print(f"single default run: median {statistics.median(singles):.1f} s")
    for m in sizes:
        med = statistics.median(ratios[m])
        print(f"stack of {m:>2} β values / single run: median {med:.2f}x "
              f"({med / m:.3f}x per configuration; {m / med:.1f} configurations per single-run time); "
              f"its matmul + tanh floor alone {statistics.median(floors[m]):.2f}x")


if __name__ == "__main__":
    main()
