//! The certificate authorities that client certificates are checked against
//! (`--client-ca`, for services with `verifyClientSsl=true`).
//!
//! Why a verifier that lets clients *without* a certificate through: one HTTPS listener serves
//! every service, and only some of them ask for client certificates. The handshake therefore
//! asks every client for one, refuses a certificate that does not verify against these CAs
//! (so a presented certificate is always a verified one), and lets a client that sends none
//! finish the handshake; the per-request rules then answer 403 for the services that need one.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// Why a CA bundle was refused. The message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    #[error("{} cannot be read: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CA bundle holds no certificate; give a PEM file of one or more \
         -----BEGIN CERTIFICATE----- blocks (the CAs that issue client certificates)"
    )]
    Empty,
    #[error("the CA bundle's PEM is malformed ({0}); give the CA certificates exactly as written")]
    InvalidPem(String),
    #[error("CA certificate {index} of the bundle cannot be used as a trust anchor ({reason})")]
    BadAnchor { index: usize, reason: String },
}

/// A validated bundle of CA certificates that client certificates must chain to.
#[derive(Debug, Clone)]
pub struct ClientCa {
    roots: Arc<RootCertStore>,
}

impl ClientCa {
    /// Reads every certificate of a PEM bundle as a trust anchor; anything else in the text
    /// (keys, comments) is ignored.
    pub fn from_pem(pem: &[u8]) -> Result<ClientCa, ClientCaError> {
        let mut roots = RootCertStore::empty();
        for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| ClientCaError::InvalidPem(e.to_string()))?;
            roots.add(cert).map_err(|e| ClientCaError::BadAnchor {
                index: index + 1,
                reason: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(ClientCaError::Empty);
        }
        Ok(ClientCa { roots: Arc::new(roots) })
    }

    /// Reads a PEM bundle from a file.
    pub fn load_file(path: &Path) -> Result<ClientCa, ClientCaError> {
        let pem = std::fs::read(path)
            .map_err(|source| ClientCaError::Io { path: path.to_owned(), source })?;
        ClientCa::from_pem(&pem)
    }

    /// How many CA certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// Never true: an empty bundle is refused when read.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The handshake's verifier (ring): asks every client for a certificate, refuses one
    /// that does not chain to these CAs, and lets a client that sends none through.
    pub fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, ClientCaError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| ClientCaError::BadAnchor { index: 0, reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_validated() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = ca.self_signed(&key).expect("self-signed");
        let pem = cert.pem();
        let bundle = ClientCa::from_pem(pem.as_bytes()).expect("one CA");
        assert_eq!(bundle.len(), 1);
        assert!(bundle.verifier().is_ok());
        let two = format!("{pem}\n{pem}");
        assert!(ClientCa::from_pem(two.as_bytes()).is_ok());
        assert!(matches!(ClientCa::from_pem(b"not pem"), Err(ClientCaError::Empty)));
        assert!(matches!(
            ClientCa::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(ClientCaError::InvalidPem(_) | ClientCaError::Empty)
        ));
        assert!(ClientCa::load_file(Path::new("/nonexistent/ca.pem")).is_err());
    }
}
