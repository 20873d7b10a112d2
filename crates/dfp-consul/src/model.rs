//! Consul's JSON, read into private types and converted to the crate's public ones.

use serde::Deserialize;

/// One running instance of a service, where Registrator (or anyone) said it listens.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    /// Consul's service ID (unique per agent), e.g. `host:books-ms:8080`.
    pub id: String,
    /// `Service.Address`, or the node's address when the service gave none. An IP or a name.
    pub address: String,
    /// `Service.Port`.
    pub port: u16,
}

/// An entry of `GET /v1/health/service/<name>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntry {
    node: HealthNode,
    service: HealthService,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

impl From<HealthEntry> for Instance {
    fn from(entry: HealthEntry) -> Self {
        let address = if entry.service.address.is_empty() {
            entry.node.address
        } else {
            entry.service.address
        };
        Instance { id: entry.service.id, address, port: entry.service.port }
    }
}

/// One health check's state, from `GET /v1/health/state/any`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckState {
    /// The service the check belongs to; empty for a node's own checks (which count for every
    /// service on that node).
    pub service: String,
    pub node: String,
    pub check_id: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawCheck {
    #[serde(default)]
    node: String,
    #[serde(rename = "CheckID", default)]
    check_id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    service_name: String,
}

impl From<RawCheck> for CheckState {
    fn from(raw: RawCheck) -> Self {
        CheckState {
            service: raw.service_name,
            node: raw.node,
            check_id: raw.check_id,
            status: raw.status,
        }
    }
}

/// An entry of `GET /v1/kv/<prefix>?recurse`; `Value` is base64, or null for an empty value.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawKvEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

impl RawKvEntry {
    pub(crate) fn decode(self) -> Result<crate::KvEntry, String> {
        use base64::Engine as _;
        let value = match self.value {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("key {} holds invalid base64: {e}", self.key))?,
            None => Vec::new(),
        };
        Ok(crate::KvEntry { key: self.key, value })
    }
}

/// An entry of `GET /v1/catalog/service/<name>`: only its presence matters to us.
#[derive(Debug, Deserialize)]
pub(crate) struct CatalogEntry {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `consul agent -dev` 1.8.7 after registering one service with an address
    /// and one without (trimmed of fields we do not read).
    const HEALTH: &str = r#"[
      {"Node":{"ID":"a1","Node":"dev","Address":"127.0.0.1","Datacenter":"dc1"},
       "Service":{"ID":"books-1","Service":"books-ms","Tags":[],"Address":"10.0.0.7","Port":32768,
                  "Weights":{"Passing":1,"Warning":1}},
       "Checks":[{"Node":"dev","CheckID":"serfHealth","Status":"passing"}]},
      {"Node":{"ID":"a1","Node":"dev","Address":"127.0.0.1","Datacenter":"dc1"},
       "Service":{"ID":"books-2","Service":"books-ms","Tags":[],"Address":"","Port":32769},
       "Checks":[]}
    ]"#;

    #[test]
    fn service_address_or_node_address() {
        let entries: Vec<HealthEntry> = serde_json::from_str(HEALTH).expect("captured JSON parses");
        let instances: Vec<Instance> = entries.into_iter().map(Instance::from).collect();
        assert_eq!(
            instances,
            vec![
                Instance { id: "books-1".into(), address: "10.0.0.7".into(), port: 32768 },
                Instance { id: "books-2".into(), address: "127.0.0.1".into(), port: 32769 },
            ]
        );
    }
}
