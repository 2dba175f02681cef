//! Glue between config and authentication: the token verifier the node
//! uses, API keys with scopes, and development mode.

use crate::config::{AuthConfig, Config, ConfigError, Scope};
use async_trait::async_trait;
use herald_auth::{AuthSettings, Authenticator, TokenMinter};
use herald_core::{Identity, TokenVerifier, VerifyError};
use subtle::ConstantTimeEq;

/// Adapts the JWT authenticator to the node's verifier contract.
pub(crate) struct JwtVerifier(pub Authenticator);

#[async_trait]
impl TokenVerifier for JwtVerifier {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        self.0.verify(token).await.map_err(|e| VerifyError {
            reason: e.reason(),
            message: e.to_string(),
        })
    }
}

fn read_key(
    inline: &Option<String>,
    file: &Option<String>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            key: format!("auth.{key}_file"),
            message: format!("set either auth.{key} or auth.{key}_file, not both"),
        }),
        (Some(v), None) => Ok(Some(v.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|e| ConfigError::Invalid {
                key: format!("auth.{key}_file"),
                message: format!("cannot read {path}: {e}"),
            }),
        (None, None) => Ok(None),
    }
}

/// Whether no token key of any kind is configured (development mode: a
/// random HS256 secret is generated and announced).
pub fn dev_mode(auth: &AuthConfig) -> bool {
    auth.hs256_secret.is_none()
        && auth.hs256_secret_file.is_none()
        && auth.rs256_public_key_pem.is_none()
        && auth.rs256_public_key_pem_file.is_none()
        && auth.es256_public_key_pem.is_none()
        && auth.es256_public_key_pem_file.is_none()
        && auth.jwks_url.is_none()
}

/// Reads the key files and builds the authenticator, returning it with the
/// HS256 secret (for minting tokens) when one is configured.
pub fn build_authenticator(
    config: &Config,
) -> Result<(Authenticator, Option<String>), ConfigError> {
    let a = &config.auth;
    let hs256 = read_key(&a.hs256_secret, &a.hs256_secret_file, "hs256_secret")?;
    let settings = AuthSettings {
        hs256_secret: hs256.clone(),
        rs256_public_key_pem: read_key(
            &a.rs256_public_key_pem,
            &a.rs256_public_key_pem_file,
            "rs256_public_key_pem",
        )?,
        es256_public_key_pem: read_key(
            &a.es256_public_key_pem,
            &a.es256_public_key_pem_file,
            "es256_public_key_pem",
        )?,
        jwks_url: a.jwks_url.clone(),
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
        leeway: a.leeway,
        jwks_refresh: a.jwks_refresh,
    };
    let auth = Authenticator::new(settings).map_err(|e| ConfigError::Invalid {
        key: "auth".into(),
        message: e.to_string(),
    })?;
    Ok((auth, hs256))
}

/// The minter for `POST /api/v1/tokens` and `herald token`: signs with the
/// HS256 secret and sets `iss`/`aud` from `auth.issuer`/`auth.audience`,
/// so the node accepts the tokens it mints.
pub fn token_minter(config: &Config, hs256_secret: &str) -> TokenMinter {
    TokenMinter::hs256(hs256_secret).with_issuer_audience(
        config.auth.issuer.as_deref(),
        config.auth.audience.as_deref(),
    )
}

/// Configured API keys, compared in constant time.
pub(crate) struct ApiKeys {
    keys: Vec<(Vec<u8>, Vec<Scope>)>,
}

/// Outcome of checking an API request's key.
pub(crate) enum KeyCheck {
    /// The key is valid and holds the scope.
    Allowed,
    /// No key or an unknown key (401).
    Unauthorized,
    /// A valid key without the scope (403).
    Forbidden,
}

impl ApiKeys {
    pub(crate) fn new(config: &AuthConfig) -> Self {
        Self {
            keys: config
                .api_keys
                .iter()
                .map(|k| (k.key.as_bytes().to_vec(), k.scopes.clone()))
                .collect(),
        }
    }

    /// Checks `presented` for `scope`. Every configured key is compared, so
    /// timing does not reveal which (or whether any) key matched early.
    pub(crate) fn check(&self, presented: Option<&str>, scope: Scope) -> KeyCheck {
        let Some(presented) = presented else {
            return KeyCheck::Unauthorized;
        };
        let mut found: Option<&Vec<Scope>> = None;
        for (key, scopes) in &self.keys {
            if bool::from(key.as_slice().ct_eq(presented.as_bytes())) {
                found = Some(scopes);
            }
        }
        match found {
            None => KeyCheck::Unauthorized,
            Some(s) if s.contains(&Scope::Admin) || s.contains(&scope) => KeyCheck::Allowed,
            Some(_) => KeyCheck::Forbidden,
        }
    }
}
