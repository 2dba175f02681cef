//! Source patterns and the wildcard values a template's `{1}`..`{n}` take
//! from a message's subject or channel.
//!
//! - NATS subjects: tokens split on `.`; `*` is one token, `>` (last only)
//!   the rest of the subject, dots included.
//! - Redis channels (`PSUBSCRIBE` globs): `*` any run of characters, `?`
//!   one character. Each `*` takes as little as it can, the last one the
//!   rest (`a:*:*` on `a:b:c:d` gives `b`, `c:d`). Character classes and
//!   escapes are refused by validation: Redis would match them, but the
//!   wildcard numbering would become guesswork.

/// A subject or channel pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// A NATS subject pattern, split into tokens.
    Nats(Vec<String>),
    /// A Redis channel glob.
    Redis(String),
}

impl Pattern {
    /// Parses a NATS subject pattern.
    pub fn nats(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("must not be empty".into());
        }
        if pattern.contains(char::is_whitespace) {
            return Err(format!("`{pattern}`: a subject has no spaces"));
        }
        let tokens: Vec<String> = pattern.split('.').map(str::to_owned).collect();
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(format!(
                    "`{pattern}`: empty token (two dots, or a dot at an end)"
                ));
            }
            if t == ">" && i + 1 != tokens.len() {
                return Err(format!("`{pattern}`: `>` may only be the last token"));
            }
            if t.len() > 1 && (t.contains('*') || t.contains('>')) {
                return Err(format!(
                    "`{pattern}`: `*` and `>` must be whole tokens (`a.*.b`, not `a.b*`)"
                ));
            }
        }
        Ok(Self::Nats(tokens))
    }

    /// Parses a Redis `PSUBSCRIBE` glob.
    pub fn redis(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("must not be empty".into());
        }
        if pattern.contains(['[', ']', '\\']) {
            return Err(format!(
                "`{pattern}`: only `*` and `?` are supported (no `[...]` classes or `\\` escapes)"
            ));
        }
        Ok(Self::Redis(pattern.to_owned()))
    }

    /// How many wildcards the pattern has (what `{1}`..`{n}` may name).
    pub fn wildcards(&self) -> usize {
        match self {
            Self::Nats(tokens) => tokens.iter().filter(|t| *t == "*" || *t == ">").count(),
            Self::Redis(glob) => glob.chars().filter(|c| *c == '*' || *c == '?').count(),
        }
    }

    /// The text of the pattern, as given to the server.
    pub fn text(&self) -> String {
        match self {
            Self::Nats(tokens) => tokens.join("."),
            Self::Redis(glob) => glob.clone(),
        }
    }

    /// The values of the wildcards in `subject`, in order, or `None` when
    /// it does not match.
    pub fn captures(&self, subject: &str) -> Option<Vec<String>> {
        match self {
            Self::Nats(tokens) => nats_captures(tokens, subject),
            Self::Redis(glob) => {
                let mut out = Vec::new();
                let pattern: Vec<char> = glob.chars().collect();
                let text: Vec<char> = subject.chars().collect();
                glob_captures(&pattern, &text, &mut out).then_some(out)
            }
        }
    }
}

fn nats_captures(tokens: &[String], subject: &str) -> Option<Vec<String>> {
    let parts: Vec<&str> = subject.split('.').collect();
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match t.as_str() {
            ">" => {
                if parts.len() <= i {
                    return None;
                }
                out.push(parts[i..].join("."));
                return Some(out);
            }
            "*" => out.push((*parts.get(i)?).to_owned()),
            literal => {
                if *parts.get(i)? != literal {
                    return None;
                }
            }
        }
    }
    (parts.len() == tokens.len()).then_some(out)
}

/// Backtracking glob match; `*` tries the shortest run first. Patterns are
/// short config strings, so the worst case stays small.
fn glob_captures(pattern: &[char], text: &[char], out: &mut Vec<String>) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some('?') => {
            let Some(c) = text.first() else {
                return false;
            };
            out.push(c.to_string());
            if glob_captures(&pattern[1..], &text[1..], out) {
                return true;
            }
            out.pop();
            false
        }
        Some('*') => {
            for take in 0..=text.len() {
                out.push(text[..take].iter().collect());
                if glob_captures(&pattern[1..], &text[take..], out) {
                    return true;
                }
                out.pop();
            }
            false
        }
        Some(c) => text.first() == Some(c) && glob_captures(&pattern[1..], &text[1..], out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_wildcards_capture_tokens_and_the_tail() {
        let p = Pattern::nats("agents.*.events").unwrap();
        assert_eq!(p.wildcards(), 1);
        assert_eq!(p.captures("agents.42.events"), Some(vec!["42".into()]));
        assert_eq!(p.captures("agents.42.other"), None);
        assert_eq!(p.captures("agents.42.events.x"), None);
        assert_eq!(p.captures("agents.events"), None);
        let p = Pattern::nats("a.*.>").unwrap();
        assert_eq!(p.wildcards(), 2);
        assert_eq!(p.captures("a.b.c.d"), Some(vec!["b".into(), "c.d".into()]));
        assert_eq!(p.captures("a.b"), None);
        assert_eq!(Pattern::nats("x.y").unwrap().captures("x.y"), Some(vec![]));
    }

    #[test]
    fn bad_nats_patterns_are_refused() {
        for bad in ["", "a..b", ".a", "a.>.b", "a.b*", "a b"] {
            assert!(Pattern::nats(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redis_globs_capture_stars_and_question_marks() {
        let p = Pattern::redis("events:project:*").unwrap();
        assert_eq!(p.wildcards(), 1);
        assert_eq!(p.captures("events:project:7"), Some(vec!["7".into()]));
        assert_eq!(p.captures("events:agent:7"), None);
        let p = Pattern::redis("a:*:*").unwrap();
        assert_eq!(p.captures("a:b:c:d"), Some(vec!["b".into(), "c:d".into()]));
        let p = Pattern::redis("u?:*").unwrap();
        assert_eq!(p.captures("u1:x"), Some(vec!["1".into(), "x".into()]));
        assert_eq!(p.captures("u12:x"), None);
        assert!(Pattern::redis("a[bc]").is_err());
        assert!(Pattern::redis("").is_err());
    }
}
