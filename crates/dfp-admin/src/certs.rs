//! TLS certificates through the admin API: upload, list and delete them, keep them where routes
//! are kept, restore them at start and, with Consul, follow them so every replica serves them.
//!
//! - With Consul, each certificate's PEM is stored at `<instance-name>/certs/<name>` in KV and
//!   every replica follows that prefix with a blocking query, so an upload to one replica is
//!   served by all of them within a second.
//! - Standalone, each is a file `certs/<name>.pem` in the directory of the state file, written
//!   atomically (temporary file, fsync, rename, fsync of the directory) and readable by the
//!   proxy's user only. Only files in that `certs/` directory are read back, so a stray `.pem`
//!   in the working directory is never served by accident.
//!
//! The same rules as for routes apply: an upload is validated fully, then stored, then
//! published (one swap of the whole certificate set); a call that fails changes nothing.
//! Changes are serialised by one lock. Storing, following and the guard that keeps a listing
//! asked for before a local upload or delete from undoing it are the routes' too: both are
//! kept through a [`StoreMirror`], and this module only says how a listing is applied.
//! Certificates from `--certs-dir` are loaded by the binary and passed in; they cannot be
//! deleted through the API (delete the file), but an upload of the same name takes their
//! place.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use dfp_consul::ConsulError;
use dfp_tls::{CertSet, CertStore, Certificate};
use serde::Serialize;

use crate::mirror::{Mirrored, StoreMirror};
use crate::store::{RouteStore, StoreError};
use crate::{AdminError, FollowConfig};

/// The largest PEM body an upload may have (a long chain is a few dozen KiB).
pub(crate) const MAX_PEM_BYTES: usize = 256 * 1024;

/// The certificates' side of the admin API. Cloning it clones the handle.
#[derive(Debug, Clone)]
pub struct CertAdmin {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    live: CertStore,
    /// Where uploads are kept (Consul KV or a private directory), with this replica's writes
    /// numbered, and followed with Consul: the same mirror as the routes'.
    store: StoreMirror,
    state: tokio::sync::Mutex<State>,
    /// What ACME manages (set by the binary when ACME is on), shown in `certs`.
    acme: std::sync::OnceLock<crate::acme::AcmeStatus>,
}

/// Every certificate this proxy knows, from which the live set is built.
#[derive(Debug, Default)]
struct State {
    /// From `--certs-dir`, in file-name order.
    from_dir: Vec<Arc<Certificate>>,
    /// Uploaded (or found in the store), by name.
    stored: BTreeMap<String, Stored>,
    /// Stored names in the order they first appeared: the live set's order after `from_dir`.
    order: Vec<String>,
    /// Stored PEM that was refused (expired since its upload, say), so that following the
    /// store warns once per version, not on every change.
    refused: BTreeMap<String, Pem>,
}

#[derive(Debug)]
struct Stored {
    pem: Pem,
    cert: Arc<Certificate>,
}

/// A PEM body as stored. It holds a private key, so its `Debug` shows only its size.
#[derive(Clone, PartialEq, Eq)]
struct Pem(Vec<u8>);

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pem({} bytes)", self.0.len())
    }
}

impl State {
    /// The set to serve: `--certs-dir` first, then stored ones; a stored certificate with a
    /// directory certificate's name takes its place.
    fn build(&self) -> CertSet {
        CertSet::new(
            self.from_dir.iter().cloned().chain(
                self.order.iter().filter_map(|n| self.stored.get(n)).map(|s| s.cert.clone()),
            ),
        )
    }

    fn insert(&mut self, name: &str, pem: Pem, cert: Certificate) {
        if !self.order.iter().any(|n| n == name) {
            self.order.push(name.to_owned());
        }
        self.refused.remove(name);
        self.stored.insert(name.to_owned(), Stored { pem, cert: Arc::new(cert) });
    }

    fn remove(&mut self, name: &str) -> bool {
        self.order.retain(|n| n != name);
        self.refused.remove(name);
        self.stored.remove(name).is_some()
    }

