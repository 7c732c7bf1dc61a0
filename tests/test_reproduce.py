"""The report's "reproduce this run" command: running it writes the same config.json.

The command must start where `vaelab train` starts (library defaults, the default image preset
for image data, or --preset), have a flag or a TOML fallback for every config field, and the
flag table must follow the CLI's options (a new config field cannot silently go missing).
"""

from __future__ import annotations

import html
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from helpers import parsed_train_config
from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.config import RunConfig
from vaelab.report import write_report
from vaelab.reproduce import (
    DATA_ARGUMENT,
    REPRODUCE_FILE,
    TOML_ONLY,
    config_fields,
    reproduce_command,
    reproduce_toml,
    train_flags,
)

runner = CliRunner()
QUIET = ["--no-eval", "--no-report", "--device", "cpu"]


def train_options() -> set[str]:
    return {o for p in typer.main.get_command(app).commands["train"].params for o in p.opts}


def test_every_config_field_has_a_flag_or_a_toml_fallback():
    """Walks RunConfig: a field added without a `vaelab train` flag must be listed in TOML_ONLY."""
    flags = train_flags()
    options = train_options()
    for field in config_fields():
        if field in DATA_ARGUMENT:
            assert "--data" in options
        elif field in TOML_ONLY:
            continue
        else:
            assert flags[field] in options, (
                f"config field {'.'.join(field)} has no `vaelab train` flag {flags[field]}: add the flag, "
                "rename it in reproduce.FLAG_RENAMES, or list the field in reproduce.TOML_ONLY"
            )
    assert len(set(flags.values())) == len(flags), "two config fields map to one flag"
    assert set(TOML_ONLY) <= set(config_fields()) and "--condition" in flags.values()
    assert "--test-fraction" in flags.values()


def test_every_flag_round_trips_through_the_cli(monkeypatch, tmp_path):
    """Coherent configs that together change every flagged field parse back to themselves."""
    (tmp_path / "images").mkdir()
    # The user's own file exists when its run is reproduced (a --data path that names nothing is refused).
    (tmp_path / "points.csv").write_text("x1,x2,y,c\n0.0,1.0,0,0.5\n1.0,0.0,1,0.25\n")
    configs = [
        {"data": {"name": "moons", "n_train": 500, "n_test": 100, "seed": 3},
         "model": {"kind": "vae", "hidden": [64, 32], "activation": "relu", "latent_dim": 5, "scale": "softplus",
                   "likelihood": "gaussian", "recon_var": 0.05},
         "train": {"objective": "elbo", "beta": 0.5, "lr": 1e-3, "lr_schedule": "constant",
                   "steps": 90, "batch_size": 64, "seed": 4, "checkpoint_every": 3,
                   "nonfinite": "skip", "max_skips": 3, "grad_clip": 1.5},
         "eval": {"k": 50}},
        {"data": {"path": str(tmp_path / "points.csv"), "label_column": "y", "condition": "column:c",
                  "test_fraction": 0.3},
         "model": {"cond_embed": [8], "min_var": 1e-4}, "train": {"k": 8, "epochs": 7}},
        {"data": {"name": "mnist", "data_dir": str(tmp_path / "cache"), "image_split": "test-9k",
                  "binarize": "fixed", "limit_train": 100, "limit_test": 50},
         "model": {"net": "conv", "channels": [4, 8]}},
        {"data": {"path": str(tmp_path / "images"), "image_size": 16}, "model": {"kind": "ae"},
         "train": {"objective": "elbo"}},  # an autoencoder run as the CLI makes it: no IWAE objective
        {"train": {"objective": "elbo", "beta_schedule": "warmup", "warmup_epochs": 2, "free_bits": 0.25,
                   "free_bits_group": "all"}},
        {"train": {"beta_schedule": "warmup", "warmup_steps": 5}},
        {"train": {"beta_schedule": "cyclical", "cycles": 3, "cycle_ratio": 0.25, "compile": True}},
        {"data": {"name": "mnist", "data_dir": str(tmp_path / "cache"), "binarize": "dynamic"},
         "model": {"likelihood": "bernoulli", "output_bias": "data-mean"},
         "train": {"lr_schedule": "burda", "adam_betas": [0.99, 0.999], "adam_eps": 5e-6}},
    ]
    covered = set()
    for raw in configs:
        cfg = RunConfig.from_dict(raw)
        command, needs_toml = reproduce_command(cfg, tmp_path / "again")
        assert not needs_toml, command
        assert parsed_train_config(monkeypatch, command) == cfg, command
        default = RunConfig().model_dump()
        covered |= {(s, k) for s, values in cfg.model_dump().items() for k, v in values.items() if v != default[s][k]}
    missing = set(train_flags()) - covered
    assert not missing, f"give these flagged fields a value in this test: {sorted(missing)}"


