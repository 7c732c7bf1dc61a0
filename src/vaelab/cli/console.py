"""Console output of the command line: metric tables, condition metrics, download progress."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


class MofNOnceKnown(MofNCompleteColumn):
    """Steps done of the total ("120/2000"), and nothing while the total is unknown: a bar that
    read "0/?" for the seconds the data and the model took to load looked hung (newcomer review)."""

    def render(self, task: Task) -> Text:
        return Text("") if task.total is None else super().render(task)


def _fetch_with_progress(data_cfg: Any) -> None:
    """Download missing MNIST-family files before training, drawing a progress bar per file."""
    from vaelab.data import mnist

    if data_cfg.path is not None or data_cfg.name not in mnist.MNIST_FAMILY:
        return
    splits: list[mnist.Split] = ["test"] if data_cfg.image_split == "test-9k" else ["train", "test"]
    # Found in the user's folder or in a read-only system folder (/usr/share/datasets): nothing to fetch.
    if not mnist.locate_dataset(data_cfg.name, splits, data_cfg.data_dir).missing:
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console) as progress:
        tasks: dict[str, Any] = {}

        def on_bytes(done: int, total: int | None, name: str) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"downloading {name}", total=total)
            progress.update(tasks[name], completed=done, total=total)

        for split in splits:
            mnist.load_mnist_family(data_cfg.name, split, data_dir=data_cfg.data_dir, progress=on_bytes)


def _print_condition_metrics(metrics: dict[str, Any]) -> None:
    """Conditioning accuracy per label, or the radius each requested radius gets."""
    if "condition" in metrics:
        console.print(f"condition {metrics['condition']}", highlight=False)
    acc = metrics.get("conditioning_accuracy")
    if acc is not None:
        table = Table(title=f"conditioning accuracy ({acc['classifier']}; {acc['n_per_class']} samples per label)")
        table.add_column("label")
        table.add_column("share classified as its label", justify="right")
        for name, value in acc["per_class"].items():
            table.add_row(name, f"{value:.3f}")
        table.add_row("[bold]overall[/]", f"[bold]{acc['overall']:.3f}[/]")
        if "classifier_test_accuracy" in acc:
            table.add_row("(classifier on test data)", f"{acc['classifier_test_accuracy']:.3f}")
        console.print(table)
    track = metrics.get("radius_tracking")
    if track is not None:
        sampled = "sample_mean_radius" in track  # runs evaluated before 2026-12-06 have the means only
        table = Table(title="radius tracking: ‖x‖ at each requested radius, of decoder means E[x|z, c]"
                      + (" and of samples x ~ p(x|z, c)" if sampled else ""))
        columns = ["requested", "means: mean ‖x‖", "means: std ‖x‖"]
        if sampled:
            columns += ["samples: mean ‖x‖", "samples: std ‖x‖"]
        for col in columns:
            table.add_column(col, justify="right")
        for i, r in enumerate(track["requested"]):
            cells = [f"{r:.3f}", f"{track['mean_radius'][i]:.3f}", f"{track['std_radius'][i]:.3f}"]
            if sampled:
                cells += [f"{track['sample_mean_radius'][i]:.3f}", f"{track['sample_std_radius'][i]:.3f}"]
            table.add_row(*cells)
        console.print(table)
        line = f"mean |mean ‖x‖ − requested|: decoder means {track['mean_abs_error']:.4f}"
        if sampled:
            line += f", samples {track['sample_mean_abs_error']:.4f}"
        console.print(line, highlight=False)


def _print_collapse_verdict(metrics: dict[str, Any], config: Any = None) -> None:
    """Say in words whether the posterior has collapsed (and what to try); nothing for an autoencoder.
    ``config``: the run's, so that the advice names only flags this run would take."""
    from vaelab.diagnostics import collapse_verdict

    verdict = collapse_verdict(metrics, config)
    if verdict is not None:
        style = "bold yellow" if verdict.collapsed else "green"
        console.print(f"[{style}]{escape(verdict.text)}[/]", highlight=False, soft_wrap=True)


def _print_metrics(metrics: dict[str, Any]) -> None:
    table = Table(title="held-out evaluation (nats per point)", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    labels = {
        "n": "test points", "elbo": "ELBO", "recon": "reconstruction -E log p(x|z)", "kl": "KL(q(z|x) ‖ p(z))",
        "kl_estimator": "  KL estimated by",
        "iwae_nll": "IWAE NLL", "iwae_nll_se": "  ± standard error", "iwae_k": "  importance samples k",
        "exact_nll": "exact NLL (every code summed)", "exact_nll_se": "  ± standard error",
        "uniform_kl": "uniform prior's KL = N log K", "uniform_bound": "uniform prior's bound (nats)",
        "prior_gain": "learned prior's gain (nats)",
        "code_label_ari": "ARI of argmax q(z|x) vs labels", "codes_used": "codes used",
        "elbo_bpd": "−ELBO (bits/dim)", "iwae_bpd": "IWAE NLL (bits/dim)", "binarization": "test pixels binarized",
        "active_units": "active units", "mutual_info": "mutual information I(x; z)",
        "marginal_kl": "marginal KL(q(z) ‖ p(z))", "true_nll": "true NLL (entropy of the data)",
        "nll_gap": "gap: IWAE NLL − true NLL",
        "nll_gap_se": "  ± standard error",
        "eval_seed": "  evaluation seed",
    }
    # A standard error is printed under the value it belongs to.
    ses = {"elbo": "elbo_se", "recon": "recon_se", "kl": "kl_se", "elbo_bpd": "elbo_bpd_se",
           "iwae_bpd": "iwae_bpd_se", "mutual_info": "mutual_info_se", "marginal_kl": "marginal_kl_se"}
    for key, label in labels.items():
        if key in metrics:
            v = metrics[key]
            table.add_row(label, f"{v:.4f}" if isinstance(v, float) else str(v))
            if key in ses and ses[key] in metrics:
                table.add_row("  ± standard error", f"{metrics[ses[key]]:.4f}")
    if "nll_gap_note" in metrics:
        table.add_row("gap: IWAE NLL − true NLL", "omitted (see below)")
    if "kl_per_dim" in metrics:
        table.add_row("KL per latent dim", ", ".join(f"{v:.3f}" for v in metrics["kl_per_dim"]))
    if "kl_per_group" in metrics:  # a model with latent groups: a ladder's layers z_1 … z_L
        table.add_row("KL per layer", ", ".join(f"z_{g} {v:.3f}" for g, v in metrics["kl_per_group"].items()))
    if "active_units_per_group" in metrics:
        table.add_row("active units per layer",
                      ", ".join(f"z_{g} {v}" for g, v in metrics["active_units_per_group"].items()))
    console.print(table)
    if "nll_gap_note" in metrics:
        console.print(metrics["nll_gap_note"], highlight=False, soft_wrap=True)


def _notice(message: str) -> None:
    console.print(f"[dim]{message}[/]", highlight=False, soft_wrap=True)
