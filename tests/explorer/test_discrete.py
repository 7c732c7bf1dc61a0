"""The explorer for discrete latents: what the API says a run's latent is, decoding chosen codes
(POST /api/decode_codes), prior draws with their codes, and the page's code pickers in Chromium.

Runs: a gumbel VAE on radial_gmm (3 groups of 4 classes), a VQ-VAE with a conv body on digits
(a 7×7 code grid of K = 16 codes, learned prior, untrained second stage), a VQ-VAE with an MLP
body on ring (2 groups of K = 5, uniform prior) and a continuous VAE. Each trains in seconds.
Screenshots of the page go to /tmp/explorer-discrete-*.png for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("flask", reason="flask is not installed")

from helpers import tiny_config  # noqa: E402
from vaelab import checkpoint as ckpt  # noqa: E402
from vaelab.config import RunConfig  # noqa: E402
from vaelab.evaluate import generator_for  # noqa: E402
from vaelab.explorer.app import create_app  # noqa: E402

GUMBEL, VQ_CONV, VQ_MLP, NORMAL = range(4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from vaelab.train import train_run

    root = tmp_path_factory.mktemp("explorer-discrete")
    configs = {
        "gumbel": RunConfig.from_dict({
            "data": {"name": "radial_gmm", "n_train": 300, "n_test": 100},
            "model": {"kind": "gumbel", "hidden": [16], "latent_dim": 12, "gumbel": {"groups": 3}},
            "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 16}}),
        "vq-conv": RunConfig.from_dict({
            "data": {"name": "digits", "limit_train": 128, "limit_test": 32},
            "model": {"kind": "vq", "net": "conv", "channels": [4, 8], "latent_dim": 4, "likelihood": "bernoulli",
                      "vq": {"codes": 16}},
            "train": {"steps": 3, "batch_size": 64, "diversity_samples": 16}}),
        "vq-mlp": RunConfig.from_dict({
            "data": {"name": "ring", "n_train": 300, "n_test": 100},
            "model": {"kind": "vq", "hidden": [16], "latent_dim": 4,
                      "vq": {"codes": 5, "groups": 2, "prior": "uniform"}},
            "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 16}}),
        "normal": tiny_config(model={"latent_dim": 2}),
    }
    for name, cfg in configs.items():
        train_run(cfg, root / name)
    return [root / name for name in configs]


@pytest.fixture(scope="module")
def client(runs: list[Path]) -> Any:
    return create_app(runs).test_client()


def _model(path: Path) -> Any:
    return ckpt.load(path, "cpu").model.eval()


def test_the_api_says_what_kind_of_latent_a_run_has(client: Any) -> None:
    meta = [client.get(f"/api/run?run={i}").get_json() for i in range(4)]
    assert meta[GUMBEL]["latent"] == {"kind": "categorical", "groups": 3, "classes": 4}
    assert meta[VQ_CONV]["latent"] == {"kind": "codes", "groups": 49, "classes": 16, "grid": [7, 7],
                                       "prior": "learned", "prior_trained": False}  # a first stage only
    assert meta[VQ_MLP]["latent"] == {"kind": "codes", "groups": 2, "classes": 5, "grid": None, "prior": "uniform"}
    assert meta[NORMAL]["latent"] == {"kind": "continuous"}


def test_gumbel_codes_decode_to_their_one_hot_z(client: Any, runs: list[Path]) -> None:
    codes = [[0, 1, 2], [3, 3, 0]]
    r = client.post("/api/decode_codes", json={"run": GUMBEL, "codes": codes})
    assert r.status_code == 200, r.get_json()
    got = r.get_json()
    z = F.one_hot(torch.tensor(codes), 4).float().reshape(2, 12)  # groups side by side, K = 4 each
    assert torch.equal(torch.tensor(got["z"]), z)
    with torch.no_grad():
        mean = _model(runs[GUMBEL]).decode(z).mean
    assert torch.allclose(torch.tensor(got["mean"]), mean, rtol=1e-5, atol=1e-6)
    assert got["x"] is None


def test_vq_codes_decode_to_their_codebook_vectors(client: Any, runs: list[Path]) -> None:
    model = _model(runs[VQ_CONV])
    codes = [[(3 * n + 1) % 16 for n in range(49)]]
    got = client.post("/api/decode_codes", json={"run": VQ_CONV, "codes": codes}).get_json()
    z = model.codebook[torch.tensor(codes[0])].reshape(1, -1)  # (1, 49·4): cell by cell, e_k side by side
    assert torch.allclose(torch.tensor(got["z"]), z, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        mean = model.decode_codes(torch.tensor(codes)).mean
    assert torch.allclose(torch.tensor(got["mean"]), mean, rtol=1e-5, atol=1e-6)
    assert len(got["mean"][0]) == 784
    # draws x ~ p(x|z) under the request's seed: the same seed gives the same draws
    body = {"run": VQ_CONV, "codes": codes * 2, "draws": True, "seed": 5}
    a, b = (client.post("/api/decode_codes", json=body).get_json() for _ in range(2))
    assert a["x"] == b["x"] and set(sum(a["x"], [])) <= {0.0, 1.0}


@pytest.mark.parametrize(("run", "codes", "status", "words"), [
    (GUMBEL, [[0, 1, 4]], 400, "codes[0][2] is 4, outside 0..3"),
    (GUMBEL, [[0, -1, 2]], 400, "codes[0][1] is -1, outside 0..3"),
    (GUMBEL, [[0, 1]], 400, "codes[0] has 2 codes, this run needs 3"),
    (GUMBEL, [[0, 1.0, 2]], 400, "codes[0][1] is 1.0, not an integer"),
    (GUMBEL, [[0, True, 2]], 400, "codes[0][1] is True, not an integer"),
    (GUMBEL, [[0, "1", 2]], 400, "not an integer"),
    (GUMBEL, [0, 1, 2], 400, "codes[0] is not a list"),
    (GUMBEL, [], 400, "codes must be a non-empty list of rows"),
    (GUMBEL, None, 400, "send either codes (integers, one per group / cell) or z"),
    (VQ_CONV, [[0] * 48], 400, "one per cell of the 7×7 code grid"),
    (VQ_MLP, [[0, 5]], 400, "K = 5 codebook vectors"),
    (NORMAL, [[0, 1]], 400, "latent is continuous"),
])
def test_bad_codes_get_a_clear_error(client: Any, run: int, codes: Any, status: int, words: str) -> None:
    body = {"run": run} if codes is None else {"run": run, "codes": codes}
    r = client.post("/api/decode_codes", json=body)
    assert r.status_code == status
    assert words in r.get_json()["error"]


def test_decode_codes_refuses_what_it_does_not_use(client: Any) -> None:
    r = client.post("/api/decode_codes", json={"run": GUMBEL, "codes": [[0, 0, 0]], "z": [[0] * 12]})
    assert r.status_code == 400 and "either codes" in r.get_json()["error"]
    r = client.post("/api/decode_codes", json={"run": GUMBEL})
    assert r.status_code == 400 and "either codes" in r.get_json()["error"]
    r = client.post("/api/decode_codes", json={"run": GUMBEL, "codes": [[0, 0, 0]], "seed": 3})
    assert r.status_code == 400 and "seed applies only to draws" in r.get_json()["error"]
    r = client.post("/api/decode_codes", json={"run": GUMBEL, "codes": [[0, 0, 0]] * 5000})
    assert r.status_code == 413


def test_a_z_snaps_to_its_nearest_codes(client: Any, runs: list[Path]) -> None:
    """POST /api/decode_codes with z: each gumbel group's largest coordinate, each VQ group's
    nearest codebook vector; the answer is that of the codes themselves."""
    g = generator_for(7)
    z = torch.rand(5, 12, generator=g)  # relaxed codes: any point of the plane
    got = client.post("/api/decode_codes", json={"run": GUMBEL, "z": z.tolist()}).get_json()
    codes = z.reshape(5, 3, 4).argmax(-1)
    assert torch.equal(torch.tensor(got["codes"]), codes)
    want = client.post("/api/decode_codes", json={"run": GUMBEL, "codes": codes.tolist()}).get_json()
    assert got["z"] == want["z"] and got["mean"] == want["mean"]
    model = _model(runs[VQ_MLP])
    z = 2 * torch.randn(6, 4, generator=g)
    got = client.post("/api/decode_codes", json={"run": VQ_MLP, "z": z.tolist()}).get_json()
    dist = (z.reshape(6, 2, 1, 2) - model.codebook.reshape(1, 1, 5, 2)).square().sum(-1)  # (6, 2 groups, K)
    assert torch.equal(torch.tensor(got["codes"]), dist.argmin(-1))
    r = client.post("/api/decode_codes", json={"run": VQ_MLP, "z": [[0, 0, 0]]})
    assert r.status_code == 400 and "z" in r.get_json()["error"]


def test_points_come_with_their_codes(client: Any, runs: list[Path]) -> None:
    pts = client.get(f"/api/points?run={GUMBEL}").get_json()
    mu = torch.tensor(pts["mu"])  # E[z|x]: each group's class probabilities
    assert torch.equal(torch.tensor(pts["codes"]), mu.reshape(len(mu), 3, 4).argmax(-1))
    model = _model(runs[VQ_CONV])
    pts = client.get(f"/api/points?run={VQ_CONV}").get_json()
    with torch.no_grad():
        want = model.codes_of(torch.tensor(pts["x"]).round())  # the binarized test view's codes
    assert torch.equal(torch.tensor(pts["codes"]), want)
    assert client.get(f"/api/points?run={NORMAL}").get_json()["codes"] is None


def test_gumbel_prior_draws_come_with_their_codes_and_are_uniform(client: Any) -> None:
    before = torch.random.get_rng_state()
    got = client.post("/api/prior", json={"run": GUMBEL, "n": 4000, "seed": 11, "decode": False}).get_json()
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is never drawn from
    codes, z = torch.tensor(got["codes"]), torch.tensor(got["z"])
    assert codes.shape == (4000, 3)
    assert torch.equal(F.one_hot(codes, 4).float().reshape(4000, 12), z)
    freq = F.one_hot(codes, 4).float().mean(0)  # (3, 4): each class 1/4 under p(z); se ≈ 0.007
    assert torch.allclose(freq, torch.full((3, 4), 0.25), atol=0.035), freq
    again = client.post("/api/prior", json={"run": GUMBEL, "n": 4000, "seed": 11, "decode": False}).get_json()
    other = client.post("/api/prior", json={"run": GUMBEL, "n": 4000, "seed": 12, "decode": False}).get_json()
    assert again["codes"] == got["codes"] and other["codes"] != got["codes"]


def test_vq_prior_draws_are_the_learned_code_priors(client: Any, runs: list[Path]) -> None:
    model = _model(runs[VQ_CONV])
    got = client.post("/api/prior", json={"run": VQ_CONV, "n": 6, "seed": 4}).get_json()
    with torch.no_grad():
        prior = model.prior()
        assert not prior.is_uniform  # the run's learned code prior (a PixelCNN over the grid)
        want = prior.sample_codes((6,), generator_for(4))  # (6, 49)
        mean = model.decode_codes(want).mean
    assert torch.equal(torch.tensor(got["codes"]), want)
    assert torch.allclose(torch.tensor(got["z"]), model.codebook[want].reshape(6, -1))
    assert torch.allclose(torch.tensor(got["mean"]), mean, rtol=1e-5, atol=1e-6)
    mlp = client.post("/api/prior", json={"run": VQ_MLP, "n": 3000, "seed": 2, "decode": False}).get_json()
    freq = F.one_hot(torch.tensor(mlp["codes"]), 5).float().mean(0)  # uniform prior: 1/5 each, se ≈ 0.007
    assert torch.allclose(freq, torch.full((2, 5), 0.2), atol=0.035), freq


def test_a_continuous_runs_prior_has_no_codes(client: Any) -> None:
    got = client.post("/api/prior", json={"run": NORMAL, "n": 2, "seed": 0, "decode": False}).get_json()
    assert got["codes"] is None and len(got["z"]) == 2


# -- the page -----------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def page_base(runs: list[Path]) -> Iterator[str]:
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    from helpers import serving

    with serving(create_app(runs)) as base:
        yield base


@pytest.fixture(scope="module")
def page(page_base: str) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            p = b.new_page(viewport={"width": 1500, "height": 1100})
            errors: list[str] = []
            p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            p.on("pageerror", lambda e: errors.append(str(e)))
            p.errors = errors
            yield p
        finally:
            b.close()


def _open(p: Any, base: str, run: int) -> None:
    p.goto("about:blank")  # a fresh page: a hash change alone would keep the last run's page state
    p.goto(f"{base}/#run={run}")
    p.wait_for_function(f"document.body.dataset.ready === '1' && document.body.dataset.run === '{run}' "
                        "&& Number(document.body.dataset.decodes) > 0")


def _decodes(p: Any) -> int:
    return int(p.evaluate("Number(document.body.dataset.decodes || 0)"))


def _output(p: Any) -> str:
    return str(p.eval_on_selector("#output", "c => c.toDataURL()"))


def _prior_codes(base: str, run: int, seed: int) -> list[int]:
    import json
    import urllib.request

    req = urllib.request.Request(f"{base}/api/prior", data=json.dumps(
        {"run": run, "n": 1, "seed": seed, "decode": False}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return list(json.load(r)["codes"][0])


def test_page_gumbel_run_has_one_selector_per_group(page: Any, page_base: str) -> None:
    _open(page, page_base, GUMBEL)
    assert page.is_hidden("#sliders") and page.is_visible("#codes-box")
    selects = page.query_selector_all("#code-pickers select")
    assert len(selects) == 3
    assert [o.inner_text() for o in selects[0].query_selector_all("option")] == [f"class {k}" for k in range(4)]
    assert page.get_attribute("body", "data-codes") == "0,0,0"
    before, n = _output(page), _decodes(page)
    page.select_option("#code-pickers select[data-group='1']", "2")
    page.wait_for_function(f"Number(document.body.dataset.decodes) > {n}")
    assert page.get_attribute("body", "data-codes") == "0,2,0"
    assert _output(page) != before  # a point elsewhere in the data plane
    # the prior sample fills the pickers with the API's draw for the page's next seed
    seed = int(page.evaluate("S.seed")) + 1
    page.click("#prior-sample")
    page.wait_for_function("Number(document.body.dataset.priorSamples) > 0")
    want = _prior_codes(page_base, GUMBEL, seed)
    assert page.get_attribute("body", "data-codes") == ",".join(map(str, want))
    assert [s.input_value() for s in selects] == [str(k) for k in want]
    page.wait_for_timeout(300)
    page.screenshot(path="/tmp/explorer-discrete-gumbel.png", full_page=True)
    # a z pinned on the plane snaps to its nearest codes: the pickers take them, and the output is theirs
    box = page.eval_on_selector("#plane", "c => { const r = c.getBoundingClientRect(); return [r.x, r.y, r.width]; }")
    n = _decodes(page)
    page.mouse.click(box[0] + 0.9 * box[2], box[1] + 0.1 * box[2])
    page.wait_for_function(f"Number(document.body.dataset.decodes) > {n}")
    page.wait_for_timeout(300)
    z = page.evaluate("S.z")
    snapped = torch.tensor(z).reshape(3, 4).argmax(-1).tolist()
    assert page.get_attribute("body", "data-codes") == ",".join(map(str, snapped))
    assert sorted(set(z)) == [0.0, 1.0] and sum(z) == 3  # one-hot codes, not a relaxed point
    # a point's codes go to the pickers
    pts = page.evaluate("S.pts.codes")
    n = _decodes(page)
    page.evaluate("choosePoint(5, false)")
    page.wait_for_function(f"Number(document.body.dataset.decodes) > {n} && document.body.dataset.codes === "
                           f"'{','.join(map(str, pts[5]))}'")
    assert "the pickers take them" in page.inner_text("#sel-info")
    # the traversal steps one group through its 4 classes, the chosen one framed
    page.select_option("#trav-dim", "1")
    page.wait_for_function("document.querySelectorAll('#trav-strip figure').length === 4 && "
                           "document.querySelector('#trav-note').textContent.startsWith('group 1')")
    chosen = page.eval_on_selector_all("#trav-strip figure", "fs => fs.map(f => f.classList.contains('chosen'))")
    assert chosen == [k == pts[5][1] for k in range(4)]
    assert [o.inner_text() for o in page.query_selector_all("#trav-dim option")] == ["group 0", "group 1", "group 2"]
    assert page.errors == []


def test_page_vq_conv_run_has_a_clickable_code_grid(page: Any, page_base: str) -> None:
    _open(page, page_base, VQ_CONV)
    assert page.is_hidden("#sliders") and page.is_visible("#code-palette")
    assert len(page.query_selector_all("#code-pickers .cell")) == 49
    assert len(page.query_selector_all("#code-palette .swatch")) == 16
    before, n = _output(page), _decodes(page)
    page.click("#code-palette .swatch:nth-child(4)")  # code 3
    assert page.get_attribute("#code-palette .swatch:nth-child(4)", "aria-pressed") == "true"
    for cell in (0, 8, 24):
        page.click(f"#code-pickers .cell[data-cell='{cell}']")
    page.wait_for_function(f"document.body.dataset.codes.split(',').filter(k => k === '3').length === 3 "
                           f"&& Number(document.body.dataset.decodes) > {n}")
    page.wait_for_timeout(200)
    assert page.inner_text("#code-pickers .cell[data-cell='8']") == "3"
    assert _output(page) != before
    # the keyboard steps a focused cell's code
    page.focus("#code-pickers .cell[data-cell='1']")
    page.keyboard.press("ArrowUp")
    assert page.get_attribute("body", "data-codes").split(",")[1] == "1"
    seed = int(page.evaluate("S.seed")) + 1
    page.click("#prior-sample")
    page.wait_for_function("Number(document.body.dataset.priorSamples) > 0")
    assert page.get_attribute("body", "data-codes") == ",".join(map(str, _prior_codes(page_base, VQ_CONV, seed)))
    # the traversal: one cell of the grid through the 16 codes
    page.select_option("#trav-dim", "8")
    page.wait_for_function("document.querySelectorAll('#trav-strip figure').length === 16 && "
                           "document.querySelector('#trav-note').textContent.startsWith('cell row 2, column 2')")
    page.wait_for_timeout(300)
    page.screenshot(path="/tmp/explorer-discrete-vq.png", full_page=True)
    assert page.errors == []


def test_page_continuous_run_keeps_its_sliders(page: Any, page_base: str) -> None:
    _open(page, page_base, NORMAL)
    assert page.is_visible("#sliders") and page.is_hidden("#codes-box")
    assert len(page.query_selector_all("#sliders input[type=range]")) == 2
    assert page.get_attribute("body", "data-codes") in (None, "")
    assert page.errors == []


def test_a_second_stage_run_draws_from_its_trained_code_prior(tmp_path: Path) -> None:
    from vaelab.train import train_run

    given = {"data": {"name": "ring", "n_train": 300, "n_test": 50},
             "model": {"kind": "vq", "hidden": [16], "latent_dim": 4, "vq": {"codes": 4, "groups": 2}},
             "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 16, "objective": "vq"}}
    train_run(RunConfig.from_dict(given), tmp_path / "run")
    second = {**given, "train": {**given["train"], "objective": "vq_prior", "epochs": 8, "lr": 1e-2}}
    train_run(RunConfig.from_dict(second), tmp_path / "run" / "prior", init_from=tmp_path / "run")
    c = create_app([tmp_path / "run", tmp_path / "run" / "prior"]).test_client()
    assert c.get("/api/run?run=0").get_json()["latent"]["prior_trained"] is False
    assert c.get("/api/run?run=1").get_json()["latent"]["prior_trained"] is True
    model = _model(tmp_path / "run" / "prior")
    with torch.no_grad():
        prior = model.prior()
        every = torch.cartesian_prod(torch.arange(4), torch.arange(4))  # (16, 2): all K^N configurations
        log_p = prior.log_prob_codes(every)
        assert abs(float(log_p.exp().sum()) - 1) < 1e-5  # a distribution over the 16 configurations
        assert float(log_p.max() - log_p.min()) > 0.1  # trained away from uniform
        want = prior.sample_codes((500,), generator_for(9))
    got = c.post("/api/prior", json={"run": 1, "n": 500, "seed": 9, "decode": False}).get_json()
    assert torch.equal(torch.tensor(got["codes"]), want)


def test_page_a_link_reopens_the_chosen_codes(page: Any, page_base: str) -> None:
    page.goto("about:blank")
    page.goto(f"{page_base}/#run={GUMBEL}&codes=1,2,3")
    page.wait_for_function(f"document.body.dataset.ready === '1' && document.body.dataset.run === '{GUMBEL}'")
    assert page.get_attribute("body", "data-codes") == "1,2,3"
    assert page.input_value("#code-pickers select[data-group='2']") == "3"
    page.wait_for_function("(document.body.dataset.hash || '').includes('codes=1%2C2%2C3')")
    page.goto("about:blank")
    page.goto(f"{page_base}/#run={GUMBEL}&codes=1,2,9")
    page.wait_for_function(f"document.body.dataset.ready === '1' && document.body.dataset.run === '{GUMBEL}'")
    assert page.get_attribute("body", "data-codes") == "0,0,0"
    assert "codes (needs 3 integers from 0 to 3)" in page.inner_text("#status")
