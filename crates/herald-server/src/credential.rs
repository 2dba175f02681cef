//! What the transports pass to the verifier besides the credential: the
//! transport, the client's address and the headers `proxy.forward_headers`
//! names (a [`CredentialContext`], read by the connect proxy), and how a
//! refused credential is answered over HTTP.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::{CredentialContext, VerifyError};
use herald_protocol::ErrorCode;
use std::convert::Infallible;
use std::net::SocketAddr;

/// The request's part of a [`CredentialContext`]: its peer address and
/// forwarded headers, taken before the request is consumed.
#[derive(Debug, Clone, Default)]
pub(crate) struct CredentialSource {
    remote_addr: Option<SocketAddr>,
    headers: Vec<(String, String)>,
}

impl CredentialSource {
    /// Reads the peer address and the forwarded headers of `parts`.
    pub(crate) fn of(parts: &Parts, forward: &[String]) -> Self {
        Self {
            remote_addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| *addr),
            headers: forwarded(&parts.headers, forward),
        }
    }

    /// The context of a credential that came over `transport`
    /// (`websocket`, `sse` or `socketio`).
    pub(crate) fn context(self, transport: &'static str) -> CredentialContext {
        CredentialContext {
            transport,
            remote_addr: self.remote_addr,
            headers: self.headers,
        }
    }
}

impl FromRequestParts<AppState> for CredentialSource {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Infallible> {
        Ok(Self::of(parts, &app.forward_headers))
    }
}

/// The values of the `forward` headers (lower-case names) present in
/// `headers`, repeated ones joined (`; ` for cookies, `, ` otherwise, as
/// HTTP combines them). Values that are not text are left out.
fn forwarded(headers: &HeaderMap, forward: &[String]) -> Vec<(String, String)> {
    forward
        .iter()
        .filter_map(|name| {
            let values: Vec<&str> = headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                return None;
            }
            let separator = if name == "cookie" { "; " } else { ", " };
            Some((name.clone(), values.join(separator)))
        })
        .collect()
}

/// The HTTP answer to a credential that did not verify: 503 `unavailable`
/// (with `Retry-After`) when the backend could not answer, else 401 with
/// the verifier's (or the backend's) message.
pub(crate) fn refusal(e: VerifyError) -> Response {
    if e.is_unavailable() {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            e.message,
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, e.message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_headers_are_forwarded_and_repeats_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("cookie", HeaderValue::from_static("b=2"));
        headers.append("x-tag", HeaderValue::from_static("one"));
        headers.append("x-tag", HeaderValue::from_static("two"));
        headers.append("authorization", HeaderValue::from_static("Bearer secret"));
        headers.append(
            "x-binary",
            HeaderValue::from_bytes(b"\xff").expect("opaque"),
        );
        let forward = ["cookie", "x-tag", "x-binary", "origin"].map(String::from);
        assert_eq!(
            forwarded(&headers, &forward),
            [
                ("cookie".to_owned(), "a=1; b=2".to_owned()),
                ("x-tag".to_owned(), "one, two".to_owned()),
            ]
        );
    }
}
