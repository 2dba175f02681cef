//! Unit tests and their shared helpers: fixture keys, signing, settings.

mod jwks;
mod keys;
mod verify;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::{AuthError, AuthSettings, Authenticator};

const SECRET: &str = "test-secret-of-reasonable-length";
const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../../tests/fixtures/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../tests/fixtures/ec_public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs `claims` with the fixture key of `alg` (HS256: [`SECRET`]).
fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        other => panic!("no fixture key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token assembled by hand, for headers `jsonwebtoken` refuses to write.
fn hand_token(header: &Value, claims: &Value, signature: &str) -> String {
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());
    format!("{}.{}.{}", part(header), part(claims), signature)
}

fn hs256_settings() -> AuthSettings {
    AuthSettings {
        hs256_secret: Some(SECRET.to_owned()),
        ..AuthSettings::default()
    }
}

fn authenticator(settings: AuthSettings) -> Authenticator {
    Authenticator::new(settings).unwrap()
}

/// Verifies and expects failure with `reason`.
async fn refused(auth: &Authenticator, token: &str, reason: &str) -> AuthError {
    match auth.verify(token).await {
        Ok(identity) => panic!("expected {reason}, got {identity:?}"),
        Err(err) => {
            assert_eq!(err.reason(), reason, "{err}");
            err
        }
    }
}
