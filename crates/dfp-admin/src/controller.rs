//! Reconfigure and remove: validate, look instances up, build a whole new table, swap it in.
//!
//! Testable without HTTP: the admin listener only parses parameters and renders answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dfp_routing::{BuildError, PathPrefix, RouteTable, RouteTableBuilder, TableHandle};

use crate::discovery::Discovery;
use crate::{AdminError, ReconfigureRequest};

/// What a successful reconfigure did. When it is returned, the new table is live.
#[derive(Debug, Clone)]
pub struct ReconfigureReport {
    pub service_name: String,
    pub service_paths: Vec<PathPrefix>,
    pub instances: Vec<SocketAddr>,
    pub table_version: u64,
    /// Things the caller should know although the call succeeded (no instance yet, ignored
    /// parameters, skipped instances).
    pub warnings: Vec<String>,
}

/// What a successful remove did.
#[derive(Debug, Clone)]
pub struct RemoveReport {
    pub service_name: String,
    pub table_version: u64,
}

/// Counts of admin outcomes, for `/metrics`.
#[derive(Debug, Default)]
pub struct AdminCounters {
    pub reconfigure_ok: AtomicU64,
    pub reconfigure_failed: AtomicU64,
    pub remove_ok: AtomicU64,
    pub remove_failed: AtomicU64,
}

/// A service as configured: what a reconfigure asked for and what was last found for it.
#[derive(Debug, Clone)]
struct ServiceEntry {
    paths: Vec<PathPrefix>,
    instances: Vec<SocketAddr>,
}

/// The desired routes, in the order of their names. Only ever changed under the controller's
/// lock, and only after the table built from the new state has been published.
#[derive(Debug, Default)]
struct State {
    services: BTreeMap<String, ServiceEntry>,
}

/// Owns the configured services and publishes a new table for each change.
///
/// Changes are serialised by one async lock held across the whole call (validation, lookup,
/// build, publish), so two reconfigures never interleave. The data plane never takes this
/// lock: it only reads the [`TableHandle`].
#[derive(Debug)]
pub struct Controller {
    table: TableHandle,
    discovery: Discovery,
    state: tokio::sync::Mutex<State>,
    counters: AdminCounters,
}

impl Controller {
    pub fn new(table: TableHandle, discovery: Discovery) -> Self {
        Controller {
            table,
            discovery,
            state: tokio::sync::Mutex::new(State::default()),
            counters: AdminCounters::default(),
        }
    }

    /// The handle the data plane reads.
    pub fn table(&self) -> &TableHandle {
        &self.table
    }

    /// Where instances come from.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Outcome counters.
    pub fn counters(&self) -> &AdminCounters {
        &self.counters
    }

