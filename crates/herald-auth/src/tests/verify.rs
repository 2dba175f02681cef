//! Verification with static keys: HS256, RS256, ES256 and the claim rules.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map};

use super::*;
use crate::{AuthError, MintRequest, TokenMinter};

fn mint_request(sub: &str) -> MintRequest {
    MintRequest {
        sub: sub.to_owned(),
        roles: Vec::new(),
        tenant: None,
        ttl: Duration::from_secs(3600),
        claims: Map::new(),
    }
}

#[tokio::test]
async fn hs256_round_trip_via_minter() {
    let auth = authenticator(hs256_settings());
    let mut extra = Map::new();
    extra.insert("projects".to_owned(), json!([7, "x"]));
    let req = MintRequest {
        roles: vec!["admin".to_owned(), "editor".to_owned()],
        tenant: Some("acme".to_owned()),
        claims: extra,
        ..mint_request("user-1")
    };
    let minted = TokenMinter::hs256(SECRET).mint(&req).unwrap();
    let expected_exp = now() + 3600;
    assert!(minted.expires_at.abs_diff(expected_exp) <= 2);

    let identity = auth.verify(&minted.token).await.unwrap();
    assert_eq!(identity.user_id, "user-1");
    assert_eq!(identity.tenant.as_deref(), Some("acme"));
    assert_eq!(identity.roles, ["admin", "editor"]);
    assert_eq!(identity.expires_at, Some(minted.expires_at));
    assert!(identity.claim_lists("projects", "7"));
    assert!(identity.claims.contains_key("iat"));
}

#[tokio::test]
async fn minter_leaves_out_empty_roles_and_tenant() {
    let auth = authenticator(hs256_settings());
    let minted = TokenMinter::hs256(SECRET).mint(&mint_request("u")).unwrap();
    let identity = auth.verify(&minted.token).await.unwrap();
    assert!(identity.roles.is_empty());
    assert_eq!(identity.tenant, None);
    assert!(!identity.claims.contains_key("roles"));
    assert!(!identity.claims.contains_key("tenant"));
}

/// Issue #12 finding 10: a node with `auth.issuer` and `auth.audience`
/// accepts the tokens its own minter signs.
#[tokio::test]
async fn minter_sets_the_configured_issuer_and_audience() {
    let auth = authenticator(AuthSettings {
        issuer: Some("https://idp.test".to_owned()),
        audience: Some("herald".to_owned()),
        ..hs256_settings()
    });
    let plain = TokenMinter::hs256(SECRET).mint(&mint_request("u")).unwrap();
    assert!(auth.verify(&plain.token).await.is_err());
    let minter =
        TokenMinter::hs256(SECRET).with_issuer_audience(Some("https://idp.test"), Some("herald"));
    let minted = minter.mint(&mint_request("u")).unwrap();
    let identity = auth.verify(&minted.token).await.unwrap();
    assert_eq!(identity.user_id, "u");
    assert_eq!(identity.claims["iss"], json!("https://idp.test"));
    assert_eq!(identity.claims["aud"], json!("herald"));
}

#[test]
fn minter_refuses_reserved_claims_empty_sub_and_empty_secret() {
    let minter = TokenMinter::hs256(SECRET);
    for claim in ["sub", "exp", "iat", "tenant", "roles", "iss", "aud"] {
        let mut req = mint_request("u");
        req.claims.insert(claim.to_owned(), json!("x"));
        match minter.mint(&req) {
            Err(AuthError::BadClaims { claim: named, .. }) => assert_eq!(named, claim),
            other => panic!("{claim}: {other:?}"),
        }
    }
    assert!(matches!(
        minter.mint(&mint_request("")),
        Err(AuthError::MissingSub)
    ));
    let empty = TokenMinter::hs256("");
    assert!(matches!(
        empty.mint(&mint_request("u")),
        Err(AuthError::NoKey)
    ));
}

#[tokio::test]
async fn expired_and_leeway() {
    let token = sign(
        Algorithm::HS256,
        None,
        &json!({"sub": "u", "exp": now() - 120}),
    );
    refused(&authenticator(hs256_settings()), &token, "expired").await;
    let lenient = AuthSettings {
        leeway: Duration::from_secs(300),
        ..hs256_settings()
    };
    let exp = now() - 120;
    let token = sign(Algorithm::HS256, None, &json!({"sub": "u", "exp": exp}));
    let identity = authenticator(lenient).verify(&token).await.unwrap();
    // Accepted under the leeway, it lives until the leeway runs out too.
    assert_eq!(identity.expires_at, Some(exp + 300));
}

