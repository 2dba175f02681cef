//! Asymmetric token keys: RS256 and ES256 from PEM text or files, keys from
//! a JWKS endpoint by `kid`, and algorithm confusion (issue #2 item 3).
//!
//! The key pairs are herald-auth's test fixtures.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RSA_PRIVATE: &str = include_str!("../../herald-auth/tests/fixtures/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../herald-auth/tests/fixtures/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../../herald-auth/tests/fixtures/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../herald-auth/tests/fixtures/ec_public.pem");

fn claims(sub: &str) -> Value {
    let now = now_secs();
    json!({"sub": sub, "iat": now, "exp": now + 3600})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa private key")
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec private key")
}

async fn assert_401(node: &TestNode, token: String, what: &str) {
    match WsClient::connect(&node.ws_url(), TokenIn::Header(token)).await {
        Ok(_) => panic!("{what}: upgrade accepted"),
        Err(e) => assert_eq!(
            upgrade_status(&e),
            Some(401),
            "{what}: {}",
            describe_ws_error(&e)
        ),
    }
}

async fn assert_accepted(node: &TestNode, token: String, sub: &str, what: &str) {
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::Header(token))
        .await
        .unwrap_or_else(|e| panic!("{what}: refused: {}", describe_ws_error(&e)));
    let auth = c.expect_type("authenticated", FRAME_WAIT).await;
    assert_eq!(auth["user_id"], sub, "{what}: {auth}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_are_checked_against_pem_text() {
    let toml = format!(
        "[auth]\nrs256_public_key_pem = '''\n{RSA_PUBLIC}'''\nes256_public_key_pem = '''\n{EC_PUBLIC}'''\n"
    );
    let node = TestNode::start(&toml).await;
    assert_accepted(
        &node,
        sign(Algorithm::RS256, None, &rsa_key(), &claims("rsa")),
        "rsa",
        "RS256",
    )
    .await;
    assert_accepted(
        &node,
        sign(Algorithm::ES256, None, &ec_key(), &claims("ec")),
        "ec",
        "ES256",
    )
    .await;
    // HS256 with the configured secret still works beside them.
    assert_accepted(&node, node.user_token("hs"), "hs", "HS256").await;
    // An expired RS256 token is still refused.
    let now = now_secs();
    let expired = json!({"sub": "rsa", "exp": now - 60});
    assert_401(
        &node,
        sign(Algorithm::RS256, None, &rsa_key(), &expired),
        "expired RS256",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_file_variants_are_read() {
    let dir = std::env::temp_dir().join(format!("herald-it-pem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rsa = dir.join("rsa_public.pem");
    let ec = dir.join("ec_public.pem");
    std::fs::write(&rsa, RSA_PUBLIC).expect("write");
    std::fs::write(&ec, EC_PUBLIC).expect("write");
    let toml = format!(
        "[auth]\nrs256_public_key_pem_file = {:?}\nes256_public_key_pem_file = {:?}\n",
        rsa.to_str().expect("path"),
        ec.to_str().expect("path")
    );
    let node = TestNode::start(&toml).await;
    assert_accepted(
        &node,
        sign(Algorithm::RS256, None, &rsa_key(), &claims("rsa")),
        "rsa",
        "RS256 from file",
    )
    .await;
    assert_accepted(
        &node,
        sign(Algorithm::ES256, None, &ec_key(), &claims("ec")),
        "ec",
        "ES256 from file",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_key_file_refuses_to_start_naming_the_key() {
    let (_dir, path, _port) = TestNode::write_config(
        "[auth]\nrs256_public_key_pem_file = \"/nonexistent/herald/key.pem\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config", path.to_str().expect("path")])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run herald");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "started with a missing key file: {text}"
    );
    assert!(
        text.contains("rs256_public_key_pem_file"),
        "the error names the key: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_confusion_and_wrong_family_are_rejected() {
    // Only an RSA key is trusted: no HS256 secret at all.
    let toml = format!("[auth]\nrs256_public_key_pem = '''\n{RSA_PUBLIC}'''\n");
    let node = TestNode::start_custom(&toml, &[], false).await;
    assert_accepted(
        &node,
        sign(Algorithm::RS256, None, &rsa_key(), &claims("rsa")),
        "rsa",
        "RS256",
    )
    .await;
    // HS256 "signed" with the RSA public key as the HMAC secret.
    let confused = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        &claims("attacker"),
    );
    assert_401(&node, confused, "HS256 keyed with the RSA public PEM").await;
    // ES256 while no EC key is configured.
    assert_401(
        &node,
        sign(Algorithm::ES256, None, &ec_key(), &claims("ec")),
        "ES256 without an EC key",
    )
    .await;
    assert_401(&node, alg_none_token(&claims("none")), "alg none").await;
    // RS256 header over a body signed by the EC key.
    let rs = sign(Algorithm::RS256, None, &rsa_key(), &claims("rsa"));
    let es = sign(Algorithm::ES256, None, &ec_key(), &claims("rsa"));
    let spliced = format!(
        "{}.{}",
        rs.rsplit_once('.').expect("jwt").0,
        es.rsplit_once('.').expect("jwt").1
    );
    assert_401(&node, spliced, "RS256 header with a foreign signature").await;
}

/// A minimal HTTP server answering every request with `body`; counts hits.
async fn serve_json(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/.well-known/jwks.json"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_are_found_by_kid() {
    let mut rsa_jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa_key(), Algorithm::RS256).expect("jwk");
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&ec_key(), Algorithm::ES256).expect("jwk");
    ec_jwk.common.key_id = Some("ec-1".into());
    let set = json!({"keys": [rsa_jwk, ec_jwk]}).to_string();
    let (url, hits) = serve_json(set).await;
    let toml = format!("[auth]\njwks_url = \"{url}\"\nissuer = \"https://idp.test\"\n");
    let node = TestNode::start_custom(&toml, &[], false).await;
    let mut c = claims("jw");
    c["iss"] = json!("https://idp.test");
    assert_accepted(
        &node,
        sign(Algorithm::RS256, Some("rsa-1"), &rsa_key(), &c),
        "jw",
        "RS256 by kid",
    )
    .await;
    assert_accepted(
        &node,
        sign(Algorithm::ES256, Some("ec-1"), &ec_key(), &c),
        "jw",
        "ES256 by kid",
    )
    .await;
    assert!(hits.load(Ordering::SeqCst) >= 1, "JWKS fetched");
    assert_401(
        &node,
        sign(Algorithm::RS256, Some("unknown-kid"), &rsa_key(), &c),
        "unknown kid",
    )
    .await;
    assert_401(
        &node,
        sign(Algorithm::RS256, None, &rsa_key(), &c),
        "no kid with JWKS only",
    )
    .await;
    // The EC key's kid with an RSA signature.
    assert_401(
        &node,
        sign(Algorithm::RS256, Some("ec-1"), &rsa_key(), &c),
        "kid of another key family",
    )
    .await;
    let mut wrong_iss = c.clone();
    wrong_iss["iss"] = json!("https://other-idp.test");
    assert_401(
        &node,
        sign(Algorithm::RS256, Some("rsa-1"), &rsa_key(), &wrong_iss),
        "JWKS key used for another issuer",
    )
    .await;
}
