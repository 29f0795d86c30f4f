'''The dashboard's one page: HTML, CSS and plain JavaScript in a string (no CDN, no build step).

The script opens an ``EventSource`` on ``events``; every event is a
:meth:`Snapshot.as_dict() <writebus.bus.watch.Snapshot.as_dict>`. It keeps
``HISTORY_SECONDS`` of per-region lag and of write throughput in memory and draws both on
``<canvas>`` elements itself. Elements carry stable ids and data attributes for tests and
scripts: ``#writes-per-s[data-value]``, ``#lag-chart[data-points]``,
``#lag-legend li[data-region]``, ``#nodes tr[data-region][data-replica-id][data-state]`` with
one ``td[data-field][data-value]`` per column (the raw value; the text is formatted).
``{{prefix}}`` is replaced by the subject prefix (HTML-escaped) when the page is served.
'''

from __future__ import annotations

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>writebus dashboard · {{prefix}}</title>
<link rel="icon" href="data:,">
<style>
  :root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f3f4f6; --card:#fff;
          --warn:#fef3c7; --warn-fg:#92400e; --bad:#fee2e2; --bad-fg:#991b1b; --ok:#15803d; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
         color: var(--fg); background: var(--bg); }
  header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px;
           background: #111827; color: #f9fafb; }
  header h1 { margin: 0; font-size: 18px; font-weight: 600; }
  header .prefix { color: #9ca3af; font-weight: 400; }
  #connection { margin-left: auto; font-size: 13px; }
  #connection::before { content: "●"; margin-right: 6px; }
  #connection[data-state="live"]::before { color: #22c55e; }
  #connection[data-state="connecting"]::before, #connection[data-state="down"]::before {
    color: #f59e0b; }
  #updated { color: #9ca3af; font-size: 13px; }
  main { display: grid; grid-template-columns: 2fr 1fr; gap: 16px; padding: 16px 24px;
         max-width: 1400px; margin: 0 auto; }
  .card { background: var(--card); border-radius: 8px; padding: 14px 16px;
          box-shadow: 0 1px 2px rgba(0,0,0,.06); min-width: 0; }
  .card h2 { margin: 0 0 8px; font-size: 13px; font-weight: 600; color: var(--muted);
             text-transform: uppercase; letter-spacing: .04em; }
  .wide { grid-column: 1 / -1; }
  canvas { display: block; width: 100%; }
  #lag-chart { height: 240px; }
  #writes-chart { height: 110px; margin-top: 8px; }
  #lag-legend { list-style: none; display: flex; flex-wrap: wrap; gap: 18px; margin: 8px 0 0;
                padding: 0; font-size: 13px; }
  #lag-legend .swatch { display: inline-block; width: 12px; height: 3px; margin-right: 6px;
                        vertical-align: middle; border-radius: 2px; }
  #lag-legend .value { color: var(--muted); margin-left: 4px; font-variant-numeric: tabular-nums; }
  .big { font-size: 48px; font-weight: 650; line-height: 1.1; font-variant-numeric: tabular-nums; }
  .unit { font-size: 16px; color: var(--muted); font-weight: 400; margin-left: 4px; }
  .facts { display: grid; grid-template-columns: auto 1fr; gap: 2px 12px; margin-top: 12px;
           font-size: 13px; }
  .facts dt { color: var(--muted); }
  .facts dd { margin: 0; font-variant-numeric: tabular-nums; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { padding: 6px 8px; border-bottom: 1px solid var(--line); text-align: right;
           white-space: nowrap; }
  th { font-size: 12px; color: var(--muted); font-weight: 600; }
  th.text, td.text { text-align: left; }
  tr.lagging td { background: var(--warn); color: var(--warn-fg); }
  tr.stale td { background: var(--bad); color: var(--bad-fg); }
  .badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 12px; }
  tr[data-state="ok"] .badge { color: var(--ok); }
  tr.lagging .badge, tr.stale .badge { font-weight: 600; }
  #no-nodes td { text-align: center; color: var(--muted); padding: 18px; }
</style>
</head>
<body>
<header>
  <h1>writebus <span class="prefix">{{prefix}}</span></h1>
  <span id="updated"></span>
  <span id="connection" data-state="connecting">connecting…</span>