def printed_command(run: Path) -> str:
    """The command the report prints under "Reproduce this run"."""
    write_report(run, names=["training_curves"], n_points=200)
    text = (run / "report.html").read_text()
    block = text.split('id="reproduce"', 1)[1]
    return html.unescape(re.search(r"<pre>(.*?)</pre>", block, re.S).group(1))


def rerun(command: str, out: Path) -> None:
    """Run the printed command as a user would, into ``out`` instead of the original folder."""
    args = shlex.split(command)
    assert args[:2] == ["vaelab", "train"]
    args[args.index("--out") + 1] = str(out)
    result = runner.invoke(app, args[1:] + QUIET)
    assert result.exit_code == 0, result.output


def train(args: list[str]) -> None:
    result = runner.invoke(app, ["train", *args, *QUIET])
    assert result.exit_code == 0, result.output


@pytest.fixture
def points_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    path = tmp_path / "points.csv"
    rows = "\n".join(f"{a:.5f},{b:.5f},{a + b:.5f}" for a, b in x)
    path.write_text("x1,x2,c\n" + rows + "\n")
    return path


@pytest.mark.parametrize(
    "case",
    ["image", "preset", "conditional", "toml", "image-toml"],
)
def test_running_the_printed_command_writes_the_same_config(case, tmp_path, points_csv):
    toml = tmp_path / "extra.toml"
    toml.write_text("[train]\ndiversity_samples = 64\nepochs = 1\n")
    args = {
        # digits are images: the CLI starts from the default image preset, so values equal to the
        # library defaults (lr 3e-3, batch 256, d = 2, tanh) must still be given
        "image": ["--data", "digits", "--limit-train", "64", "--limit-test", "32", "--epochs", "1",
                  "--lr", "0.003", "--batch-size", "256", "--latent-dim", "2", "--activation", "tanh"],
        "preset": ["--data", "digits", "--preset", "mnist-mlp-gaussian", "--limit-train", "64",
                   "--limit-test", "32", "--epochs", "1", "--latent-dim", "3", "--lr", "0.003"],
        "conditional": ["--data", str(points_csv), "--condition", "column:c", "--test-fraction", "0.25",
                        "--hidden", "8", "--epochs", "1"],
        # diversity_samples has no flag: the command reads RUN/reproduce.toml
        "toml": ["--data", "ring", "--config", str(toml), "--n-train", "100", "--hidden", "8"],
        # image data from a --config file start from the library defaults, not the image preset
        "image-toml": ["--data", "digits", "--config", str(toml), "--limit-train", "64", "--limit-test", "32",
                       "--hidden", "8", "--likelihood", "gaussian"],
    }[case]
    original = tmp_path / "original"
    train([*args, "--out", str(original)])
    command = printed_command(original)
    assert ("--config" in command) == case.endswith("toml"), command
    again = tmp_path / "again"
    rerun(command, again)
    assert (again / ckpt.CONFIG_FILE).read_text() == (original / ckpt.CONFIG_FILE).read_text()
    if case == "image":
        assert "--lr 0.003" in command and "--preset" not in command
    if case == "preset":
        assert "--preset mnist-mlp-gaussian" in command
    if case == "conditional":
        assert "--condition column:c" in command and "--test-fraction 0.25" in command
    if case.endswith("toml"):
        assert (original / REPRODUCE_FILE).is_file()


def test_a_config_no_flag_command_accepts_is_reproduced_through_toml(monkeypatch, tmp_path):
    """An API-made autoencoder on images keeps the library's default objective (IWAE); on the
    command line the image preset would need --objective iwae, which an autoencoder refuses."""
    (tmp_path / "images").mkdir()
    cfg = RunConfig.from_dict({"data": {"path": str(tmp_path / "images"), "image_size": 16},
                               "model": {"kind": "ae"}})
    out = tmp_path / "again"
    command, needs_toml = reproduce_command(cfg, out)
    assert needs_toml and "--preset" not in command, command
    out.mkdir()
    (out / "reproduce.toml").write_text(reproduce_toml(cfg))
    assert parsed_train_config(monkeypatch, command) == cfg