#[tokio::test]
async fn not_yet_valid_and_leeway() {
    let token = sign(
        Algorithm::HS256,
        None,
        &json!({"sub": "u", "nbf": now() + 120}),
    );
    refused(&authenticator(hs256_settings()), &token, "not_yet_valid").await;
    let lenient = AuthSettings {
        leeway: Duration::from_secs(300),
        ..hs256_settings()
    };
    let exp = now() - 120;
    let token = sign(Algorithm::HS256, None, &json!({"sub": "u", "exp": exp}));
    let identity = authenticator(lenient).verify(&token).await.unwrap();
    // Accepted under the leeway, it lives until the leeway runs out too.
    assert_eq!(identity.expires_at, Some(exp + 300));
}

#[tokio::test]
async fn exp_is_optional_but_must_be_numeric() {
    let auth = authenticator(hs256_settings());
    let identity = auth
        .verify(&sign(Algorithm::HS256, None, &json!({"sub": "u"})))
        .await
        .unwrap();
    assert_eq!(identity.expires_at, None);
    let token = sign(
        Algorithm::HS256,
        None,
        &json!({"sub": "u", "exp": "tomorrow"}),
    );
    refused(&auth, &token, "bad_claims").await;
}

#[tokio::test]
async fn wrong_signature() {
    let auth = authenticator(hs256_settings());
    let claims = json!({"sub": "u", "exp": now() + 60});
    let other = EncodingKey::from_secret(b"another-secret");
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &other).unwrap();
    refused(&auth, &token, "bad_signature").await;

    // A valid signature over other claims: swap in a forged payload.
    let good = sign(Algorithm::HS256, None, &claims);
    let forged = sign(
        Algorithm::HS256,
        None,
        &json!({"sub": "admin", "exp": now() + 60}),
    );
    let [header, _, signature]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let payload = forged.split('.').nth(1).unwrap();
    refused(
        &auth,
        &format!("{header}.{payload}.{signature}"),
        "bad_signature",
    )
    .await;
}

#[tokio::test]
async fn alg_none_and_unsupported_algs_are_refused() {
    let auth = authenticator(hs256_settings());
    let claims = json!({"sub": "u"});
    let none = hand_token(&json!({"alg": "none", "typ": "JWT"}), &claims, "");
    let err = refused(&auth, &none, "bad_algorithm").await;
    assert!(matches!(err, AuthError::BadAlgorithm(alg) if alg == "none"));
    for alg in ["None", "HS512", "PS256", "EdDSA"] {
        refused(
            &auth,
            &hand_token(&json!({"alg": alg}), &claims, "AAAA"),
            "bad_algorithm",
        )
        .await;
    }
}

#[tokio::test]
async fn hs256_is_never_checked_against_a_public_key() {
    // The classic confusion attack: HMAC-sign with the public key PEM text.
    let auth = authenticator(AuthSettings {
        rs256_public_key_pem: Some(RSA_PUBLIC.to_owned()),
        es256_public_key_pem: Some(EC_PUBLIC.to_owned()),
        ..AuthSettings::default()
    });
    let claims = json!({"sub": "u", "exp": now() + 60});
    for public in [RSA_PUBLIC, EC_PUBLIC] {
        let key = EncodingKey::from_secret(public.as_bytes());
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        refused(&auth, &token, "bad_algorithm").await;
    }
}

#[tokio::test]
async fn rs256_and_es256_with_pem_keys() {
    let auth = authenticator(AuthSettings {
        rs256_public_key_pem: Some(RSA_PUBLIC.to_owned()),
        es256_public_key_pem: Some(EC_PUBLIC.to_owned()),
        ..AuthSettings::default()
    });
    let claims = json!({"sub": "u", "exp": now() + 60, "roles": ["r"]});
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let identity = auth.verify(&sign(alg, Some("any"), &claims)).await.unwrap();
        assert_eq!(identity.user_id, "u");
        assert_eq!(identity.roles, ["r"]);
    }
    // Only an RSA key: ES256 has no key, so its alg is refused.
    let rsa_only = authenticator(AuthSettings {
        rs256_public_key_pem: Some(RSA_PUBLIC.to_owned()),
        ..AuthSettings::default()
    });
    refused(
        &rsa_only,
        &sign(Algorithm::ES256, None, &claims),
        "bad_algorithm",
    )
    .await;
    refused(
        &rsa_only,
        &sign(Algorithm::HS256, None, &claims),
        "bad_algorithm",
    )
    .await;
}

