//! HS256 token minting, for development and tests (`POST /api/v1/tokens`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::AuthError;

/// Claims that [`TokenMinter::mint`] sets itself; extra claims may not
/// override them.
const RESERVED: [&str; 7] = ["sub", "exp", "iat", "tenant", "roles", "iss", "aud"];

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// The user id (`sub`); must not be empty.
    pub sub: String,
    /// The `roles` claim; left out when empty.
    pub roles: Vec<String>,
    /// The `tenant` claim; left out when `None`.
    pub tenant: Option<String>,
    /// Lifetime: `exp` is now plus this, in whole seconds.
    pub ttl: Duration,
    /// Any further claims, e.g. `projects` for namespace rules.
    pub claims: Map<String, Value>,
}

/// A minted token and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedToken {
    /// The compact JWT.
    pub token: String,
    /// The `exp` claim, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Signs HS256 tokens with a shared secret.
#[derive(Clone)]
pub struct TokenMinter {
    key: EncodingKey,
    /// An empty secret would sign tokens anyone can forge; minting refuses.
    has_secret: bool,
    /// `iss` of every minted token: the verifier's `auth.issuer`, so the
    /// node that minted a token accepts it.
    issuer: Option<String>,
    /// `aud` of every minted token: the verifier's `auth.audience`.
    audience: Option<String>,
}

impl fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenMinter").finish_non_exhaustive()
    }
}

impl TokenMinter {
    /// A minter signing with `secret` (the same `auth.hs256_secret` the
    /// [`Authenticator`](crate::Authenticator) verifies with).
    pub fn hs256(secret: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            has_secret: !secret.is_empty(),
            issuer: None,
            audience: None,
        }
    }

    /// Sets `iss` and `aud` on every minted token, as the verifier of the
    /// same config requires them (`auth.issuer`, `auth.audience`); `None`
    /// leaves the claim out.
    pub fn with_issuer_audience(mut self, issuer: Option<&str>, audience: Option<&str>) -> Self {
        self.issuer = issuer.map(str::to_owned);
        self.audience = audience.map(str::to_owned);
        self
    }

    /// Mints a token with `sub`, `iat`, `exp`, `roles` (when non-empty),
    /// `tenant` (when set), `iss`/`aud` (when the minter has them) and the
    /// extra claims.
    ///
    /// Fails with [`AuthError::BadClaims`] when an extra claim would
    /// override one of those, [`AuthError::MissingSub`] for an empty `sub`,
    /// and [`AuthError::NoKey`] when the secret is empty.
    pub fn mint(&self, req: &MintRequest) -> Result<MintedToken, AuthError> {
        if !self.has_secret {
            return Err(AuthError::NoKey);
        }
        if req.sub.is_empty() {
            return Err(AuthError::MissingSub);
        }
        if let Some(claim) = RESERVED.iter().find(|name| req.claims.contains_key(**name)) {
            return Err(AuthError::BadClaims {
                claim: (*claim).to_owned(),
                detail: "is set by the minter and cannot be overridden",
            });
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| AuthError::BadClaims {
                claim: "iat".to_owned(),
                detail: "clock is before 1970",
            })?
            .as_secs();
        let expires_at = now.saturating_add(req.ttl.as_secs());

        let mut claims = req.claims.clone();
        claims.insert("sub".to_owned(), Value::from(req.sub.as_str()));
        claims.insert("iat".to_owned(), Value::from(now));
        claims.insert("exp".to_owned(), Value::from(expires_at));
        if !req.roles.is_empty() {
            claims.insert("roles".to_owned(), Value::from(req.roles.clone()));
        }
        if let Some(tenant) = &req.tenant {
            claims.insert("tenant".to_owned(), Value::from(tenant.as_str()));
        }
        if let Some(issuer) = &self.issuer {
            claims.insert("iss".to_owned(), Value::from(issuer.as_str()));
        }
        if let Some(audience) = &self.audience {
            claims.insert("aud".to_owned(), Value::from(audience.as_str()));
        }
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            // Serializing a JSON map and HMAC signing do not fail in practice.
            .map_err(|err| AuthError::Malformed(format!("cannot encode token: {err}")))?;
        Ok(MintedToken { token, expires_at })
    }
}
