"""Bad inputs of the audit (../shared/audits/bad-inputs-0.1.0.md) in train options and data files:
a clear error naming the option or file and the fix, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import invoke
from vaelab.conditions import Condition
from vaelab.config import ModelConfig
from vaelab.models import build_model

FAST = ["--epochs", "1", "--n-train", "200", "--n-test", "100", "--hidden", "8", "--eval-k", "4", "--no-report",
        "--device", "cpu"]
FILE_FAST = ["--epochs", "1", "--hidden", "8", "--eval-k", "4", "--no-report", "--device", "cpu"]
BIG = str(10**9)
HUGE_SEED = str(2**80)


def refused(result, *needles):
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in text, (needle, result.output)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("inputs") / "run"
    assert invoke("train", *FAST, "--out", out).exit_code == 0
    return out


@pytest.mark.parametrize("case,args,needles", [
    ("T42", ["--latent-dim", BIG], ["--latent-dim 1000000000", "would need about", "GB", "a smaller --latent-dim"]),
    ("T43", ["--hidden", BIG], ["--hidden 1000000000", "would need about"]),
    ("X18", ["--n-train", str(10**11)], ["--n-train 100000000000", "would need about", "smaller --n-train"]),
    ("X19", ["--k", str(10**8)], ["--k 100000000", "would need about", "smaller --k"]),
    ("T52", ["--seed", HUGE_SEED], ["train.seed: seeds are 64-bit integers", f"(got {HUGE_SEED})"]),
    ("T53", ["--data-seed", HUGE_SEED], ["data.seed: seeds are 64-bit integers", f"(got {HUGE_SEED})"]),
    ("T40b", ["--beta", "inf"], ["train.beta: must be a finite number"]),
    ("T54c", ["--likelihood", "gaussian", "--recon-var", "inf"], ["model.recon_var: must be a finite number"]),
    ("lr-inf", ["--lr", "inf"], ["train.lr: must be a finite number"]),
    ("beta-1e39", ["--beta", "1e39"], ["train.beta: 1e+39 is outside float32's range"]),
    ("recon-var-1e-300", ["--likelihood", "gaussian", "--recon-var", "1e-300"], ["model.recon_var", "float32"]),
])
def test_impossible_train_options_are_refused_before_allocating(tmp_path, case, args, needles):
    result = invoke("train", *FAST, *args, "--out", tmp_path / "r")
    refused(result, *needles)
    assert not (tmp_path / "r").exists(), case  # X19 left an untrained run behind


def test_T88b_overwrite_with_an_impossible_model_keeps_the_old_run(run_dir, tmp_path):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    refused(invoke("train", *FAST, "--latent-dim", BIG, "--overwrite", "--out", run_dir), "would need about")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("command,args", [
    ("S09", ["sample", "-n", "5", "--seed", HUGE_SEED, "-o", "s.csv"]),
    ("E08", ["eval", "--k", "5", "--seed", HUGE_SEED]),
    ("P16", ["plot", "--figures", "samples", "--seed", HUGE_SEED]),
])
def test_seeds_beyond_64_bits_name_the_option(run_dir, tmp_path, command, args):
    cmd, *rest = args
    rest = [str(tmp_path / a) if a.endswith(".csv") else a for a in rest]
    if command == "E08":  # checked by the run-level evaluation (vaelab.evaluate), with its own wording
        refused(invoke(cmd, run_dir, *rest), "seed must be an integer", "seeds are 64-bit integers")
    else:
        refused(invoke(cmd, run_dir, *rest), "--seed", "64-bit integers")


def test_D07_decode_seed_beyond_64_bits(run_dir, tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((2, 2), dtype=np.float32))
    refused(invoke("decode", run_dir, "-i", tmp_path / "z.npy", "--noise", "--seed", HUGE_SEED,
                   "-o", tmp_path / "d.csv"), "--seed", "64-bit integers")


def test_S03_sample_of_a_trillion_is_refused(run_dir, tmp_path):
    refused(invoke("sample", run_dir, "-n", 10**12, "-o", tmp_path / "s.npy"), "-n 1000000000000", "would need")
    assert not (tmp_path / "s.npy").exists()


def test_X15_eval_n_test_beyond_memory(run_dir):
    refused(invoke("eval", run_dir, "--k", "5", "--n-test", 10**11), "100000000000", "would need")


def test_T74_bool_for_an_integer_in_toml(tmp_path):
    toml = tmp_path / "bool.toml"
    toml.write_text("[train]\nepochs = true\n")
    refused(invoke("train", "--config", toml, "--out", tmp_path / "r", "--device", "cpu"),
            str(toml), "train.epochs", "valid integer")
    assert not (tmp_path / "r").exists()


def test_T75_config_keys_are_reported_under_the_config_file(tmp_path):
    toml = tmp_path / "unknown.toml"
    toml.write_text("[model]\nlatentdim = 3\n")
    refused(invoke("train", "--preset", "mnist-conv", "--data", "ring", "--config", toml, "--out", tmp_path / "r"),
            f"invalid configuration in {toml}", "model.latentdim: unknown option")


@pytest.mark.parametrize("case,make,needles", [
    ("T16", lambda p: np.save(p, np.ones((50, 2), dtype=np.complex128)), ["complex numbers", "separate columns"]),
    ("T20", lambda p: np.save(p, np.full((50, 2), 1e39)), ["beyond ±3.4e38", "row 0, column 0"]),
    ("X01", lambda p: p.write_bytes(b""), ["the file is empty (0 bytes)"]),
    ("T30", lambda p: np.save(p, np.array([{}, 1], dtype=object), allow_pickle=True), ["never does", "numpy.save"]),
])
def test_bad_npy_files_give_clear_errors(tmp_path, case, make, needles):
    path = tmp_path / "in.npy"
    make(path)
    result = invoke("train", "--data", path, *FILE_FAST, "--out", tmp_path / "r")
    refused(result, str(path), *needles)
    assert "Aborted" not in result.output and not (tmp_path / "r").exists()


def test_T20_csv_value_beyond_float32(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("a,b\n" + "\n".join(f"{i},{1e39 if i == 3 else i}" for i in range(40)) + "\n")
    refused(invoke("train", "--data", path, *FILE_FAST, "--out", tmp_path / "r"), "row 3, column 1", "float32")


@pytest.mark.parametrize("case,command", [("N06", "encode"), ("N12", "encode"), ("D04", "decode"), ("D05", "decode")])
def test_encode_decode_inputs_are_checked_like_data_files(run_dir, tmp_path, case, command):
    path = tmp_path / "in.npy"
    if case == "N06":
        np.save(path, np.ones((3, 2), dtype=np.complex128))
    elif case in ("N12", "D04"):
        np.save(path, np.full((3, 2), 1e39))
    else:
        path.write_bytes(b"")
    result = invoke(command, run_dir, "-i", path, "-o", tmp_path / "o.csv")
    refused(result, str(path))
    assert not (tmp_path / "o.csv").exists()


def test_E28_relative_data_path_is_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    np.savetxt(tmp_path / "in" / "good3.csv", np.random.default_rng(0).normal(size=(60, 3)), delimiter=",")
    monkeypatch.chdir(tmp_path)
    assert invoke("train", "--data", "in/good3.csv", *FILE_FAST, "--no-eval", "--out", "run").exit_code == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["path"] == str(tmp_path / "in" / "good3.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert invoke("eval", "../run", "--k", "4").exit_code == 0


def test_E27_data_file_that_changed_width_since_training(tmp_path):
    data = tmp_path / "d.csv"
    np.savetxt(data, np.random.default_rng(0).normal(size=(60, 3)), delimiter=",")
    assert invoke("train", "--data", data, *FILE_FAST, "--no-eval", "--out", tmp_path / "run").exit_code == 0
    np.savetxt(data, np.random.default_rng(1).normal(size=(60, 4)), delimiter=",")
    refused(invoke("eval", tmp_path / "run", "--k", "4"), str(data), "4 columns", "trained on")
    refused(invoke("train", "--out", tmp_path / "run", "--resume", "--device", "cpu"), "now have 4 columns")


def test_T27b_an_existing_file_without_data_suffix_is_taken_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("points.txt").write_text("1,2\n3,4\n")
    refused(invoke("train", "--data", "points.txt", *FILE_FAST, "--out", "r"), "points.txt",
            "unsupported file type '.txt'", ".csv")


@pytest.mark.parametrize("case,call", [
    ("A05", lambda m: m.encode(torch.zeros(5, 3))),
    ("A15", lambda m: m.decode(torch.zeros(5, 3))),
])
def test_api_width_errors_name_the_expected_width(case, call):
    model = build_model(ModelConfig(hidden=[8]), 2, seed=0)
    with pytest.raises(ValueError, match=r"has shape \(5, 3\), but this model's (x_dim|latent_dim) is 2"):
        call(model)


def test_labels_with_a_slash_are_accepted_as_condition_values(tmp_path):
    """Item 8: Fashion-MNIST's "T-shirt/top" was taken for a missing file."""
    cond = Condition(kind="label", labels=["T-shirt/top", "Trouser"])
    assert cond.from_arg("T-shirt/top").tolist() == [0]
    with pytest.raises(ValueError, match="no such file"):
        cond.from_arg(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="unknown label 'Shoe/boot'"):
        cond.from_arg("Shoe/boot")
    (tmp_path / "c.txt").write_text("Trouser\nT-shirt/top\n")
    assert len(cond.from_arg(str(tmp_path / "c.txt"))) == 2
