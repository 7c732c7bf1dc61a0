"""The explorer's server: a small JSON API over loaded runs, and the page's own static files.

Every run is loaded once, its held-out set encoded once; requests then only decode or encode
a batch under ``torch.no_grad()``, one at a time (a lock around model calls: the models are
tiny, and one call at a time keeps torch's thread pool from being oversubscribed).

The API (run = index into the runs given, 0-based):

- ``GET /api/runs``: ``{"runs": [{"id", "name"}]}``
- ``GET /api/run?run=ID``: metadata (kind, family, sizes, KL per dim, labels, condition, metrics, config)
- ``GET /api/points?run=ID``: the encoded held-out set (at most ``MAX_POINTS`` points)
- ``POST /api/decode`` ``{"run", "z": [[...]], "c"}`` -> ``{"mean", "std"}``
- ``POST /api/encode`` ``{"run", "x": [[...]], "c"}`` -> ``{"mu", "sigma"}``

Safety: only the files in ``static/`` (listed at start-up) are served, so no request path
reaches the file system; every request is validated and a bad one answers 4xx with
``{"error": ...}``; an unexpected failure answers a JSON 500 without a traceback and the
server keeps serving. When bound to the local machine (the default), requests naming another
Host are refused: a web page elsewhere cannot reach the API through DNS rebinding.
"""

from __future__ import annotations

import json
import math
import mimetypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from vaelab.errors import InputError, VaelabError
from vaelab.models import VariationalModel, has_normal_posterior, has_standard_prior

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_POINTS = 2000  # held-out points sent to the page
MAX_ROWS = 4096  # rows of one decode / encode request
MAX_BYTES = 2 * 1024 * 1024  # request body
# Burda et al. (2016), section 5.2: a latent unit is active when Cov_x(E_q[z_u]) > 0.01.
ACTIVE_THRESHOLD = 0.01
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}


