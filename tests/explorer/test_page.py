"""The explorer page end to end: the real server on a free port, driven in headless Chromium.

Skips (saying why) where the Python ``playwright`` package or Debian's ``/usr/bin/chromium`` is
missing. Screenshots go to /tmp/explorer-points.png, /tmp/explorer-image.png,
/tmp/explorer-ae1d.png and /tmp/explorer-radius.png for a person to look at.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                               "(pip install playwright; the browser is Debian's chromium)")
pytest.importorskip("flask", reason="flask is not installed")

from werkzeug.serving import make_server  # noqa: E402

from vaelab.config import RunConfig  # noqa: E402

# ../shared/data beside the checkout (main), or two levels up for a worktree under wt/.
SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[2:5]
               if (p / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()), None)
SHOTS = Path("/tmp")


def make_runs(root: Path) -> list[Path]:
    """Four small runs: a label-conditional 2-D VAE, an image VAE (MNIST where the test split is
    at hand, else scikit-learn's 8×8 digits), a 2-D autoencoder with a 1-D latent, and a 2-D VAE
    with a 3-D latent conditioned on the radius (a continuous condition)."""
    from vaelab.evaluate import evaluate_run
    from vaelab.train import train_run

    points = RunConfig.from_dict({
        "data": {"name": "2gmm", "n_train": 1024, "n_test": 400, "condition": "label"},
        "model": {"hidden": [32, 32], "latent_dim": 2},
        "train": {"epochs": 25, "batch_size": 128, "diversity_samples": 64, "lr": 3e-3},
        "eval": {"k": 8},
    })
    if SHARED is not None:
        data: dict[str, Any] = {"name": "mnist", "data_dir": str(SHARED), "image_split": "test-9k",
                                "limit_train": 3000, "limit_test": 400}
        budget = {"epochs": 4}
    else:
        data = {"name": "digits8", "limit_train": 1024, "limit_test": 200}
        budget = {"epochs": 20}
    image = RunConfig.from_dict({
        "data": data,
        "model": {"hidden": [256], "latent_dim": 2, "likelihood": "bernoulli", "activation": "relu"},
        "train": {**budget, "batch_size": 64, "diversity_samples": 16, "lr": 2e-3},
        "eval": {"k": 4},
    })
    ae = RunConfig.from_dict({
        "data": {"name": "ring", "n_train": 512, "n_test": 300},
        "model": {"kind": "ae", "hidden": [32, 32], "latent_dim": 1},
        "train": {"epochs": 20, "batch_size": 128, "diversity_samples": 64, "lr": 3e-3},
    })
    radius = RunConfig.from_dict({
        "data": {"name": "ring", "n_train": 512, "n_test": 300, "condition": "radius"},
        "model": {"hidden": [32, 32], "latent_dim": 3, "likelihood": "gaussian", "recon_var": 0.02},
        "train": {"epochs": 40, "batch_size": 128, "diversity_samples": 64, "lr": 5e-3},
        "eval": {"k": 8},
    })
    out = []
    for name, cfg in (("points-2gmm-cond", points), ("image-" + str(data["name"]), image), ("ae-ring-1d", ae),
                      ("ring-radius-3d", radius)):
        train_run(cfg, root / name)
        evaluate_run(root / name, write=True)   # metrics.json, as `vaelab train` leaves it
        out.append(root / name)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from vaelab.explorer.app import create_app

    runs = make_runs(tmp_path_factory.mktemp("explorer-page"))
    httpd = make_server("127.0.0.1", 0, create_app(runs), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page with its console errors, page errors and off-host requests recorded."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.page = browser.new_page(viewport={"width": 1500, "height": 1100})
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if r.url.startswith(base) or r.url.startswith("data:")
                     else self.foreign.append(r.url))
        self.refused: list[str] = []   # 4xx answers with the request that caused them, for the message
        self.page.on("response", lambda r: self.refused.append(
            f"{r.status} {r.url} {r.request.post_data} -> {r.text()}") if r.status >= 400 else None)

    def open(self, run: int = 0) -> Any:
        p = self.page
        p.goto(self.base + "/")
        p.wait_for_function("document.body.dataset.ready === '1' && Number(document.body.dataset.decodes) > 0")
        if run:
            p.select_option("#run-select", str(run))
            p.wait_for_function("document.body.dataset.ready === '1' && "
                                f"document.getElementById('run-title').textContent.length > 0 && "
                                f"document.getElementById('run-select').value === '{run}'")
            self.wait_decoded(0)
        return p

    def decodes(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.decodes || 0)"))

    def wait_decoded(self, after: int) -> None:
        self.page.wait_for_function(f"Number(document.body.dataset.decodes || 0) > {after}")
        self.page.wait_for_timeout(50)

    def canvas(self, sel: str) -> str:
        return str(self.page.eval_on_selector(sel, "c => c.toDataURL()"))

    def status(self) -> str:
        return str(self.page.inner_text("#status"))

    def check_clean(self) -> None:
        assert self.errors == [], (self.errors, self.refused)
        assert self.foreign == [], f"requests to another host: {self.foreign}"
        assert "error" not in self.page.eval_on_selector("#status", "e => e.className"), self.status()


def drawn_pixels(page: Any, sel: str) -> int:
    """Pixels of a canvas that differ from its top-left background colour."""
    return int(page.eval_on_selector(sel, """c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) n++;
        return n; }"""))


def point_position(page: Any, k: int = 0) -> tuple[float, float]:
    """Page coordinates of held-out point 0 (k=0), or of the point farthest from it in latent space (k=1)."""
    xy = page.evaluate("""k => {
        const c = document.getElementById('plane'), r = c.getBoundingClientRect();
        const mu = S.pts.mu;
        let i = 0;
        if (k) {
            let best = -1;
            mu.forEach((m, j) => { const d = dist2(m, mu[0]); if (d > best) { best = d; i = j; } });
        }
        const [u, v] = latentXY(mu[i], i), [px, py] = toPx(S.view, c.width, c.height, u, v);
        return [r.left + px * r.width / c.width, r.top + py * r.height / c.height];
    }""", k)
    return float(xy[0]), float(xy[1])


def hover_changes_output(w: Watched) -> None:
    p = w.page
    box = p.locator("#plane").bounding_box()
    assert box is not None
    n = w.decodes()
    p.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    w.wait_decoded(n)
    first = w.canvas("#output")
    n = w.decodes()
    p.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] * 0.75, steps=8)
    w.wait_decoded(n)
    p.wait_for_timeout(300)   # let the latest-wins queue settle
    assert w.canvas("#output") != first, "moving over the latent plane did not change the decoded output"


def click_point_shows_reconstruction(w: Watched) -> None:
    p = w.page
    x, y = point_position(p, 0)
    p.mouse.click(x, y)
    p.wait_for_function("document.body.dataset.recon !== undefined")
    assert p.is_visible("#selection")
    assert drawn_pixels(p, "#sel-recon") > 0
    assert p.locator("#neighbours figure").count() == 5
    # shift-click a second, far point: the interpolation strip of 10 decoded outputs
    x2, y2 = point_position(p, 1)
    p.keyboard.down("Shift")
    p.mouse.click(x2, y2)
    p.keyboard.up("Shift")
    p.wait_for_function("document.body.dataset.interp === '10'")
    assert p.locator("#interp-strip figure").count() == 10


def slider_changes_output(w: Watched) -> None:
    p = w.page
    p.mouse.move(5, 5)   # off the plane: the sliders' z is decoded
    p.wait_for_timeout(200)
    before = w.canvas("#output")
    n = w.decodes()
    slider = p.locator("#sliders input").first
    slider.fill(str(float(slider.get_attribute("max") or 3) * 0.9))
    w.wait_decoded(n)
    p.wait_for_timeout(200)
    assert w.canvas("#output") != before, "moving a latent slider did not change the decoded output"


def test_points_run(server: str, browser: Any) -> None:
    w = Watched(browser, server)
    p = w.open(0)
    assert p.is_visible("#run-select"), "four runs were given: the run selector should show"
    assert drawn_pixels(p, "#plane") > 2000, "the latent plane shows no points"
    assert p.is_visible("#cond-label"), "a label-conditional run shows its condition selector"
    assert p.locator("#metrics tr").count() > 4 and p.locator("#config tr").count() > 0
    hover_changes_output(w)
    slider_changes_output(w)
    click_point_shows_reconstruction(w)
    # a new condition re-decodes the current output
    before, n = w.canvas("#output"), w.decodes()
    p.select_option("#cond-label", "1")
    w.wait_decoded(n)
    p.wait_for_timeout(200)
    assert w.canvas("#output") != before, "changing the condition did not change the decoded output"
    p.wait_for_timeout(300)
    p.screenshot(path=str(SHOTS / "explorer-points.png"), full_page=True)
    w.check_clean()


def test_image_run(server: str, browser: Any) -> None:
    w = Watched(browser, server)
    p = w.open(1)
    assert p.is_visible("#pad-box")
    assert drawn_pixels(p, "#plane") > 2000
    hover_changes_output(w)
    slider_changes_output(w)
    click_point_shows_reconstruction(w)
    # draw a "1" and a loop on the pad: it is encoded, marked on the plane, reconstructed
    box = p.locator("#pad").bounding_box()
    assert box is not None
    before = w.canvas("#plane")
    p.mouse.move(box["x"] + 140, box["y"] + 40)
    p.mouse.down()
    p.mouse.move(box["x"] + 145, box["y"] + 240, steps=12)
    p.mouse.up()
    p.wait_for_function("Number(document.body.dataset.padEncoded || 0) >= 1")
    assert drawn_pixels(p, "#pad-recon") > 100, "the drawing's reconstruction is empty"
    assert "encoded" in p.inner_text("#pad-info")
    assert w.canvas("#plane") != before, "the drawing's encoding is not shown on the plane"
    p.wait_for_timeout(300)
    p.screenshot(path=str(SHOTS / "explorer-image.png"), full_page=True)
    w.check_clean()


def test_autoencoder_1d_run(server: str, browser: Any) -> None:
    w = Watched(browser, server)
    p = w.open(2)
    assert not p.is_visible("#dim-y-label"), "a 1-D latent has no y axis to choose"
    assert drawn_pixels(p, "#plane") > 500
    hover_changes_output(w)
    click_point_shows_reconstruction(w)
    assert "autoencoder" in p.inner_text("#sel-info")
    p.wait_for_timeout(300)
    p.screenshot(path=str(SHOTS / "explorer-ae1d.png"), full_page=True)
    w.check_clean()


def test_api_error_is_shown(server: str, browser: Any) -> None:
    """An API error reaches the status line (here: a decode with a z of the wrong width)."""
    w = Watched(browser, server)
    p = w.open(0)
    p.evaluate("decodeLive([1, 2, 3, 4, 5])")
    p.wait_for_function("document.getElementById('status').classList.contains('error')")
    assert "/api/decode" in w.status()
    # the 400 answer logs one console error in Chromium; nothing else went wrong
    assert all("400" in e for e in w.errors), w.errors


def test_continuous_condition_run(server: str, browser: Any) -> None:
    """A radius-conditional run: a slider over the condition's range re-decodes the output."""
    w = Watched(browser, server)
    p = w.open(3)
    assert p.is_visible("#cond-value") and not p.is_visible("#cond-label")
    assert p.locator("#sliders input").count() == 3
    low, high = (float(p.get_attribute("#cond-value", a) or "nan") for a in ("min", "max"))
    assert low < high
    p.mouse.move(5, 5)
    p.wait_for_timeout(200)
    before, n = w.canvas("#output"), w.decodes()
    p.locator("#cond-value").fill(str(high))
    w.wait_decoded(n)
    p.wait_for_timeout(200)
    assert w.canvas("#output") != before, "moving the condition slider did not change the decoded output"
    assert "radius" in p.inner_text("#cond-show")
    # choosing another pair of plane axes redraws the plane
    plane = w.canvas("#plane")
    p.select_option("#dim-y", str(p.eval_on_selector("#dim-y", "s => s.options[2].value")))
    assert w.canvas("#plane") != plane
    # colour by the condition: the legend shows its range
    plane = w.canvas("#plane")
    p.select_option("#colour-by", "c")
    assert w.canvas("#plane") != plane and "radius" in p.inner_text("#legend")
    # a prior sample moves z away from the prior mean: the output changes
    before, n = w.canvas("#output"), w.decodes()
    p.click("#prior-sample")
    w.wait_decoded(n)
    p.wait_for_timeout(200)
    assert w.canvas("#output") != before, "a prior sample did not change the decoded output"
    p.screenshot(path=str(SHOTS / "explorer-radius.png"), full_page=True)
    w.check_clean()


