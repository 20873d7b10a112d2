//! What replicas with one instance name share for ACME, and the lock that makes one of them at
//! a time talk to the CA for a name.
//!
//! With Consul, under `<instance-name>/acme/`:
//! - `accounts/<id>`: the ACME account (its key and URL) for one CA directory, so a new
//!   replica or a restart uses the same account instead of opening another;
//! - `locks/<name>`: held through a Consul session by the replica obtaining a certificate for
//!   `<name>` (or opening the account: `locks/-account`); the session ends, and the lock with
//!   it, when the replica stops renewing it (it died), so no lock outlives its holder;
//! - `challenges/http-01.<token>` (the key authorization) and `challenges/tls-alpn-01.<name>`
//!   (the challenge certificate and its throwaway key): the challenges being answered,
//!   followed by every replica, so whichever replica the CA reaches answers them.
//!
//! Standalone there is one proxy: the account is a private file beside the state file, and
//! neither locks nor shared challenges are needed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dfp_consul::{ConsulClient, SessionEnd};

use super::AcmeError;
use crate::store::RouteStore;

/// How long the ACME session lives without a renewal (Consul's least is 10 s); it is renewed
/// every third of it.
const SESSION_TTL: Duration = Duration::from_secs(15);

/// How long, after a holder's session ends, no other replica may take its locks (Consul's
/// lock-delay): a holder that lost its session while still working gets this long to notice.
const LOCK_DELAY: Duration = Duration::from_secs(5);

/// Where the shared ACME state lives.
#[derive(Debug)]
pub(crate) enum Shared {
    Consul {
        consul: Arc<ConsulClient>,
        /// `<instance-name>/acme/`.
        prefix: String,
        /// `<instance-name>/certs/`, where the certificates every replica serves are kept.
        certs_prefix: String,
        /// This replica's session, made when first needed and renewed in the background.
        session: Arc<tokio::sync::Mutex<Option<String>>>,
    },
    /// The directory of the state file (standalone).
    Dir(PathBuf),
    /// Nothing is kept (a proxy without a state file): the account lives as long as the
    /// process.
    Memory,
}

/// A lock held on a name; [`Shared::release`] lets go of it.
#[derive(Debug)]
pub(crate) struct Held {
    key: Option<(String, String)>,
}

