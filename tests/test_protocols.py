"""Named evaluation protocols (vaelab.protocols; `vaelab eval --protocol NAME`): the registry, the
settings a protocol applies, the runs it refuses, and the protocol recorded beside the numbers in
metrics.json and the report. Runs train on the real MNIST test file (../shared/data/mnist, the
test-9k split) and are skipped where it is absent."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.evaluate import EvaluationError, evaluate_run
from vaelab.protocols import PROTOCOLS, Protocol, ProtocolError, get_protocol
from vaelab.report import metrics_table

SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[2:4]
               if (p / "shared" / "data" / "mnist").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "data")
needs_mnist = pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason="the MNIST test split is not in ../shared/data/mnist")
runner = CliRunner()
SMALL = "mnist-test9k-dynamic-k1000"
# A protocol as small as a test allows: the test-9k split's first 200 test images, k = 16.
TINY = dataclasses.replace(PROTOCOLS[SMALL], name="tiny-test9k-k16", description="tests only", n_test=200, k=16)


def train(out: Path, *extra: str, data_dir: Path = SHARED) -> Path:
    """A tiny MNIST run on the test-9k split (a few seconds on a CPU)."""
    result = runner.invoke(app, ["train", "--data", "mnist", "--data-dir", str(data_dir), "--image-split", "test-9k",
                                 "--hidden", "16", "--latent-dim", "2", "--steps", "3", "--limit-train", "128",
                                 "--limit-test", "200", "--eval-k", "2", "--device", "cpu", "--no-report",
                                 "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def bernoulli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("protocols") / "run", "--likelihood", "bernoulli")


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Protocol:
    monkeypatch.setitem(PROTOCOLS, TINY.name, TINY)
    return TINY


def test_every_protocol_is_stated_in_full() -> None:
    for name, p in PROTOCOLS.items():
        assert p.name == name and p.k > 0 and p.n_test > 0 and p.description and p.source
        record = p.record()
        assert record["name"] == name and record["settings"]["k"] == p.k and record["settings"]["n_test"] == p.n_test
        json.dumps(record)  # metrics.json holds it
    iwae = PROTOCOLS["iwae-mnist-k5000"]
    assert (iwae.k, iwae.n_test, iwae.image_split, iwae.likelihood) == (5000, 10_000, "official", "bernoulli")
    assert "Burda" in iwae.source and "vaelab's own" in PROTOCOLS[SMALL].source
    with pytest.raises(dataclasses.FrozenInstanceError):
        iwae.k = 5  # type: ignore[misc]


def test_an_unknown_protocol_lists_the_valid_ones() -> None:
    with pytest.raises(ProtocolError, match="unknown protocol 'iwae'") as err:
        get_protocol("iwae")
    assert all(name in str(err.value) for name in PROTOCOLS)
    result = runner.invoke(app, ["eval", "no-such-run", "--protocol", "iwae", "--device", "cpu"])
    assert result.exit_code != 0 and "iwae-mnist-k5000" in result.output and SMALL in result.output


@pytest.mark.parametrize("flags", [["--k", "5"], ["--seed", "3"], ["--n-test", "10"], ["--quality-samples", "100"]])
def test_options_a_protocol_fixes_are_refused(flags: list[str]) -> None:
    # Refused before the run is loaded: the folder need not exist.
    result = runner.invoke(app, ["eval", "no-such-run", "--protocol", SMALL, *flags, "--device", "cpu"])
    assert result.exit_code != 0
    assert f"drop {flags[0]}" in result.output and "k = 1000" in result.output


@needs_mnist
def test_the_registered_protocol_writes_itself_beside_the_numbers(bernoulli_run: Path) -> None:
    result = runner.invoke(app, ["eval", str(bernoulli_run), "--protocol", SMALL, "--save", "--device", "cpu",
                                 "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    metrics = json.loads((bernoulli_run / "metrics.json").read_text())
    # The protocol's test images (all 1,000 of test-9k's, not the run's --limit-test 200) and its k.
    assert metrics["n"] == 1000 and metrics["iwae_k"] == 1000 and metrics["eval_seed"] == 0
    assert metrics["protocol"] == PROTOCOLS[SMALL].record() and printed["protocol"]["name"] == SMALL
    assert metrics["iwae_nll"] == printed["iwae_nll"]
    table = metrics_table(metrics)
    assert "evaluation protocol" in table and SMALL in table and "vaelab&#x27;s own" in table


@needs_mnist
def test_protocol_numbers_equal_eval_with_the_same_settings(bernoulli_run: Path, tiny: Protocol) -> None:
    by_flags = runner.invoke(app, ["eval", str(bernoulli_run), "--k", "16", "--seed", "0", "--no-quality",
                                   "--device", "cpu", "--json"])
    assert by_flags.exit_code == 0, by_flags.output
    flags = json.loads(by_flags.output.strip().splitlines()[-1])
    before = (bernoulli_run / "metrics.json").read_text()
    by_name = runner.invoke(app, ["eval", str(bernoulli_run), "--protocol", tiny.name, "--device", "cpu", "--json"])
    assert by_name.exit_code == 0, by_name.output
    named = json.loads(by_name.output.strip().splitlines()[-1])
    assert named.pop("protocol")["settings"]["k"] == 16
    assert "sample_quality" not in named and "sample_quality" not in flags
    assert named == flags  # every number, bit for bit
    # k = 16 is not the run's own (--eval-k 2): metrics.json is kept unless --save.
    assert (bernoulli_run / "metrics.json").read_text() == before
    assert "k = 16 (the run's: 2)" in by_name.output.replace("\n", "")
    # The library gives the same numbers and can be told to write.
    lib = evaluate_run(bernoulli_run, protocol=tiny, device="cpu", write=False)
    assert lib["iwae_nll"] == flags["iwae_nll"] and lib["protocol"]["name"] == tiny.name
    with pytest.raises(ProtocolError, match="drop k"):
        evaluate_run(bernoulli_run, protocol=tiny, k=16, device="cpu")


@needs_mnist
def test_runs_that_cannot_follow_the_protocol_are_refused(bernoulli_run: Path, tmp_path: Path) -> None:
    # Another split: the IWAE paper's protocol needs the official files' split.
    result = runner.invoke(app, ["eval", str(bernoulli_run), "--protocol", "iwae-mnist-k5000", "--device", "cpu"])
    assert result.exit_code != 0 and "--image-split official" in result.output.replace("\n", "")
    # A Gaussian likelihood scores grey levels, not binary pixels.
    gauss = train(tmp_path / "gauss", "--likelihood", "gaussian")
    with pytest.raises(EvaluationError, match="--likelihood bernoulli"):
        evaluate_run(gauss, protocol=SMALL, device="cpu")
    # Fixed instead of dynamic training binarization.
    fixed = train(tmp_path / "fixed", "--likelihood", "bernoulli", "--binarize", "fixed")
    with pytest.raises(EvaluationError, match="--binarize dynamic"):
        evaluate_run(fixed, protocol=SMALL, device="cpu")
    # Another dataset.
    toy = tmp_path / "toy"
    result = runner.invoke(app, ["train", "--steps", "2", "--device", "cpu", "--no-report", "--out", str(toy)])
    assert result.exit_code == 0, result.output
    with pytest.raises(EvaluationError, match="radial_gmm.*--data mnist"):
        evaluate_run(toy, protocol=SMALL, device="cpu")
    assert not (toy / "metrics.json").read_text().count("protocol")


@needs_mnist
def test_missing_test_files_are_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(SHARED / "mnist", data / "mnist")
    run = train(tmp_path / "run", "--likelihood", "bernoulli", data_dir=data)
    (data / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    result = runner.invoke(app, ["eval", str(run), "--protocol", SMALL, "--device", "cpu"])
    assert result.exit_code != 0
    text = result.output.replace("\n", "")
    assert "t10k-images-idx3-ubyte.gz" in text and "vaelab datasets" in text and "never downloads" in text
