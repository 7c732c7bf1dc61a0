"""Start-up laziness (issue 12, target 5): the command line's help and `vaelab datasets`, and
`import vaelab`, load none of the heavy libraries; the public API is the same, loaded on use.

Each check runs in a fresh interpreter, since this test session has long imported torch. These
are correctness tests of what gets imported, not timings (benchmarks/bench_startup.py times it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# (pydantic is not listed: typer itself imports it to parse options.)
HEAVY = ("torch", "matplotlib", "sklearn", "flask", "numpy", "scipy")


def _modules_after(code: str) -> dict[str, object]:
    """Run ``code`` in a new interpreter; it leaves a JSON-able ``result``; returns it with the
    heavy modules then imported (``heavy``)."""
    script = (code + "\nimport json, sys\n"
              f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
              "print(json.dumps({'result': result, 'heavy': heavy}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


_CLI = """
from typer.testing import CliRunner
from vaelab.cli import app
out = CliRunner().invoke(app, {args!r})
result = [out.exit_code, out.output]
"""


@pytest.mark.parametrize("args", [["--help"], ["datasets"], ["train", "--help"], ["eval", "--help"],
                                  ["sample", "--help"]])
def test_cli_help_and_datasets_import_no_heavy_library(args: list[str]) -> None:
    got = _modules_after(_CLI.format(args=args))
    exit_code, output = got["result"]
    assert exit_code == 0, output
    assert got["heavy"] == [], f"`vaelab {' '.join(args)}` imported {got['heavy']}"
    if args == ["datasets"]:  # the listing itself is complete without them
        from vaelab.data.registry import DATASETS

        for name, spec in DATASETS.items():
            assert f"{name}" in output and spec.description in output


def test_import_vaelab_is_lazy_and_public_api_unchanged() -> None:
    got = _modules_after("import vaelab\nresult = [sorted(vaelab.__all__), sorted(dir(vaelab))]")
    assert got["heavy"] == []
    all_names, listed = got["result"]
    assert set(all_names) >= {  # the API of 0.1 is all still there (tests/test_exports.py: the rest)
        "DataConfig", "EvalConfig", "History", "ModelConfig", "Run", "RunConfig", "TrainConfig",
        "build_model", "datasets", "evaluate", "evaluate_run", "fit", "load", "load_dataset", "save",
        "train_run"}
    assert set(all_names) <= set(listed)


def test_public_names_resolve_to_the_library_objects() -> None:
    import vaelab
    from vaelab import RunConfig
    from vaelab.checkpoint import Run, load, save
    from vaelab.data.registry import dataset_names, load_dataset
    from vaelab.evaluate import evaluate, evaluate_run
    from vaelab.history import History
    from vaelab.models import build_model
    from vaelab.train import fit, train_run

    assert RunConfig is vaelab.config.RunConfig
    expected = {"Run": Run, "load": load, "save": save, "datasets": dataset_names, "load_dataset": load_dataset,
                "evaluate": evaluate, "evaluate_run": evaluate_run, "History": History,
                "build_model": build_model, "fit": fit, "train_run": train_run}
    for name, obj in expected.items():
        assert getattr(vaelab, name) is obj, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vaelab.nope  # noqa: B018


def test_evaluate_stays_the_function_after_its_module_is_imported() -> None:
    # Importing the submodule vaelab.evaluate must not hide the function of the same name.
    got = _modules_after("import vaelab.evaluate\nimport vaelab\nresult = callable(vaelab.evaluate) and "
                         "vaelab.evaluate.__name__ == 'evaluate' and not hasattr(vaelab.evaluate, 'evaluate_run')")
    assert got["result"] is True


def test_a_toy_run_never_imports_sympy() -> None:
    """torch.broadcast_shapes (MultivariateNormal's constructor, among others) imports sympy on its
    first call: ~1 s at the start of a command. Loading every exact-density toy set, its exact
    density, a model's held-out evaluation (Gaussian and Bernoulli) and a conditional model's forward pass must not pay
    for it (training does, through torch.optim's import of torch._dynamo)."""
    code = """
import torch
from vaelab.config import DataConfig, ModelConfig
from vaelab.data.registry import load_dataset
from vaelab.models import build_model
from vaelab.evaluate import evaluate
for name in ("2gmm", "radial_gmm", "ring", "spiral", "pinwheel", "banana"):
    ds = load_dataset(DataConfig(name=name), "train")
    ds.log_prob(ds.x[:10]); ds.log_prob_given_label(ds.x[:10], ds.labels[:10])
evaluate(build_model(ModelConfig(), 2, seed=0), ds.x[:50], k=8, seed=0, true_log_prob=ds.log_prob(ds.x[:50]))
cond = build_model(ModelConfig(), 2, cond_dim=3, seed=0)
cond.embed(torch.randn(4, 2), torch.randn(1, 3))
bern = build_model(ModelConfig(likelihood="bernoulli", activation="relu"), 6, seed=0)
evaluate(bern, (torch.rand(20, 6) < 0.5).float(), k=8, seed=0)  # the no-grad Bernoulli log_prob
import sys
result = "sympy" in sys.modules
"""
    assert _modules_after(code)["result"] is False
