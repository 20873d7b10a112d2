//! The challenges the proxy answers, and the TLS-ALPN-01 challenge certificate.

use instant_acme::ChallengeType;

use super::AcmeError;

/// The ACME challenge the proxy answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `/.well-known/acme-challenge/<token>` on the plain listener (port 80).
    Http01,
    /// A certificate carrying the challenge's digest, to a handshake offering `acme-tls/1`
    /// on the HTTPS listener (port 443; RFC 8737).
    TlsAlpn01,
}

impl ChallengeKind {
    /// `http-01` or `tls-alpn-01`, as the flag takes it.
    pub fn parse(text: &str) -> Option<ChallengeKind> {
        match text {
            "http-01" => Some(ChallengeKind::Http01),
            "tls-alpn-01" => Some(ChallengeKind::TlsAlpn01),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }

    pub(super) fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

/// Shared challenge keys: `http-01.<token>`, `tls-alpn-01.<name>`.
pub(super) const HTTP_01: &str = "http-01.";
pub(super) const TLS_ALPN_01: &str = "tls-alpn-01.";

/// The TLS-ALPN-01 challenge certificate for `name` (RFC 8737 §3): self-signed, for `name`
/// only, with the critical acmeIdentifier extension holding the SHA-256 `digest` of the key
/// authorization; its chain and a throwaway key as PEM.
pub(super) fn alpn_certificate(name: &str, digest: &[u8]) -> Result<String, AcmeError> {
    let failed =
        |err: rcgen::Error| AcmeError::Ca(format!("making the TLS-ALPN-01 certificate: {err}"));
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
}
