"""The families table: every model family against the plain VAE, same data, budget and evaluator.

Each family trains with the same encoder / decoder widths (the ``mnist-mlp-bernoulli`` preset:
784-400-20, Bernoulli logits, dynamic binarization, Adam 1e-3, batch 128), the same number of
optimizer steps, the same seed and the -ELBO objective, and is scored by ``vaelab.evaluate`` on
the same held-out images: IWAE NLL (k = 1000) with its standard error, -ELBO, active units,
mutual information I(x; z), and the training wall time. The column that decides is the NLL
difference to the plain VAE *paired over the same test images* (each image's -log p̂(x) of the
family minus the VAE's, averaged, with the standard error of that average): image-to-image
spread cancels in the pair, so the difference is resolved far more finely than either NLL's
own ± (which is mostly that spread).

Data sets (``--data``):
- ``mnist``: the MNIST test split that ships with the project (``../shared/data/mnist``):
  first 9,000 images to train, last 1,000 to test (binarized once with vaelab's test seed);
- ``fashion``: the full Fashion-MNIST, 60,000 / 10,000 (Debian's ``dataset-fashion-mnist``
  package, ``/usr/share/datasets/fashion-mnist``), read from a temporary folder of links so
  nothing is written beside the system's copy;
- ``radial_gmm``: the 2-D toy set, trained with the ELBO: how much of the plain VAE's
  ELBO-to-IWAE gap (−ELBO − IWAE NLL, the looseness of a Normal q(z|x)) each flow closes; and
  for ``gumbel`` (one group of 8 classes) its exact NLL (every code summed), its IWAE bound and
  the adjusted Rand index of its classes against the 8 modes.

``gumbel`` on images: N = 20 groups of K = 10 classes (Jang et al. 2017's MNIST setting), so its
z is 200 one-hot coordinates where the other families have 20 continuous ones; its IWAE bound
uses hard categorical samples (evaluation never scores the relaxed ones).

``vq`` on images: the MLP body with N = 10 code vectors of width 2 among K = 64 codes, trained with
its own loss for the table's steps, then its prior over the codes (the second stage) for as many
steps again (the ``train s`` column gives both). Its q(z|x) is a point mass, so its "IWAE NLL" is
the bound −log p(x|z_q(x)) − log p_prior(z_q(x)) (= −ELBO for every k; computed with k = 1), paired
with the VAE's like the others; instead of active units, the perplexity of its codes on the test images.

Sample quality (``--quality-samples``, default 10,000; 0 leaves it out): FD, precision and recall
of that many decoder means E[x|z], z ~ p(z), against the grey test images, in the feature space of
vaelab's classifier (``vaelab.quality``, trained once per data set and cached under ``--cache``),
with the floor of two halves of the test split printed under the table.

Run: ``python benchmarks/bench_families.py [--data mnist] [--steps 6000] [--k 1000]
[--families vae,planar,...] [--threads N] [--quality-samples 10000] [--cache DIR]``. Not a test:
it prints a table (markdown), and the README's table is its output with the command that made it.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vaelab.config import RunConfig
from vaelab.data.pixels import eval_view
from vaelab.data.registry import load_dataset
from vaelab.evaluate import evaluate, generator_for
from vaelab.models import LatentModel, build_model
from vaelab.objectives import iwae_bound
from vaelab.presets import apply_preset
from vaelab.quality import sample_quality
from vaelab.train import fit

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FAMILIES = ("vae", "planar", "radial", "iaf", "vamp", "mog", "ladder", "gumbel", "vq")
# Each family's own options in this table (the rest are its defaults); the widths are the preset's.
OPTIONS: dict[str, dict[str, Any]] = {
    "planar": {"flows": 2},
    "radial": {"flows": 8},
    "iaf": {"flows": 2, "context": 32, "hidden": [320, 320]},
    "vamp": {"components": 500},
    "mog": {"components": 50},
    "ladder": {},
    "gumbel": {"groups": 20, "classes": 10},
    "vq": {"codes": 64, "groups": 10},
}
# Families trained with their own objective instead of the table's −ELBO: the VQ-VAE's loss (a
# point-mass q(z|x) has no ELBO gradient), then its second stage, the prior over the codes, for
# as many steps again (what the `prior s` column times).
OBJECTIVE = {"vq": "vq"}
SECOND_STAGE = {"vq": "vq_prior"}
# The width of z where a family's is not the preset's 20: N·K one-hot coordinates.
LATENT_DIM = {"gumbel": 200}


def image_config(data: str, family: str, steps: int) -> RunConfig:
    """The preset with ``family`` and its options, trained for ``steps`` optimizer steps."""
    if data == "mnist":
        data_section: dict[str, Any] = {"name": "mnist", "data_dir": str(DEFAULT_DATA_DIR), "image_split": "test-9k"}
    else:
        data_section = {"name": "fashion-mnist", "data_dir": str(_fashion_dir())}
    model: dict[str, Any] = {"kind": family}
    if family in LATENT_DIM:
        model["latent_dim"] = LATENT_DIM[family]
    if OPTIONS.get(family):
        model[family] = dict(OPTIONS[family])
    return apply_preset(RunConfig(), "mnist-mlp-bernoulli").with_overrides(
        {"data": data_section, "model": model,
         "train": {"objective": OBJECTIVE.get(family, "elbo"), "steps": steps, "checkpoint_every": 10**9}})


def toy_config(family: str, steps: int, flows: int | None = None) -> RunConfig:
    """radial_gmm with a 2-D latent; ``flows``: the flow's number of steps (else the table's)."""
    model: dict[str, Any] = {"kind": family, "latent_dim": 8 if family == "gumbel" else 2}  # gumbel: 1 group of 8
    if family in ("planar", "radial", "iaf"):
        model[family] = {"flows": flows or OPTIONS[family]["flows"]}
    return RunConfig.from_dict({"data": {"name": "radial_gmm"}, "model": model,
                                "train": {"objective": "elbo", "steps": steps, "checkpoint_every": 10**9}})


_FASHION_TMP: Path | None = None


def _fashion_dir() -> Path:
    """A temporary data folder whose fashion-mnist/ links to the system's files (read only)."""
    global _FASHION_TMP
    if _FASHION_TMP is None:
        if not FASHION_DIR.is_dir():
            raise SystemExit(f"{FASHION_DIR} is missing: apt-get install -y dataset-fashion-mnist (as root)")
        _FASHION_TMP = Path(tempfile.mkdtemp(prefix="vaelab-bench-fashion-"))
        (_FASHION_TMP / "fashion-mnist").mkdir()
        for f in FASHION_DIR.iterdir():
            os.symlink(f, _FASHION_TMP / "fashion-mnist" / f.name)
    return _FASHION_TMP


