"""Speed of one training epoch of the 784-400-20 Bernoulli VAE, measured against four references in one run.

* **vaelab**: ``vaelab.train.fit`` for one epoch with the ``mnist-mlp-bernoulli`` preset
  (batch 128, Adam 1e-3, dynamic binarization) on the 9,000-image split (first 9,000 images of
  the MNIST test files), data held as one tensor.
* **reference**: the classic pipeline (``mnist_reference.py``): a Dataset returning one PIL
  image at a time, a DataLoader, the pytorch/examples model and loss.
* **floor**: only the matrix multiplies of that model's forward and backward passes for the
  same batches (4 forward, 4 weight-gradient and 3 input-gradient products per step), on
  preallocated tensors: no data loading, no elementwise work, no optimizer.
* **bare**: the same model, ELBO and fused Adam written as a bare torch loop (nothing else):
  vaelab / bare is what ``fit`` adds (history, reported terms, gradient norm, checks).
* **kernels**: the floor's products plus the kernels no eager step of this model skips
  (binarization draw, ReLUs, softplus, bias sums, fused Adam), also on preallocated tensors:
  kernels / floor bounds what any eager implementation can reach against the floor.

Each is timed ``--repeats`` times, interleaved so that other load on the machine hits all
alike; the best time of each is reported. Targets: vaelab / floor ≤ 1.3 and
reference / vaelab ≥ 3. Run: ``python benchmarks/bench_mnist_speed.py [--data-dir DIR] [--threads 1]
[--compile]`` (``--compile`` adds fit with ``train.compile = true``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from mnist_reference import ReferenceVAE, make_loader, train_epoch

from vaelab.config import RunConfig
from vaelab.data.idx import read_idx
from vaelab.data.registry import load_dataset
from vaelab.models import build_model
from vaelab.presets import apply_preset
from vaelab.train import fit

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
N_TRAIN = 9000


def vaelab_epoch(cfg: RunConfig, x: torch.Tensor, seed: int, compile_step: bool = False) -> float:
    model = build_model(cfg.model, x.shape[1], seed=seed)
    train_cfg = cfg.train.model_copy(update={"epochs": 1, "seed": seed, "compile": compile_step})
    start = time.perf_counter()
    fit(model, x, train_cfg, dynamic_binarization=True)
    return time.perf_counter() - start


def bare_epoch(cfg: RunConfig, x: torch.Tensor, seed: int) -> float:
    """One epoch of the same model, objective and optimizer as a bare torch loop: binarize, shuffle,
    forward, ELBO (Bernoulli log p(x|z) = Σ x·l − softplus(l), closed-form KL), backward, fused
    Adam. No history, no reported terms, no gradient norm, no non-finite check."""
    model = build_model(cfg.model, x.shape[1], seed=seed)
    encoder, decoder = model.encoder, model.decoder
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    generator = torch.Generator().manual_seed(seed)
    n, bs = x.shape[0], cfg.train.batch_size
    start = time.perf_counter()
    x_bin = torch.rand(x.shape, generator=generator).lt_(x)  # (N, D) in {0, 1}
    perm = torch.randperm(n, generator=generator)
    for b in range(math.ceil(n / bs)):
        xb = x_bin[perm[b * bs:(b + 1) * bs]]  # (B, D)
        mu, log_var = encoder(xb).chunk(2, dim=-1)  # (B, d) each
        z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=generator)
        logits = decoder(z)  # (B, D)
        log_px = (xb * logits).sum(-1) - torch.nn.functional.softplus(logits).sum(-1)
        kl = 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).sum(-1)
        loss = (kl - log_px).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def reference_epoch(images: torch.Tensor, labels: torch.Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    model = ReferenceVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = make_loader(images.numpy(), labels.numpy(), seed)
    start = time.perf_counter()
    train_epoch(model, loader, optimizer)
    return time.perf_counter() - start


def matmul_floor(n: int, batch: int = 128, sizes: tuple[int, ...] = (784, 400, 40, 20, 400, 784)) -> float:
    """Time of the matrix products of one epoch of 784-400-(2x20)-20-400-784 training."""
    d_in, h, enc_out, d_z, h2, d_out = sizes
    layers = [(d_in, h), (h, enc_out), (d_z, h2), (h2, d_out)]  # (in, out) of each Linear
    batches = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    tensors = {b: [(torch.randn(b, i), torch.randn(o, i), torch.randn(b, o)) for i, o in layers]
               for b in set(batches)}
    start = time.perf_counter()
    for b in batches:
        for k, (x, w, g) in enumerate(tensors[b]):
            torch.mm(x, w.t())  # forward: (b, in) @ (in, out)
            torch.mm(g.t(), x)  # weight gradient: (out, b) @ (b, in)
            if k > 0:  # the first layer needs no gradient with respect to its input
                torch.mm(g, w)  # input gradient: (b, out) @ (out, in)
    return time.perf_counter() - start


def kernel_floor(n: int, batch: int = 128, sizes: tuple[int, ...] = (784, 400, 40, 20, 400, 784)) -> float:
    """Time of the kernels no eager epoch of this model can skip, on preallocated tensors.

    The matrix products of ``matmul_floor`` plus, per step: the binarization draw and
    comparison (b x 784 uniforms), the two ReLUs and their backward, softplus and its backward
    over the (b, 784) logits, the x * logits product and its sum, the bias gradients (column
    sums) and one fused Adam update of every parameter. Python, autograd bookkeeping, the
    gradient norm, the reported terms and the (b, 20) latent ops are left out. vaelab / this
    floor is what the training loop adds; this floor / ``matmul_floor`` is the least any eager
    step of these kernels can reach against the matrix products alone.
    """
    d_in, h, enc_out, d_z, h2, d_out = sizes
    layers = [(d_in, h), (h, enc_out), (d_z, h2), (h2, d_out)]
    batches = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    gen = torch.Generator().manual_seed(0)
    params = [t for i, o in layers for t in (torch.randn(o, i, generator=gen) * 0.01, torch.zeros(o))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    optimizer.step()  # allocates the moments outside the timed loop
    grey = torch.rand(batch, d_in, generator=gen)
    tensors = {b: ([(torch.randn(b, i), torch.randn(o, i), torch.randn(b, o)) for i, o in layers],
                   torch.empty(b, d_in), torch.randn(b, h), torch.randn(b, d_out)) for b in set(batches)}
    start = time.perf_counter()
    for b in batches:
        mats, u, act, logits = tensors[b]
        x_bin = torch.rand(u.shape, generator=gen, out=u).lt_(grey[:b])  # dynamic binarization
        for k, (x, w, g) in enumerate(mats):
            torch.mm(x, w.t())
            torch.mm(g.t(), x)
            g.sum(0)  # bias gradient
            if k > 0:
                torch.mm(g, w)
        for _ in range(2):  # encoder and decoder hidden ReLU, forward and backward
            relu = torch.relu(act)
            torch.ops.aten.threshold_backward(act, relu, 0.0)
        sp = torch.nn.functional.softplus(logits)  # log p(x|z) = sum x * l - softplus(l)
        (x_bin * logits).sum(-1) - sp.sum(-1)
        torch.ops.aten.softplus_backward(logits, logits, 1.0, 20.0)
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding mnist/")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each (best is reported)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 gives stable numbers on a busy machine")
    parser.add_argument("--compile", action="store_true", help="also time fit with train.compile = true "
                        "(its two batch shapes compile once, in the warm-up)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    cfg = apply_preset(RunConfig(), "mnist-mlp-bernoulli").with_overrides(
        {"data": {"name": "mnist", "data_dir": str(args.data_dir), "image_split": "test-9k"}})
    x = load_dataset(cfg.data, "train").x  # (9000, 784) in [0, 1]
    images = read_idx(args.data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")[:N_TRAIN]  # (9000, 28, 28) uint8
    labels = read_idx(args.data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")[:N_TRAIN]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {N_TRAIN} MNIST images, "
          f"batch 128, {math.ceil(N_TRAIN / 128)} steps per epoch", flush=True)

    vaelab_epoch(cfg, x, seed=99)  # warm-up: first-call allocations, lazy imports
    if args.compile:
        vaelab_epoch(cfg, x, seed=99, compile_step=True)  # compiles (cached for the timed epochs)
    matmul_floor(N_TRAIN)
    kernel_floor(N_TRAIN)
    bare_epoch(cfg, x, seed=99)
    times: dict[str, list[float]] = {"floor": [], "kernels": [], "bare": [], "vaelab": [], "reference": []}
    if args.compile:
        times["vaelab --compile"] = []
    for r in range(args.repeats):
        times["floor"].append(matmul_floor(N_TRAIN))
        times["kernels"].append(kernel_floor(N_TRAIN))
        times["bare"].append(bare_epoch(cfg, x, seed=r))
        times["vaelab"].append(vaelab_epoch(cfg, x, seed=r))
        times["reference"].append(reference_epoch(images, labels, seed=r))
        if args.compile:
            times["vaelab --compile"].append(vaelab_epoch(cfg, x, seed=r, compile_step=True))
        print(f"  round {r + 1}: " + "  ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    best = {k: min(v) for k, v in times.items()}
    print(f"best epoch: floor {best['floor']:.3f} s, vaelab {best['vaelab']:.3f} s, "
          f"reference {best['reference']:.3f} s")
    print(f"vaelab / floor     = {best['vaelab'] / best['floor']:.2f}   (target ≤ 1.3)")
    print(f"kernels / floor    = {best['kernels'] / best['floor']:.2f}   (the products plus the kernels no eager step "
          f"skips: binarization, ReLU, softplus, bias sums, fused Adam; {best['kernels']:.3f} s)")
    print(f"bare / kernels     = {best['bare'] / best['kernels']:.2f}   (what eager torch adds to them: autograd, "
          "dispatch, kernels out of cache)")
    print(f"vaelab / bare      = {best['vaelab'] / best['bare']:.2f}   (what vaelab's fit adds to a bare torch loop "
          f"of {best['bare']:.3f} s)")
    print(f"reference / vaelab = {best['reference'] / best['vaelab']:.2f}   (target ≥ 3)")
    if args.compile:
        comp = best["vaelab --compile"]
        print(f"compiled: epoch {comp:.3f} s, / floor = {comp / best['floor']:.2f}, "
              f"reference / compiled = {best['reference'] / comp:.2f}")


if __name__ == "__main__":
    main()
