"""Run evaluation as the command line does it: evaluate, print, write metrics.json when due;
and the condition a loaded run is given from ``--condition``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vaelab.cli.console import (
    _print_collapse_verdict,
    _print_condition_metrics,
    _print_metrics,
    console,
    err_console,
)
from vaelab.errors import InputError
from vaelab.protocols import PROTOCOLS

# --protocol's help, from the registry of protocols (importing it loads no torch).
PROTOCOL_HELP = ("evaluate as a named protocol (its test images, k and seed replace --k / --n-test / --seed; no "
                 f"sample quality), recorded in metrics.json: {', '.join(PROTOCOLS)} (see docs/protocols.md)")

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class QualityOptions:
    """``vaelab eval``'s sample-quality options: ``--quality-samples N`` (None: the default 10,000)
    and ``--no-quality``. Both apply to image runs only; elsewhere either is refused."""

    samples: int | None = None
    off: bool = False

    def check(self) -> None:
        """Refuse bad values before the run is loaded."""
        from vaelab.quality import check_quality_samples

        if self.off and self.samples is not None:
            raise InputError("--no-quality skips sample quality, --quality-samples sets its number of samples: "
                             "give one of them")
        if self.samples is not None:
            check_quality_samples(self.samples)

    def samples_for(self, run: Any) -> int | None:
        """The number of samples for this run (None: no sample quality)."""
        from vaelab.data.registry import is_image_config
        from vaelab.quality import DEFAULT_QUALITY_SAMPLES

        if not is_image_config(run.config.data):
            if self.off or self.samples is not None:
                flag = "--no-quality" if self.off else "--quality-samples"
                raise InputError(f"{run.path}: {flag} applies to image runs; this run's data are points, whose "
                                 f"evaluation has no sample quality: drop {flag}")
            return None
        return None if self.off else (DEFAULT_QUALITY_SAMPLES if self.samples is None else self.samples)


def check_protocol_options(protocol: str, k: int | None, n_test: int | None, seed: int | None,
                           quality: QualityOptions | None) -> None:
    """Refuse, before the run is loaded, an unknown ``--protocol`` (the message lists the valid
    ones) and the options a protocol fixes itself: --k, --seed, --n-test and --quality-samples
    (a protocol measures no sample quality; --no-quality is accepted, as it says the same)."""
    from vaelab.protocols import ProtocolError, get_protocol

    p = get_protocol(protocol)
    given = [flag for flag, value in (("--k", k), ("--seed", seed), ("--n-test", n_test),
                                      ("--quality-samples", None if quality is None else quality.samples))
             if value is not None]
    if given:
        raise ProtocolError(f"--protocol {p.name} fixes the evaluation (k = {p.k}, seed = {p.seed}, {p.n_test} test "
                            f"images, no sample quality): drop {', '.join(given)}, or drop --protocol to choose them")


def _run_eval(
    run_dir: Path, device: torch.device, k: int | None, n_test: int | None, seed: int | None,
    save: bool = False, world: Any = None, quality: QualityOptions | None = None, protocol: str | None = None,
) -> dict[str, Any]:
    """Evaluate with the library's ``evaluate_run``, print, then write metrics.json when due.

    The metrics are printed before anything is written, so a run folder that cannot be
    written still shows its numbers. ``world`` (a ``vaelab.distributed.World`` under torchrun):
    every rank scores its share of the test batches; the others print (quietly) and write nothing.

    A bar follows the test batches (the importance-sampled bound, the long part) and is gone when
    the table is printed; as for training, none is drawn where the output is no terminal and CI is set.

    ``quality`` (``vaelab eval``'s options): image runs add sample quality (``vaelab.quality``),
    printed as a table beside its real-vs-real floor; None (training's own evaluation): none.

    ``protocol`` (``vaelab eval --protocol NAME``): evaluate under that named protocol
    (``vaelab.protocols``); its k, seed and test images replace --k / --seed / --n-test, which
    must then be None, and no sample quality is measured.
    """
    from vaelab import checkpoint as ckpt
    from vaelab.evaluate import evaluate_run, save_metrics, settings_differ, should_write_metrics
    from vaelab.models import VariationalModel

    if protocol is not None:
        check_protocol_options(protocol, k, n_test, seed, quality)
        quality = None  # a protocol's numbers are the likelihood bound's; sample quality is none of them
    if quality is not None:
        quality.check()
    run = ckpt.load(run_dir, device)
    quality_samples = None if quality is None else quality.samples_for(run)
    main = world is None or world.is_main
    if protocol is not None:
        from vaelab.protocols import get_protocol

        what = f"evaluating under protocol {protocol} (IWAE, k = {get_protocol(protocol).k})"
    elif isinstance(run.model, VariationalModel):
        what = f"evaluating (IWAE, k = {run.config.eval.k if k is None else k})"
    else:
        what = "evaluating"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not main or (not console.is_terminal and bool(os.environ.get("CI")))) as progress:
        task = progress.add_task(what, total=None)

        def on_batch(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
            if quality_samples is not None and done == total:  # the sample quality follows the last batch
                progress.update(task, description=f"{what}; then sample quality ({quality_samples:,} samples)")

        metrics = evaluate_run(run, k=k, n_test=n_test, seed=seed, write=False, world=world, on_batch=on_batch,
                               quality_samples=quality_samples, protocol=protocol)
    if not main:
        return metrics
    if "protocol" in metrics:
        record = metrics["protocol"]
        console.print(f"protocol {record['name']}: {record['description']} ({record['source']})",
                      highlight=False, soft_wrap=True)
    _print_metrics(metrics)
    _print_collapse_verdict(metrics, run.config)
    _print_condition_metrics(metrics)
    _print_sample_quality(metrics)
    if save or should_write_metrics(run, k=k, n_test=n_test, seed=seed, protocol=protocol):
        path = save_metrics(run, metrics)
        console.print(f"wrote {path}", highlight=False)
    else:
        differ = "; ".join(settings_differ(run, k=k, n_test=n_test, seed=seed, protocol=protocol))
        console.print(f"{run_dir / ckpt.METRICS_FILE} kept as it was: these numbers use {differ}; "
                      "add --save to replace the run's recorded metrics with them", highlight=False)
    return metrics


# The sample-quality numbers, in the order printed, with the direction that is better.
QUALITY_LABELS = {
    "fd": "Fréchet distance (lower is better)",
    "precision": "precision, k = 3 (higher is better)",
    "recall": "recall, k = 3 (higher is better)",
    "density": "density, k = 5 (about 1 for the data itself)",
    "coverage": "coverage, k = 5 (higher is better)",
}


def _print_sample_quality(metrics: dict[str, Any]) -> None:
    """The sample-quality table (each number beside its real-vs-real floor), the class accuracy
    of a conditional run's samples, or the note that says why there is none."""
    if "sample_quality_note" in metrics:
        console.print(metrics["sample_quality_note"], highlight=False, soft_wrap=True)
    q = metrics.get("sample_quality")
    if q is None:
        return
    floor = q["floor"]
    clf = q["classifier"]
    table = Table(title=f"sample quality: {q['n_samples']:,} samples vs {q['n_test']:,} test images, in the "
                        f"features of vaelab's classifier (test accuracy {clf['test_accuracy']:.3f}); compare "
                        "only within vaelab")
    table.add_column("metric")
    table.add_column("samples vs test", justify="right")
    table.add_column(f"floor: test half vs half ({floor['n_per_half']:,} each)", justify="right")
    for key, label in QUALITY_LABELS.items():
        table.add_row(label, f"{q[key]:.4f}", f"{floor[key]:.4f}")
    acc = q.get("class_accuracy")
    if acc is not None:
        for name, value in acc["per_class"].items():
            table.add_row(f"  samples of label {escape(name)} classified as it", f"{value:.3f}", "")
        table.add_row("  class accuracy of the samples, mean over labels", f"{acc['overall']:.3f}",
                      f"{clf['test_accuracy']:.3f} (test images)")
    console.print(table)


def _condition_arg(r: Any, arg: str | None, n_rows: int | None) -> torch.Tensor | None:
    """c for a loaded run from ``--condition`` (one value, or a file with one per row).

    Required for a conditional model, refused for an unconditional one. A single value is
    repeated for all ``n_rows``; a file must have ``n_rows`` rows (any number when None).
    Range warnings are shown on the console, and the command goes on.
    """
    import warnings

    cond = r.condition
    if cond is None:
        if arg is not None:
            raise InputError(f"{r.path}: this model was trained without a condition; drop --condition")
        return None
    if arg is None:
        raise InputError(f"{r.path}: this model is conditional ({cond.describe()}); pass --condition VALUE "
                         "or --condition FILE with one condition per row")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = cond.from_arg(arg)
    for w in caught:
        err_console.print(f"[bold yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    if n_rows is not None and len(raw) not in (1, n_rows):
        raise InputError(f"{arg}: holds {len(raw)} conditions for {n_rows} rows; give one per row, or a single value")
    c = cond.encode(raw)
    return c.expand(n_rows, -1) if n_rows is not None and len(c) == 1 else c
