"""IWAE evaluation speed: ``vaelab.evaluate`` with k = 1000 on 1,000 MNIST test images (issue 12, target 3).

The model is the ``mnist-mlp-bernoulli`` preset (784-400-20) and/or ``mnist-conv``, freshly
initialised with a fixed seed, or trained ``--epochs`` on the 9,000-image split first (the
timing does not depend on the weights: the same matrix products run either way). The test
points are the last 1,000 MNIST test images, binarized as ``vaelab eval`` does.

Reference, measured in the same run: the floor of the evaluation's own matrix products. Every
call of a Linear / Conv layer during one evaluation is recorded (its module and input shape),
then replayed alone on random inputs of the same shapes; the sum is the floor. Aim: evaluation
at most 1.5x that floor. Times are the median of ``--repeats`` runs (default 3).
A benchmark prints; it asserts nothing. On a shared machine the figures are noisy: wall-clock
time counts the time other processes hold the core, so the benchmark also prints the ratio of
process CPU time (user + system, which includes the page faults of fresh tensors), the steadier
figure with one thread. It also replays the likelihood's ``log_prob`` alone on logits of the
recorded shapes (for the Bernoulli head: one softplus pass and one x·ℓ pass over the (k, B, D)
logits), the largest cost outside the matrix products.

Run: ``python benchmarks/bench_eval.py [--models mlp,conv] [--threads 1] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaelab.config import RunConfig
from vaelab.data.pixels import eval_view
from vaelab.data.registry import load_dataset
from vaelab.evaluate import evaluate
from vaelab.models import build_model
from vaelab.presets import apply_preset

DEFAULT_DATA_DIR = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[1:4]
                         if (p / "shared" / "data" / "mnist").is_dir()),
                        Path(__file__).resolve().parents[2] / "shared" / "data")
PRESETS = {"mlp": "mnist-mlp-bernoulli", "conv": "mnist-conv"}
MATMUL_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def config(preset: str, data_dir: Path, epochs: int) -> RunConfig:
    cfg = apply_preset(RunConfig(), preset)
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"name": "mnist", "data_dir": str(data_dir), "image_split": "test-9k"}),
        "train": cfg.train.model_copy(update={"epochs": max(epochs, 1)}),
    })


def model_and_data(cfg: RunConfig, epochs: int) -> tuple[nn.Module, Any]:
    if epochs > 0:
        import tempfile

        from vaelab.train import train_run

        with tempfile.TemporaryDirectory() as tmp:
            model = train_run(cfg, Path(tmp) / "run").model
    else:
        torch.manual_seed(cfg.train.seed)  # the benchmark's own process: a seeded initialisation
        model = build_model(cfg.model, x_dim=784)
    test, _ = eval_view(cfg, load_dataset(cfg.data, "test"))
    return model.eval(), test


Call = tuple[nn.Module, torch.Size, bool]


def recorded_calls(model: nn.Module, run: Any) -> list[Call]:
    """(layer, input shape, whether the input is channels-last) of every Linear / Conv call that
    ``run()`` makes: the conv decoder decodes in channels-last layout without autograd, and a
    replay in the default layout would time other (slower) kernels."""
    calls: list[Call] = []

    def hook(module: nn.Module, inputs: Any, _output: Any) -> None:
        h = inputs[0]
        calls.append((module, h.shape, h.dim() == 4 and not h.is_contiguous()
                      and h.is_contiguous(memory_format=torch.channels_last)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MATMUL_LAYERS)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return calls


def recorded_params(model: Any, run: Any) -> list[torch.Size]:
    """Shape of the decoder output the likelihood turns into p(x|z) at every call ``run()`` makes."""
    shapes: list[torch.Size] = []

    def hook(_module: nn.Module, inputs: Any, _output: Any) -> None:
        shapes.append(inputs[0].shape)

    handle = model.likelihood.register_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return shapes


@torch.no_grad()
def log_prob_seconds(model: Any, shapes: list[torch.Size], x: torch.Tensor) -> float:
    """The likelihood's log p(x|z) alone, on random decoder outputs of the recorded shapes (..., B, D)
    scored against the first B test points."""
    g = torch.Generator().manual_seed(0)
    params = {shape: torch.randn(shape, generator=g) for shape in set(shapes)}
    t0 = time.process_time()
    for shape in shapes:
        model.likelihood(params[shape]).log_prob(x[:shape[-2]])
    return time.process_time() - t0


@torch.no_grad()
def floor_seconds(calls: list[Call]) -> tuple[float, float]:
    """The recorded layer calls replayed alone on random inputs of the same shapes and layouts:
    (wall, CPU) seconds."""
    g = torch.Generator().manual_seed(0)
    inputs = {(shape, cl): torch.rand(shape, generator=g).contiguous(
                  memory_format=torch.channels_last if cl else torch.contiguous_format)
              for _, shape, cl in calls}
    t0, c0 = time.perf_counter(), time.process_time()
    for module, shape, cl in calls:
        module(inputs[shape, cl])
    return time.perf_counter() - t0, time.process_time() - c0


def _evaluate_into(metrics: dict[str, Any], model: Any, test: Any, *, k: int, batch_size: int) -> None:
    metrics.update(evaluate(model, test, k=k, batch_size=batch_size, seed=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp", help="comma-separated: mlp, conv")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="train first (0: seeded initial weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}; "
          f"k = {args.k}, 1,000 MNIST test images; median of {args.repeats}")
    for key in args.models.split(","):
        cfg = config(PRESETS[key], args.data_dir, args.epochs)
        model, test = model_and_data(cfg, args.epochs)
        metrics: dict[str, Any] = {}
        run = partial(_evaluate_into, metrics, model, test, k=args.k, batch_size=cfg.eval.batch_size)
        calls = recorded_calls(model, run)
        params = recorded_params(model, run)
        evals, floors, log_probs = [], [], []
        for _ in range(args.repeats):  # interleaved: load on a shared machine hits both alike
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            evals.append((time.perf_counter() - t0, time.process_time() - c0))
            floors.append(floor_seconds(calls))
            log_probs.append(log_prob_seconds(model, params, test.x))
        ev, fl = (statistics.median(t[0] for t in evals), statistics.median(t[0] for t in floors))
        ev_cpu, fl_cpu = (statistics.median(t[1] for t in evals), statistics.median(t[1] for t in floors))
        print(f"{PRESETS[key]:<22} evaluate {ev:7.2f} s   matmul floor {fl:7.2f} s   ratio {ev / fl:5.2f}x   "
              f"(iwae_nll {metrics['iwae_nll']:.3f}, {len(calls)} layer calls)")
        print(f"{'':<22} CPU time {ev_cpu:7.2f} s   matmul floor {fl_cpu:7.2f} s   ratio {ev_cpu / fl_cpu:5.2f}x   "
              f"(log p(x|z) alone {statistics.median(log_probs):.2f} s CPU)")


if __name__ == "__main__":
    main()