#[tokio::test]
async fn issuer_and_audience() {
    let auth = authenticator(AuthSettings {
        issuer: Some("https://idp.example".to_owned()),
        audience: Some("herald".to_owned()),
        ..hs256_settings()
    });
    let ok = |claims: serde_json::Value| sign(Algorithm::HS256, None, &claims);
    let iss = "https://idp.example";
    auth.verify(&ok(json!({"sub": "u", "iss": iss, "aud": "herald"})))
        .await
        .unwrap();
    auth.verify(&ok(json!({"sub": "u", "iss": iss, "aud": ["x", "herald"]})))
        .await
        .unwrap();
    let cases = [
        (
            json!({"sub": "u", "iss": "https://evil.example", "aud": "herald"}),
            "bad_issuer",
        ),
        (json!({"sub": "u", "aud": "herald"}), "bad_issuer"),
        (
            json!({"sub": "u", "iss": iss, "aud": "other"}),
            "bad_audience",
        ),
        (
            json!({"sub": "u", "iss": iss, "aud": ["x", "y"]}),
            "bad_audience",
        ),
        (json!({"sub": "u", "iss": iss}), "bad_audience"),
    ];
    for (claims, reason) in cases {
        refused(&auth, &ok(claims), reason).await;
    }
    // Nothing configured: `iss` and `aud` pass whatever they say.
    let open = authenticator(hs256_settings());
    open.verify(&ok(json!({"sub": "u", "iss": "a", "aud": "b"})))
        .await
        .unwrap();
}

#[tokio::test]
async fn sub_is_required() {
    let auth = authenticator(hs256_settings());
    for claims in [
        json!({}),
        json!({"sub": ""}),
        json!({"sub": 5}),
        json!({"sub": null}),
    ] {
        refused(&auth, &sign(Algorithm::HS256, None, &claims), "missing_sub").await;
    }
}

#[tokio::test]
async fn roles_and_tenant_types() {
    let auth = authenticator(hs256_settings());
    let bad = [
        json!({"sub": "u", "roles": "admin"}),
        json!({"sub": "u", "roles": ["admin", 1]}),
        json!({"sub": "u", "tenant": 5}),
        json!({"sub": "u", "tenant": ["acme"]}),
        // Tenants follow the API's rule: 64 bytes of the room alphabet.
        json!({"sub": "u", "tenant": "t".repeat(65)}),
        json!({"sub": "u", "tenant": "ac me"}),
    ];
    for claims in bad {
        refused(&auth, &sign(Algorithm::HS256, None, &claims), "bad_claims").await;
    }
    let token = |claims| sign(Algorithm::HS256, None, &claims);
    let acme = auth
        .verify(&token(json!({"sub": "u", "tenant": "acme"})))
        .await
        .unwrap();
    assert_eq!(acme.tenant.as_deref(), Some("acme"));
    let longest = "t".repeat(64);
    let long = auth
        .verify(&token(json!({"sub": "u", "tenant": longest})))
        .await
        .unwrap();
    assert_eq!(long.tenant.as_deref(), Some(longest.as_str()));
    let default = auth
        .verify(&token(json!({"sub": "u", "tenant": ""})))
        .await
        .unwrap();
    assert_eq!(default.tenant, None);
    let none = auth
        .verify(&token(json!({"sub": "u", "roles": []})))
        .await
        .unwrap();
    assert!(none.roles.is_empty());
}

#[tokio::test]
async fn malformed_missing_and_no_key() {
    let auth = authenticator(hs256_settings());
    refused(&auth, "", "missing").await;
    for token in ["abc", "a.b", "a.b.c.d", "!!!.e30.AA", "e30.e30.AA"] {
        refused(&auth, token, "malformed").await;
    }
    let not_object = hand_token(&json!({"alg": "HS256"}), &json!([1]), "AA");
    refused(&auth, &not_object, "bad_signature").await;
    let crit = hand_token(
        &json!({"alg": "HS256", "crit": ["b64"]}),
        &json!({"sub": "u"}),
        "AA",
    );
    refused(&auth, &crit, "malformed").await;
    refused(&auth, &"a".repeat(40_000), "malformed").await;

    let keyless = authenticator(AuthSettings::default());
    assert!(!keyless.has_keys());
    assert!(auth.has_keys());
    refused(
        &keyless,
        &sign(Algorithm::HS256, None, &json!({"sub": "u"})),
        "no_key",
    )
    .await;
}