class RequestError(InputError):
    """A request the API cannot answer: the message says what was wrong and what to send."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Loaded:
    """One run as the explorer serves it: the model, its metadata and its encoded held-out set."""

    run: Any  # vaelab.checkpoint.Run
    meta: dict[str, Any]
    points: dict[str, Any]
    points_json: bytes | None = None


def _flat_config(config: Any) -> dict[str, Any]:
    """The settings that differ from the library defaults, as {"section.field": value}."""
    from vaelab.config import RunConfig

    default = RunConfig().model_dump(mode="json")
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any, ref: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub, ref.get(key) if isinstance(ref, dict) else None)
        elif value != ref:
            out[prefix] = value

    for section, values in config.model_dump(mode="json").items():
        walk(section, values, default.get(section, {}))
    return out


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of metrics.json (lists, tags and non-finite values left out: JSON has no NaN)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _condition_meta(condition: Any) -> dict[str, Any] | None:
    if condition is None:
        return None
    if condition.labels is not None:
        return {"kind": "label", "labels": list(condition.labels)}
    one = len(condition.names) == 1  # a vector condition (CSV columns) keeps one value per column
    return {"kind": "continuous", "name": ",".join(condition.names),
            "low": condition.low[0] if one else list(condition.low),
            "high": condition.high[0] if one else list(condition.high)}


@torch.no_grad()
def _load(run_dir: Path) -> _Loaded:
    """Load a run, encode (at most MAX_POINTS of) its held-out set and describe it."""
    from vaelab import checkpoint as ckpt
    from vaelab.data.registry import load_dataset, take
    from vaelab.distributions import kl_per_dim as kl_by_dim

    run = ckpt.load(run_dir, "cpu")
    model = run.model.eval()
    data = load_dataset(run.config.data, "test", expect_dim=model.x_dim)
    if len(data) > MAX_POINTS:
        data = take(data, slice(0, MAX_POINTS))
    raw_c, c = None, None
    if run.condition is not None:
        raw_c = run.condition.values(data)  # (N,) labels or (N, C) values
        c = run.condition.encode(raw_c)  # (N, width)
    family = run.config.model.kind
    # What the model can do decides: a factorised Normal q(z|x) gives μ, σ and, against a
    # factorised prior, the KL of each latent dimension.
    kl_d, sigma = None, None
    if has_normal_posterior(model):
        q_z = model.encode(data.x, c)
        mu, sigma = q_z.mean, q_z.stddev  # (N, d) each
        kl_d = kl_by_dim(q_z, model.prior(c))  # (N, d), or None for a prior that does not factorise
    else:
        mu = model.embed(data.x, c)
    kl_per_dim: list[float] | None = None
    if kl_d is not None:
        kl = kl_d.mean(dim=0)  # (d,): KL of each latent dimension, averaged over x
        kl_per_dim = kl.tolist()
        order = sorted(range(model.latent_dim), key=lambda j: -kl[j].item())
    else:
        spread = mu.var(dim=0) if len(mu) > 1 else torch.zeros(model.latent_dim)
        order = sorted(range(model.latent_dim), key=lambda j: -spread[j].item())
    active = (mu.var(dim=0) > ACTIVE_THRESHOLD).tolist() if len(mu) > 1 else [True] * model.latent_dim
    image_shape = list(data.image_shape) if data.image_shape is not None else None
    if image_shape is not None and image_shape[0] == 1:
        image_shape = image_shape[1:]  # grey images: [H, W]
    labels = data.label_names
    if labels is None and data.labels is not None and len(data.labels):
        labels = [str(i) for i in range(int(data.labels.max()) + 1)]
    if run.condition is not None and run.condition.labels is not None:
        labels = list(run.condition.labels)
    p_x = model.decode(mu[:1], None if c is None else c[:1])
    meta = {
        "name": run_dir.name, "kind": "image" if image_shape is not None else "points", "family": family,
        # N(0, I) prior: the page draws prior samples itself; any other prior (or none, for an
        # autoencoder) gets samples from a Gaussian fitted to the codes, labelled as such.
        "standard_prior": isinstance(model, VariationalModel) and has_standard_prior(model),
        "x_dim": model.x_dim, "image_shape": image_shape, "latent_dim": model.latent_dim,
        "kl_per_dim": kl_per_dim, "dim_order": order, "active": active,
        "noise": model.likelihood.noise_std(p_x) is not None, "labels": labels,
        "condition": _condition_meta(run.condition), "metrics": _scalar_metrics(run.metrics),
        "config": _flat_config(run.config),
    }
    x = data.x.numpy().astype(np.float64)
    if image_shape is not None:
        x = np.round(x, 4)  # pixels: 4 decimals are far below what a screen shows, and keep the answer small
    points = {
        "x": x.tolist(), "mu": mu.tolist(), "sigma": None if sigma is None else sigma.tolist(),
        "labels": None if data.labels is None else data.labels.tolist(),
        "c": None if raw_c is None else (raw_c[:, None] if raw_c.ndim == 1 else raw_c).tolist(),
    }
    return _Loaded(run=run, meta=meta, points=points)


# -- request parsing ----------------------------------------------------------------------------


def _run_index(value: Any, n_runs: int) -> int:
    hint = f"give run as an integer from 0 to {n_runs - 1} (see GET /api/runs)"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value is None:
        raise RequestError(f"no run given; {hint}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"run must be an integer, got {value!r}; {hint}")
    if not 0 <= value < n_runs:
        raise RequestError(f"unknown run {value}; {hint}", 404)
    return value


def _matrix(value: Any, name: str, width: int, what: str) -> torch.Tensor:
    """A JSON list of rows of ``width`` finite numbers -> (B, width) float32."""
    send = f"send {name} as a list of rows, each a list of {width} finite numbers ({what}), at most {MAX_ROWS} rows"
    if not isinstance(value, list) or not value:
        raise RequestError(f"{name} must be a non-empty list of rows; {send}")
    if len(value) > MAX_ROWS:
        raise RequestError(f"{name} has {len(value)} rows, more than the {MAX_ROWS} one request may hold; "
                           "split it into several requests", 413)
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise RequestError(f"{name}[{i}] is not a list; {send}")
        if len(row) != width:
            raise RequestError(f"{name}[{i}] has {len(row)} numbers, this run needs {width}; {send}")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in row):
            raise RequestError(f"{name}[{i}] holds something that is not a number; {send}")
    try:
        t = torch.tensor(value, dtype=torch.float64)
    except (OverflowError, ValueError, TypeError, RuntimeError):
        raise RequestError(f"{name} could not be read as numbers; {send}") from None
    t32 = t.float()
    if not bool(torch.isfinite(t32).all()):
        raise RequestError(f"{name} holds NaN, infinity or a number beyond float32's range; {send}")
    return t32


def _condition(loaded: _Loaded, value: Any, rows: int) -> torch.Tensor | None:
    """The request's ``c`` -> the model's c: (1 or rows, width), or None for an unconditional run."""
    from vaelab.conditions import ConditionError

    condition = loaded.run.condition
    if condition is None:
        if value is not None:
            raise RequestError("this run has no condition: send \"c\": null (or leave c out)")
        return None
    if condition.labels is not None:
        send = (f"send c as a label index 0..{len(condition.labels) - 1}, a label name "
                f"({', '.join(condition.labels[:12])}), or a list of them with one per row")
    else:
        send = (f"send c as a number ({condition.describe()}), or a list with one per row "
                + ("" if condition.width == 1 else f"(each a list of {condition.width} numbers)"))
    if value is None:
        raise RequestError(f"this run is conditional; {send}")
    many = isinstance(value, list) and (condition.labels is not None or condition.width == 1
                                        or (value and isinstance(value[0], list)))
    items = value if many else [value]
    if many and len(items) != rows:
        raise RequestError(f"c has {len(items)} entries for {rows} rows; {send}")
    try:
        if condition.labels is not None:
            idx = []
            for v in items:
                if isinstance(v, bool) or not isinstance(v, int | str):
                    raise RequestError(f"c holds {v!r}, which is not a label; {send}")
                idx.append(condition._label_index(v))
            raw = torch.tensor(idx, dtype=torch.int64)
        else:
            rows_c = []
            for v in items:
                vals = v if isinstance(v, list) else [v]
                if any(isinstance(u, bool) or not isinstance(u, int | float) for u in vals):
                    raise RequestError(f"c holds {v!r}, which is not a number; {send}")
                rows_c.append([float(u) for u in vals])
            raw = _matrix(rows_c, "c", condition.width, "the condition values")
        return condition.encode(raw)
    except ConditionError as err:
        raise RequestError(f"{err}; {send}") from None


# -- the app ------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, allow_nan=False), status=status, mimetype="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


def create_app(run_dirs: list[Path], *, check_host: bool = True) -> Flask:
    """Load every run in ``run_dirs`` (errors name the bad folder) and return the explorer app.

    ``check_host``: refuse requests whose Host header is not the local machine (the default,
    right for a server bound to 127.0.0.1); switch off only when serving on a network address.
    """
    if not run_dirs:
        raise InputError("give at least one run directory to explore")
    loaded = [_load(Path(d)) for d in run_dirs]
    static_files = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else {}
    lock = threading.Lock()

    def call(fn: Callable[[], Any]) -> Any:
        """Run fn (a model call) under the lock and no_grad, and return its result."""
        with lock, torch.no_grad():
            return fn()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BYTES

    @app.before_request
    def _local_only() -> Response | None:
        if check_host:
            host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
                else (request.host or "").split("]")[0] + "]"
            if host not in LOCAL_HOSTS:
                return _error(f"this explorer serves only the local machine, not Host {request.host!r}; "
                              "open it at http://127.0.0.1:PORT/", 403)
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(RequestError)
    def _bad(err: RequestError) -> Response:
        return _error(str(err), err.status)

    @app.errorhandler(VaelabError)
    def _user(err: VaelabError) -> Response:
        return _error(str(err), 400)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        status = err.code or 500
        if status == 413:
            return _error(f"request body over {MAX_BYTES // (1024 * 1024)} MB; send fewer rows per request", 413)
        if status == 404:
            return _error("not found: the explorer serves /, /static/<its own files> and /api/...", 404)
        if status == 405:
            return _error(f"{request.method} is not allowed here: GET /api/runs, /api/run, /api/points; "
                          "POST /api/decode, /api/encode", 405)
        return _error(err.description or err.name, status)

    @app.errorhandler(Exception)
    def _bug(err: Exception) -> Response:  # a bug in vaelab: answered without a traceback, the server goes on
        app.logger.exception("explorer request failed")
        return _error(f"internal error ({type(err).__name__}); the server keeps running", 500)

    def _file(name: str) -> Response:
        path = static_files.get(name)
        if path is None:
            return _error(f"no file {name!r} in the explorer's static files", 404)
        kind = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(path.read_bytes(), mimetype=kind)

    @app.get("/")
    def index() -> Response:
        return _file("index.html")

    @app.get("/static/<name>")
    def static(name: str) -> Response:
        return _file(name)  # only names listed at start-up: no path from a request reaches the disk

    def _get_run() -> _Loaded:
        return loaded[_run_index(request.args.get("run"), len(loaded))]

    def _body() -> dict[str, Any]:
        if not request.is_json:
            raise RequestError("send a JSON body with Content-Type: application/json", 415)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise RequestError("the body is not a JSON object; send {\"run\": 0, ...}")
        return body

    @app.get("/api/runs")
    def runs() -> Response:
        return _json({"runs": [{"id": i, "name": r.meta["name"]} for i, r in enumerate(loaded)]})

    @app.get("/api/run")
    def run_meta() -> Response:
        r = _get_run()
        return _json({"id": loaded.index(r), **r.meta})

    @app.get("/api/points")
    def points() -> Response:
        r = _get_run()
        if r.points_json is None:
            r.points_json = json.dumps(r.points, allow_nan=False).encode()
        return Response(r.points_json, mimetype="application/json")

    @app.post("/api/decode")
    def decode() -> Response:
        body = _body()
        r = loaded[_run_index(body.get("run"), len(loaded))]
        model = r.run.model
        z = _matrix(body.get("z"), "z", model.latent_dim, "one latent code per row")
        c = _condition(r, body.get("c"), len(z))
        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            p_x = model.decode(z, c)
            mean = p_x.mean  # (B, D)
            std = model.likelihood.noise_std(p_x)  # (B, D) observation noise, or None
            return mean, None if std is None else std.expand_as(mean)

        mean, std = call(run)
        return _finite({"mean": mean.tolist(), "std": None if std is None else std.tolist()})

    @app.post("/api/encode")
    def encode() -> Response:
        body = _body()
        r = loaded[_run_index(body.get("run"), len(loaded))]
        model = r.run.model
        what = "pixels in [0, 1], flattened" if r.meta["kind"] == "image" else "one data point per row"
        x = _matrix(body.get("x"), "x", model.x_dim, what)
        if r.meta["kind"] == "image" and (bool((x < 0).any()) or bool((x > 1).any())):
            raise RequestError("x holds pixels outside [0, 1]; send grey levels scaled to [0, 1]")
        c = _condition(r, body.get("c"), len(x))
        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            if has_normal_posterior(model):
                q_z = model.encode(x, c)
                return q_z.mean, q_z.stddev  # (B, d) each
            return model.embed(x, c), None

        mu, sigma = call(run)
        return _finite({"mu": mu.tolist(), "sigma": None if sigma is None else sigma.tolist()})

    def _finite(data: dict[str, Any]) -> Response:
        try:
            return _json(data)
        except ValueError:
            return _error("the model gave NaN or infinity for this input (a diverged run?); nothing to show", 422)

    return app


def make_server(app: Flask, host: str, port: int) -> Any:
    """werkzeug's threaded server (what ``app.run`` uses) bound to host:port, without a line per
    request (hovering sends many); ``serve_forever()`` serves, ``server_port`` is the bound port."""
    from werkzeug.serving import WSGIRequestHandler
    from werkzeug.serving import make_server as _make_server

    class QuietHandler(WSGIRequestHandler):
        # werkzeug writes the headers and the body apart: without TCP_NODELAY the body may wait
        # for the client's (delayed) acknowledgement of the headers.
        disable_nagle_algorithm = True

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    return _make_server(host, port, app, threaded=True, request_handler=QuietHandler)
