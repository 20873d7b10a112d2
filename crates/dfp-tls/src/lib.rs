//! Certificates for TLS termination: reading and validating PEM, and the one live set of
//! certificates that the TLS listener picks from on every handshake.
//!
//! It owns [`Certificate`] (a validated chain and key, with the names it serves), [`CertSet`]
//! (an immutable set with SNI lookup: exact name, then a `*.` wildcard one label deep, then the
//! default) and [`CertStore`], the handle both planes share: one `ArcSwap` holding the whole
//! set. A change builds a new set off to the side and publishes it with one store, exactly as
//! route tables are published, so a handshake sees the old set or the new one, never a mix,
//! and connections already established are never touched.
//!
//! [`ClientCa`] is the bundle of CAs that client certificates are checked against
//! (`--client-ca`, `verifyClientSsl`).
//!
//! It must not do network IO, know where certificates are kept (Consul KV, files: that is the
//! admin crate's business) or know about HTTP.

#![forbid(unsafe_code)]

mod client_ca;
mod der;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject as _, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

pub use client_ca::{ClientCa, ClientCaError};
pub use store::{CertSet, CertStore, ACME_TLS_ALPN};

/// Why a certificate was refused. The message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "the body is not PEM; send the certificate chain and its private key in one PEM text \
         (-----BEGIN CERTIFICATE----- ... and -----BEGIN PRIVATE KEY----- ...)"
    )]
    NotPem,
    #[error("the PEM is malformed ({0}); send the file exactly as written, e.g. curl --data-binary @cert.pem")]
    InvalidPem(String),
    #[error("the PEM holds no certificate; put the server's certificate (then its chain) before or after its private key")]
    NoCertificate,
    #[error("the PEM holds no private key; append the certificate's private key (PKCS#8, PKCS#1 or SEC1 PEM)")]
    NoKey,
    #[error("the PEM holds {0} private keys; keep only the one that belongs to the certificate")]
    SeveralKeys(usize),
    #[error(
        "the private key cannot be used ({0}); use an RSA, ECDSA (P-256/P-384) or Ed25519 key"
    )]
    UnsupportedKey(String),
    #[error(
        "the private key does not belong to the first certificate; put the server's own \
         certificate first, then its chain, and the key that was issued with it"
    )]
    KeyMismatch,
    #[error("the first certificate cannot be read ({0}); check that it is an X.509 certificate")]
    BadCertificate(String),
    #[error("the certificate expired at {not_after}; renew it and upload the new one")]
    Expired { not_after: String },
    #[error("the certificate is not valid before {not_before}; check the clock or upload it then")]
    NotYetValid { not_before: String },
    #[error(
        "certificate name {0:?} is invalid; use 1 to 128 letters, digits, '.', '_' or '-', \
         not starting with '.'"
    )]
    InvalidName(String),
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<CertError>,
    },
    #[error("{} cannot be read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A validated certificate chain with its private key, ready to be served.
#[derive(Debug)]
pub struct Certificate {
    name: String,
    dns_names: Vec<String>,
    not_before: i64,
    not_after: i64,
    key: Arc<CertifiedKey>,
}

