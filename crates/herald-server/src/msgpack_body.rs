//! MessagePack request bodies: an HTTP API body sent with
//! `Content-Type: application/msgpack` (or `application/x-msgpack`,
//! `application/vnd.msgpack`) is read into the JSON the same endpoint
//! takes, then parsed and checked exactly as a JSON body. A value JSON
//! cannot carry (bin, ext, NaN, a non-string map key) is refused with 400
//! `bad_request` naming its field, e.g. `data`.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::http::{header, HeaderMap};

/// Whether the request says its body is MessagePack.
pub(crate) fn is_msgpack(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    [
        "application/msgpack",
        "application/x-msgpack",
        "application/vnd.msgpack",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

/// A MessagePack body as JSON text.
pub(crate) fn to_json(body: &[u8]) -> Result<Bytes, ApiError> {
    let value = herald_protocol::msgpack_to_json(body)
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_msgpack(&headers));
        for (value, expected) in [
            ("application/msgpack", true),
            ("Application/MsgPack; charset=binary", true),
            ("application/x-msgpack", true),
            ("application/vnd.msgpack", true),
            ("application/json", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_msgpack(&headers), expected, "{value}");
        }
    }

    #[test]
    fn bodies_become_json_or_name_the_bad_field() {
        let json = to_json(b"\x82\xa4room\xa1r\xa4data\x81\xa1n\x05").expect("json");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid");
        assert_eq!(v, serde_json::json!({"room": "r", "data": {"n": 5}}));
        let err = to_json(b"\x81\xa4data\xc4\x01x").expect_err("bin");
        assert!(format!("{err:?}").contains("`data`"), "{err:?}");
    }
}
