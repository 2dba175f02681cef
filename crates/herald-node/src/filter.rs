//! The per-connection event-name filter (PROTOCOL.md 3).

/// Glob patterns over event names; `*` matches any run of characters,
/// dots included. A new connection matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    patterns: Vec<String>,
    /// True until the first `subscribe` replaces the initial `*`.
    initial: bool,
}

impl Default for EventFilter {
    fn default() -> Self {
        Self {
            patterns: vec!["*".to_owned()],
            initial: true,
        }
    }
}

impl EventFilter {
    /// Adds patterns; the first call replaces the initial `["*"]`.
    pub fn subscribe(&mut self, patterns: &[String]) {
        if self.initial {
            self.patterns.clear();
            self.initial = false;
        }
        for p in patterns {
            if !self.patterns.contains(p) {
                self.patterns.push(p.clone());
            }
        }
    }

    /// Removes patterns (exact matches of earlier ones).
    pub fn unsubscribe(&mut self, patterns: &[String]) {
        self.initial = false;
        self.patterns.retain(|p| !patterns.contains(p));
    }

    /// The current patterns.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether every event passes (the filter holds a lone `*`).
    pub fn matches_everything(&self) -> bool {
        self.patterns.iter().any(|p| p == "*")
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), event.as_bytes()))
    }
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
        f.subscribe(&["agent.*".into()]);
        assert!(!f.matches("x"));
        assert!(f.matches("agent.started"));
        f.subscribe(&["pr.created".into()]);
        assert!(f.matches("pr.created"));
        f.unsubscribe(&["agent.*".into()]);
        assert!(!f.matches("agent.started"));
        assert!(f.matches("pr.created"));
    }
}
