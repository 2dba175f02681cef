// Herald operator dashboard. Plain JavaScript modules, no dependencies, no
// build.
//
// Every second it reads /api/v1/stats (cluster totals, with the admin API
// key) and /metrics (this node's Prometheus text), derives rates and latency
// percentiles from successive samples, and draws them on <canvas> charts.
// This module owns sign-in, polling and the wiring; the others are imported
// by absolute path so the page's `script-src 'self'` allows them.

import { api, checkKey, currentApiKey, errorMessage, forgetApiKey, rememberApiKey, unstoreApiKey } from "/dashboard/api.js";
import { LineChart, PALETTE, POLL_MS } from "/dashboard/chart.js";
import { $, el, fmtAxis, fmtInt, fmtRate, fmtSeconds, fmtTime } from "/dashboard/format.js";
import { initInspector } from "/dashboard/inspector.js";
import { initPlayground, pgDisconnect } from "/dashboard/playground.js";
import { histogramBuckets, metricSum, parsePrometheus, quantileFromDelta } from "/dashboard/prometheus.js";

const charts = {};

function makeCharts() {
  charts.connections = new LineChart($("chart-connections"), {
    series: [{ key: "v", name: "open", color: PALETTE[0] }],
    integer: true,
  });
  charts.nodes = new LineChart($("chart-nodes"), { dynamic: true, integer: true, area: false });
  charts.rooms = new LineChart($("chart-rooms"), {
    series: [{ key: "v", name: "rooms", color: PALETTE[4] }],
    integer: true,
  });
  charts.throughput = new LineChart($("chart-throughput"), {
    series: [
      { key: "pub", name: "publishes/s", color: PALETTE[0] },
      { key: "del", name: "deliveries/s", color: PALETTE[1] },
    ],
    format: fmtRate,
    axisFormat: fmtAxis,
    emptyStep: 0.25,
  });
  charts.latency = new LineChart($("chart-latency"), {
    series: [
      { key: "p50", name: "p50", color: PALETTE[1] },
      { key: "p90", name: "p90", color: PALETTE[2] },
      { key: "p99", name: "p99", color: PALETTE[3] },
    ],
    format: fmtSeconds,
    emptyStep: 0.00025,
  });
  charts.evictions = new LineChart($("chart-evictions"), {
    series: [{ key: "v", name: "evictions/s", color: PALETTE[3] }],
    format: fmtRate,
    axisFormat: fmtAxis,
    emptyStep: 0.25,
  });
}

let startedAt = 0;

function drawCharts() {
  const now = Date.now();
  for (const c of Object.values(charts)) c.draw(now, startedAt);
}

// ---------------------------------------------------------------- polling

let pollTimer = null;
let polling = false;
let prev = null; // {t, publish, sent, evictions, buckets}

function setStatus(kind, text) {
  const s = $("status");
  s.className = "status status-" + kind;
  s.textContent = text;
}

function renderNodes(nodes) {
  const body = $("nodes");
  body.replaceChildren();
  if (!nodes || !nodes.length) {
    const tr = el("tr");
    const td = el("td", "empty", "No nodes reported.");
    td.colSpan = 4;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const n of nodes) {
    const tr = el("tr");
    tr.append(
      el("td", "", n.node_id),
      el("td", "num", fmtInt(n.connections)),
      el("td", "num", fmtInt(n.users)),
      el("td", "num", fmtInt(n.rooms)),
    );
    body.append(tr);
  }
}

// "websocket 3 · sse 1 · socketio 2" for this node, from /metrics.
function byTransport(metrics) {
  const samples = metrics.get("herald_connections_by_transport") || [];
  return samples
    .filter((s) => s.labels.transport && isFinite(s.value))
    .map((s) => `${s.labels.transport} ${fmtInt(s.value)}`)
    .join(" · ");
}