</header>
<main>
  <section class="card">
    <h2>Replica lag by region, seconds</h2>
    <canvas id="lag-chart" data-points="0"></canvas>
    <ul id="lag-legend"></ul>
  </section>
  <section class="card" id="throughput">
    <h2>Write throughput</h2>
    <div>
      <span class="big" id="writes-per-s" data-value="">–</span><span class="unit">writes/s</span>
    </div>
    <canvas id="writes-chart" data-points="0"></canvas>
    <dl class="facts">
      <dt>primary LSN</dt><dd id="primary-lsn">–</dd>
      <dt>nodes</dt><dd id="node-count">–</dd>
      <dt>errors/s</dt><dd id="errors-per-s" data-value="">–</dd>
    </dl>
  </section>
  <section class="card wide">
    <h2>Nodes</h2>
    <table id="nodes">
      <thead><tr>
        <th class="text">region</th><th class="text">replica</th><th class="text">role</th>
        <th class="text">replay LSN</th><th>lag</th><th>lag s</th><th>broadcast age</th>
        <th>req/s</th><th>p50 ms</th><th>p99 ms</th><th>errors/s</th><th>in-flight</th>
        <th class="text">state</th>
      </tr></thead>
      <tbody id="node-rows">
        <tr id="no-nodes"><td colspan="13">Waiting for progress and status messages on
          {{prefix}}.lsn.&gt; and {{prefix}}.status.&gt; …</td></tr>
      </tbody>
    </table>
  </section>
</main>
<script>
"use strict";
const HISTORY_SECONDS = 300;
// A jump in time longer than this (the page lost its stream) breaks a line instead of
// drawing a straight segment across the hole.
const GAP_SECONDS = 5;
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777"];
const colors = new Map();
const history = [];  // {t, lag: {region: seconds|null}, writes}
const $ = (id) => document.getElementById(id);

function color(region) {
  if (!colors.has(region)) colors.set(region, PALETTE[colors.size % PALETTE.length]);
  return colors.get(region);
}

const fmt = {
  num: (v, digits) => (v == null ? "–" : v.toFixed(digits)),
  secs: (v) => (v == null ? "–" : v < 10 ? v.toFixed(2) + " s" : v.toFixed(0) + " s"),
  bytes(v) {
    if (v == null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : String(v)) + " " + units[i];
  },
};

const COLUMNS = [
  ["region", (r) => r.region, true],
  ["replica_id", (r) => r.replica_id, true],
  ["role", (r) => r.role, true],
  ["lsn", (r) => r.lsn ?? "–", true],
  ["lag_bytes", (r) => fmt.bytes(r.lag_bytes)],
  ["lag_seconds", (r) => fmt.secs(r.lag_seconds)],
  ["broadcast_age", (r) => fmt.secs(r.broadcast_age)],
  ["requests_per_s", (r) => fmt.num(r.requests_per_s, 1)],
  ["p50_ms", (r) => fmt.num(r.p50_ms, 1)],
  ["p99_ms", (r) => fmt.num(r.p99_ms, 1)],
  ["errors_per_s", (r) => fmt.num(r.errors_per_s, 1)],
  ["in_flight", (r) => (r.in_flight == null ? "–"
    : r.concurrency ? `${r.in_flight} / ${r.concurrency}` : String(r.in_flight))],
];

function rowState(r) { return r.stale ? "stale" : r.lagging ? "lagging" : "ok"; }

const noNodes = $("no-nodes");

function renderTable(rows) {
  const trs = rows.map((r) => {
    const tr = document.createElement("tr");
    const state = rowState(r);
    tr.dataset.region = r.region;
    tr.dataset.replicaId = r.replica_id;
    tr.dataset.role = r.role;
    tr.dataset.state = state;
    if (state !== "ok") tr.className = state;
    for (const [field, show, text] of COLUMNS) {
      const td = document.createElement("td");
      td.dataset.field = field;
      td.dataset.value = r[field] == null ? "" : String(r[field]);
      if (text) td.className = "text";
      td.textContent = show(r);
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    td.className = "text";
    td.dataset.field = "state";
    td.dataset.value = state;
    td.innerHTML = `<span class="badge">${state}</span>`;
    tr.appendChild(td);
    return tr;
  });
  $("node-rows").replaceChildren(...(trs.length ? trs : [noNodes]));
}

function regionLag(rows) {
  // Per region, the worst lag of its fresh nodes; a primary is never behind itself.
  const lag = {};
  for (const r of [...rows].sort((a, b) => a.region.localeCompare(b.region))) {
    color(r.region);
    if (!(r.region in lag)) lag[r.region] = null;
    const s = r.role === "primary" ? 0 : r.lag_seconds;
    if (r.stale || s == null) continue;
    lag[r.region] = lag[r.region] == null ? s : Math.max(lag[r.region], s);
  }
  return lag;
}

function canvas(id) {
  const c = $(id);
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  c.dataset.points = String(history.length);
  return { ctx, w, h };
}

function axis(max, ticks) {
  // A round step (1, 2 or 5 times a power of ten) giving at most `ticks` intervals.
  const raw = max / ticks, p = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * p).find((st) => st >= raw * (1 - 1e-9));
  const digits = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
  return { step, top: Math.ceil(max / step - 1e-9) * step, digits };
}

