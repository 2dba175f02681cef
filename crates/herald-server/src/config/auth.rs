//! `[auth]`: how clients' tokens are verified (HS256, RS256, ES256 or
//! JWKS) and the API keys of the HTTP API. The keys are checked in
//! `Config::validate`, their names in `audit.rs`.

use herald_core::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One API key and what it may do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The secret key, sent as `Authorization: Bearer <key>`.
    pub key: String,
    /// `publish` and/or `admin`.
    pub scopes: Vec<Scope>,
    /// The name logs show instead of the key; `key-<n>` (1-based) when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Publish and broadcast.
    Publish,
    /// Every API call.
    Admin,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// File holding the HS256 secret.
    pub hs256_secret_file: Option<String>,
    /// RS256 public key, PEM text.
    pub rs256_public_key_pem: Option<String>,
    /// File holding the RS256 public key.
    pub rs256_public_key_pem_file: Option<String>,
    /// ES256 public key, PEM text.
    pub es256_public_key_pem: Option<String>,
    /// File holding the ES256 public key.
    pub es256_public_key_pem_file: Option<String>,
    /// JWKS endpoint.
    pub jwks_url: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "duration")]
    pub leeway: Duration,
    /// How often JWKS keys are refreshed (an extension).
    #[serde(with = "duration")]
    pub jwks_refresh: Duration,
    /// API keys.
    pub api_keys: Vec<ApiKeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            hs256_secret_file: None,
            rs256_public_key_pem: None,
            rs256_public_key_pem_file: None,
            es256_public_key_pem: None,
            es256_public_key_pem_file: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            jwks_refresh: Duration::from_secs(300),
            api_keys: Vec::new(),
        }
    }
}
