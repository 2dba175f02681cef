//! Herald's backend proxies (docs/protocol.md, "Backend proxies"): the
//! application's own HTTP endpoints asked who a connection is
//! ([`ConnectVerifier`], a [`herald_core::TokenVerifier`]), whether a user
//! may join a room or send an event, and to answer client RPCs
//! ([`HttpAccessProxy`], a [`herald_core::access::AccessProxy`]).
//!
//! Every call goes through a [`ProxyClient`]: a JSON POST under one
//! deadline (`proxy.timeout`), at most `proxy.max_concurrency` calls in
//! flight per kind, and a circuit breaker per URL, so a slow or dead
//! backend costs a client an `unavailable` error, never a hang.

#![warn(missing_docs)]

mod access;
pub mod breaker;
mod client;
mod connect;
mod jwt_shape;

pub use access::{parse_cache_ttl, AccessUrls, HttpAccessProxy};
pub use client::{check_header, check_url, http_client, CallError, ProxyClient, MAX_ANSWER_BYTES};
pub use connect::{ConnectMode, ConnectVerifier};
pub use jwt_shape::looks_like_jwt;

use std::time::Duration;

/// How every proxy client calls its backend (the `[proxy]` keys they share).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Deadline of one whole call, the wait for a slot included
    /// (`proxy.timeout`).
    pub timeout: Duration,
    /// Calls in flight per kind (`proxy.max_concurrency`).
    pub max_concurrency: usize,
    /// Consecutive failures that open a breaker (`proxy.breaker_failures`).
    pub breaker_failures: u32,
    /// How long an open breaker fails calls fast before a probe
    /// (`proxy.breaker_cooldown`).
    pub breaker_cooldown: Duration,
    /// Static headers sent with every call (`proxy.headers`), e.g. an
    /// `Authorization` the backend checks.
    pub headers: Vec<(String, String)>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            max_concurrency: 256,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }
}

/// A proxy that cannot be built from its settings.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// A URL that is not an absolute http(s) URL.
    #[error("proxy.{kind}_url: {message}")]
    Url {
        /// Which URL (`connect`, `join`, `send`, `rpc`).
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A `proxy.headers` entry that is not a valid header.
    #[error("proxy.headers: {0}")]
    Header(String),
    /// The HTTP client could not be built (TLS roots, say).
    #[error("proxy: cannot build the HTTP client: {0}")]
    Client(String),
}

/// Describes the proxy metrics once for the exporter.
pub fn describe_metrics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        metrics::describe_counter!(
            "herald_proxy_calls_total",
            "Backend proxy calls by kind (connect, join, send, rpc) and outcome (ok, refused, \
             failed, timeout, unavailable)"
        );
        metrics::describe_histogram!(
            "herald_proxy_duration_seconds",
            metrics::Unit::Seconds,
            "Time from sending a backend proxy call to its whole answer, by kind"
        );
        metrics::describe_gauge!(
            "herald_proxy_breaker_open",
            "1 while the circuit breaker of a proxy kind refuses calls (open or half-open)"
        );
    });
}