function plot(id, pad, series, minTop, yLabel) {
  // series: [{color, value(point) -> number|null, fill}]; x is each point's time.
  const { ctx, w, h } = canvas(id);
  const now = history.length ? history[history.length - 1].t : Date.now() / 1000;
  // The window grows with the history, from half a minute up to HISTORY_SECONDS.
  const span = Math.min(HISTORY_SECONDS, Math.max(30, history.length ? now - history[0].t : 0));
  const t0 = now - span;
  let top = minTop;
  for (const p of history) for (const s of series) {
    const v = s.value(p);
    if (v != null && v > top) top = v;
  }
  const ax = axis(top, pad.b > 10 ? 4 : 2);
  top = ax.top;
  const X = (t) => pad.l + ((t - t0) / span) * (w - pad.l - pad.r);
  const Y = (v) => h - pad.b - (v / top) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#e5e7eb"; ctx.fillStyle = "#6b7280"; ctx.lineWidth = 1;
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let v = 0; v <= top + ax.step / 2; v += ax.step) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(yLabel(v, ax.digits), pad.l - 6, y);
  }
  if (pad.b > 10) {
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    const step = [5, 10, 15, 30, 60].find((st) => span / st <= 6) ?? 60;
    for (let s = 0; s <= span + 0.001; s += step) {
      const label = !s ? "now" : s % 60 ? `-${s} s` : `-${s / 60} min`;
      ctx.fillText(label, Math.max(pad.l + 12, X(now - s)), h - pad.b + 6);
    }
  }
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.lineWidth = 2; ctx.lineJoin = "round";
    ctx.beginPath();
    let prev = null;
    for (const p of history) {
      const v = s.value(p);
      if (v == null || p.t < t0) { prev = null; continue; }
      const x = X(p.t), y = Y(Math.min(v, top));
      if (prev && p.t - prev.t <= GAP_SECONDS) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      prev = p;
    }
    ctx.stroke();
    if (s.fill && history.length > 1) {
      ctx.lineTo(X(now), Y(0)); ctx.lineTo(X(Math.max(history[0].t, t0)), Y(0));
      ctx.fillStyle = s.fill; ctx.fill();
    }
  }
}

let primaryRegions = new Set();

function draw() {
  // The primary's region (always 0 s) is drawn first, so a replica's line at 0 stays visible.
  const regions = [...colors.keys()].sort(
    (a, b) => primaryRegions.has(b) - primaryRegions.has(a));
  plot("lag-chart", { l: 48, r: 12, t: 8, b: 22 },
    regions.map((region) => ({ color: color(region), value: (p) => p.lag[region] ?? null })),
    1, (v, digits) => v.toFixed(digits) + " s");
  plot("writes-chart", { l: 36, r: 4, t: 6, b: 4 },
    [{ color: "#2563eb", fill: "rgba(37,99,235,.12)", value: (p) => p.writes }],
    1, (v, digits) => v.toFixed(digits));
}

function renderLegend(lag) {
  const legend = $("lag-legend");
  for (const region of colors.keys()) {
    let li = legend.querySelector(`li[data-region="${CSS.escape(region)}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.region = region;
      li.innerHTML =
        '<span class="swatch"></span><span class="name"></span><span class="value"></span>';
      li.querySelector(".swatch").style.background = color(region);
      li.querySelector(".name").textContent = region;
      legend.appendChild(li);
    }
    li.dataset.value = lag[region] == null ? "" : String(lag[region]);
    li.querySelector(".value").textContent = fmt.secs(lag[region] ?? null);
  }
}

function update(snap) {
  primaryRegions = new Set(snap.rows.filter((r) => r.role === "primary").map((r) => r.region));
  const lag = regionLag(snap.rows);
  history.push({ t: snap.time, lag, writes: snap.writes_per_s });
  while (history.length && history[0].t < snap.time - HISTORY_SECONDS) history.shift();
  const writes = $("writes-per-s");
  writes.dataset.value = String(snap.writes_per_s);
  writes.textContent = snap.writes_per_s.toFixed(snap.writes_per_s >= 100 ? 0 : 1);
  const errors = snap.rows.reduce((sum, r) => sum + (r.stale ? 0 : r.errors_per_s ?? 0), 0);
  $("errors-per-s").dataset.value = String(errors);
  $("errors-per-s").textContent = errors.toFixed(1);
  $("primary-lsn").textContent = snap.primary_lsn ?? "–";
  const fresh = snap.rows.filter((r) => !r.stale).length;
  $("node-count").textContent = `${snap.rows.length} (${fresh} fresh)`;
  $("updated").textContent = "updated " + new Date(snap.time * 1000).toLocaleTimeString();
  renderTable(snap.rows);
  renderLegend(lag);
  draw();
}

function connect() {
  const state = $("connection");
  const source = new EventSource("events");
  source.onopen = () => { state.dataset.state = "live"; state.textContent = "live"; };
  source.onerror = () => { state.dataset.state = "down"; state.textContent = "reconnecting…"; };
  source.onmessage = (event) => update(JSON.parse(event.data));
}

window.addEventListener("resize", draw);
connect();
</script>
</body>
</html>
"""
