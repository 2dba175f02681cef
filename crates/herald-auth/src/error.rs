//! Errors: why a token was refused, why the auth config is unusable, and why
//! the JWKS endpoint could not be read.

use std::sync::Arc;

/// Why a token was refused (or could not be minted).
///
/// Messages are safe to log but say more than a client should learn; send
/// clients only [`AuthError::reason`] or a generic "unauthorized".
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No token was presented (empty string).
    #[error("no token was presented")]
    Missing,
    /// The token is not a well-formed JWS compact serialization.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The `exp` claim is in the past, beyond the leeway.
    #[error("token has expired")]
    Expired,
    /// The `nbf` claim is in the future, beyond the leeway.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// The signature does not verify against the key chosen for the token.
    #[error("token signature does not verify")]
    BadSignature,
    /// The header's `alg` is not accepted, or no key is configured for it.
    #[error("token algorithm {0:?} is not accepted")]
    BadAlgorithm(String),
    /// The `iss` claim is missing or is not the configured issuer.
    #[error("token issuer is missing or not the configured issuer")]
    BadIssuer,
    /// The `aud` claim is missing or does not name the configured audience.
    #[error("token audience is missing or does not include the configured audience")]
    BadAudience,
    /// The token names (or fails to name) a key that the JWKS does not hold.
    #[error("no key for kid {kid:?}")]
    UnknownKey {
        /// The header's `kid`, if it had one.
        kid: Option<String>,
    },
    /// The JWKS could not be fetched and no key is cached.
    #[error("the JWKS is unavailable")]
    JwksUnavailable(#[source] Arc<JwksError>),
    /// The `sub` claim is missing, not a string, or empty.
    #[error("token has no `sub` claim, or it is not a non-empty string")]
    MissingSub,
    /// A claim has the wrong type, or a minted token would override a
    /// reserved claim.
    #[error("claim `{claim}` is invalid: {detail}")]
    BadClaims {
        /// The claim's name.
        claim: String,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// No verification key is configured at all.
    #[error("no verification key is configured")]
    NoKey,
}

impl AuthError {
    /// A short, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::BadAlgorithm(_) => "bad_algorithm",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadAudience => "bad_audience",
            AuthError::UnknownKey { .. } => "unknown_key",
            AuthError::JwksUnavailable(_) => "jwks_unavailable",
            AuthError::MissingSub => "missing_sub",
            AuthError::BadClaims { .. } => "bad_claims",
            AuthError::NoKey => "no_key",
        }
    }

    /// Maps a `jsonwebtoken` failure (signature or standard-claim check).
    pub(crate) fn from_jwt(err: &jsonwebtoken::errors::Error, alg: &str) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match err.kind() {
            K::ExpiredSignature => AuthError::Expired,
            K::ImmatureSignature => AuthError::NotYetValid,
            K::InvalidSignature => AuthError::BadSignature,
            // A key that cannot verify anything: the token cannot be trusted.
            K::InvalidRsaKey(_) | K::InvalidEcdsaKey | K::InvalidKeyFormat => {
                AuthError::BadSignature
            }
            K::InvalidAlgorithm | K::MissingAlgorithm | K::UnsupportedAlgorithm => {
                AuthError::BadAlgorithm(alg.to_owned())
            }
            K::InvalidIssuer => AuthError::BadIssuer,
            K::InvalidAudience => AuthError::BadAudience,
            K::MissingRequiredClaim(claim) if claim == "iss" => AuthError::BadIssuer,
            K::MissingRequiredClaim(claim) if claim == "aud" => AuthError::BadAudience,
            K::MissingRequiredClaim(claim) | K::InvalidClaimFormat(claim) => AuthError::BadClaims {
                claim: claim.clone(),
                detail: "missing or of the wrong type",
            },
            // InvalidToken, Base64, Json, Utf8 and whatever a later
            // jsonwebtoken adds: refuse as malformed.
            _ => AuthError::Malformed(err.to_string()),
        }
    }
}

/// A problem with the auth configuration, found before serving.
///
/// The message starts with the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `auth.hs256_secret` is set but empty.
    #[error("auth.hs256_secret: must not be empty")]
    EmptySecret,
    /// `auth.rs256_public_key_pem` does not hold an RSA public key.
    #[error("auth.rs256_public_key_pem: not a valid RSA public key PEM: {0}")]
    RsaPem(jsonwebtoken::errors::Error),
    /// `auth.rs256_public_key_pem` holds an RSA key too short to trust.
    #[error("auth.rs256_public_key_pem: the RSA key has {bits} bits; at least 2048 are required")]
    WeakRsa {
        /// The modulus length in bits.
        bits: usize,
    },
    /// `auth.es256_public_key_pem` does not hold a P-256 public key.
    #[error("auth.es256_public_key_pem: not a valid EC P-256 public key PEM: {0}")]
    EcPem(jsonwebtoken::errors::Error),
    /// `auth.jwks_url` is not an http(s) URL.
    #[error("auth.jwks_url: {0:?} is not an http:// or https:// URL")]
    JwksUrl(String),
    /// The HTTP client for `auth.jwks_url` could not be built.
    #[error("auth.jwks_url: cannot build the HTTP client: {0}")]
    HttpClient(reqwest::Error),
    /// `auth.leeway` is longer than any clock skew could be.
    #[error("auth.leeway: {0:?} is more than the maximum of 1h")]
    Leeway(std::time::Duration),
    /// The JWKS refresh interval is zero.
    #[error("auth.jwks_refresh: must be greater than zero")]
    JwksRefresh,
    /// `auth.issuer` or `auth.audience` is set but empty.
    #[error("auth.{0}: must not be empty when set")]
    Empty(&'static str),
}

/// Why the JWKS document could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The request failed (connect, TLS, timeout, reading the body).
    #[error("GET {url} failed")]
    Request {
        /// The JWKS URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint answered with a non-success status.
    #[error("GET {url} answered HTTP {status}")]
    Status {
        /// The JWKS URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The body is larger than we accept for a key set.
    #[error("GET {url}: body is larger than {limit} bytes")]
    TooLarge {
        /// The JWKS URL.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not a JWKS document (`{"keys": [...]}`).
    #[error("GET {url}: body is not a JWKS document")]
    Parse {
        /// The JWKS URL.
        url: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}
