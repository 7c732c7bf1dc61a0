// vaelab latent explorer: plain JavaScript, canvas drawing, no external resources.
// The server contract (GET /api/runs, /api/run, /api/points; POST /api/decode, /api/encode) is in
// src/vaelab/explorer/app.py. Every API error is shown in the status line.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd", "#e6550d"];
const PLANE_BG = "#fbfbfd";
const STEPS = 10;          // interpolation and traversal steps
const THUMB = 64;          // strip thumbnail size (px)

const S = {                // the page state
  gen: 0,                  // bumped on run switch: answers for an older run are dropped
  runId: 0, meta: null, pts: null,
  z: [],                   // the current latent vector (sliders + cursor)
  dims: [0, 1],            // latent dims on the plane's x and y axes
  cond: null,              // current condition: label index, number, or null
  a: null, b: null,        // selected point indices (b: shift-click)
  drawn: null,             // {mu, sigma} of the drawing pad's encoding
  interp: null,            // [[z...] * STEPS] latent path of the interpolation
  view: null,              // plane bounds {x0, x1, y0, y1}
  dataView: null,          // data-space bounds (2-D data)
  live: null,              // last decoded {z, mean, std}
  decodes: 0,              // count of live decodes drawn (tests read it)
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
function gaussian() {      // Box-Muller: one standard normal draw
  let u = 0; while (u === 0) u = Math.random();
  const v = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}
function lerp(a, b, t) { return a.map((ai, i) => ai + t * (b[i] - ai)); }
function slerp(a, b, t) {  // spherical interpolation (Shoemake); linear when a and b are (anti)parallel
  const na = Math.hypot(...a), nb = Math.hypot(...b);
  if (na === 0 || nb === 0) return lerp(a, b, t);
  let cos = a.reduce((s, ai, i) => s + ai * b[i], 0) / (na * nb);
  cos = Math.min(1, Math.max(-1, cos));
  const om = Math.acos(cos), so = Math.sin(om);
  if (so < 1e-6) return lerp(a, b, t);
  const wa = Math.sin((1 - t) * om) / so, wb = Math.sin(t * om) / so;
  return a.map((ai, i) => wa * ai + wb * b[i]);
}
function fmt(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toFixed(4).replace(/0+$/, "").replace(/\.$/, "");
}
function viridis(t) {      // a short perceptual ramp for colouring by a data coordinate
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i;
  const c = stops[i].map((s, k) => Math.round(s + f * (stops[i + 1][k] - s)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// ---------------------------------------------------------------- run loading
async function init() {
  window.addEventListener("error", (e) => status(`page error: ${e.message}`, true));
  window.addEventListener("unhandledrejection", (e) => report(e.reason));
  bindControls();
  const runs = await guarded(() => api("/api/runs"));
  if (!runs) return;
  if (!runs.runs.length) { status("no runs were given to vaelab explore", true); return; }
  const sel = $("run-select");
  sel.innerHTML = "";
  for (const r of runs.runs) sel.add(new Option(`${r.id}: ${r.name}`, r.id));
  $("run-pick").hidden = runs.runs.length < 2;
  await loadRun(runs.runs[0].id);
}

async function loadRun(id) {
  S.gen++;
  clearTimeout(travTimer);
  const runId = Number(id);
  status("loading run…");
  document.body.dataset.ready = "";
  const got = await guarded(async () => {
    const meta = await api(`/api/run?run=${runId}`);
    const pts = await api(`/api/points?run=${runId}`);
    return { meta, pts };
  });
  if (!got) return;
  // S.runId changes together with S.meta: a request built meanwhile matches the run it names
  S.runId = runId; S.meta = got.meta; S.pts = got.pts;
  S.a = S.b = null; S.drawn = null; S.interp = null; S.live = null;
  const m = S.meta;
  $("run-title").textContent = `${m.name} · ${m.family.toUpperCase()} · ${m.kind} · latent ${m.latent_dim}`;
  const order = m.dim_order && m.dim_order.length === m.latent_dim ? m.dim_order : [...Array(m.latent_dim).keys()];
  S.order = order;
  S.dims = [order[0], m.latent_dim > 1 ? order[1] : order[0]];
  S.cond = m.condition ? (m.condition.kind === "label" ? 0 : (m.condition.low + m.condition.high) / 2) : null;
  S.z = restZ();
  buildDimSelects(); buildSliders(); buildCondition(); buildSidePanel(); buildColourSelect();
  $("pad-box").hidden = m.kind !== "image";
  $("prior-sample").textContent = m.standard_prior ? "prior sample" : "sample (Gaussian fit to codes)";
  $("selection").hidden = true; $("interp").hidden = true;
  clearPad();
  computeViews();
  drawLegend();
  drawPlane();
  drawOutput(null);
  status(`${m.name}: ${S.pts.mu.length} held-out points encoded`);
  document.body.dataset.ready = "1";
  decodeLive(S.z);
  updateTraversal();
}

// The resting z: the prior mean for a VAE, the mean code for an autoencoder.
function restZ() {
  if (S.meta.standard_prior || !S.pts.mu.length) return new Array(S.meta.latent_dim).fill(0);
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
  const st = codeStats();
  let lo = S.meta.standard_prior ? -3.5 : Infinity, hi = S.meta.standard_prior ? 3.5 : -Infinity;
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

// ---------------------------------------------------------------- controls
function bindControls() {
  $("run-select").addEventListener("change", (e) => loadRun(e.target.value));
  $("dim-x").addEventListener("change", (e) => { S.dims[0] = Number(e.target.value); computeViews(); drawPlane(); });
  $("dim-y").addEventListener("change", (e) => { S.dims[1] = Number(e.target.value); computeViews(); drawPlane(); });
  $("trav-dim").addEventListener("change", updateTraversal);
  $("colour-by").addEventListener("change", (e) => { S.colourBy = e.target.value; drawLegend(); redrawAll(); });
  $("slerp").addEventListener("change", updateInterp);
  $("prior-sample").addEventListener("click", () => {
    const st = codeStats();
    setZ(S.z.map((_, d) => (S.meta.standard_prior ? gaussian() : st.mean[d] + st.std[d] * gaussian())));
  });
  $("reset").addEventListener("click", () => {
    S.a = S.b = null; S.interp = null; S.drawn = null;
    $("selection").hidden = true; $("interp").hidden = true;
    clearPad();
    setZ(restZ());
  });
  $("cond-label").addEventListener("change", (e) => { S.cond = Number(e.target.value); conditionChanged(); });
  $("cond-value").addEventListener("input", (e) => {
    S.cond = Number(e.target.value); $("cond-show").textContent = fmt(S.cond); conditionChanged();
  });
  const plane = $("plane");
  plane.addEventListener("mousemove", (e) => {
    const p = planeToLatent(e); if (!p) return;
    const z = S.z.slice(); z[S.dims[0]] = p[0]; if (S.meta.latent_dim > 1) z[S.dims[1]] = p[1];
    S.hover = z;
    drawPlane();
    syncSliders(z);
    decodeLive(z);
  });
  plane.addEventListener("mouseleave", () => { S.hover = null; drawPlane(); syncSliders(S.z); decodeLive(S.z); });
  plane.addEventListener("click", onPlaneClick);
  bindPad();
}

function buildDimSelects() {
  const m = S.meta;
  for (const [id, axis] of [["dim-x", 0], ["dim-y", 1], ["trav-dim", 0]]) {
    const sel = $(id); sel.innerHTML = "";
    for (const d of S.order) sel.add(new Option(dimLabel(d), d));
    sel.value = String(id === "trav-dim" ? S.order[0] : S.dims[axis]);
  }
  $("dim-y-label").hidden = m.latent_dim < 2;
}

function dimLabel(d) {
  const m = S.meta, kl = m.kl_per_dim ? ` · KL ${fmt(m.kl_per_dim[d])}` : "";
  const off = m.active && m.active[d] === false ? " · inactive" : "";
  return `z${d}${kl}${off}`;
}

function buildSliders() {
  const box = $("sliders"); box.innerHTML = "";
  S.sliders = {};
  for (const d of S.order) {
    const [lo, hi] = dimRange(d);
    const name = document.createElement("span");
    name.textContent = S.meta.kl_per_dim ? `z${d} KL ${fmt(S.meta.kl_per_dim[d])}` : `z${d}`;
    if (S.meta.active && S.meta.active[d] === false) name.className = "inactive";
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: lo, max: hi, step: (hi - lo) / 400, value: S.z[d] });
    input.dataset.dim = d;
    input.setAttribute("aria-label", `latent dimension ${d}`);
    const out = document.createElement("output"); out.textContent = S.z[d].toFixed(2);
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
    if (document.activeElement !== s.input) s.input.value = z[d];
    s.out.textContent = z[d].toFixed(2);
  }
}

function setZ(z) {
  S.z = z; syncSliders(z); drawPlane(); decodeLive(z); updateTraversal();
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
    sel.value = String(S.cond);
  } else {
    const r = $("cond-value");
    Object.assign(r, { min: c.low, max: c.high, step: (c.high - c.low) / 200 || 0.01, value: S.cond });
    r.setAttribute("aria-label", c.name);
    $("cond-show").textContent = `${c.name} = ${fmt(S.cond)}`;
  }
}

function conditionChanged() {
  if (S.meta.condition.kind === "continuous") $("cond-show").textContent = `${S.meta.condition.name} = ${fmt(S.cond)}`;
  decodeLive(S.hover || S.z); updateTraversal(); updateInterp();
  if (S.drawn) encodePad();
}

function buildSidePanel() {
  const m = S.meta;
  const mt = $("metrics"); mt.innerHTML = "";
  const rows = [["family", m.family], ["data", `${m.kind}, ${m.x_dim} dims${m.image_shape ? ` (${m.image_shape.join("×")})` : ""}`],
    ["latent", `${m.latent_dim} dims, ${m.active ? m.active.filter(Boolean).length : "?"} active`],
    ["observation noise", m.noise ? "Gaussian" : "none"]];
  for (const [k, v] of Object.entries(m.metrics || {})) rows.push([k, v]);
  for (const [k, v] of rows) addRow(mt, k, v);
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

// ---------------------------------------------------------------- colours
// Colour the points by their label, their condition, a data coordinate (2-D data) or their ink (images).
function colourChoices() {
  const p = S.pts, m = S.meta, out = [];
  if (p.labels) out.push(["label", "label"]);
  if (p.c && m.condition && m.condition.kind === "continuous") out.push(["c", m.condition.name]);
  if (m.kind === "points") for (let k = 0; k < Math.min(m.x_dim, 4); k++) out.push([`x${k}`, `data x${k}`]);
  else out.push(["ink", "mean pixel"]);
  return out;
}

function colourValue(i) {      // the number a continuous colouring maps onto the ramp
  const by = S.colourBy, p = S.pts;
  if (by === "c") { const c = pointCond(i); return Array.isArray(c) ? c[0] : c; }
  if (by === "ink") { const x = p.x[i]; let s = 0; for (const v of x) s += v; return s / x.length; }
  return p.x[i][Number(by.slice(1))];
}

function pointColour(i) {
  const p = S.pts;
  if (S.colourBy === "label") return PALETTE[p.labels[i] % PALETTE.length];
  if (!S.colourRange) {
    let lo = Infinity, hi = -Infinity;
    for (let j = 0; j < p.x.length; j++) { const v = colourValue(j); lo = Math.min(lo, v); hi = Math.max(hi, v); }
    S.colourRange = [lo, hi];
  }
  const [lo, hi] = S.colourRange;
  return viridis(hi > lo ? (colourValue(i) - lo) / (hi - lo) : 0.5);
}

function buildColourSelect() {
  const sel = $("colour-by"); sel.innerHTML = "";
  for (const [v, name] of colourChoices()) sel.add(new Option(name, v));
  S.colourBy = sel.value;
}

function drawLegend() {
  S.colourRange = null;
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
  } else if (S.pts.x.length) {
    pointColour(0);   // fills S.colourRange
    const [lo, hi] = S.colourRange;
    for (const [t, v] of [[0, lo], [1, hi]]) {
      const s = document.createElement("span");
      s.style.setProperty("--c", viridis(t));
      s.textContent = `${$("colour-by").selectedOptions[0].text} ${fmt(Number(v.toPrecision(3)))}`;
      box.append(s);
    }
  }
}

// ---------------------------------------------------------------- the latent plane
function computeViews() {
  const [dx, dy] = S.dims;
  const [x0, x1] = dimRange(dx);
  const [y0, y1] = S.meta.latent_dim > 1 ? dimRange(dy) : [-1, 1];
  S.view = { x0, x1, y0, y1 };
  $("plane").height = S.meta.latent_dim > 1 ? 520 : 200;   // a 1-D latent is a line: no tall empty plane
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
  // 1-D latent: points spread on a thin band around the line so they stay distinguishable
  S.jitter = S.pts.mu.map((_, i) => (((i * 2654435761) % 1000) / 1000 - 0.5) * 0.25);
}

const M = 34;              // plane margin (px) for axes
function toPx(v, w, h, u, vv) {
  return [M + (u - v.x0) / (v.x1 - v.x0) * (w - M - 8), 8 + (v.y1 - vv) / (v.y1 - v.y0) * (h - M - 8)];
}
function latentXY(z, i) {  // plane coordinates of a latent vector (i: point index for 1-D jitter)
  if (S.meta.latent_dim > 1) return [z[S.dims[0]], z[S.dims[1]]];
  return [z[S.dims[0]], i === undefined ? 0 : S.jitter[i]];
}

function planeToLatent(e) {
  const c = $("plane"), r = c.getBoundingClientRect();
  const px = (e.clientX - r.left) * c.width / r.width, py = (e.clientY - r.top) * c.height / r.height;
  const v = S.view; if (!v) return null;
  const u = v.x0 + (px - M) / (c.width - M - 8) * (v.x1 - v.x0);
  const w = v.y1 - (py - 8) / (c.height - M - 8) * (v.y1 - v.y0);
  return [u, w, px, py];
}

function drawAxes(ctx, v, w, h, xName, yName) {
  ctx.strokeStyle = "#c3c8d3"; ctx.fillStyle = "#5b6478"; ctx.lineWidth = 1; ctx.font = "11px sans-serif";
  ctx.strokeRect(M, 8, w - M - 8, h - M - 8);
  const ticks = (a, b) => { const step = niceStep((b - a) / 5); const out = []; for (let t = Math.ceil(a / step) * step; t <= b; t += step) out.push(Math.abs(t) < step / 1e6 ? 0 : t); return out; };
  ctx.textAlign = "center";
  for (const t of ticks(v.x0, v.x1)) { const [px] = toPx(v, w, h, t, v.y0); ctx.fillText(fmt(Number(t.toPrecision(3))), px, h - M + 14); }
  ctx.textAlign = "right";
  if (yName) for (const t of ticks(v.y0, v.y1)) { const [, py] = toPx(v, w, h, v.x0, t); ctx.fillText(fmt(Number(t.toPrecision(3))), M - 4, py + 4); }
  ctx.textAlign = "center"; ctx.fillText(xName, (w + M) / 2, h - 4);
  if (yName) { ctx.save(); ctx.translate(10, (h - M) / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(yName, 0, 0); ctx.restore(); }
}
function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

function ellipse(ctx, v, w, h, centre, radii, k, colour, dash) {
  const [cx, cy] = toPx(v, w, h, centre[0], centre[1]);
  const rx = k * radii[0] / (v.x1 - v.x0) * (w - M - 8), ry = k * radii[1] / (v.y1 - v.y0) * (h - M - 8);
  ctx.beginPath(); ctx.setLineDash(dash || []);
  ctx.ellipse(cx, cy, Math.max(rx, 0.5), Math.max(ry, 0.5), 0, 0, 2 * Math.PI);
  ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.stroke(); ctx.setLineDash([]);
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

function drawPlane() {
  const c = $("plane"), ctx = c.getContext("2d"), w = c.width, h = c.height, v = S.view;
  ctx.fillStyle = PLANE_BG; ctx.fillRect(0, 0, w, h);
  if (!v) return;
  const one = S.meta.latent_dim < 2;
  drawAxes(ctx, v, w, h, dimLabel(S.dims[0]), one ? "" : dimLabel(S.dims[1]));
  if (one) {   // the 1-D latent's line
    const [ax, ay] = toPx(v, w, h, v.x0, 0), [bx] = toPx(v, w, h, v.x1, 0);
    ctx.strokeStyle = "#d5d9e2"; ctx.beginPath(); ctx.moveTo(ax, ay); ctx.lineTo(bx, ay); ctx.stroke();
  }
  ctx.save(); ctx.beginPath(); ctx.rect(M, 8, w - M - 8, h - M - 8); ctx.clip();
  ctx.globalAlpha = 0.75;
  const mu = S.pts.mu, nb = S.neighbours || [];
  for (let i = 0; i < mu.length; i++) {
    const [u, vv] = latentXY(mu[i], i), [px, py] = toPx(v, w, h, u, vv);
    ctx.fillStyle = pointColour(i); ctx.fillRect(px - 2, py - 2, 4, 4);
  }
  ctx.globalAlpha = 1;
  if (S.a !== null) for (const j of nb) { const [u, vv] = latentXY(mu[j], j); const [px, py] = toPx(v, w, h, u, vv); marker(ctx, px, py, "#444", 5); }
  for (const [i, col] of [[S.a, "#d62728"], [S.b, "#1f4fd6"]]) {
    if (i === null) continue;
    const [u, vv] = latentXY(mu[i], i);
    if (S.pts.sigma) {
      const sg = S.pts.sigma[i], r = [sg[S.dims[0]], one ? 0 : sg[S.dims[1]]];
      ellipse(ctx, v, w, h, [u, vv], r, 1, col); ellipse(ctx, v, w, h, [u, vv], r, 2, col, [4, 3]);
    }
    const [px, py] = toPx(v, w, h, u, vv); marker(ctx, px, py, col, 6);
  }
  if (S.interp) {
    ctx.strokeStyle = "#1f4fd6"; ctx.lineWidth = 2; ctx.beginPath();
    S.interp.forEach((z, k) => { const [u, vv] = latentXY(z); const [px, py] = toPx(v, w, h, u, one ? 0 : vv); k ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
    ctx.fillStyle = "#1f4fd6";
    for (const z of S.interp) { const [u, vv] = latentXY(z); const [px, py] = toPx(v, w, h, u, one ? 0 : vv); ctx.fillRect(px - 2.5, py - 2.5, 5, 5); }
  }
  if (S.drawn) {
    const [u, vv] = latentXY(S.drawn.mu);
    if (S.drawn.sigma) { const sg = S.drawn.sigma, r = [sg[S.dims[0]], one ? 0 : sg[S.dims[1]]]; ellipse(ctx, v, w, h, [u, vv], r, 1, "#e377c2"); ellipse(ctx, v, w, h, [u, vv], r, 2, "#e377c2", [4, 3]); }
    const [px, py] = toPx(v, w, h, u, vv); marker(ctx, px, py, "#e377c2", 9, "star");
  }
  // the current z (pinned) and the cursor's z
  const [pu, pv] = latentXY(S.z); const [px, py] = toPx(v, w, h, pu, pv);
  ctx.strokeStyle = "#000"; ctx.lineWidth = 1.5; ctx.beginPath();
  ctx.moveTo(px - 7, py); ctx.lineTo(px + 7, py); ctx.moveTo(px, py - 7); ctx.lineTo(px, py + 7); ctx.stroke();
  if (S.hover) { const [hu, hv] = latentXY(S.hover); const [hx, hy] = toPx(v, w, h, hu, hv); marker(ctx, hx, hy, "#000", 4); }
  ctx.restore();
}

function nearestPoint(px, py) {
  const c = $("plane"), v = S.view; let best = -1, bd = 100;  // within 10 px
  S.pts.mu.forEach((m, i) => {
    const [u, vv] = latentXY(m, i); const [qx, qy] = toPx(v, c.width, c.height, u, vv);
    const d = (qx - px) ** 2 + (qy - py) ** 2; if (d < bd) { bd = d; best = i; }
  });
  return best;
}

function onPlaneClick(e) {
  const p = planeToLatent(e); if (!p) return;
  const i = nearestPoint(p[2], p[3]);
  if (i < 0) {   // empty space: pin the cursor's z
    const z = S.z.slice(); z[S.dims[0]] = p[0]; if (S.meta.latent_dim > 1) z[S.dims[1]] = p[1];
    setZ(z); return;
  }
  if (e.shiftKey && S.a !== null && i !== S.a) { S.b = i; updateInterp(); }
  else { S.a = i; S.b = null; S.interp = null; $("interp").hidden = true; selectPoint(i); }
  drawPlane();
}

// Everything drawn with the point colours, after the colouring changed.
function redrawAll() {
  drawPlane();
  drawOutput(S.live);
  if (S.a !== null) selectPoint(S.a);
  if (S.b !== null) updateInterp();
  updateTraversal();
}

// ---------------------------------------------------------------- drawing decoded outputs
function imageDims() {
  const s = S.meta.image_shape; if (!s) return null;
  return s.length === 3 ? { C: s[0], H: s[1], W: s[2] } : { C: 1, H: s[0], W: s[1] };
}

// Draw a flat pixel vector (values in [0,1], C·H·W) scaled onto a canvas.
function paintImage(canvas, flat) {
  const { C, H, W } = imageDims(), ctx = canvas.getContext("2d");
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
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
}

// 2-D data: the data scatter, faded, with the decoded mean and its noise ellipses on top.
function paintPoints(canvas, mean, std, opts = {}) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, v = S.dataView;
  ctx.fillStyle = PLANE_BG; ctx.fillRect(0, 0, w, h);
  const small = w < 150, m = small ? 2 : M, top = small ? 2 : 8;
  const iw = w - m - top, ih = h - m - top;   // inner plot size (px)
  const P = (x, y) => [m + (x - v.x0) / (v.x1 - v.x0) * iw, top + (v.y1 - y) / (v.y1 - v.y0) * ih];
  if (!small) drawAxes(ctx, v, w, h, "x₀", "x₁");
  ctx.globalAlpha = small ? 0.25 : 0.35;
  S.pts.x.forEach((r, i) => { const [px, py] = P(r[0], r.length > 1 ? r[1] : 0); ctx.fillStyle = pointColour(i); ctx.fillRect(px - 1, py - 1, small ? 2 : 3, small ? 2 : 3); });
  ctx.globalAlpha = 1;
  if (opts.path) {
    ctx.strokeStyle = "#1f4fd6"; ctx.lineWidth = 1.5; ctx.beginPath();
    opts.path.forEach((r, k) => { const [px, py] = P(r[0], r[1] || 0); k ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
  }
  if (!mean) return;
  const [cx, cy] = P(mean[0], mean.length > 1 ? mean[1] : 0);
  if (std) {
    const sx = iw / (v.x1 - v.x0), sy = ih / (v.y1 - v.y0);
    for (const [k, dash] of [[1, []], [2, [4, 3]]]) {
      ctx.beginPath(); ctx.setLineDash(dash);
      ctx.ellipse(cx, cy, Math.max(0.5, k * std[0] * sx), Math.max(0.5, k * (std.length > 1 ? std[1] : std[0]) * sy), 0, 0, 2 * Math.PI);
      ctx.strokeStyle = "#d62728"; ctx.lineWidth = 1.5; ctx.stroke();
    }
    ctx.setLineDash([]);
  }
  ctx.beginPath(); ctx.arc(cx, cy, small ? 3 : 6, 0, 2 * Math.PI);
  ctx.fillStyle = opts.colour || "#d62728"; ctx.fill(); ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.stroke();
}

function paint(canvas, row, std, opts) {
  if (S.meta.kind === "image") paintImage(canvas, row);
  else paintPoints(canvas, row, std, opts);
}

function drawOutput(res) {
  const c = $("output");
  if (S.meta.kind === "image") {
    const { H, W } = imageDims();
    const scale = Math.max(1, Math.floor(320 / Math.max(H, W)));
    c.width = W * scale; c.height = H * scale;
    if (res) paintImage(c, res.mean);
    else { const ctx = c.getContext("2d"); ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height); }
    $("output-note").textContent = res ? `decoded mean p(x|z) · ${S.meta.image_shape.join("×")}` : "";
  } else {
    c.width = 320; c.height = 320;
    paintPoints(c, res ? res.mean : null, res ? res.std : null);
    $("output-note").textContent = res
      ? `decoded mean (${res.mean.map((v) => fmt(Number(v.toFixed(3)))).join(", ")})${res.std ? " with the observation noise: 1σ and 2σ ellipses" : ""}`
      : "";
  }
}

function thumb(row, std, caption, opts) {
  const fig = document.createElement("figure");
  const c = document.createElement("canvas"); c.width = THUMB; c.height = THUMB;
  paint(c, row, std, opts);
  fig.append(c);
  if (caption !== undefined) { const cap = document.createElement("figcaption"); cap.textContent = caption; fig.append(cap); }
  return fig;
}

// ---------------------------------------------------------------- live decoding (one request in flight, the latest wins)
const live = { busy: false, next: null };
function decodeLive(z) {
  live.next = { z: z.slice(), gen: S.gen };
  if (!live.busy) pumpLive();
}
async function pumpLive() {
  live.busy = true;
  while (live.next) {
    const job = live.next; live.next = null;
    if (job.gen !== S.gen) continue;
    const t0 = performance.now();
    try {
      const r = await api("/api/decode", { run: S.runId, z: [job.z], c: condForApi() });
      if (job.gen !== S.gen) continue;
      S.live = { z: job.z, mean: r.mean[0], std: r.std ? r.std[0] : null };
      drawOutput(S.live);
      S.decodes++; document.body.dataset.decodes = String(S.decodes);
      status(`decoded z in ${Math.round(performance.now() - t0)} ms`);
    } catch (err) {
      report(err);
    }
  }
  live.busy = false;
}

// ---------------------------------------------------------------- selection: ellipse, reconstruction, neighbours
async function selectPoint(i) {
  const p = S.pts;
  $("selection").hidden = false;
  const lbl = p.labels ? ` · label ${S.meta.labels ? S.meta.labels[p.labels[i]] : p.labels[i]}` : "";
  $("sel-name").textContent = `#${i}${lbl}`;
  // 5 nearest neighbours of mu_i in the full latent space (Euclidean)
  const order = p.mu.map((m, j) => [j === i ? Infinity : dist2(m, p.mu[i]), j]).sort((a, b) => a[0] - b[0]);
  S.neighbours = order.slice(0, Math.min(5, p.mu.length - 1)).map((o) => o[1]);
  const info = [`μ = (${p.mu[i].map((v) => v.toFixed(2)).join(", ")})`];
  if (p.sigma) info.push(`σ = (${p.sigma[i].map((v) => v.toFixed(2)).join(", ")})`);
  else info.push("autoencoder: a code, no q(z|x) spread");
  $("sel-info").textContent = info.join(" · ");
  paint($("sel-x"), p.x[i], null, { colour: "#444" });
  const nb = $("neighbours"); nb.innerHTML = "";
  for (const j of S.neighbours) {
    const cap = `#${j} · ${Math.sqrt(dist2(p.mu[j], p.mu[i])).toFixed(2)}`;
    nb.append(thumb(p.x[j], null, cap, { colour: "#444" }));
  }
  const r = await guarded(() => api("/api/decode", { run: S.runId, z: [p.mu[i]], c: pointCond(i) }));
  if (r && S.a === i) {
    paint($("sel-recon"), r.mean[0], r.std ? r.std[0] : null);
    document.body.dataset.recon = String(i);
  }
}

async function updateInterp() {
  if (S.a === null || S.b === null) return;
  const za = S.pts.mu[S.a], zb = S.pts.mu[S.b], sph = $("slerp").checked;
  S.interp = [...Array(STEPS).keys()].map((k) => (sph ? slerp : lerp)(za, zb, k / (STEPS - 1)));
  $("interp").hidden = false;
  drawPlane();
  const want = S.interp;
  const r = await guarded(() => api("/api/decode", { run: S.runId, z: want, c: condForApi() }));
  if (!r || S.interp !== want) return;
  const strip = $("interp-strip"); strip.innerHTML = "";
  const path = S.meta.kind === "points" ? r.mean : null;
  r.mean.forEach((row, k) => strip.append(thumb(row, r.std ? r.std[k] : null, `t=${(k / (STEPS - 1)).toFixed(2)}`, { path })));
  document.body.dataset.interp = String(r.mean.length);
}

let travTimer = null;
function updateTraversal() {   // debounced: sliders fire many events
  clearTimeout(travTimer);
  travTimer = setTimeout(runTraversal, 120);
}
async function runTraversal() {
  if (!S.meta) return;
  const d = Number($("trav-dim").value), [lo, hi] = dimRange(d);
  const zs = [...Array(STEPS).keys()].map((k) => { const z = S.z.slice(); z[d] = lo + (hi - lo) * k / (STEPS - 1); return z; });
  const r = await guarded(() => api("/api/decode", { run: S.runId, z: zs, c: condForApi() }));
  if (!r) return;
  const strip = $("trav-strip"); strip.innerHTML = "";
  const path = S.meta.kind === "points" ? r.mean : null;
  r.mean.forEach((row, k) => strip.append(thumb(row, r.std ? r.std[k] : null, `z${d}=${zs[k][d].toFixed(1)}`, { path })));
}

// ---------------------------------------------------------------- drawing pad (image runs)
function clearPad() {
  const c = $("pad"), ctx = c.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height);
  const r = $("pad-recon").getContext("2d"); r.fillStyle = "#000"; r.fillRect(0, 0, 112, 112);
  $("pad-info").textContent = "";
  S.padInk = false;
}

function bindPad() {
  const c = $("pad"), ctx = c.getContext("2d");
  let down = false, last = null;
  const at = (e) => { const r = c.getBoundingClientRect(); return [(e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height]; };
  const stroke = (p) => {
    ctx.strokeStyle = "#fff"; ctx.fillStyle = "#fff"; ctx.lineWidth = 22; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...(last || p)); ctx.lineTo(...p); ctx.stroke();
    last = p; S.padInk = true;
  };
  c.addEventListener("pointerdown", (e) => { down = true; last = null; c.setPointerCapture(e.pointerId); stroke(at(e)); });
  c.addEventListener("pointermove", (e) => { if (down) stroke(at(e)); });
  const up = () => { if (!down) return; down = false; last = null; encodePad(); };
  c.addEventListener("pointerup", up);
  c.addEventListener("pointercancel", up);
  $("pad-clear").addEventListener("click", () => { clearPad(); S.drawn = null; drawPlane(); });
}

// Downsample the 280×280 pad to the run's H×W (area average) and replicate over the channels.
function padPixels() {
  const { C, H, W } = imageDims(), c = $("pad");
  const src = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
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
  paintImage($("pad-recon"), r.dec.mean[0]);
  $("pad-info").textContent = `encoded: μ = (${S.drawn.mu.slice(0, 4).map((v) => v.toFixed(2)).join(", ")}${S.drawn.mu.length > 4 ? ", …" : ""})`;
  document.body.dataset.padEncoded = String((Number(document.body.dataset.padEncoded) || 0) + 1);
  setZ(S.drawn.mu.slice());
}

init();
