//! `[proxy]`: the backend proxies (docs/protocol.md, "Backend proxies"):
//! the connect proxy's URL, mode and forwarded headers, the join, send and
//! RPC URLs, and the discipline every call shares (timeout, concurrency,
//! breaker, static headers).

use super::{invalid, ConfigError};
use herald_core::duration;
use herald_core::{Namespaces, Rule};
use herald_proxy::{AccessUrls, ConnectMode, ProxySettings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Most `proxy.forward_headers`: they travel in every connect call.
const MAX_FORWARD_HEADERS: usize = 32;

/// `[proxy]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The connect proxy: asked who a connection is.
    pub connect_url: Option<String>,
    /// `fallback`: JWT-shaped credentials are verified as JWTs, the rest
    /// go to `connect_url`; `always`: every credential goes there.
    pub connect_mode: ConnectMode,
    /// Request headers of the connection passed to the connect proxy
    /// (names, case-insensitive), e.g. `cookie`, `origin`, `user-agent`.
    pub forward_headers: Vec<String>,
    /// Asked whether a user may join a room of a namespace with
    /// `join = "proxy"`.
    pub join_url: Option<String>,
    /// Asked whether a user may send an event to a room of a namespace
    /// with `send = "proxy"`.
    pub send_url: Option<String>,
    /// Answers client `rpc` frames.
    pub rpc_url: Option<String>,
    /// Deadline of one whole call (the wait for a free slot included).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Calls in flight per kind (connect, join, send, rpc); more wait for
    /// a slot within the timeout.
    pub max_concurrency: usize,
    /// Consecutive failures (timeouts, connection errors, 5xx, answers
    /// that do not parse) that open a URL's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls fast before one probe call.
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// Static headers sent with every call, e.g. an `authorization` the
    /// backend checks; masked when the config is shown.
    pub headers: BTreeMap<String, String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let d = ProxySettings::default();
        Self {
            connect_url: None,
            connect_mode: ConnectMode::Fallback,
            forward_headers: Vec::new(),
            join_url: None,
            send_url: None,
            rpc_url: None,
            timeout: d.timeout,
            max_concurrency: d.max_concurrency,
            breaker_failures: d.breaker_failures,
            breaker_cooldown: d.breaker_cooldown,
            headers: BTreeMap::new(),
        }
    }
}

