//! Request ids of the HTTP API (`/api/...`). Every call gets one: the
//! client's `X-Request-Id` when it is sane (1 to 128 visible ASCII
//! characters, no spaces), else a new one of 32 lower-case hex digits (128
//! random bits). It is echoed in the `X-Request-Id` response header of
//! every answer, errors included, put in JSON error bodies as
//! `error.request_id`, carried to handlers as a [`RequestId`] request
//! extension, and set on the `request` span every log line of the call is
//! written under.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use tracing::Instrument;

/// `X-Request-Id`.
pub(crate) const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client, in bytes.
pub const MAX_LEN: usize = 128;

tokio::task_local! {
    /// The id of the API call this task is serving, for error bodies
    /// built far from the handler (extractor rejections, the panic guard).
    static CURRENT: RequestId;
}

/// The id of one HTTP API call (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The client's id, if it is 1 to [`MAX_LEN`] visible ASCII
    /// characters (no spaces or control characters).
    pub fn parse(value: &[u8]) -> Option<Self> {
        let sane = !value.is_empty()
            && value.len() <= MAX_LEN
            && value.iter().all(|b| b.is_ascii_graphic());
        // Visible ASCII is UTF-8.
        sane.then(|| Self(String::from_utf8_lossy(value).into()))
    }

    /// A new id: 128 random bits as 32 hex digits.
    pub fn generate() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()).into())
    }

    /// The client's `X-Request-Id` if sane, else a new id.
    pub fn of(headers: &HeaderMap) -> Self {
        headers
            .get(HEADER)
            .and_then(|v| Self::parse(v.as_bytes()))
            .unwrap_or_else(Self::generate)
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the API call the current task serves, if any.
    pub(crate) fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    /// The id [`assign`] gave the request (a new one outside `/api/`).
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(Self::generate))
    }
}

/// Whether `path` is an HTTP API path, the calls that get request ids.
pub(crate) fn is_api(path: &str) -> bool {
    path.starts_with("/api/")
}

/// Gives every `/api/` request its id (extension, task-local for error
/// bodies, log span) and echoes it in the answer. Other paths (WebSocket
/// and SSE upgrades, health, metrics) pass through untouched.
pub(crate) async fn assign(mut request: Request, next: Next) -> Response {
    if !is_api(request.uri().path()) {
        return next.run(request).await;
    }
    let id = RequestId::of(request.headers());
    request.extensions_mut().insert(id.clone());
    let span = tracing::info_span!("request", request_id = id.as_str());
    let mut response = CURRENT
        .scope(id.clone(), next.run(request).instrument(span))
        .await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        assert_eq!(
            RequestId::parse(b"abc-123_X.y:z/=").map(|r| r.to_string()),
            Some("abc-123_X.y:z/=".to_owned())
        );
        assert!(RequestId::parse(&[b'a'; MAX_LEN]).is_some());
        assert!(RequestId::parse(&[b'a'; MAX_LEN + 1]).is_none());
        assert!(RequestId::parse(b"").is_none());
        assert!(RequestId::parse(b"has space").is_none());
        assert!(RequestId::parse(b"tab\there").is_none());
        assert!(RequestId::parse("é".as_bytes()).is_none());

        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("given-1"));
        assert_eq!(RequestId::of(&headers).as_str(), "given-1");
        headers.insert(HEADER, HeaderValue::from_static("bad id"));
        let generated = RequestId::of(&headers);
        assert_eq!(generated.as_str().len(), 32);
        assert!(generated.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(generated, RequestId::generate());
    }
}
