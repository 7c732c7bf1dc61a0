"""The names of a run directory's files and the errors about run directories."""

from __future__ import annotations

from vaelab.errors import InputError

CONFIG_FILE = "config.json"


WEIGHTS_FILE = "model.safetensors"


STATE_FILE = "state.pt"


HISTORY_FILE = "history.csv"


METRICS_FILE = "metrics.json"


FAILURE_FILE = "failure.json"


CONDITION_FILE = "condition.json"


DATA_FILE = "data.json"  # the fingerprint of the training data (vaelab.train.run.data_fingerprint)


MANIFEST_FILE = "checkpoint.json"


FIGURES_DIR = "figures"


REPORT_FILE = "report.html"


REPRODUCE_FILE = "reproduce.toml"


MARKER_FILE = ".vaelab-run"


LOCK_FILE = ".vaelab-lock"


STAGING_DIR = ".checkpoint.tmp"


COMMITTED_DIR = ".checkpoint.new"


MANIFEST_FORMAT = "vaelab-checkpoint-1"


MARKER_FORMAT = "vaelab-run-1"


# The files that make up one checkpoint (one unit, see the module docstring).
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, HISTORY_FILE, CONDITION_FILE, DATA_FILE)


# Everything a run writes into its directory: what --overwrite clears, so nothing from the
# replaced run (a stale condition spec, old figures or report) survives beside the new one.
RUN_ARTIFACTS = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, HISTORY_FILE, METRICS_FILE, FAILURE_FILE, CONDITION_FILE,
                 DATA_FILE, MANIFEST_FILE, FIGURES_DIR, REPORT_FILE, REPRODUCE_FILE, STAGING_DIR, COMMITTED_DIR)


# No command may write over these unless writing them is its job (check_output_path).
OWNED_NAMES = (*RUN_ARTIFACTS, MARKER_FILE, LOCK_FILE)


class RunDirError(InputError):
    """A folder that is not (or not yet) a vaelab run directory, or one that would be overwritten."""


class IntegrityError(RunDirError):
    """A run file that does not match the checksum its checkpoint recorded, or holds non-finite weights."""


class RunLockedError(RunDirError):
    """Another process is writing the run directory (it holds the run's lock)."""
