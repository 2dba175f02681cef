// This node's /metrics in the Prometheus text exposition format: parsing,
// sums over series, cumulative histogram buckets, and latency quantiles
// from the difference between two successive bucket samples.

function parseValue(s) {
  if (s === "+Inf" || s === "Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  if (s === "NaN") return NaN;
  return Number(s);
}

// Returns Map(name -> [{labels, value}]) from the text exposition format.
export function parsePrometheus(text) {
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
export function metricSum(metrics, name) {
  const samples = metrics.get(name);
  if (!samples) return null;
  return samples.reduce((acc, s) => acc + (isFinite(s.value) ? s.value : 0), 0);
}

// Cumulative histogram buckets of `name` summed over other labels, sorted
// by bound: [{le, count}].
export function histogramBuckets(metrics, name) {
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
export function quantileFromDelta(q, prev, cur) {
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
