"""A self-contained HTML report of a run: one file, images embedded, no network.

``write_report(run_dir)`` draws every registered figure that applies to the run (see
``vaelab.plots``), saves them to ``RUN/figures`` and writes ``RUN/report.html`` with the
configuration, the held-out metrics, the training history, every figure with a one-line
caption that says what to look for, and the exact command that reproduces the run. A run
whose training stopped on a NaN loss still gets its report, with the failure at the top.

The HTML is built with the standard library only (``html.escape``); images are base64 PNG
data URIs; styles are inline; there is no script and no external URL.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab import checkpoint as ckpt
from vaelab.config import RunConfig
from vaelab.diagnostics import collapse_verdict, mi_saturation_note
from vaelab.history import HELDOUT_COLUMNS
from vaelab.html import esc, figure_png, fmt_number, page, png_data_uri
from vaelab.objectives import describe_loss, get_objective, objective_name, requested_objective, weights_kl
from vaelab.png_worker import PngWorker, spare_cpu
from vaelab.reproduce import REPRODUCE_FILE, reproduce_command, reproduce_toml
from vaelab.settings import unreached_free_bits

REPORT_FILE = ckpt.REPORT_FILE
HISTORY_ROWS = 25  # longer histories show an evenly spaced subset plus the last row

METRIC_LABELS = {
    "protocol": "evaluation protocol (vaelab eval --protocol; docs/protocols.md)",
    "n": "test points",
    "elbo": "ELBO (nats / point)",
    "elbo_se": "  ± standard error",
    "recon": "reconstruction −E log p(x|z)",
    "recon_se": "  ± standard error",
    "kl": "KL(q(z|x) ‖ p(z))",
    "kl_se": "  ± standard error",
    "kl_estimator": "  KL estimated by",  # present only where the KL has no closed form
    "iwae_nll": "IWAE NLL (nats / point)",
    "iwae_nll_se": "  ± standard error",
    "iwae_k": "  importance samples k (also behind ELBO and reconstruction)",
    "exact_nll": "exact NLL: −log Σ_z p(x|z) p(z) over every code (nats / point)",
    "exact_nll_se": "  ± standard error",
    "uniform_kl": "uniform prior over the codes: −log p(z_q) = N log K",
    "uniform_bound": "uniform prior's bound: reconstruction + N log K (nats / point)",
    "prior_gain": "learned prior's gain over the uniform: N log K − KL (nats / point)",
    "recon_bpd": "reconstruction (bits / dimension)",
    "kl_bpd": "KL = −log p(z_q) (bits / dimension)",
    "uniform_kl_bpd": "N log K (bits / dimension)",
    "uniform_bound_bpd": "uniform prior's bound (bits / dimension)",
    "sample_quality": "sample quality",
    "sample_quality_note": "sample quality",
    "code_label_ari": "adjusted Rand index of argmax q(z|x) against the labels",
    "codes_used": "codes used (argmax q(z|x) over the test points)",
    "eval_seed": "  evaluation seed",
    "bits_per_dim": "bits per dimension",
    "elbo_bpd": "−ELBO (bits / dimension)",
    "elbo_bpd_se": "  ± standard error",
    "iwae_bpd": "IWAE NLL (bits / dimension)",
    "iwae_bpd_se": "  ± standard error",
    "binarization": "test pixels binarized",
    "active_units": "active units",
    "mutual_info": "mutual information I(x; z) under the aggregate posterior",
    "mutual_info_se": "  ± standard error",
    "marginal_kl": "marginal KL(q(z) ‖ p(z))",
    "marginal_kl_se": "  ± standard error",
    "mutual_info_points": "  test points in these two estimates (the first ones: pairwise scoring of a flow is costly)",
    "latent_dim": "latent dimensions",
    "true_nll": "true NLL (entropy of the data)",
    "nll_gap": "gap: IWAE NLL − true NLL",
    "nll_gap_se": "  ± standard error",
    "nll_gap_note": "gap: IWAE NLL − true NLL",
    "kl_per_dim": "KL per latent dimension",
    "latent_groups": "latent dimensions per layer z_i",
    "kl_per_group": "KL per layer z_i",  # a model with latent groups (a ladder's layers): one row each
    "kl_per_group_se": "  ± standard error, layer z_i",
    "active_units_per_group": "active units per layer z_i",
    "condition": "condition",
    "conditioning_accuracy": "conditioning accuracy",
    "radius_tracking": "radius tracking",
}


# The rows of a radius condition's tracking: decoder means and noisy samples, each named (they can
# disagree: means on a segment near the origin while the samples follow the radius).
RADIUS_TRACKING_LABELS = {
    "requested": "requested radii",
    "mean_radius": "mean ‖x‖ of decoder means E[x|z, c]",
    "std_radius": "std ‖x‖ of decoder means E[x|z, c]",
    "mean_abs_error": "|mean ‖x‖ − requested|, decoder means E[x|z, c]",
    "sample_mean_radius": "mean ‖x‖ of samples x ~ p(x|z, c) (with noise)",
    "sample_std_radius": "std ‖x‖ of samples x ~ p(x|z, c) (with noise)",
    "sample_mean_abs_error": "|mean ‖x‖ − requested|, samples x ~ p(x|z, c) (with noise)",
}


# A conditional run's held-out numbers are about p(x|c): its labels say so (the exact NLL of a
# label-conditioned mixture is the entropy of one component, H(x|c), not the entropy of the data).
CONDITIONAL_LABELS = {
    "recon": "reconstruction −E log p(x|z, c)",
    "kl": "KL(q(z|x, c) ‖ p(z|c))",
    "elbo": "ELBO of log p(x|c) (nats / point)",
    "iwae_nll": "IWAE −log p(x|c) (nats / point)",
    "mutual_info": "mutual information I((x, c); z) under the aggregate posterior",
    "true_nll": "true −log p(x|c) (conditional entropy H(x|c))",
    "nll_gap": "gap: IWAE −log p(x|c) − true −log p(x|c)",
    "nll_gap_note": "gap: IWAE −log p(x|c) − true −log p(x|c)",
}


def metric_label(key: str, metrics: dict[str, Any]) -> str:
    """The words for a metric of this run: conditional runs read p(x|c), q(z|x, c); a saturated
    mutual information is flagged as a lower bound (see ``diagnostics.mi_saturation_note``)."""
    label = (CONDITIONAL_LABELS.get(key) if metrics.get("condition") else None) or METRIC_LABELS.get(key, key)
    if mi_saturation_note(metrics) and key == "mutual_info":
        label += " (near ln N: a lower bound)"
    if mi_saturation_note(metrics) and key == "marginal_kl":
        label += " (over-estimated: I(x; z) is saturated)"
    return label


# HTML pieces --------------------------------------------------------------------------------


def metrics_table(metrics: dict[str, Any]) -> str:
    if not metrics:
        return '<p class="note">No held-out evaluation yet (run <code>vaelab eval RUN</code>).</p>'
    rows = []
    keys = [k for k in METRIC_LABELS if k in metrics] + [k for k in metrics if k not in METRIC_LABELS]
    for key in keys:
        label = metric_label(key, metrics)
        value_of = metrics[key]
        if key == "radius_tracking" and isinstance(value_of, dict):
            value_of = {RADIUS_TRACKING_LABELS.get(k, k): v for k, v in value_of.items()}
        if key == "sample_quality" and isinstance(value_of, dict):
            rows += [f'<tr><td>{esc(name)}</td><td class="num">{esc(value)}</td></tr>'
                     for name, value in quality_rows(value_of)]
            continue
        # Nested results (conditioning accuracy per label, radius tracking): one row per entry.
        for name, value in _flatten(label, value_of):
            rows.append(f'<tr><td>{esc(name)}</td><td class="num">{esc(fmt_number(value))}</td></tr>')
    return "<table><tr><th>metric</th><th>value</th></tr>" + "".join(rows) + "</table>"


def collapse_html(metrics: dict[str, Any], config: RunConfig | None = None) -> str:
    """The posterior-collapse verdict in words under the metrics ("" for a run without a posterior);
    with the run's ``config`` its advice names only flags that run would take."""
    verdict = collapse_verdict(metrics, config)
    if verdict is None:
        return ""
    if verdict.collapsed and verdict.needed:
        return f'<div class="warning" id="collapse">{esc(verdict.text)}</div>'
    return f'<p class="note" id="collapse">{esc(verdict.text)}</p>'