impl Shared {
    pub(crate) fn new(store: &RouteStore) -> Shared {
        match store {
            RouteStore::ConsulKv { consul, instance_name } => Shared::Consul {
                consul: consul.clone(),
                prefix: format!("{}/acme/", instance_name.trim_matches('/')),
                certs_prefix: RouteStore::certs_kv_prefix(instance_name),
                session: Arc::new(tokio::sync::Mutex::new(None)),
            },
            RouteStore::File(state_file) => Shared::Dir(match state_file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            }),
            RouteStore::Memory => Shared::Memory,
        }
    }

    /// The KV prefix challenges are shared under, with Consul.
    pub(crate) fn challenge_prefix(&self) -> Option<(Arc<ConsulClient>, String)> {
        match self {
            Shared::Consul { consul, prefix, .. } => {
                Some((consul.clone(), format!("{prefix}challenges/")))
            }
            Shared::Dir(_) | Shared::Memory => None,
        }
    }

    /// The stored account for the CA directory `account_id` names, if any.
    pub(crate) async fn account(&self, account_id: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        match self {
            Shared::Consul { consul, prefix, .. } => consul
                .kv_get(&format!("{prefix}accounts/{account_id}"))
                .await
                .map_err(|err| AcmeError::Store(format!("reading the ACME account: {err}"))),
            Shared::Dir(dir) => {
                let path = account_file(dir, account_id);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(err) => Err(AcmeError::Store(format!(
                        "reading the ACME account file {}: {err}",
                        path.display()
                    ))),
                }
            }
            Shared::Memory => Ok(None),
        }
    }

    /// Keeps the account (it holds the account's private key: KV, or a file only the proxy's
    /// user may read).
    pub(crate) async fn store_account(
        &self,
        account_id: &str,
        credentials: Vec<u8>,
    ) -> Result<(), AcmeError> {
        match self {
            Shared::Consul { consul, prefix, .. } => consul
                .kv_put(&format!("{prefix}accounts/{account_id}"), credentials)
                .await
                .map_err(|err| AcmeError::Store(format!("storing the ACME account: {err}"))),
            Shared::Dir(dir) => {
                let (dir, path) = (dir.clone(), account_file(dir, account_id));
                let shown = path.display().to_string();
                let written = tokio::task::spawn_blocking(move || {
                    crate::mirror::write_private_file(&dir, &path, &credentials)
                })
                .await
                .map_err(|err| AcmeError::Store(err.to_string()))?;
                written.map_err(|err| {
                    AcmeError::Store(format!("writing the ACME account file {shown}: {err}"))
                })
            }
            Shared::Memory => Ok(()),
        }
    }

    /// Takes the lock on `name` for this replica (`holder` says who it is, for the others'
    /// status). `None`: another replica holds it. Standalone there is no one else.
    pub(crate) async fn lock(&self, name: &str, holder: &str) -> Result<Option<Held>, AcmeError> {
        let Shared::Consul { consul, prefix, .. } = self else {
            return Ok(Some(Held { key: None }));
        };
        let key = format!("{prefix}locks/{name}");
        // A session Consul forgot (it expired while this replica was cut off) is made again
        // once.
        for _ in 0..2 {
            let session = self.session().await?;
            match consul.kv_acquire(&key, holder.as_bytes().to_vec(), &session).await {
                Ok(true) => return Ok(Some(Held { key: Some((key, session)) })),
                Ok(false) => return Ok(None),
                Err(err) if err.to_string().to_ascii_lowercase().contains("invalid session") => {
                    self.forget_session(&session).await;
                }
                Err(err) => {
                    return Err(AcmeError::Store(format!("taking the ACME lock {key}: {err}")))
                }
            }
        }
        Ok(None)
    }

    /// The validity (notBefore, notAfter) of the certificate stored as `cert_name`, read from
    /// the store itself (Consul), not from what this replica has followed so far: another
    /// replica may have stored it a moment ago. Standalone, None (this proxy's view is the
    /// store's).
    pub(crate) async fn stored_cert_validity(&self, cert_name: &str) -> Option<(i64, i64)> {
        let Shared::Consul { consul, certs_prefix, .. } = self else { return None };
        let pem = consul.kv_get(&format!("{certs_prefix}{cert_name}")).await.ok()??;
        let cert = dfp_tls::Certificate::from_pem(cert_name, &pem).ok()?;
        Some((cert.not_before(), cert.not_after()))
    }

    /// Who holds the lock on `name` (what it wrote when it took it), if anyone wrote one.
    pub(crate) async fn holder(&self, name: &str) -> Option<String> {
        let Shared::Consul { consul, prefix, .. } = self else { return None };
        let value = consul.kv_get(&format!("{prefix}locks/{name}")).await.ok()??;
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    /// Lets go of a lock (a failure is only logged: the session's end releases it anyway).
    pub(crate) async fn release(&self, held: Held) {
        let (Shared::Consul { consul, .. }, Some((key, session))) = (self, held.key) else {
            return;
        };
        if let Err(err) = consul.kv_release(&key, &session).await {
            tracing::warn!(lock = %key, error = %err, "releasing an ACME lock failed; it goes with the session");
        }
    }

    /// Shares a challenge's answer with every replica (Consul only).
    pub(crate) async fn put_challenge(&self, key: &str, answer: &str) -> Result<(), AcmeError> {
        let Some((consul, prefix)) = self.challenge_prefix() else { return Ok(()) };
        consul
            .kv_put(&format!("{prefix}{key}"), answer.as_bytes().to_vec())
            .await
            .map_err(|err| AcmeError::Store(format!("sharing the ACME challenge: {err}")))
    }

    /// Takes a shared challenge back.
    pub(crate) async fn delete_challenge(&self, key: &str) {
        let Some((consul, prefix)) = self.challenge_prefix() else { return };
        if let Err(err) = consul.kv_delete(&format!("{prefix}{key}")).await {
            tracing::warn!(error = %err, "deleting a shared ACME challenge failed");
        }
    }

    /// This replica's session, made (and its renewal started) when there is none.
    async fn session(&self) -> Result<String, AcmeError> {
        let Shared::Consul { consul, session, .. } = self else {
            return Err(AcmeError::Store("no Consul session standalone".to_owned()));
        };
        let mut current = session.lock().await;
        if let Some(id) = &*current {
            return Ok(id.clone());
        }
        let id = consul
            .session_create("docker-flow-proxy ACME", SESSION_TTL, LOCK_DELAY, SessionEnd::Release)
            .await
            .map_err(|err| AcmeError::Store(format!("making the ACME Consul session: {err}")))?;
        tokio::spawn(renew(consul.clone(), id.clone(), session.clone()));
        *current = Some(id.clone());
        Ok(id)
    }

    async fn forget_session(&self, id: &str) {
        if let Shared::Consul { session, .. } = self {
            let session = session.as_ref();
            let mut current = session.lock().await;
            if current.as_deref() == Some(id) {
                *current = None;
            }
        }
    }

    /// Ends this replica's session (its locks are released at once): at shutdown.
    pub(crate) async fn close(&self) {
        let Shared::Consul { consul, session, .. } = self else { return };
        if let Some(id) = session.lock().await.take() {
            let _ = consul.session_destroy(&id).await;
        }
    }
}

/// Renews session `id` every third of its TTL until Consul no longer knows it (then it is
/// forgotten, and the next lock makes a new one) or it is closed.
async fn renew(
    consul: Arc<ConsulClient>,
    id: String,
    current: Arc<tokio::sync::Mutex<Option<String>>>,
) {
    loop {
        tokio::time::sleep(SESSION_TTL / 3).await;
        if current.lock().await.as_deref() != Some(id.as_str()) {
            return;
        }
        match consul.session_renew(&id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("the ACME Consul session ended; a new one is made when needed");
                let mut current = current.lock().await;
                if current.as_deref() == Some(id.as_str()) {
                    *current = None;
                }
                return;
            }
            Err(err) => tracing::warn!(error = %err, "renewing the ACME Consul session failed"),
        }
    }
}

fn account_file(dir: &std::path::Path, account_id: &str) -> PathBuf {
    dir.join(format!("acme-account-{account_id}.json"))
}
