//! Extractors every API handler takes, so none can forget a check: the API
//! key with its scope ([`ApiKey`]), checked from the headers before any
//! byte of the body is read, and the JSON body ([`JsonBody`]), read under a
//! size limit and a deadline.
//!
//! axum runs header extractors before the body extractor, so a handler
//! taking `(ApiKey<Publish>, JsonBody<T>)` refuses a keyless request
//! without waiting for its body.

use crate::audit;
use crate::auth::KeyCheck;
use crate::config::Scope;
use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use futures_util::StreamExt;
use herald_protocol::ErrorCode;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::sync::Arc;

/// Largest request body the API reads, in bytes (2 MiB).
pub(crate) const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// A scope an [`ApiKey`] must hold.
pub(crate) trait RequiredScope {
    /// The scope.
    const SCOPE: Scope;
}

/// Scope `publish` (an `admin` key holds it too).
pub(crate) struct Publish;

impl RequiredScope for Publish {
    const SCOPE: Scope = Scope::Publish;
}

/// Scope `admin`.
pub(crate) struct Admin;

impl RequiredScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// Proof that the request carried an API key holding scope `S`, with the
/// key's name; refuses with 401 (no or unknown key) or 403 (key without
/// the scope). The name of a matched key is also handed to the audit
/// log's note of the call, when the route is audited.
pub(crate) struct ApiKey<S> {
    name: Arc<str>,
    scope: PhantomData<S>,
}

impl<S> ApiKey<S> {
    /// The key's name (`auth.api_keys[].name`), never the key itself.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl<S: RequiredScope> FromRequestParts<AppState> for ApiKey<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let check = app.api_keys.check(bearer(&parts.headers), S::SCOPE);
        if let (Some(note), Some(name)) = (parts.extensions.get::<audit::Note>(), check.name()) {
            note.set_api_key(name.clone());
        }
        match check {
            KeyCheck::Allowed(name) => Ok(Self {
                name,
                scope: PhantomData,
            }),
            KeyCheck::Unauthorized => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing or unknown API key; send Authorization: Bearer <api key>",
            )),
            KeyCheck::Forbidden(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "this API key lacks the scope for this call",
            )),
        }
    }
}

/// A JSON request body parsed into `T`: 413 `too_large` over
/// [`MAX_BODY_BYTES`] (at once when `Content-Length` says so), 408 when the
/// body does not arrive within `server.body_timeout`, 400 `bad_request`
/// when it is not the JSON `T` wants. A MessagePack body
/// (`Content-Type: application/msgpack`) is read as the same JSON.
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        let msgpack = crate::msgpack_body::is_msgpack(req.headers());
        let mut body = read_body(req, app.body_timeout).await?;
        if msgpack {
            body = crate::msgpack_body::to_json(&body)?;
        }
        parse_json(&body).map(JsonBody)
    }
}

/// Parses a request body as the JSON `T` wants; 400 `bad_request` saying
/// why not.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooLarge,
        format!("request body is over {MAX_BODY_BYTES} bytes (2 MiB)"),
    )
    // The rest of the body is not read, so the connection cannot carry
    // another request.
    .closing()
}

/// Reads the whole body, bounded in size and time.
async fn read_body(req: Request, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut stream = req.into_body().into_data_stream();
    let read = async {
        let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(body) => body,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BadRequest,
            format!(
                "the request body did not arrive within {} (server.body_timeout)",
                humantime::format_duration(timeout)
            ),
        )
        .closing()),
    }
}
