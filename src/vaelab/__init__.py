"""vaelab: train, evaluate and explore variational autoencoders with PyTorch.

A notebook session::

    import vaelab
    cfg = vaelab.RunConfig()                          # defaults: a VAE on radial_gmm
    run = vaelab.train_run(cfg, "runs/demo")          # writes the run directory
    metrics = vaelab.evaluate_run(run)                # as `vaelab eval` does; writes metrics.json
    x = run.model.sample(1000)                        # (1000, 2) decoder means
    run = vaelab.load("runs/demo")                    # later: rebuilt from the folder alone
"""

import logging

from vaelab.checkpoint import Run, load, save
from vaelab.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from vaelab.data.registry import dataset_names as datasets
from vaelab.data.registry import load_dataset
from vaelab.evaluate import evaluate, evaluate_run
from vaelab.history import History
from vaelab.models import build_model
from vaelab.train import fit, train_run

__version__ = "0.1.0"

__all__ = [
    "DataConfig", "EvalConfig", "History", "ModelConfig", "Run", "RunConfig", "TrainConfig",
    "build_model", "datasets", "evaluate", "evaluate_run", "fit", "load", "load_dataset", "save", "train_run",
]

# A library never configures logging; this keeps Python's last-resort handler from printing
# our log records when the application has not set up logging itself.
logging.getLogger("vaelab").addHandler(logging.NullHandler())