    /// Makes the stored certificates those of `desired` (name -> PEM), parsing only what
    /// changed, but for the names `written_since` says were written here after the listing
    /// was asked for. A PEM that no longer validates is skipped with a warning; a previous
    /// version of it that did is kept. Returns whether anything changed, and whether a name
    /// was left for being written since (the caller should read the store again).
    fn sync(
        &mut self,
        desired: BTreeMap<String, Pem>,
        written_since: impl Fn(&str) -> bool,
    ) -> Synced {
        let mut deferred = false;
        let mut gone = Vec::new();
        for name in self.stored.keys().filter(|n| !desired.contains_key(*n)) {
            if written_since(name) {
                deferred = true;
            } else {
                gone.push(name.clone());
            }
        }
        let mut changed = !gone.is_empty();
        for name in gone {
            self.remove(&name);
        }
        self.refused.retain(|name, _| desired.contains_key(name));
        for (name, pem) in desired {
            if self.stored.get(&name).is_some_and(|s| s.pem == pem)
                || self.refused.get(&name) == Some(&pem)
            {
                continue;
            }
            if written_since(&name) {
                deferred = true;
                continue;
            }
            match Certificate::from_pem(&name, &pem.0) {
                Ok(cert) => {
                    self.insert(&name, pem, cert);
                    changed = true;
                }
                Err(err) => {
                    tracing::warn!(cert = %name, error = %err, "stored certificate cannot be served; skipped");
                    self.refused.insert(name, pem);
                }
            }
        }
        Synced { changed, deferred }
    }
}

/// What [`State::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Synced {
    changed: bool,
    deferred: bool,
}

/// What an upload did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Uploaded {
    status: &'static str,
    message: String,
    cert_name: String,
    dns_names: Vec<String>,
    not_after: String,
}

/// What a delete did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Deleted {
    status: &'static str,
    message: String,
    cert_name: String,
}

/// The certificates served now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Listed {
    status: &'static str,
    message: String,
    certs: Vec<CertView>,
    /// With ACME on: the names it certifies, their state and the last result.
    #[serde(skip_serializing_if = "Option::is_none")]
    acme: Option<crate::acme::AcmeView>,
}

/// One certificate as the API shows it: never its key.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct CertView {
    cert_name: String,
    dns_names: Vec<String>,
    not_before: String,
    not_after: String,
    /// Served to clients whose SNI matches no certificate (or that send none).
    default: bool,
    /// `certs-dir`, `store` (uploaded) or `acme` (obtained by the proxy from its ACME CA).
    source: &'static str,
}

