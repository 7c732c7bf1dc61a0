"""sweep.html: a sweep's members side by side.

The page holds the metrics table, samples of every configuration in a grid, the
rate–distortion plane (KL, the rate, against reconstruction, the distortion: one point per
configuration, the spread over seeds as error bars), the held-out NLL and active units
against each swept value, and the training curves overlaid. Figures are
``matplotlib.figure.Figure`` objects embedded as PNG (vaelab.html): the page is one file.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vaelab import checkpoint as ckpt
from vaelab.html import esc, figure_png, fmt_number, page, png_data_uri

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vaelab.sweep.run import MemberRow

SEED_AXIS = "train.seed"


def _configuration(row: MemberRow) -> tuple[Any, ...]:
    """The swept values of a row but its seed: the rows that only differ in seed are one configuration."""
    return tuple(str(v) for d, v in row.values.items() if d != SEED_AXIS)


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _by_configuration(rows: Sequence[MemberRow]) -> dict[tuple[Any, ...], list[MemberRow]]:
    groups: dict[tuple[Any, ...], list[MemberRow]] = defaultdict(list)
    for row in rows:
        groups[_configuration(row)].append(row)
    return groups


def _config_label(row: MemberRow) -> str:
    parts = [f"{d.split('.', 1)[1]}={v}" for d, v in row.values.items() if d != SEED_AXIS]
    return ", ".join(parts) or "base"


def rate_distortion_figure(rows: Sequence[MemberRow]) -> Figure | None:
    """KL (rate, nats) against reconstruction (distortion, −E log p(x|z), nats): one point per
    configuration, the mean over its seeds with ± one standard deviation as error bars."""
    from matplotlib.figure import Figure

    points = []
    for members in _by_configuration(rows).values():
        kl = _mean_std([m.metrics.get("kl") for m in members])
        recon = _mean_std([m.metrics.get("recon") for m in members])
        if math.isfinite(kl[0]) and math.isfinite(recon[0]):
            points.append((kl, recon, _config_label(members[0])))
    if not points:
        return None
    fig = Figure(figsize=(6.5, 4.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    for (rate, rate_sd), (distortion, distortion_sd), label in points:
        ax.errorbar(rate, distortion, xerr=rate_sd, yerr=distortion_sd, fmt="o", capsize=3)
        ax.annotate(label, (rate, distortion), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xlabel("rate: KL(q(z|x) ‖ p(z)) [nats]")
    ax.set_ylabel("distortion: −E log p(x|z) [nats]")
    ax.set_title("rate–distortion plane (held-out; error bars: ± 1 sd over seeds)")
    return fig


def axis_figure(rows: Sequence[MemberRow], dotted: str) -> Figure | None:
    """Held-out IWAE NLL and active units against the values of one swept setting: one line per
    combination of the other settings (seeds averaged, ± 1 sd)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    values = list(dict.fromkeys(str(r.values[dotted]) for r in rows))
    others: dict[tuple[Any, ...], dict[str, list[MemberRow]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = tuple(f"{d.split('.', 1)[1]}={v}" for d, v in row.values.items() if d not in (dotted, SEED_AXIS))
        others[key][str(row.values[dotted])].append(row)
    if not any(r.metrics for r in rows):
        return None
    fig = Figure(figsize=(10, 3.8), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "iwae_nll", "held-out IWAE NLL [nats]"),
                              (axes[1], "active_units", "active units")):
        for key, by_value in others.items():
            stats = [_mean_std([m.metrics.get(metric) for m in by_value.get(v, [])]) for v in values]
            ax.errorbar(range(len(values)), [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                        capsize=3, label=", ".join(key) or None)
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(dotted.split(".", 1)[1])
        ax.set_title(title)
    # A count of units: the axis runs from 0 to the most active units seen, with whole-number
    # ticks (a mean over seeds may still sit between them).
    counts = [v for r in rows if (v := r.metrics.get("active_units")) is not None and math.isfinite(v)]
    if counts:
        axes[1].set_ylim(-0.25, max(counts) + 0.25)
    axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
    if any(others):
        axes[0].legend(fontsize="x-small")
    return fig


def curves_figure(rows: Sequence[MemberRow]) -> Figure | None:
    """The training loss and KL per epoch of every member, overlaid."""
    from matplotlib.figure import Figure

    histories = []
    for row in rows:
        if ckpt.is_run_dir(row.path):
            history = ckpt.load_history(row.path)
            if len(history):
                histories.append((row.name, history))
    if not histories:
        return None
    fig = Figure(figsize=(10, 4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    for name, history in histories:
        epochs = history.column("epoch")
        axes[0].plot(epochs, history.column("loss"), label=name, linewidth=1)
        if "kl" in history.columns:
            axes[1].plot(epochs, history.column("kl"), label=name, linewidth=1)
    axes[0].set_title("training loss per epoch")
    axes[1].set_title("training KL per epoch [nats]")
    for ax in axes:
        ax.set_xlabel("epoch")
    if len(histories) <= 16:
        axes[0].legend(fontsize="xx-small")
    return fig


@torch.no_grad()
def samples_figure(rows: Sequence[MemberRow], *, n: int = 500, seed: int = 0) -> Figure | None:
    """Samples of every trained member in a grid of panels (the last swept setting across):
    points x ~ p(x|z), z ~ p(z), over the held-out data in grey for point data; decoder
    means E[x|z] as images for image data. The same generator seed for every member."""
    from matplotlib.figure import Figure

    from vaelab.data.registry import load_dataset
    from vaelab.plots.images import as_images, show, tile

    trained = [r for r in rows if r.status == "done"]
    if not trained:
        return None
    runs = [ckpt.load(r.path) for r in trained]
    test = load_dataset(runs[0].config.data, "test")
    ncols = len({str(list(r.values.values())[-1]) for r in rows}) if rows[0].values else 1
    ncols = max(1, min(ncols, len(runs)))
    nrows = -(-len(runs) // ncols)
    fig = Figure(figsize=(3.0 * ncols, 3.0 * nrows), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, row, run in zip(axes, trained, runs, strict=False):
        generator = torch.Generator().manual_seed(seed)
        c = None
        if run.condition is not None:
            pick = torch.randint(len(test), (n if test.image_shape is None else 16,), generator=generator)
            c = run.condition.tensor(test)[pick]
        if test.image_shape is not None:
            x = run.model.sample(16, c, generator=generator)
            show(ax, tile(as_images(x, test.image_shape), 4), row.name)
            continue
        points = run.model.sample(n, c, generator=generator, noise=True).numpy()  # (n, D)
        data = test.x[:n].numpy()
        second = 1 if data.shape[1] > 1 else 0  # 1-D data: along the diagonal
        ax.scatter(data[:, 0], data[:, second], s=2, c="0.75", label="held-out data")
        ax.scatter(points[:, 0], points[:, second], s=2, label="samples")
        ax.set_title(row.name, fontsize="x-small")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(trained):]:
        ax.set_axis_off()
    return fig


def _table(rows: Sequence[MemberRow]) -> str:
    from vaelab.sweep.run import table_columns, table_values

    head = "".join(f"<th>{esc(c)}</th>" for c in table_columns(rows))
    body = []
    for row in rows:
        cls = ' class="bad"' if row.status.startswith("diverged") else ""
        cells = []
        for i, value in enumerate(table_values(row)):
            text = esc(fmt_number(value)) if value is not None else "—"
            if i == 0:
                text = f'<a href="runs/{esc(row.name)}/">{text}</a>'
            cells.append(f'<td class="num">{text}</td>' if isinstance(value, int | float) else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_sweep(out: str | Path, rows: Sequence[MemberRow], axes: Sequence[str]) -> str:
    """The HTML of sweep.html for the members ``rows`` and the swept settings ``axes``."""
    sections = [f"<h1>sweep {esc(Path(out).name)}</h1>",
                f'<p class="summary">{len(rows)} members; swept: '
                f"{esc(', '.join(axes) or 'nothing (one member)')}. Held-out metrics in nats per data point "
                "(vaelab eval); every member is an ordinary run directory under runs/.</p>",
                "<h2>Metrics</h2>", _table(rows)]
    figures: list[tuple[str, Figure | None, str]] = [
        ("Samples per configuration", samples_figure(rows), "the same prior draws for every member"),
        ("Rate–distortion", rate_distortion_figure(rows), "one point per configuration"),
        *((f"Against {d.split('.', 1)[1]}", axis_figure(rows, d), "seeds averaged") for d in axes
          if d != SEED_AXIS),
        ("Training curves", curves_figure(rows), "every member overlaid"),
    ]
    for title, fig, caption in figures:
        if fig is None:
            continue
        sections.append(f"<h2>{esc(title)}</h2><figure><img src=\"{png_data_uri(figure_png(fig))}\" "
                        f"alt=\"{esc(title)}\"><figcaption>{esc(caption)}</figcaption></figure>")
    return page(f"vaelab sweep {Path(out).name}", "\n".join(sections))


def write_sweep_report(out: str | Path) -> Path:
    """Write SWEEP/sweep.html from the sweep folder as it stands; returns its path."""
    from vaelab.sweep.run import REPORT_FILE, read_sweep, sweep_rows

    rows = sweep_rows(out)
    path = Path(out) / REPORT_FILE
    ckpt.atomic_write_text(path, render_sweep(out, rows, list(read_sweep(out)["grid"])))
    return path
