"""Shared fixtures: tiny configs and a trained tiny run, so end-to-end tests stay fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_config
from vaelab.config import RunConfig

# The test models are tiny: on a shared 2-core machine, torch's intra-op threads cost far
# more in synchronisation than they save (measured ~10x slower with 2 threads under load).
torch.set_num_threads(1)


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
