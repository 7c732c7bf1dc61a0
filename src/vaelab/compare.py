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

import torch

from vaelab import checkpoint as ckpt
from vaelab.config import RunConfig
from vaelab.diagnostics import collapse_verdict
from vaelab.errors import InputError
from vaelab.html import esc, fmt_number, page, png_data_uri
from vaelab.objectives import describe_loss
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
    """(``section.field``, value per run) for every option that is not the same in all runs; a
    family's own options as ``model.NAME.FIELD`` (None where a run does not give it)."""
    flats = [_settings(r.config) for r in runs]
    names = dict.fromkeys(name for flat in flats for name in flat)
    out = []
    for name in names:
        column = [flat.get(name) for flat in flats]
        if any(v != column[0] for v in column[1:]):
            out.append((name, column))
    return out


def _settings(config: RunConfig) -> dict[str, Any]:
    """``section.field`` -> value of a run's config, the [model.NAME] tables spelled out per option."""
    flat: dict[str, Any] = {}
    tables = config.model.family_tables
    for section, values in config.model_dump().items():
        for key, value in values.items():
            if section == "model" and key in tables:
                flat.update({f"model.{key}.{option}": v for option, v in tables[key].items()})
            else:
                flat[f"{section}.{key}"] = value
    return flat


def metrics_rows(runs: Sequence[ckpt.Run]) -> list[tuple[str, list[Any]]]:
    """(metric label, value per run) for every metric any run has, the objective each run trained,
    and its final training −ELBO (β = 1): not its training loss, which differs by objective and
    β (a β-weighted loss is no bound and not comparable across runs)."""
    keys: list[str] = [k for k in METRIC_LABELS if any(k in r.metrics for r in runs)]
    keys += sorted({k for r in runs for k in r.metrics} - set(keys))
    rows = [(METRIC_LABELS.get(k, k).strip(), [r.metrics.get(k) for r in runs]) for k in keys]
    rows.append(("training objective", [describe_loss(r.model, r.config.train) for r in runs]))
    rows.append(("final training −ELBO = reconstruction + KL (β = 1)",
                 [r.history.last["recon"] + r.history.last["kl"] if r.history.last else None for r in runs]))
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
    contexts = [PlotContext.from_run(run, **options) for run in runs]
    shared = shared_latent_view(contexts)
    for ctx in contexts:
        ctx.latent_lims = shared
    density_scale = shared_density_scale(contexts, names)
    for ctx in contexts:
        ctx.density_vmax = density_scale
    for label, ctx in zip(labels, contexts, strict=True):
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
        verdict = collapse_verdict(run.metrics, run.config)
        said = "" if verdict is None else f'<br><span class="note">{esc(verdict.text)}</span>'
        parts.append(f"<li><b>{esc(label)}</b> ({esc(run.path)}): {summary_line(run)}{bad}{said}</li>")
    parts.append("</ul>")
    diffs = config_differences(runs)
    parts.append("<h2>Options that differ</h2>")
    parts.append(_table(["option", *labels], diffs) if diffs else "<p>All runs have the same configuration.</p>")
    parts += ["<h2>Metrics</h2>", _table(["metric", *labels], metrics_rows(runs))]
    parts.append("<h2>Figures</h2>")
    if shared is not None:
        parts.append('<p class="note">The latent-space panels of all runs share their limits.</p>')
    if density_scale is not None:
        parts.append(f'<p class="note">The density images of all runs share one colour scale (0 to '
                     f'{density_scale:.3g}, the largest model density of the runs).</p>')
    for name in shown:
        spec = specs[name]
        # One run per row, each figure at full width: multi-panel figures stay readable.
        rows = []
        for label, run_entries, run_skipped in zip(labels, per_run, skipped, strict=True):
            e = run_entries.get(name)
            if e is not None and e.png is not None:
                cell = f'<img src="{png_data_uri(e.png)}" alt="{esc(name)} of {esc(label)}">'
            elif e is not None:
                cell = f'<span class="error">could not be drawn: {esc(e.error)}</span>'
            else:
                cell = f'<span class="note">not drawn: {esc(run_skipped.get(name, "not requested"))}</span>'
            rows.append(f"<tr><th>{esc(label)}</th></tr><tr><td>{cell}</td></tr>")
        parts.append(
            f'<h3 id="fig-{esc(name)}">{esc(spec.title or name)}</h3>'
            f'<p class="note">{esc(spec.caption)}</p>'
            f'<table class="compare">{"".join(rows)}</table>'
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / COMPARE_FILE
    ckpt.atomic_write_text(path, page(f"vaelab comparison — {', '.join(labels)}", "\n".join(parts)))
    os.chmod(path, 0o644)
    return path


def shared_latent_view(contexts: Sequence[Any]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """One view of the latent plane for every run's latent-space figure: the union of each run's
    own view (its codes, with the prior's 2σ disc), so codes of different runs compare on the
    same scale. None unless all runs show two latent dimensions of the same kind."""
    from vaelab.plots.common import including_prior, to_numpy, view_limits

    if any(ctx.model.latent_dim < 2 for ctx in contexts):
        return None
    views = [including_prior(view_limits(to_numpy(ctx.codes())[:, list(ctx.dims)])) for ctx in contexts]
    lo = min(min(v[0][0], v[1][0]) for v in views)
    hi = max(max(v[0][1], v[1][1]) for v in views)
    return (lo, hi), (lo, hi)


def shared_density_scale(contexts: Sequence[Any], names: Sequence[str] | None) -> float | None:
    """The top of one colour scale for every run's density image, where the data has no known
    density (else each image already ends at the true density's maximum, the same for every run
    on the same data): the largest model density of the runs, each computed as its figure draws
    it (same grid, same draws). None when the figure is not drawn for every run, or the runs
    are on different data (one scale would compare densities of different spaces)."""
    from vaelab.plots import plan
    from vaelab.plots.data_space import density_top, model_density_image

    if names is not None and "density" not in names:
        return None
    if any(not plan(ctx, ["density"])[0] for ctx in contexts):
        return None
    first = contexts[0].data
    if first.log_prob is not None or any(ctx.data.name != first.name or ctx.data.dim != first.dim
                                         or not torch.equal(ctx.data.x, first.x) for ctx in contexts):
        return None
    return max(density_top(model_density_image(ctx.model, ctx.data, grid=ctx.density_grid, k=ctx.density_k,
                                               generator=ctx.generator(4))) for ctx in contexts)


def comparison_table(run_dirs: Sequence[str | Path]) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """(run labels, rows of (name, values)) of the metrics and differing options, for the CLI."""
    runs = [ckpt.load(p) for p in run_dirs]
    return run_labels([r.path for r in runs]), config_differences(runs) + metrics_rows(runs)
