"""vaelab: train, evaluate and explore variational autoencoders with PyTorch.

A notebook session::

    import vaelab
    cfg = vaelab.RunConfig()                          # defaults: a VAE on radial_gmm
    cfg.train.epochs = 30                             # every field can be set (and is checked)
    run = vaelab.train_run(cfg, "runs/demo", progress=True)  # writes the run directory
    metrics = vaelab.evaluate_run(run, progress=True)        # as `vaelab eval` does; writes metrics.json
    x = run.model.sample(1000)                        # (1000, 2) decoder means
    vaelab.plot_samples(run.model, vaelab.load_dataset(cfg.data))  # the figures: vaelab.plot_*
    run = vaelab.load("runs/demo")                    # later: rebuilt from the folder alone

``train_run`` and ``evaluate_run`` run on ``device="auto"`` (CUDA, then MPS, else the CPU) and
print nothing unless ``progress=True``. The figure functions ``vaelab.plot_*`` each return a
matplotlib Figure; ``vaelab.render(vaelab.PlotContext.from_run(run), name)`` draws a figure of
the registry (``vaelab.plots``) by the name ``vaelab plot`` uses.
"""

# Only public names are left in this module's namespace (tab completion lists them): the
# helpers below are imported under private names.
import importlib as _importlib
import logging as _logging
import sys as _sys
import types as _types
import typing as _typing

if _typing.TYPE_CHECKING:
    from vaelab import plots
    from vaelab.checkpoint import Run, load, save
    from vaelab.compare import write_comparison
    from vaelab.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
    from vaelab.data.registry import dataset_names as datasets
    from vaelab.data.registry import load_dataset
    from vaelab.evaluate import evaluate, evaluate_run
    from vaelab.history import History
    from vaelab.models import build_model, register_family
    from vaelab.plots import render
    from vaelab.plots.common import PlotContext
    from vaelab.plots.conditional import (
        plot_class_style,
        plot_conditional_density,
        plot_label_samples,
        plot_latent_by_condition,
        plot_latent_grid_by_condition,
        plot_traversal_by_condition,
        plot_value_samples,
    )
    from vaelab.plots.course import (
        plot_before_after,
        plot_data_and_samples,
        plot_iwae_vs_k,
        plot_kl_per_dim,
        plot_latent_pca,
        plot_rate_split,
        plot_reparameterization,
        plot_true_posterior,
    )
    from vaelab.plots.curves import plot_loss_terms, plot_training_curves
    from vaelab.plots.data_space import plot_density, plot_pairs, plot_reconstructions, plot_samples
    from vaelab.plots.discrete import plot_class_samples, plot_latent_classes_2d
    from vaelab.plots.flows import plot_flow_posterior
    from vaelab.plots.hierarchy import plot_kl_per_layer, plot_layer_samples_images, plot_layer_samples_points
    from vaelab.plots.images import plot_image_samples, plot_interpolations, plot_latent_classes, plot_traversal
    from vaelab.plots.images import plot_reconstructions as plot_image_reconstructions
    from vaelab.plots.latent import (
        plot_aggregate_posterior,
        plot_latent_grid,
        plot_latent_params,
        plot_latent_space,
        plot_point_interpolations,
        plot_posterior_contours,
        plot_z_vs_eps,
    )
    from vaelab.plots.priors import plot_prior_mixture, plot_pseudo_inputs
    from vaelab.plots.vq import plot_code_map, plot_codebook_usage, plot_prior_samples
    from vaelab.train import fit, train_run

