//! The JWKS key cache: fetch, parse, look up by (issuer, kid), refresh.
//!
//! Lookups take a parking_lot lock for a moment and clone the key out; no
//! lock is held across an `.await`. Fetches are serialized by an async mutex
//! so concurrent misses share one request, and a miss refetches only when
//! the last attempt is older than `min_refetch` (30 s): a flood of bogus
//! `kid`s cannot hammer the identity provider.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::error::{JwksError, KeyError};

/// Least time between two fetches triggered by unknown `kid`s.
const MIN_REFETCH: Duration = Duration::from_secs(30);
/// First retry delay of the refresher after a failed fetch.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay of the refresher.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Whole-request timeout; a stuck IdP must not stall verifications forever.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// A key set is a few KB; anything near this is not one.
const MAX_BODY: usize = 1 << 20;

/// Shorter RSA keys are refused, from PEM and JWKS alike.
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// The length in bits of a base64url RSA modulus (0 when it does not decode).
pub(crate) fn rsa_modulus_bits(n: &str) -> usize {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(n.trim_end_matches('=')) else {
        return 0;
    };
    match bytes.iter().position(|&b| b != 0) {
        Some(first) => (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize,
        None => 0,
    }
}

/// A key from the JWKS, usable for exactly one algorithm.
#[derive(Clone)]
pub(crate) struct JwksKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: Arc<DecodingKey>,
}

/// What a lookup by `kid` found.
pub(crate) enum Lookup {
    Found(JwksKey),
    Unknown,
    /// No key is cached and the last fetch failed.
    Unavailable(Arc<JwksError>),
}

/// A JWKS endpoint and its cached keys.
pub(crate) struct Jwks {
    url: String,
    /// The configured issuer (or "" when none): keys are stored under it.
    issuer: String,
    client: reqwest::Client,
    refresh: Duration,
    min_refetch: Duration,
    state: Mutex<State>,
    /// Serializes fetches; held across the request, never a sync lock.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: HashMap<(String, String), JwksKey>,
    last_attempt: Option<Instant>,
    last_error: Option<Arc<JwksError>>,
}

