//! Token signing for tests: HS256 with any secret, and unsigned
//! `alg: none` tokens. `TestNode::token` mints with the node's own secret.

use serde_json::Value;

/// Signs `claims` with HS256 and `secret`.
pub fn sign_hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// An unsigned token with `alg: none`.
pub fn alg_none_token(claims: &Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(serde_json::to_vec(claims).expect("claims"));
    format!("{header}.{payload}.")
}
