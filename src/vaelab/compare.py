"""Several runs side by side: one metrics table, the options that differ, the same figures in columns.

This is how a student sees what β, σ² or the latent size do: train two or three runs that
differ in one option, then ``vaelab compare RUN_A RUN_B --out cmp`` writes ``cmp/compare.html``
(self-contained, like the run report) and ``cmp/figures/<run>/<figure>.png``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vaelab import checkpoint as ckpt
from vaelab.errors import InputError
from vaelab.html import esc, fmt_number, page, png_data_uri
from vaelab.report import (
    METRIC_LABELS,
    FigureEntry,
    collect_figures,
    failure_of,
    summary_line,
)

COMPARE_FILE = "compare.html"


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique column names: the folder names, with the parent added where two clash."""
    labels = [p.name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    return labels


def config_differences(runs: Sequence[ckpt.Run]) -> list[tuple[str, list[Any]]]:
    """(``section.field``, value per run) for every option that is not the same in all runs."""
    dumps = [r.config.model_dump() for r in runs]
    out = []
    for section, values in dumps[0].items():
        for key in values:
            column = [d[section].get(key) for d in dumps]
            if any(v != column[0] for v in column[1:]):
                out.append((f"{section}.{key}", column))
    return out


def metrics_rows(runs: Sequence[ckpt.Run]) -> list[tuple[str, list[Any]]]:
    """(metric label, value per run) for every metric any run has, plus the final training loss."""
    keys: list[str] = [k for k in METRIC_LABELS if any(k in r.metrics for r in runs)]
    keys += sorted({k for r in runs for k in r.metrics} - set(keys))
    rows = [(METRIC_LABELS.get(k, k).strip(), [r.metrics.get(k) for r in runs]) for k in keys]
    rows.append(("final training loss", [r.history.last["loss"] if r.history.last else None for r in runs]))
    rows.append(("epochs trained", [int(r.history.last["epoch"]) if r.history.last else 0 for r in runs]))
    return rows


def _table(header: Sequence[str], rows: Sequence[tuple[str, list[Any]]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        f"<tr><td>{esc(name)}</td>"
        + "".join(f'<td class="num">{esc("—" if v is None else fmt_number(v))}</td>' for v in values)
        + "</tr>"
        for name, values in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _prefixed(notify: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    """``notify`` with every message prefixed (e.g. by the run's label)."""
    return lambda message: notify(f"{prefix}{message}")


def write_comparison(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    notify: Callable[[str], None] | None = None,
    **options: Any,
) -> Path:
    """Load the runs, draw their figures, write ``out_dir/compare.html``; returns its path.

    Figures go to ``out_dir/figures/<run label>/``. ``options`` go to ``PlotContext``.
    """
    from vaelab.plots import PlotContext, check_names, registry

    if len(run_dirs) < 2:
        raise InputError(f"compare needs at least two run directories, got {len(run_dirs)}")
    names = None if names is None else check_names(names)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is a file; --out must be a folder")
    runs = [ckpt.load(p) for p in run_dirs]
    labels = run_labels([r.path for r in runs])
    per_run: list[dict[str, FigureEntry]] = []
    skipped: list[dict[str, str]] = []
    for run, label in zip(runs, labels, strict=True):
        ctx = PlotContext.from_run(run, **options)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
        entries, skip = collect_figures(
            ctx,
            names,
            figures_dir=out_dir / "figures" / safe,
            notify=None if notify is None else _prefixed(notify, f"{label}: "),
        )
        per_run.append({e.name: e for e in entries})
        skipped.append(dict(skip))
    specs = registry()
    shown = [n for n in specs if any(n in entries for entries in per_run)]

    parts = [f"<h1>vaelab comparison of {len(runs)} runs</h1>", "<h2>Runs</h2><ul>"]
    for run, label in zip(runs, labels, strict=True):
        failure = failure_of(run)
        bad = f' · <span class="failed">FAILED: {esc(failure)}</span>' if failure else ""
        parts.append(f"<li><b>{esc(label)}</b> ({esc(run.path)}): {summary_line(run)}{bad}</li>")
    parts.append("</ul>")
    diffs = config_differences(runs)
    parts.append("<h2>Options that differ</h2>")
    parts.append(_table(["option", *labels], diffs) if diffs else "<p>All runs have the same configuration.</p>")
    parts += ["<h2>Metrics</h2>", _table(["metric", *labels], metrics_rows(runs))]
    parts.append("<h2>Figures</h2>")
    width = f"{100 / len(runs):.2f}%"
    for name in shown:
        spec = specs[name]
        cells = []
        for run_entries, run_skipped in zip(per_run, skipped, strict=True):
            e = run_entries.get(name)
            if e is not None and e.png is not None:
                cells.append(f'<td style="width:{width}"><img src="{png_data_uri(e.png)}" alt="{esc(name)}"></td>')
            elif e is not None:
                cells.append(f'<td class="error">could not be drawn: {esc(e.error)}</td>')
            else:
                cells.append(f'<td class="note">not drawn: {esc(run_skipped.get(name, "not requested"))}</td>')
        header = "".join(f"<th>{esc(label)}</th>" for label in labels)
        parts.append(
            f'<h3 id="fig-{esc(name)}">{esc(spec.title or name)}</h3>'
            f'<p class="note">{esc(spec.caption)}</p>'
            f'<table class="compare"><tr>{header}</tr><tr>{"".join(cells)}</tr></table>'
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / COMPARE_FILE
    ckpt.atomic_write_text(path, page(f"vaelab comparison — {', '.join(labels)}", "\n".join(parts)))
    os.chmod(path, 0o644)
    return path


def comparison_table(run_dirs: Sequence[str | Path]) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """(run labels, rows of (name, values)) of the metrics and differing options, for the CLI."""
    runs = [ckpt.load(p) for p in run_dirs]
    return run_labels([r.path for r in runs]), config_differences(runs) + metrics_rows(runs)
