"""Round-trip time of the latent explorer's ``POST /api/decode`` through a real HTTP server.

Two runs are trained first (a few seconds): an MNIST MLP VAE (the ``mnist-mlp-bernoulli``
preset, 784-400-20, one epoch on the 9,000-image split of the MNIST test files; scikit-learn's
digits at 28x28 when ``../shared/data/mnist`` is absent) and a 2-D VAE on the ring. The explorer
is served by ``vaelab explore`` (werkzeug's threaded server) in a process of its own; each
request opens a connection (TCP_NODELAY, as browsers set it), sends one z (what hovering
sends) or a batch of 64, and reads the whole JSON answer.

Reference, measured in the same run: the model's own ``decode`` of the same z in-process, so
the ratio shows what HTTP + JSON add. Aim (issue 10): p50 < 20 ms and p95 < 50 ms for one z.
A benchmark prints; it asserts nothing.

Run: ``python benchmarks/bench_explorer.py [--data-dir DIR] [--requests 300]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from vaelab.config import RunConfig
from vaelab.presets import apply_preset
from vaelab.train import train_run

# ../shared/data beside the checkout (main), or two levels up for a worktree under wt/.
DEFAULT_DATA_DIR = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[1:4]
                         if (p / "shared" / "data" / "mnist").is_dir()),
                        Path(__file__).resolve().parents[2] / "shared" / "data")


def image_config(data_dir: Path) -> tuple[str, RunConfig]:
    cfg = apply_preset(RunConfig(), "mnist-mlp-bernoulli")
    if (data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        data = {"name": "mnist", "data_dir": str(data_dir), "image_split": "test-9k"}
        name = "MNIST MLP (784-400-20, test-9k, 1 epoch)"
    else:
        data = {"name": "digits"}
        name = "digits 28x28 MLP (784-400-20, 1 epoch; MNIST not found)"
    return name, cfg.model_copy(update={
        "data": cfg.data.model_copy(update=data),
        "train": cfg.train.model_copy(update={"epochs": 1}),
    })


def points_config() -> RunConfig:
    return RunConfig.from_dict({"data": {"name": "ring", "n_train": 2000, "n_test": 1000},
                                "train": {"epochs": 2}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, server: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=2):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > end:
                raise SystemExit("vaelab explore did not start") from None
            time.sleep(0.2)


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def round_trips(port: int, run_id: int, z: list[list[float]], n: int) -> list[float]:
    body = json.dumps({"run": run_id, "z": z}).encode()
    headers = {"Content-Type": "application/json", "Host": "127.0.0.1"}
    times = []
    for i in range(n + 10):  # the first 10 warm up
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as browsers do
        conn.request("POST", "/api/decode", body, headers)
        res = conn.getresponse()
        data = res.read()
        conn.close()
        elapsed = (time.perf_counter() - start) * 1e3
        if res.status != 200:
            raise SystemExit(f"decode answered {res.status}: {data[:200]!r}")
        if i >= 10:
            times.append(elapsed)
    return times


def in_process(model: torch.nn.Module, z: list[list[float]], n: int) -> list[float]:
    t = torch.tensor(z)
    times = []
    with torch.no_grad():
        for i in range(n + 10):
            start = time.perf_counter()
            model.decode(t).mean.tolist()  # type: ignore[operator]
            if i >= 10:
                times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per case")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the in-process reference: tiny matrices, where more threads cost synchronisation

    image_name, image_cfg = image_config(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        image_run = train_run(image_cfg, Path(tmp) / "mnist")
        points_run = train_run(points_config(), Path(tmp) / "ring")
        print(f"trained both runs in {time.perf_counter() - start:.1f} s")
        port = free_port()
        # The real command in its own process: a server thread inside this process would share
        # the GIL with the timing client and add its 5 ms switch interval to small answers.
        server = subprocess.Popen([sys.executable, "-m", "vaelab", "explore", str(image_run.path),
                                   str(points_run.path), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(port, server)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.requests} requests per case, "
              "a new connection each\n")
        print(f"{'run':58s} {'batch':>5s} {'HTTP p50':>9s} {'p95':>7s} {'decode p50':>11s} {'ratio':>6s}")
        rng = np.random.default_rng(0)
        cases = [(image_name, image_run), ("2-D ring VAE (latent 2)", points_run)]
        for batch in (1, 64):
            for run_id, (name, run) in enumerate(cases):
                z = rng.standard_normal((batch, run.model.latent_dim)).tolist()
                http_p50, http_p95 = percentiles(round_trips(port, run_id, z, args.requests))
                ref_p50, _ = percentiles(in_process(run.model, z, args.requests))
                print(f"{name:58s} {batch:5d} {http_p50:8.2f}ms {http_p95:6.2f}ms {ref_p50:10.3f}ms "
                      f"{http_p50 / ref_p50:5.0f}x")
        server.terminate()
        server.wait(timeout=30)
    print("\naim for one z: p50 < 20 ms, p95 < 50 ms (issue 10)")


if __name__ == "__main__":
    main()
