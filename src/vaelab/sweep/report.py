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
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vaelab import checkpoint as ckpt
from vaelab.data.registry import load_dataset
from vaelab.html import esc, figure_png, fmt_number, page, png_data_uri
from vaelab.sweep.folder import REPORT_FILE, MemberRow, read_sweep, sweep_rows, table_columns, table_values

if TYPE_CHECKING:
    from vaelab.plots.common import NotebookFigure


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


def _seeded(groups: dict[tuple[Any, ...], list[MemberRow]]) -> bool:
    """Whether any configuration has more than one seed (error bars mean something)."""
    return any(len(members) > 1 for members in groups.values())


def rate_distortion_figure(rows: Sequence[MemberRow]) -> NotebookFigure | None:
    """Rate against distortion (−E log p(x|z), nats), one colour per configuration: the rate as
    the mutual information I(x; z) (filled) and as the KL term (hollow), joined by a line. Under
    a weighted objective the KL can stay high while I(x; z) drops to 0 (a collapsed code far
    from the prior), so I(x; z) is the rate that shows the β trade-off. Means over seeds, with
    ± 1 sd error bars where a configuration has several seeds; a legend, not labels on points."""
    from vaelab.plots.common import NotebookFigure, add_legend, label_colour

    groups = _by_configuration(rows)
    points = []
    for members in groups.values():
        mi_stats = _mean_std([m.metrics.get("mutual_info") for m in members])
        kl_stats = _mean_std([m.metrics.get("kl") for m in members])
        recon_stats = _mean_std([m.metrics.get("recon") for m in members])
        if math.isfinite(recon_stats[0]) and (math.isfinite(kl_stats[0]) or math.isfinite(mi_stats[0])):
            points.append((mi_stats, kl_stats, recon_stats, _config_label(members[0])))
    if not points:
        return None
    seeded = _seeded(groups)
    fig = NotebookFigure(figsize=(7.5, 4.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    for n, ((mi, mi_sd), (kl, kl_sd), (distortion, distortion_sd), label) in enumerate(points):
        colour = label_colour(n)
        if math.isfinite(mi) and math.isfinite(kl):
            ax.plot([mi, kl], [distortion, distortion], color=colour, linewidth=0.8, alpha=0.6)
        if math.isfinite(mi):
            ax.errorbar(mi, distortion, xerr=mi_sd if seeded else None, yerr=distortion_sd if seeded else None,
                        fmt="o", color=colour, capsize=3, label=label)
        if math.isfinite(kl):
            ax.errorbar(kl, distortion, xerr=kl_sd if seeded else None, fmt="o", mfc="white", color=colour,
                        capsize=3, label=None if math.isfinite(mi) else label)
    ax.set_xlabel("rate [nats]: I(x; z) filled, KL(q(z|x) ‖ p(z)) hollow")
    ax.set_ylabel("distortion: −E log p(x|z) [nats]")
    bars = "error bars: ± 1 sd over seeds" if seeded else "one seed per configuration: no error bars"
    ax.set_title(f"rate–distortion plane (held-out; {bars})", fontsize="medium")
    ax.grid(True, alpha=0.3)
    add_legend(ax, len(points))
    return fig


def _numeric(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def _value_axis(ax: Any, values: Sequence[str], name: str) -> list[float]:
    """x positions of the swept values: the numbers themselves (a symmetric-log axis where they
    span more than a decade, so β = 0, 1, 4, 50 are spaced honestly), else evenly spaced names
    with a note that the spacing means nothing."""
    numbers = _numeric(values)
    if numbers is None:
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(f"{name} (evenly spaced: not a numeric axis)")
        return [float(i) for i in range(len(values))]
    positive = [v for v in numbers if v > 0]
    if positive and (min(numbers) <= 0 or max(positive) / min(positive) > 10):
        ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlabel(f"{name} (symmetric log scale: linear below {min(positive):g})")
    else:
        ax.set_xlabel(name)
    ax.set_xticks(numbers, values)
    return numbers


def axis_figure(rows: Sequence[MemberRow], dotted: str) -> NotebookFigure | None:
    """Held-out IWAE NLL, and the rate as I(x; z) beside the KL, against the values of one swept
    setting (on a numeric axis where they are numbers): one line per combination of the other
    settings (seeds averaged, ± 1 sd where there are several seeds)."""
    from vaelab.plots.common import NotebookFigure

    values = list(dict.fromkeys(str(r.values[dotted]) for r in rows))
    others: dict[tuple[Any, ...], dict[str, list[MemberRow]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = tuple(f"{d.split('.', 1)[1]}={v}" for d, v in row.values.items() if d not in (dotted, SEED_AXIS))
        others[key][str(row.values[dotted])].append(row)
    if not any(r.metrics for r in rows):
        return None
    seeded = _seeded(_by_configuration(rows))
    fig = NotebookFigure(figsize=(10, 3.8), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    name = dotted.split(".", 1)[1]
    for ax, metrics, title in ((axes[0], (("iwae_nll", "-"),), "held-out IWAE NLL [nats]"),
                               (axes[1], (("mutual_info", "-"), ("kl", ":")),
                                "rate: I(x; z) (solid) and KL (dotted) [nats]")):
        xs = _value_axis(ax, values, name)
        for n, (key, by_value) in enumerate(others.items()):
            for metric, style in metrics:
                stats = [_mean_std([m.metrics.get(metric) for m in by_value.get(v, [])]) for v in values]
                label = (", ".join(key) or None) if style == "-" else None
                ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats] if seeded else None,
                            marker="o", linestyle=style, color=f"C{n % 10}", capsize=3, label=label)
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes[1].set_ylim(bottom=0)
    if any(others):
        axes[0].legend(fontsize="x-small")
    return fig


def curves_figure(rows: Sequence[MemberRow]) -> NotebookFigure | None:
    """−ELBO = reconstruction + KL (β = 1) and the KL per epoch of every member, overlaid.

    Not the training loss: members of other β or objectives train different losses (a
    β-weighted loss can be −28 nats at β = 50), which one axis cannot compare; −ELBO is the same
    bound for all of them."""
    from vaelab.plots.common import NotebookFigure

    histories = []
    for row in rows:
        if ckpt.is_run_dir(row.path):
            history = ckpt.load_history(row.path)
            if len(history):
                histories.append((row.name, history))
    if not histories:
        return None
    fig = NotebookFigure(figsize=(10, 4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    for name, history in histories:
        epochs = history.column("epoch")
        neg_elbo = [r + k for r, k in zip(history.column("recon"), history.column("kl"), strict=True)]
        axes[0].plot(epochs, neg_elbo, label=name, linewidth=1)
        axes[1].plot(epochs, history.column("kl"), label=name, linewidth=1)
    axes[0].set_title("−ELBO = reconstruction + KL (β = 1) per epoch [nats]\n(the same bound for every member; "
                      "training batches)", fontsize="medium")
    axes[1].set_title("training KL per epoch [nats]", fontsize="medium")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    if len(histories) <= 16:
        axes[1].legend(fontsize="xx-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


@torch.no_grad()
def samples_figure(rows: Sequence[MemberRow], *, n: int = 500, seed: int = 0) -> NotebookFigure | None:
    """Samples of every trained member in a grid of panels (the last swept setting across):
    points x ~ p(x|z), z ~ p(z), over the held-out data in grey, all panels on the same limits
    (the data's) with light ticks and one legend; decoder means E[x|z] as images for image data.
    The same generator seed for every member."""
    from vaelab.plots.common import NotebookFigure, outside, view_limits
    from vaelab.plots.images import as_images, show, tile

    trained = [r for r in rows if r.status == "done"]
    if not trained:
        return None
    runs = [ckpt.load(r.path) for r in trained]
    test = load_dataset(runs[0].config.data, "test")
    ncols = len({str(list(r.values.values())[-1]) for r in rows}) if rows[0].values else 1
    ncols = max(1, min(ncols, len(runs)))
    nrows = -(-len(runs) // ncols)
    fig = NotebookFigure(figsize=(3.0 * ncols, 3.0 * nrows + 0.4), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)).ravel()
    data = test.x[:n].numpy()
    second = 1 if data.shape[1] > 1 else 0  # 1-D data: along the diagonal
    lims = view_limits(data[:, [0, second]], margin=0.25) if test.image_shape is None else None
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
        assert lims is not None
        points = run.model.sample(n, c, generator=generator, noise=True).numpy()  # (n, D)
        ax.scatter(data[:, 0], data[:, second], s=2, c="0.75", label="held-out data")
        ax.scatter(points[:, 0], points[:, second], s=2, c="C0", label="samples x ~ p(x|z), with noise")
        far = outside(points[:, [0, second]], lims)
        ax.set_title(row.name + (f"\n({far} of {n} samples outside)" if far else ""), fontsize="x-small")
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.tick_params(labelsize="xx-small", colors="0.5")
    for ax in axes[len(trained):]:
        ax.set_axis_off()
    if test.image_shape is None:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize="small", markerscale=4)
    return fig


def _table(rows: Sequence[MemberRow]) -> str:

    head = "".join(f"<th>{esc(c)}</th>" for c in table_columns(rows))
    body = []
    for row in rows:
        cls = ' class="bad"' if row.status.startswith(("diverged", "damaged")) or row.note else ""
        cells = []
        for i, value in enumerate(table_values(row)):
            text = esc(fmt_number(value)) if value is not None else "—"
            if i == 0:
                report = Path(row.path) / ckpt.REPORT_FILE
                target = f"runs/{row.name}/{ckpt.REPORT_FILE}" if report.is_file() else f"runs/{row.name}/"
                text = f'<a href="{esc(target)}">{text}</a>'
            cells.append(f'<td class="num">{text}</td>' if isinstance(value, int | float) else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    notes = "".join(f"<li>{esc(row.note)}</li>" for row in rows if row.note)
    # A member changed outside the sweep or with a damaged state (audit RO13, SW30), said in full.
    return f"<table><tr>{head}</tr>{''.join(body)}</table>" + (f'<ul class="warning">{notes}</ul>' if notes else "")


def render_sweep(out: str | Path, rows: Sequence[MemberRow], axes: Sequence[str]) -> str:
    """The HTML of sweep.html for the members ``rows`` and the swept settings ``axes``."""
    sections = [f"<h1>sweep {esc(Path(out).name)}</h1>",
                f'<p class="summary">{len(rows)} members; swept: '
                f"{esc(', '.join(axes) or 'nothing (one member)')}. Held-out metrics in nats per data point "
                "(vaelab eval); every member is an ordinary run directory under runs/.</p>",
                "<h2>Metrics</h2>", _table(rows)]
    figures: list[tuple[str, NotebookFigure | None, str]] = [
        ("Samples per configuration", samples_figure(rows),
         "the same prior draws for every member, on the same axes as the held-out data (grey)"),
        ("Rate–distortion", rate_distortion_figure(rows),
         "one colour per configuration; the rate as I(x; z) (filled) and as the KL (hollow): a code that carries "
         "nothing about x has I(x; z) ≈ 0 whatever its KL"),
        *((f"Against {d.split('.', 1)[1]}", axis_figure(rows, d), "seeds averaged") for d in axes
          if d != SEED_AXIS),
        ("Training curves", curves_figure(rows),
         "every member overlaid; −ELBO (β = 1) rather than each member's own training loss, which differs by β "
         "and objective"),
    ]
    for title, fig, caption in figures:
        if fig is None:
            continue
        sections.append(f"<h2>{esc(title)}</h2><figure><img src=\"{png_data_uri(figure_png(fig))}\" "
                        f"alt=\"{esc(title)}\"><figcaption>{esc(caption)}</figcaption></figure>")
    return page(f"vaelab sweep {Path(out).name}", "\n".join(sections))


def write_member_reports(out: str | Path, *, names: Sequence[str] | None = None, quick: bool = True,
                         members: Collection[str] | None = None) -> list[Path]:
    """Write report.html (and its figures) of every trained member of the sweep in ``out`` that
    has none yet, so each row of sweep.html links to its member's report; returns the paths
    written. ``names``: the figures to draw (default all that apply). A member that diverged
    gets one too: its report shows the failure and the last good checkpoint, as `vaelab train`'s.

    ``quick`` (the default) leaves out the figures that compute for seconds (the density
    image, the true posterior, the IWAE bound against k: ``report.write_report``), naming them in
    each report: on a 3-member moons sweep (250 epochs each) quick reports took 46 s where full
    ones took 126 s, beside 19 minutes of training (all on a loaded 2-core machine).
    ``members``: only these members (by name; a share of a sweep writes its own)."""
    from vaelab.report import write_report

    written = []
    for row in sweep_rows(out):
        if members is not None and row.name not in members:
            continue
        if (row.status == "done" or row.status.startswith("diverged")) and \
                not (Path(row.path) / ckpt.REPORT_FILE).is_file():
            written.append(write_report(row.path, names=names, quick=quick))
    return written


def write_sweep_report(out: str | Path, *, member_reports: bool = False) -> Path:
    """Write SWEEP/sweep.html from the sweep folder as it stands; returns its path. With
    ``member_reports`` each trained member without a report gets one first (``write_member_reports``),
    and the members' rows link to them (else to their folders)."""
    if member_reports:
        write_member_reports(out)
    rows = sweep_rows(out)
    path = Path(out) / REPORT_FILE
    ckpt.atomic_write_text(path, render_sweep(out, rows, list(read_sweep(out)["grid"])))
    return path
