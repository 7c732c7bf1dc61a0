// vaelab latent explorer: plain JavaScript, canvas drawing, no external resources.
// The server contract (GET /api/runs, /api/run, /api/points; POST /api/decode, /api/decode_codes, /api/encode,
// /api/prior)
// is in src/vaelab/explorer/app.py. Every API error is shown in the status line.
// Canvases are drawn in CSS pixels on a backing store of devicePixelRatio times that (sharp on
// projectors and retina screens); the page's state lives in the URL's hash (a link reopens the view).
"use strict";

const $ = (id) => document.getElementById(id);
// Point colours: tab10's hues, darkened where needed so that every one has at least 3:1 contrast
// against the plane's background (WCAG 2.1, 1.4.11 non-text contrast); points are drawn opaque.
const PALETTE = ["#1f77b4", "#d35f00", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#c2398f", "#6b6b6b",
  "#8a8a00", "#0f8a9e", "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd", "#c44e00"];
// A sequential ramp (dark purple -> blue -> teal -> green -> olive), lightness increasing, every
// colour on it at least 3:1 against the background (viridis' yellow end is 1.1:1 on white).
const RAMP = [[59, 15, 112], [65, 68, 138], [44, 110, 143], [31, 130, 120], [62, 138, 44], [138, 138, 0]];
const PLANE_BG = "#fbfbfd";
const POINT_ALPHA = 1;     // points are opaque: a faded colour loses its contrast
const SEL_A = "#d62728", SEL_B = "#1f4fd6", DRAWN = "#c2398f", CLOUD = "#1d2433", PRIOR_INK = "#4f586b";
const AXIS_TEXT = "#4f586b";
const STEPS = 10;          // interpolation and traversal steps
const THUMB = 64;          // strip thumbnail size (CSS px)
const OUT = 320;           // decoded output size (CSS px)
const PRIOR_N = 1000;      // prior draws behind the plane's prior shading
const POINT_DRAWS = 24;    // draws x ~ p(x|z) shown beside the mean of a 2-D point

const S = {                // the page state
  gen: 0,                  // bumped on run switch: answers for an older run are dropped
  runs: [], runId: 0, meta: null, pts: null,
  z: [],                   // the pinned latent vector (sliders)
  codesZ: null,            // the z of the codes last decoded (the pickers' z)
  codes: null,             // a discrete run's chosen codes, one per group / grid cell (the pickers), else null
  brush: 0,                // the VQ palette's chosen code: a clicked grid cell takes it
  hover: null,             // the cursor's z (mouse, touch drag or keyboard), or null
  dims: [0, 1],            // latent dims on the plane's x and y axes
  proj: "axes",            // "axes" or "pca" (d > 2)
  pca: null,               // {mean, axes: [e1, e2], var: [v1, v2]}
  cond: null,              // current condition: label index, number, or null
  a: null, b: null,        // selected point indices (b: the interpolation's second end)
  interpNext: false,       // the next selected point becomes b (touch and keyboard users)
  drawn: null,             // {mu, sigma} of the drawing pad's encoding
  interp: null,            // [[z...] * STEPS] latent path of the interpolation
  view: null,              // plane bounds {x0, x1, y0, y1}
  dataView: null,          // data-space bounds (2-D data)
  live: null,              // last decoded {z, mean, std, x}
  decodes: 0,              // count of live decodes drawn (tests read it)
  colourBy: "label", colours: [], colourRange: null,
  prior: null,             // {z: prior draws, loc, scale, type, key}
  showPrior: true, samples: false, seed: 1,
  compare: null,           // {id, meta} of the side-by-side run
  cloud: null,             // {z, mean, x, n, c}
  trav: null,              // traversal dim
  grid: null,
};

// ---------------------------------------------------------------- status line and API
let errorAt = -Infinity;
// A routine message does not replace an error shown less than 4 s ago.
function status(text, isError = false) {
  const el = $("status");
  if (!isError && performance.now() - errorAt < 4000) return;
  if (isError) errorAt = performance.now();
  el.textContent = text;
  el.classList.toggle("error", isError);
}

class ApiError extends Error {}

async function api(path, body) {
  const opts = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let res;
  try {
    res = await fetch(path, opts);
  } catch (err) {
    throw new ApiError(`${path}: the server did not answer (${err.message}); is vaelab explore still running?`);
  }
  let data = null;
  try { data = await res.json(); } catch (_) { /* reported below */ }
  if (!res.ok) {
    const why = data && data.error ? data.error : `HTTP ${res.status}`;
    throw new ApiError(`${path}: ${why}`);
  }
  if (data === null) throw new ApiError(`${path}: the answer was not JSON`);
  return data;
}

// Decode many z in requests of at most the run's max_rows (the server bounds the work per request).
// A discrete run decodes each z's nearest codes (the grid shows the regions of the plane each code takes).
async function decodeMany(runId, meta, zs, c, extra = {}) {
  const step = Math.max(1, meta.max_rows || 256), out = { mean: [], std: null, x: null };
  const path = discreteOf(meta) ? "/api/decode_codes" : "/api/decode";
  for (let i = 0; i < zs.length; i += step) {
    const cc = Array.isArray(c) && c.length === zs.length ? c.slice(i, i + step) : c;
    const r = await api(path, { run: runId, z: zs.slice(i, i + step), c: cc, ...extra });
    out.mean.push(...r.mean);
    if (r.std) out.std = (out.std || []).concat(r.std);
    if (r.x) out.x = (out.x || []).concat(r.x);
  }
  return out;
}

function report(err) {
  status(err instanceof ApiError ? err.message : `error: ${err.message || err}`, true);
  if (!(err instanceof ApiError)) console.warn(err);   // a page bug: keep it visible to developers
}

// Guard: run the async task, drop its result if the run changed meanwhile, show its error.
function guarded(task) {
  const gen = S.gen;
  return task().then((r) => (gen === S.gen ? r : null)).catch((err) => { if (gen === S.gen) report(err); return null; });
}