QUALITY_LABELS = {"fd": "Fréchet distance", "precision": "precision (k = 3)", "recall": "recall (k = 3)",
                  "density": "density (k = 5)", "coverage": "coverage (k = 5)"}


def quality_rows(quality: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows of ``metrics["sample_quality"]`` (vaelab.quality): each number beside its floor
    (the test split's two halves against each other), then the classifier's test accuracy, so
    that the feature space can be trusted, and a conditional run's per-class accuracy."""
    floor = quality.get("floor", {})
    where = f"{quality.get('n_samples', '?')} samples vs {quality.get('n_test', '?')} test images"
    rows = [(f"sample quality ({where}; vaelab's features: compare within vaelab only)", "value (floor)")]
    for key, label in QUALITY_LABELS.items():
        if key in quality:
            rows.append((f"  {label}", f"{fmt_number(quality[key])} ({fmt_number(floor.get(key))})"))
    accuracy = quality.get("classifier", {}).get("test_accuracy")
    if accuracy is not None:
        rows.append(("  feature classifier's test accuracy", fmt_number(accuracy)))
    per_class = quality.get("class_accuracy", {})
    if "overall" in per_class:
        rows.append(("  samples classified as their label c (mean over labels)", fmt_number(per_class["overall"])))
    return rows


def _flatten(name: str, value: Any) -> list[tuple[str, Any]]:
    """``("a", {"b": 1, "c": {"d": 2}})`` -> ``[("a: b", 1), ("a: c: d", 2)]``; non-dicts as they are."""
    if not isinstance(value, dict):
        return [(name, value)]
    return [row for key, v in value.items() for row in _flatten(f"{name}: {key}", v)]


def history_rows(history: ckpt.History, limit: int = HISTORY_ROWS) -> list[dict[str, float]]:
    """All rows when short; otherwise an evenly spaced subset, the last row and every bad row."""
    rows = history.rows
    if len(rows) <= limit:
        return list(rows)
    step = (len(rows) - 1) / (limit - 1)
    keep = {round(i * step) for i in range(limit)} | {len(rows) - 1}
    keep |= {i for i, r in enumerate(rows) if not math.isfinite(float(r["loss"]))}
    return [rows[i] for i in sorted(keep)]


def history_table(history: ckpt.History) -> str:
    if len(history) == 0:
        return '<p class="note">No training history recorded.</p>'
    rows = history_rows(history)
    columns = history.columns  # the fixed ones, every term the run's objective has, the held-out ones
    # NaN in a held-out column is an epoch that was not scored, not a failure.
    terms = [c for c in columns if c not in ckpt.History.COLUMNS and c not in HELDOUT_COLUMNS]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        bad = not all(math.isfinite(float(r.get(c, 0.0))) for c in ("loss", "recon", "kl", *terms))
        cells = "".join(f'<td class="num">{esc(fmt_number(r.get(c, math.nan)))}</td>' for c in columns)
        row_class = ' class="bad"' if bad else ""
        body.append(f"<tr{row_class}>{cells}</tr>")
    note = ""
    if history.has_heldout():
        note += ('<p class="note">heldout_elbo, heldout_recon, heldout_kl: the β = 1 ELBO and its terms on a fixed '
                 "subset of the held-out points at the end of the epoch (NaN: an epoch not scored); compare "
                 "−heldout_elbo with recon + kl.</p>")
    if len(rows) < len(history):
        note += (
            f'<p class="note">{len(rows)} of {len(history)} epochs shown (evenly spaced, plus the last); '
            "the full table is <code>history.csv</code> in the run directory.</p>"
        )
    return note + f"<table><tr>{head}</tr>{''.join(body)}</table>"


def not_applying(config: RunConfig) -> dict[str, str]:
    """The settings of ``config`` (dotted names) that play no part in this run, with why: the
    same rules ``vaelab.settings`` refuses a given setting by (a preset's or default's value of
    such a setting, e.g. recon_var under a Bernoulli likelihood, is simply unused)."""
    from vaelab.errors import InputError
    from vaelab.settings import SETTING_RULES

    unused = {}
    for dotted, rule in SETTING_RULES.items():
        try:
            why = rule(config)
        except (InputError, KeyError, ValueError):  # a rule that cannot judge this config: keep the row
            why = None
        if why is not None:
            unused[dotted] = why
    return unused


def config_tables(config: RunConfig) -> str:
    """One table per config section; values that differ from the defaults in bold. Settings
    that do not apply to this run (``not_applying``) are left out and named in one line."""
    default = RunConfig().model_dump()
    unused = not_applying(config)
    parts = []
    for section, values in config.model_dump().items():
        rows = []
        for key, value in values.items():
            if f"{section}.{key}" in unused:
                continue
            changed = value != default[section].get(key)
            cls = ' class="changed"' if changed else ""
            rows.append(f"<tr><td>{esc(key)}</td><td{cls}>{esc(fmt_number(value))}</td></tr>")
        parts.append(f'<table><tr><th colspan="2">[{esc(section)}]</th></tr>{"".join(rows)}</table>')
    hidden = ""
    if unused:
        hidden = ('<p class="note">Not used by this run, so not listed: '
                  + ", ".join(f'<span title="{esc(why)}">{esc(name)}</span>' for name, why in unused.items())
                  + ".</p>")
    return (
        '<p class="note">Values that differ from the defaults are in bold.</p>'
        '<div style="display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start">' + "".join(parts) + "</div>"
        + hidden
    )


def objective_note(run: ckpt.Run) -> str:
    """One sentence on what the run trained, where β makes it something else than the bound:
    a β-VAE on the β-ELBO, or the β-weighted IWAE named by the user ("" otherwise)."""
    train = run.config.train
    name = objective_name(run.model, train)
    if not get_objective(name).uses_beta or not weights_kl(train):
        return ""
    if name == "elbo":
        how = " (no objective was named, so β made it one)" if requested_objective(train) != train.objective else ""
        return (f"This run is a β-VAE: it trained the β-ELBO{how}, reconstruction + β·KL, a bound on log p(x) "
                "only at β = 1 (looser for β > 1). The held-out ELBO, NLL and curves' −ELBO are the β = 1 numbers.")
    return (f"This run trained the {name.upper()} objective weighted by β: a weighted objective, a bound on log p(x) "
            "only at β = 1, whose value is not comparable across β. The held-out numbers are the β = 1 bounds.")


# What the parts of vaelab's families are, for the model table (a part not listed is shown by name).
PART_ROLES = {
    "encoder": "inference network: x (and c) → the parameters of q(z|x)",
    "decoder": "generative network: z (and c) → the parameters of p(x|z)",
    "likelihood": "observation model p(x|z) (its parameters come from the decoder)",  # without parameters
    "cond_net": "embedding of the continuous condition c",
    "made": "inverse autoregressive flow steps (MADE networks) of q(z|x)",
    "top_down": "top-down networks of the ladder's prior p(z_i|z_i+1)",
    "prior_w": "VampPrior pseudo-inputs",
    "prior_means": "mixture prior: component means",
    "prior_scale_raw": "mixture prior: component scales",
    "prior_logits": "mixture prior: component weights",
}


@dataclass
class ModelPart:
    """One row of a model summary: a top-level part of the model (a child module, or a parameter
    the model holds itself), its role, its layers in words, and its number of parameters."""

    name: str
    kind: str
    role: str
    layers: list[str]
    parameters: int


def _layer_words(module: Any) -> str | None:
    """A leaf layer in a few words ("Linear 784→400", "Conv2d 1→8, 3×3, stride 2"); an
    activation by its class name; None for a layer with nothing to say (a container)."""
    name = type(module).__name__
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return f"{name} {module.in_features}→{module.out_features}"
    if hasattr(module, "in_channels") and hasattr(module, "out_channels") and hasattr(module, "kernel_size"):
        k = "×".join(str(v) for v in module.kernel_size)
        stride = tuple(module.stride)
        extra = "" if all(v == 1 for v in stride) else f", stride {stride[0] if len(set(stride)) == 1 else stride}"
        return f"{name} {module.in_channels}→{module.out_channels}, {k}{extra}"
    return name


def _layers(module: Any) -> list[str]:
    """The leaf layers of a module in words, in order; a list of identical blocks (the steps of a
    flow) as "2 × [Linear 18→64, Tanh, …]"."""
    blocks = list(module.children())
    if len(blocks) > 1 and type(module).__name__ == "ModuleList":
        inner = [_layers(b) for b in blocks]
        if all(i == inner[0] for i in inner):
            return [f"{len(blocks)} × [{', '.join(inner[0])}]"]
    leaves = [m for m in module.modules() if not list(m.children())]
    return [w for w in (_layer_words(m) for m in leaves) if w is not None]


def model_summary(model: Any) -> list[ModelPart]:
    """The parts of any ``torch.nn.Module``: one row per named child module (encoder, decoder,
    flow, prior networks ...) and one per parameter the model holds itself (a learned prior's
    means, pseudo-inputs ...), in the model's own order, with the layers of each child (its leaf
    modules, in order) and its parameter count.

    A parameter shared by two parts is counted in the first only, so the counts add up to
    ``sum(p.numel() for p in model.parameters())`` (which counts each parameter once).
    """
    seen: set[int] = set()

    def count(params: Any) -> int:
        total = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    from vaelab.models import VariationalModel

    parts = []
    for name, child in model.named_children():
        layers = _layers(child)
        if layers == [type(child).__name__]:
            layers = []  # a leaf part (a likelihood) is its own kind, not a layer list
        n = count(child.parameters())
        role = PART_ROLES.get(name, "")
        if name == "encoder" and not isinstance(model, VariationalModel):
            role = "deterministic encoder: x (and c) → the code f(x)"
        if name == "likelihood" and n > 0:
            role = "observation model p(x|z), with parameters of its own"
        parts.append(ModelPart(name, type(child).__name__, role, layers, n))
    for name, param in model.named_parameters(recurse=False):
        shape = "×".join(str(s) for s in param.shape) or "scalar"
        parts.append(ModelPart(name, f"parameter {shape}", PART_ROLES.get(name, ""), [], count([param])))
    return parts


def model_table(model: Any) -> str:
    """The model summary (``model_summary``) as an HTML table with a total row."""
    parts = model_summary(model)
    total = sum(p.parameters for p in parts)
    rows = []
    for part in parts:
        layers = ", ".join(part.layers) if part.layers else ""
        role = f'<br><span class="note">{esc(part.role)}</span>' if part.role else ""
        rows.append(f"<tr><td><b>{esc(part.name)}</b>{role}</td><td>{esc(part.kind)}</td><td>{esc(layers)}</td>"
                    f'<td class="num">{part.parameters:,}</td></tr>')
    rows.append(f'<tr><td><b>total</b></td><td>{esc(type(model).__name__)}</td><td></td>'
                f'<td class="num"><b>{total:,}</b></td></tr>')
    return ("<table><tr><th>part</th><th>kind</th><th>layers (activations by name)</th><th>parameters</th></tr>"
            + "".join(rows) + "</table>")


def failure_of(run: ckpt.Run) -> str | None:
    """A one-paragraph description of how training failed, or None when it did not."""
    if run.failure is not None:
        msg = run.failure.get("message") or "training stopped on a non-finite loss"
        return f"{msg} (step {run.failure.get('step', '?')}, epoch {run.failure.get('epoch', '?')})"
    if run.history.has_failure():
        bad = next(r for r in run.history.rows if not math.isfinite(float(r["loss"])))
        return f"the training loss became NaN / infinite at epoch {int(bad['epoch'])} (step {int(bad['step'])})"
    return None


def summary_line(run: ckpt.Run) -> str:
    c = run.config
    data = c.data.path or c.data.name
    last = run.history.last
    trained = (
        f"{int(last['epoch'])} epochs, {int(last['step'])} steps, {last['seconds']:.1f} s" if last else "untrained"
    )
    return (
        f"{c.model.kind.upper()} on <b>{esc(data)}</b> · latent d = {c.model.latent_dim} · "
        f"likelihood {esc(c.model.likelihood)} · {esc(describe_loss(run.model, c.train))} · {esc(trained)}"
    )


@dataclass
class FigureEntry:
    """A figure as the report shows it: name, title, caption, and PNG bytes or an error."""

    name: str
    title: str
    caption: str
    png: bytes | None = None
    error: str | None = None


def figure_html(entry: FigureEntry, anchor: str | None = None) -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    if entry.png is None:
        return (
            f'<figure{ident}><h3>{esc(entry.title)}</h3><p class="error">This figure could not be drawn: '
            f"{esc(entry.error)}</p></figure>"
        )
    return (
        f"<figure{ident}><h3>{esc(entry.title)}</h3>"
        f'<img src="{png_data_uri(entry.png)}" alt="{esc(entry.title)}">'
        f"<figcaption><b>{esc(entry.name)}</b>: {esc(entry.caption)}</figcaption></figure>"
    )


def collect_figures(
    ctx: Any,
    names: Sequence[str] | None = None,
    *,
    figures_dir: Path | None = None,
    notify: Callable[[str], None] | None = None,
    background: bool | None = None,
) -> tuple[list[FigureEntry], list[tuple[str, str]]]:
    """Draw every applicable figure to PNG (also saved into ``figures_dir`` when given).

    ``background``: encode the PNGs in a second process (``vaelab.png_worker``) while this one
    builds the next figures, the heavy ones (the density image) last, so that drawing overlaps
    computing; once the figures are built, this process takes over those the worker has not
    started (``PngWorker.finish``). The PNG bytes are the same. None (the default) does so where
    that process would have a CPU of its own beside torch's threads (``png_worker.spare_cpu``);
    any figure the worker does not deliver (it cannot start, it died, ...) is drawn here.
    Returns the entries (in registry order) and the (name, reason) of figures skipped.
    """
    import torch

    from vaelab import plots  # matplotlib: loaded only when figures are drawn
    apply, skipped = plots.plan(ctx, names)
    if background is None:
        background = spare_cpu(torch.get_num_threads())
    worker = None
    if background and apply:
        try:
            worker = PngWorker()
        except OSError:  # no second process here: draw everything in this one
            worker = None
    entries: dict[str, FigureEntry] = {}
    sent: dict[str, Any] = {}  # figures handed to the worker, kept to draw here if it fails
    try:
        for item in plots.render_all(ctx, names, notify=notify, heavy_last=worker is not None):
            spec = item.spec
            entry = FigureEntry(spec.name, spec.title or spec.name, spec.caption, error=item.error)
            if item.figure is not None:
                if worker is not None and worker.submit(spec.name, item.figure):
                    sent[spec.name] = item.figure
                else:
                    entry.png = figure_png(item.figure)
            entries[spec.name] = entry
        delivered = worker.finish(lambda name: figure_png(sent[name])) if worker is not None else {}
    finally:
        if worker is not None:
            worker.close()
    for name, fig in sent.items():
        entries[name].png = delivered[name] if name in delivered else figure_png(fig)
    ordered = [entries[spec.name] for spec in apply if spec.name in entries]
    if figures_dir is not None:
        for entry in ordered:
            if entry.png is not None:  # the one writer creates the folder and names a file it cannot write
                ckpt.atomic_write_bytes(figures_dir / f"{entry.name}.png", entry.png)
    return ordered, skipped


def render_report(run: ckpt.Run, entries: Sequence[FigureEntry], skipped: Sequence[tuple[str, str]] = ()) -> str:
    """The report of a run as one HTML string."""
    name = run.path.name or str(run.path)
    failure = failure_of(run)
    command, needs_toml = reproduce_command(run.config, run.path)
    status = '<span class="failed">FAILED</span>' if failure else '<span class="ok">completed</span>'
    parts = [
        f"<h1>vaelab run: {esc(name)}</h1>",
        f'<p class="summary">{summary_line(run)} · status: {status}</p>',
        *([f'<p class="note" id="objective">{esc(objective_note(run))}</p>'] if objective_note(run) else []),
        *([f'<div class="warning" id="free-bits">{esc(floored)}</div>']
          if (floored := unreached_free_bits(run.config.train, run.history.column("kl"))) else []),
        '<nav><a href="#metrics">metrics</a><a href="#figures">figures</a><a href="#history">history</a>'
        '<a href="#model">model</a><a href="#config">configuration</a><a href="#reproduce">reproduce</a></nav>',
    ]
    if failure:
        parts.append(
            f'<div class="failure" id="failure"><b>Training failed:</b> {esc(failure)}. '
            "The figures below show the last good checkpoint.</div>"
        )
    parts += ['<h2 id="metrics">Held-out metrics</h2>', metrics_table(run.metrics),
              collapse_html(run.metrics, run.config)]
    parts.append('<h2 id="figures">Figures</h2>')
    if entries:
        parts.append(
            '<ul class="note">'
            + "".join(f'<li><a href="#fig-{esc(e.name)}">{esc(e.title)}</a></li>' for e in entries)
            + "</ul>"
        )
    for e in entries:
        parts.append(figure_html(e, f"fig-{e.name}"))
    if skipped:
        parts.append(
            '<p class="note">Not drawn for this run:</p><ul class="note">'
            + "".join(f"<li><b>{esc(n)}</b>: {esc(r)}</li>" for n, r in skipped)
            + "</ul>"
        )
    parts += ['<h2 id="history">Training history</h2>', history_table(run.history)]
    parts += ['<h2 id="model">Model</h2>', model_table(run.model)]
    parts += ['<h2 id="config">Configuration</h2>', config_tables(run.config)]
    parts.append('<h2 id="reproduce">Reproduce this run</h2>')
    if needs_toml:
        parts.append(
            f"<p>Some options have no command-line flag, so the configuration is in "
            f"<code>{esc(REPRODUCE_FILE)}</code> beside this report (also shown below):</p>"
        )
    parts.append(f"<pre>{esc(command)}</pre>")
    parts.append('<p class="note">Add <code>--overwrite</code> to replace this run, or change <code>--out</code>.</p>')
    if needs_toml:
        parts.append(f"<pre>{esc(reproduce_toml(run.config))}</pre>")
    parts.append(f'<p class="note">Written by vaelab on {esc(time.strftime("%Y-%m-%d %H:%M:%S"))}.</p>')
    return page(f"vaelab report — {name}", "\n".join(parts))


def write_report(
    run: ckpt.Run | str | Path,
    *,
    out: str | Path | None = None,
    names: Sequence[str] | None = None,
    notify: Callable[[str], None] | None = None,
    save_figures: bool = True,
    background: bool | None = None,
    quick: bool = False,
    **options: Any,
) -> Path:
    """Draw the figures and write ``RUN/report.html`` (or ``out``); returns the report's path.

    ``quick`` leaves out the figures that compute for seconds (``FigureSpec.heavy``: the density
    image, the true posterior, the IWAE bound against k), each named in the report as not drawn
    and how to draw it: the reports of a sweep's members (``vaelab.sweep.report``) are quick.

    ``options`` go to ``PlotContext`` (dims, points, seed, n_points, density_k …). The
    figures are also saved as PNG into ``RUN/figures`` unless ``save_figures`` is False.
    ``background``: whether a second process encodes the PNGs while this one computes (the same
    bytes either way); None decides by the CPUs available (see ``collect_figures``).
    """
    from vaelab.plots import FIGURES_DIR, PlotContext, check_names  # matplotlib, as above

    names = None if names is None else check_names(names)
    if out is not None:  # never over a run's own files (config.json, weights ...), checked before any work
        ckpt.check_output_path(out, allow=(REPORT_FILE,))
    if not isinstance(run, ckpt.Run):
        run = ckpt.load(run)
    ctx = PlotContext.from_run(run, **options)
    if save_figures and out is not None and not os.access(run.path, os.W_OK):
        # A read-only run (a mount, chattr +i) can still be reported elsewhere: the figures are
        # inside the HTML; only their PNG copies in RUN/figures are left out.
        save_figures = False
        if notify is not None:
            notify(f"{run.path} is read-only: the figures are in {out} only, not saved into {run.path / FIGURES_DIR}")
    elif save_figures and not os.access(run.path, os.W_OK):
        raise ckpt.WriteError(f"{run.path}: the run folder is read-only, and the report writes its figures into "
                              f"{run.path / FIGURES_DIR} and itself into {run.path / REPORT_FILE}; give --out "
                              "a file in a writable folder to write the report there (figures inside it)")
    left_out: list[tuple[str, str]] = []
    if quick:
        from vaelab.plots import figure_names, plan

        heavy = [spec.name for spec in plan(ctx, names)[0] if spec.heavy]
        names = [n for n in (names or figure_names()) if n not in heavy]
        left_out = [(n, "left out of this quick report (it computes for seconds); `vaelab report "
                        f"{run.path}` draws every figure") for n in heavy]
    entries, skipped = collect_figures(
        ctx, names, figures_dir=run.path / FIGURES_DIR if save_figures else None, notify=notify,
        background=background,
    )
    skipped = [*skipped, *left_out]
    _, needs_toml = reproduce_command(run.config, run.path)
    if needs_toml and os.access(run.path, os.W_OK):  # also shown inside the report
        ckpt.atomic_write_text(run.path / REPRODUCE_FILE, reproduce_toml(run.config))
    path = Path(out) if out is not None else run.path / REPORT_FILE
    # The one writer: errors name ``path`` and leave an existing report as it was; a new file
    # gets 0666 minus the umask (shareable, like any other file the user makes).
    ckpt.atomic_write_text(path, render_report(run, entries, skipped), what="--out")
    return path