impl CertAdmin {
    /// Certificates published through `live`, kept where `store` keeps routes (Consul KV
    /// `<instance-name>/certs/`, or `certs/` beside the state file), plus those loaded from
    /// `--certs-dir`, followed in Consul KV as `follow` says (as the routes are). Call
    /// [`CertAdmin::start`] before serving.
    pub fn new(
        live: CertStore,
        store: &RouteStore,
        from_dir: Vec<Certificate>,
        follow: &FollowConfig,
    ) -> CertAdmin {
        let state =
            State { from_dir: from_dir.into_iter().map(Arc::new).collect(), ..State::default() };
        CertAdmin {
            inner: Arc::new(Inner {
                live,
                store: store.certs_mirror(follow),
                state: tokio::sync::Mutex::new(state),
                acme: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Restores the stored certificates and publishes the set; with Consul, then follows the
    /// KV prefix. Returns once the restored set is live.
    ///
    /// With Consul down it publishes the `--certs-dir` ones and restores the rest as soon as
    /// Consul answers. Stored certificates that no longer validate (expired since) are skipped
    /// with a warning. A standalone certificate directory that cannot be read is an error.
    pub async fn start(&self) -> Result<(), StoreError> {
        let mut state = self.inner.state.lock().await;
        let index = match self.inner.store.load().await {
            Ok((stored, index)) => {
                // Nothing is written before start returns: no name to leave.
                state.sync(certs_from(stored), |_| false);
                index
            }
            Err(StoreError::Consul(err)) => {
                tracing::warn!(error = %err, "cannot load certificates from Consul yet; restoring them when it answers");
                0
            }
            Err(err) => return Err(err),
        };
        self.inner.live.publish(state.build());
        tracing::info!(
            certificates = self.inner.live.load().len(),
            "certificates loaded and restored"
        );
        drop(state);
        StoreMirror::follow(&self.inner, index);
        Ok(())
    }

    /// `PUT cert?certName=N` with the PEM as body: validate, store, publish.
    pub(crate) async fn upload(
        &self,
        pairs: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Uploaded, AdminError> {
        let name = cert_name(pairs)?;
        self.store_pem(name, body).await
    }

    /// Serves (and stores, for every replica) a certificate obtained from the ACME CA, as an
    /// upload named `name` would.
    pub(crate) async fn store_obtained(&self, name: &str, pem: Vec<u8>) -> Result<(), AdminError> {
        self.store_pem(name.to_owned(), Bytes::from(pem)).await.map(drop)
    }

    /// The validity (notBefore, notAfter, Unix seconds) of the certificate served as `name`,
    /// if one is.
    pub(crate) fn served_validity(&self, name: &str) -> Option<(i64, i64)> {
        self.inner.live.load().get(name).map(|c| (c.not_before(), c.not_after()))
    }

    /// Serves `challenges` (name -> certificate) to the ACME CA's TLS-ALPN-01 handshakes.
    pub(crate) fn publish_tls_challenges(
        &self,
        challenges: std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>,
    ) {
        self.inner.live.publish_challenges(challenges);
    }

    /// How many TLS-ALPN-01 challenges are being answered.
    pub(crate) fn tls_challenge_count(&self) -> usize {
        self.inner.live.challenge_count()
    }

    /// Shows the ACME manager's view in `certs` from now on.
    pub(crate) fn set_acme(&self, acme: crate::acme::AcmeStatus) {
        let _ = self.inner.acme.set(acme);
    }

    /// Validates, stores and publishes `body` as `name`.
    async fn store_pem(&self, name: String, body: Bytes) -> Result<Uploaded, AdminError> {
        let cert = Certificate::from_pem(&name, &body)
            .map_err(|source| AdminError::InvalidCert { name: name.clone(), source })?;
        let mut state = self.inner.state.lock().await;
        self.inner.store.put(&name, &body, &name).await?;
        let answer = Uploaded {
            status: "OK",
            message: format!(
                "certificate {name} is served for {} until {}",
                if cert.dns_names().is_empty() {
                    "clients that match no other certificate".to_owned()
                } else {
                    cert.dns_names().join(", ")
                },
                cert.not_after_rfc3339()
            ),
            cert_name: name.clone(),
            dns_names: cert.dns_names().to_vec(),
            not_after: cert.not_after_rfc3339(),
        };
        state.insert(&name, Pem(body.to_vec()), cert);
        self.inner.live.publish(state.build());
        tracing::info!(cert = %name, names = ?answer.dns_names, not_after = %answer.not_after, "certificate uploaded");
        Ok(answer)
    }

    /// `DELETE cert?certName=N`: remove from the store, then stop serving it.
    pub(crate) async fn delete(&self, pairs: &[(&str, &str)]) -> Result<Deleted, AdminError> {
        let name = cert_name(pairs)?;
        let mut state = self.inner.state.lock().await;
        let in_dir = state.from_dir.iter().any(|c| c.name() == name);
        if !state.stored.contains_key(&name) && !state.refused.contains_key(&name) {
            return Err(if in_dir {
                AdminError::CertFromDir { name }
            } else {
                AdminError::NoSuchCert(name)
            });
        }
        self.inner.store.delete(&name, &name).await?;
        state.remove(&name);
        self.inner.live.publish(state.build());
        tracing::info!(cert = %name, "certificate deleted");
        let message = if in_dir {
            format!("certificate {name} was deleted; the one from --certs-dir is served again")
        } else {
            format!("certificate {name} was deleted")
        };
        Ok(Deleted { status: "OK", message, cert_name: name })
    }

    /// `GET certs`: the certificates served now.
    pub(crate) async fn list(&self) -> Listed {
        let state = self.inner.state.lock().await;
        let live = self.inner.live.load();
        let default = live.default_cert().map(|c| c.name().to_owned());
        let certs: Vec<CertView> = live
            .iter()
            .map(|c| CertView {
                cert_name: c.name().to_owned(),
                dns_names: c.dns_names().to_vec(),
                not_before: c.not_before_rfc3339(),
                not_after: c.not_after_rfc3339(),
                default: default.as_deref() == Some(c.name()),
                source: match state.stored.contains_key(c.name()) {
                    true if c.name().starts_with(crate::acme::CERT_PREFIX) => "acme",
                    true => "store",
                    false => "certs-dir",
                },
            })
            .collect();
        let message = match certs.len() {
            1 => "1 certificate".to_owned(),
            n => format!("{n} certificates"),
        };
        let acme = self.inner.acme.get().map(crate::acme::AcmeStatus::view);
        Listed { status: "OK", message, certs, acme }
    }
}

impl Inner {
    /// Applies what the store holds now (another replica's upload or delete, or Consul
    /// coming back) in one swap, without writing back. `read_after` is the local write mark
    /// taken before the listing was asked for: names written here since are left as they are.
    /// Returns whether one was (the caller should read the store again).
    async fn sync_from_kv(&self, desired: BTreeMap<String, Pem>, read_after: u64) -> bool {
        let mut state = self.state.lock().await;
        let synced = state.sync(desired, |name| self.store.written_since(name, read_after));
        if synced.changed {
            self.live.publish(state.build());
            tracing::info!(
                certificates = self.live.load().len(),
                "certificates synced from Consul KV"
            );
        }
        synced.deferred
    }
}

/// Reads an upload's body, up to [`MAX_PEM_BYTES`].
pub(crate) async fn read_body(body: hyper::body::Incoming) -> Result<Bytes, AdminError> {
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(body, MAX_PEM_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => Err(AdminError::InvalidParameter {
            name: "body",
            value: String::new(),
            reason: format!(
                "it cannot be read ({err}); send the PEM (at most {} KiB) as the request body",
                MAX_PEM_BYTES / 1024
            ),
        }),
    }
}

/// The `certName` parameter, checked: it becomes a file name and a KV key.
fn cert_name(pairs: &[(&str, &str)]) -> Result<String, AdminError> {
    let name = pairs
        .iter()
        .find(|(k, _)| *k == "certName")
        .map(|(_, v)| *v)
        .filter(|v| !v.is_empty())
        .ok_or(AdminError::MissingParameter {
            name: "certName",
            example: "certName=shop.example",
        })?;
    if !dfp_tls::valid_name(name) {
        return Err(AdminError::InvalidParameter {
            name: "certName",
            value: name.to_owned(),
            reason: "use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'"
                .to_owned(),
        });
    }
    Ok(name.to_owned())
}

/// The certificates of a listing of the store: keys that are certificate names; others are
/// skipped with a warning.
fn certs_from(stored: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Pem> {
    stored
        .into_iter()
        .filter_map(|(name, pem)| {
            if dfp_tls::valid_name(&name) {
                Some((name, Pem(pem)))
            } else {
                tracing::warn!(key = %name, "stored key under the certificates is not a certificate name; skipped");
                None
            }
        })
        .collect()
}

/// The certificates' side of the store mirror: an upload or delete sent to any replica with
/// the same instance name reaches this one as a listing.
impl Mirrored for Inner {
    fn mirror(&self) -> &StoreMirror {
        &self.store
    }

    async fn apply(self: Arc<Self>, stored: BTreeMap<String, Vec<u8>>, mark: u64) -> bool {
        self.sync_from_kv(certs_from(stored), mark).await
    }

    fn answered(&self, outcome: Result<(), &ConsulError>) {
        if let Err(err) = outcome {
            tracing::debug!(error = %err, "following certificates in Consul KV failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests;
