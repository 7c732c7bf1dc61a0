"""vaelab: train, evaluate and explore variational autoencoders with PyTorch.

A notebook session::

    import vaelab
    cfg = vaelab.RunConfig()                          # defaults: a VAE on radial_gmm
    run = vaelab.train_run(cfg, "runs/demo")          # writes the run directory
    metrics = vaelab.evaluate_run(run)                # as `vaelab eval` does; writes metrics.json
    x = run.model.sample(1000)                        # (1000, 2) decoder means
    run = vaelab.load("runs/demo")                    # later: rebuilt from the folder alone
"""

from __future__ import annotations

import logging
import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vaelab.checkpoint import Run, load, save
    from vaelab.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
    from vaelab.data.registry import dataset_names as datasets
    from vaelab.data.registry import load_dataset
    from vaelab.evaluate import evaluate, evaluate_run
    from vaelab.history import History
    from vaelab.models import build_model
    from vaelab.train import fit, train_run

# The public API: name -> (module, attribute). Imported on first use (PEP 562), so that
# ``import vaelab`` and the command line's start-up do not pay for torch, pydantic and the
# model code before something needs them.
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
    "save": ("vaelab.checkpoint", "save"),
    "train_run": ("vaelab.train", "train_run"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """The ``vaelab`` module's class: importing the submodule ``vaelab.evaluate`` binds it as an
    attribute of the package, which would hide the public function ``vaelab.evaluate``; the
    function keeps the name, as it did when this file imported it eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "DataConfig", "EvalConfig", "History", "ModelConfig", "Run", "RunConfig", "TrainConfig",
    "build_model", "datasets", "evaluate", "evaluate_run", "fit", "load", "load_dataset", "save", "train_run",
]

# A library never configures logging; this keeps Python's last-resort handler from printing
# our log records when the application has not set up logging itself.
logging.getLogger("vaelab").addHandler(logging.NullHandler())
