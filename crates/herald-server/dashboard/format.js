// Number and time formatting for tiles, tables and charts, and the two
// small DOM helpers every other module uses.

export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

export function fmtInt(v) {
  return v === null || v === undefined || !isFinite(v) ? "–" : Math.round(v).toLocaleString("en-US");
}

export function fmtRate(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  if (v === 0) return "0";
  if (v >= 10000) return (v / 1000).toFixed(1) + "k";
  if (v >= 100) return Math.round(v).toString();
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

// Axis labels: no trailing zeros.
export function fmtAxis(v) {
  return v >= 1000 ? fmtRate(v) : String(Number(v.toFixed(3)));
}

export function fmtSeconds(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  if (v === 0) return "0";
  if (v >= 1) return v.toFixed(2) + " s";
  const ms = v * 1000;
  if (ms >= 100) return Math.round(ms) + " ms";
  if (ms >= 10) return ms.toFixed(1) + " ms";
  if (ms >= 1) return ms.toFixed(2) + " ms";
  return Math.round(ms * 1000) + " µs";
}

export function fmtTime(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}
