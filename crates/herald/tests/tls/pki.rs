//! Certificates for the TLS tests, made with rcgen: a private CA and
//! leaves for `localhost` and `127.0.0.1` signed by it, written where a
//! node's `server.tls_cert_file` / `server.tls_key_file` point.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Every PEM file written is padded to this length, so a file swapped
/// with its modification time put back looks unchanged to the node's
/// poll: only SIGHUP can then trigger the reload.
const PADDED_LEN: usize = 4096;

/// A private certificate authority.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (for reqwest).
    pub ca_pem: String,
    /// The CA certificate, DER (for a rustls root store).
    pub ca_der: Vec<u8>,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// What a client sees as the peer certificate.
    pub der: Vec<u8>,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Pki {
            ca_pem: cert.pem(),
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `localhost` and `127.0.0.1` named `cn`, with `serial`.
    pub fn leaf(&self, cn: &str, serial: u8) -> Leaf {
        self.leaf_with(cn, serial, |_| {})
    }

    /// A leaf whose validity ended in 2021.
    pub fn expired_leaf(&self, cn: &str) -> Leaf {
        self.leaf_with(cn, 99, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn leaf_with(&self, cn: &str, serial: u8, adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(vec![serial]));
        adjust(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Where a node's certificate and key live.
pub struct Files {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// A fresh directory holding `leaf`.
    pub fn new(leaf: &Leaf) -> Files {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("herald-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let files = Files {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        files.write(leaf);
        files
    }

    /// Replaces both files with `leaf`.
    pub fn write(&self, leaf: &Leaf) {
        write_padded(&self.cert, &leaf.cert_pem);
        write_padded(&self.key, &leaf.key_pem);
    }

    /// Replaces both files with `leaf`, keeping each file's length and
    /// modification time: invisible to the poll.
    pub fn write_unnoticed(&self, leaf: &Leaf) {
        for (path, pem) in [(&self.cert, &leaf.cert_pem), (&self.key, &leaf.key_pem)] {
            let before = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .expect("mtime");
            write_padded(path, pem);
            set_modified(path, before);
        }
    }

    /// The TOML lines configuring these files.
    pub fn toml(&self) -> String {
        format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `pem` followed by newlines up to [`PADDED_LEN`] bytes (PEM
/// readers skip what lies outside the armour).
fn write_padded(path: &Path, pem: &str) {
    assert!(pem.len() < PADDED_LEN, "PEM of {} bytes", pem.len());
    let mut text = pem.to_owned();
    text.push_str(&"\n".repeat(PADDED_LEN - pem.len()));
    std::fs::write(path, text).expect("write PEM");
}

fn set_modified(path: &Path, when: SystemTime) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to set mtime");
    file.set_modified(when).expect("set mtime");
}