// ---------------------------------------------------------------- small maths
function dist2(a, b) { let s = 0; for (let i = 0; i < a.length; i++) { const d = a[i] - b[i]; s += d * d; } return s; }
function dot(a, b) { let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * b[i]; return s; }
function norm(a) { return Math.sqrt(dot(a, a)); }
function lerp(a, b, t) { return a.map((ai, i) => ai + t * (b[i] - ai)); }
// Spherical interpolation that stays on the prior's shell: in the prior's whitened coordinates
// w = (z - loc) / scale, the direction moves along the great circle from ŵa to ŵb (Shoemake's
// slerp of unit vectors, which stays unit length) and the radius linearly from |wa| to |wb|, so
// |w(t)| lies between the two ends' radii. (Shoemake's formula applied to the raw vectors blows
// up as they become opposite: sin Ω -> 0.) Opposite ends go round through a perpendicular direction.
function slerp(a, b, t, loc, scale) {
  const d = a.length;
  loc = loc || new Array(d).fill(0); scale = scale || new Array(d).fill(1);
  const wa = a.map((v, i) => (v - loc[i]) / scale[i]), wb = b.map((v, i) => (v - loc[i]) / scale[i]);
  const na = norm(wa), nb = norm(wb);
  if (na < 1e-9 || nb < 1e-9 || d < 2) return lerp(a, b, t);
  const ua = wa.map((v) => v / na), ub = wb.map((v) => v / nb);
  const cos = Math.min(1, Math.max(-1, dot(ua, ub))), om = Math.acos(cos);
  let dir;
  if (om < 1e-6) dir = ua;
  else if (Math.PI - om < 1e-3) {   // (nearly) opposite: no unique great circle; turn through a perpendicular
    const k = ua.map((v) => Math.abs(v)).indexOf(Math.min(...ua.map((v) => Math.abs(v))));
    const p = ua.map((v, i) => (i === k ? 1 : 0) - ua[k] * v), np = norm(p);
    dir = ua.map((v, i) => Math.cos(t * om) * v + Math.sin(t * om) * p[i] / np);
  } else {
    const so = Math.sin(om), wA = Math.sin((1 - t) * om) / so, wB = Math.sin(t * om) / so;
    dir = ua.map((v, i) => wA * v + wB * ub[i]);
    const nd = norm(dir); dir = dir.map((v) => v / nd);
  }
  const r = (1 - t) * na + t * nb;
  return dir.map((v, i) => loc[i] + scale[i] * r * v);
}
// The radius of the prior's 99.7 % region in whitened coordinates: the χ²_d quantile by the
// Wilson-Hilferty approximation, χ²_d,p ≈ d (1 − 2/(9d) + z_p √(2/(9d)))³, z_p = 2.748 for p = 0.997.
function shellRadius(d) { const v = 2 / (9 * d); return Math.sqrt(d * Math.pow(1 - v + 2.748 * Math.sqrt(v), 3)); }
function whitenedNorm(z) {
  const p = S.prior; if (!p || !p.loc) return null;
  return norm(z.map((v, i) => (v - p.loc[i]) / p.scale[i]));
}
const MINUS = "\u2212";
function fmt(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v).replace("-", MINUS);
  const a = Math.abs(v);
  const s = a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toFixed(4).replace(/0+$/, "").replace(/\.$/, "");
  return s.replace("-", MINUS);
}
function fixed(v, n) { return v.toFixed(n).replace("-", MINUS); }
// "−6.27 ± 0.05": the standard error to 1 significant digit (2 when it starts with a 1), the mean to match.
function withError(value, se) {
  if (se === null || se === undefined || !(se > 0)) return fmt(value);
  let digits = -Math.floor(Math.log10(se));
  if (se * Math.pow(10, digits) < 2) digits += 1;
  digits = Math.max(0, Math.min(8, digits));
  return `${fixed(value, digits)} ± ${se.toFixed(digits)}`;
}
function ramp(t) {
  t = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(t)), f = t - i;
  const c = RAMP[i].map((s, k) => Math.round(s + f * (RAMP[i + 1][k] - s)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
// Principal axes of the codes: the top two eigenvectors of their covariance (power iteration with deflation).
function pca(rows) {
  const n = rows.length, d = rows[0].length, mean = new Array(d).fill(0);
  for (const r of rows) for (let j = 0; j < d; j++) mean[j] += r[j] / n;
  const C = [...Array(d)].map(() => new Array(d).fill(0));
  for (const r of rows) for (let i = 0; i < d; i++) { const a = r[i] - mean[i]; for (let j = 0; j < d; j++) C[i][j] += a * (r[j] - mean[j]) / Math.max(1, n - 1); }
  const axes = [], vars = [];
  for (let k = 0; k < 2; k++) {
    let v = [...Array(d)].map((_, j) => 1 + 0.1 * j);
    for (const e of axes) { const p = dot(v, e); v = v.map((x, j) => x - p * e[j]); }
    let lam = 0;
    for (let it = 0; it < 500; it++) {
      let w = C.map((row) => dot(row, v));
      for (const e of axes) { const p = dot(w, e); w = w.map((x, j) => x - p * e[j]); }
      const nw = norm(w); if (nw < 1e-15) break;
      const next = w.map((x) => x / nw);
      const delta = dist2(next, v); v = next; lam = nw;
      if (delta < 1e-20) break;
    }
    const nv = norm(v); v = v.map((x) => x / nv);
    axes.push(v); vars.push(lam);
  }
  return { mean, axes, var: vars };
}

// ---------------------------------------------------------------- canvases at the screen's resolution
// Size a canvas to css w×h CSS pixels with a backing store of devicePixelRatio times that, and
// return its context scaled so that drawing is in CSS pixels.
function fitCanvas(canvas, w, h, ctxOpts) {
  const dpr = window.devicePixelRatio || 1;
  const bw = Math.round(w * dpr), bh = Math.round(h * dpr);
  if (canvas.width !== bw) canvas.width = bw;
  if (canvas.height !== bh) canvas.height = bh;
  canvas.style.width = `${w}px`; canvas.style.height = `${h}px`;
  canvas.dataset.cssW = String(w); canvas.dataset.cssH = String(h);
  const ctx = canvas.getContext("2d", ctxOpts);
  ctx.setTransform(canvas.width / w, 0, 0, canvas.height / h, 0, 0);
  return ctx;
}
function cssSize(canvas) { return [Number(canvas.dataset.cssW) || canvas.width, Number(canvas.dataset.cssH) || canvas.height]; }

// ---------------------------------------------------------------- the URL: a link reopens the same view
const URL_KEYS = ["run", "cmp", "proj", "dims", "colour", "prior", "z", "codes", "c", "a", "b", "slerp", "trav", "samples", "seed"];
function round3(v) { return Number(v.toFixed(3)); }
function stateToHash() {
  if (!S.meta) return "";
  const q = new URLSearchParams();
  q.set("run", S.runId);
  if (S.compare) q.set("cmp", S.compare.id);
  if (S.proj !== "axes") q.set("proj", S.proj);
  q.set("dims", S.dims.join(","));
  q.set("colour", S.colourBy);
  if (!S.showPrior) q.set("prior", "0");
  q.set("z", S.z.map(round3).join(","));
  if (S.codes) q.set("codes", S.codes.join(","));
  if (S.meta.condition) q.set("c", S.meta.condition.kind === "label" ? String(S.cond) : String(round3(S.cond)));
  if (S.a !== null) q.set("a", S.a);
  if (S.b !== null) q.set("b", S.b);
  if ($("slerp").checked) q.set("slerp", "1");
  if (S.trav !== null && S.trav !== undefined) q.set("trav", S.trav);
  if (S.samples) q.set("samples", "1");
  q.set("seed", S.seed);
  return "#" + q.toString();
}
let hashTimer = null, writingHash = false;
function saveState() {
  clearTimeout(hashTimer);
  hashTimer = setTimeout(() => {
    const h = stateToHash();
    if (h && h !== location.hash) { writingHash = true; history.replaceState(null, "", h); writingHash = false; }
    document.body.dataset.hash = h;
  }, 100);
}
function readHash() {
  const q = new URLSearchParams(location.hash.replace(/^#/, "")), out = {};
  for (const k of URL_KEYS) if (q.has(k)) out[k] = q.get(k);
  const unknown = [...q.keys()].filter((k) => !URL_KEYS.includes(k));
  if (unknown.length) status(`link: ignored what this page does not know: ${unknown.join(", ")}`, true);
  return out;
}
// Apply a link's state to the loaded run; what does not fit this run is named in the status line.
function applyHash(h) {
  const m = S.meta, bad = [], D = m.latent_dim, N = S.pts.mu.length;
  const num = (s) => (s === null || s === undefined || s.trim() === "" ? NaN : Number(s));
  if (h.proj !== undefined) { if (h.proj === "pca" && D > 2) S.proj = "pca"; else if (h.proj !== "axes") bad.push(`proj=${h.proj}`); }
  if (h.dims !== undefined) {
    const d = h.dims.split(",").map(num);
    if (d.length === 2 && d.every((v) => Number.isInteger(v) && v >= 0 && v < D) && (d[0] !== d[1] || D < 2)) S.dims = d;
    else bad.push(`dims=${h.dims}`);
  }
  if (h.z !== undefined) {
    const z = h.z.split(",").map(num);
    if (z.length === D && z.every(Number.isFinite)) S.z = z; else bad.push("z (needs " + D + " numbers)");
  }
  const lat = discrete();
  if (h.codes !== undefined && lat) {
    const k = h.codes.split(",").map(num);
    if (k.length === lat.groups && k.every((v) => Number.isInteger(v) && v >= 0 && v < lat.classes)) S.codes = k;
    else bad.push(`codes (needs ${lat.groups} integers from 0 to ${lat.classes - 1})`);
  }
  if (h.c !== undefined && m.condition) {
    const v = num(h.c);
    if (m.condition.kind === "label" ? Number.isInteger(v) && v >= 0 && v < m.condition.labels.length : Number.isFinite(v)) S.cond = v;
    else bad.push(`c=${h.c}`);
  }
  for (const k of ["a", "b"]) if (h[k] !== undefined) {
    const i = num(h[k]);
    if (Number.isInteger(i) && i >= 0 && i < N) S[k] = i; else bad.push(`${k}=${h[k]}`);
  }
  if (S.a === null) S.b = null;
  if (h.colour !== undefined) { if (colourChoices().some(([v]) => v === h.colour)) S.colourBy = h.colour; else bad.push(`colour=${h.colour}`); }
  if (h.prior !== undefined) S.showPrior = h.prior !== "0";
  if (h.slerp !== undefined) $("slerp").checked = h.slerp === "1";
  if (h.trav !== undefined) { const t = num(h.trav); if (Number.isInteger(t) && t >= 0 && t < D) S.trav = t; else bad.push(`trav=${h.trav}`); }
  if (h.samples !== undefined) S.samples = h.samples === "1";
  if (h.seed !== undefined) { const s = num(h.seed); if (Number.isInteger(s) && s >= 0) S.seed = s; else bad.push(`seed=${h.seed}`); }
  if (bad.length) status(`link: not valid for ${m.name}, ignored: ${bad.join(", ")}`, true);
}

// ---------------------------------------------------------------- run loading
async function init() {
  window.addEventListener("error", (e) => status(`page error: ${e.message}`, true));
  window.addEventListener("unhandledrejection", (e) => report(e.reason));
  bindControls();
  const runs = await guarded(() => api("/api/runs"));
  if (!runs) return;
  if (!runs.runs.length) { status("no runs were given to vaelab explore", true); return; }
  S.runs = runs.runs;
  const sel = $("run-select"), cmp = $("compare-select");
  sel.innerHTML = ""; cmp.innerHTML = "";
  cmp.add(new Option("none", ""));
  for (const r of runs.runs) { sel.add(new Option(`${r.id}: ${r.name}`, r.id)); cmp.add(new Option(`${r.id}: ${r.name}`, r.id)); }
  $("run-pick").hidden = runs.runs.length < 2;
  $("compare-pick").hidden = runs.runs.length < 2;
  const h = readHash();
  const id = h.run !== undefined && runs.runs.some((r) => String(r.id) === h.run) ? Number(h.run) : runs.runs[0].id;
  if (h.run !== undefined && String(id) !== h.run) status(`link: there is no run ${h.run}; showing run ${id}`, true);
  await loadRun(id, { hash: h });
  window.addEventListener("hashchange", () => {
    if (writingHash || location.hash === document.body.dataset.hash) return;
    const nh = readHash();
    loadRun(nh.run !== undefined ? Number(nh.run) : S.runId, { hash: nh });
  });
  window.addEventListener("resize", () => { clearTimeout(S.resizeTimer); S.resizeTimer = setTimeout(layout, 100); });
}

// Runs on the same data with the same latent size share a plane: switching between them keeps z,
// the selection, the condition and the axes (comparing β = 1 with β = 4 is what the selector is for).
function compatible(m1, p1, m2, p2) {
  return !!(m1 && m2 && m1.data === m2.data && m1.x_dim === m2.x_dim && m1.latent_dim === m2.latent_dim &&
    p1 && p2 && p1.mu.length === p2.mu.length && JSON.stringify(m1.condition) === JSON.stringify(m2.condition));
}

async function loadRun(id, opts = {}) {
  S.gen++;
  clearTimeout(travTimer);
  const runId = Number(id);
  status("loading run…");
  document.body.dataset.ready = "";
  for (const k of ["prior", "interp", "trav", "grid", "cloud", "recon"]) delete document.body.dataset[k];
  const got = await guarded(async () => {
    const meta = await api(`/api/run?run=${runId}`);
    const pts = await api(`/api/points?run=${runId}`);
    return { meta, pts };
  });
  if (!got) return;
  const keep = !opts.hash && compatible(S.meta, S.pts, got.meta, got.pts);
  const old = { z: S.z, a: S.a, b: S.b, dims: S.dims, cond: S.cond, proj: S.proj, trav: S.trav, colourBy: S.colourBy };
  // S.runId changes together with S.meta: a request built meanwhile matches the run it names
  S.runId = runId; S.meta = got.meta; S.pts = got.pts;
  S.hover = null; S.drawn = null; S.interp = null; S.live = null; S.prior = null; S.cloud = null; S.grid = null;
  S.stats = null; S.pca = null;
  $("run-select").value = String(runId);
  const m = S.meta;
  $("run-title").textContent = `${m.name} · ${m.family.toUpperCase()} · ${m.kind} · latent ${m.latent_dim}`;
  showProgress(m.progress);
  const order = m.dim_order && m.dim_order.length === m.latent_dim ? m.dim_order : [...Array(m.latent_dim).keys()];
  S.order = order;
  if (keep) {
    Object.assign(S, { z: old.z.slice(), a: old.a, b: old.b, dims: old.dims.slice(), cond: old.cond, proj: old.proj, trav: old.trav });
    if (!colourChoicesFor(m, S.pts).some(([v]) => v === old.colourBy)) S.colourBy = null; else S.colourBy = old.colourBy;
  } else {
    S.a = S.b = null; S.proj = "axes"; S.trav = null;
    S.dims = [order[0], m.latent_dim > 1 ? order[1] : order[0]];
    S.cond = m.condition ? (m.condition.kind === "label" ? 0 : (m.condition.low + m.condition.high) / 2) : null;
    S.z = restZ();
    S.colourBy = null;
  }
  if (S.compare && S.compare.id === runId) S.compare = null;
  if (opts.hash) applyHash(opts.hash);
  if (opts.hash && opts.hash.cmp !== undefined && opts.hash.cmp !== "") await setCompare(opts.hash.cmp, false);
  if (S.trav === null || S.trav === undefined) S.trav = discrete() ? 0 : order[0];
  if (discrete() && !(S.trav < discrete().groups)) S.trav = 0;   // a group, not a dimension
  if (m.latent_dim > 2) S.pca = pca(S.pts.mu.length > 2 ? S.pts.mu : [new Array(m.latent_dim).fill(0), new Array(m.latent_dim).fill(1)]);
  buildDimSelects(); buildSliders(); buildCondition(); buildSidePanel(); buildColourSelect();
  $("show-prior").checked = S.showPrior; $("show-samples").checked = S.samples;
  $("pad-box").hidden = m.kind !== "image";
  $("prior-sample").textContent = m.prior.trained ? "prior sample" : "sample (Gaussian fit to codes)";
  $("cloud-h").firstChild.textContent = m.condition ? "Samples under the condition " : "Samples from the prior ";
  $("selection").hidden = true; $("interp").hidden = true; $("grid").hidden = true; $("cloud").hidden = true;
  $("grid-note").textContent = ""; $("cloud-note").textContent = "";
  setHelp();
  clearPad();
  layout();
  status(`${m.name}: ${S.pts.mu.length} held-out points encoded`);
  document.body.dataset.ready = "1";
  document.body.dataset.run = String(runId);
  if (S.a !== null) selectPoint(S.a, { keepZ: true });
  if (S.b !== null) updateInterp();
  if (S.codes) decodeLive(S.z, S.codes); else decodeLive(S.z);   // a discrete run: z is its codes' z
  updateTraversal();
  loadPrior();
  saveState();
}

function showProgress(p) {
  const tag = $("run-progress");
  tag.classList.remove("failed");
  if (!p || p.finished === null || p.finished === undefined) { tag.hidden = true; return; }
  if (p.failure) { tag.hidden = false; tag.classList.add("failed"); tag.textContent = `stopped: ${p.failure}`; return; }
  if (p.finished) { tag.hidden = true; return; }
  tag.hidden = false;
  const budget = p.steps ? `step ${p.step} of ${p.steps}` : `epoch ${p.epoch} of ${p.epochs}, step ${p.step}`;
  tag.textContent = `unfinished run: stopped at ${budget}`;
}

// The resting z: the prior mean for a VAE (the prior's loc where known, else 0), the mean code for an autoencoder.
function restZ() {
  const D = S.meta.latent_dim;
  if (S.meta.prior.trained || !S.pts.mu.length) return S.prior && S.prior.loc ? S.prior.loc.slice() : new Array(D).fill(0);
  return codeStats().mean.slice();
}

function codeStats() {     // per-dim mean / std / min / max of the encoded held-out set
  if (S.stats && S.stats.gen === S.gen) return S.stats;
  const D = S.meta.latent_dim, mu = S.pts.mu, n = Math.max(1, mu.length);
  const mean = new Array(D).fill(0), sq = new Array(D).fill(0);
  const lo = new Array(D).fill(Infinity), hi = new Array(D).fill(-Infinity);
  for (const r of mu) for (let d = 0; d < D; d++) {
    mean[d] += r[d] / n; sq[d] += r[d] * r[d] / n; lo[d] = Math.min(lo[d], r[d]); hi[d] = Math.max(hi[d], r[d]);
  }
  const std = mean.map((m, d) => Math.sqrt(Math.max(1e-12, sq[d] - m * m)));
  S.stats = { gen: S.gen, mean, std, lo, hi };
  return S.stats;
}

// Slider range of a latent dim: the prior's ±3.5 (VAE), widened to cover the codes.
function dimRange(d) {
  const st = codeStats(), trained = S.meta.prior.trained;
  let lo = trained ? -3.5 : Infinity, hi = trained ? 3.5 : -Infinity;
  if (trained && S.prior && S.prior.loc) { lo = S.prior.loc[d] - 3.5 * S.prior.scale[d]; hi = S.prior.loc[d] + 3.5 * S.prior.scale[d]; }
  if (S.pts.mu.length) { lo = Math.min(lo, st.lo[d]); hi = Math.max(hi, st.hi[d]); }
  if (!isFinite(lo) || !isFinite(hi) || hi - lo < 1e-6) { lo = -1; hi = 1; }
  const pad = 0.05 * (hi - lo);
  return [lo - pad, hi + pad];
}

function condForApi() { return S.meta.condition ? S.cond : null; }
function pointCond(i) {
  if (!S.pts.c) return null;
  const row = S.pts.c[i];
  return Array.isArray(row) && row.length === 1 ? row[0] : row;
}
function condName(c) {
  const m = S.meta; if (!m.condition || c === null || c === undefined) return "";
  return m.condition.kind === "label" ? m.condition.labels[c] : `${m.condition.name} = ${fmt(Number(Number(c).toPrecision(4)))}`;
}

// ---------------------------------------------------------------- controls
function bindControls() {
  $("run-select").addEventListener("change", (e) => loadRun(e.target.value));
  $("compare-select").addEventListener("change", (e) => setCompare(e.target.value, true));
  $("dim-x").addEventListener("change", (e) => setDim(0, Number(e.target.value)));
  $("dim-y").addEventListener("change", (e) => setDim(1, Number(e.target.value)));
  $("proj").addEventListener("change", (e) => { S.proj = e.target.value; afterAxesChange(); });
  $("trav-dim").addEventListener("change", (e) => { S.trav = Number(e.target.value); updateTraversal(); saveState(); });
  $("colour-by").addEventListener("change", (e) => { S.colourBy = e.target.value; computeColours(); drawLegend(); redrawAll(); saveState(); });
  $("show-prior").addEventListener("change", (e) => { S.showPrior = e.target.checked; drawPlane(); saveState(); });
  $("show-samples").addEventListener("change", (e) => { S.samples = e.target.checked; decodeLive(S.hover || S.z); saveState(); });
  $("slerp").addEventListener("change", () => { updateInterp(); saveState(); });
  $("interp-next").addEventListener("click", () => setInterpNext(!S.interpNext));
  $("prior-sample").addEventListener("click", priorSample);
  $("reset").addEventListener("click", () => {
    S.a = S.b = null; S.interp = null; S.drawn = null; S.neighbours = [];
    $("selection").hidden = true; $("interp").hidden = true;
    clearPad();
    if (S.codes) setCodes(new Array(S.codes.length).fill(0)); else setZ(restZ());
  });
  $("cond-label").addEventListener("change", (e) => { S.cond = Number(e.target.value); conditionChanged(); });
  $("cond-value").addEventListener("input", (e) => { S.cond = Number(e.target.value); conditionChanged(); });
  $("grid-go").addEventListener("click", drawGrid);
  $("cloud-go").addEventListener("click", drawCloud);
  $("export-png").addEventListener("click", exportPng);
  $("export-svg").addEventListener("click", exportSvg);
  $("export-csv").addEventListener("click", exportCsv);
  $("copy-link").addEventListener("click", copyLink);
  bindPlane();
  bindPad();
}

function setInterpNext(on) {
  S.interpNext = on && S.a !== null;
  $("interp-next").setAttribute("aria-pressed", String(S.interpNext));
}

function setDim(axis, d) {
  const other = 1 - axis;
  if (S.meta.latent_dim > 1 && S.dims[other] === d) S.dims[other] = S.dims[axis];   // the same dim on both axes: swap
  S.dims[axis] = d;
  $("dim-x").value = String(S.dims[0]); $("dim-y").value = String(S.dims[1]);
  afterAxesChange();
}
function afterAxesChange() {
  S.hover = null;
  buildDimSelects();
  computeViews(); drawPlane(); saveState();
  if (S.grid) drawGrid();
}

function setHelp() {
  const coarse = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
  $("plane-help").textContent = (coarse
    ? "Drag to decode (lifting pins z) · tap a point to select it · "
    : "Move to decode · click a point to select it · shift-click a second point to interpolate · click empty space to pin z · ")
    + "keyboard: arrows move the cursor (shift: faster), Enter selects the nearest point, shift+Enter interpolates to it, space pins z, Escape leaves.";
}

function buildDimSelects() {
  const m = S.meta, pcaOn = S.proj === "pca";
  $("proj-label").hidden = m.latent_dim <= 2; $("proj").value = S.proj;
  const lat = discrete();
  for (const [id, axis] of [["dim-x", 0], ["dim-y", 1], ["trav-dim", 0]]) {
    const sel = $(id); sel.innerHTML = "";
    if (id === "trav-dim" && lat) {   // a discrete run traverses a group's codes, not a dimension
      for (let g = 0; g < lat.groups; g++) sel.add(new Option(groupName(g, lat), g));
    } else {
      for (const d of S.order) sel.add(new Option(dimLabel(d), d));
    }
    sel.value = String(id === "trav-dim" ? S.trav : S.dims[axis]);
  }
  $("dim-x-label").hidden = pcaOn;
  $("dim-y-label").hidden = m.latent_dim < 2 || pcaOn;
}

function dimLabel(d) {
  const m = S.meta, kl = m.kl_per_dim ? ` · KL ${fmt(Number(m.kl_per_dim[d].toPrecision(3)))}` : "";
  const off = m.active && m.active[d] === false ? " · inactive" : "";
  return `z${d}${kl}${off}`;
}
function axisName(axis) {
  if (S.proj === "pca") return `PC${axis + 1} (variance ${fmt(Number(S.pca.var[axis].toPrecision(3)))})`;
  return dimLabel(S.dims[axis]);
}

function buildSliders() {
  const box = $("sliders"); box.innerHTML = "";
  S.sliders = {};
  const lat = discrete();
  // Discrete latents are chosen, not slid: a picker per group (or a code grid) instead of sliders.
  box.hidden = !!lat; $("slider-note").hidden = !!lat; $("codes-box").hidden = !lat;
  if (lat) { buildCodes(lat); return; }
  S.codes = null; S.codesZ = null; delete document.body.dataset.codes;
  for (const d of S.order) {
    const [lo, hi] = dimRange(d);
    const name = document.createElement("span");
    name.id = `z-name-${d}`;
    name.textContent = S.meta.kl_per_dim ? `z${d} KL ${fmt(Number(S.meta.kl_per_dim[d].toPrecision(3)))}` : `z${d}`;
    if (S.meta.active && S.meta.active[d] === false) name.className = "inactive";
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: lo, max: hi, step: (hi - lo) / 400, value: S.z[d] });
    input.dataset.dim = d;
    input.setAttribute("aria-label", `z${d}`);
    input.setAttribute("aria-describedby", name.id);
    const out = document.createElement("output"); out.textContent = fixed(S.z[d], 2);
    input.addEventListener("input", () => {
      const z = S.z.slice(); z[d] = Number(input.value); setZ(z);
    });
    box.append(name, input, out);
    S.sliders[d] = { input, out };
  }
}

function syncSliders(z) {
  for (const d of S.order) {
    const s = S.sliders[d];
    if (!s) continue;   // a discrete run has no sliders
    if (document.activeElement !== s.input) s.input.value = z[d];
    s.out.textContent = fixed(z[d], 2);
  }
}

function setZ(z) {
  if (discrete()) { pinCodesAt(z); return; }
  S.z = z; syncSliders(z); drawPlane(); decodeLive(S.hover || z); updateTraversal(); saveState();
}
async function pinCodesAt(z) {   // a discrete run: a z pinned on the plane or by the pad snaps to its nearest codes
  const gen = S.gen;
  const r = await guarded(() => api("/api/decode_codes", { run: S.runId, z: [z], c: condForApi() }));
  if (!r || gen !== S.gen) return;
  S.z = r.z[0].slice(); S.codesZ = S.z.slice(); drawPlane();
  setCodes(r.codes[0]); updateTraversal(); saveState();   // setCodes decodes them
}

async function priorSample() {
  // a VAE: one draw from the model's own prior p(z|c), by the server (any family, not only N(0, I));
  // an autoencoder has no prior it was trained towards: a draw from a Gaussian fitted to its codes.
  S.seed += 1;
  if (discrete()) {   // a discrete run: a draw of the codes from the model's own prior fills the pickers
    const r = await guarded(() => api("/api/prior", { run: S.runId, n: 1, seed: S.seed, c: condForApi(), decode: false }));
    if (r) { setCodes(r.codes[0]); document.body.dataset.priorSamples = String((Number(document.body.dataset.priorSamples) || 0) + 1); }
    return;
  }
  if (!S.meta.prior.trained) {
    const st = codeStats(); let s = S.seed;
    const u = () => { s = (s * 1103515245 + 12345) % 2147483648; return (s + 1) / 2147483649; };
    setZ(S.z.map((_, d) => st.mean[d] + st.std[d] * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u())));
    return;
  }
  const r = await guarded(() => api("/api/prior", { run: S.runId, n: 1, seed: S.seed, c: condForApi(), decode: false }));
  if (r) { setZ(r.z[0]); document.body.dataset.priorSamples = String((Number(document.body.dataset.priorSamples) || 0) + 1); }
}

// ---------------------------------------------------------------- discrete latents: code pickers
// A gumbel run: N groups of K classes (z = their one-hot vectors); a vq run: N codes among the K
// codebook vectors, in a code grid (conv body) or N groups (MLP body). A code is chosen, not slid.
function discrete() { return discreteOf(S.meta); }
function discreteOf(meta) {   // a run's discrete latent (its metadata's latent), or null for a continuous one
  const l = meta && meta.latent;
  return l && (l.kind === "categorical" || l.kind === "codes") ? l : null;
}
function codeColour(k) {   // a palette of K codes: hues by the golden angle, two lightnesses
  return `hsl(${Math.round((k * 137.508) % 360)}, 62%, ${k % 2 ? 38 : 58}%)`;
}
function codeInk(k) { return k % 2 ? "#fff" : "#000"; }
function buildCodes(lat) {
  const N = lat.groups, K = lat.classes, vq = lat.kind === "codes";
  if (!S.codes || S.codes.length !== N || S.codes.some((k) => !(k >= 0 && k < K))) S.codes = new Array(N).fill(0);
  S.brush = Math.min(S.brush, K - 1);
  const word = vq ? "code" : "class";
  const what = vq
    ? `VQ-VAE: z is ${N} codebook vectors, each one of the K = ${K} codes the encoder learned` +
      (lat.grid ? `, in a ${lat.grid[0]}×${lat.grid[1]} grid (each cell a patch of the image). Pick a code in the ` +
        "palette, then click cells to set them (↑/↓ on a cell steps its code; shift-click takes the cell's code into " +
        "the palette)." : ". Choose a code per group.")
    : `categorical latent (Gumbel-softmax): ${N} group(s) of ${K} classes; z is their one-hot vectors side by ` +
      "side. Choose a class per group.";
  const prior = lat.prior !== "learned" ? `its prior, uniform (each ${word} 1/${K})`
    : lat.prior_trained ? "its learned prior over the codes"
    : `its learned prior over the codes, not trained yet: it is uniform (each code 1/${K}) until the run's second ` +
      "stage (vaelab train --init-from RUN --objective vq_prior) trains it";
  const snapped = vq ? "each group's nearest codebook vector" : "each group's most probable class";
  $("codes-note").textContent = `${what} "prior sample" draws every ${word} from ${prior}. A point, the plane and the ` +
    `drawing pad choose ${word}s too: their z is snapped to ${snapped}, so the output always shows ${word}s the ` +
    "model can draw. The traversal below steps one group through its codes.";
  const pal = $("code-palette"), box = $("code-pickers");
  pal.innerHTML = ""; box.innerHTML = "";
  pal.hidden = !(vq && lat.grid);
  box.className = vq && lat.grid ? "code-grid" : "code-groups";
  if (vq && lat.grid) {
    box.style.gridTemplateColumns = `repeat(${lat.grid[1]}, 1fr)`;
    for (let k = 0; k < K; k++) {
      const b = document.createElement("button");
      Object.assign(b, { type: "button", className: "swatch", title: `code ${k}` });
      b.style.background = codeColour(k); b.style.color = codeInk(k); b.textContent = String(k);
      b.setAttribute("aria-label", `palette: code ${k}`);
      b.addEventListener("click", () => { S.brush = k; syncCodes(); });
      pal.append(b);
    }
    for (let n = 0; n < N; n++) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "cell"; b.dataset.cell = n;
      b.addEventListener("click", (e) => {
        if (e.shiftKey) { S.brush = S.codes[n]; syncCodes(); return; }
        const c = S.codes.slice(); c[n] = S.brush; setCodes(c);
      });
      b.addEventListener("keydown", (e) => {
        const step = e.key === "ArrowUp" || e.key === "+" ? 1 : e.key === "ArrowDown" || e.key === "-" ? -1 : 0;
        if (!step) return;
        e.preventDefault();
        const c = S.codes.slice(); c[n] = (c[n] + step + K) % K; setCodes(c);
      });
      box.append(b);
    }
  } else {
    for (let n = 0; n < N; n++) {
      const lab = document.createElement("label");
      lab.textContent = `group ${n + 1} `;
      const sel = document.createElement("select");
      sel.dataset.group = n;
      for (let k = 0; k < K; k++) sel.add(new Option(`${word} ${k}`, k));
      sel.addEventListener("change", () => { const c = S.codes.slice(); c[n] = Number(sel.value); setCodes(c); });
      lab.append(sel); box.append(lab);
    }
  }
  syncCodes();
}
function syncCodes() {
  const lat = discrete();
  if (!lat || !S.codes) return;
  for (const b of $("code-pickers").querySelectorAll(".cell")) {
    const n = Number(b.dataset.cell), k = S.codes[n], r = Math.floor(n / lat.grid[1]), c = n % lat.grid[1];
    b.textContent = String(k); b.style.background = codeColour(k); b.style.color = codeInk(k);
    b.setAttribute("aria-label", `cell row ${r + 1} column ${c + 1}: code ${k}`);
  }
  for (const sel of $("code-pickers").querySelectorAll("select")) sel.value = String(S.codes[Number(sel.dataset.group)]);
  for (const b of $("code-palette").querySelectorAll(".swatch")) b.setAttribute("aria-pressed", String(Number(b.textContent) === S.brush));
  document.body.dataset.codes = S.codes.join(",");
}
function setCodes(codes) {
  S.codes = codes.slice(); syncCodes(); decodeLive(null, S.codes);
}

