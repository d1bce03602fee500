// The sae-swarm dashboard: plain ES module, no build step, reading the Worker's read API with the submitter token.
// Panels: sweeps with progress; one sweep's groups and their leases, runs, the L0-vs-MSE Pareto plot; one run's
// training curves and its eval histograms (feature frequency and mean value, log10, as in saev's evaluate).
// Plots: uPlot (copied from node_modules into ./vendor by scripts/setup.mjs).
/* global uPlot */

const TOKEN_KEY = "sae-swarm-token";
const REFRESH_MS = 5000;
const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------------------------------------------------------
// Token and routing: `#token=T` is stored once and removed from the address bar; `#sweep=ID&run=ID` selects.

function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function takeTokenFromHash() {
  const p = hashParams();
  const t = p.get("token");
  if (!t) return;
  localStorage.setItem(TOKEN_KEY, t);
  p.delete("token");
  history.replaceState(null, "", `${location.pathname}${location.search}${p.toString() ? `#${p}` : ""}`);
}

const token = () => localStorage.getItem(TOKEN_KEY);

function showTokenForm(why) {
  $("#token-form").hidden = false;
  $("#forget-token").hidden = true;
  say(why);
}

function say(text) {
  $("#message").textContent = text || "";
}

class Unauthorized extends Error {}

async function api(route) {
  const res = await fetch(route, { headers: { authorization: `Bearer ${token()}` } });
  if (res.status === 401) throw new Unauthorized("the server refused this token: enter the submitter token (SUBMIT_TOKEN)");
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try {
      const e = (await res.json()).error;
      if (e) msg = `${e.message}${e.field ? ` (field ${e.field})` : ""}`;
    } catch {}
    throw new Error(`${route}: ${msg}`);
  }
  return res.json();
}

// ---------------------------------------------------------------------------------------------------------------
// Formatting

function num(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

function ago(ms) {
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 0) return `in ${-s}s`;
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function progressBar(p) {
  const done = p.n_runs ? (100 * p.done) / p.n_runs : 0;
  const failed = p.n_runs ? (100 * p.failed) / p.n_runs : 0;
  const bar = el("span", { class: "bar" }, el("span"));
  bar.firstChild.style.width = `${done}%`;
  if (failed) {
    const f = el("span", { class: "failed" });
    f.style.width = `${failed}%`;
    bar.append(f);
  }
  return el("span", {}, bar, `${p.done}/${p.n_runs} done${p.leased ? `, ${p.leased} training` : ""}${p.failed ? `, ${p.failed} failed` : ""}`);
}

const statusCell = (s) => el("td", { class: `status-${s}` }, s);
const numCell = (v) => el("td", { class: "num" }, typeof v === "string" ? v : num(v));
const shortId = (id, sweep) => (id.startsWith(`${sweep}-`) ? id.slice(sweep.length + 1) : id);

function flatten(o, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(o)) {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out);
    else out[prefix + k] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return out;
}

/** Config keys that differ across the sweep's runs (seeds left out: each config has its own). */
function varyingKeys(cfgs) {
  const flat = cfgs.map((c) => flatten(c));
  const keys = [...new Set(flat.flatMap(Object.keys))];
  return keys.filter((k) => !/(^|\.)seed$/.test(k) && new Set(flat.map((f) => f[k])).size > 1);
}

function rowLink(tr, hash) {
  tr.dataset.href = hash;
  tr.addEventListener("click", () => (location.hash = hash));
}

// ---------------------------------------------------------------------------------------------------------------
// Plots

const plots = new Map();
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

function plot(id, opts, data) {
  plots.get(id)?.destroy();
  const target = document.getElementById(id);
  target.replaceChildren();
  const u = new uPlot({ width: 440, height: 280, ...opts }, data, target);
  plots.set(id, u);
  target.closest("[data-panel]").dataset.state = "ready";
  return u;
}

function emptyPlot(id, text) {
  plots.get(id)?.destroy();
  plots.delete(id);
  const target = document.getElementById(id);
  target.replaceChildren(el("p", { class: "empty" }, text));
  target.closest("[data-panel]").dataset.state = "empty";
}

/** Counts of `values` in `nBins` equal bins over [lo, hi] (values outside go to the end bins). */
function histogram(values, lo, hi, nBins) {
  const w = (hi - lo) / nBins || 1;
  const counts = new Array(nBins).fill(0);
  for (const v of values) counts[Math.min(nBins - 1, Math.max(0, Math.floor((v - lo) / w)))]++;
  const centers = counts.map((_, i) => lo + (i + 0.5) * w);
  return [centers, counts];
}

