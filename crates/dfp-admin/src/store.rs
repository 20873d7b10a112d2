//! Where routes are kept so that a restart, or another replica, serves them without anyone
//! calling reconfigure again: Consul KV with Consul, a local state file standalone.
//!
//! What is stored is each service's reconfigure parameters, exactly as a call would send them,
//! through the routes' [`StoreMirror`] (which also keeps the certificates' store).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use dfp_consul::ConsulClient;

use crate::mirror::{Backend, StoreMirror};

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

impl RouteStore {
    /// The KV prefix (ending in `/`) under which an instance name keeps its services.
    pub fn kv_prefix(instance_name: &str) -> String {
        format!("{}/services/", instance_name.trim_matches('/'))
    }

    /// The KV prefix (ending in `/`) under which an instance name keeps its certificates.
    pub(crate) fn certs_kv_prefix(instance_name: &str) -> String {
        format!("{}/certs/", instance_name.trim_matches('/'))
    }

    /// The mirror of the routes: `<instance-name>/services/` in Consul KV, or the state file.
    pub(crate) fn routes_mirror(&self, follow: &crate::FollowConfig) -> StoreMirror {
        let backend = match self {
            RouteStore::ConsulKv { consul, instance_name } => {
                Backend::ConsulKv { consul: consul.clone(), prefix: Self::kv_prefix(instance_name) }
            }
            RouteStore::File(path) => Backend::StateFile(path.clone()),
            RouteStore::Memory => Backend::Memory,
        };
        StoreMirror::new(backend, "route", follow.consul_wait)
    }

    /// The mirror of the uploaded certificates: `<instance-name>/certs/` in Consul KV, or a
    /// private directory `certs/` beside the state file.
    pub(crate) fn certs_mirror(&self, follow: &crate::FollowConfig) -> StoreMirror {
        let backend = match self {
            RouteStore::ConsulKv { consul, instance_name } => Backend::ConsulKv {
                consul: consul.clone(),
                prefix: Self::certs_kv_prefix(instance_name),
            },
            RouteStore::File(state_file) => {
                let dir = match state_file.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                    _ => PathBuf::from("."),
                };
                Backend::PemDir(dir.join("certs"))
            }
            RouteStore::Memory => Backend::Memory,
        };
        StoreMirror::new(backend, "certificate", follow.consul_wait)
    }
}

/// The services of a listing of the route store (key -> stored JSON). A value that is not a
/// JSON object of strings is skipped with a warning: one bad key must not stop the others
/// from being served.
pub(crate) fn services_from(stored: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Params> {
    let mut services = BTreeMap::new();
    for (name, value) in stored {
        match serde_json::from_slice::<Params>(&value) {
            Ok(params) => {
                services.insert(name, params);
            }
            Err(err) => tracing::warn!(
                service = %name,
                error = %err,
                "stored route is not a JSON object of parameters; skipped"
            ),
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_skips_values_that_are_not_parameters() {
        let stored: BTreeMap<String, Vec<u8>> = [
            ("books", r#"{"serviceName":"books","servicePath":"/b"}"#),
            ("broken", "not json"),
            ("numbers", r#"{"serviceName":1}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
        .collect();
        let services = services_from(stored);
        assert_eq!(services.keys().collect::<Vec<_>>(), ["books"]);
    }
}
