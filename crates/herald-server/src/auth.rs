//! Glue between config and authentication: the verifier stack the node
//! uses (JWT, with the connect proxy in front when configured), the access
//! proxies, API keys with scopes, and development mode.

use crate::config::{AuthConfig, Config, ConfigError, Scope};
use async_trait::async_trait;
use herald_auth::{AuthSettings, Authenticator, TokenMinter};
use herald_core::access::AccessProxy;
use herald_core::{Identity, TokenVerifier, VerifyError};
use herald_proxy::{ConnectVerifier, HttpAccessProxy, ProxyClient};
use std::sync::Arc;
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

/// Whether no token key of any kind is configured: no JWT can be
/// verified locally.
pub fn no_token_key(auth: &AuthConfig) -> bool {
    auth.hs256_secret.is_none()
        && auth.hs256_secret_file.is_none()
        && auth.rs256_public_key_pem.is_none()
        && auth.rs256_public_key_pem_file.is_none()
        && auth.es256_public_key_pem.is_none()
        && auth.es256_public_key_pem_file.is_none()
        && auth.jwks_url.is_none()
}

/// Whether the node runs in development mode: no token key and no connect
/// proxy, so a random HS256 secret is generated and announced. With a
/// connect proxy and no key the backend decides who every connection is,
/// and no secret is made up: clients never get JWTs the backend knows
/// nothing about.
pub fn dev_mode(config: &Config) -> bool {
    no_token_key(&config.auth) && config.proxy.connect_url.is_none()
}

/// The verifier the node uses: the JWT verifier alone, or the connect
/// proxy in front of it (`proxy.connect_url`). Without any token key the
/// connect proxy answers for every credential, whatever
/// `proxy.connect_mode` says, since no JWT could verify here.
pub fn build_verifier(
    config: &Config,
    authenticator: Authenticator,
    http: &reqwest::Client,
) -> Result<Arc<dyn TokenVerifier>, ConfigError> {
    let jwt: Arc<dyn TokenVerifier> = Arc::new(JwtVerifier(authenticator));
    let Some(url) = &config.proxy.connect_url else {
        return Ok(jwt);
    };
    let client = ProxyClient::new("connect", url, &config.proxy.settings(), http.clone())
        .map_err(proxy_error)?;
    let jwt = (!no_token_key(&config.auth)).then_some(jwt);
    Ok(Arc::new(ConnectVerifier::new(
        jwt,
        client,
        config.proxy.connect_mode,
    )))
}

/// The join, send and RPC proxies, when any URL is configured.
pub fn build_access_proxy(
    config: &Config,
    http: &reqwest::Client,
) -> Result<Option<Arc<dyn AccessProxy>>, ConfigError> {
    if !config.proxy.has_access_proxy() {
        return Ok(None);
    }
    let proxy = HttpAccessProxy::new(&config.proxy.access_urls(), &config.proxy.settings(), http)
        .map_err(proxy_error)?;
    Ok(Some(Arc::new(proxy)))
}

/// The proxies' shared HTTP client (one connection pool).
pub fn proxy_http_client() -> Result<reqwest::Client, ConfigError> {
    herald_proxy::http_client().map_err(proxy_error)
}

fn proxy_error(e: herald_proxy::ProxyError) -> ConfigError {
    ConfigError::Invalid {
        key: "proxy".into(),
        message: e.to_string(),
    }
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

/// Configured API keys, compared in constant time, each with its name
/// (`auth.api_keys[].name`) for logs.
pub(crate) struct ApiKeys {
    keys: Vec<ApiKeyEntry>,
}

struct ApiKeyEntry {
    secret: Vec<u8>,
    scopes: Vec<Scope>,
    name: Arc<str>,
}

/// Outcome of checking an API request's key. The name is the matched
/// key's, never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// The key is valid and holds the scope.
    Allowed(Arc<str>),
    /// No key or an unknown key (401).
    Unauthorized,
    /// A valid key without the scope (403).
    Forbidden(Arc<str>),
}

impl KeyCheck {
    /// The matched key's name, if a key matched.
    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        match self {
            Self::Allowed(name) | Self::Forbidden(name) => Some(name),
            Self::Unauthorized => None,
        }
    }
}

impl ApiKeys {
    pub(crate) fn new(config: &AuthConfig) -> Self {
        Self {
            keys: config
                .api_keys
                .iter()
                .enumerate()
                .map(|(i, k)| ApiKeyEntry {
                    secret: k.key.as_bytes().to_vec(),
                    scopes: k.scopes.clone(),
                    name: k.name_or_default(i).into(),
                })
                .collect(),
        }
    }

    /// Checks `presented` for `scope`. Every configured key is compared, so
    /// timing does not reveal which (or whether any) key matched early.
    pub(crate) fn check(&self, presented: Option<&str>, scope: Scope) -> KeyCheck {
        let Some(presented) = presented else {
            return KeyCheck::Unauthorized;
        };
        let mut found: Option<&ApiKeyEntry> = None;
        for key in &self.keys {
            if bool::from(key.secret.as_slice().ct_eq(presented.as_bytes())) {
                found = Some(key);
            }
        }
        match found {
            None => KeyCheck::Unauthorized,
            Some(k) if k.scopes.contains(&Scope::Admin) || k.scopes.contains(&scope) => {
                KeyCheck::Allowed(k.name.clone())
            }
            Some(k) => KeyCheck::Forbidden(k.name.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ApiKeys, KeyCheck};
    use crate::config::{ApiKeyConfig, AuthConfig, Scope};

    #[test]
    fn check_names_the_matched_key() {
        let auth = AuthConfig {
            api_keys: vec![
                ApiKeyConfig {
                    key: "publisher-key-0000000".into(),
                    scopes: vec![Scope::Publish],
                    name: Some("billing".into()),
                },
                ApiKeyConfig {
                    key: "admin-key-00000000000".into(),
                    scopes: vec![Scope::Admin],
                    name: None,
                },
            ],
            ..AuthConfig::default()
        };
        let keys = ApiKeys::new(&auth);
        let check = |key: Option<&str>, scope| keys.check(key, scope);
        assert_eq!(
            check(Some("publisher-key-0000000"), Scope::Publish),
            KeyCheck::Allowed("billing".into())
        );
        assert_eq!(
            check(Some("publisher-key-0000000"), Scope::Admin),
            KeyCheck::Forbidden("billing".into())
        );
        assert_eq!(
            check(Some("admin-key-00000000000"), Scope::Publish),
            KeyCheck::Allowed("key-2".into())
        );
        assert_eq!(check(Some("nope"), Scope::Publish), KeyCheck::Unauthorized);
        assert_eq!(check(None, Scope::Publish), KeyCheck::Unauthorized);
    }
}
