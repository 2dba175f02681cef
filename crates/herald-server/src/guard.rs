//! Middleware around every route: a panicking handler answers 500 JSON
//! instead of dropping the connection, and Herald's own limits on the
//! request target and headers answer 414 / 431 with the JSON error body.
//!
//! hyper refuses requests beyond its own limits before the router sees
//! them (a target over 65,534 bytes, a head over its ~400 KB buffer, more
//! than 100 header fields). Its size limits sit above Herald's, so a
//! request between the two reaches these checks and gets a precise
//! message; hyper's own answers get the JSON body from `http::ServerIo`.

use crate::error::ApiError;
use crate::request_id::RequestId;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use herald_protocol::ErrorCode;
use std::panic::AssertUnwindSafe;

/// Longest request target (path and query) Herald serves, in bytes. Room
/// lists and a token of up to 32 KiB may travel in the query (`/sse`).
pub(crate) const MAX_URI_BYTES: usize = 48 * 1024;
/// Most bytes of request header fields (names, values and separators).
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most request header fields.
pub(crate) const MAX_HEADERS: usize = 100;

/// Name of the counter of handler panics.
pub(crate) const PANICS_METRIC: &str = "herald_http_panics_total";

/// Registers the panic counter at 0, so it is scraped before any panic.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        PANICS_METRIC,
        "HTTP requests whose handler panicked (answered 500 internal)"
    );
    metrics::counter!(PANICS_METRIC).increment(0);
}

/// Runs the rest of the stack and turns a panic into 500 `internal`, so
/// neither the connection nor the process goes down with the request.
pub(crate) async fn catch_panic(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id = req.extensions().get::<RequestId>().cloned();
    // The handler's state is dropped with the panic; nothing of it is
    // used afterwards, so unwind safety holds.
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            metrics::counter!(PANICS_METRIC).increment(1);
            let request_id = request_id.as_ref().map_or("-", RequestId::as_str);
            tracing::error!(%method, %path, request_id, panic = %what, "HTTP handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error; the request was not completed",
            )
            .into_response()
        }
    }
}

/// Refuses a request target over [`MAX_URI_BYTES`] (414) and header fields
/// over [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`] (431), as JSON.
pub(crate) async fn request_limits(req: Request, next: Next) -> Response {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::BadRequest,
            format!("request target is {target} bytes; at most {MAX_URI_BYTES} are allowed"),
        )
        .into_response();
    }
    let headers = req.headers();
    // hyper's default field limit is the same, so this holds the limit
    // should hyper's default ever rise.
    if headers.len() > MAX_HEADERS {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::BadRequest,
            format!(
                "request has {} header fields; at most {MAX_HEADERS} are allowed",
                headers.len()
            ),
        )
        .into_response();
    }
    // Name, ": ", value and CRLF, as on the wire.
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::BadRequest,
            format!(
                "request header fields are {bytes} bytes; at most {MAX_HEADER_BYTES} are allowed"
            ),
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use hyper::service::Service as _;
    use hyper_util::service::TowerToHyperService;

    async fn call(router: Router, req: Request) -> (StatusCode, serde_json::Value) {
        let service = TowerToHyperService::new(router);
        let Ok(response) = service.call(req).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON body"))
    }

    fn get_request(path: &str) -> Request {
        Request::get(path).body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_json_and_the_router_keeps_serving() {
        async fn boom() -> &'static str {
            panic!("handler bug");
        }
        async fn fine() -> &'static str {
            "\"ok\""
        }
        let router = Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(fine))
            .layer(axum::middleware::from_fn(catch_panic));

        let (status, body) = call(router.clone(), get_request("/boom")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["error"]["code"], "internal", "{body}");
        // The same router (and process) still answers.
        let (status, body) = call(router, get_request("/fine")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn a_panicking_api_call_answers_with_its_request_id() {
        async fn boom() -> &'static str {
            panic!("handler bug");
        }
        let router = Router::new()
            .route("/api/boom", get(boom))
            .layer(axum::middleware::from_fn(catch_panic))
            .layer(axum::middleware::from_fn(crate::request_id::assign));
        let mut req = get_request("/api/boom");
        req.headers_mut().insert(
            "x-request-id",
            axum::http::HeaderValue::from_static("boom-1"),
        );
        let service = TowerToHyperService::new(router);
        let Ok(response) = service.call(req).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers().get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"boom-1"[..])
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
        assert_eq!(body["error"]["request_id"], "boom-1", "{body}");
    }

    #[tokio::test]
    async fn long_targets_and_big_headers_answer_json() {
        async fn fine() -> &'static str {
            "\"ok\""
        }
        let router = Router::new()
            .route("/", get(fine))
            .layer(axum::middleware::from_fn(request_limits));

        let long = format!("/?q={}", "a".repeat(MAX_URI_BYTES));
        let (status, body) = call(router.clone(), get_request(&long)).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG, "{body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");

        let mut many = get_request("/");
        for i in 0..=MAX_HEADERS {
            let name = axum::http::HeaderName::try_from(format!("x-h{i}")).expect("name");
            many.headers_mut()
                .insert(name, axum::http::HeaderValue::from_static("v"));
        }
        let (status, body) = call(router.clone(), many).await;
        assert_eq!(
            status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{body}"
        );

        let mut big = get_request("/");
        let value = "v".repeat(MAX_HEADER_BYTES);
        big.headers_mut().insert(
            "x-big",
            axum::http::HeaderValue::from_str(&value).expect("value"),
        );
        let (status, body) = call(router.clone(), big).await;
        assert_eq!(
            status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{body}"
        );
        assert_eq!(body["error"]["code"], "bad_request", "{body}");

        let (status, _) = call(router, get_request("/")).await;
        assert_eq!(status, StatusCode::OK);
    }
}