    /// Routes the request's paths to the service's current instances.
    ///
    /// Calling it again for the same service replaces its paths and picks up its current
    /// instances. On any error the live table is exactly as it was.
    pub async fn reconfigure(
        &self,
        request: ReconfigureRequest,
    ) -> Result<ReconfigureReport, AdminError> {
        let result = self.try_reconfigure(request).await;
        let counter = if result.is_ok() {
            &self.counters.reconfigure_ok
        } else {
            &self.counters.reconfigure_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_reconfigure(
        &self,
        request: ReconfigureRequest,
    ) -> Result<ReconfigureReport, AdminError> {
        let mut state = self.state.lock().await;
        // Cheap checks first: a conflicting path is refused before anyone asks Consul.
        check_paths_free(&state, &request.service_name, &request.service_paths)?;
        let found = self
            .discovery
            .instances(&request.service_name, request.port)
            .await?;

        let mut services = state.services.clone();
        services.insert(
            request.service_name.clone(),
            ServiceEntry {
                paths: request.service_paths.clone(),
                instances: found.instances.clone(),
            },
        );
        let version = self.publish(&services)?;
        state.services = services;
        drop(state);

        let mut warnings = found.warnings;
        if !request.ignored.is_empty() {
            warnings.push(format!(
                "parameters not supported by this proxy were ignored: {}",
                request.ignored.join(", ")
            ));
        }
        tracing::info!(
            service = %request.service_name,
            paths = ?request.service_paths,
            instances = ?found.instances,
            table_version = version,
            warnings = ?warnings,
            "reconfigured"
        );
        for warning in &warnings {
            tracing::warn!(service = %request.service_name, "{warning}");
        }
        Ok(ReconfigureReport {
            service_name: request.service_name,
            service_paths: request.service_paths,
            instances: found.instances,
            table_version: version,
            warnings,
        })
    }

    /// Stops routing a service. Unknown services are an error (a typo guard), and change nothing.
    pub async fn remove(&self, service: &str) -> Result<RemoveReport, AdminError> {
        let result = self.try_remove(service).await;
        let counter = if result.is_ok() {
            &self.counters.remove_ok
        } else {
            &self.counters.remove_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_remove(&self, service: &str) -> Result<RemoveReport, AdminError> {
        let mut state = self.state.lock().await;
        if !state.services.contains_key(service) {
            return Err(AdminError::NotRouted(service.to_owned()));
        }
        let mut services = state.services.clone();
        services.remove(service);
        let version = self.publish(&services)?;
        state.services = services;
        tracing::info!(service, table_version = version, "removed");
        Ok(RemoveReport {
            service_name: service.to_owned(),
            table_version: version,
        })
    }

    /// Builds the table for `services` off to the side and publishes it; returns its version.
    fn publish(&self, services: &BTreeMap<String, ServiceEntry>) -> Result<u64, AdminError> {
        let live = self.table.snapshot();
        let version = live.version() + 1;
        let table = build_table(services, &live, version).map_err(|err| match err {
            BuildError::PathOwned { .. } => AdminError::PathConflict { source: err },
            other => AdminError::Internal(other.to_string()),
        })?;
        self.table.publish(table);
        Ok(version)
    }
}

fn build_table(
    services: &BTreeMap<String, ServiceEntry>,
    live: &RouteTable,
    version: u64,
) -> Result<RouteTable, BuildError> {
    let mut builder = RouteTableBuilder::new();
    builder.carry_cursors_from(live);
    for (name, entry) in services {
        builder.add_service(name, &entry.paths, &entry.instances)?;
    }
    builder.build(version)
}

/// Refuses paths that another service already owns (the same service may keep its own).
fn check_paths_free(state: &State, service: &str, paths: &[PathPrefix]) -> Result<(), AdminError> {
    for (owner, entry) in &state.services {
        if owner == service {
            continue;
        }
        if let Some(path) = paths.iter().find(|p| entry.paths.contains(p)) {
            return Err(AdminError::PathConflict {
                source: BuildError::PathOwned {
                    path: path.clone(),
                    owner: owner.clone(),
                    service: service.to_owned(),
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, paths: &[&str], port: u16) -> ReconfigureRequest {
        ReconfigureRequest {
            service_name: name.to_owned(),
            service_paths: paths
                .iter()
                .map(|p| PathPrefix::parse(p).expect("valid"))
                .collect(),
            port: Some(port),
            ignored: Vec::new(),
        }
    }

    // Standalone discovery with an IP literal as the "name" needs no DNS server.
    fn controller() -> Controller {
        Controller::new(TableHandle::default(), Discovery::Dns)
    }

    #[tokio::test]
    async fn reconfigure_publishes_and_reports() {
        let c = controller();
        let report = c
            .reconfigure(request("127.0.0.1", &["/api"], 8080))
            .await
            .expect("valid");
        assert_eq!(report.table_version, 1);
        assert_eq!(
            report.instances,
            ["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")]
        );
        let live = c.table().load();
        assert_eq!(
            live.lookup("/api/x").map(|m| m.backend.service()),
            Some("127.0.0.1")
        );
    }

    #[tokio::test]
    async fn conflicts_and_bad_requests_leave_the_table_alone() {
        let c = controller();
        c.reconfigure(request("127.0.0.1", &["/api"], 8080))
            .await
            .expect("valid");
        let before = c.table().snapshot();

        let err = c
            .reconfigure(request("127.0.0.2", &["/other", "/api/"], 8080))
            .await
            .expect_err("taken");
        assert_eq!(err.status(), 409);
        assert!(err.to_string().contains("/api"), "{err}");

        let mut no_port = request("127.0.0.2", &["/other"], 1);
        no_port.port = None;
        assert_eq!(
            c.reconfigure(no_port)
                .await
                .expect_err("port is required")
                .status(),
            400
        );
        assert_eq!(
            c.remove("nope").await.expect_err("not routed").status(),
            404
        );

        let after = c.table().snapshot();
        assert!(
            std::sync::Arc::ptr_eq(&before, &after),
            "no failed call publishes a table"
        );
        assert_eq!(c.counters().reconfigure_failed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn reconfigure_again_replaces_paths_and_remove_drops_them() {
        let c = controller();
        c.reconfigure(request("127.0.0.1", &["/a"], 1))
            .await
            .expect("valid");
        c.reconfigure(request("127.0.0.1", &["/b"], 2))
            .await
            .expect("same service again");
        {
            let live = c.table().load();
            assert!(live.lookup("/a").is_none());
            let b = live.lookup("/b").expect("moved");
            assert_eq!(
                b.backend.instances(),
                ["127.0.0.1:2".parse::<SocketAddr>().expect("addr")]
            );
        }
        let removed = c.remove("127.0.0.1").await.expect("routed");
        assert_eq!(removed.table_version, 3);
        assert!(c.table().load().lookup("/b").is_none());
    }
}
