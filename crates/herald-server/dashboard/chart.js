// LineChart: a time-series line chart drawn on a <canvas>, with a grid of
// round steps, "seconds ago" labels and a legend of the latest values.

import { fmtInt, fmtRate } from "/dashboard/format.js";

// How often the dashboard samples the node; charts keep two extra samples.
export const POLL_MS = 1000;
const WINDOW_MS = 120 * 1000;
// A fresh dashboard shows at least this span and widens to WINDOW_MS.
const MIN_SPAN_MS = 30 * 1000;
export const PALETTE = ["#5b9cff", "#3ddc97", "#ffb454", "#ff6b7a", "#c792ea", "#4dd0e1", "#f78c6c", "#c3e88d"];

function niceCeil(v) {
  if (!(v > 0)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(v)));
  const f = v / exp;
  const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  return nice * exp;
}

export class LineChart {
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