function update(stats, metrics, t) {
  $("connections").textContent = fmtInt(stats.connections);
  $("users").textContent = fmtInt(stats.users);
  $("rooms").textContent = fmtInt(stats.rooms);
  renderNodes(stats.nodes);
  charts.connections.push(t, { v: stats.connections });
  charts.rooms.push(t, { v: stats.rooms });
  const perNode = {};
  for (const n of stats.nodes || []) perNode[n.node_id] = n.connections;
  charts.nodes.push(t, perNode);

  $("connections-by-transport").textContent = metrics ? byTransport(metrics) : "";
  let cur = null;
  if (metrics) {
    cur = {
      t,
      publish: metricSum(metrics, "herald_publish_total"),
      sent: metricSum(metrics, "herald_messages_sent_total"),
      evictions: metricSum(metrics, "herald_send_queue_overflows_total"),
      buckets: histogramBuckets(metrics, "herald_delivery_latency_seconds"),
    };
  }
  const rate = (key) => {
    if (!prev || !cur || prev[key] === null || cur[key] === null) return null;
    const dt = (cur.t - prev.t) / 1000;
    if (dt <= 0) return null;
    const d = cur[key] - prev[key];
    return (d < 0 ? cur[key] : d) / dt; // a restart resets counters
  };
  const pub = rate("publish");
  const del = rate("sent");
  const ev = rate("evictions");
  const lat = {
    p50: quantileFromDelta(0.5, prev && prev.buckets, cur && cur.buckets),
    p90: quantileFromDelta(0.9, prev && prev.buckets, cur && cur.buckets),
    p99: quantileFromDelta(0.99, prev && prev.buckets, cur && cur.buckets),
  };
  $("publish-rate").textContent = fmtRate(pub);
  $("delivery-rate").textContent = fmtRate(del);
  $("p50").textContent = fmtSeconds(lat.p50);
  $("p90").textContent = fmtSeconds(lat.p90);
  $("p99").textContent = fmtSeconds(lat.p99);
  $("evictions").textContent = cur && cur.evictions !== null ? fmtInt(cur.evictions) : "–";
  $("evictions").title = "Connections cut as slow consumers since this node started";
  if (prev) {
    charts.throughput.push(t, { pub, del });
    charts.latency.push(t, lat);
    charts.evictions.push(t, { v: ev });
  }
  prev = cur;
  $("updated").textContent = "updated " + fmtTime(t);
  drawCharts();
}

async function poll() {
  if (!polling) return;
  const started = Date.now();
  try {
    const [statsRes, metricsRes] = await Promise.all([
      api("/api/v1/stats"),
      fetch("/metrics", { cache: "no-store" }).catch(() => null),
    ]);
    if (!polling) return;
    if (statsRes.status === 401 || statsRes.status === 403) {
      signOut(loginMessage(statsRes.status));
      return;
    }
    if (!statsRes.ok) throw new Error(await errorMessage(statsRes));
    const stats = await statsRes.json();
    let metrics = null;
    if (metricsRes && metricsRes.ok) metrics = parsePrometheus(await metricsRes.text());
    update(stats, metrics, Date.now());
    const node = stats.nodes && stats.nodes.length === 1 ? ` · ${stats.nodes[0].node_id}` : ` · ${(stats.nodes || []).length} nodes`;
    setStatus("live", "Live" + node);
  } catch (e) {
    setStatus("error", "Node unreachable");
    $("updated").textContent = String(e.message || e);
  } finally {
    if (polling) pollTimer = setTimeout(poll, Math.max(100, POLL_MS - (Date.now() - started)));
  }
}

function startPolling() {
  stopPolling();
  prev = null;
  startedAt = Date.now();
  for (const c of Object.values(charts)) c.reset();
  polling = true;
  poll();
}

function stopPolling() {
  polling = false;
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = null;
}

// ----------------------------------------------------------------- login

function loginMessage(status) {
  if (status === 401) return "This node does not accept that API key (401). Check the key and try again.";
  if (status === 403) return "That API key is valid but lacks the admin scope (403). The dashboard needs an admin key.";
  return `Unexpected answer from the node (HTTP ${status}).`;
}

function showDashboard() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = false;
  startPolling();
}

function signOut(message) {
  stopPolling();
  pgDisconnect();
  forgetApiKey();
  $("dashboard").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("updated").textContent = "";
  setStatus("idle", "Signed out");
  $("api-key").value = "";
  $("api-key").focus();
}

async function tryKey(key) {
  const err = $("login-error");
  const button = $("login-submit");
  err.textContent = "";
  if (!key) {
    err.textContent = "Enter an API key.";
    return;
  }
  button.disabled = true;
  button.textContent = "Checking…";
  try {
    const res = await checkKey(key);
    if (res.ok) {
      rememberApiKey(key);
      $("api-key").value = "";
      showDashboard();
    } else {
      unstoreApiKey();
      err.textContent = res.status === 401 || res.status === 403 ? loginMessage(res.status) : await errorMessage(res);
      $("api-key").focus();
    }
  } catch (e) {
    err.textContent = "Cannot reach the node: " + (e.message || e);
  } finally {
    button.disabled = false;
    button.textContent = "Open dashboard";
  }
}

// ------------------------------------------------------------------ wiring

function init() {
  makeCharts();

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    tryKey($("api-key").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut(""));

  initInspector(() => polling);
  initPlayground();

  if (typeof ResizeObserver === "function") {
    new ResizeObserver(() => drawCharts()).observe($("dashboard"));
  }

  if (currentApiKey()) {
    tryKey(currentApiKey());
  } else {
    $("api-key").focus();
  }
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", init);
} else {
  init();
}