impl ProxyConfig {
    /// What every proxy client shares.
    pub fn settings(&self) -> ProxySettings {
        ProxySettings {
            timeout: self.timeout,
            max_concurrency: self.max_concurrency,
            breaker_failures: self.breaker_failures,
            breaker_cooldown: self.breaker_cooldown,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The join, send and RPC URLs.
    pub fn access_urls(&self) -> AccessUrls {
        AccessUrls {
            join: self.join_url.clone(),
            send: self.send_url.clone(),
            rpc: self.rpc_url.clone(),
        }
    }

    /// Whether any of join, send or RPC is proxied.
    pub fn has_access_proxy(&self) -> bool {
        self.join_url.is_some() || self.send_url.is_some() || self.rpc_url.is_some()
    }

    /// The forwarded header names, lower-case (as HTTP/1.1 header maps
    /// and the connect request name them).
    pub fn forward_header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .forward_headers
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Checks every `[proxy]` key, and that each namespace whose rule is
    /// `proxy` has the URL to ask.
    pub(super) fn validate(&self, rules: Option<&Namespaces>, problems: &mut Vec<ConfigError>) {
        for (key, url) in [
            ("proxy.connect_url", &self.connect_url),
            ("proxy.join_url", &self.join_url),
            ("proxy.send_url", &self.send_url),
            ("proxy.rpc_url", &self.rpc_url),
        ] {
            if let Some(Err(message)) = url.as_deref().map(herald_proxy::check_url) {
                problems.push(invalid(key, message));
            }
        }
        if self.connect_mode == ConnectMode::Always && self.connect_url.is_none() {
            problems.push(invalid(
                "proxy.connect_mode",
                "\"always\" sends every credential to proxy.connect_url, which is not set",
            ));
        }
        if self.timeout < Duration::from_millis(10) {
            problems.push(invalid("proxy.timeout", "must be at least 10ms"));
        }
        if self.max_concurrency == 0 {
            problems.push(invalid("proxy.max_concurrency", "must be greater than 0"));
        }
        if self.breaker_failures == 0 {
            problems.push(invalid("proxy.breaker_failures", "must be greater than 0"));
        }
        if self.breaker_cooldown < Duration::from_millis(10) {
            problems.push(invalid("proxy.breaker_cooldown", "must be at least 10ms"));
        }
        for (name, value) in &self.headers {
            if let Err(message) = herald_proxy::check_header(name, value) {
                problems.push(invalid(format!("proxy.headers.{name}"), message));
            }
        }
        if self.forward_headers.len() > MAX_FORWARD_HEADERS {
            problems.push(invalid(
                "proxy.forward_headers",
                format!("at most {MAX_FORWARD_HEADERS} names"),
            ));
        }
        for name in &self.forward_headers {
            if axum::http::HeaderName::from_bytes(name.trim().as_bytes()).is_err() {
                problems.push(invalid(
                    "proxy.forward_headers",
                    format!("`{name}` is not a valid header name"),
                ));
            }
        }
        let Some(rules) = rules else { return };
        for (ns, config) in rules.iter() {
            for (what, rule, url, url_key) in [
                ("join", &config.join, &self.join_url, "proxy.join_url"),
                ("send", &config.send, &self.send_url, "proxy.send_url"),
            ] {
                if *rule == Rule::Proxy && url.is_none() {
                    problems.push(invalid(
                        format!("namespaces.{ns}.{what}"),
                        format!("\"proxy\" asks the backend, but {url_key} is not set"),
                    ));
                }
            }
        }
    }

    /// The config with the static headers' values masked.
    pub(super) fn mask(&mut self) {
        for value in self.headers.values_mut() {
            *value = "********".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use herald_proxy::ConnectMode;
    use std::time::Duration;

    #[test]
    fn defaults_and_a_full_table() {
        let c = Config::from_toml("").expect("defaults are valid");
        assert_eq!(c.proxy.timeout, Duration::from_secs(2));
        assert_eq!(c.proxy.max_concurrency, 256);
        assert_eq!(c.proxy.breaker_failures, 5);
        assert_eq!(c.proxy.breaker_cooldown, Duration::from_secs(5));
        assert_eq!(c.proxy.connect_mode, ConnectMode::Fallback);
        assert!(!c.proxy.has_access_proxy());
        let c = Config::from_toml(
            r#"
            [auth]
            hs256_secret = "s"
            [proxy]
            connect_url = "http://127.0.0.1:9/connect"
            connect_mode = "always"
            forward_headers = ["Cookie", "x-tag", "cookie"]
            join_url = "https://backend.internal/join"
            timeout = "500ms"
            headers = { authorization = "Bearer backend-secret" }
            [namespaces.chat]
            join = "proxy"
            "#,
        )
        .expect("valid");
        assert_eq!(c.proxy.connect_mode, ConnectMode::Always);
        assert_eq!(c.proxy.forward_header_names(), ["cookie", "x-tag"]);
        assert!(c.proxy.has_access_proxy());
        let shown = c.to_masked_toml();
        assert!(!shown.contains("backend-secret"), "{shown}");
    }

    #[test]
    fn bad_keys_are_named() {
        let err = Config::from_toml(
            r#"
            [proxy]
            connect_url = "ftp://x/y"
            rpc_url = "not a url"
            timeout = "1ms"
            max_concurrency = 0
            breaker_failures = 0
            breaker_cooldown = "0s"
            forward_headers = ["bad header"]
            headers = { "x-bad" = "a\nb" }
            "#,
        )
        .expect_err("invalid");
        let text = err.to_string();
        for key in [
            "proxy.connect_url",
            "proxy.rpc_url",
            "proxy.timeout",
            "proxy.max_concurrency",
            "proxy.breaker_failures",
            "proxy.breaker_cooldown",
            "proxy.forward_headers",
            "proxy.headers.x-bad",
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        let unknown = Config::from_toml("[proxy]\nconect_url = \"http://x/\"\n").expect_err("typo");
        assert!(unknown.to_string().contains("conect_url"), "{unknown}");
    }

    #[test]
    fn proxy_rules_need_their_url_and_always_needs_connect_url() {
        let err = Config::from_toml(
            "[namespaces.chat]\njoin = \"proxy\"\nsend = \"proxy\"\n[proxy]\nconnect_mode = \"always\"\n",
        )
        .expect_err("no URLs");
        let text = err.to_string();
        for both in [
            ("namespaces.chat.join", "proxy.join_url"),
            ("namespaces.chat.send", "proxy.send_url"),
            ("proxy.connect_mode", "proxy.connect_url"),
        ] {
            assert!(
                text.contains(both.0) && text.contains(both.1),
                "{both:?}: {text}"
            );
        }
    }

    #[test]
    fn a_connect_proxy_without_a_token_key_is_not_development_mode() {
        let c = Config::from_toml(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[proxy]\nconnect_url = \"http://backend/connect\"\n",
        )
        .expect("the backend decides who connects; no made-up secret");
        assert!(!c.is_dev_mode());
    }
}