function buildCondition() {
  const c = S.meta.condition;
  $("cond-box").hidden = !c;
  $("cond-label").hidden = !c || c.kind !== "label";
  $("cond-cont").hidden = !c || c.kind !== "continuous";
  if (!c) return;
  if (c.kind === "label") {
    const sel = $("cond-label"); sel.innerHTML = "";
    c.labels.forEach((name, i) => sel.add(new Option(name, i)));
  } else {
    const r = $("cond-value");
    Object.assign(r, { min: c.low, max: c.high, step: (c.high - c.low) / 200 || 0.01 });
    r.setAttribute("aria-label", c.name);
  }
  showCondition();
}
function showCondition() {
  const c = S.meta.condition; if (!c) return;
  if (c.kind === "label") $("cond-label").value = String(S.cond);
  else { $("cond-value").value = S.cond; $("cond-show").textContent = condName(S.cond); }
}

function conditionChanged() {
  showCondition();
  decodeLive(S.hover || S.z); updateTraversal();
  if (S.drawn) encodePad();
  if (S.meta.prior.trained) loadPrior();
  saveState();
}

function buildSidePanel() {
  const m = S.meta;
  const mt = $("metrics"); mt.innerHTML = "";
  const rows = [["family", m.family], ["data", `${m.data || m.kind}, ${m.x_dim} dims${m.image_shape ? ` (${m.image_shape.join("×")})` : ""}`],
    ["latent", `${m.latent_dim} dims, ${m.active ? m.active.filter(Boolean).length : "?"} active`],
    ["observation noise", m.noise ? "Gaussian" : "none"]];
  const p = m.progress;
  if (p && p.finished === false) rows.push(["training", p.failure ? `stopped: ${p.failure}` : `unfinished (epoch ${p.epoch} of ${p.epochs}, step ${p.step})`]);
  for (const [k, v] of rows) addRow(mt, k, v);
  if (!m.metric_rows || !m.metric_rows.length) addRow(mt, "held-out metrics", "none for this checkpoint: run vaelab eval on it");
  for (const r of m.metric_rows || []) {
    const tr = mt.insertRow(); tr.dataset.key = r.key;
    const name = tr.insertCell(); name.textContent = r.name; if (r.help) name.title = r.help;
    const td = tr.insertCell(); td.className = "num";
    td.textContent = `${withError(r.value, r.se)}${r.unit ? " " + r.unit : ""}`;
  }
  const ct = $("config"); ct.innerHTML = "";
  const cfg = Object.entries(m.config || {});
  if (!cfg.length) addRow(ct, "(all defaults)", "");
  for (const [k, v] of cfg) addRow(ct, k, typeof v === "object" && v !== null ? JSON.stringify(v) : v);
}

