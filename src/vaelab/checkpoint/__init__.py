"""Run directories: safetensors weights + JSON config + training state, one checkpoint at a time.

A run directory holds everything needed to reload and explain a run::

    config.json        RunConfig (data / model / train / eval)
    model.safetensors  weights; header metadata records x_dim and cond_dim, and for a family from
                       outside vaelab where it comes from (``family``: module:Class; loading the run
                       imports that module, see vaelab.plugins; absent: a built-in family)
    state.pt           optimizer, step, epoch, RNG state (tensors and numbers only)
    history.csv        one row per epoch
    condition.json     conditional runs only: the condition spec (label list / training range)
    data.json          the fingerprint of the training data (source, shape, sha256 of the points):
                       a resumed run refuses data that changed since it began
    checkpoint.json    the manifest of the current checkpoint: its step and the sha256 of each
                       file above (written last: it is what makes a checkpoint count)
    metrics.json       written by evaluation, tagged with the checkpoint it evaluated
    failure.json       only when training stopped on a non-finite loss
    figures/           written by ``vaelab plot`` / the report (vaelab.plots)
    report.html        the run report, and reproduce.toml beside it when needed (vaelab.report)
    .vaelab-run        ownership marker: this folder was made by vaelab (--overwrite needs it)
    .vaelab-lock       the lock a training holds on the folder (flock; the file is removed when
                       training ends, and a killed training's is taken over by the next)

**One checkpoint is one unit.** The six checkpoint files (config, weights, state, history,
condition, data fingerprint) change together or not at all, by a journal:

1. every new file and then the new manifest are written and fsynced into ``.checkpoint.tmp/``;
2. that folder is renamed to ``.checkpoint.new/``: this one atomic rename is the commit;
3. each file is moved from ``.checkpoint.new/`` over its real name (``os.replace``), the
   manifest last, and the empty folder is removed ("roll forward").

A crash before step 2 leaves the old checkpoint untouched (``.checkpoint.tmp/`` is ignored and
removed by the next writer); a crash during step 3 leaves a committed checkpoint split between
``.checkpoint.new/`` and the run folder. Readers therefore look up each file first in
``.checkpoint.new/`` and then in the run folder: at every instant that gives all files of step
N or all of step N-1, never a mix. The next writer (a resumed training) finishes the roll
forward under the lock. Readers never write, so a read-only run still loads; a reader that
overlaps a commit sees the manifest change under it and reads again.

The manifest's checksums also make the folder tamper-evident: a weights file or config.json
changed after training is named on load instead of silently giving a different model.
Other files (metrics, failure record, figures) are auxiliary: a broken one never blocks
loading the model, and only what needs it reports the broken file.

Every file is created with mode 0666 minus the user's umask (like any other program's output)
and errors name the file the user asked for, never a temporary one.

The package: ``layout`` (file names, errors), ``atomic`` (atomic files), ``journal``
(checkpoints as one unit, recovery), ``lock`` (the training lock), ``folder`` (ownership,
claiming a folder), ``records`` (loading a run and its records)."""

from vaelab.checkpoint.atomic import (  # noqa: F401
    _TMP_SUFFIX,
    WriteError,
    _fsync_dir,
    _sha256,
    _why,
    _write_new,
    atomic_create_text,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    check_target,
    file_kind,
    write_json,
)
from vaelab.checkpoint.folder import (  # noqa: F401
    check_output_path,
    check_run_dir,
    claim,
    is_owned,
    is_run_dir,
)
from vaelab.checkpoint.journal import (  # noqa: F401
    TrainState,
    _canonical_safetensors,
    _commit,
    _parse_manifest,
    _read_current,
    _read_opt,
    _roll_forward,
    _Snapshot,
    _snapshot,
    _state_bytes,
    recover,
    weights_bytes,
    write_checkpoint,
    write_data_fingerprint,
    write_history,
)
from vaelab.checkpoint.layout import (  # noqa: F401
    CHECKPOINT_FILES,
    COMMITTED_DIR,
    CONDITION_FILE,
    CONFIG_FILE,
    DATA_FILE,
    FAILURE_FILE,
    FIGURES_DIR,
    HISTORY_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MARKER_FILE,
    MARKER_FORMAT,
    METRICS_FILE,
    OWNED_NAMES,
    REPORT_FILE,
    REPRODUCE_FILE,
    RUN_ARTIFACTS,
    STAGING_DIR,
    STATE_FILE,
    WEIGHTS_FILE,
    IntegrityError,
    RunDirError,
    RunLockedError,
)
from vaelab.checkpoint.lock import (  # noqa: F401
    RunLock,
    _lock_fd,
    _lock_holder,
    is_locked,
)
from vaelab.checkpoint.records import (  # noqa: F401
    Run,
    _check_finite,
    _load_run,
    _meta_int,
    _metrics_tag,
    _parse_condition,
    _parse_history,
    _read_json_record,
    _read_weights,
    _require_run,
    _state_error_reason,
    discard_stale_metrics,
    load,
    load_condition,
    load_data_fingerprint,
    load_history,
    load_model,
    load_state,
    save,
    write_metrics,
)
from vaelab.history import History  # noqa: F401 (a run's record of its epochs, read by records)