def test_live_decoding_is_throttled(server: str, browser: Any) -> None:
    """A fast sweep over the plane: at most one live decode in flight, fewer requests than mouse
    events, and the output ends on the cursor's last z (the latest wins)."""
    w = Watched(browser, server)
    p = w.open(1)
    p.evaluate("""() => {
        window.__live = { now: 0, max: 0, sent: 0 };
        const plain = window.fetch;
        window.fetch = async (url, opts) => {
            const one = url === '/api/decode' && opts && JSON.parse(opts.body).z.length === 1;
            if (one) { __live.sent++; __live.now++; __live.max = Math.max(__live.max, __live.now); }
            try { return await plain(url, opts); } finally { if (one) __live.now--; }
        };
        window.__moves = 0;
        document.getElementById('plane').addEventListener('mousemove', () => __moves++);
    }""")
    box = p.locator("#plane").bounding_box()
    assert box is not None
    p.mouse.move(box["x"] + 20, box["y"] + 20)
    p.mouse.move(box["x"] + box["width"] - 20, box["y"] + box["height"] - 40, steps=60)
    p.wait_for_function("__live.now === 0 && live.next === null && !live.busy")
    stats = p.evaluate("({...__live, moves: __moves, last: S.live.z, hover: S.hover})")
    assert stats["max"] == 1, stats
    assert stats["sent"] < stats["moves"], stats
    assert stats["last"] == stats["hover"], "the output is not the decode of the cursor's last z"
    w.check_clean()
