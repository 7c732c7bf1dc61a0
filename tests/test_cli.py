"""Every core CLI command end to end on tiny data, and the user errors it must explain."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import invoke
from vaelab.cli import app

runner = CliRunner()
TINY = ["--data", "ring", "--n-train", "200", "--n-test", "100", "--hidden", "16,16", "--epochs", "2",
        "--batch-size", "64", "--eval-k", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", *TINY, "--out", out, "--no-report")
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_run_and_metrics(run_dir):
    for f in ("config.json", "model.safetensors", "state.pt", "history.csv", "metrics.json"):
        assert (run_dir / f).is_file(), f
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["iwae_k"] == 8 and "nll_gap" in metrics
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"]["hidden"] == [16, 16] and cfg["data"]["n_train"] == 200


def test_eval_command(run_dir, tmp_path):
    # eval rewrites metrics.json: work on a copy so the shared run stays as training left it.
    run_dir = Path(shutil.copytree(run_dir, tmp_path / "run"))
    result = invoke("eval", run_dir, "--k", "4", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["iwae_k"] == 4 and metrics["n"] == 100
    # other settings than the run's own (k = 8) leave its recorded metrics alone (without --save)
    assert json.loads((run_dir / "metrics.json").read_text())["iwae_k"] == 8
    assert "kept as it was" in " ".join(result.output.split())


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_sample_encode_decode(run_dir, tmp_path, suffix):
    s = tmp_path / f"s{suffix}"
    assert invoke("sample", run_dir, "-n", 7, "--out", s, "--noise").exit_code == 0
    e = tmp_path / f"e{suffix}"
    assert invoke("encode", run_dir, "--input", s, "--out", e).exit_code == 0
    enc = np.load(e) if suffix == ".npy" else np.loadtxt(e, delimiter=",", skiprows=1)
    assert enc.shape == (7, 4)  # μ1 μ2 σ1 σ2
    assert (enc[:, 2:] > 0).all()
    z = tmp_path / f"z{suffix}"
    np.save(z, enc[:, :2]) if suffix == ".npy" else np.savetxt(z, enc[:, :2], delimiter=",")
    d = tmp_path / f"d{suffix}"
    assert invoke("decode", run_dir, "--input", z, "--out", d).exit_code == 0
    dec = np.load(d) if suffix == ".npy" else np.loadtxt(d, delimiter=",", skiprows=1)
    assert dec.shape == (7, 2)


def test_sample_is_seeded(run_dir, tmp_path):
    invoke("sample", run_dir, "-n", 5, "--out", tmp_path / "a.npy", "--seed", 3)
    invoke("sample", run_dir, "-n", 5, "--out", tmp_path / "b.npy", "--seed", 3)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_datasets_lists_every_dataset():
    result = invoke("datasets")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    assert {"moons", "circles", "2gmm", "radial_gmm", "ring"} <= set(names)


def test_train_from_toml_with_flag_override(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[data]\nname = "moons"\nn_train = 100\nn_test = 50\n[model]\nhidden = [8]\nlatent_dim = 1\n'
                    '[train]\nepochs = 1\nbatch_size = 50\n[eval]\nk = 4\n')
    result = invoke("train", "--config", toml, "--latent-dim", "3", "--out", tmp_path / "r", "--no-report",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["data"]["name"] == "moons" and cfg["model"]["latent_dim"] == 3 and cfg["model"]["hidden"] == [8]


def test_user_data_file_of_any_dimension(tmp_path):
    x = np.random.default_rng(0).normal(size=(120, 3))
    np.save(tmp_path / "p.npy", x)
    result = invoke("train", "--data", tmp_path / "p.npy", "--hidden", "8", "--epochs", "1", "--eval-k", "4",
                    "--out", tmp_path / "r", "--no-report", "--device", "cpu")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["n"] == 12 and "nll_gap" not in m


def test_lambda_rec_is_the_inverse_of_recon_var(tmp_path):
    result = invoke("train", *TINY, "--likelihood", "gaussian", "--lambda-rec", "4", "--out", tmp_path / "r",
                    "--no-report", "--no-eval")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["recon_var"] == 0.25


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "spirals"], "choose one of: moons, circles, 2gmm, radial_gmm, ring"),
        (["--activation", "swish"], "model.activation"),
        (["--recon-var", "0"], "model.recon_var: Input should be greater than 0"),
        (["--recon-var", "-1"], "model.recon_var"),
        (["--latent-dim", "0"], "model.latent_dim"),
        (["--epochs", "0"], "train.epochs"),
        (["--batch-size", "-4"], "train.batch_size"),
        (["--likelihood", "poisson"],
         "model.likelihood (--likelihood): unknown likelihood 'poisson'; choose one of: gaussian, gaussian-learned"),
        (["--model", "vea"], "model.kind (--model): unknown model family 'vea'; choose one of: vae, ae"),
        (["--objective", "elbow"], "train.objective (--objective): unknown objective 'elbow'; choose one of: elbo"),
        (["--net", "resnet"], "model.net (--net): unknown net 'resnet'; choose one of: mlp, conv"),
    ],
)
def test_bad_options_name_the_field(tmp_path, args, message):
    result = invoke("train", *TINY, *args, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "r").exists()


def test_unknown_flag_is_a_usage_error(tmp_path):
    result = invoke("train", "--no-such-flag", "1")
    assert result.exit_code == 2 and "No such option" in result.output


def test_not_a_run_directory(tmp_path):
    result = invoke("eval", tmp_path)
    assert result.exit_code == 2 and "not a vaelab run directory" in result.output
    result = invoke("sample", tmp_path / "missing", "--out", tmp_path / "s.npy")
    assert result.exit_code == 2 and "no such folder" in result.output


@pytest.mark.parametrize(
    "content, message",
    [("1,2\n3\n", "ragged"), ("1,2\nnan,1\n", "NaN or infinite"), ("", "empty")],
)
def test_malformed_data_files(tmp_path, content, message):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    result = invoke("train", "--data", p, "--out", tmp_path / "r")
    assert result.exit_code == 2 and message in result.output and "bad.csv" in result.output


def test_wrong_rank_file(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((4, 2, 2)))
    result = invoke("train", "--data", tmp_path / "cube.npy", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "rank 3" in result.output


def test_existing_run_is_not_overwritten(run_dir):
    before = (run_dir / "model.safetensors").read_bytes()
    result = invoke("train", *TINY, "--out", run_dir)
    assert result.exit_code == 2 and "already exists" in result.output
    assert (run_dir / "model.safetensors").read_bytes() == before


def test_wrong_width_input(run_dir, tmp_path):
    np.save(tmp_path / "w.npy", np.zeros((3, 5)))
    result = invoke("encode", run_dir, "--input", tmp_path / "w.npy", "--out", tmp_path / "o.npy")
    assert result.exit_code == 2 and "has 5 columns" in result.output


def test_console_script_runs(tmp_path):
    exe = [sys.executable, "-m", "vaelab"]
    proc = subprocess.run([*exe, "datasets"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "radial_gmm" in proc.stdout
    proc = subprocess.run([*exe, "eval", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not a vaelab run" in proc.stderr


@pytest.mark.parametrize("command", ["plot", "report", "compare"])
def test_figure_commands_list_every_figure_name_in_their_help(command):
    from vaelab.plots import figure_names

    result = invoke(command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    missing = [name for name in figure_names() if name not in text]
    assert not missing, f"`vaelab {command} --help` does not name {missing}"


def test_a_typo_in_a_toml_table_names_the_table_and_the_valid_ones(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[trian]\nepochs = 3\n[model]\nhiden = [8]\n")
    result = invoke("train", "--config", toml, "--out", tmp_path / "r")
    text = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "unknown table [trian]; the tables are [data], [model], [train], [eval]" in text
    assert "model.hiden: unknown option; [model] takes kind, net, channels, hidden" in text
    assert not (tmp_path / "r").exists()


def test_only_vaelabs_own_errors_become_one_line_messages(monkeypatch, tmp_path):
    """A bug (here a KeyError from inside the library) keeps its traceback instead of being
    printed as `error: <key>` like a user error."""
    import vaelab.data.registry as registry

    def broken(*args, **kwargs):
        raise KeyError("trian")

    monkeypatch.setattr(registry, "load_dataset", broken)
    monkeypatch.setattr("vaelab.train.run.load_dataset", broken)
    result = runner.invoke(app, ["train", *TINY, "--out", str(tmp_path / "r")])
    assert isinstance(result.exception, KeyError)
    assert "error: trian" not in result.output


def test_every_error_class_of_vaelab_derives_from_vaelab_error():
    import inspect
    import pkgutil

    import vaelab
    from vaelab.errors import VaelabError

    found = []
    for info in pkgutil.walk_packages(vaelab.__path__, "vaelab."):
        if info.name.startswith("vaelab.cli") or info.name == "vaelab.__main__":
            continue
        module = __import__(info.name, fromlist=["_"])
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning)
                    and obj.__module__ == info.name
                    and not name.startswith("_")):
                found.append(obj)
                assert issubclass(obj, VaelabError), f"{info.name}.{name} is not a VaelabError"
    assert len(found) >= 10


def test_a_fixed_variance_far_below_the_reconstruction_error_is_pointed_out(tmp_path):
    """Audit §3: `--recon-var 1e-12` trained to a loss of 2e11 and an NLL of 1.4e11 without a word."""
    args = ["train", *TINY, "--likelihood", "gaussian", "--no-report", "--no-eval"]
    tiny = invoke(*args, "--recon-var", "1e-12", "--out", tmp_path / "tiny")
    assert tiny.exit_code == 0, tiny.output
    assert "times smaller than the model's mean squared reconstruction error" in " ".join(tiny.output.split())
    fine = invoke(*args, "--recon-var", "0.1", "--out", tmp_path / "fine")
    assert fine.exit_code == 0 and "warning" not in fine.output


def test_printed_lines_are_not_wrapped_at_the_terminal_width(run_dir, tmp_path):
    """conftest's `wide_console`: a line the CLI prints stays one line whatever the terminal's width or
    the length of the temporary folder (rich would break this one at 80 columns)."""
    run_dir = Path(shutil.copytree(run_dir, tmp_path / ("deep-folder-" * 6) / "run"))
    result = invoke("eval", run_dir, "--k", "4")
    assert result.exit_code == 0, result.output
    assert f"{run_dir / 'metrics.json'} kept as it was: these numbers use" in result.output, result.output


def test_version_prints_vaelab_torch_and_python_versions_and_exits():
    import platform

    import torch

    import vaelab

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    assert result.output == f"vaelab {vaelab.__version__} ({versions})\n"
    assert runner.invoke(app, ["--version", "train", "--epochs", "x"]).exit_code == 0  # eager: nothing else runs
