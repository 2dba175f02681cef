// Herald operator dashboard. Plain JavaScript, no dependencies, no build.
//
// Every second it reads /api/v1/stats (cluster totals, with the admin API
// key) and /metrics (this node's Prometheus text), derives rates and latency
// percentiles from successive samples, and draws them on <canvas> charts.
"use strict";

(() => {
  const KEY_STORAGE = "herald.apiKey";
  const POLL_MS = 1000;
  const WINDOW_MS = 120 * 1000;
  // A fresh dashboard shows at least this span and widens to WINDOW_MS.
  const MIN_SPAN_MS = 30 * 1000;
  const PALETTE = ["#5b9cff", "#3ddc97", "#ffb454", "#ff6b7a", "#c792ea", "#4dd0e1", "#f78c6c", "#c3e88d"];

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- helpers

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmtInt(v) {
    return v === null || v === undefined || !isFinite(v) ? "–" : Math.round(v).toLocaleString("en-US");
  }

  function fmtRate(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    if (v === 0) return "0";
    if (v >= 10000) return (v / 1000).toFixed(1) + "k";
    if (v >= 100) return Math.round(v).toString();
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  // Axis labels: no trailing zeros.
  function fmtAxis(v) {
    return v >= 1000 ? fmtRate(v) : String(Number(v.toFixed(3)));
  }

  function fmtSeconds(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    if (v === 0) return "0";
    if (v >= 1) return v.toFixed(2) + " s";
    const ms = v * 1000;
    if (ms >= 100) return Math.round(ms) + " ms";
    if (ms >= 10) return ms.toFixed(1) + " ms";
    if (ms >= 1) return ms.toFixed(2) + " ms";
    return Math.round(ms * 1000) + " µs";
  }

  function fmtTime(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString("en-GB", { hour12: false });
  }

  async function errorMessage(res) {
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) return `${res.status} ${body.error.code}: ${body.error.message}`;
    } catch (_) {
      // not JSON
    }
    return `HTTP ${res.status}`;
  }

  // -------------------------------------------------------------- API calls

  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";

  function api(path, options) {
    const opts = Object.assign({ cache: "no-store" }, options || {});
    opts.headers = Object.assign({ Authorization: "Bearer " + apiKey }, opts.headers || {});
    return fetch(path, opts);
  }

  function apiJson(path, body) {
    return api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  // ------------------------------------------------------ Prometheus parsing

  function parseValue(s) {
    if (s === "+Inf" || s === "Inf") return Infinity;
    if (s === "-Inf") return -Infinity;
    if (s === "NaN") return NaN;
    return Number(s);
  }

  // Returns Map(name -> [{labels, value}]) from the text exposition format.
  function parsePrometheus(text) {
    const out = new Map();
    const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$/;
    const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (!line || line[0] === "#") continue;
      const m = lineRe.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        let l;
        labelRe.lastIndex = 0;
        while ((l = labelRe.exec(m[2])) !== null) {
          labels[l[1]] = l[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
        }
      }
      if (!out.has(m[1])) out.set(m[1], []);
      out.get(m[1]).push({ labels, value: parseValue(m[3]) });
    }
    return out;
  }

  // The sum of every series of `name`, or null when the metric is absent.
  function metricSum(metrics, name) {
    const samples = metrics.get(name);
    if (!samples) return null;
    return samples.reduce((acc, s) => acc + (isFinite(s.value) ? s.value : 0), 0);
  }

  // Cumulative histogram buckets of `name` summed over other labels, sorted
  // by bound: [{le, count}].
  function histogramBuckets(metrics, name) {
    const samples = metrics.get(name + "_bucket");
    if (!samples) return null;
    const byLe = new Map();
    for (const s of samples) {
      if (s.labels.le === undefined) continue;
      const le = parseValue(s.labels.le);
      byLe.set(le, (byLe.get(le) || 0) + s.value);
    }
    return [...byLe.entries()].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
  }

  // Percentile `q` (0..1) of the observations between two bucket samples,
  // interpolated linearly inside the bucket, as Prometheus'
  // histogram_quantile does. Null when nothing was observed.
  function quantileFromDelta(q, prev, cur) {
    if (!prev || !cur) return null;
    const before = new Map(prev.map((b) => [b.le, b.count]));
    const delta = cur.map((b) => {
      const d = b.count - (before.get(b.le) || 0);
      return { le: b.le, count: d < 0 ? b.count : d }; // a reset counts from zero
    });
    if (!delta.length) return null;
    const total = delta[delta.length - 1].count;
    if (!(total > 0)) return null;
    const rank = q * total;
    let lowerLe = 0;
    let lowerCount = 0;
    for (const b of delta) {
      if (b.count >= rank) {
        if (b.le === Infinity) return lowerLe;
        const inBucket = b.count - lowerCount;
        if (inBucket <= 0) return b.le;
        return lowerLe + ((b.le - lowerLe) * (rank - lowerCount)) / inBucket;
      }
      lowerLe = b.le;
      lowerCount = b.count;
    }
    return lowerLe;
  }

  // -------------------------------------------------------------- charts

  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(v)));
    const f = v / exp;
    const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return nice * exp;
  }

  class LineChart {
    // opts: {series: [{key, name, color}], format, integer, dynamic, area}
    constructor(canvas, opts) {
      this.canvas = canvas;
      this.ctx = canvas.getContext("2d");
      this.series = (opts.series || []).slice();
      this.format = opts.format || fmtRate;
      this.integer = !!opts.integer;
      this.dynamic = !!opts.dynamic;
      this.area = opts.area !== false;
      this.axisFormat = opts.axisFormat || this.format;
      this.emptyStep = opts.emptyStep || 1;
      this.points = [];
    }

    ensureSeries(key) {
      if (this.series.some((s) => s.key === key)) return;
      this.series.push({ key, name: key, color: PALETTE[this.series.length % PALETTE.length] });
    }

    push(t, values) {
      if (this.dynamic) Object.keys(values).forEach((k) => this.ensureSeries(k));
      this.points.push({ t, values });
      const cutoff = t - WINDOW_MS - POLL_MS * 2;
      while (this.points.length && this.points[0].t < cutoff) this.points.shift();
    }

    reset() {
      this.points = [];
      if (this.dynamic) this.series = [];
    }

    draw(now, since) {
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = c.clientWidth;
      const h = c.clientHeight;
      if (!w || !h) return;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const ctx = this.ctx;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);

      const padL = 52;
      const padR = 8;
      const padT = 24;
      const padB = 20;
      const plotW = w - padL - padR;
      const plotH = h - padT - padB;
      const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - (since || now)));
      const t0 = now - span;
      const x = (t) => padL + ((t - t0) / span) * plotW;

      let max = 0;
      for (const p of this.points) {
        for (const s of this.series) {
          const v = p.values[s.key];
          if (v !== null && v !== undefined && isFinite(v) && v > max) max = v;
        }
      }
      // Four grid steps of a round size (1, 2, 2.5 or 5 times a power
      // of ten; whole numbers for counts).
      const steps = 4;
      let stepSize = max > 0 ? niceCeil((max * 1.05) / steps) : this.emptyStep;
      if (this.integer) stepSize = Math.max(1, Math.ceil(stepSize));
      const top = stepSize * steps;
      const y = (v) => padT + plotH - (v / top) * plotH;

      // Grid and y labels.
      ctx.font = "11px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      ctx.lineWidth = 1;
      for (let i = 0; i <= steps; i++) {
        const v = stepSize * i;
        const yy = Math.round(y(v)) + 0.5;
        ctx.strokeStyle = i === 0 ? "#3a4666" : "#232c44";
        ctx.beginPath();
        ctx.moveTo(padL, yy);
        ctx.lineTo(w - padR, yy);
        ctx.stroke();
        ctx.fillStyle = "#8893ab";
        ctx.fillText(this.integer ? fmtInt(v) : this.axisFormat(v), padL - 6, yy);
      }
      // Time labels, seconds ago.
      ctx.textBaseline = "alphabetic";
      const spanS = span / 1000;
      const step = [5, 10, 15, 30, 60].find((st) => spanS / st <= 4) || 60;
      for (let ago = 0; ago <= spanS + 0.001; ago += step) {
        const xx = x(now - ago * 1000);
        if (xx - padL < 24 && ago !== 0) {
          ctx.textAlign = "left";
          ctx.fillText(`−${ago}s`, padL, h - 5);
          continue;
        }
        ctx.textAlign = ago === 0 ? "right" : "center";
        ctx.fillText(ago === 0 ? "now" : `−${ago}s`, xx, h - 5);
      }

      // Lines.
      ctx.save();
      ctx.beginPath();
      ctx.rect(padL, padT - 2, plotW, plotH + 4);
      ctx.clip();
      for (const s of this.series) {
        let run = [];
        const runs = [];
        for (const p of this.points) {
          const v = p.values[s.key];
          if (v === null || v === undefined || !isFinite(v)) {
            if (run.length) runs.push(run);
            run = [];
          } else {
            run.push([x(p.t), y(v)]);
          }
        }
        if (run.length) runs.push(run);
        for (const r of runs) {
          if (this.area && this.series.length === 1 && r.length > 1) {
            const grad = ctx.createLinearGradient(0, padT, 0, padT + plotH);
            grad.addColorStop(0, s.color + "55");
            grad.addColorStop(1, s.color + "05");
            ctx.fillStyle = grad;
            ctx.beginPath();
            ctx.moveTo(r[0][0], padT + plotH);
            for (const [px, py] of r) ctx.lineTo(px, py);
            ctx.lineTo(r[r.length - 1][0], padT + plotH);
            ctx.closePath();
            ctx.fill();
          }
          ctx.strokeStyle = s.color;
          ctx.lineWidth = 2;
          ctx.lineJoin = "round";
          ctx.beginPath();
          r.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
          ctx.stroke();
          if (r.length === 1) {
            ctx.fillStyle = s.color;
            ctx.beginPath();
            ctx.arc(r[0][0], r[0][1], 2.5, 0, Math.PI * 2);
            ctx.fill();
          }
        }
      }
      ctx.restore();

      // Legend with the latest value of each series.
      const last = this.points.length ? this.points[this.points.length - 1].values : {};
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      ctx.font = "12px system-ui, sans-serif";
      let lx = padL;
      for (const s of this.series) {
        const v = last[s.key];
        const label = `${s.name} ${this.integer ? fmtInt(v) : this.format(v)}`;
        ctx.fillStyle = s.color;
        ctx.fillRect(lx, 7, 10, 10);
        ctx.fillStyle = "#c8d0e0";
        ctx.fillText(label, lx + 14, 12);
        lx += 14 + ctx.measureText(label).width + 16;
        if (lx > w - 40) break;
      }
    }
  }

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
    apiKey = "";
    sessionStorage.removeItem(KEY_STORAGE);
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
      const res = await fetch("/api/v1/stats", { cache: "no-store", headers: { Authorization: "Bearer " + key } });
      if (res.ok) {
        apiKey = key;
        sessionStorage.setItem(KEY_STORAGE, key);
        $("api-key").value = "";
        showDashboard();
      } else {
        sessionStorage.removeItem(KEY_STORAGE);
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

  // -------------------------------------------------------- room inspector

  let inspectTimer = null;
  let inspecting = null; // {room, tenant}

  function roomPath(room, suffix, params) {
    const q = new URLSearchParams(params);
    const qs = q.toString();
    return `/api/v1/rooms/${encodeURIComponent(room)}/${suffix}${qs ? "?" + qs : ""}`;
  }

  function eventItem(ev) {
    const li = el("li");
    li.append(
      el("span", "off", "#" + ev.offset),
      el("span", "ev", ev.event + (ev.type === "message" && ev.from ? ` ← ${ev.from.user_id}` : "")),
      el("span", "data", JSON.stringify(ev.data)),
      el("span", "ts", ev.ts ? fmtTime(ev.ts) : ""),
    );
    li.title = JSON.stringify(ev);
    return li;
  }

  async function inspect() {
    if (!inspecting) return;
    const { room, tenant } = inspecting;
    const base = tenant ? { tenant } : {};
    const err = $("inspector-error");
    try {
      const [pRes, hRes] = await Promise.all([
        api(roomPath(room, "presence", base)),
        api(roomPath(room, "history", Object.assign({ limit: 20 }, base))),
      ]);
      if (!pRes.ok) throw new Error(await errorMessage(pRes));
      if (!hRes.ok) throw new Error(await errorMessage(hRes));
      const presence = await pRes.json();
      let history = await hRes.json();
      // History runs oldest first from `since`; ask again for the tail.
      const lastShown = history.events.length ? history.events[history.events.length - 1].offset : 0;
      if (history.offset > lastShown && history.offset > 20) {
        const since = Math.max(0, history.offset - 20);
        const again = await api(roomPath(room, "history", Object.assign({ limit: 20, since, epoch: history.epoch }, base)));
        if (again.ok) history = await again.json();
      }
      if (!inspecting || inspecting.room !== room) return;
      err.textContent = "";
      $("inspector-result").hidden = false;
      const members = presence.members || [];
      $("inspector-member-count").textContent = members.length;
      const mBody = $("inspector-members");
      mBody.replaceChildren();
      if (!members.length) {
        const tr = el("tr");
        const td = el("td", "empty", "No members on this room (or presence is off for its namespace).");
        td.colSpan = 3;
        tr.append(td);
        mBody.append(tr);
      }
      for (const m of members) {
        const tr = el("tr");
        tr.append(el("td", "", m.user_id), el("td", "", m.connection_id), el("td", "", m.node_id));
        mBody.append(tr);
      }
      $("inspector-position").textContent = `epoch ${history.epoch} · offset ${history.offset}`;
      const list = $("inspector-events");
      list.replaceChildren();
      const events = (history.events || []).slice().reverse();
      if (!events.length) list.append(el("li", "empty", "No stored events (history may be off for this namespace)."));
      for (const ev of events) list.append(eventItem(ev));
    } catch (e) {
      err.textContent = String(e.message || e);
    }
  }

  function scheduleInspect() {
    if (inspectTimer) clearInterval(inspectTimer);
    inspectTimer = null;
    if (inspecting && $("inspect-auto").checked) {
      inspectTimer = setInterval(() => {
        if (polling) inspect();
      }, 2000);
    }
  }

  // ------------------------------------------------------------ playground

  let ws = null;
  let nextId = 1;

  function logFrame(kind, text) {
    const log = $("pg-log");
    const li = el("li", kind);
    const arrow = { in: "←", out: "→", sys: "•", err: "!" }[kind] || "•";
    li.append(el("span", "ts", fmtTime(Date.now())), el("span", "dir", arrow), el("span", "data", text));
    li.title = text;
    log.append(li);
    while (log.children.length > 200) log.firstChild.remove();
    log.scrollTop = log.scrollHeight;
  }

  function pgState() {
    const open = ws && ws.readyState === WebSocket.OPEN;
    const connecting = ws && ws.readyState === WebSocket.CONNECTING;
    const badge = $("pg-state");
    badge.textContent = open ? "open" : connecting ? "connecting" : "closed";
    badge.className = "badge" + (open ? " open" : "");
    $("pg-connect").textContent = open || connecting ? "Disconnect" : "Connect";
    $("pg-connect").disabled = !$("pg-token").value && !ws;
    $("pg-join").disabled = !open;
  }

  function pgDisconnect() {
    if (ws) {
      const s = ws;
      ws = null;
      s.close(1000);
    }
    if ($("pg-state")) pgState();
  }

  function pgConnect() {
    const token = $("pg-token").value;
    if (!token) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${proto}//${location.host}/ws?token=${encodeURIComponent(token)}`;
    logFrame("sys", "connecting to /ws");
    const sock = new WebSocket(url);
    ws = sock;
    sock.onopen = () => {
      logFrame("sys", "connected");
      pgState();
    };
    sock.onmessage = (m) => {
      logFrame("in", typeof m.data === "string" ? m.data : "(binary frame)");
    };
    sock.onerror = () => logFrame("err", "WebSocket error");
    sock.onclose = (e) => {
      logFrame("sys", `closed ${e.code}${e.reason ? " " + e.reason : ""}`);
      if (ws === sock) ws = null;
      pgState();
    };
    pgState();
  }

  function pgSend(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      logFrame("err", "not connected");
      return;
    }
    const text = JSON.stringify(frame);
    ws.send(text);
    logFrame("out", text);
  }

  function parseJsonField(id, what) {
    const text = $(id).value.trim();
    if (!text) return { ok: true, value: undefined };
    try {
      return { ok: true, value: JSON.parse(text) };
    } catch (e) {
      logFrame("err", `${what} is not valid JSON: ${e.message}`);
      return { ok: false };
    }
  }

  async function pgMint() {
    const sub = $("pg-sub").value.trim();
    if (!sub) {
      logFrame("err", "enter a user id");
      return;
    }
    const claims = parseJsonField("pg-claims", "claims");
    if (!claims.ok) return;
    if (claims.value !== undefined && (typeof claims.value !== "object" || Array.isArray(claims.value) || claims.value === null)) {
      logFrame("err", "claims must be a JSON object");
      return;
    }
    try {
      const res = await apiJson("/api/v1/tokens", { sub, claims: claims.value || {} });
      if (!res.ok) {
        logFrame("err", "mint failed: " + (await errorMessage(res)));
        return;
      }
      const body = await res.json();
      $("pg-token").value = body.token;
      logFrame("sys", `token minted for ${sub}, expires ${new Date(body.expires_at * 1000).toLocaleString("en-GB")}`);
    } catch (e) {
      logFrame("err", "mint failed: " + (e.message || e));
    }
    pgState();
  }

  async function pgPublish() {
    const room = $("pg-room").value.trim();
    const event = $("pg-event").value.trim();
    const data = parseJsonField("pg-data", "data");
    if (!data.ok) return;
    if (!room || !event) {
      logFrame("err", "enter a room and an event name");
      return;
    }
    try {
      const res = await apiJson("/api/v1/publish", { room, event, data: data.value === undefined ? null : data.value });
      if (!res.ok) {
        logFrame("err", "publish failed: " + (await errorMessage(res)));
        return;
      }
      const body = await res.json();
      logFrame("sys", `published ${event} to ${room} at offset ${body.offset}`);
    } catch (e) {
      logFrame("err", "publish failed: " + (e.message || e));
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

    $("inspector-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const room = $("inspect-room").value.trim();
      if (!room) return;
      inspecting = { room, tenant: $("inspect-tenant").value.trim() };
      $("inspector-error").textContent = "";
      inspect();
      scheduleInspect();
    });
    $("inspect-auto").addEventListener("change", scheduleInspect);

    $("pg-token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      pgMint();
    });
    $("pg-connect").addEventListener("click", () => {
      if (ws) {
        pgDisconnect();
      } else {
        pgConnect();
      }
    });
    $("pg-join-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const room = $("pg-room").value.trim();
      if (room) pgSend({ type: "join_room", room, id: nextId++ });
    });
    $("pg-publish-form").addEventListener("submit", (e) => {
      e.preventDefault();
      pgPublish();
    });
    $("pg-clear").addEventListener("click", () => $("pg-log").replaceChildren());
    pgState();

    if (typeof ResizeObserver === "function") {
      new ResizeObserver(() => drawCharts()).observe($("dashboard"));
    }

    if (apiKey) {
      tryKey(apiKey);
    } else {
      $("api-key").focus();
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