function addRow(table, k, v) {
  const tr = table.insertRow();
  tr.insertCell().textContent = k;
  const td = tr.insertCell(); td.textContent = fmt(v);
  if (typeof v === "number") td.className = "num";
}

// ---------------------------------------------------------------- colours (one per point, computed when the colouring changes)
function colourChoicesFor(m, p) {
  const out = [];
  if (p.labels) out.push(["label", "label"]);
  if (p.c && m.condition && m.condition.kind === "continuous") out.push(["c", m.condition.name]);
  if (m.kind === "points") for (let k = 0; k < Math.min(m.x_dim, 4); k++) out.push([`x${k}`, `data x${k}`]);
  else out.push(["ink", "mean pixel"]);
  for (const s of m.point_stats || []) out.push([`stat:${s.key}`, s.name]);
  return out;
}
function colourChoices() { return colourChoicesFor(S.meta, S.pts); }

function colourValue(i) {      // the number a continuous colouring maps onto the ramp
  const by = S.colourBy, p = S.pts;
  if (by === "c") { const c = pointCond(i); return Array.isArray(c) ? c[0] : c; }
  if (by === "ink") { const x = p.x[i]; let s = 0; for (const v of x) s += v; return s / x.length; }
  if (by.startsWith("stat:")) return p.stats[by.slice(5)][i];
  return p.x[i][Number(by.slice(1))];
}

function computeColours() {
  const p = S.pts, n = p.mu.length;
  S.colourRange = null;
  if (S.colourBy === "label") { S.colours = p.labels.map((l) => PALETTE[l % PALETTE.length]); return; }
  const vals = new Array(n);
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) { const v = colourValue(i); vals[i] = v; lo = Math.min(lo, v); hi = Math.max(hi, v); }
  S.colourRange = [lo, hi];
  S.colours = vals.map((v) => ramp(hi > lo ? (v - lo) / (hi - lo) : 0.5));
}
function pointColour(i) { return S.colours[i] || PALETTE[0]; }

function buildColourSelect() {
  const sel = $("colour-by"); sel.innerHTML = "";
  for (const [v, name] of colourChoices()) sel.add(new Option(name, v));
  if (S.colourBy && colourChoices().some(([v]) => v === S.colourBy)) sel.value = S.colourBy;
  S.colourBy = sel.value;
  computeColours();
  drawLegend();
}

function drawLegend() {
  const box = $("legend"); box.innerHTML = "";
  const names = S.meta.labels;
  if (S.colourBy === "label") {
    const seen = [...new Set(S.pts.labels)].sort((a, b) => a - b);
    for (const l of seen) {
      const s = document.createElement("span");
      s.style.setProperty("--c", PALETTE[l % PALETTE.length]);
      s.textContent = names && names[l] !== undefined ? names[l] : String(l);
      box.append(s);
    }
  } else if (S.colourRange) {
    const [lo, hi] = S.colourRange;
    const stat = (S.meta.point_stats || []).find((s) => `stat:${s.key}` === S.colourBy);
    const name = $("colour-by").selectedOptions[0].text + (stat && stat.unit ? ` (${stat.unit})` : "");
    for (const [t, v] of [[0, lo], [0.5, (lo + hi) / 2], [1, hi]]) {
      const s = document.createElement("span");
      s.style.setProperty("--c", ramp(t));
      s.textContent = `${t === 0 ? name + " " : ""}${fmt(Number(v.toPrecision(3)))}`;
      box.append(s);
    }
    if (stat) { const s = document.createElement("div"); s.className = "note"; s.textContent = stat.note; box.append(s); }
  }
}

// ---------------------------------------------------------------- the latent plane
// Plane coordinates of a latent vector: two latent dims, or its projection on the codes' two
// principal axes; i: point index, for the 1-D latent's jitter.
function project(z, i) {
  if (S.meta.latent_dim < 2) return [z[S.dims[0]], i === undefined ? 0 : S.jitter[i]];
  if (S.proj === "pca") { const c = z.map((v, k) => v - S.pca.mean[k]); return [dot(c, S.pca.axes[0]), dot(c, S.pca.axes[1])]; }
  return [z[S.dims[0]], z[S.dims[1]]];
}
// The z at plane coordinates (u, v), everything else taken from base (the pinned z).
function unproject(u, v, base) {
  const z = base.slice();
  if (S.meta.latent_dim < 2) { z[S.dims[0]] = u; return z; }
  if (S.proj === "pca") {
    const [bu, bv] = project(base), [e1, e2] = S.pca.axes;
    return z.map((x, k) => x + (u - bu) * e1[k] + (v - bv) * e2[k]);
  }
  z[S.dims[0]] = u; z[S.dims[1]] = v;
  return z;
}

function layout() {
  if (!S.meta) return;
  const wrap = $("plane-wrap"), w = Math.max(200, Math.min(520, Math.floor((wrap.clientWidth || 522) - 2)));   // 1 px borders
  S.planeSize = [w, S.meta.latent_dim > 1 ? w : 220];
  computeViews();
  drawPlane(); drawOutput(S.live);
  if (S.grid) paintGrid(); if (S.cloud) paintCloud();
}

function computeViews() {
  const one = S.meta.latent_dim < 2;
  let x0, x1, y0, y1;
  if (S.proj === "pca" && !one) {
    x0 = y0 = Infinity; x1 = y1 = -Infinity;
    for (const m of S.pts.mu) { const [u, v] = project(m); x0 = Math.min(x0, u); x1 = Math.max(x1, u); y0 = Math.min(y0, v); y1 = Math.max(y1, v); }
    if (S.meta.prior.trained) { x0 = Math.min(x0, -3.5); x1 = Math.max(x1, 3.5); y0 = Math.min(y0, -3.5); y1 = Math.max(y1, 3.5); }
    if (!isFinite(x0)) { x0 = y0 = -1; x1 = y1 = 1; }
  } else {
    [x0, x1] = dimRange(S.dims[0]);
    [y0, y1] = one ? [-1, 1] : dimRange(S.dims[1]);
  }
  if (!one) {   // equal aspect: one unit is as long on both axes (distances and neighbours look right)
    const span = Math.max(x1 - x0, y1 - y0), cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    x0 = cx - span / 2; x1 = cx + span / 2; y0 = cy - span / 2; y1 = cy + span / 2;
  }
  S.view = { x0, x1, y0, y1 };
  if (S.meta.kind === "points" && S.pts.x.length) {
    let a0 = Infinity, a1 = -Infinity, b0 = Infinity, b1 = -Infinity;
    for (const r of S.pts.x) {
      a0 = Math.min(a0, r[0]); a1 = Math.max(a1, r[0]);
      const y = r.length > 1 ? r[1] : 0; b0 = Math.min(b0, y); b1 = Math.max(b1, y);
    }
    const span = Math.max(a1 - a0, b1 - b0, 1e-6), cx = (a0 + a1) / 2, cy = (b0 + b1) / 2;
    const h = 0.6 * span;   // square, equal-aspect data view with margin
    S.dataView = { x0: cx - h, x1: cx + h, y0: cy - h, y1: cy + h };
  }
  // 1-D latent: points spread on a thin band above the line so they stay distinguishable
  S.jitter = S.pts.mu.map((_, i) => 0.35 + (((i * 2654435761) % 1000) / 1000) * 0.5);
  if (one) S.view = { x0, x1, y0: -1, y1: 1 };
}

const M = 40;              // plane margin (CSS px) for axes
function toPx(v, w, h, u, vv) {
  return [M + (u - v.x0) / (v.x1 - v.x0) * (w - M - 8), 8 + (v.y1 - vv) / (v.y1 - v.y0) * (h - M - 8)];
}
function planeXY(z, i) { return toPx(S.view, S.planeSize[0], S.planeSize[1], ...project(z, i)); }

