"""Small builders shared by tests (importable as `helpers`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from vaelab.config import RunConfig

TOY_2D = {"moons", "circles", "2gmm", "radial_gmm", "ring"}


def tiny_config(**sections: dict) -> RunConfig:
    """A config that trains in well under a second: 256 points, small nets, few epochs."""
    base = {
        "data": {"name": "ring", "n_train": 256, "n_test": 128},
        "model": {"hidden": [16, 16]},
        "train": {"epochs": 3, "batch_size": 64, "checkpoint_every": 1, "diversity_samples": 64},
        "eval": {"k": 16},
    }
    for key, values in sections.items():
        base.setdefault(key, {}).update(values)
    given = sections.get("data", {})
    if "path" in given:
        base["data"].pop("name", None)  # a file replaces the dataset name (both would be refused)
    if "path" in given or base["data"].get("name") not in TOY_2D:
        for key in ("n_train", "n_test"):  # only toy distributions draw a number of points
            if key not in given:
                base["data"].pop(key, None)
    if base["model"].get("kind") == "ae":
        base["eval"].pop("k")  # an autoencoder has no bound to estimate: eval.k would be refused
    if base["model"].get("net") == "conv":
        base["model"].pop("hidden")  # conv nets have no hidden MLP layers: refused when given
    return RunConfig.from_dict(base)


def perturbed_ladder(layers: tuple[int, ...] = (2, 1, 2), scale: str = "logvar", ladder: dict | None = None,
                     **model: object):  # noqa: ANN201 (a LadderVAE; vaelab.models is imported lazily)
    """A 2-D ladder VAE with hidden [8] whose weights are moved off their initialisation (seeded), so
    that every layer and net matters to the densities a test checks by hand."""
    import torch

    from vaelab.models import LadderVAE, build_model

    cfg = tiny_config(model={"kind": "ladder", "latent_dim": sum(layers), "scale": scale,
                             "ladder": {"layers": list(layers), "hidden": [8], **(ladder or {})}, **model})
    built = build_model(cfg.model, 2, seed=0)
    with torch.no_grad():
        for p in built.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    assert isinstance(built, LadderVAE)
    return built


def points_2d(n: int = 6):  # noqa: ANN201 (a tensor; torch is imported lazily)
    """n seeded standard-normal 2-D points (n, 2): the inputs the ladder tests score by hand."""
    import torch

    return torch.randn(n, 2, generator=torch.Generator().manual_seed(1))


def normal_log_prob(z, loc, var):  # noqa: ANN001, ANN201 (tensors)
    """log N(z; loc, diag(var)) summed over the last dimension, by torch.distributions.Normal."""
    from torch.distributions import Normal

    return Normal(loc, var.sqrt()).log_prob(z).sum(-1)


def variance_from_scale(h, scale: str):  # noqa: ANN001, ANN201 (tensors; torch is imported lazily)
    """σ² from a net's scale output ``h`` as ``model.scale`` reads it, written out for the tests."""
    import torch

    return {"logvar": h.exp(), "softplus": torch.nn.functional.softplus(h).square(), "exp": (2 * h).exp()}[scale]


class _Parsed(Exception):
    """Raised in place of training once `vaelab train` has built its config."""


def parsed_train_config(monkeypatch, command: str) -> RunConfig:
    """The config `vaelab train` builds from ``command`` (a `vaelab train ...` line; training itself is not run)."""
    import shlex
    import sys

    from typer.testing import CliRunner

    import vaelab.train  # noqa: F401 (the package's `train` attribute is a function)
    from vaelab.cli import app

    captured = {}

    def fake_train_run(config, out, **kw):
        captured["config"] = config
        raise _Parsed

    monkeypatch.setattr(sys.modules["vaelab.train"], "train_run", fake_train_run)
    monkeypatch.setattr(sys.modules["vaelab.cli.commands"], "_fetch_with_progress", lambda data_cfg: None)
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert isinstance(result.exception, _Parsed), result.output
    return captured["config"]


def assert_stacked_equals_solo(configs: list[RunConfig], columns: tuple[str, ...] = ("loss", "kl")) -> list:
    """Train ``configs`` (one model family, members differing in per-member settings) as one stack
    with ``fit_stack`` and each alone with ``fit`` from the same initial weights, on the configs'
    (shared) training data; assert every member ends with its solo run's weights (1e-5) and
    history ``columns`` (1e-4). Returns the stack's MemberResults."""
    import copy

    import torch

    from vaelab.data.registry import load_dataset
    from vaelab.models import build_model
    from vaelab.train import fit, fit_stack

    x = load_dataset(configs[0].data, "train").x
    stacked = [build_model(c.model, x.shape[1], seed=c.train.seed) for c in configs]
    solo = [copy.deepcopy(m) for m in stacked]
    results = fit_stack(stacked, x, [c.train for c in configs])
    for model, alone, cfg, result in zip(stacked, solo, configs, results, strict=True):
        history = fit(alone, x, cfg.train)
        assert result.error is None and result.state.complete
        torch.testing.assert_close(model.state_dict(), alone.state_dict(), rtol=1e-5, atol=1e-5)
        for column in columns:
            torch.testing.assert_close(result.history.column(column), history.column(column), rtol=1e-4, atol=1e-4)
    return results


def assert_interrupted_run_resumes_exactly(cfg: RunConfig, tmp_path, stop_at: int, columns: tuple[str, ...]) -> None:
    """``train_run`` of ``cfg`` stopped after step ``stop_at`` and resumed ends with the weights of an
    uninterrupted run bit for bit, and the same history ``columns``."""
    import pytest
    import torch

    from vaelab.train import TrainingInterrupted, train_run

    ref = train_run(cfg, tmp_path / "ref")
    steps = {"n": 0}
    with pytest.raises(TrainingInterrupted):
        train_run(cfg, tmp_path / "r", should_stop=lambda: steps["n"] >= stop_at,
                  on_step=lambda info: steps.__setitem__("n", info.step))
    run = train_run(cfg, tmp_path / "r", resume=True)
    ref_w, run_w = ref.model.state_dict(), run.model.state_dict()
    assert all(torch.equal(ref_w[k], run_w[k]) for k in ref_w)
    for column in columns:
        assert run.history.column(column) == ref.history.column(column), column


def invoke(*args: object):  # noqa: ANN201 (typer's Result)
    """Run ``vaelab ARGS`` in this process; assert it printed no traceback and raised nothing but
    SystemExit (a clear error exits, it never crashes); the result."""
    from typer.testing import CliRunner

    from vaelab.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def cli_ok(*args: object):  # noqa: ANN201 (typer's Result)
    """Run ``vaelab ARGS`` in this process; assert it exited 0 without a traceback; the result."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def serving(app):  # noqa: ANN001, ANN201 (a Flask app; a context manager yielding the base URL)
    """Serve the Flask ``app`` from a thread on a free port of 127.0.0.1: ``with serving(app) as
    base: ...`` (base: ``http://127.0.0.1:PORT``); the server stops on leaving the block."""
    import contextlib
    import threading

    from werkzeug.serving import make_server

    @contextlib.contextmanager
    def running():  # noqa: ANN202
        httpd = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_port}"
        finally:
            httpd.shutdown()
            thread.join(timeout=10)

    return running()

