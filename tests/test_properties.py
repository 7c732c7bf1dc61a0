"""Property-based tests (hypothesis) over config values and data-file contents.

Whatever a user writes in a TOML file or a data file, `vaelab train` either trains a run that
loads, or stops with exit 2 and a one-line message (the project's own error types) and
leaves no run directory behind: never a traceback, never a partial or corrupted run.
The number of cases tried is printed (run with -s) and checked to be what was asked for.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.config import SECTIONS, DataConfig, EvalConfig, ModelConfig, TrainConfig

runner = CliRunner()
SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
TRIED: dict[str, int] = {"config": 0, "data file": 0, "trained": 0, "refused": 0}
N_CONFIG, N_DATA = 120, 120

# Small starting values, so a config the generator leaves valid trains in a fraction of a second.
BASE_TOML = {
    "data": {"name": "ring", "n_train": 64, "n_test": 32},
    "model": {"hidden": [4]},
    "train": {"steps": 2, "batch_size": 32, "diversity_samples": 8},
}
# Fields that set the amount of work: only small or invalid values (huge ones are checked by
# the size tests), so a valid draw never trains for long.
BUDGET = {"data.n_train", "data.n_test", "train.epochs", "train.steps", "train.batch_size",
          "train.diversity_samples", "train.k", "eval.k", "data.limit_train", "data.limit_test",
          "model.latent_dim", "train.checkpoint_every"}
EDGE = [-1, 0, 1, 2, True, False, "2", 2.5, math.nan, math.inf, -math.inf, 1e-300, "", "moons", "label",
        "column:a", [], [0], [3, 3], 2**64]
LARGE = [10**12, 2**63 - 1, -(2**63), 1e39]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
                   for name, values in tables.items())


@st.composite
def config_tables(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    fields = [f"{s}.{f}" for s in SECTIONS for f in SECTION_CLASSES[s].model_fields]
    fields += ["model.lambda_rec", "train.bogus"]  # an alias and an unknown key
    chosen = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=4, unique=True))
    tables = {k: dict(v) for k, v in BASE_TOML.items()}
    for dotted in chosen:
        section, field = dotted.split(".")
        pool = EDGE if dotted in BUDGET else EDGE + LARGE
        if field in ("name", "likelihood", "objective", "net", "kind", "scale", "activation", "binarize",
                     "lr_schedule", "image_split", "condition"):
            pool = pool + ["mnist", "iwae", "elbo", "conv", "ae", "softplus", "bernoulli", "gaussian", "fixed",
                           "radius", "test-9k", "cosine"]
        tables.setdefault(section, {})[field] = draw(st.sampled_from(pool))
    return tables


def _check_outcome(result: Any, out: Path) -> None:
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    if result.exit_code == 2:
        assert "error:" in result.output
        assert not out.exists() or not any(out.iterdir()), f"a refused run left {sorted(out.iterdir())}"
        TRIED["refused"] += 1
    else:
        ckpt.load(out)  # a complete run: it loads
        TRIED["trained"] += 1


@pytest.mark.slow
@settings(max_examples=N_CONFIG, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tables=config_tables())
def test_any_toml_config_trains_or_is_refused_cleanly(tables):
    TRIED["config"] += 1
    tmp = Path(tempfile.mkdtemp(prefix="vaelab-prop-"))
    try:
        toml = tmp / "c.toml"
        toml.write_text(_toml(tables))
        out = tmp / "run"
        result = runner.invoke(app, ["train", "--config", str(toml), "--out", str(out), "--device", "cpu",
                                     "--no-eval", "--no-report"])
        _check_outcome(result, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CELLS = st.sampled_from(["1", "-2.5", "0", "nan", "inf", "1e39", "-1e39", "abc", "", " 3 ", "1e-320", "0x10",
                         "1,5", "true", "7"])


@st.composite
def data_files(draw: st.DrawFn) -> tuple[str, bytes | np.ndarray]:
    kind = draw(st.sampled_from(["npy", "csv", "npz", "raw"]))
    if kind == "csv":
        rows = draw(st.lists(st.lists(CELLS, min_size=1, max_size=4), min_size=0, max_size=30))
        header = draw(st.sampled_from(["", "a,b\n", "a,b,c\n", "x\n"]))
        return "csv", (header + "\n".join(",".join(r) for r in rows)).encode()
    if kind == "raw":
        return draw(st.sampled_from(["npy", "npz", "csv"])), draw(st.binary(max_size=200))
    dtype = draw(st.sampled_from(["float64", "float32", "float16", "int64", "int8", "bool", "complex128", "U3"]))
    shape = draw(st.sampled_from([(0,), (5,), (0, 2), (30, 0), (1, 2), (3, 2), (30, 2), (30, 3), (20, 2, 2)]))
    values = draw(st.sampled_from([0.0, 1.0, -3.0, 1e39, math.nan, math.inf, 1e30, 65504.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = rng.normal(size=shape)
    if draw(st.booleans()) and arr.size:
        arr.flat[draw(st.integers(0, arr.size - 1))] = values
    with np.errstate(all="ignore"):
        arr = arr.astype(dtype) if dtype != "U3" else arr.astype(str).astype("U3")
    return kind, arr


@pytest.mark.slow
@settings(max_examples=N_DATA, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=data_files())
def test_any_data_file_trains_or_is_refused_cleanly(spec):
    TRIED["data file"] += 1
    kind, content = spec
    tmp = Path(tempfile.mkdtemp(prefix="vaelab-prop-"))
    try:
        path = tmp / f"points.{kind}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif kind == "npy":
            np.save(path, content)
        else:
            np.savez(path, x=content)
        out = tmp / "run"
        result = runner.invoke(app, ["train", "--data", str(path), "--out", str(out), "--device", "cpu",
                                     "--hidden", "4", "--steps", "2", "--no-eval", "--no-report"])
        _check_outcome(result, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_report_the_number_of_cases_tried():
    """Runs after the two properties (file order): each tried as many cases as asked."""
    print(f"\nproperty cases tried: {TRIED} (of {N_CONFIG} configs and {N_DATA} data files asked)")
    if TRIED["config"] and TRIED["data file"]:
        assert TRIED["config"] >= N_CONFIG and TRIED["data file"] >= N_DATA
