//! One backend URL: a JSON POST under one deadline, a bounded number of
//! calls in flight, a circuit breaker, and the calls' metrics.

use crate::breaker::{Breaker, Transition};
use crate::{ProxyError, ProxySettings};
use bytes::BytesMut;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};

/// Largest answer read from a backend; a longer one is a failure (the
/// answers are small JSON objects, an RPC result at most a frame).
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Longest refusal message passed on to a client, in bytes.
const MAX_MESSAGE_BYTES: usize = 512;

/// Why a call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Not sent: the breaker is open, or no slot freed up within the
    /// timeout.
    #[error("{0}")]
    Unavailable(String),
    /// Sent, but no whole answer within `proxy.timeout`.
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection error, a 5xx or other unexpected status, or a 2xx answer
    /// that does not parse.
    #[error("{0}")]
    Failed(String),
    /// The backend answered 4xx: a deliberate refusal, with its `message`.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's `message`, or a description of the status.
        message: String,
    },
}

/// The client of one backend URL (one per kind: connect, join, send, rpc).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProxyClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: &'static str,
    url: reqwest::Url,
    http: reqwest::Client,
    headers: HeaderMap,
    timeout: Duration,
    slots: Semaphore,
    breaker: Breaker,
}

/// Checks a backend URL: absolute, `http` or `https`.
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host_str().is_some() => Ok(parsed),
        "http" | "https" => Err(format!("`{url}` has no host")),
        other => Err(format!("`{url}`: scheme `{other}` is not http or https")),
    }
}

/// Checks one static header (`proxy.headers`): a valid name and value.
pub fn check_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
    // Keeps an Authorization for the backend out of debug output.
    v.set_sensitive(true);
    Ok((n, v))
}

/// The HTTP client every proxy shares (one connection pool): redirects
/// are not followed (a backend answers, it does not send us elsewhere).
pub fn http_client() -> Result<reqwest::Client, ProxyError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ProxyError::Client(e.to_string()))
}

impl ProxyClient {
    /// The client of `url` for calls of `kind` (a metrics label:
    /// `connect`, `join`, `send` or `rpc`).
    pub fn new(
        kind: &'static str,
        url: &str,
        settings: &ProxySettings,
        http: reqwest::Client,
    ) -> Result<Self, ProxyError> {
        let url = check_url(url).map_err(|message| ProxyError::Url { kind, message })?;
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let (n, v) = check_header(name, value).map_err(ProxyError::Header)?;
            headers.insert(n, v);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        crate::describe_metrics();
        metrics::gauge!("herald_proxy_breaker_open", "kind" => kind).set(0.0);
        Ok(Self {
            inner: Arc::new(Inner {
                kind,
                url,
                http,
                headers,
                timeout: settings.timeout,
                slots: Semaphore::new(settings.max_concurrency.max(1)),
                breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
            }),
        })
    }

    /// The kind of calls this client makes.
    pub fn kind(&self) -> &'static str {
        self.inner.kind
    }

    /// Whether the breaker currently refuses calls.
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// POSTs `body` as JSON and parses a 2xx answer as `T`, all within
    /// `proxy.timeout` (the wait for a slot included).
    pub async fn call<T: DeserializeOwned>(&self, body: &impl Serialize) -> Result<T, CallError> {
        let me = &*self.inner;
        let deadline = Instant::now() + me.timeout;
        let Some(ticket) = me.breaker.admit() else {
            self.count("unavailable");
            return Err(CallError::Unavailable(format!(
                "the {} backend is failing; retry later",
                me.kind
            )));
        };
        let Ok(Ok(_slot)) = timeout_at(deadline, me.slots.acquire()).await else {
            // Not the backend's fault (yet): the ticket goes unreported.
            self.count("unavailable");
            return Err(CallError::Unavailable(format!(
                "too many {} calls in flight (proxy.max_concurrency); retry later",
                me.kind
            )));
        };
        let body = serde_json::to_vec(body).map_err(|e| CallError::Failed(e.to_string()))?;
        let started = std::time::Instant::now();
        let result = match timeout_at(deadline, self.exchange(body)).await {
            Err(_) => Err(CallError::Timeout(me.timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((status, bytes))) => Ok(decode::<T>(status, &bytes)),
        };
        metrics::histogram!("herald_proxy_duration_seconds", "kind" => me.kind)
            .record(started.elapsed().as_secs_f64());
        let (result, transition) = match result {
            Ok(Ok(value)) => {
                self.count("ok");
                (Ok(value), ticket.success())
            }
            Ok(Err(refused @ CallError::Refused { .. })) => {
                self.count("refused");
                (Err(refused), ticket.success())
            }
            Ok(Err(e)) | Err(e) => {
                self.count(if matches!(e, CallError::Timeout(_)) {
                    "timeout"
                } else {
                    "failed"
                });
                tracing::debug!(kind = me.kind, error = %e, "proxy call failed");
                (Err(e), ticket.failure())
            }
        };
        self.announce(transition);
        result
    }

    /// Sends the request and reads the whole answer (bounded).
    async fn exchange(&self, body: Vec<u8>) -> Result<(u16, BytesMut), CallError> {
        let me = &*self.inner;
        let mut response = me
            .http
            .post(me.url.clone())
            .headers(me.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| CallError::Failed(format!("cannot reach the {} backend: {e}", me.kind)))?;
        let status = response.status().as_u16();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_long(me.kind));
        }
        let mut bytes = BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::Failed(format!("the {} answer broke off: {e}", me.kind)))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_long(me.kind));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, bytes))
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!("herald_proxy_calls_total", "kind" => self.inner.kind, "outcome" => outcome)
            .increment(1);
    }

    fn announce(&self, transition: Option<Transition>) {
        let kind = self.inner.kind;
        match transition {
            Some(Transition::Opened) => {
                metrics::gauge!("herald_proxy_breaker_open", "kind" => kind).set(1.0);
                tracing::warn!(
                    kind,
                    url = %self.inner.url,
                    "proxy breaker open: calls fail fast as `unavailable` until a probe succeeds"
                );
            }
            Some(Transition::Closed) => {
                metrics::gauge!("herald_proxy_breaker_open", "kind" => kind).set(0.0);
                tracing::info!(kind, url = %self.inner.url, "proxy breaker closed: the backend answers again");
            }
            None => {}
        }
    }
}

