//! Token verification: header, key choice, signature and claims.
//!
//! Order matters for safety: the header's `alg` picks the key *type* first
//! (HS256 only a secret, RS256 only an RSA key, ES256 only a P-256 key), and
//! `jsonwebtoken` then checks the signature with a `Validation` that allows
//! exactly that one algorithm. Claims are read only after the signature holds.

use std::collections::HashSet;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_core::Identity;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::jwks::Lookup;
use crate::{AuthError, AuthSettings, Authenticator};

/// Longer tokens are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// The header fields verification needs.
struct TokenHeader {
    alg: Algorithm,
    kid: Option<String>,
}

/// The `Validation` for one algorithm under `settings`.
pub(crate) fn validation(alg: Algorithm, settings: &AuthSettings) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = settings.leeway.as_secs();
    // `exp` is optional (development tokens may not expire) but checked when
    // present; `nbf` likewise. `sub` is checked by `identity` below.
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        // Nothing configured to compare with: `aud` is not checked.
        None => validation.validate_aud = false,
    }
    validation
}

impl Authenticator {
    /// Verifies `token` (the compact JWT, without any `Bearer ` prefix) and
    /// returns the identity it carries.
    ///
    /// Awaits only when a JWKS fetch is needed (first use, or an unknown
    /// `kid` at most once per 30 s).
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if !self.has_keys() {
            return Err(AuthError::NoKey);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = parse_header(token)?;
        let key = self.key_for(&header, token).await?;
        let inner = self.inner();
        let (validation, alg_name) = match header.alg {
            Algorithm::HS256 => (&inner.validation_hs256, "HS256"),
            Algorithm::RS256 => (&inner.validation_rs256, "RS256"),
            _ => (&inner.validation_es256, "ES256"),
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, validation)
            .map_err(|err| AuthError::from_jwt(&err, alg_name))?;
        let mut identity = identity(data.claims)?;
        // The connection lives as long as its token would still verify:
        // closing it at `exp` would cut a token just accepted under the
        // leeway within a housekeeping tick.
        identity.expires_at = identity
            .expires_at
            .map(|exp| exp.saturating_add(validation.leeway));
        Ok(identity)
    }

    /// Picks the one key that may verify a token with this header.
    async fn key_for(
        &self,
        header: &TokenHeader,
        token: &str,
    ) -> Result<Arc<DecodingKey>, AuthError> {
        let inner = self.inner();
        let (fixed, alg_name) = match header.alg {
            Algorithm::HS256 => {
                // JWKS never supplies HMAC secrets: only the configured one.
                return inner.hs256.clone().ok_or_else(|| bad_algorithm("HS256"));
            }
            Algorithm::RS256 => (inner.rs256.clone(), "RS256"),
            _ => (inner.es256.clone(), "ES256"),
        };
        let Some(jwks) = &inner.jwks else {
            return fixed.ok_or_else(|| bad_algorithm(alg_name));
        };
        let Some(kid) = &header.kid else {
            return fixed.ok_or(AuthError::UnknownKey { kid: None });
        };
        // JWKS keys belong to the configured issuer: a token claiming another
        // issuer is refused before its kid can select (or fetch) anything.
        // The claim is unverified here; `decode` checks it again afterwards.
        if let Some(issuer) = &inner.issuer {
            if unverified_issuer(token)?.as_deref() != Some(issuer.as_str()) {
                return Err(AuthError::BadIssuer);
            }
        }
        match jwks.find(kid).await {
            Lookup::Found(key) if key.alg == header.alg => Ok(key.key),
            // The kid names a key of another type (an EC key for RS256...).
            Lookup::Found(_) => Err(bad_algorithm(alg_name)),
            Lookup::Unknown => fixed.ok_or_else(|| AuthError::UnknownKey {
                kid: Some(kid.clone()),
            }),
            Lookup::Unavailable(err) => fixed.ok_or(AuthError::JwksUnavailable(err)),
        }
    }
}

fn bad_algorithm(alg: &str) -> AuthError {
    AuthError::BadAlgorithm(alg.to_owned())
}

fn malformed(what: &str) -> AuthError {
    AuthError::Malformed(what.to_owned())
}

/// Splits a compact JWS into its three parts.
fn parts(token: &str) -> Result<[&str; 3], AuthError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => Ok([header, payload, signature]),
        _ => Err(malformed("not three dot-separated parts")),
    }
}

/// Decodes one base64url part holding a JSON object.
fn json_part(part: &str, name: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed(format!("{name} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed(format!("{name} is not a JSON object")))
}

/// Reads `alg` and `kid` without trusting anything else in the header.
fn parse_header(token: &str) -> Result<TokenHeader, AuthError> {
    let [header, _, _] = parts(token)?;
    let header = json_part(header, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => match alg.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            // `none` and everything else; the name is attacker-chosen, so cut
            // it short before it reaches a log line.
            other => return Err(AuthError::BadAlgorithm(other.chars().take(16).collect())),
        },
        _ => return Err(malformed("header has no string alg")),
    };
    // Extensions we would have to understand (RFC 7515 section 4.1.11).
    if header.contains_key("crit") {
        return Err(malformed("header has crit extensions"));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("header kid is not a string")),
    };
    Ok(TokenHeader { alg, kid })
}

/// The payload's `iss`, read before the signature is checked.
fn unverified_issuer(token: &str) -> Result<Option<String>, AuthError> {
    let [_, payload, _] = parts(token)?;
    let mut claims = json_part(payload, "payload")?;
    Ok(match claims.remove("iss") {
        Some(Value::String(iss)) => Some(iss),
        _ => None,
    })
}

fn bad_claim(claim: &str, detail: &'static str) -> AuthError {
    AuthError::BadClaims {
        claim: claim.to_owned(),
        detail,
    }
}

/// Builds the identity from verified claims.
fn identity(claims: Map<String, Value>) -> Result<Identity, AuthError> {
    let user_id = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        _ => return Err(AuthError::MissingSub),
    };
    let roles = match claims.get("roles") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad_claim("roles", "must be an array of strings"))?,
        Some(_) => return Err(bad_claim("roles", "must be an array of strings")),
    };
    let tenant = match claims.get("tenant") {
        None | Some(Value::Null) => None,
        // The empty string names the default tenant, as `None` does.
        Some(Value::String(tenant)) if tenant.is_empty() => None,
        // Same rule as a tenant named in the HTTP API, so a token cannot
        // reach a tenant the API could not name (or an unbounded key).
        Some(Value::String(tenant)) if herald_core::Tenant::parse(Some(tenant)).is_err() => {
            return Err(bad_claim(
                "tenant",
                "must be at most 64 bytes of A-Z a-z 0-9 _ . : @ / = -",
            ))
        }
        Some(Value::String(tenant)) => Some(tenant.clone()),
        Some(_) => return Err(bad_claim("tenant", "must be a string")),
    };
    // `decode` already refused a non-numeric `exp`.
    let expires_at = claims.get("exp").and_then(|exp| {
        exp.as_u64().or_else(|| {
            exp.as_f64()
                .filter(|secs| secs.is_finite() && *secs >= 0.0)
                .map(|secs| secs.round() as u64)
        })
    });
    Ok(Identity {
        user_id,
        tenant,
        roles,
        expires_at,
        claims,
    })
}
