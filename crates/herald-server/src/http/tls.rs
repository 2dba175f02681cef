//! TLS on the listener: the certificate and key from `server.tls_cert_file`
//! and `server.tls_key_file` (PEM), served to each new handshake from a
//! swappable slot, and reloaded when the files change (polled) or on
//! SIGHUP. A reload affects new handshakes only: open connections keep
//! the session they negotiated. A reload that fails keeps the certificate
//! in use and logs the file at fault.

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The config key naming the certificate file.
pub const CERT_KEY: &str = "server.tls_cert_file";
/// The config key naming the private key file.
pub const KEY_KEY: &str = "server.tls_key_file";
/// How often the files are checked for a change (modification time and
/// length of both).
const POLL_EVERY: Duration = Duration::from_secs(2);
/// Counter of reload attempts, by outcome.
const RELOADS_METRIC: &str = "herald_tls_reloads_total";

/// Why a certificate and key could not be used; each names its config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// The certificate file holds no usable PEM certificate.
    #[error("{CERT_KEY}: {}: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no usable PEM private key.
    #[error("{KEY_KEY}: {}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("{KEY_KEY}: the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl TlsError {
    /// The config key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Unreadable { key, .. } => key,
            TlsError::BadCertificate { .. } => CERT_KEY,
            TlsError::BadKey { .. } | TlsError::Mismatch { .. } => KEY_KEY,
        }
    }
}

/// The provider every handshake and key load uses (ring, as the clients'
/// reqwest does).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its private key: both parse
/// as PEM, and the key is the first certificate's.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Unreadable {
        key: CERT_KEY,
        path: cert.to_owned(),
        source,
    })?;
    let bad_cert = |reason: String| TlsError::BadCertificate {
        path: cert.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(bad_cert("no `BEGIN CERTIFICATE` block".into()));
    }
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Unreadable {
        key: KEY_KEY,
        path: key.to_owned(),
        source,
    })?;
    let bad_key = |reason: String| TlsError::BadKey {
        path: key.to_owned(),
        reason,
    };
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad_key(format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
    let signer = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| bad_key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
        // A key type whose public half rustls cannot tell: not a mismatch.
        Err(rustls::Error::InconsistentKeys(_)) => Ok(certified),
        Err(e) => Err(bad_cert(format!("not a usable certificate: {e}"))),
    }
}

/// A warning for a certificate past its end of validity (it still loads:
/// an operator may be replacing it right now), else `None`.
pub fn expiry_warning(cert: &CertifiedKey, path: &Path) -> Option<String> {
    let end = cert.end_entity_cert().ok().and_then(|c| not_after(c))?;
    (end < SystemTime::now()).then(|| {
        let when = humantime::format_rfc3339_seconds(end);
        format!(
            "{CERT_KEY}: the certificate in {} expired at {when}; clients will refuse it",
            path.display()
        )
    })
}

/// The certificates handshakes get: the current one, swapped by a reload.
#[derive(Debug)]
struct CertSlot(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The listener's TLS: the acceptor, and what reloads its certificate.
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    slot: Arc<CertSlot>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate and key; an error names the key at fault.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certified = load(cert, key)?;
        if let Some(warning) = expiry_warning(&certified, cert) {
            tracing::warn!("{warning}");
        }
        metrics::describe_counter!(
            RELOADS_METRIC,
            "TLS certificate reloads (files changed or SIGHUP), by outcome (ok, error)"
        );
        for outcome in ["ok", "error"] {
            metrics::counter!(RELOADS_METRIC, "outcome" => outcome).increment(0);
        }
        let slot = Arc::new(CertSlot(ArcSwap::from_pointee(certified)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::BadCertificate {
                path: cert.to_owned(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(slot.clone());
        // The server speaks HTTP/1.1 only (WebSocket upgrades need it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            slot,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// What accepts a TLS connection (the handshake).
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again; on success new handshakes get the new
    /// certificate, on failure the current one stays. Counted and logged.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load(&self.cert, &self.key) {
            Ok(certified) => {
                if let Some(warning) = expiry_warning(&certified, &self.cert) {
                    tracing::warn!("{warning}");
                }
                self.slot.0.store(Arc::new(certified));
                metrics::counter!(RELOADS_METRIC, "outcome" => "ok").increment(1);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!(RELOADS_METRIC, "outcome" => "error").increment(1);
                tracing::error!(
                    error = %e, key = e.key(),
                    "TLS certificate reload failed; keeping the certificate in use"
                );
                Err(e)
            }
        }
    }

    /// Reloads when either file changes (checked every 2 s) or on SIGHUP,
    /// until `cancel`; a task on `tasks`.
    pub fn spawn_reloader(&self, tasks: &TaskTracker, cancel: CancellationToken) {
        let tls = self.clone();
        tasks.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hangup = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler; TLS reloads on file changes only");
                    None
                }
            };
            let mut seen = tls.stamp();
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let hup = async {
                    match &mut hangup {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = hup => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        seen = tls.stamp();
                        let _ = tls.reload();
                    }
                    _ = tick.tick() => {
                        let now = tls.stamp();
                        if now != seen {
                            // Remembered even when the reload fails: the
                            // next change retries, not every tick.
                            seen = now;
                            let _ = tls.reload();
                        }
                    }
                }
            }
        });
    }

    /// Modification time and length of both files (`None` for one that
    /// cannot be read right now, say mid-replacement).
    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        [&self.cert, &self.key].map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
    }
}

/// The end of a DER certificate's validity (RFC 5280 4.1: the `notAfter`
/// of `tbsCertificate.validity`), read without an X.509 library.
fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let (_, cert_body, _) = der_element(cert)?;
    let (_, mut tbs, _) = der_element(cert_body)?;
    // [0] version (optional), serialNumber, signature, issuer, validity.
    let (tag, _, rest) = der_element(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..3 {
        tbs = der_element(tbs)?.2;
    }
    let (_, validity, _) = der_element(tbs)?;
    let (_, _, after) = der_element(validity)?;
    let (tag, time, _) = der_element(after)?;
    der_time(tag, time)
}

/// One DER element: (tag, contents, what follows).
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18,
/// `YYYYMMDDHHMMSSZ`) as a time.
fn der_time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            // RFC 5280 4.1.2.5.1: 50..99 are 19xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 => (text.get(..4)?.parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let seconds = field(4)? * 3600 + field(6)? * 60 + field(8)?;
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days * 86_400 + seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times_read_as_calendar_dates() {
        let utc = der_time(0x17, b"491231235959Z").expect("UTCTime");
        assert_eq!(
            humantime::format_rfc3339_seconds(utc).to_string(),
            "2049-12-31T23:59:59Z"
        );
        let old = der_time(0x17, b"700101000000Z").expect("UTCTime 19xx");
        assert_eq!(old, SystemTime::UNIX_EPOCH);
        let general = der_time(0x18, b"20240229120000Z").expect("GeneralizedTime");
        assert_eq!(
            humantime::format_rfc3339_seconds(general).to_string(),
            "2024-02-29T12:00:00Z"
        );
        assert!(der_time(0x17, b"garbage").is_none());
        assert!(der_time(0x02, b"491231235959Z").is_none());
    }

    #[test]
    fn der_elements_with_long_lengths_and_truncation() {
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        long.push(0x05);
        let (tag, body, rest) = der_element(&long).expect("element");
        assert_eq!((tag, body.len(), rest), (0x30, 256, &[0x05][..]));
        assert!(der_element(&long[..100]).is_none(), "truncated");
        assert!(
            not_after(b"\x30\x03\x02\x01\x01").is_none(),
            "not a certificate"
        );
    }
}
