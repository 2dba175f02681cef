//! A scenario's result: its parameters, its figures (named with their
//! units), and the per-second timeline; printed as a readable summary or as
//! one JSON object.

use crate::metrics::SecondSample;
use serde_json::{json, Map, Value};
use std::fmt::Write;

/// One scenario's result.
pub struct Report {
    /// Scenario name.
    pub scenario: &'static str,
    /// The parameters it ran with.
    pub params: Value,
    /// Every figure, grouped in nested objects.
    pub figures: Value,
    /// One sample per second.
    pub timeline: Vec<SecondSample>,
}

impl Report {
    /// A one-line title naming the scenario and its parameters.
    pub fn title(&self) -> String {
        let mut t = format!("herald-bench {}", self.scenario);
        if let Value::Object(m) = &self.params {
            for (k, v) in m {
                let _ = write!(t, " {k}={}", plain(v));
            }
        }
        t
    }

    /// One JSON object with everything.
    pub fn to_json(&self) -> String {
        let v = json!({
            "scenario": self.scenario,
            "params": self.params,
            "figures": self.figures,
            "timeline": self.timeline,
        });
        v.to_string()
    }

    /// The readable summary.
    pub fn summary(&self) -> String {
        let mut out = format!("{}\n", self.title());
        walk(&mut out, &self.figures, 1);
        out
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_u64() && !n.is_i64() => {
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.3}")
                }
            }
            _ => n.to_string(),
        },
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn walk(out: &mut String, v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => walk_map(out, m, depth),
        other => {
            let _ = writeln!(out, "{pad}{}", plain(other));
        }
    }
}

fn walk_map(out: &mut String, m: &Map<String, Value>, depth: usize) {
    let pad = "  ".repeat(depth);
    for (k, v) in m {
        match v {
            Value::Object(inner) if inner.is_empty() => {
                let _ = writeln!(out, "{pad}{k}: none");
            }
            Value::Object(inner) => {
                let _ = writeln!(out, "{pad}{k}:");
                walk_map(out, inner, depth + 1);
            }
            other => {
                let _ = writeln!(out, "{pad}{k}: {}", plain(other));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_nests_and_rounds() {
        let r = Report {
            scenario: "idle",
            params: json!({"conns": 10}),
            figures: json!({"rate": 12.34567, "big": 123456.7, "fail": {}, "server": {"rss_kib": 5}}),
            timeline: vec![],
        };
        let s = r.summary();
        assert!(s.starts_with("herald-bench idle conns=10\n"), "{s}");
        assert!(s.contains("  rate: 12.346\n"), "{s}");
        assert!(s.contains("  big: 123457\n"), "{s}");
        assert!(s.contains("  fail: none\n"), "{s}");
        assert!(s.contains("  server:\n    rss_kib: 5\n"), "{s}");
        let j: Value = serde_json::from_str(&r.to_json()).expect("test input");
        assert_eq!(j["figures"]["server"]["rss_kib"], 5);
    }
}