# The public API: name -> (module, attribute). Imported on first use (PEP 562), so that
# ``import vaelab`` and the command line's start-up do not pay for torch, pydantic, matplotlib
# and the model code before something needs them.
_EXPORTS: dict[str, tuple[str, str]] = {
    "DataConfig": ("vaelab.config", "DataConfig"),
    "EvalConfig": ("vaelab.config", "EvalConfig"),
    "History": ("vaelab.history", "History"),
    "ModelConfig": ("vaelab.config", "ModelConfig"),
    "Run": ("vaelab.checkpoint", "Run"),
    "RunConfig": ("vaelab.config", "RunConfig"),
    "TrainConfig": ("vaelab.config", "TrainConfig"),
    "build_model": ("vaelab.models", "build_model"),
    "datasets": ("vaelab.data.registry", "dataset_names"),
    "evaluate": ("vaelab.evaluate", "evaluate"),
    "evaluate_run": ("vaelab.evaluate", "evaluate_run"),
    "fit": ("vaelab.train", "fit"),
    "load": ("vaelab.checkpoint", "load"),
    "load_dataset": ("vaelab.data.registry", "load_dataset"),
    "register_family": ("vaelab.models", "register_family"),
    "save": ("vaelab.checkpoint", "save"),
    "train_run": ("vaelab.train", "train_run"),
    "write_comparison": ("vaelab.compare", "write_comparison"),
    # Figures: each function returns a matplotlib Figure; `render` draws one of the registry by name.
    "PlotContext": ("vaelab.plots.common", "PlotContext"),
    "render": ("vaelab.plots", "render"),
    "plot_samples": ("vaelab.plots.data_space", "plot_samples"),
    "plot_reconstructions": ("vaelab.plots.data_space", "plot_reconstructions"),
    "plot_density": ("vaelab.plots.data_space", "plot_density"),
    "plot_pairs": ("vaelab.plots.data_space", "plot_pairs"),
    "plot_latent_params": ("vaelab.plots.latent", "plot_latent_params"),
    "plot_z_vs_eps": ("vaelab.plots.latent", "plot_z_vs_eps"),
    "plot_point_interpolations": ("vaelab.plots.latent", "plot_point_interpolations"),
    "plot_before_after": ("vaelab.plots.course", "plot_before_after"),
    "plot_class_samples": ("vaelab.plots.discrete", "plot_class_samples"),
    "plot_latent_classes_2d": ("vaelab.plots.discrete", "plot_latent_classes_2d"),
    "plot_class_style": ("vaelab.plots.conditional", "plot_class_style"),
    "plot_traversal_by_condition": ("vaelab.plots.conditional", "plot_traversal_by_condition"),
    "plot_codebook_usage": ("vaelab.plots.vq", "plot_codebook_usage"),
    "plot_code_map": ("vaelab.plots.vq", "plot_code_map"),
    "plot_prior_samples": ("vaelab.plots.vq", "plot_prior_samples"),
    "plot_conditional_density": ("vaelab.plots.conditional", "plot_conditional_density"),
    "plot_latent_grid_by_condition": ("vaelab.plots.conditional", "plot_latent_grid_by_condition"),
    "plot_latent_space": ("vaelab.plots.latent", "plot_latent_space"),
    "plot_posterior_contours": ("vaelab.plots.latent", "plot_posterior_contours"),
    "plot_latent_grid": ("vaelab.plots.latent", "plot_latent_grid"),
    "plot_aggregate_posterior": ("vaelab.plots.latent", "plot_aggregate_posterior"),
    "plot_image_reconstructions": ("vaelab.plots.images", "plot_reconstructions"),
    "plot_image_samples": ("vaelab.plots.images", "plot_image_samples"),
    "plot_traversal": ("vaelab.plots.images", "plot_traversal"),
    "plot_interpolations": ("vaelab.plots.images", "plot_interpolations"),
    "plot_latent_classes": ("vaelab.plots.images", "plot_latent_classes"),
    "plot_training_curves": ("vaelab.plots.curves", "plot_training_curves"),
    "plot_loss_terms": ("vaelab.plots.curves", "plot_loss_terms"),
    "plot_iwae_vs_k": ("vaelab.plots.course", "plot_iwae_vs_k"),
    "plot_true_posterior": ("vaelab.plots.course", "plot_true_posterior"),
    "plot_rate_split": ("vaelab.plots.course", "plot_rate_split"),
    "plot_kl_per_dim": ("vaelab.plots.course", "plot_kl_per_dim"),
    "plot_reparameterization": ("vaelab.plots.course", "plot_reparameterization"),
    "plot_latent_pca": ("vaelab.plots.course", "plot_latent_pca"),
    "plot_data_and_samples": ("vaelab.plots.course", "plot_data_and_samples"),
    "plot_label_samples": ("vaelab.plots.conditional", "plot_label_samples"),
    "plot_value_samples": ("vaelab.plots.conditional", "plot_value_samples"),
    "plot_latent_by_condition": ("vaelab.plots.conditional", "plot_latent_by_condition"),
    "plot_flow_posterior": ("vaelab.plots.flows", "plot_flow_posterior"),
    "plot_prior_mixture": ("vaelab.plots.priors", "plot_prior_mixture"),
    "plot_pseudo_inputs": ("vaelab.plots.priors", "plot_pseudo_inputs"),
    "plot_kl_per_layer": ("vaelab.plots.hierarchy", "plot_kl_per_layer"),
    "plot_layer_samples_images": ("vaelab.plots.hierarchy", "plot_layer_samples_images"),
    "plot_layer_samples_points": ("vaelab.plots.hierarchy", "plot_layer_samples_points"),
}
# Subpackages reachable as attributes after ``import vaelab`` alone (imported on first use).
_SUBMODULES = ("plots",)


def __getattr__(name: str) -> _typing.Any:
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")  # the import binds it as an attribute
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(_importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The public names (what tab completion offers), loaded or not, and ``__version__``."""
    return sorted([*__all__, "__version__"])


class _Package(_types.ModuleType):
    """The ``vaelab`` module's class: importing the submodule ``vaelab.evaluate`` binds it as an
    attribute of the package, which would hide the public function ``vaelab.evaluate``; the
    function keeps the name, as it did when this file imported it eagerly."""

    def __setattr__(self, name: str, value: _typing.Any) -> None:
        if name in _EXPORTS and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "DataConfig", "EvalConfig", "History", "ModelConfig", "PlotContext", "Run", "RunConfig", "TrainConfig",
    "build_model", "datasets", "evaluate", "evaluate_run", "fit", "load", "load_dataset", "register_family",
    "render", "save", "train_run", "write_comparison", "plot_aggregate_posterior", "plot_data_and_samples",
    "plot_density", "plot_flow_posterior", "plot_image_reconstructions", "plot_image_samples",
    "plot_interpolations", "plot_iwae_vs_k", "plot_kl_per_dim", "plot_kl_per_layer", "plot_label_samples",
    "plot_latent_by_condition", "plot_latent_classes", "plot_latent_grid", "plot_latent_params",
    "plot_latent_pca", "plot_latent_space", "plot_layer_samples_images", "plot_layer_samples_points",
    "plot_loss_terms", "plot_pairs", "plot_posterior_contours", "plot_prior_mixture", "plot_pseudo_inputs",
    "plot_rate_split", "plot_reconstructions", "plot_reparameterization", "plot_samples",
    "plot_training_curves", "plot_traversal", "plot_true_posterior", "plot_value_samples", "plot_z_vs_eps",
    "plot_point_interpolations", "plot_class_style", "plot_conditional_density", "plot_latent_grid_by_condition",
    "plot_before_after", "plot_class_samples", "plot_latent_classes_2d", "plot_traversal_by_condition",
    "plot_codebook_usage", "plot_code_map", "plot_prior_samples",
    "plots",
]

# A library never configures logging; this keeps Python's last-resort handler from printing
# our log records when the application has not set up logging itself.
_logging.getLogger("vaelab").addHandler(_logging.NullHandler())
