//! Config problems are reported at construction, naming the config key.

use std::time::Duration;

use super::*;
use crate::KeyError;

fn key_error(settings: AuthSettings) -> KeyError {
    match Authenticator::new(settings) {
        Ok(auth) => panic!("expected a KeyError, got {auth:?}"),
        Err(err) => err,
    }
}

fn rsa(pem: &str) -> AuthSettings {
    AuthSettings {
        rs256_public_key_pem: Some(pem.to_owned()),
        ..AuthSettings::default()
    }
}

fn ec(pem: &str) -> AuthSettings {
    AuthSettings {
        es256_public_key_pem: Some(pem.to_owned()),
        ..AuthSettings::default()
    }
}

#[test]
fn bad_pems_fail_naming_the_key() {
    let garbage = "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n";
    // Garbage, the wrong key type, and private keys where public ones belong.
    for pem in [garbage, "", EC_PUBLIC, RSA_PRIVATE] {
        let message = key_error(rsa(pem)).to_string();
        assert!(
            message.starts_with("auth.rs256_public_key_pem: not a valid RSA public key PEM"),
            "{message}"
        );
    }
    let weak = key_error(rsa(include_str!("../../tests/fixtures/rsa1024_public.pem")));
    assert!(matches!(weak, KeyError::WeakRsa { bits: 1024 }), "{weak}");
    assert!(weak.to_string().starts_with("auth.rs256_public_key_pem:"));
    for pem in [garbage, RSA_PUBLIC, EC_PRIVATE] {
        let message = key_error(ec(pem)).to_string();
        assert!(
            message.starts_with("auth.es256_public_key_pem: not a valid EC P-256"),
            "{message}"
        );
    }
}

#[test]
fn other_settings_fail_closed() {
    let message = |settings| key_error(settings).to_string();
    let secret = AuthSettings {
        hs256_secret: Some(String::new()),
        ..AuthSettings::default()
    };
    assert!(message(secret).starts_with("auth.hs256_secret:"));
    let url = AuthSettings {
        jwks_url: Some("ftp://idp.example/jwks".to_owned()),
        ..AuthSettings::default()
    };
    assert!(message(url).starts_with("auth.jwks_url:"));
    let refresh = AuthSettings {
        jwks_url: Some("http://127.0.0.1:1/jwks".to_owned()),
        jwks_refresh: Duration::ZERO,
        ..AuthSettings::default()
    };
    assert!(message(refresh).starts_with("auth.jwks_refresh:"));
    let leeway = AuthSettings {
        leeway: Duration::from_secs(7200),
        ..hs256_settings()
    };
    assert!(message(leeway).starts_with("auth.leeway:"));
    let issuer = AuthSettings {
        issuer: Some(String::new()),
        ..hs256_settings()
    };
    assert!(message(issuer).starts_with("auth.issuer:"));
    let audience = AuthSettings {
        audience: Some(String::new()),
        ..hs256_settings()
    };
    assert!(message(audience).starts_with("auth.audience:"));
}

#[test]
fn good_keys_load_and_debug_hides_the_secret() {
    let settings = AuthSettings {
        rs256_public_key_pem: Some(RSA_PUBLIC.to_owned()),
        es256_public_key_pem: Some(EC_PUBLIC.to_owned()),
        ..hs256_settings()
    };
    assert!(!format!("{settings:?}").contains(SECRET));
    let auth = authenticator(settings);
    assert!(auth.has_keys());
    assert!(!format!("{auth:?}").contains(SECRET));
}

#[test]
fn authenticator_is_send_sync_and_cheap_to_share() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Authenticator>();
    assert_send_sync::<crate::TokenMinter>();
    // Handlers verify inside spawned tasks: the future must be Send.
    fn assert_send<T: Send>(_: T) {}
    let auth = authenticator(hs256_settings());
    assert_send(auth.verify("token"));
}

#[test]
fn every_reason_is_a_bounded_label() {
    use std::sync::Arc;

    use crate::{AuthError, JwksError};
    let unavailable = JwksError::Status {
        url: "u".to_owned(),
        status: 500,
    };
    let errors = [
        (AuthError::Missing, "missing"),
        (AuthError::Malformed("x".to_owned()), "malformed"),
        (AuthError::Expired, "expired"),
        (AuthError::NotYetValid, "not_yet_valid"),
        (AuthError::BadSignature, "bad_signature"),
        (AuthError::BadAlgorithm("none".to_owned()), "bad_algorithm"),
        (AuthError::BadIssuer, "bad_issuer"),
        (AuthError::BadAudience, "bad_audience"),
        (AuthError::UnknownKey { kid: None }, "unknown_key"),
        (
            AuthError::JwksUnavailable(Arc::new(unavailable)),
            "jwks_unavailable",
        ),
        (AuthError::MissingSub, "missing_sub"),
        (
            AuthError::BadClaims {
                claim: "roles".to_owned(),
                detail: "x",
            },
            "bad_claims",
        ),
        (AuthError::NoKey, "no_key"),
    ];
    for (err, reason) in errors {
        assert_eq!(err.reason(), reason);
    }
}
