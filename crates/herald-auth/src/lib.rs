//! Herald authentication: JWT verification (HS256, RS256, ES256) against
//! static keys and a JWKS endpoint, and HS256 token minting.
//!
//! The server builds an [`AuthSettings`] from its config, turns it into an
//! [`Authenticator`] once at start (bad keys fail there, before any port is
//! bound), and calls [`Authenticator::verify`] for every token. A verified
//! token becomes a [`herald_core::Identity`].
//!
//! Security choices, in short:
//! - each algorithm is checked only against a key of its own type, so an
//!   HS256 token is never verified with an RSA or EC public key as the HMAC
//!   secret (algorithm confusion), and `alg: none` is always refused;
//! - JWKS keys are stored under (issuer, kid), and a flood of unknown `kid`s
//!   refetches the key set at most once per 30 seconds.
#![warn(missing_docs)]

mod error;
mod jwks;
mod mint;
mod verify;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::{AuthError, JwksError, KeyError};
pub use mint::{MintRequest, MintedToken, TokenMinter};

use jwks::Jwks;

/// Clock skew beyond this is a misconfiguration, not skew.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// The auth section of the config, as plain data.
#[derive(Clone)]
pub struct AuthSettings {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// PEM text of the RSA public key for RS256 tokens.
    pub rs256_public_key_pem: Option<String>,
    /// PEM text of the P-256 public key for ES256 tokens.
    pub es256_public_key_pem: Option<String>,
    /// URL of a JWKS document (RS256 and ES256 keys by `kid`).
    pub jwks_url: Option<String>,
    /// Required `iss` claim, when set; also the issuer JWKS keys belong to.
    pub issuer: Option<String>,
    /// Required `aud` claim member, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds count).
    pub leeway: Duration,
    /// How often the JWKS is refetched by [`Authenticator::spawn_jwks_refresh`].
    pub jwks_refresh: Duration,
}

impl Default for AuthSettings {
    /// No keys, no issuer or audience, no leeway, JWKS refresh every 5 minutes.
    fn default() -> Self {
        Self {
            hs256_secret: None,
            rs256_public_key_pem: None,
            es256_public_key_pem: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            jwks_refresh: Duration::from_secs(300),
        }
    }
}

impl fmt::Debug for AuthSettings {
    // Hand-written so the HS256 secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("rs256_public_key_pem", &self.rs256_public_key_pem.is_some())
            .field("es256_public_key_pem", &self.es256_public_key_pem.is_some())
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("jwks_refresh", &self.jwks_refresh)
            .finish()
    }
}

/// Verifies tokens. Cheap to clone: clones share keys and the JWKS cache.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

/// The parsed configuration behind an [`Authenticator`].
pub(crate) struct Inner {
    pub(crate) hs256: Option<Arc<DecodingKey>>,
    pub(crate) rs256: Option<Arc<DecodingKey>>,
    pub(crate) es256: Option<Arc<DecodingKey>>,
    pub(crate) jwks: Option<Arc<Jwks>>,
    pub(crate) issuer: Option<String>,
    /// One `Validation` per accepted algorithm, each allowing only that one.
    pub(crate) validation_hs256: Validation,
    pub(crate) validation_rs256: Validation,
    pub(crate) validation_es256: Validation,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Authenticator")
            .field("hs256", &inner.hs256.is_some())
            .field("rs256", &inner.rs256.is_some())
            .field("es256", &inner.es256.is_some())
            .field("jwks", &inner.jwks.as_ref().map(|j| j.url().to_owned()))
            .field("issuer", &inner.issuer)
            .finish()
    }
}

