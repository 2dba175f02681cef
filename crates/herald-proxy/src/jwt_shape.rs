//! Telling a JWT from an opaque credential without verifying it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Longest JWT header decoded to look at it; real ones are under 200 bytes.
const MAX_HEADER_CHARS: usize = 4096;

/// Whether `credential` is structurally a JWT: three dot-separated
/// base64url parts whose first (the header) decodes to a JSON object.
/// Only the shape is checked; the signature is the verifier's business.
pub fn looks_like_jwt(credential: &str) -> bool {
    let mut parts = credential.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if header.is_empty()
        || header.len() > MAX_HEADER_CHARS
        || payload.is_empty()
        || !base64url(header)
        || !base64url(payload)
        || !base64url(signature)
    {
        return false;
    }
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| v.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn jwts_are_recognised_by_shape() {
        let jwt = format!(
            "{}.{}.sig-_0",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64(r#"{"sub":"1"}"#)
        );
        assert!(looks_like_jwt(&jwt));
        // An unsigned token still has the shape (the verifier refuses it).
        assert!(looks_like_jwt(&format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64("{}")
        )));
    }

    #[test]
    fn opaque_credentials_are_not_jwts() {
        for c in [
            "opaque:42",
            "",
            "a.b",
            "a.b.c.d",
            "abc.def.ghi",
            &format!("{}.{}.x", b64("[1,2]"), b64("{}")),
            &format!("{}..x", b64("{}")),
            &format!("{}.{}.x+y", b64("{}"), b64("{}")),
            "session_0123456789abcdef",
        ] {
            assert!(!looks_like_jwt(c), "{c:?}");
        }
    }
}
