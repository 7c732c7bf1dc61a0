"""The 2-D defaults' screen (benchmarks/bench_toy2d.py --candidates) is reproducible as documented.

The benchmark trains for minutes per candidate, so a candidate whose overrides are not a valid
config would fail only after the others have run; these tests check every candidate up front,
and that ``default`` is exactly the library defaults it is compared against.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vaelab.config import RunConfig

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_toy2d.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_toy2d", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_candidate_is_the_library_defaults():
    bench = _bench()
    assert RunConfig.from_dict(bench.CANDIDATES["default"]) == RunConfig()


def test_every_candidate_is_a_valid_config_and_no_two_named_ones_are_the_same_run():
    named = {name: RunConfig.from_dict(overrides) for name, overrides in _bench().CANDIDATES.items()
             if name != "default"}
    for name, cfg in named.items():
        others = [other for other, c in named.items() if other != name and c == cfg]
        assert not others, f"{name} is the same run as {others}"


def test_every_exact_density_data_set_is_built_in_and_has_a_density():
    from vaelab.data.registry import load_dataset

    for name in _bench().EXACT_2D:
        ds = load_dataset(RunConfig.from_dict({"data": {"name": name, "n_test": 8}}).data, "test")
        assert ds.log_prob is not None