function eventToPlane(e) {
  const c = $("plane"), r = c.getBoundingClientRect(), [w, h] = S.planeSize, v = S.view;
  if (!v) return null;
  const px = (e.clientX - r.left) * w / r.width, py = (e.clientY - r.top) * h / r.height;
  const u = v.x0 + (px - M) / (w - M - 8) * (v.x1 - v.x0);
  const vv = v.y1 - (py - 8) / (h - M - 8) * (v.y1 - v.y0);
  return [u, vv, px, py];
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}
function ticks(a, b) {
  const step = niceStep((b - a) / 5), out = [];
  for (let t = Math.ceil(a / step) * step; t <= b + step * 1e-9; t += step) out.push(Math.abs(t) < step / 1e6 ? 0 : t);
  return out;
}
function drawAxes(ctx, v, w, h, xName, yName) {
  ctx.strokeStyle = "#c3c8d3"; ctx.fillStyle = AXIS_TEXT; ctx.lineWidth = 1; ctx.font = "11px sans-serif";
  ctx.strokeRect(M, 8, w - M - 8, h - M - 8);
  ctx.textAlign = "center";
  for (const t of ticks(v.x0, v.x1)) { const [px] = toPx(v, w, h, t, v.y0); ctx.fillText(fmt(Number(t.toPrecision(3))), px, h - M + 14); }
  ctx.textAlign = "right";
  if (yName) for (const t of ticks(v.y0, v.y1)) { const [, py] = toPx(v, w, h, v.x0, t); ctx.fillText(fmt(Number(t.toPrecision(3))), M - 4, py + 4); }
  ctx.textAlign = "center"; ctx.fillText(xName, (w + M) / 2, h - 6);
  if (yName) { ctx.save(); ctx.translate(11, (h - M) / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(yName, 0, 0); ctx.restore(); }
}

// An ellipse {cx, cy, rx, ry, angle} in plane px: the k-σ contour of a Gaussian with mean m and
// 2×2 covariance cov in plane coordinates.
function gaussEllipse(mean, cov, k) {
  const [w, h] = S.planeSize, v = S.view;
  const sx = (w - M - 8) / (v.x1 - v.x0), sy = (h - M - 8) / (v.y1 - v.y0);
  const a = cov[0][0] * sx * sx, b = -cov[0][1] * sx * sy, d = cov[1][1] * sy * sy;   // y grows downwards
  const tr = a + d, det = a * d - b * b, disc = Math.sqrt(Math.max(0, tr * tr / 4 - det));
  const l1 = tr / 2 + disc, l2 = Math.max(0, tr / 2 - disc);
  const angle = Math.abs(b) < 1e-12 ? (a >= d ? 0 : Math.PI / 2) : Math.atan2(l1 - a, b);
  const [cx, cy] = toPx(v, w, h, mean[0], mean[1]);
  return { cx, cy, rx: k * Math.sqrt(l1), ry: k * Math.sqrt(l2), angle };
}
// A factorised Gaussian (loc, scale over all d) seen on the plane: its projection's mean and covariance.
function planeGaussian(loc, scale) {
  if (S.meta.latent_dim < 2) return null;
  const P = S.proj === "pca" ? S.pca.axes : [0, 1].map((k) => loc.map((_, j) => (j === S.dims[k] ? 1 : 0)));
  const mean = project(loc);
  const cov = [0, 1].map((i) => [0, 1].map((j) => P[i].reduce((s, p, t) => s + p * P[j][t] * scale[t] * scale[t], 0)));
  return { mean, cov };
}
function strokeEllipse(ctx, e, colour, dash, width = 1.5) {
  ctx.beginPath(); ctx.setLineDash(dash || []);
  ctx.ellipse(e.cx, e.cy, Math.max(e.rx, 0.5), Math.max(e.ry, 0.5), e.angle, 0, 2 * Math.PI);
  ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.stroke(); ctx.setLineDash([]);
}
function posteriorEllipse(mu, sigma, k) {   // q(z|x) = N(mu, diag sigma²) on the plane
  if (S.meta.latent_dim < 2) {
    const [w, h] = S.planeSize, v = S.view, [cx, cy] = planeXY(mu);
    return { cx, cy, rx: k * sigma[S.dims[0]] * (w - M - 8) / (v.x1 - v.x0), ry: 0.5, angle: 0 };
  }
  const g = planeGaussian(mu, sigma);
  return gaussEllipse(g.mean, g.cov, k);
}

function marker(ctx, px, py, colour, r = 6, shape = "ring") {
  ctx.beginPath();
  if (shape === "star") {
    for (let k = 0; k < 10; k++) { const a = -Math.PI / 2 + k * Math.PI / 5, rr = k % 2 ? r * 0.45 : r; ctx.lineTo(px + rr * Math.cos(a), py + rr * Math.sin(a)); }
    ctx.closePath(); ctx.fillStyle = colour; ctx.fill(); ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.stroke();
    return;
  }
  ctx.arc(px, py, r, 0, 2 * Math.PI); ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.stroke();
}

// The prior: draws from the model's own p(z|c) (server side: any family) give its density on the
// plane (a smoothed histogram, shaded); where p(z) is a factorised Normal its 1σ, 2σ and 3σ contours too.
async function loadPrior() {
  const m = S.meta, c = condForApi(), key = `${S.runId}|${m.prior.standard ? "" : JSON.stringify(c)}`;
  if (S.prior && S.prior.key === key) return;
  const n = Math.min(PRIOR_N, m.max_rows);
  const r = await guarded(() => api("/api/prior", { run: S.runId, n, seed: 0, c, decode: false }));
  if (!r) return;
  const firstLoad = !S.prior;
  S.prior = { key, z: r.z, loc: r.prior.loc, scale: r.prior.scale, type: r.prior.type };
  S.priorHist = null;
  $("prior-note").textContent = priorNote();
  if (firstLoad && m.prior.trained && S.prior.loc && !S.prior.loc.every((v) => v === 0) && S.a === null && !location.hash.includes("z=")) {
    S.z = restZ(); syncSliders(S.z); decodeLive(S.z);
  }
  computeViews(); drawPlane();
  document.body.dataset.prior = String(r.z.length);
}
function priorNote() {
  const m = S.meta, p = S.prior; if (!p) return "";
  const what = m.prior.standard ? "N(0, I)" : p.type;
  const shade = `shaded: density of ${p.z.length} draws from the model's prior p(z${m.condition && !m.prior.standard ? "|c" : ""}) = ${what}`;
  const rings = S.meta.latent_dim < 2 ? "; the curve is its density, the bars a histogram of the codes μ" : p.loc ? "; rings: its 1σ, 2σ, 3σ contours" : "";
  const ae = m.prior.trained ? "" : " (an autoencoder is not trained towards any prior: this is the N(0, I) that sampling would use)";
  return `Prior: ${shade}${rings}${ae}.`;
}
function priorHistogram() {
  const key = `${S.proj}|${S.dims}|${JSON.stringify(S.view)}|${S.planeSize}`;
  if (S.priorHist && S.priorHist.key === key) return S.priorHist;
  const G = 48, v = S.view, H = new Float64Array(G * G);
  for (const z of S.prior.z) {
    const [u, w] = project(z);
    const i = Math.floor((u - v.x0) / (v.x1 - v.x0) * G), j = Math.floor((v.y1 - w) / (v.y1 - v.y0) * G);
    if (i >= 0 && i < G && j >= 0 && j < G) H[j * G + i] += 1;
  }
  for (let pass = 0; pass < 2; pass++) {   // smooth: two 3×3 box passes
    const T = new Float64Array(G * G);
    for (let j = 0; j < G; j++) for (let i = 0; i < G; i++) {
      let s = 0, c = 0;
      for (let dj = -1; dj <= 1; dj++) for (let di = -1; di <= 1; di++) {
        const a = i + di, b = j + dj; if (a >= 0 && a < G && b >= 0 && b < G) { s += H[b * G + a]; c++; }
      }
      T[j * G + i] = s / c;
    }
    H.set(T);
  }
  let max = 0; for (const x of H) max = Math.max(max, x);
  S.priorHist = { key, G, H, max };
  return S.priorHist;
}
function drawPrior(ctx, w, h) {
  const p = S.prior, v = S.view; if (!p || !S.showPrior) return;
  if (S.meta.latent_dim < 2) {   // 1-D: the prior's density as a curve, over a histogram of the codes μ
    const bins = 40, iw = w - M - 8, top = 8, base = h - M;
    const hist = (vals) => { const H = new Array(bins).fill(0); for (const x of vals) { const k = Math.floor((x - v.x0) / (v.x1 - v.x0) * bins); if (k >= 0 && k < bins) H[k]++; } return H.map((c) => c / vals.length / ((v.x1 - v.x0) / bins)); };
    const mu = hist(S.pts.mu.map((m) => m[S.dims[0]]));
    let dens;
    if (p.loc) { const l = p.loc[S.dims[0]], s = p.scale[S.dims[0]]; dens = [...Array(bins)].map((_, k) => { const x = v.x0 + (k + 0.5) * (v.x1 - v.x0) / bins; return Math.exp(-0.5 * ((x - l) / s) ** 2) / (s * Math.sqrt(2 * Math.PI)); }); }
    else dens = hist(p.z.map((z) => z[S.dims[0]]));
    const top1 = Math.max(...mu, ...dens, 1e-9), sy = (base - top - (h - M - 8) * 0.55) / top1;
    ctx.fillStyle = "rgba(79,88,107,0.18)";
    mu.forEach((d, k) => { const x = M + k * iw / bins; ctx.fillRect(x, base - d * sy, iw / bins - 1, d * sy); });
    ctx.strokeStyle = PRIOR_INK; ctx.lineWidth = 2; ctx.beginPath();
    dens.forEach((d, k) => { const x = M + (k + 0.5) * iw / bins; k ? ctx.lineTo(x, base - d * sy) : ctx.moveTo(x, base - d * sy); });
    ctx.stroke();
    return;
  }
  const hist = priorHistogram(), G = hist.G, cw = (w - M - 8) / G, ch = (h - M - 8) / G;
  for (let j = 0; j < G; j++) for (let i = 0; i < G; i++) {
    const d = hist.H[j * G + i] / (hist.max || 1); if (d < 0.02) continue;
    ctx.fillStyle = `rgba(79,88,107,${(0.22 * Math.sqrt(d)).toFixed(3)})`;
    ctx.fillRect(M + i * cw, 8 + j * ch, cw + 0.5, ch + 0.5);
  }
  if (p.loc) {
    const g = planeGaussian(p.loc, p.scale);
    for (const k of [1, 2, 3]) strokeEllipse(ctx, gaussEllipse(g.mean, g.cov, k), PRIOR_INK, k === 1 ? [] : [5, 4], 1.2);
  }
}

function drawPlane() {
  const c = $("plane"); if (!S.meta || !S.planeSize) return;
  const [w, h] = S.planeSize, ctx = fitCanvas(c, w, h), v = S.view;
  ctx.fillStyle = PLANE_BG; ctx.fillRect(0, 0, w, h);
  if (!v) return;
  const one = S.meta.latent_dim < 2;
  drawAxes(ctx, v, w, h, axisName(0), one ? "" : axisName(1));
  ctx.save(); ctx.beginPath(); ctx.rect(M, 8, w - M - 8, h - M - 8); ctx.clip();
  drawPrior(ctx, w, h);
  if (one) {   // the 1-D latent's line
    const [ax, ay] = toPx(v, w, h, v.x0, 0), [bx] = toPx(v, w, h, v.x1, 0);
    ctx.strokeStyle = "#c3c8d3"; ctx.beginPath(); ctx.moveTo(ax, ay); ctx.lineTo(bx, ay); ctx.stroke();
  }
  ctx.globalAlpha = POINT_ALPHA;
  const mu = S.pts.mu, nb = S.neighbours || [];
  for (let i = 0; i < mu.length; i++) {
    const [px, py] = planeXY(mu[i], i);
    ctx.fillStyle = pointColour(i); ctx.fillRect(px - 2, py - 2, 4, 4);
  }
  ctx.globalAlpha = 1;
  if (S.cloud && S.cloud.z) {
    ctx.strokeStyle = CLOUD; ctx.lineWidth = 0.8;
    for (const z of S.cloud.z) { const [px, py] = planeXY(z); ctx.beginPath(); ctx.arc(px, py, 2, 0, 2 * Math.PI); ctx.stroke(); }
  }
  if (S.a !== null) for (const j of nb) { const [px, py] = planeXY(mu[j], j); marker(ctx, px, py, "#1d2433", 5); }
  for (const [i, col] of [[S.a, SEL_A], [S.b, SEL_B]]) {
    if (i === null) continue;
    if (S.pts.sigma) for (const k of [1, 2]) strokeEllipse(ctx, posteriorEllipse(mu[i], S.pts.sigma[i], k), col, k === 2 ? [4, 3] : []);
    const [px, py] = planeXY(mu[i], i); marker(ctx, px, py, col, 6);
  }
  if (S.interp) {
    ctx.strokeStyle = SEL_B; ctx.lineWidth = 2; ctx.beginPath();
    S.interp.forEach((z, k) => { const [px, py] = planeXY(z); k ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
    ctx.fillStyle = SEL_B;
    for (const z of S.interp) { const [px, py] = planeXY(z); ctx.fillRect(px - 2.5, py - 2.5, 5, 5); }
  }
  if (S.drawn) {
    if (S.drawn.sigma) for (const k of [1, 2]) strokeEllipse(ctx, posteriorEllipse(S.drawn.mu, S.drawn.sigma, k), DRAWN, k === 2 ? [4, 3] : []);
    const [px, py] = planeXY(S.drawn.mu); marker(ctx, px, py, DRAWN, 9, "star");
  }
  // the pinned z (a cross) and the cursor's z (a ring)
  const [px, py] = planeXY(S.z);
  ctx.strokeStyle = "#000"; ctx.lineWidth = 1.5; ctx.beginPath();
  ctx.moveTo(px - 7, py); ctx.lineTo(px + 7, py); ctx.moveTo(px, py - 7); ctx.lineTo(px, py + 7); ctx.stroke();
  if (S.hover) { const [hx, hy] = planeXY(S.hover); marker(ctx, hx, hy, "#000", 5); }
  ctx.restore();
  describePlane();
}

// The plane in words, for a screen reader (and the canvas's label).
function describePlane() {
  const m = S.meta, z = S.hover || S.z, [u, v] = project(z);
  const axes = S.proj === "pca" ? "the codes' two principal axes" : m.latent_dim > 1 ? `z${S.dims[0]} across, z${S.dims[1]} up` : `z${S.dims[0]}`;
  $("plane").setAttribute("aria-label", `latent plane of ${m.name}: ${S.pts.mu.length} held-out points on ${axes}, coloured by ${$("colour-by").selectedOptions[0] ? $("colour-by").selectedOptions[0].text : "label"}`);
  let text = `${S.hover ? "cursor" : "pinned z"} at (${fixed(u, 2)}${m.latent_dim > 1 ? ", " + fixed(v, 2) : ""})`;
  const i = nearestTo(z);
  if (i >= 0) text += `; nearest point #${i}${pointLabel(i)}, ${Math.sqrt(dist2(project(S.pts.mu[i], i), [u, m.latent_dim > 1 ? v : project(S.pts.mu[i], i)[1]])).toFixed(2)} away`;
  if (S.a !== null) text += `; selected #${S.a}`;
  $("plane-desc").textContent = text;
}
function pointLabel(i) {
  const p = S.pts; if (!p.labels) return "";
  return ` (label ${S.meta.labels ? S.meta.labels[p.labels[i]] : p.labels[i]})`;
}

// Nearest point to a z on the plane (no distance limit), and the nearest within r CSS px of a position.
function nearestTo(z) {
  const [u, v] = project(z); let best = -1, bd = Infinity;
  S.pts.mu.forEach((m, i) => { const [a, b] = project(m, i); const d = (a - u) ** 2 + (S.meta.latent_dim > 1 ? (b - v) ** 2 : 0); if (d < bd) { bd = d; best = i; } });
  return best;
}
function nearestPoint(px, py, r) {
  let best = -1, bd = r * r;
  S.pts.mu.forEach((m, i) => { const [qx, qy] = planeXY(m, i); const d = (qx - px) ** 2 + (qy - py) ** 2; if (d < bd) { bd = d; best = i; } });
  return best;
}

function bindPlane() {
  const plane = $("plane");
  let down = null;   // {x, y, type, moved} of a pressed pointer
  const cursorAt = (e) => {
    const p = eventToPlane(e); if (!p) return;
    const z = unproject(p[0], p[1], S.z);
    S.hover = z; drawPlane(); syncSliders(z); decodeLive(z);
  };
  plane.addEventListener("pointerdown", (e) => {
    if (!S.meta) return;
    down = { x: e.clientX, y: e.clientY, type: e.pointerType, moved: false };
    try { plane.setPointerCapture(e.pointerId); } catch (_) { /* synthetic events have no capture */ }
    if (e.pointerType !== "mouse") cursorAt(e);
  });
  plane.addEventListener("pointermove", (e) => {
    if (!S.meta) return;
    if (down && Math.hypot(e.clientX - down.x, e.clientY - down.y) > 6) down.moved = true;
    if (e.pointerType === "mouse" || down) cursorAt(e);   // touch and pen decode while pressed (no hover)
  });
  plane.addEventListener("pointerup", (e) => {
    if (!down || !S.meta) return;
    const was = down; down = null;
    if (!was.moved) { onPlaneTap(e, was.type); return; }
    if (was.type !== "mouse" && S.hover) { const z = S.hover; S.hover = null; setZ(z); }   // a finger lifted: pin z there
  });
  plane.addEventListener("pointercancel", () => { down = null; });
  plane.addEventListener("pointerleave", (e) => {
    if (e.pointerType !== "mouse" || !S.meta || !S.hover) return;
    S.hover = null; drawPlane(); syncSliders(S.z); decodeLive(S.z);
  });
  plane.addEventListener("keydown", onPlaneKey);
  plane.addEventListener("blur", () => { if (S.hover && S.keyCursor) { S.hover = null; S.keyCursor = false; drawPlane(); syncSliders(S.z); decodeLive(S.z); } });
}

function onPlaneTap(e, type) {
  const p = eventToPlane(e); if (!p) return;
  const i = nearestPoint(p[2], p[3], type === "mouse" ? 8 : 16);   // larger targets for fingers
  if (i < 0) {   // empty space: pin the z there
    S.hover = type === "mouse" ? S.hover : null;
    setZ(unproject(p[0], p[1], S.z)); return;
  }
  choosePoint(i, e.shiftKey);
}

function choosePoint(i, shift) {
  if ((shift || S.interpNext) && S.a !== null && i !== S.a) { S.b = i; setInterpNext(false); updateInterp(); }
  else { S.a = i; S.b = null; S.interp = null; $("interp").hidden = true; selectPoint(i); }
  drawPlane(); saveState();
}

function onPlaneKey(e) {
  if (!S.meta) return;
  const v = S.view, one = S.meta.latent_dim < 2;
  const step = (e.shiftKey ? 0.1 : 0.02);
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
  if (moves[e.key]) {
    e.preventDefault();
    const [dx, dy] = moves[e.key];
    const [u, w] = project(S.hover || S.z);
    const nu = Math.min(v.x1, Math.max(v.x0, u + dx * step * (v.x1 - v.x0)));
    const nw = one ? 0 : Math.min(v.y1, Math.max(v.y0, w + dy * step * (v.y1 - v.y0)));
    const z = unproject(nu, nw, S.z);
    S.hover = z; S.keyCursor = true; drawPlane(); syncSliders(z); decodeLive(z);
  } else if (e.key === "Enter") {
    e.preventDefault();
    const i = nearestTo(S.hover || S.z);
    if (i >= 0) choosePoint(i, e.shiftKey);
  } else if (e.key === " ") {
    e.preventDefault();
    if (S.hover) { const z = S.hover; S.hover = null; setZ(z); }
  } else if (e.key === "Escape") {
    S.hover = null; S.keyCursor = false; drawPlane(); syncSliders(S.z); decodeLive(S.z);
  }
}

// Everything drawn with the point colours, after the colouring changed.
function redrawAll() {
  drawPlane();
  drawOutput(S.live);
  if (S.a !== null) selectPoint(S.a, { keepZ: true });
  if (S.b !== null) updateInterp();
  updateTraversal();
  if (S.cloud) paintCloud();
}

// ---------------------------------------------------------------- drawing decoded outputs
function imageDims() {
  const s = S.meta.image_shape; if (!s) return null;
  return s.length === 3 ? { C: s[0], H: s[1], W: s[2] } : { C: 1, H: s[0], W: s[1] };
}

function imageCanvas(flat) {    // an H×W canvas of a flat pixel vector (values in [0,1], C·H·W)
  const { C, H, W } = imageDims();
  const off = document.createElement("canvas"); off.width = W; off.height = H;
  const octx = off.getContext("2d"), img = octx.createImageData(W, H);
  for (let k = 0; k < H * W; k++) {
    for (let ch = 0; ch < 3; ch++) {
      const v = flat[(C === 3 ? ch : 0) * H * W + k];
      img.data[4 * k + ch] = Math.round(255 * Math.min(1, Math.max(0, v)));
    }
    img.data[4 * k + 3] = 255;
  }
  octx.putImageData(img, 0, 0);
  return off;
}
// Draw a flat pixel vector scaled onto a canvas of css size w×h.
function paintImage(canvas, flat, w, h) {
  const ctx = fitCanvas(canvas, w, h);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(imageCanvas(flat), 0, 0, w, h);
}

// 2-D data: the data scatter, faded, with the decoded mean and its noise ellipses on top.
function paintPoints(canvas, mean, std, opts = {}) {
  const w = opts.size || OUT, h = w, ctx = fitCanvas(canvas, w, h), v = S.dataView;
  ctx.fillStyle = PLANE_BG; ctx.fillRect(0, 0, w, h);
  const small = w < 150, m = small ? 2 : M, top = small ? 2 : 8;
  const iw = w - m - top, ih = h - m - top;   // inner plot size (px)
  const P = (x, y) => [m + (x - v.x0) / (v.x1 - v.x0) * iw, top + (v.y1 - y) / (v.y1 - v.y0) * ih];
  if (!small) drawAxes(ctx, v, w, h, "x₀", "x₁");
  ctx.globalAlpha = small ? 0.25 : 0.35;
  const hl = opts.highlight;
  S.pts.x.forEach((r, i) => {
    if (hl && hl(i)) return;
    const [px, py] = P(r[0], r.length > 1 ? r[1] : 0); ctx.fillStyle = pointColour(i); ctx.fillRect(px - 1, py - 1, small ? 2 : 3, small ? 2 : 3);
  });
  ctx.globalAlpha = 1;
  if (hl) S.pts.x.forEach((r, i) => { if (!hl(i)) return; const [px, py] = P(r[0], r.length > 1 ? r[1] : 0); ctx.fillStyle = pointColour(i); ctx.fillRect(px - 1.5, py - 1.5, 3, 3); });
  if (opts.path) {
    ctx.strokeStyle = SEL_B; ctx.lineWidth = 1.5; ctx.beginPath();
    opts.path.forEach((r, k) => { const [px, py] = P(r[0], r[1] || 0); k ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
  }
  if (opts.draws) {   // samples x ~ p(x|z): hollow dots
    ctx.strokeStyle = opts.drawColour || CLOUD; ctx.lineWidth = 1.2;
    for (const r of opts.draws) { const [px, py] = P(r[0], r.length > 1 ? r[1] : 0); ctx.beginPath(); ctx.arc(px, py, small ? 1.5 : 3, 0, 2 * Math.PI); ctx.stroke(); }
  }
  if (opts.mesh) {    // the decoded latent grid: neighbours joined
    const n = opts.mesh.n, g = opts.mesh.points;
    ctx.strokeStyle = "rgba(31,79,214,0.6)"; ctx.lineWidth = 1;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      const a = P(...g[i * n + j]);
      if (j + 1 < n) { const b = P(...g[i * n + j + 1]); ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.stroke(); }
      if (i + 1 < n) { const b = P(...g[(i + 1) * n + j]); ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.stroke(); }
    }
    ctx.fillStyle = SEL_B; for (const r of g) { const [px, py] = P(r[0], r[1]); ctx.fillRect(px - 1.5, py - 1.5, 3, 3); }
  }
  if (!mean) return;
  const [cx, cy] = P(mean[0], mean.length > 1 ? mean[1] : 0);
  if (std) {
    const sx = iw / (v.x1 - v.x0), sy = ih / (v.y1 - v.y0);
    for (const [k, dash] of [[1, []], [2, [4, 3]]]) {
      ctx.beginPath(); ctx.setLineDash(dash);
      ctx.ellipse(cx, cy, Math.max(0.5, k * std[0] * sx), Math.max(0.5, k * (std.length > 1 ? std[1] : std[0]) * sy), 0, 0, 2 * Math.PI);
      ctx.strokeStyle = SEL_A; ctx.lineWidth = 1.5; ctx.stroke();
    }
    ctx.setLineDash([]);
  }
  ctx.beginPath(); ctx.arc(cx, cy, small ? 3 : 6, 0, 2 * Math.PI);
  ctx.fillStyle = opts.colour || SEL_A; ctx.fill(); ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.stroke();
}

function paint(canvas, row, std, opts = {}) {
  const size = opts.size || OUT;
  if (S.meta.kind === "image") paintImage(canvas, row, size, size);
  else paintPoints(canvas, row, std, opts);
}

function describeOutput(mean) {
  if (!mean) return "no decoded output yet";
  if (S.meta.kind === "image") {
    let s = 0; for (const v of mean) s += v;
    return `decoded ${S.meta.image_shape.join("×")} image, mean intensity ${(s / mean.length).toFixed(2)}`;
  }
  return `decoded mean (${mean.map((v) => fmt(Number(v.toFixed(3)))).join(", ")})`;
}

function outSize() {
  const col = $("out-col"), room = Math.max(160, (col.clientWidth || 360) - 30);
  return Math.min(OUT, Math.floor(room / (S.samples || S.compare ? 2.1 : 1)));
}

function drawOutput(res) {
  const c = $("output"), size = outSize(), cond = S.meta.condition ? ` under ${condName(condForApi())}` : "";
  if (S.meta.kind === "image") {
    if (res) paintImage(c, res.mean, size, size);
    else { const ctx = fitCanvas(c, size, size); ctx.fillStyle = "#000"; ctx.fillRect(0, 0, size, size); }
    $("output-note").textContent = res ? `decoded mean p(x|z)${cond} · ${S.meta.image_shape.join("×")}` : "";
  } else {
    paintPoints(c, res ? res.mean : null, res ? res.std : null, { size });
    $("output-note").textContent = res
      ? `${describeOutput(res.mean)}${cond}${res.std ? " with the observation noise: 1σ and 2σ ellipses" : ""}`
      : "";
  }
  c.setAttribute("aria-label", describeOutput(res ? res.mean : null) + cond);
  $("sample-fig").hidden = !S.samples;
  if (S.samples && res && res.x) {
    const sc = $("output-sample");
    if (S.meta.kind === "image") paintImage(sc, res.x[0], size, size);
    else paintPoints(sc, res.mean, null, { size, draws: res.x });
    sc.setAttribute("aria-label", S.meta.kind === "image" ? "a binary draw x ~ p(x|z)" : `${res.x.length} draws x ~ p(x|z) around the mean`);
  }
  $("compare-fig").hidden = !(S.compare && S.compare.sameZ);
  if (S.compare && S.compare.sameZ && res && res.other) {
    const cc = $("compare-output");
    if (S.meta.kind === "image") paintImage(cc, res.other.mean, size, size);
    else paintPoints(cc, res.other.mean, res.other.std, { size });
    $("compare-cap").textContent = `${S.compare.meta.name} at the same z`;
    cc.setAttribute("aria-label", `${S.compare.meta.name}: ${describeOutput(res.other.mean)}`);
  }
}

function thumb(row, std, caption, opts = {}) {
  const fig = document.createElement("figure");
  const c = document.createElement("canvas");
  paint(c, row, std, { ...opts, size: THUMB });
  c.setAttribute("role", "img");
  c.setAttribute("aria-label", `${caption || ""}: ${describeOutput(row)}`);
  fig.append(c);
  if (caption !== undefined) { const cap = document.createElement("figcaption"); cap.textContent = caption; fig.append(cap); }
  return fig;
}

// ---------------------------------------------------------------- live decoding (one request in flight, the latest wins)
const live = { busy: false, next: null };
function decodeLive(z, codes = null) {
  // codes (a discrete run's pickers): decoded by /api/decode_codes, whose z then becomes the pinned z
  live.next = { z: z ? z.slice() : null, codes: codes ? codes.slice() : null, gen: S.gen };
  if (!live.busy) pumpLive();
}
async function pumpLive() {
  live.busy = true;
  while (live.next) {
    const job = live.next; live.next = null;
    if (job.gen !== S.gen) continue;
    const t0 = performance.now();
    try {
      const many = S.samples && S.meta.kind === "points" ? POINT_DRAWS : 1;
      // A discrete run decodes only codes: a z from the plane, a point or the pad snaps to its nearest codes.
      const snap = !job.codes && !!discrete();
      const body = job.codes ? { run: S.runId, codes: [...Array(many)].map(() => job.codes), c: condForApi() }
        : { run: S.runId, z: [...Array(many)].map(() => job.z), c: condForApi() };
      if (S.samples) Object.assign(body, { draws: true, seed: S.seed });
      const r = await api(job.codes || snap ? "/api/decode_codes" : "/api/decode", body);
      if (job.codes || snap) {
        if (job.gen !== S.gen) continue;
        job.z = r.z[0]; S.codesZ = job.z.slice();
        if (!S.hover) {   // a pinned z (a click, a point, the pad): the pickers take its codes
          if (snap) { S.codes = r.codes[0].slice(); syncCodes(); }
          S.z = job.z.slice(); drawPlane(); updateTraversal(); saveState();
        }
      }
      let other = null;
      if (S.compare && S.compare.sameZ) {
        const o = await api("/api/decode", { run: S.compare.id, z: [job.z], c: compareCond(condForApi()) });
        other = { mean: o.mean[0], std: o.std ? o.std[0] : null };
      }
      if (job.gen !== S.gen) continue;
      S.live = { z: job.z, mean: r.mean[0], std: r.std ? r.std[0] : null, x: r.x, other };
      drawOutput(S.live);
      S.decodes++; document.body.dataset.decodes = String(S.decodes);
      status(`decoded z in ${Math.round(performance.now() - t0)} ms`);
    } catch (err) {
      report(err);
    }
  }
  live.busy = false;
}

// ---------------------------------------------------------------- side by side: another run on the same z, or the same x
function compareCond(c) {
  const o = S.compare.meta;
  if (!o.condition) return null;
  return JSON.stringify(o.condition) === JSON.stringify(S.meta.condition) ? c : undefined;
}
async function setCompare(value, redraw) {
  if (value === "" || value === null || Number(value) === S.runId) {
    S.compare = null; $("compare-select").value = "";
  } else {
    const id = Number(value);
    const meta = await guarded(() => api(`/api/run?run=${id}`));
    if (!meta) return;
    const sameC = !meta.condition || JSON.stringify(meta.condition) === JSON.stringify(S.meta.condition);
    S.compare = { id, meta, sameZ: meta.latent_dim === S.meta.latent_dim && sameC, sameX: meta.x_dim === S.meta.x_dim && sameC };
    $("compare-select").value = String(id);
    if (!S.compare.sameZ && !S.compare.sameX) status(`${meta.name} shares neither the latent size nor the data width of ${S.meta.name}: nothing to compare`, true);
  }
  if (redraw) { decodeLive(S.hover || S.z); if (S.a !== null) selectPoint(S.a, { keepZ: true }); saveState(); }
}

// ---------------------------------------------------------------- selection: ellipse, reconstruction, neighbours
// Selecting a point makes its own condition the page's condition and pins z at its μ, so the live
// output, the traversal and the interpolation all start from the point's own reconstruction.
async function selectPoint(i, opts = {}) {
  const p = S.pts;
  $("selection").hidden = false;
  $("sel-name").textContent = `#${i}${pointLabel(i)}${S.meta.condition ? ` · c = ${condName(pointCond(i))}` : ""}`;
  if (S.meta.condition && !opts.keepZ) { S.cond = pointCond(i); showCondition(); if (S.meta.prior.trained) loadPrior(); }
  // 5 nearest neighbours of mu_i in the full latent space (Euclidean)
  const order = p.mu.map((m, j) => [j === i ? Infinity : dist2(m, p.mu[i]), j]).sort((a, b) => a[0] - b[0]);
  S.neighbours = order.slice(0, Math.min(5, p.mu.length - 1)).map((o) => o[1]);
  const info = [`μ = (${p.mu[i].map((v) => fixed(v, 2)).join(", ")})`];
  if (p.codes) info.push(`codes (${p.codes[i].slice(0, 16).join(", ")}${p.codes[i].length > 16 ? ", …" : ""}): the pickers take them`);
  else if (p.sigma) info.push(`σ = (${p.sigma[i].map((v) => v.toFixed(2)).join(", ")})`);
  else info.push("autoencoder: a code, no q(z|x) spread");
  for (const s of S.meta.point_stats || []) info.push(`${s.name} ${fmt(Number(p.stats[s.key][i].toPrecision(4)))}${s.unit ? " " + s.unit : ""}`);
  $("sel-info").textContent = info.join(" · ");
  paint($("sel-x"), p.x[i], null, { colour: "#444", size: 112 });
  const nb = $("neighbours"); nb.innerHTML = "";
  for (const j of S.neighbours) nb.append(thumb(p.x[j], null, `#${j} · ${Math.sqrt(dist2(p.mu[j], p.mu[i])).toFixed(2)}`, { colour: "#444" }));
  if (!opts.keepZ) { S.z = p.mu[i].slice(); S.hover = null; syncSliders(S.z); drawPlane(); decodeLive(S.z); updateTraversal(); saveState(); }
  $("sel-compare-fig").hidden = !(S.compare && S.compare.sameX);
  const r = await guarded(async () => {
    const own = await api("/api/decode", { run: S.runId, z: [p.mu[i]], c: pointCond(i) });
    let other = null;
    if (S.compare && S.compare.sameX) {
      const c = compareCond(pointCond(i));
      const enc = await api("/api/encode", { run: S.compare.id, x: [p.x[i]], c });
      const dec = await api("/api/decode", { run: S.compare.id, z: [enc.mu[0]], c });
      other = { mu: enc.mu[0], mean: dec.mean[0], std: dec.std ? dec.std[0] : null };
    }
    return { own, other };
  });
  if (r && S.a === i) {
    paint($("sel-recon"), r.own.mean[0], r.own.std ? r.own.std[0] : null, { size: 112 });
    S.recon = r.own.mean[0];
    if (r.other) {
      paint($("sel-compare"), r.other.mean, r.other.std, { size: 112 });
      $("sel-compare-cap").textContent = `${S.compare.meta.name}: μ = (${r.other.mu.slice(0, 4).map((v) => fixed(v, 2)).join(", ")}${r.other.mu.length > 4 ? ", …" : ""})`;
    }
    document.body.dataset.recon = String(i);
  }
}

// The condition along the interpolation: each end keeps its own; a label switches half way,
// a continuous value moves linearly.
function interpConds(ts) {
  const m = S.meta; if (!m.condition) return null;
  const ca = pointCond(S.a), cb = pointCond(S.b);
  if (m.condition.kind === "label") return ts.map((t) => (t < 0.5 ? ca : cb));
  return ts.map((t) => (Array.isArray(ca) ? ca.map((v, k) => v + t * (cb[k] - v)) : ca + t * (cb - ca)));
}

async function updateInterp() {
  if (S.a === null || S.b === null) return;
  const za = S.pts.mu[S.a], zb = S.pts.mu[S.b], sph = $("slerp").checked;
  const ts = [...Array(STEPS).keys()].map((k) => k / (STEPS - 1));
  const p = S.prior && S.prior.loc ? S.prior : null;
  S.interp = ts.map((t) => (sph ? slerp(za, zb, t, p && p.loc, p && p.scale) : lerp(za, zb, t)));
  const cs = interpConds(ts);
  $("interp").hidden = false;
  const m = S.meta;
  let note = `from #${S.a}${pointLabel(S.a)} to #${S.b}${pointLabel(S.b)}`;
  if (m.condition) {
    note += m.condition.kind === "label"
      ? (cs[0] === cs[STEPS - 1] ? `, decoded under ${condName(cs[0])}` : `, each end under its own condition: ${condName(cs[0])} until t = 0.5, then ${condName(cs[STEPS - 1])}`)
      : `, ${m.condition.name} moving linearly from ${fmt(Number(Number(cs[0]).toPrecision(4)))} to ${fmt(Number(Number(cs[STEPS - 1]).toPrecision(4)))}`;
  }
  if (sph) note += p ? "; spherical: the direction on the prior's sphere, the radius linearly" : "; spherical about 0";
  const radius = shellRadius(m.latent_dim);
  const outside = S.interp.map((z) => { const r = whitenedNorm(z); return r !== null && r > radius; });
  if (outside.some(Boolean)) note += `; red frames: outside the prior's 99.7 % region`;
  $("interp-note").textContent = note;
  drawPlane();
  const want = S.interp;
  // a discrete run: each step's nearest codes (the path jumps from code to code, as the model can only draw codes)
  const r = await guarded(() => api(discrete() ? "/api/decode_codes" : "/api/decode", { run: S.runId, z: want, c: cs }));
  if (!r || S.interp !== want) return;
  S.interpOut = r.mean;
  const strip = $("interp-strip"); strip.innerHTML = "";
  const path = m.kind === "points" ? r.mean : null;
  r.mean.forEach((row, k) => {
    const fig = thumb(row, r.std ? r.std[k] : null, `t=${ts[k].toFixed(2)}${m.condition && m.condition.kind === "label" && cs[0] !== cs[STEPS - 1] ? " · " + condName(cs[k]) : ""}`, { path });
    if (outside[k]) fig.classList.add("outside");
    strip.append(fig);
  });
  document.body.dataset.interp = String(r.mean.length);
}

let travTimer = null;
function updateTraversal() {   // debounced: sliders fire many events
  clearTimeout(travTimer);
  travTimer = setTimeout(runTraversal, 120);
}
async function runTraversal() {
  if (!S.meta) return;
  if (discrete()) { await runCodeTraversal(discrete()); return; }
  const d = S.trav, [lo, hi] = dimRange(d);
  const zs = [...Array(STEPS).keys()].map((k) => { const z = S.z.slice(); z[d] = lo + (hi - lo) * k / (STEPS - 1); return z; });
  const c = condForApi();
  const r = await guarded(() => api("/api/decode", { run: S.runId, z: zs, c }));
  if (!r) return;
  $("trav-note").textContent = `z${d} from ${fixed(lo, 1)} to ${fixed(hi, 1)}, the other dims at the pinned z${S.meta.condition ? `, decoded under ${condName(c)}` : ""}`;
  const strip = $("trav-strip"); strip.innerHTML = "";
  const path = S.meta.kind === "points" ? r.mean : null;
  r.mean.forEach((row, k) => strip.append(thumb(row, r.std ? r.std[k] : null, `z${d}=${fixed(zs[k][d], 1)}`, { path })));
  document.body.dataset.trav = String(r.mean.length);
}

// A discrete run's traversal: one group (or grid cell) through its codes, the others at the chosen codes.
const MAX_TRAV_CODES = 64;
async function runCodeTraversal(lat) {
  if (!S.codes) return;
  const g = Math.min(S.trav, lat.groups - 1), K = lat.classes, n = Math.min(K, MAX_TRAV_CODES);
  const word = lat.kind === "codes" ? "code" : "class", c = condForApi();
  const rows = [...Array(n).keys()].map((k) => { const r = S.codes.slice(); r[g] = k; return r; });
  const want = S.codes.slice();
  const r = await guarded(() => api("/api/decode_codes", { run: S.runId, codes: rows, c }));
  if (!r || !S.codes || S.codes.some((k, i) => k !== want[i])) return;
  $("trav-note").textContent = `${groupName(g, lat)} through ${n < K ? `its first ${n} of K = ${K}` : `each of its ${K}`} ` +
    `${word}s, the other ${lat.groups - 1 === 1 ? "group" : lat.grid ? "cells" : "groups"} at the chosen codes` +
    `${S.meta.condition ? `, decoded under ${condName(c)}` : ""}; framed: the chosen ${word}`;
  const strip = $("trav-strip"); strip.innerHTML = "";
  const path = S.meta.kind === "points" ? r.mean : null;
  r.mean.forEach((row, k) => {
    const fig = thumb(row, r.std ? r.std[k] : null, `${word} ${k}`, { path });
    if (k === want[g]) fig.classList.add("chosen");
    strip.append(fig);
  });
  document.body.dataset.trav = String(r.mean.length);
}
function groupName(g, lat) {   // a group of a gumbel / VQ-MLP run, or a cell of a VQ code grid
  if (lat.grid) return `cell row ${Math.floor(g / lat.grid[1]) + 1}, column ${(g % lat.grid[1]) + 1}`;
  return `group ${g}`;
}

// ---------------------------------------------------------------- the decoded latent grid (manifold)
async function drawGrid() {
  const n = Number($("grid-n").value), v = S.view, one = S.meta.latent_dim < 2;
  const zs = [], us = [];
  for (let i = 0; i < (one ? 1 : n); i++) for (let j = 0; j < n; j++) {   // rows top (high v) to bottom
    const u = v.x0 + (j + 0.5) * (v.x1 - v.x0) / n, w = one ? 0 : v.y1 - (i + 0.5) * (v.y1 - v.y0) / n;
    us.push([u, w]); zs.push(unproject(u, w, S.z));
  }
  const runId = S.runId, meta = S.meta;
  const r = await guarded(() => decodeMany(runId, meta, zs, condForApi()));
  if (!r) return;
  S.grid = { n, rows: one ? 1 : n, zs, us, mean: r.mean };
  paintGrid();
}
function paintGrid() {
  const g = S.grid, c = $("grid"); c.hidden = false;
  const room = Math.max(200, Math.min(420, ($("out-col").clientWidth || 420) - 30));
  if (S.meta.kind === "image") {
    const { H, W } = imageDims(), cell = Math.floor(room / g.n);
    const ctx = fitCanvas(c, cell * g.n, cell * g.rows); ctx.imageSmoothingEnabled = false;
    g.mean.forEach((row, k) => ctx.drawImage(imageCanvas(row), (k % g.n) * cell, Math.floor(k / g.n) * cell, cell, cell));
    void H; void W;
  } else {
    paintPoints(c, null, null, { size: room, mesh: g.rows > 1 ? { n: g.n, points: g.mean } : null, draws: g.rows > 1 ? null : g.mean, drawColour: SEL_B });
  }
  $("grid-note").textContent = `${g.n}${g.rows > 1 ? " × " + g.n : ""} z on a grid over the plane's view (${S.proj === "pca" ? "principal axes" : "z" + S.dims.join(", z")}), the other dims at the pinned z, decoded${S.meta.condition ? " under " + condName(condForApi()) : ""}` +
    (S.meta.kind === "points" ? ": each grid point's decoded mean, neighbours joined" : "");
  c.setAttribute("aria-label", $("grid-note").textContent);
  document.body.dataset.grid = String(g.mean.length);
}

// ---------------------------------------------------------------- samples from the prior (under the condition c)
async function drawCloud() {
  const m = S.meta, n = Math.min(Number($("cloud-n").value), m.max_rows), c = condForApi();
  S.seed += 1;
  const seed = S.seed;
  const r = await guarded(() => api("/api/prior", { run: S.runId, n, seed, c, draws: m.kind === "points" }));
  if (!r) return;
  S.cloud = { z: r.z, mean: r.mean, x: r.x, n, c, seed };
  paintCloud(); drawPlane(); saveState();
}
function paintCloud() {
  const cl = S.cloud, m = S.meta, c = $("cloud"); c.hidden = false;
  const room = Math.max(200, Math.min(420, ($("out-col").clientWidth || 420) - 30));
  let note;
  if (m.kind === "image") {
    const k = Math.ceil(Math.sqrt(Math.min(cl.mean.length, 100))), cell = Math.floor(room / k);
    const ctx = fitCanvas(c, cell * k, cell * k); ctx.imageSmoothingEnabled = false;
    cl.mean.slice(0, k * k).forEach((row, i) => ctx.drawImage(imageCanvas(row), (i % k) * cell, Math.floor(i / k) * cell, cell, cell));
    note = `${Math.min(cl.n, k * k)} of ${cl.n} decoder means at z ~ p(z)${m.condition ? ", under " + condName(cl.c) : ""} (seed ${cl.seed})`;
  } else {
    let hl = null;
    if (m.condition) {
      if (m.condition.kind === "label") hl = (i) => pointCond(i) === cl.c;
      else { const span = m.condition.high - m.condition.low; hl = (i) => Math.abs(pointCond(i) - cl.c) <= 0.05 * span; }
    }
    paintPoints(c, null, null, { size: room, draws: cl.x || cl.mean, highlight: hl });
    note = `${cl.n} samples x ~ p(x|z), z ~ p(z) (seed ${cl.seed}), drawn as dark rings${m.condition ? `, under ${condName(cl.c)}; the data with that condition drawn stronger` : ""}; their z are the dark rings on the plane`;
  }
  $("cloud-note").textContent = note;
  c.setAttribute("aria-label", note);
  document.body.dataset.cloud = String(cl.n);
}

// ---------------------------------------------------------------- export: PNG, SVG, CSV, a link
function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
function fileStem() { return `${S.meta.name.replace(/[^\w.-]+/g, "_")}-${S.proj === "pca" ? "pca" : "z" + S.dims.join("-z")}`; }

function exportPng() {
  const dpr = window.devicePixelRatio || 1, pad = 10 * dpr, plane = $("plane");
  const rows = [];
  if (!$("interp").hidden) rows.push([...$("interp-strip").querySelectorAll("canvas")]);
  rows.push([...$("trav-strip").querySelectorAll("canvas")]);
  const tw = (THUMB + 4) * dpr;
  const width = Math.max(plane.width, ...rows.map((r) => r.length * tw)) + 2 * pad;
  const height = 28 * dpr + plane.height + rows.reduce((s, r) => s + (r.length ? THUMB * dpr + 22 * dpr : 0), 0) + 2 * pad;
  const out = document.createElement("canvas"); out.width = width; out.height = height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
  ctx.fillStyle = "#1d2433"; ctx.font = `${13 * dpr}px sans-serif`;
  ctx.fillText(`${S.meta.name}: latent plane, coloured by ${$("colour-by").selectedOptions[0].text}`, pad, pad + 14 * dpr);
  let y = pad + 24 * dpr;
  ctx.drawImage(plane, pad, y); y += plane.height + 8 * dpr;
  const names = !$("interp").hidden ? ["interpolation: " + $("interp-note").textContent, "traversal: " + $("trav-note").textContent] : ["traversal: " + $("trav-note").textContent];
  rows.forEach((r, k) => {
    if (!r.length) return;
    ctx.fillStyle = "#4f586b"; ctx.font = `${11 * dpr}px sans-serif`; ctx.fillText(names[k].slice(0, 140), pad, y + 10 * dpr);
    y += 14 * dpr;
    r.forEach((cv, i) => ctx.drawImage(cv, pad + i * tw, y, THUMB * dpr, THUMB * dpr));
    y += THUMB * dpr + 8 * dpr;
  });
  out.toBlob((blob) => { download(`${fileStem()}.png`, blob); document.body.dataset.exported = "png"; }, "image/png");
}

function svgEsc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;"); }
function exportSvg() {
  const [w, h] = S.planeSize, v = S.view, one = S.meta.latent_dim < 2, out = [];
  const n2 = (x) => Number(x.toFixed(2));
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h + 30}" viewBox="0 0 ${w} ${h + 30}" font-family="sans-serif">`);
  out.push(`<title>${svgEsc(S.meta.name)}: latent plane</title>`);
  out.push(`<rect width="${w}" height="${h + 30}" fill="#fff"/><g transform="translate(0,22)">`);
  out.push(`<rect width="${w}" height="${h}" fill="${PLANE_BG}"/>`);
  out.push(`<rect x="${M}" y="8" width="${w - M - 8}" height="${h - M - 8}" fill="none" stroke="#c3c8d3"/>`);
  for (const t of ticks(v.x0, v.x1)) { const [px] = toPx(v, w, h, t, v.y0); out.push(`<text x="${n2(px)}" y="${h - M + 14}" font-size="11" fill="${AXIS_TEXT}" text-anchor="middle">${svgEsc(fmt(Number(t.toPrecision(3))))}</text>`); }
  if (!one) for (const t of ticks(v.y0, v.y1)) { const [, py] = toPx(v, w, h, v.x0, t); out.push(`<text x="${M - 4}" y="${n2(py + 4)}" font-size="11" fill="${AXIS_TEXT}" text-anchor="end">${svgEsc(fmt(Number(t.toPrecision(3))))}</text>`); }
  out.push(`<text x="${(w + M) / 2}" y="${h - 6}" font-size="11" fill="${AXIS_TEXT}" text-anchor="middle">${svgEsc(axisName(0))}</text>`);
  if (!one) out.push(`<text transform="translate(11,${(h - M) / 2}) rotate(-90)" font-size="11" fill="${AXIS_TEXT}" text-anchor="middle">${svgEsc(axisName(1))}</text>`);
  out.push(`<clipPath id="inner"><rect x="${M}" y="8" width="${w - M - 8}" height="${h - M - 8}"/></clipPath><g clip-path="url(#inner)">`);
  if (S.showPrior && S.prior && S.prior.loc && !one) {
    const g = planeGaussian(S.prior.loc, S.prior.scale);
    for (const k of [1, 2, 3]) { const e = gaussEllipse(g.mean, g.cov, k); out.push(`<ellipse class="prior" cx="${n2(e.cx)}" cy="${n2(e.cy)}" rx="${n2(e.rx)}" ry="${n2(e.ry)}" transform="rotate(${n2(e.angle * 180 / Math.PI)} ${n2(e.cx)} ${n2(e.cy)})" fill="none" stroke="${PRIOR_INK}" ${k > 1 ? 'stroke-dasharray="5 4"' : ""}/>`); }
  }
  out.push('<g class="points">');
  S.pts.mu.forEach((m, i) => { const [px, py] = planeXY(m, i); out.push(`<circle cx="${n2(px)}" cy="${n2(py)}" r="2.2" fill="${pointColour(i)}"><title>#${i}${svgEsc(pointLabel(i))}</title></circle>`); });
  out.push("</g>");
  if (S.interp) out.push(`<polyline fill="none" stroke="${SEL_B}" stroke-width="2" points="${S.interp.map((z) => planeXY(z).map(n2).join(",")).join(" ")}"/>`);
  for (const [i, col] of [[S.a, SEL_A], [S.b, SEL_B]]) if (i !== null) { const [px, py] = planeXY(S.pts.mu[i], i); out.push(`<circle cx="${n2(px)}" cy="${n2(py)}" r="6" fill="none" stroke="${col}" stroke-width="2"/>`); }
  const [zx, zy] = planeXY(S.z);
  out.push(`<path d="M${n2(zx - 7)} ${n2(zy)}h14M${n2(zx)} ${n2(zy - 7)}v14" stroke="#000" stroke-width="1.5"/>`);
  out.push("</g></g>");
  out.push(`<text x="8" y="16" font-size="13" fill="#1d2433">${svgEsc(`${S.meta.name}: coloured by ${$("colour-by").selectedOptions[0].text}`)}</text>`);
  out.push("</svg>");
  download(`${fileStem()}.svg`, new Blob([out.join("\n")], { type: "image/svg+xml" }));
  document.body.dataset.exported = "svg";
}

function csvCell(v) { const s = String(v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; }
function exportCsv() {
  const D = S.meta.latent_dim, p = S.pts;
  const head = ["what", "index", "label", "condition", ...[...Array(D).keys()].map((d) => `z${d}`), ...(p.sigma ? [...Array(D).keys()].map((d) => `sigma${d}`) : [])];
  const rows = [head];
  const row = (what, idx, z, sigma, c, label) => rows.push([what, idx, label, c === null || c === undefined ? "" : Array.isArray(c) ? c.join(";") : c, ...z, ...(p.sigma ? (sigma || new Array(D).fill("")) : [])]);
  row("pinned z", "", S.z, null, condForApi(), "");
  if (S.hover) row("cursor z", "", S.hover, null, condForApi(), "");
  for (const [name, i] of [["selected", S.a], ["interpolation end", S.b]]) if (i !== null) row(name, i, p.mu[i], p.sigma ? p.sigma[i] : null, pointCond(i), p.labels ? (S.meta.labels ? S.meta.labels[p.labels[i]] : p.labels[i]) : "");
  if (S.interp) S.interp.forEach((z, k) => row(`interpolation t=${(k / (STEPS - 1)).toFixed(2)}`, k, z, null, "", ""));
  if (S.cloud) S.cloud.z.forEach((z, k) => row(`prior sample (seed ${S.cloud.seed})`, k, z, null, S.cloud.c, ""));
  const text = rows.map((r) => r.map(csvCell).join(",")).join("\n") + "\n";
  download(`${fileStem()}-z.csv`, new Blob([text], { type: "text/csv" }));
  document.body.dataset.exported = "csv";
}

async function copyLink() {
  saveState();
  const url = location.href.split("#")[0] + stateToHash();
  try { await navigator.clipboard.writeText(url); status("link to this view copied"); }
  catch (_) { status(`link to this view: ${url}`); }
}

// ---------------------------------------------------------------- drawing pad (image runs)
const PAD = 280;
function clearPad() {
  const ctx = fitCanvas($("pad"), PAD, PAD, { willReadFrequently: true });
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, PAD, PAD);
  const r = fitCanvas($("pad-recon"), 112, 112); r.fillStyle = "#000"; r.fillRect(0, 0, 112, 112);
  $("pad-info").textContent = "";
  S.padInk = false;
}

function bindPad() {
  const c = $("pad");
  let down = false, last = null;
  const at = (e) => { const r = c.getBoundingClientRect(); return [(e.clientX - r.left) * PAD / r.width, (e.clientY - r.top) * PAD / r.height]; };
  const stroke = (p) => {
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.strokeStyle = "#fff"; ctx.fillStyle = "#fff"; ctx.lineWidth = 22; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...(last || p)); ctx.lineTo(...p); ctx.stroke();
    last = p; S.padInk = true;
  };
  c.addEventListener("pointerdown", (e) => { down = true; last = null; try { c.setPointerCapture(e.pointerId); } catch (_) { /* synthetic */ } stroke(at(e)); });
  c.addEventListener("pointermove", (e) => { if (down) stroke(at(e)); });
  const up = () => { if (!down) return; down = false; last = null; encodePad(); };
  c.addEventListener("pointerup", up);
  c.addEventListener("pointercancel", up);
  $("pad-clear").addEventListener("click", () => { clearPad(); S.drawn = null; drawPlane(); });
}

// Downsample the pad to the run's H×W (area average) and replicate over the channels.
function padPixels() {
  const { C, H, W } = imageDims(), c = $("pad");
  const src = c.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, c.width, c.height).data;
  const out = new Array(C * H * W).fill(0);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    const ya = Math.floor(y * c.height / H), yb = Math.max(ya + 1, Math.floor((y + 1) * c.height / H));
    const xa = Math.floor(x * c.width / W), xb = Math.max(xa + 1, Math.floor((x + 1) * c.width / W));
    let s = 0;
    for (let yy = ya; yy < yb; yy++) for (let xx = xa; xx < xb; xx++) s += src[4 * (yy * c.width + xx)];
    const v = s / ((yb - ya) * (xb - xa) * 255);
    for (let ch = 0; ch < C; ch++) out[ch * H * W + y * W + x] = Number(v.toFixed(4));
  }
  return out;
}

async function encodePad() {
  if (!S.meta || S.meta.kind !== "image" || !S.padInk) return;
  const x = padPixels(), c = condForApi();
  const r = await guarded(async () => {
    const enc = await api("/api/encode", { run: S.runId, x: [x], c });
    const dec = await api("/api/decode", { run: S.runId, z: [enc.mu[0]], c });
    return { enc, dec };
  });
  if (!r) return;
  S.drawn = { mu: r.enc.mu[0], sigma: r.enc.sigma ? r.enc.sigma[0] : null };
  paintImage($("pad-recon"), r.dec.mean[0], 112, 112);
  $("pad-info").textContent = `encoded: μ = (${S.drawn.mu.slice(0, 4).map((v) => fixed(v, 2)).join(", ")}${S.drawn.mu.length > 4 ? ", …" : ""})`;
  document.body.dataset.padEncoded = String((Number(document.body.dataset.padEncoded) || 0) + 1);
  setZ(S.drawn.mu.slice());
}

init();
