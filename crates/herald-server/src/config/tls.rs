//! `server.tls_cert_file` and `server.tls_key_file`: both or neither, and
//! when both, files that load (readable, PEM, the key matching the
//! certificate), so a bad certificate stops the node before it binds and
//! `herald config check` reports it. An expired certificate is a warning
//! ([`Config::tls_warnings`]), not an error: the replacement may be on
//! its way.

use super::{invalid, Config, ConfigError, ServerConfig};
use crate::http::tls::{self, TlsError, CERT_KEY, KEY_KEY};

/// Adds the TLS keys' problems to `problems`.
pub(super) fn validate(server: &ServerConfig, problems: &mut Vec<ConfigError>) {
    match (&server.tls_cert_file, &server.tls_key_file) {
        (None, None) => {}
        (Some(_), None) => problems.push(invalid(
            KEY_KEY,
            format!("missing: {CERT_KEY} is set, and TLS needs the certificate's private key too"),
        )),
        (None, Some(_)) => problems.push(invalid(
            CERT_KEY,
            format!("missing: {KEY_KEY} is set, and TLS needs the certificate too"),
        )),
        (Some(cert), Some(key)) => {
            if let Err(e) = tls::load(cert, key) {
                problems.push(e.into());
            }
        }
    }
}

impl From<TlsError> for ConfigError {
    fn from(e: TlsError) -> Self {
        let text = e.to_string();
        // The error's text starts with its key already.
        let message = text
            .strip_prefix(&format!("{}: ", e.key()))
            .unwrap_or(&text);
        invalid(e.key(), message)
    }
}

impl Config {
    /// Whether the listener serves TLS (both files configured).
    pub fn tls_enabled(&self) -> bool {
        self.server.tls_cert_file.is_some() && self.server.tls_key_file.is_some()
    }

    /// What is acceptable but worth an operator's attention about the TLS
    /// files: a certificate past its end of validity.
    pub fn tls_warnings(&self) -> Vec<String> {
        let (Some(cert), Some(key)) = (&self.server.tls_cert_file, &self.server.tls_key_file)
        else {
            return Vec::new();
        };
        tls::load(cert, key)
            .ok()
            .and_then(|certified| tls::expiry_warning(&certified, cert))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(cert: Option<&str>, key: Option<&str>) -> Vec<String> {
        let server = ServerConfig {
            tls_cert_file: cert.map(Into::into),
            tls_key_file: key.map(Into::into),
            ..ServerConfig::default()
        };
        let mut out = Vec::new();
        validate(&server, &mut out);
        out.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn both_or_neither() {
        assert!(problems(None, None).is_empty());
        let only_cert = problems(Some("/c.pem"), None);
        assert_eq!(only_cert.len(), 1);
        assert!(
            only_cert[0].starts_with("server.tls_key_file: missing"),
            "{only_cert:?}"
        );
        let only_key = problems(None, Some("/k.pem"));
        assert!(
            only_key[0].starts_with("server.tls_cert_file: missing"),
            "{only_key:?}"
        );
    }

    #[test]
    fn unreadable_and_unparsable_files_name_their_key() {
        let missing = problems(Some("/nonexistent/cert.pem"), Some("/nonexistent/key.pem"));
        assert!(
            missing[0].starts_with("server.tls_cert_file: cannot read /nonexistent/cert.pem"),
            "{missing:?}"
        );
        let dir = std::env::temp_dir().join(format!("herald-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let text = garbage.to_str().expect("utf-8 path");
        let bad = problems(Some(text), Some(text));
        assert!(bad[0].starts_with("server.tls_cert_file: "), "{bad:?}");
        assert!(bad[0].contains("BEGIN CERTIFICATE"), "{bad:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
