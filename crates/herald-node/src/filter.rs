//! The per-connection event-name filter (PROTOCOL.md 3).
//!
//! Patterns without `*` sit in a hash set (one lookup per event, however
//! many there are); only wildcard patterns are globbed. The total is capped
//! by `limits.max_event_patterns`, so a client cannot make every event it
//! receives cost an ever longer scan.

use crate::error::NodeError;
use std::collections::HashSet;

/// Patterns one `subscribe` or `unsubscribe` request may carry.
const MAX_PATTERNS: usize = 64;
/// Bytes one pattern may have.
const MAX_PATTERN_BYTES: usize = 255;

/// Glob patterns over event names; `*` matches any run of characters,
/// dots included. A new connection matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// Patterns without `*`, matched by equality.
    exact: HashSet<String>,
    /// Patterns with `*`, globbed.
    wildcard: HashSet<String>,
    /// True until the first `subscribe` replaces the initial `*`.
    initial: bool,
}

/// A `subscribe` refused because the filter would hold more than its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at most {max} event patterns per connection")]
pub struct TooManyPatterns {
    /// The cap (`limits.max_event_patterns`).
    pub max: usize,
}

impl Default for EventFilter {
    fn default() -> Self {
        Self {
            exact: HashSet::new(),
            wildcard: HashSet::from(["*".to_owned()]),
            initial: true,
        }
    }
}

impl EventFilter {
    /// Adds patterns; the first call replaces the initial `["*"]`. Refused,
    /// changing nothing, when the filter would then hold more than `max`
    /// distinct patterns.
    pub fn subscribe(&mut self, patterns: &[String], max: usize) -> Result<(), TooManyPatterns> {
        let mut added: HashSet<&String> = HashSet::new();
        for p in patterns {
            let present = !self.initial && self.contains(p);
            if !present {
                added.insert(p);
            }
        }
        let kept = if self.initial { 0 } else { self.len() };
        if kept + added.len() > max {
            return Err(TooManyPatterns { max });
        }
        if self.initial {
            self.wildcard.clear();
            self.initial = false;
        }
        for p in added {
            if p.contains('*') {
                self.wildcard.insert(p.clone());
            } else {
                self.exact.insert(p.clone());
            }
        }
        Ok(())
    }

    /// Removes patterns (exact matches of earlier ones).
    pub fn unsubscribe(&mut self, patterns: &[String]) {
        self.initial = false;
        for p in patterns {
            self.exact.remove(p);
            self.wildcard.remove(p);
        }
    }

    fn contains(&self, pattern: &String) -> bool {
        self.exact.contains(pattern) || self.wildcard.contains(pattern)
    }

    /// How many distinct patterns the filter holds.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether the filter holds no pattern (nothing passes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every event passes (the filter holds a lone `*`).
    pub fn matches_everything(&self) -> bool {
        self.wildcard.contains("*")
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &str) -> bool {
        self.exact.contains(event)
            || self
                .wildcard
                .iter()
                .any(|p| glob(p.as_bytes(), event.as_bytes()))
    }
}

/// Refuses a request's pattern list that is too long or holds an empty
/// or oversized pattern, naming it.
pub(crate) fn check_patterns(events: &[String]) -> Result<(), NodeError> {
    if events.len() > MAX_PATTERNS {
        return Err(NodeError::BadRequest(format!(
            "at most {MAX_PATTERNS} patterns per request"
        )));
    }
    if let Some(bad) = events
        .iter()
        .find(|p| p.is_empty() || p.len() > MAX_PATTERN_BYTES)
    {
        return Err(NodeError::BadRequest(format!(
            "pattern `{}` must be 1 to {MAX_PATTERN_BYTES} bytes",
            bad.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// Iterative glob match with `*` only, linear in practice (backtracks to the
/// last star, never exponentially).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_forms() {
        assert!(glob(b"*", b"anything.at.all"));
        assert!(glob(b"project.*", b"project.updated"));
        assert!(glob(b"project.*", b"project.a.b"));
        assert!(!glob(b"project.*", b"projects"));
        assert!(glob(b"*.completed", b"agent.tool.completed"));
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(!glob(b"a*b*c", b"aXXbYY"));
        assert!(glob(b"exact", b"exact"));
        assert!(!glob(b"exact", b"exactly"));
        assert!(glob(b"", b""));
    }

    #[test]
    fn first_subscribe_replaces_then_adds() {
        let mut f = EventFilter::default();
        assert!(f.matches("x"));
        f.subscribe(&["agent.*".into()], 64).expect("room");
        assert!(!f.matches("x"));
        assert!(f.matches("agent.started"));
        f.subscribe(&["pr.created".into()], 64).expect("room");
        assert!(f.matches("pr.created"));
        f.unsubscribe(&["agent.*".into()]);
        assert!(!f.matches("agent.started"));
        assert!(f.matches("pr.created"));
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn the_cap_counts_distinct_patterns_and_refusal_changes_nothing() {
        let mut f = EventFilter::default();
        f.subscribe(&names("a.", 60), 64).expect("60 fit");
        // Duplicates, in the request or already held, are not counted.
        f.subscribe(&["a.1".into(), "a.1".into(), "b.*".into()], 64)
            .expect("one new pattern");
        assert_eq!(f.len(), 61);
        let err = f.subscribe(&names("c.", 4), 64).expect_err("65 > 64");
        assert_eq!(err, TooManyPatterns { max: 64 });
        assert_eq!(f.len(), 61, "a refused subscribe changes nothing");
        assert!(!f.matches("c.0"));
        f.subscribe(&names("c.", 3), 64).expect("exactly 64");
        assert_eq!(f.len(), 64);
        f.unsubscribe(&["a.0".into()]);
        f.subscribe(&["d".into()], 64)
            .expect("room again after unsubscribe");
    }

    #[test]
    fn a_refused_first_subscribe_keeps_matching_everything() {
        let mut f = EventFilter::default();
        assert!(f.subscribe(&names("x", 3), 2).is_err());
        assert!(f.matches_everything());
        assert!(f.matches("anything"));
        // The initial `*` is replaced, not counted against the cap.
        f.subscribe(&names("x", 2), 2).expect("2 fit");
        assert!(!f.matches_everything());
        assert!(f.matches("x1") && !f.matches("x2"));
    }

    #[test]
    fn exact_and_wildcard_patterns_both_match() {
        let mut f = EventFilter::default();
        f.subscribe(
            &["pr.created".into(), "agent.*".into(), "*.done".into()],
            64,
        )
        .expect("fit");
        assert!(f.matches("pr.created"));
        assert!(!f.matches("pr.created.x"));
        assert!(f.matches("agent.tool.started"));
        assert!(f.matches("job.done"));
        assert!(!f.matches("job.failed"));
        f.subscribe(&["*".into()], 64).expect("fit");
        assert!(f.matches_everything());
    }
}
