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
