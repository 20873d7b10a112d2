//! Where routes are kept so that a restart, or another replica, serves them without anyone
//! calling reconfigure again: Consul KV with Consul, a local state file standalone.
//!
//! What is stored is each service's reconfigure parameters, exactly as a call would send them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dfp_consul::ConsulClient;
use serde::{Deserialize, Serialize};

use crate::AdminError;

/// A service's stored reconfigure parameters (Docker Flow Proxy's names).
pub type Params = BTreeMap<String, String>;

/// The route store of this proxy.
#[derive(Debug, Clone)]
pub enum RouteStore {
    /// `<instance-name>/services/<service>` in Consul KV, one JSON object per service.
    ConsulKv { consul: Arc<ConsulClient>, instance_name: String },
    /// One JSON file holding every service, rewritten atomically on each change.
    File(PathBuf),
    /// Nothing is kept (tests of the controller alone).
    Memory,
}

/// Why stored routes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Consul(#[source] dfp_consul::ConsulError),
    #[error(
        "state file {path} cannot be used: {reason}; fix it or move it away (the proxy never \
         overwrites a state file it cannot read)"
    )]
    StateFile { path: PathBuf, reason: String },
}

/// The state file's format.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    services: BTreeMap<String, Params>,
}

const STATE_FORMAT: u32 = 1;

impl RouteStore {
    /// The KV prefix (ending in `/`) under which an instance name keeps its services.
    pub fn kv_prefix(instance_name: &str) -> String {
        format!("{}/services/", instance_name.trim_matches('/'))
    }

    /// Every stored service. A missing state file is an empty store (a first start); an
    /// unreadable or corrupt one is an error that names the file.
    pub async fn load(&self) -> Result<(BTreeMap<String, Params>, u64), StoreError> {
        match self {
            RouteStore::ConsulKv { consul, instance_name } => {
                let listed = consul
                    .kv_list(&Self::kv_prefix(instance_name), 0, std::time::Duration::ZERO)
                    .await
                    .map_err(StoreError::Consul)?;
                Ok((services_from_kv(&listed.value, instance_name), listed.index))
            }
            RouteStore::File(path) => {
                let path = path.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || read_state_file(&path)).await.map_err(
                        |e| StoreError::StateFile { path: PathBuf::new(), reason: e.to_string() },
                    )??;
                Ok((loaded, 0))
            }
            RouteStore::Memory => Ok((BTreeMap::new(), 0)),
        }
    }

    /// Stores one service's parameters, over what was stored for it.
    ///
    /// The state file is read, changed and written whole each time rather than written from
    /// the services routed: routes still being restored, or stored ones this proxy skipped,
    /// stay stored. Callers hold the controller's lock, so two changes never interleave.
    pub(crate) async fn save(&self, service: &str, params: &Params) -> Result<(), AdminError> {
        match self {
            RouteStore::ConsulKv { consul, instance_name } => {
                let key = format!("{}{service}", Self::kv_prefix(instance_name));
                let body =
                    serde_json::to_vec(params).map_err(|e| AdminError::Internal(e.to_string()))?;
                consul.kv_put(&key, body).await.map_err(|err| {
                    AdminError::consul(Some("storing the route in Consul KV failed"), &err)
                })
            }
            RouteStore::File(path) => {
                let (service, params) = (service.to_owned(), params.clone());
                change_state(path, move |all| {
                    all.insert(service, params);
                })
                .await
            }
            RouteStore::Memory => Ok(()),
        }
    }

    /// Deletes one service (the state file as [`Self::save`] changes it).
    pub(crate) async fn delete(&self, service: &str) -> Result<(), AdminError> {
        match self {
            RouteStore::ConsulKv { consul, instance_name } => {
                let key = format!("{}{service}", Self::kv_prefix(instance_name));
                consul.kv_delete(&key).await.map_err(|err| {
                    AdminError::consul(Some("deleting the route from Consul KV failed"), &err)
                })
            }
            RouteStore::File(path) => {
                let service = service.to_owned();
                change_state(path, move |all| {
                    all.remove(&service);
                })
                .await
            }
            RouteStore::Memory => Ok(()),
        }
    }
}

