//! The token-verification contract the node relies on; `herald-auth`
//! provides the JWT implementation.

use crate::Identity;
use async_trait::async_trait;

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct VerifyError {
    /// Bounded reason for metrics (`expired`, `bad_signature`, ...).
    pub reason: &'static str,
    /// Human-readable detail, safe to show the client.
    pub message: String,
}

/// Turns a bearer token into a verified [`Identity`].
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// Verifies `token`: signature, algorithm, expiry, issuer, audience and
    /// the claims Herald needs (`sub`).
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError>;
}