impl Authenticator {
    /// Parses every configured key up front; any unusable setting is an error
    /// naming its config key (fail closed, never a silent default).
    pub fn new(settings: AuthSettings) -> Result<Self, KeyError> {
        for (name, value) in [
            ("issuer", &settings.issuer),
            ("audience", &settings.audience),
        ] {
            if value.as_deref() == Some("") {
                return Err(KeyError::Empty(name));
            }
        }
        if settings.leeway > MAX_LEEWAY {
            return Err(KeyError::Leeway(settings.leeway));
        }
        let hs256 = match settings.hs256_secret.as_deref() {
            Some("") => return Err(KeyError::EmptySecret),
            Some(secret) => Some(Arc::new(DecodingKey::from_secret(secret.as_bytes()))),
            None => None,
        };
        let rs256 = settings
            .rs256_public_key_pem
            .as_deref()
            .map(rsa_pem)
            .transpose()?;
        let es256 = settings
            .es256_public_key_pem
            .as_deref()
            .map(ec_pem)
            .transpose()?;
        let jwks = match settings.jwks_url.as_deref() {
            Some(url) => Some(Arc::new(Jwks::new(
                url,
                settings.issuer.as_deref(),
                settings.jwks_refresh,
            )?)),
            None => None,
        };
        let validation = |alg| verify::validation(alg, &settings);
        Ok(Self {
            inner: Arc::new(Inner {
                validation_hs256: validation(Algorithm::HS256),
                validation_rs256: validation(Algorithm::RS256),
                validation_es256: validation(Algorithm::ES256),
                hs256,
                rs256,
                es256,
                jwks,
                issuer: settings.issuer,
            }),
        })
    }

    /// Whether any key (secret, PEM or JWKS URL) is configured. Without one
    /// every [`verify`](Self::verify) fails with [`AuthError::NoKey`].
    pub fn has_keys(&self) -> bool {
        let inner = &self.inner;
        inner.hs256.is_some()
            || inner.rs256.is_some()
            || inner.es256.is_some()
            || inner.jwks.is_some()
    }

    /// Starts the background JWKS refresher: it fetches at once, then every
    /// `jwks_refresh`, retrying failures with a bounded backoff, until
    /// `cancel` fires. `None` when no `jwks_url` is configured.
    ///
    /// The refresher is optional: without it the key set is fetched on the
    /// first token that needs it and refetched only on unknown `kid`s.
    pub fn spawn_jwks_refresh(&self, cancel: CancellationToken) -> Option<JoinHandle<()>> {
        let jwks = self.inner.jwks.clone()?;
        Some(tokio::spawn(jwks.refresh_loop(cancel)))
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Shortens the JWKS refetch rate limit; only before any clone exists.
    #[cfg(test)]
    pub(crate) fn set_jwks_min_refetch(&mut self, min_refetch: Duration) {
        let jwks = Arc::get_mut(&mut self.inner)
            .and_then(|inner| inner.jwks.as_mut())
            .and_then(Arc::get_mut);
        if let Some(jwks) = jwks {
            jwks.set_min_refetch(min_refetch);
        }
    }
}

/// Parses an RSA public key PEM (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`).
fn rsa_pem(pem: &str) -> Result<Arc<DecodingKey>, KeyError> {
    let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(KeyError::RsaPem)?;
    // `from_rsa_pem` also accepts private keys and does not parse the key
    // itself; extracting (n, e) does, so a bad key fails here, not per token.
    let jwk = Jwk::from_decoding_key(&key, Some(Algorithm::RS256)).map_err(KeyError::RsaPem)?;
    if let AlgorithmParameters::RSA(params) = &jwk.algorithm {
        let bits = jwks::rsa_modulus_bits(&params.n);
        if bits < jwks::MIN_RSA_BITS {
            return Err(KeyError::WeakRsa { bits });
        }
    }
    Ok(Arc::new(key))
}

/// Parses a P-256 public key PEM (SPKI `PUBLIC KEY`).
fn ec_pem(pem: &str) -> Result<Arc<DecodingKey>, KeyError> {
    let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(KeyError::EcPem)?;
    let jwk = Jwk::from_decoding_key(&key, Some(Algorithm::ES256)).map_err(KeyError::EcPem)?;
    match jwk.algorithm {
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {}
        // A P-384 key would be refused for every ES256 token: say so now.
        _ => return Err(KeyError::EcPem(ErrorKind::InvalidEcdsaKey.into())),
    }
    // Building a verifier checks that the point lies on the curve; the probe
    // signature itself is meant not to verify.
    jsonwebtoken::crypto::verify("AA", b"probe", &key, Algorithm::ES256)
        .map_err(KeyError::EcPem)?;
    Ok(Arc::new(key))
}