/// Reads the services out of a KV listing. Keys that are not `<prefix><service>` or whose
/// value is not a JSON object of strings are skipped with a warning: one bad key must not
/// stop the others from being served.
pub(crate) fn services_from_kv(
    entries: &[dfp_consul::KvEntry],
    instance_name: &str,
) -> BTreeMap<String, Params> {
    let prefix = RouteStore::kv_prefix(instance_name);
    let mut services = BTreeMap::new();
    for entry in entries {
        let Some(name) = entry.key.strip_prefix(&prefix) else {
            continue;
        };
        if name.is_empty() || name.contains('/') {
            continue;
        }
        match serde_json::from_slice::<Params>(&entry.value) {
            Ok(params) => {
                services.insert(name.to_owned(), params);
            }
            Err(err) => tracing::warn!(
                key = %entry.key,
                error = %err,
                "stored route is not a JSON object of parameters; skipped"
            ),
        }
    }
    services
}

fn read_state_file(path: &Path) -> Result<BTreeMap<String, Params>, StoreError> {
    let bad = |reason: String| StoreError::StateFile { path: path.to_owned(), reason };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(err) => return Err(bad(format!("it cannot be read ({err})"))),
    };
    let state: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("it is not valid JSON ({e})")))?;
    if state.format != STATE_FORMAT {
        return Err(bad(format!(
            "its format {} is not {STATE_FORMAT}, the one this version reads",
            state.format
        )));
    }
    Ok(state.services)
}

/// Reads the state file, applies `change` and writes it back atomically: a temporary file
/// beside it, fsync, rename over the old file, fsync the directory. A crash leaves the old file
/// or the new one, never half of one. A file that cannot be read is never overwritten.
async fn change_state(
    path: &Path,
    change: impl FnOnce(&mut BTreeMap<String, Params>) + Send + 'static,
) -> Result<(), AdminError> {
    let path = path.to_owned();
    let shown = path.display().to_string();
    let written = tokio::task::spawn_blocking(move || {
        let mut services = read_state_file(&path).map_err(|err| err.to_string())?;
        change(&mut services);
        let state = StateFile { format: STATE_FORMAT, services };
        let mut bytes = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        write_atomically(&path, &bytes)
            .map_err(|err| format!("writing the state file {shown} failed: {err}"))
    });
    written
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
        .map_err(|what| AdminError::StoreUnavailable { what })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[tokio::test]
    async fn state_file_round_trips_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("dfp-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("state.json");
        let store = RouteStore::File(path.clone());

        assert!(store.load().await.expect("missing file is empty").0.is_empty());
        let mut all = BTreeMap::new();
        all.insert("web".to_owned(), params(&[("serviceName", "web"), ("port", "80")]));
        store.save("web", &all["web"]).await.expect("writes");
        assert_eq!(store.load().await.expect("reads back").0, all);
        // Each change keeps what else the file holds.
        all.insert("api".to_owned(), params(&[("serviceName", "api"), ("port", "81")]));
        store.save("api", &all["api"]).await.expect("writes");
        assert_eq!(store.load().await.expect("reads back").0, all);
        store.delete("web").await.expect("deletes");
        all.remove("web");
        assert_eq!(store.load().await.expect("reads back").0, all);

        std::fs::write(&path, b"{ not json").expect("corrupt it");
        let err = store.load().await.expect_err("corrupt file is an error");
        let msg = err.to_string();
        assert!(msg.contains("state.json") && msg.contains("not valid JSON"), "{msg}");
        assert_eq!(
            std::fs::read(&path).expect("still there"),
            b"{ not json",
            "never overwritten by load"
        );
        let err = store.save("web", &all["api"]).await.expect_err("an unreadable file is kept");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"{ not json", "nor by a save");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn kv_listing_skips_foreign_and_broken_keys() {
        let entry = |key: &str, value: &str| dfp_consul::KvEntry {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
        };
        let entries = [
            entry("docker-flow/services/books", r#"{"serviceName":"books","servicePath":"/b"}"#),
            entry("docker-flow/services/broken", "not json"),
            entry("docker-flow/services/a/b", "{}"),
            entry("docker-flow/other", "{}"),
        ];
        let services = services_from_kv(&entries, "docker-flow");
        assert_eq!(services.keys().collect::<Vec<_>>(), ["books"]);
    }
}