@torch.no_grad()
def per_point_nll(model: LatentModel, x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """-L_k(x) per test point (N,), batch by batch with one generator: the pairing column."""
    g = generator_for(seed)
    out = [-iwae_bound(model, x[i:i + 100], k=k, generator=g, chunk=100).double() for i in range(0, len(x), 100)]
    return torch.cat(out)


def run_family(cfg: RunConfig, x: torch.Tensor, test: Any, k: int,
               quality: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one family, score it; ``quality`` (train, test, n_samples, cache_dir) adds sample quality."""
    model = build_model(cfg.model, x.shape[1], seed=cfg.train.seed)
    binarize = cfg.data.binarize == "dynamic"
    start = time.perf_counter()
    fit(model, x, cfg.train, dynamic_binarization=binarize)
    seconds = time.perf_counter() - start
    second = SECOND_STAGE.get(cfg.model.kind)
    prior_seconds = None
    if second is not None:  # the VQ-VAE's prior over the codes, encoder / decoder / codebook fixed
        start = time.perf_counter()
        fit(model, x, cfg.with_overrides({"train": {"objective": second}}).train, dynamic_binarization=binarize)
        prior_seconds = time.perf_counter() - start
    model.eval()
    # −ELBO, active units and I(x; z) from vaelab's evaluator; the ELBO's expectation does not depend
    # on k, so 100 draws per point serve it. The IWAE NLL (k of them) is computed per point for the pairing.
    # A point-mass q(z|x) (vq) gives every importance weight the same value: its bound is the same for
    # every k, so one draw computes it exactly.
    point_mass = cfg.model.kind in SECOND_STAGE
    metrics = evaluate(model, test, k=1 if point_mass else min(k, 100), batch_size=250, seed=0)
    nll_points = per_point_nll(model, test.x, 1 if point_mass else k)
    metrics["iwae_nll"] = float(nll_points.mean())
    metrics["iwae_nll_se"] = float(nll_points.std() / math.sqrt(len(nll_points)))
    if quality is not None:
        metrics["quality"] = sample_quality(model, quality["train"], quality["test"],
                                            n_samples=quality["n_samples"], seed=0, cache_dir=quality["cache_dir"])
    return {"model": model, "metrics": metrics, "seconds": seconds, "prior_seconds": prior_seconds,
            "nll_points": nll_points}


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of a − b over the same points."""
    d = a - b
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def image_table(data: str, families: list[str], steps: int, k: int, n_quality: int, cache_dir: Path) -> None:
    base = image_config(data, "vae", steps)
    x = load_dataset(base.data, "train").x
    grey_test = load_dataset(base.data, "test")
    test, note = eval_view(base, grey_test)
    quality = None if n_quality == 0 else {
        "train": load_dataset(base.data, "train"), "test": grey_test, "n_samples": n_quality, "cache_dir": cache_dir}
    print(f"\n## {data}: train {len(x)} / test {len(test)} images ({note}); {steps} steps of batch "
          f"{base.train.batch_size}; IWAE k = {k}\n", flush=True)
    head = "| family | options | IWAE NLL (nats) | − VAE, paired | −ELBO | active units | train s |"
    rule = "|---|---|---|---|---|---|---|"
    if quality is not None:
        head += " FD | precision | recall |"
        rule += "---|---|---|"
    print(head)
    print(rule, flush=True)
    ref = None
    floor = None
    for family in families:
        cfg = image_config(data, family, steps)
        r = run_family(cfg, x, test, k, quality)
        m = r["metrics"]
        if family == "vae":
            ref = r["nll_points"]
        diff = "—" if ref is None or family == "vae" else "{:+.2f} ± {:.2f}".format(*paired(r["nll_points"], ref))
        opts = ", ".join(f"{key}={v}" for key, v in OPTIONS.get(family, {}).items()) or "—"
        au = m["active_units"] if "active_units_per_group" not in m else (
            f"{m['active_units']} ({', '.join(str(v) for v in m['active_units_per_group'].values())})")
        if family in SECOND_STAGE:  # a point mass: no active units; the codebook's use on the test images instead
            with torch.no_grad():
                usage = r["model"].usage(r["model"].encode(test.x).index)
            au = f"perplexity {float(usage['perplexity']):.1f} of {OPTIONS[family]['codes']}"
        secs = f"{r['seconds']:.0f}" + ("" if r["prior_seconds"] is None else f" + {r['prior_seconds']:.0f} (prior)")
        row = (f"| {family} | {opts} | {m['iwae_nll']:.2f} ± {m['iwae_nll_se']:.2f} | {diff} | {-m['elbo']:.2f} | "
               f"{au} | {secs} |")
        if quality is not None:
            q = m["quality"]
            floor = q["floor"]
            row += f" {q['fd']:.2f} | {q['precision']:.3f} | {q['recall']:.3f} |"
        print(row, flush=True)
    if floor is not None and quality is not None:
        print(f"\nSample quality: {n_quality:,} decoder means E[x|z], z ~ p(z), against the {len(grey_test):,} "
              "grey test images, in the feature space of vaelab's classifier (docs/quality.md). Floor (two "
              f"halves of the test split): FD {floor['fd']:.2f}, precision {floor['precision']:.3f}, "
              f"recall {floor['recall']:.3f}.", flush=True)


def toy_table(families: list[str], steps: int, k: int) -> None:
    # "planar:2" is the planar family with 2 flow steps (the toy table may list several K)
    flows = [f for f in families if f.split(":")[0] in ("vae", "planar", "radial", "iaf")]
    base = toy_config("vae", steps)
    x = load_dataset(base.data, "train").x
    test = load_dataset(base.data, "test")
    print(f"\n## radial_gmm (2-D, ELBO): train {len(x)} / test {len(test)} points; {steps} steps; k = {k}\n")
    print("| family | −ELBO | IWAE NLL | gap −ELBO − NLL | share of the VAE's gap closed | true NLL |")
    print("|---|---|---|---|---|---|", flush=True)
    vae_gap = vae_nll = None
    for entry in flows:
        family, _, n_flows = entry.partition(":")
        r = run_family(toy_config(family, steps, int(n_flows) if n_flows else None), x, test, k)
        m = r["metrics"]
        gap = -m["elbo"] - m["iwae_nll"]
        if family == "vae":
            vae_gap = gap
        closed = "—" if vae_gap is None or family == "vae" else f"{1 - gap / vae_gap:.0%}"
        if vae_nll is not None and m["iwae_nll"] > vae_nll:  # a small gap from a worse model is no gain
            closed += " (NLL worse than the VAE's)"
        if family == "vae":
            vae_nll = m["iwae_nll"]
        print(f"| {entry} | {-m['elbo']:.4f} | {m['iwae_nll']:.4f} | {gap:.4f} | {closed} | {m['true_nll']:.4f} |",
              flush=True)
    if "gumbel" in families:
        discrete_table(steps, k)


def discrete_table(steps: int, k: int) -> None:
    """radial_gmm with one group of 8 classes: the exact NLL (all 8 codes summed) beside the IWAE
    bound with hard samples, and how well the classes find the 8 modes (adjusted Rand index)."""
    cfg = toy_config("gumbel", steps)
    x = load_dataset(cfg.data, "train").x
    test = load_dataset(cfg.data, "test")
    r = run_family(cfg, x, test, k)
    m = evaluate(r["model"], test, k=k, batch_size=250, seed=0)
    print("\n| family | −ELBO | IWAE NLL (hard samples) | exact NLL (8 codes summed) | true NLL | ARI vs modes | "
          "classes used | train s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| gumbel (1 × 8) | {-m['elbo']:.4f} | {m['iwae_nll']:.4f} | {m['exact_nll']:.4f} ± {m['exact_nll_se']:.4f} "
          f"| {m['true_nll']:.4f} | {m['code_label_ari']:.3f} | {m['codes_used']} | {r['seconds']:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=["mnist", "fashion", "radial_gmm", "all"])
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per family (default 6000 for images, 20000 for radial_gmm)")
    parser.add_argument("--k", type=int, default=1000, help="importance samples of the NLL estimate")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma list, vae first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quality-samples", type=int, default=10_000,
                        help="samples for the sample-quality columns (FD, precision, recall); 0 leaves them out")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vaelab-bench",
                        help="where the feature classifier of each data set is cached (trained once)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if f]
    if families[0] != "vae":
        families = ["vae", *[f for f in families if f != "vae"]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for data in (["radial_gmm", "mnist", "fashion"] if args.data == "all" else [args.data]):
        if data == "radial_gmm":
            toy_table(families, args.steps or 20000, args.k)
        else:
            image_table(data, families, args.steps or 6000, args.k, args.quality_samples, args.cache / data)


if __name__ == "__main__":
    main()
