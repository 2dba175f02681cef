//! The credential-verification contract the node relies on: `herald-auth`
//! provides the JWT implementation, the server's connect proxy the one that
//! asks the backend (docs/protocol.md, "Backend integration").

use crate::Identity;
use async_trait::async_trait;
use std::net::SocketAddr;

/// The reason of a [`VerifyError`] that says the verifier could not answer.
const UNAVAILABLE: &str = "backend_unavailable";

/// Why a credential was refused, or could not be checked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct VerifyError {
    /// Bounded reason for metrics (`expired`, `bad_signature`, ...).
    pub reason: &'static str,
    /// Human-readable detail, safe to show the client.
    pub message: String,
}

impl VerifyError {
    /// A refusal with a bounded `reason` and a `message` for the client.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// The verifier could not answer (the backend is down, timed out, or
    /// its circuit breaker is open): not a refusal, the client should retry
    /// (HTTP 503 `unavailable`, or `error` `unavailable` then close 1013).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(UNAVAILABLE, message)
    }

    /// Whether this is [`VerifyError::unavailable`] rather than a refusal.
    pub fn is_unavailable(&self) -> bool {
        self.reason == UNAVAILABLE
    }
}

/// Where a credential came from, for a verifier that asks the backend.
#[derive(Debug, Clone, Default)]
pub struct CredentialContext {
    /// The transport: `"websocket"`, `"sse"` or `"socketio"`.
    pub transport: &'static str,
    /// The client's address, when the transport knows it.
    pub remote_addr: Option<SocketAddr>,
    /// The request headers named in `proxy.forward_headers` (lower-case
    /// names), in request order; nothing else.
    pub headers: Vec<(String, String)>,
}

impl CredentialContext {
    /// A context for `transport` with no address and no headers.
    pub fn for_transport(transport: &'static str) -> Self {
        Self {
            transport,
            ..Self::default()
        }
    }
}

/// A verified credential: who it names and the rooms the backend asked the
/// connection to join at open.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Who the credential names.
    pub identity: Identity,
    /// Extra rooms to join (names without tenant), decided by the backend:
    /// joined without namespace rules.
    pub rooms: Vec<String>,
}

impl From<Identity> for Verified {
    fn from(identity: Identity) -> Self {
        Self {
            identity,
            rooms: Vec::new(),
        }
    }
}

/// Turns a bearer token into a verified [`Identity`].
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// Verifies `token`: signature, algorithm, expiry, issuer, audience and
    /// the claims Herald needs (`sub`).
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError>;

    /// Verifies whatever the client sent where a token goes, knowing where
    /// it came from. The default is [`TokenVerifier::verify`] with no extra
    /// rooms; a verifier that can ask the backend overrides it.
    async fn verify_credential(
        &self,
        credential: &str,
        ctx: &CredentialContext,
    ) -> Result<Verified, VerifyError> {
        let _ = ctx;
        self.verify(credential).await.map(Verified::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    #[async_trait]
    impl TokenVerifier for Fixed {
        async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
            match token {
                "good" => Ok(Identity::new("7")),
                _ => Err(VerifyError::new("bad_signature", "bad token")),
            }
        }
    }

    /// Runs a future that never waits (no runtime needed).
    fn ready<T>(future: impl std::future::Future<Output = T>) -> T {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(future).poll(&mut cx) {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("the fixed verifier never waits"),
        }
    }

    #[test]
    fn verify_credential_defaults_to_verify() {
        let ctx = CredentialContext::for_transport("sse");
        let verified = ready(Fixed.verify_credential("good", &ctx));
        assert_eq!(verified.ok(), Some(Verified::from(Identity::new("7"))));
        let refused = ready(Fixed.verify_credential("bad", &ctx));
        let Err(e) = refused else {
            panic!("a bad token verified")
        };
        assert_eq!(e.reason, "bad_signature");
        assert!(!e.is_unavailable());
    }

    #[test]
    fn unavailable_is_told_apart_from_a_refusal() {
        let e = VerifyError::unavailable("backend down");
        assert!(e.is_unavailable());
        assert_eq!(e.reason, "backend_unavailable");
        assert_eq!(e.to_string(), "backend down");
    }
}
