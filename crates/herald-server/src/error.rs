//! API errors as JSON `{"error": {"code", "message"}}` with a fitting status,
//! plus `request_id` in `error` when the answer is to an HTTP API call
//! (see [`crate::request_id`]).

use crate::request_id::RequestId;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_node::NodeError;
use herald_protocol::ErrorCode;
use serde_json::json;

/// An HTTP API error.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// Answer with `Connection: close` (the request was not read whole).
    close: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            close: false,
        }
    }

    /// The same error, answered with `Connection: close`: for requests
    /// whose body was left unread, so the connection cannot carry another.
    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// Whether retrying later may succeed (503 `unavailable`).
    pub(crate) fn is_unavailable(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
    }

    /// The message, naming what was wrong.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let code = e.code();
        let status = match code {
            _ if matches!(
                e,
                NodeError::Broker(herald_core::BrokerError::IdempotencyConflict { .. })
            ) =>
            {
                StatusCode::CONFLICT
            }
            ErrorCode::BadRequest | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotJoined | ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::RateLimited | ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "API request failed");
        }
        Self::new(status, code, e.client_message())
    }
}

impl ApiError {
    /// The error's answer with more top-level fields beside `error` (a
    /// broadcast's partial `results`, say).
    pub(crate) fn into_response_with(
        self,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Response {
        let mut body = fields;
        body.insert("error".into(), self.error_object());
        self.respond(serde_json::Value::Object(body))
    }

    /// The `error` object: code, message, and the request id of the API
    /// call being answered, if any.
    fn error_object(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(id) = RequestId::current() {
            error["request_id"] = id.as_str().into();
        }
        error
    }

    fn respond(self, body: serde_json::Value) -> Response {
        let mut response = (self.status, axum::Json(body)).into_response();
        // For the audit log's `outcome`, without reparsing the body.
        response.extensions_mut().insert(self.code);
        if self.close {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error_object() });
        self.respond(body)
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use herald_core::BrokerError;
    use herald_node::NodeError;

    #[test]
    fn a_broker_failure_answers_without_the_engine_text() {
        let e = ApiError::from(NodeError::Broker(BrokerError::Unavailable(
            "IO Error: redis-internal.example:6379 refused".into(),
        )));
        assert!(e.is_unavailable());
        assert!(!e.message().contains("redis-internal"), "{}", e.message());
        let e = ApiError::from(NodeError::Broker(BrokerError::Internal(
            "ERR Error running script (call to f_abc): @user_script:12".into(),
        )));
        assert!(!e.message().contains("user_script"), "{}", e.message());
    }
}