const bars = () => uPlot.paths.bars({ size: [0.9, 100] });

function histPlot(id, values, lo, hi, nBins, xLabel, color) {
  const [x, y] = histogram(values, lo, hi, nBins);
  plot(
    id,
    {
      scales: { x: { time: false, range: [lo, hi] } },
      axes: [{ label: xLabel }, { label: "features" }],
      series: [{ label: xLabel, value: (u, v) => num(v) }, { label: "features", fill: color + "aa", stroke: color, paths: bars(), points: { show: false } }],
      legend: { show: true },
    },
    [x, y],
  );
}

function padded(u, min, max) {
  const pad = (max - min) * 0.08 || Math.abs(max) * 0.1 || 1;
  return [min - pad, max + pad];
}

/** One colour per SAE kind on the L0–MSE plot, whatever mix a sweep holds (an unknown kind is grey). */
const KIND_COLORS = { relu: "#1f77b4", jumprelu: "#d62728", topk: "#2ca02c", batchtopk: "#9467bd" };
const kindColor = (kind) => KIND_COLORS[kind] ?? "#7f7f7f";

function paretoPlot(runs) {
  const points = runs.filter((r) => r.eval).map((r) => ({ r, e: r.eval }));
  if (points.length === 0) return emptyPlot("pareto", "no run has been evaluated yet");
  // A series per (kind, objective): the colour says the kind, the marker the objective (Vanilla filled,
  // Matryoshka hollow). Series are ordered by kind, so the legend reads relu, jumprelu, topk, batchtopk.
  const label = (r) => `${r.cfg.sae.kind} · ${r.cfg.objective.kind}`;
  const order = Object.keys(KIND_COLORS);
  const rank = (kind) => (order.includes(kind) ? order.indexOf(kind) : order.length);
  const series = [...new Map(points.map((p) => [label(p.r), { label: label(p.r), kind: p.r.cfg.sae.kind, objective: p.r.cfg.objective.kind }])).values()].sort(
    (a, b) => rank(a.kind) - rank(b.kind) || a.objective.localeCompare(b.objective),
  );
  const labels = series.map((x) => x.label);
  const xs = [...new Set(points.map((p) => p.e.l0))].sort((a, b) => a - b);
  const ys = labels.map((l) => {
    const y = new Array(xs.length).fill(null);
    for (const p of points) if (label(p.r) === l) y[xs.indexOf(p.e.l0)] = p.e.mse;
    return y;
  });
  plot(
    "pareto",
    {
      width: 640,
      // Padded ranges, so the points at the ends are not drawn on the frame.
      scales: { x: { time: false, range: padded }, y: { range: padded } },
      axes: [{ label: "L0 (active features per example)" }, { label: "MSE" }],
      series: [
        { label: "L0", value: (u, v) => num(v) },
        ...series.map(({ label: l, kind, objective }) => {
          const c = kindColor(kind);
          const fill = objective === "matryoshka" ? "#ffffff" : c;
          return { label: l, stroke: c, fill, width: 0, paths: () => null, points: { show: true, size: 9, width: 2, stroke: c, fill }, value: (u, v) => num(v) };
        }),
      ],
    },
    [xs, ...ys],
  );
}

