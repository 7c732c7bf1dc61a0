"""Shared fixtures: tiny configs and a trained tiny run, so end-to-end tests stay fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import tiny_config
from vaelab.config import RunConfig

# The test models are tiny: on a shared 2-core machine, torch's intra-op threads cost far
# more in synchronisation than they save (measured ~10x slower with 2 threads under load).
torch.set_num_threads(1)

# Tests read what the command line prints. Rich (the CLI's consoles, typer's error panels) wraps
# it at the width of the terminal, or of COLUMNS where that is set, and a console created while
# COLUMNS is set keeps that width: a phrase could be split by a line break whose place depends
# on the terminal, or on the length of pytest's temporary paths inside the line. So no console
# may take the terminal's width (typer reads TERMINAL_WIDTH once, when imported), and every test
# runs with one fixed width, wide enough that no line is wrapped (`wide_console`); the
# subprocesses a test starts inherit it. pytest's own report keeps the terminal's width.
CONSOLE_COLUMNS = "1000"
os.environ.pop("COLUMNS", None)
os.environ.pop("TERMINAL_WIDTH", None)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", CONSOLE_COLUMNS)


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run directory trained once per test session (read-only for tests)."""
    from vaelab.train import train_run

    out = tmp_path_factory.mktemp("runs") / "ring"
    train_run(tiny_config(train={"epochs": 5}), out)
    return out