fn too_long(kind: &str) -> CallError {
    CallError::Failed(format!(
        "the {kind} answer is longer than {MAX_ANSWER_BYTES} bytes"
    ))
}

/// What an answer means: 2xx parses as `T`, 4xx is a refusal, anything
/// else a failure.
fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, CallError> {
    match status {
        200..=299 => serde_json::from_slice(body)
            .map_err(|e| CallError::Failed(format!("the answer does not parse: {e}"))),
        400..=499 => Err(CallError::Refused {
            status,
            message: refusal_message(status, body),
        }),
        _ => Err(CallError::Failed(format!(
            "the backend answered HTTP {status}"
        ))),
    }
}

/// The `message` of a refusal, bounded; a description of the status when
/// the answer has none.
fn refusal_message(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Refusal {
        message: String,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(r) if !r.message.is_empty() => truncate(r.message, MAX_MESSAGE_BYTES),
        _ => format!("refused by the backend (HTTP {status})"),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_decoded_by_status() {
        let ok: Result<serde_json::Value, _> = decode(200, br#"{"a":1}"#);
        assert_eq!(ok, Ok(serde_json::json!({"a": 1})));
        let bad: Result<serde_json::Value, _> = decode(200, b"not json");
        assert!(matches!(bad, Err(CallError::Failed(_))));
        let refused: Result<serde_json::Value, _> = decode(403, br#"{"message":"no"}"#);
        assert_eq!(
            refused,
            Err(CallError::Refused {
                status: 403,
                message: "no".into()
            })
        );
        let bare: Result<serde_json::Value, _> = decode(401, b"");
        assert!(matches!(bare, Err(CallError::Refused { message, .. }) if message.contains("401")));
        let failed: Result<serde_json::Value, _> = decode(502, br#"{"message":"x"}"#);
        assert!(matches!(failed, Err(CallError::Failed(_))));
        let redirect: Result<serde_json::Value, _> = decode(302, b"");
        assert!(matches!(redirect, Err(CallError::Failed(_))));
    }

    #[test]
    fn messages_are_bounded_on_a_char_boundary() {
        let long = "é".repeat(400);
        let m = refusal_message(
            401,
            serde_json::json!({"message": long}).to_string().as_bytes(),
        );
        assert!(m.len() <= MAX_MESSAGE_BYTES);
        assert!(m.chars().all(|c| c == 'é'));
    }

    #[test]
    fn urls_must_be_http() {
        assert!(check_url("http://127.0.0.1:1/connect").is_ok());
        assert!(check_url("https://backend.internal/join").is_ok());
        assert!(check_url("ftp://x/y").unwrap_err().contains("scheme"));
        assert!(check_url("/connect").is_err());
    }

    #[test]
    fn headers_are_checked() {
        assert!(check_header("authorization", "Bearer abc").is_ok());
        assert!(check_header("bad header", "x").is_err());
        assert!(check_header("x-ok", "line\nbreak").is_err());
    }
}
