//! The live certificate set and its handle: one `ArcSwap`, whole sets, never patched.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::Certificate;

/// An immutable set of certificates with its SNI index. Built whole, then published.
#[derive(Debug, Default)]
pub struct CertSet {
    /// In load/upload order; names are unique.
    certs: Vec<Arc<Certificate>>,
    /// Exact DNS name -> index of the certificate that serves it.
    exact: HashMap<String, usize>,
    /// `*.parent` -> index, keyed by `parent`.
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
}

impl CertSet {
    /// A set of `certs`, in order. A certificate whose name came earlier replaces the earlier
    /// one in its place. When several certificates serve the same DNS name, the one that stays
    /// valid longest wins (the renewed one), and on a tie the later one.
    pub fn new(certs: impl IntoIterator<Item = Arc<Certificate>>) -> CertSet {
        let mut ordered: Vec<Arc<Certificate>> = Vec::new();
        for cert in certs {
            match ordered.iter_mut().find(|c| c.name() == cert.name()) {
                Some(slot) => *slot = cert,
                None => ordered.push(cert),
            }
        }
        let mut exact: HashMap<String, usize> = HashMap::new();
        let mut wildcard: HashMap<String, usize> = HashMap::new();
        for (i, cert) in ordered.iter().enumerate() {
            for name in cert.dns_names() {
                let (index, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                let better = index.get(key).is_none_or(|&held| {
                    ordered.get(held).is_none_or(|h| cert.not_after() >= h.not_after())
                });
                if better {
                    index.insert(key.to_owned(), i);
                }
            }
        }
        let default = ordered
            .iter()
            .position(|c| c.name() == "default")
            .or(if ordered.is_empty() { None } else { Some(0) });
        CertSet { certs: ordered, exact, wildcard, default }
    }

    /// The certificate for a handshake that asked for `server_name` (SNI): the one naming it
    /// exactly, else one with a wildcard for its parent (`*.example.com` serves
    /// `a.example.com`, not `a.b.example.com` nor `example.com`), else the default. Without
    /// SNI (a client that dialled an IP address), the default.
    pub fn resolve(&self, server_name: Option<&str>) -> Option<&Arc<Certificate>> {
        let by_name = server_name.and_then(|sni| {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&sni).copied().or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        by_name.or(self.default).and_then(|i| self.certs.get(i))
    }

    /// The certificate served when no name matches: the one named `default`, else the first.
    pub fn default_cert(&self) -> Option<&Arc<Certificate>> {
        self.default.and_then(|i| self.certs.get(i))
    }

    /// The certificate loaded or uploaded under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Certificate>> {
        self.certs.iter().find(|c| c.name() == name)
    }

    /// Every certificate, in load/upload order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Certificate>> {
        self.certs.iter()
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// The handle the TLS listener and the admin API share: one `ArcSwap` holding the whole live
/// [`CertSet`]. Cloning it clones the handle, not the set.
///
/// It is the listener's rustls [`ResolvesServerCert`]: each handshake loads the live set once
/// (wait-free). A connection keeps the certificate it was handshaken with; publishing a new
/// set only changes what later handshakes see.
#[derive(Debug, Clone, Default)]
pub struct CertStore {
    live: Arc<ArcSwap<CertSet>>,
    /// ACME TLS-ALPN-01 challenge certificates (RFC 8737), by the name being validated:
    /// served only to a client that offers the `acme-tls/1` protocol (the CA), which then
    /// closes the connection. Empty but while a certificate is being obtained.
    challenges: Arc<ArcSwap<HashMap<String, Arc<CertifiedKey>>>>,
}

/// The ALPN protocol of the ACME TLS-ALPN-01 challenge (RFC 8737): a handshake that
/// negotiates it is the CA's validation, answered with the challenge certificate and closed.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl CertStore {
    /// A handle with no certificate yet (handshakes fail until one is published).
    pub fn new() -> CertStore {
        CertStore::default()
    }

    /// The live set.
    pub fn load(&self) -> Arc<CertSet> {
        self.live.load_full()
    }

    /// Serves `challenges` (name -> challenge certificate) to `acme-tls/1` handshakes from now
    /// on, in place of the ones served before.
    pub fn publish_challenges(&self, challenges: HashMap<String, Arc<CertifiedKey>>) {
        self.challenges.store(Arc::new(challenges));
    }

    /// How many TLS-ALPN-01 challenges are being answered.
    pub fn challenge_count(&self) -> usize {
        self.challenges.load().len()
    }

    /// Makes `set` the live set, in one store.
    pub fn publish(&self, set: CertSet) {
        let count = set.len();
        self.live.store(Arc::new(set));
        tracing::debug!(certificates = count, "certificate set published");
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if client_hello.alpn().is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN)) {
            // The CA's TLS-ALPN-01 validation: the challenge certificate for the name, or
            // nothing (the handshake fails: no ordinary certificate answers `acme-tls/1`).
            let name = client_hello.server_name()?.trim_end_matches('.').to_ascii_lowercase();
            return self.challenges.load().get(&name).cloned();
        }
        let set = self.live.load();
        let found = set.resolve(client_hello.server_name()).map(|c| c.certified_key().clone());
        if found.is_none() {
            tracing::debug!(
                sni = client_hello.server_name().unwrap_or("-"),
                "no certificate to serve; the handshake is refused"
            );
        }
        found
    }
}
