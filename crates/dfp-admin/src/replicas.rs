//! Which replicas share this proxy's instance name (and so its routes and certificates), for
//! the dashboard. Replicas do not talk to each other; each marks its presence in the store:
//!
//! - it holds the key `<instance-name>/replicas/<host>-<pid>-<admin port>` with a Consul
//!   session made to delete its keys when it ends (TTL 15 s, renewed every 5 s): a replica
//!   that stops ends it (its key goes at once), one that dies disappears from the list by
//!   itself (Consul ends a session one to two TTLs after its last renewal);
//! - every 5 s it lists the prefix, and the dashboard shows that list.
//!
//! Standalone there is no store to share: the dashboard shows no replica list.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dfp_consul::{ConsulClient, SessionEnd};
use serde::{Deserialize, Serialize};

use crate::controller::{Controller, Inner};
use crate::store::RouteStore;

/// How long a replica's mark outlives its last renewal.
const TTL: Duration = Duration::from_secs(15);
/// How often the mark is renewed and the list read.
const EVERY: Duration = Duration::from_secs(5);

/// One replica, as it describes itself in its mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Replica {
    /// Its host name (a container's ID, in Docker).
    pub host: String,
    pub pid: u32,
    /// Its admin listener.
    pub admin: String,
    pub version: String,
    /// When it started, Unix seconds.
    pub started: i64,
}

impl Replica {
    /// This process.
    pub fn this(host: String, admin: String) -> Replica {
        Replica {
            host,
            pid: std::process::id(),
            admin,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: crate::unix_now(),
        }
    }

    /// Its key under the replicas' prefix: letters, digits, `.`, `-` and `_` only.
    fn key(&self) -> String {
        let port = self.admin.rsplit(':').next().unwrap_or_default();
        format!("{}-{}-{port}", self.host, self.pid)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' })
            .collect()
    }
}

/// The replicas last listed, and which one is this.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replicas {
    pub(crate) list: Vec<Replica>,
    pub(crate) this: Option<Replica>,
}

/// Marks this replica's presence and follows the others' (with Consul; standalone, nothing).
/// Returns a handle whose [`Presence::leave`] removes the mark at once (at shutdown).
pub fn start_presence(controller: &Controller, store: &RouteStore, me: Replica) -> Presence {
    let session = Arc::new(Mutex::new(None));
    let RouteStore::ConsulKv { consul, instance_name } = store else {
        return Presence { consul: None, session };
    };
    let prefix = format!("{}/replicas/", instance_name.trim_matches('/'));
    tokio::spawn(mark_and_list(
        controller.weak_inner(),
        consul.clone(),
        prefix,
        me,
        session.clone(),
    ));
    Presence { consul: Some(consul.clone()), session }
}

/// This replica's mark in the store.
#[derive(Debug)]
pub struct Presence {
    consul: Option<Arc<ConsulClient>>,
    session: Arc<Mutex<Option<String>>>,
}

impl Presence {
    /// Ends the mark's session: the key is deleted, and the other replicas stop listing this
    /// one at their next read.
    pub async fn leave(&self) {
        let id = self.session.lock().ok().and_then(|mut s| s.take());
        if let (Some(consul), Some(id)) = (&self.consul, id) {
            let _ = consul.session_destroy(&id).await;
        }
    }
}

async fn mark_and_list(
    inner: Weak<Inner>,
    consul: Arc<ConsulClient>,
    prefix: String,
    me: Replica,
    session: Arc<Mutex<Option<String>>>,
) {
    let key = format!("{prefix}{}", me.key());
    let value = serde_json::to_vec(&me).unwrap_or_default();
    let mut held: Option<String> = None;
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        held = match held {
            Some(id) => match consul.session_renew(&id).await {
                Ok(true) => Some(id),
                Ok(false) => None,
                Err(err) => {
                    tracing::debug!(error = %err, "renewing this replica's mark failed");
                    Some(id)
                }
            },
            None => None,
        };
        if held.is_none() {
            held = mark(&consul, &key, &value).await;
            if let Ok(mut shared) = session.lock() {
                shared.clone_from(&held);
            }
        }
        match consul.kv_list(&prefix, 0, Duration::ZERO).await {
            Ok(listed) => {
                let mut list: Vec<Replica> = listed
                    .value
                    .iter()
                    .filter_map(|entry| serde_json::from_slice(&entry.value).ok())
                    .collect();
                list.sort_by(|a, b| (a.started, &a.host, a.pid).cmp(&(b.started, &b.host, b.pid)));
                let Some(strong) = inner.upgrade() else { return };
                strong.set_replicas(Replicas { list, this: Some(me.clone()) });
            }
            Err(err) => tracing::debug!(error = %err, "listing the replicas failed"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Makes a session and holds `key` with it; the session's ID, or None (tried again later).
async fn mark(consul: &ConsulClient, key: &str, value: &[u8]) -> Option<String> {
    let id = match consul
        .session_create("docker-flow-proxy replica", TTL, Duration::ZERO, SessionEnd::Delete)
        .await
    {
        Ok(id) => id,
        Err(err) => {
            tracing::debug!(error = %err, "marking this replica in Consul failed");
            return None;
        }
    };
    match consul.kv_acquire(key, value.to_vec(), &id).await {
        Ok(true) => Some(id),
        outcome => {
            tracing::debug!(?outcome, "holding this replica's mark failed");
            let _ = consul.session_destroy(&id).await;
            None
        }
    }
}
