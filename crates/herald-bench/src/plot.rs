//! A hand-written SVG of a run: latency p50/p99 per second on top,
//! deliveries per second below, both over time. Polylines only.

use crate::metrics::SecondSample;
use std::fmt::Write;

const W: f64 = 860.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;

/// Renders the timeline as a standalone SVG document.
pub fn render(title: &str, samples: &[SecondSample]) -> String {
    let h = TOP + 2.0 * PANEL_H + GAP + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let t_max = samples.iter().map(|p| p.t_s).fold(1.0, f64::max);
    let lat_max = nice_ceiling(samples.iter().map(|p| p.p99_ms).fold(0.0, f64::max));
    let del_max = nice_ceiling(
        samples
            .iter()
            .map(|p| p.deliveries as f64)
            .fold(0.0, f64::max),
    );
    let top2 = TOP + PANEL_H + GAP;
    panel(
        &mut s,
        TOP,
        "latency, ms (p50 blue, p99 red)",
        t_max,
        lat_max,
    );
    series(&mut s, TOP, samples, t_max, lat_max, "#1f77b4", |p| {
        p.p50_ms
    });
    series(&mut s, TOP, samples, t_max, lat_max, "#d62728", |p| {
        p.p99_ms
    });
    panel(&mut s, top2, "deliveries per second", t_max, del_max);
    series(&mut s, top2, samples, t_max, del_max, "#2ca02c", |p| {
        p.deliveries as f64
    });
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since start</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        top2 + PANEL_H + 32.0
    );
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, top: f64, label: &str, t_max: f64, y_max: f64) {
    let pw = W - LEFT - RIGHT;
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{pw}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#888\"/>"
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}">{}</text>"#,
        top - 6.0,
        escape(label)
    );
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let y = top + PANEL_H * (1.0 - f);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            short(y_max * f)
        );
        let x = LEFT + pw * f;
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + PANEL_H + 14.0,
            short(t_max * f)
        );
    }
}

fn series(
    s: &mut String,
    top: f64,
    samples: &[SecondSample],
    t_max: f64,
    y_max: f64,
    color: &str,
    y: impl Fn(&SecondSample) -> f64,
) {
    if samples.is_empty() {
        return;
    }
    let pw = W - LEFT - RIGHT;
    let mut pts = String::new();
    for p in samples {
        let x = LEFT + pw * (p.t_s / t_max).clamp(0.0, 1.0);
        let yy = top + PANEL_H * (1.0 - (y(p) / y_max).clamp(0.0, 1.0));
        let _ = write!(pts, "{x:.1},{yy:.1} ");
    }
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
        pts.trim_end()
    );
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (1 for 0).
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v * 0.999_999 {
            return m * mag;
        }
    }
    10.0 * mag
}

fn short(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, d: u64, p50: f64, p99: f64) -> SecondSample {
        SecondSample {
            t_s: t,
            deliveries: d,
            p50_ms: p50,
            p99_ms: p99,
        }
    }

    #[test]
    fn svg_has_three_series_and_escapes_title() {
        let v = vec![sample(1.0, 100, 1.0, 3.0), sample(2.0, 200, 2.0, 4.0)];
        let svg = render("a<b & c", &v);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("a&lt;b &amp; c"));
        // Largest deliveries (200) sits on the panel's top edge.
        let top2 = TOP + PANEL_H + GAP;
        assert!(
            svg.contains(&format!("{:.1},{:.1}", W - RIGHT, top2)),
            "{svg}"
        );
    }

    #[test]
    fn empty_timeline_is_still_a_document() {
        let svg = render("x", &[]);
        assert_eq!(svg.matches("<polyline").count(), 0);
        assert!(svg.contains("</svg>"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(nice_ceiling(17.0), 20.0);
        assert_eq!(nice_ceiling(20_001.0), 50_000.0);
        assert_eq!(short(20_000.0), "20.0k");
    }
}