impl Jwks {
    pub(crate) fn new(
        url: &str,
        issuer: Option<&str>,
        refresh: Duration,
    ) -> Result<Self, KeyError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(KeyError::JwksUrl(url.to_owned()));
        }
        if refresh.is_zero() {
            return Err(KeyError::JwksRefresh);
        }
        let client = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(KeyError::HttpClient)?;
        Ok(Self {
            url: url.to_owned(),
            issuer: issuer.unwrap_or_default().to_owned(),
            client,
            refresh,
            min_refetch: MIN_REFETCH,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Shortens the refetch rate limit so tests need not wait 30 s.
    #[cfg(test)]
    pub(crate) fn set_min_refetch(&mut self, min_refetch: Duration) {
        self.min_refetch = min_refetch;
    }

    fn cached(&self, kid: &str) -> Option<JwksKey> {
        let state = self.state.lock();
        state
            .keys
            .get(&(self.issuer.clone(), kid.to_owned()))
            .cloned()
    }

    /// Finds the key `kid`, refetching the set (rate-limited) on a miss.
    pub(crate) async fn find(&self, kid: &str) -> Lookup {
        if let Some(key) = self.cached(kid) {
            return Lookup::Found(key);
        }
        self.refetch_rate_limited().await;
        if let Some(key) = self.cached(kid) {
            return Lookup::Found(key);
        }
        let state = self.state.lock();
        match &state.last_error {
            Some(err) if state.keys.is_empty() => Lookup::Unavailable(Arc::clone(err)),
            _ => Lookup::Unknown,
        }
    }

    async fn refetch_rate_limited(&self) {
        let _fetching = self.fetching.lock().await;
        // Checked after taking the fetch lock: a fetch that just finished
        // while we waited counts, so waiters do not fetch again.
        let recent = self
            .state
            .lock()
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.min_refetch);
        if !recent {
            // The outcome is recorded in the state; `find` reads it there.
            let _ = self.fetch_and_store().await;
        }
    }

    /// Fetches now, whatever the rate limit says (the refresher's path).
    async fn refresh_now(&self) -> Result<usize, Arc<JwksError>> {
        let _fetching = self.fetching.lock().await;
        self.fetch_and_store().await
    }

    /// Fetches and replaces the cache. Callers hold `fetching`.
    async fn fetch_and_store(&self) -> Result<usize, Arc<JwksError>> {
        self.state.lock().last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let count = keys.len();
                let mut state = self.state.lock();
                // Replace, not merge: a key the IdP withdrew must stop working.
                state.keys = keys;
                state.last_error = None;
                Ok(count)
            }
            Err(err) => {
                // Keep serving the keys we have: an IdP outage should not
                // log everybody out.
                let err = Arc::new(err);
                self.state.lock().last_error = Some(Arc::clone(&err));
                Err(err)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<(String, String), JwksKey>, JwksError> {
        let url = || self.url.clone();
        let request_err = |source| JwksError::Request { url: url(), source };
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(request_err)?;
        let status = response.status();
        if !status.is_success() {
            return Err(JwksError::Status {
                url: url(),
                status: status.as_u16(),
            });
        }
        let too_large = || JwksError::TooLarge {
            url: url(),
            limit: MAX_BODY,
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_BODY as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_err)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let doc: JwkSetDoc = serde_json::from_slice(&body)
            .map_err(|source| JwksError::Parse { url: url(), source })?;

        let mut keys = HashMap::new();
        for value in doc.keys {
            match usable_key(value) {
                Ok((kid, key)) => {
                    keys.insert((self.issuer.clone(), kid), key);
                }
                Err(why) => tracing::debug!(url = %self.url, why, "skipping JWKS key"),
            }
        }
        Ok(keys)
    }

    /// The refresher: fetch, then sleep `refresh` (or a growing backoff after
    /// a failure), until cancelled.
    pub(crate) async fn refresh_loop(self: Arc<Self>, cancel: CancellationToken) {
        let max_backoff = self.refresh.min(MAX_BACKOFF);
        let initial_backoff = INITIAL_BACKOFF.min(max_backoff);
        let mut backoff = initial_backoff;
        loop {
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                result = self.refresh_now() => result,
            };
            let wait = match result {
                Ok(count) => {
                    tracing::debug!(url = %self.url, keys = count, "JWKS refreshed");
                    backoff = initial_backoff;
                    self.refresh
                }
                Err(err) => {
                    tracing::warn!(
                        url = %self.url,
                        error = %chain(err.as_ref()),
                        retry_in = ?backoff,
                        "JWKS refresh failed"
                    );
                    let wait = backoff;
                    backoff = (backoff * 2).min(max_backoff);
                    wait
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// An error and its sources on one line, for logs.
fn chain(err: &JwksError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Deserialize)]
struct JwkSetDoc {
    keys: Vec<serde_json::Value>,
}

/// The members of a JWK we read; others are ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Turns one JWK into a (kid, key) pair, or says why it is skipped. One odd
/// key (an encryption key, an unsupported curve) must not spoil the set.
fn usable_key(value: serde_json::Value) -> Result<(String, JwksKey), &'static str> {
    let jwk: RawJwk = serde_json::from_value(value).map_err(|_| "not a JWK object")?;
    let kid = jwk.kid.ok_or("no kid")?;
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signing key");
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return Err("key_ops lacks verify");
    }
    let (alg, key) = match jwk.kty.as_str() {
        "RSA" => {
            if jwk.alg.as_deref().is_some_and(|alg| alg != "RS256") {
                return Err("RSA key for an algorithm other than RS256");
            }
            let (Some(n), Some(e)) = (jwk.n, jwk.e) else {
                return Err("RSA key without n or e");
            };
            if rsa_modulus_bits(&n) < MIN_RSA_BITS {
                return Err("RSA key shorter than 2048 bits");
            }
            let key = DecodingKey::from_rsa_components(&n, &e).map_err(|_| "bad RSA n or e")?;
            (Algorithm::RS256, key)
        }
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err("EC key on a curve other than P-256");
            }
            if jwk.alg.as_deref().is_some_and(|alg| alg != "ES256") {
                return Err("EC key for an algorithm other than ES256");
            }
            let (Some(x), Some(y)) = (jwk.x, jwk.y) else {
                return Err("EC key without x or y");
            };
            let key = DecodingKey::from_ec_components(&x, &y).map_err(|_| "bad EC x or y")?;
            // Building a verifier checks the point is on the curve.
            jsonwebtoken::crypto::verify("AA", b"probe", &key, Algorithm::ES256)
                .map_err(|_| "EC point not on P-256")?;
            (Algorithm::ES256, key)
        }
        // Symmetric ("oct") keys are never taken from a URL.
        _ => return Err("unsupported kty"),
    };
    Ok((
        kid,
        JwksKey {
            alg,
            key: Arc::new(key),
        },
    ))
}
