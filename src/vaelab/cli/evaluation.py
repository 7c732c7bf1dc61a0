"""Run evaluation as the command line does it: evaluate, print, write metrics.json when due;
and the condition a loaded run is given from ``--condition``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vaelab.cli.console import (
    _print_collapse_verdict,
    _print_condition_metrics,
    _print_metrics,
    console,
    err_console,
)
from vaelab.errors import InputError

if TYPE_CHECKING:
    import torch


def _run_eval(
    run_dir: Path, device: torch.device, k: int | None, n_test: int | None, seed: int | None,
    save: bool = False, world: Any = None,
) -> dict[str, Any]:
    """Evaluate with the library's ``evaluate_run``, print, then write metrics.json when due.

    The metrics are printed before anything is written, so a run folder that cannot be
    written still shows its numbers. ``world`` (a ``vaelab.distributed.World`` under torchrun):
    every rank scores its share of the test batches; the others print (quietly) and write nothing.

    A bar follows the test batches (the importance-sampled bound, the long part) and is gone when
    the table is printed; as for training, none is drawn where the output is no terminal and CI is set.
    """
    from vaelab import checkpoint as ckpt
    from vaelab.evaluate import evaluate_run, save_metrics, settings_differ, should_write_metrics
    from vaelab.models import VariationalModel

    run = ckpt.load(run_dir, device)
    main = world is None or world.is_main
    what = f"evaluating (IWAE, k = {run.config.eval.k if k is None else k})" \
        if isinstance(run.model, VariationalModel) else "evaluating"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not main or (not console.is_terminal and bool(os.environ.get("CI")))) as progress:
        task = progress.add_task(what, total=None)

        def on_batch(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        metrics = evaluate_run(run, k=k, n_test=n_test, seed=seed, write=False, world=world, on_batch=on_batch)
    if not main:
        return metrics
    _print_metrics(metrics)
    _print_collapse_verdict(metrics, run.config)
    _print_condition_metrics(metrics)
    if save or should_write_metrics(run, k=k, n_test=n_test, seed=seed):
        path = save_metrics(run, metrics)
        console.print(f"wrote {path}", highlight=False)
    else:
        differ = "; ".join(settings_differ(run, k=k, n_test=n_test, seed=seed))
        console.print(f"{run_dir / ckpt.METRICS_FILE} kept as it was: these numbers use {differ}; "
                      "add --save to replace the run's recorded metrics with them", highlight=False)
    return metrics


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
