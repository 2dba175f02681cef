//! JWKS against a tiny HTTP/1.1 server on 127.0.0.1:0.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;

const ISSUER: &str = "https://idp.example";

/// Answers every request with the current (status, body) and counts them.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    response: Arc<Mutex<(u16, String)>>,
    task: JoinHandle<()>,
}

impl JwksServer {
    async fn start(status: u16, body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let hits = Arc::new(AtomicUsize::new(0));
        let response = Arc::new(Mutex::new((status, body)));
        let (task_hits, task_response) = (Arc::clone(&hits), Arc::clone(&response));
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (hits, response) = (Arc::clone(&task_hits), Arc::clone(&task_response));
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = response.lock().clone();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            url,
            hits,
            response,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn set(&self, status: u16, body: String) {
        *self.response.lock() = (status, body);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fixture RSA public key as JWK members (`n`, `e`).
fn rsa_jwk(kid: &str) -> Value {
    let key = DecodingKey::from_rsa_pem(RSA_PUBLIC.as_bytes()).unwrap();
    let AlgorithmParameters::RSA(rsa) = Jwk::from_decoding_key(&key, None).unwrap().algorithm
    else {
        panic!("not RSA");
    };
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": rsa.n, "e": rsa.e})
}

/// A 1024-bit RSA key, too short to be used.
fn weak_rsa_jwk(kid: &str) -> Value {
    let pem = include_str!("../../tests/fixtures/rsa1024_public.pem");
    let key = DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let AlgorithmParameters::RSA(rsa) = Jwk::from_decoding_key(&key, None).unwrap().algorithm
    else {
        panic!("not RSA");
    };
    json!({"kty": "RSA", "kid": kid, "n": rsa.n, "e": rsa.e})
}

/// The fixture P-256 public key as JWK members (`crv`, `x`, `y`), no `alg`.
fn ec_jwk(kid: &str) -> Value {
    let key = DecodingKey::from_ec_pem(EC_PUBLIC.as_bytes()).unwrap();
    let AlgorithmParameters::EllipticCurve(ec) =
        Jwk::from_decoding_key(&key, None).unwrap().algorithm
    else {
        panic!("not EC");
    };
    json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": ec.x, "y": ec.y})
}

/// A key set as an IdP publishes it, odd members included.
fn jwks_body(rsa_kid: &str) -> String {
    json!({"keys": [
        rsa_jwk(rsa_kid),
        ec_jwk("ec1"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"},
        weak_rsa_jwk("weak"),
    ]})
    .to_string()
}

fn jwks_settings(url: &str) -> AuthSettings {
    AuthSettings {
        jwks_url: Some(url.to_owned()),
        ..AuthSettings::default()
    }
}

fn claims() -> Value {
    json!({"sub": "u", "iss": ISSUER, "exp": now() + 60})
}

#[tokio::test]
async fn verifies_by_kid_and_caches() {
    let server = JwksServer::start(200, jwks_body("k1")).await;
    let auth = authenticator(jwks_settings(&server.url));
    assert!(auth.has_keys());
    assert_eq!(
        server.hits(),
        0,
        "nothing is fetched before a token needs it"
    );

    let identity = auth
        .verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();
    assert_eq!(identity.user_id, "u");
    auth.verify(&sign(Algorithm::ES256, Some("ec1"), &claims()))
        .await
        .unwrap();
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();
    assert_eq!(server.hits(), 1, "keys are cached");

    // A kid of another key type, an alg the JWKS never supplies, no kid.
    refused(
        &auth,
        &sign(Algorithm::RS256, Some("ec1"), &claims()),
        "bad_algorithm",
    )
    .await;
    refused(
        &auth,
        &sign(Algorithm::HS256, Some("hmac"), &claims()),
        "bad_algorithm",
    )
    .await;
    let err = refused(
        &auth,
        &sign(Algorithm::RS256, None, &claims()),
        "unknown_key",
    )
    .await;
    assert!(matches!(err, AuthError::UnknownKey { kid: None }));
    // Keys that are not RS256/ES256 signing keys were skipped.
    refused(
        &auth,
        &sign(Algorithm::RS256, Some("enc"), &claims()),
        "unknown_key",
    )
    .await;
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_interval() {
    let server = JwksServer::start(200, jwks_body("k1")).await;
    let auth = authenticator(jwks_settings(&server.url));
    // The first miss loads the set; the flood after it fetches nothing.
    for i in 0..20 {
        let token = sign(Algorithm::RS256, Some(&format!("bogus-{i}")), &claims());
        refused(&auth, &token, "unknown_key").await;
    }
    assert_eq!(server.hits(), 1);
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn rotated_key_is_found_after_the_interval() {
    let server = JwksServer::start(200, jwks_body("k1")).await;
    let mut auth = authenticator(jwks_settings(&server.url));
    auth.set_jwks_min_refetch(Duration::from_millis(200));
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();

    server.set(200, jwks_body("k2"));
    let rotated = sign(Algorithm::RS256, Some("k2"), &claims());
    refused(&auth, &rotated, "unknown_key").await;
    assert_eq!(server.hits(), 1, "rate limited right after a fetch");

    tokio::time::sleep(Duration::from_millis(300)).await;
    auth.verify(&rotated).await.unwrap();
    assert_eq!(server.hits(), 2);
    // The withdrawn key no longer verifies anything.
    refused(
        &auth,
        &sign(Algorithm::RS256, Some("k1"), &claims()),
        "unknown_key",
    )
    .await;
}

#[tokio::test]
async fn keys_are_bound_to_the_configured_issuer() {
    let server = JwksServer::start(200, jwks_body("k1")).await;
    let auth = authenticator(AuthSettings {
        issuer: Some(ISSUER.to_owned()),
        ..jwks_settings(&server.url)
    });
    let foreign = json!({"sub": "u", "iss": "https://evil.example", "exp": now() + 60});
    refused(
        &auth,
        &sign(Algorithm::RS256, Some("k1"), &foreign),
        "bad_issuer",
    )
    .await;
    let anonymous = json!({"sub": "u", "exp": now() + 60});
    refused(
        &auth,
        &sign(Algorithm::RS256, Some("k1"), &anonymous),
        "bad_issuer",
    )
    .await;
    assert_eq!(server.hits(), 0, "a foreign issuer never triggers a fetch");
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();
}

#[tokio::test]
async fn fetch_failures_are_jwks_unavailable() {
    let server = JwksServer::start(500, "oops".to_owned()).await;
    let auth = authenticator(jwks_settings(&server.url));
    let token = sign(Algorithm::RS256, Some("k1"), &claims());
    let err = refused(&auth, &token, "jwks_unavailable").await;
    assert!(std::error::Error::source(&err).is_some());
    refused(&auth, &token, "jwks_unavailable").await;
    assert_eq!(server.hits(), 1, "failures are rate limited too");

    server.set(200, "not json".to_owned());
    let mut auth = authenticator(jwks_settings(&server.url));
    auth.set_jwks_min_refetch(Duration::ZERO);
    refused(&auth, &token, "jwks_unavailable").await;

    // Nothing listens on a port we bound and released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let auth = authenticator(jwks_settings(&format!("http://{closed}/jwks")));
    refused(&auth, &token, "jwks_unavailable").await;
}

#[tokio::test]
async fn static_key_still_works_when_jwks_is_down() {
    let server = JwksServer::start(503, String::new()).await;
    let auth = authenticator(AuthSettings {
        rs256_public_key_pem: Some(RSA_PUBLIC.to_owned()),
        ..jwks_settings(&server.url)
    });
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();
    auth.verify(&sign(Algorithm::RS256, None, &claims()))
        .await
        .unwrap();
}

#[tokio::test]
async fn cached_keys_survive_a_failing_refetch() {
    let server = JwksServer::start(200, jwks_body("k1")).await;
    let mut auth = authenticator(jwks_settings(&server.url));
    auth.set_jwks_min_refetch(Duration::ZERO);
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();
    server.set(500, String::new());
    refused(
        &auth,
        &sign(Algorithm::RS256, Some("k9"), &claims()),
        "unknown_key",
    )
    .await;
    assert_eq!(server.hits(), 2);
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();
}

async fn wait_for_hits(server: &JwksServer, at_least: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.hits() < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} hits",
            server.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refresher_refreshes_retries_and_stops_on_cancel() {
    assert!(authenticator(hs256_settings())
        .spawn_jwks_refresh(CancellationToken::new())
        .is_none());

    let server = JwksServer::start(200, jwks_body("k1")).await;
    let auth = authenticator(AuthSettings {
        jwks_refresh: Duration::from_millis(100),
        ..jwks_settings(&server.url)
    });
    let cancel = CancellationToken::new();
    let refresher = auth.spawn_jwks_refresh(cancel.clone()).unwrap();
    wait_for_hits(&server, 1).await;
    // Loaded by the refresher: verifying needs no fetch of its own.
    let before = server.hits();
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();
    wait_for_hits(&server, before + 2).await;

    // Failures are retried (backoff capped at the refresh interval here).
    server.set(500, String::new());
    let failing = server.hits();
    wait_for_hits(&server, failing + 2).await;
    auth.verify(&sign(Algorithm::RS256, Some("k1"), &claims()))
        .await
        .unwrap();

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), refresher)
        .await
        .unwrap()
        .unwrap();
}