function lossPlot(rows) {
  if (rows.length === 0) return emptyPlot("loss", "no step logged yet");
  plot(
    "loss",
    {
      scales: { x: { time: false }, y: { distr: 3 }, l0: {} },
      axes: [{ label: "step" }, { label: "loss, MSE (log)", scale: "y" }, { label: "L0", scale: "l0", side: 1, grid: { show: false } }],
      series: [
        { label: "step" },
        { label: "loss", stroke: COLORS[0], scale: "y", value: (u, v) => num(v) },
        { label: "MSE", stroke: COLORS[1], scale: "y", value: (u, v) => num(v) },
        { label: "L0", stroke: COLORS[2], scale: "l0", value: (u, v) => num(v) },
      ],
    },
    [rows.map((r) => r.step), rows.map((r) => (r.loss > 0 ? r.loss : null)), rows.map((r) => (r.mse > 0 ? r.mse : null)), rows.map((r) => r.l0)],
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Panels

async function renderSweeps(selected) {
  const { sweeps } = await api("/v1/sweeps?limit=50");
  const tbody = $("#sweeps tbody");
  tbody.replaceChildren();
  if (sweeps.length === 0) tbody.append(el("tr", {}, el("td", { class: "empty", colSpan: 5 }, "no sweeps yet: npx sae-swarm submit examples/demo.toml")));
  for (const s of sweeps) {
    const tr = el("tr", { class: s.id === selected ? "selected" : "" }, el("td", {}, s.id), statusCell(s.status), el("td", {}, progressBar(s.progress)), numCell(String(s.n_groups)), el("td", {}, ago(s.created_at)));
    rowLink(tr, `sweep=${s.id}`);
    tbody.append(tr);
  }
  $("#sweeps-panel").dataset.state = "ready";
  return sweeps;
}

async function renderSweep(id, runId) {
  const d = await api(`/v1/sweeps/${encodeURIComponent(id)}`);
  const s = d.sweep;
  $("#sweep-panel").hidden = false;
  $("#sweep-title").textContent = `Sweep ${s.id}: ${s.status}, ${s.progress.done}/${s.n_runs} runs done in ${s.n_groups} group${s.n_groups === 1 ? "" : "s"}`;

  const gb = $("#groups tbody");
  gb.replaceChildren();
  for (const g of d.groups) {
    const leases = g.leases.length
      ? g.leases.map((l) => `${l.runner_id} (${l.status}): ${l.progress ? `step ${l.progress.step}/${l.progress.n_steps}${l.progress.samples_per_s ? `, ${num(l.progress.samples_per_s)} samples/s` : ""}` : "starting"}, ${l.run_ids.length} runs, expires ${ago(l.expires_at)}`).join("; ")
      : g.last_error
        ? `last error: ${g.last_error}`
        : "–";
    gb.append(el("tr", {}, el("td", {}, shortId(g.id, s.id)), statusCell(g.status), el("td", {}, progressBar(g.progress)), numCell(String(g.failures)), el("td", {}, leases)));
  }
  $("[data-panel=groups]").dataset.state = "ready";

  // The kernels each group's latest runner reported (the sweep view's groups[].kernels).
  const kb = $("#kernels tbody");
  kb.replaceChildren();
  for (const g of d.groups) {
    const k = g.kernels;
    if (!k) {
      kb.append(el("tr", {}, el("td", {}, shortId(g.id, s.id)), el("td", { colSpan: 4 }, "no kernels reported yet")));
      continue;
    }
    const how = k.source === "tuned" ? `tuned in ${(k.tuned_ms / 1000).toFixed(1)} s, ${k.candidates} candidates, ${k.timing}` : "cached";
    const list = Object.entries(k.kernels).map(([m, x]) => `${m} ${x.choice} ${num(x.gflops)} (${num(x.default_gflops)})`).join("; ");
    kb.append(el("tr", {}, el("td", {}, shortId(g.id, s.id)), el("td", {}, `${k.runner_id}, ${k.adapter}`), el("td", {}, k.key), el("td", {}, how), el("td", {}, list)));
  }
  $("[data-panel=kernels]").dataset.state = "ready";

  // Each run carries its latest metrics and its eval's scalars: one request for the whole sweep, whatever its size.
  const keys = varyingKeys(d.runs.map((r) => r.cfg));
  const short = (k) => k.replace(/^objective\./, "obj.");
  $("#runs thead").replaceChildren(
    el("tr", {}, ...["run", "group", ...keys.map(short), "status", "step", "loss", "eval L0", "eval MSE", "FVU", "dead", "dense"].map((h) => el("th", {}, h))),
  );
  const rb = $("#runs tbody");
  rb.replaceChildren();
  const selected = runId ?? d.runs.find((r) => r.eval)?.id ?? d.runs[0]?.id;
  for (const r of d.runs) {
    const f = flatten(r.cfg);
    const tr = el(
      "tr",
      { class: r.id === selected ? "selected" : "" },
      el("td", {}, shortId(r.id, s.id)),
      el("td", {}, shortId(r.group_id, s.id)),
      // null (sae.k of a ReLU run beside TopK runs) reads as "–", not as 0.
      ...keys.map((k) => (f[k] !== "null" && Number.isFinite(Number(f[k])) && !/^(true|false)$/.test(f[k]) ? numCell(Number(f[k])) : el("td", {}, f[k] === undefined || f[k] === "null" ? "–" : f[k]))),
      statusCell(r.status),
      numCell(`${r.status === "done" ? r.n_steps : (r.latest?.step ?? 0)}/${r.n_steps}`), // latest logged step until done
      numCell(r.latest?.loss),
      numCell(r.eval?.l0),
      numCell(r.eval?.mse),
      numCell(r.eval?.fvu),
      numCell(r.eval ? String(r.eval.n_dead) : "–"),
      numCell(r.eval ? String(r.eval.n_dense) : "–"),
    );
    rowLink(tr, `sweep=${s.id}&run=${r.id}`);
    rb.append(tr);
  }
  $("[data-panel=runs]").dataset.state = "ready";
  paretoPlot(d.runs);
  const sel = d.runs.find((r) => r.id === selected);
  if (sel) await renderRun(sel.id, sel, s.id);
  return s;
}

async function renderRun(id, run, sweepId) {
  $("#run-panel").hidden = false;
  const cfg = run.cfg;
  $("#run-title").textContent = `Run ${shortId(id, sweepId)}: ${cfg.sae.kind} SAE, ${cfg.objective.kind} objective, ${cfg.sae.kind === "topk" || cfg.sae.kind === "batchtopk" ? `k ${cfg.sae.k}` : `sparsity coefficient ${num(cfg.objective.sparsity_coeff)}`}, lr ${num(cfg.lr)}, d_sae ${cfg.sae.d_vit * cfg.sae.exp_factor} — ${run.status}`;
  const { rows } = await api(`/v1/runs/${encodeURIComponent(id)}/metrics?limit=100000`);
  lossPlot(rows);
  if (!run.eval) {
    emptyPlot("freqs", "evaluated once training ends");
    emptyPlot("means", "evaluated once training ends");
    return;
  }
  const ev = await api(`/v1/runs/${encodeURIComponent(id)}/eval`);
  // Features that never fired (freq 0) land in the leftmost bin, as saev's log10(freq + 1e-9) does.
  const logFreq = ev.freqs.map((f) => Math.log10(f + 1e-9));
  histPlot("freqs", logFreq, -9, 0, 36, `log10 frequency (${ev.n_dead} dead, ${ev.n_dense} dense of ${ev.freqs.length})`, COLORS[0]);
  const logMean = ev.mean_values.filter((v) => v !== null && v > 0).map((v) => Math.log10(v));
  if (logMean.length === 0) return emptyPlot("means", "no feature fired during the eval");
  const lo = Math.floor(Math.min(...logMean) * 4) / 4;
  const hi = Math.max(lo + 0.25, Math.ceil(Math.max(...logMean) * 4) / 4);
  histPlot("means", logMean, lo, hi, 30, `log10 mean value (${logMean.length} features fired)`, COLORS[3]);
}

// ---------------------------------------------------------------------------------------------------------------
// Main loop

let timer = null;
let generation = 0;

async function render() {
  clearTimeout(timer);
  const mine = ++generation;
  document.body.dataset.rendered = "pending";
  if (!token()) return showTokenForm("enter the submitter token (SUBMIT_TOKEN; `npm start` prints it) to read the server");
  $("#token-form").hidden = true;
  $("#forget-token").hidden = false;
  const p = hashParams();
  const sweepId = p.get("sweep");
  try {
    const sweeps = await renderSweeps(sweepId);
    const id = sweepId ?? sweeps[0]?.id;
    let live = sweeps.some((s) => s.status === "waiting" || s.status === "running");
    if (id) {
      const s = await renderSweep(id, p.get("run"));
      live = s.status === "waiting" || s.status === "running";
    } else $("#sweep-panel").hidden = true;
    if (mine !== generation) return;
    say("");
    document.body.dataset.rendered = "ok";
    if (live) timer = setTimeout(render, REFRESH_MS);
  } catch (e) {
    if (mine !== generation) return;
    document.body.dataset.rendered = "error";
    if (e instanceof Unauthorized) showTokenForm(e.message);
    else {
      say(e.message);
      timer = setTimeout(render, REFRESH_MS);
    }
  }
}

$("#server").textContent = location.host;
$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("#token-input").value.trim();
  if (t) localStorage.setItem(TOKEN_KEY, t);
  $("#token-input").value = "";
  render();
});
$("#forget-token").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  render();
});
window.addEventListener("hashchange", () => {
  takeTokenFromHash();
  render();
});
takeTokenFromHash();
render();
