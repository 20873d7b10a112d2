//! Which service instances are registered, node by node, with the index of their last change:
//! what tells a follower *which* services a catalog change touched.
//!
//! Consul's `/v1/catalog/services` index moves on every registration change anywhere, but its
//! body names no instance, so it cannot say which services changed. Reading each routed
//! service again after every change costs one request per service (10,000 at 10,000 routes,
//! on every deploy). Each node's listing (`/v1/catalog/node/<node>`) gives every instance on
//! it with its `ModifyIndex`: one request per node (a cluster's size, not its number of
//! services) tells exactly which services gained, lost or changed an instance.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Call, ConsulClient, ConsulError, Needs};

/// One registered service instance, as the catalog lists it on its node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Registration {
    pub node: String,
    /// The instance's service ID (unique on its node).
    pub id: String,
    /// The service's name.
    pub service: String,
    /// The Raft index of the instance's last change.
    pub modify_index: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNode {
    node: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNodeServices {
    #[serde(default)]
    services: Option<HashMap<String, RawNodeService>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNodeService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    modify_index: u64,
}

impl ConsulClient {
    /// Every service instance the catalog has, on every node: `/v1/catalog/nodes`, then
    /// `/v1/catalog/node/<node>` for each (a node that left meanwhile lists nothing).
    pub async fn registrations(&self) -> Result<Vec<Registration>, ConsulError> {
        let mut call = Call::get(&["v1", "catalog", "nodes"]);
        call.needs = Needs::Fixed("node:read");
        let nodes: Vec<RawNode> = self.call(call).await?.json()?;
        let mut out = Vec::new();
        for node in nodes {
            let segments = ["v1", "catalog", "node", node.node.as_str()];
            let mut call = Call::get(&segments);
            call.needs = Needs::Fixed("node:read and service:read on the routed services");
            call.missing_is_empty = true;
            let answer = self.call(call).await?;
            if answer.status == reqwest::StatusCode::NOT_FOUND
                || answer.body.trim_ascii() == b"null"
            {
                continue;
            }
            let listed: RawNodeServices = answer.json()?;
            for (_, s) in listed.services.unwrap_or_default() {
                out.push(Registration {
                    node: node.node.clone(),
                    id: s.id,
                    service: s.service,
                    modify_index: s.modify_index,
                });
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `consul agent -dev` 1.8.7 (trimmed of fields not read).
    const NODE: &str = r#"{"Node":{"ID":"a1","Node":"dev","Address":"127.0.0.1"},
      "Services":{"books-1":{"ID":"books-1","Service":"books-ms","Tags":[],"Port":8080,
                             "CreateIndex":12,"ModifyIndex":14},
                  "consul":{"ID":"consul","Service":"consul","Port":8300,"ModifyIndex":5}}}"#;

    #[test]
    fn a_nodes_listing_reads_its_instances_and_their_indexes() {
        let listed: RawNodeServices = serde_json::from_str(NODE).expect("captured JSON parses");
        let mut services: Vec<(String, String, u64)> = listed
            .services
            .unwrap_or_default()
            .into_values()
            .map(|s| (s.id, s.service, s.modify_index))
            .collect();
        services.sort();
        assert_eq!(
            services,
            [("books-1".into(), "books-ms".into(), 14), ("consul".into(), "consul".into(), 5)]
        );
        let empty: RawNodeServices =
            serde_json::from_str(r#"{"Node":{"Node":"x"},"Services":null}"#).expect("parses");
        assert!(empty.services.is_none());
    }
}