impl Certificate {
    /// Reads and validates a PEM text holding a certificate chain (server certificate first)
    /// and its private key, in any order. Refuses what cannot be served: no certificate, no
    /// key or several keys, a key that does not belong to the certificate, a certificate that
    /// has expired or is not valid yet.
    pub fn from_pem(name: &str, pem: &[u8]) -> Result<Certificate, CertError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Self::from_pem_at(name, pem, now)
    }

    /// As [`Certificate::from_pem`], checking validity at `now` (Unix seconds).
    pub fn from_pem_at(name: &str, pem: &[u8], now: i64) -> Result<Certificate, CertError> {
        if !valid_name(name) {
            return Err(CertError::InvalidName(name.to_owned()));
        }
        let (chain, key) = read_pem(pem)?;
        let first = chain.first().ok_or(CertError::NoCertificate)?;
        let facts =
            der::cert_facts(first).map_err(|e| CertError::BadCertificate(e.0.to_owned()))?;
        let provider = rustls::crypto::ring::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertError::UnsupportedKey(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertError::KeyMismatch)
            }
            // The ring provider can always tell; anything else means the certificate's key
            // information could not be read.
            Err(err) => return Err(CertError::BadCertificate(err.to_string())),
        }
        if now < facts.not_before {
            return Err(CertError::NotYetValid { not_before: der::rfc3339(facts.not_before) });
        }
        if now > facts.not_after {
            return Err(CertError::Expired { not_after: der::rfc3339(facts.not_after) });
        }
        let mut dns_names: Vec<String> =
            facts.dns_names.iter().filter_map(|n| normalise_dns_name(n)).collect();
        if dns_names.is_empty() {
            // RFC 6125 lets clients fall back to the CN when there is no SAN; so do we.
            dns_names.extend(facts.common_name.as_deref().and_then(normalise_dns_name));
        }
        dns_names.dedup();
        Ok(Certificate {
            name: name.to_owned(),
            dns_names,
            not_before: facts.not_before,
            not_after: facts.not_after,
            key: Arc::new(certified),
        })
    }

    /// The name it was loaded or uploaded under (`certName`, or the file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The DNS names it serves (lowercase; wildcards as `*.example.com`).
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// notBefore, in Unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// notBefore as RFC 3339 (`2025-01-31T12:00:00Z`).
    pub fn not_before_rfc3339(&self) -> String {
        der::rfc3339(self.not_before)
    }

    /// notAfter, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// notAfter as RFC 3339 (`2030-01-31T12:00:00Z`).
    pub fn not_after_rfc3339(&self) -> String {
        der::rfc3339(self.not_after)
    }

    /// The chain and signing key rustls serves.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }
}

/// Whether `name` can name a certificate: it becomes a file name and a Consul key, so
/// 1 to 128 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Loads every `*.pem` file of `dir`, in file-name order, each named by its stem. The first
/// file that cannot be read or refused is the error, naming the file.
pub fn load_dir(dir: &Path) -> Result<Vec<Certificate>, CertError> {
    let io = |source| CertError::Io { path: dir.to_owned(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?
        .into_iter()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "pem") && path.is_file())
        .collect();
    files.sort();
    files.into_iter().map(|path| load_file(&path)).collect()
}

/// Loads one PEM file, named by its stem.
pub fn load_file(path: &Path) -> Result<Certificate, CertError> {
    let bytes =
        std::fs::read(path).map_err(|source| CertError::Io { path: path.to_owned(), source })?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Certificate::from_pem(&name, &bytes)
        .map_err(|source| CertError::File { path: path.to_owned(), source: Box::new(source) })
}

/// Splits a PEM text into the certificate chain (in order) and the one private key.
fn read_pem(
    text: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    if !text.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(CertError::NotPem);
    }
    let mut chain = Vec::new();
    let mut keys = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
        let (kind, der) = section.map_err(|e| CertError::InvalidPem(pem_error(&e)))?;
        match kind {
            SectionKind::Certificate => chain.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                keys.extend(PrivateKeyDer::from_pem(kind, der));
            }
            // Public keys, CRLs and the like have no part in serving: ignored.
            _ => {}
        }
    }
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = match keys.len() {
        0 => return Err(CertError::NoKey),
        1 => keys.remove(0),
        n => return Err(CertError::SeveralKeys(n)),
    };
    Ok((chain, key))
}

fn pem_error(err: &pem::Error) -> String {
    match err {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("missing {}", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("bad section start {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

/// A name as SNI compares it: lowercase, no trailing dot; `None` for what no client can send
/// (empty, spaces, a wildcard that is not a whole leftmost label).
fn normalise_dns_name(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let plain = name.strip_prefix("*.").unwrap_or(&name);
    let labels_ok = !plain.is_empty()
        && plain.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    labels_ok.then_some(name)
}

/// The ACME TLS-ALPN-01 challenge certificate in `pem` (its certificate, then its key), as it
/// is served to the CA. Only the key is checked: the certificate carries the critical
/// acmeIdentifier extension (RFC 8737), which the certificate checks of [`Certificate`]
/// (webpki's) refuse as unknown, and it is never served to anyone but the CA.
pub fn challenge_key(pem: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let (chain, key) = read_pem(pem)?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::UnsupportedKey(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Unix seconds as RFC 3339 (`2030-01-31T12:00:00Z`), as certificates' dates are shown.
pub fn rfc3339(unix: i64) -> String {
    der::rfc3339(unix)
}

#[cfg(test)]
mod tests;
