//! The reconfigure/remove path: checks a call against the discovery mode and the other
//! services' paths, looks its instances up, stores it, then builds and publishes the new table.
//! Split out of `controller.rs` (a pure move) to keep each file to one job.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dfp_routing::{BuildError, RouteTable, RouteTableBuilder};

use super::{key, Inner, ReconfigureReport, RemoveReport, ServiceEntry, State};
use crate::discovery::{Discovery, Strictness};
use crate::follow::{self, Follower};
use crate::{AdminError, ReconfigureRequest};

impl Inner {
    pub(super) async fn reconfigure(
        self: &Arc<Self>,
        mut request: ReconfigureRequest,
    ) -> Result<ReconfigureReport, AdminError> {
        self.check_mode(&request)?;
        // The secret is read before anything else is asked: a missing one changes nothing.
        request.for_each_destination(|d| self.users.resolve(d, Strictness::Interactive))?;
        let mut state = self.state.lock().await;
        let key = key(&request.service_name);
        let mode_warning = self.fit_to_mode(&mut request);
        if let Some(entry) = state.services.get(&key) {
            // The same service named in another case: it keeps the name it was first given
            // (its store key and the label of its metrics).
            request.rename(&entry.request.service_name);
        }
        // A name Consul (or DNS) never heard of is the real problem even when the paths
        // conflict too (a typo); a conflict is found by building the table below, which
        // every successful call does anyway. Only when the lookup fails otherwise (Consul
        // unreachable) is the conflict looked for apart, so that it still wins: the caller
        // must change the call whatever Consul does.
        let found = self
            .discovery
            .instances(&request.lookup_name(), request.port, Strictness::Interactive)
            .await;
        self.note_registry(&found);
        let found = match found {
            Ok(found) => found,
            Err(unknown @ AdminError::UnknownService { .. }) => return Err(unknown),
            Err(other) => {
                self.check_conflicts(&state, &key, &request)?;
                return Err(other);
            }
        };

        let mut services: BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])> = state
            .services
            .iter()
            .map(|(k, e)| (k.as_str(), (&e.request, e.instances.as_slice())))
            .collect();
        services.insert(&key, (&request, &found.instances));
        let table = self.build(&services)?;
        // A TCP service's port is bound before anything is stored or published, so a port
        // the proxy cannot listen on is a 400 that changes nothing; the same service and
        // port again keeps its listener (and its open connections).
        let old_port = state.services.get(&key).and_then(|e| e.request.tcp_port);
        let bound_now = self.bind_tcp(&request)?;

        // A call repeating what is stored already (Docker Flow's listeners resend every
        // service's reconfigure now and then) writes nothing: no store write, no wake-up of
        // every replica's store watch.
        let stored_already =
            state.services.get(&key).is_some_and(|entry| entry.request.params == request.params);
        if !stored_already {
            let saved =
                self.store.put(&request.service_name, &stored_form(&request.params)?, &key).await;
            if saved.is_err() {
                // A refused or failed KV write is Consul's state too (`config`'s LastError).
                self.note_registry(&saved);
                if let (Some(port), Some(ports)) = (bound_now, self.tcp_ports()) {
                    ports.close(port);
                }
            }
            saved?;
        }

        let version = table.version();
        self.table.publish(table);
        self.settle_tcp(old_port, request.tcp_port);
        state.dirty = false;
        let entry = self.entry(&mut state, &key, request.clone(), found.instances.clone());
        state.services.insert(key, entry);
        drop(state);

        let mut warnings: Vec<String> = mode_warning.into_iter().chain(found.warnings).collect();
        warnings.extend(request.ignored_warnings());
        tracing::info!(
            service = %request.service_name,
            paths = ?request.service_paths,
            instances = ?found.instances,
            table_version = version,
            "reconfigured"
        );
        for warning in &warnings {
            tracing::warn!(service = %request.service_name, "{warning}");
        }
        let service_paths = request.destinations().flat_map(|d| d.service_paths.clone()).collect();
        let path_patterns = request
            .destinations()
            .flat_map(|d| d.path_patterns.iter().map(|p| p.as_str().to_owned()))
            .collect();
        Ok(ReconfigureReport {
            service_name: request.service_name,
            service_paths,
            path_patterns,
            tcp_port: request.tcp_port,
            stream_tls: request.stream_tls,
            domains: request.domains.clone(),
            default_backend: request.default_backend,
            instances: found.instances,
            table_version: version,
            warnings,
        })
    }

    pub(super) async fn remove(
        self: &Arc<Self>,
        service: &str,
    ) -> Result<RemoveReport, AdminError> {
        drop(self.restoring.read().await);
        let mut state = self.state.lock().await;
        let key = key(service);
        let Some(name) = state.services.get(&key).map(|e| e.request.service_name.clone()) else {
            return Err(AdminError::NotRouted(service.to_owned()));
        };
        let services: BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])> = state
            .services
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(k, e)| (k.as_str(), (&e.request, e.instances.as_slice())))
            .collect();
        let table = self.build(&services)?;
        let deleted = self.store.delete(&name, &key).await;
        if deleted.is_err() {
            self.note_registry(&deleted);
        }
        deleted?;
        // Copies stored under the name in another case (older versions) go too, or the next
        // store listing would route the service again.
        for shadow in state.shadowed.remove(&key).unwrap_or_default() {
            if let Err(err) = self.store.delete(&shadow, &key).await {
                tracing::warn!(key = %shadow, error = %err, "could not delete a stored copy of the route in another case");
            }
        }
        let version = table.version();
        self.table.publish(table);
        state.dirty = false;
        let old_port = state.services.remove(&key).and_then(|e| e.request.tcp_port);
        self.settle_tcp(old_port, None);
        tracing::info!(service = %name, table_version = version, "removed");
        Ok(RemoveReport { service_name: name, table_version: version })
    }

    /// Fits a request to the discovery mode. With Consul, instances and their ports come
    /// from Consul's registrations, so a `port` (Docker Flow Proxy's container port, which
    /// tools such as Docker Flow Swarm Listener send on every call) is dropped, not stored,
    /// and the answer says so. Returns that warning.
    pub(super) fn fit_to_mode(&self, request: &mut ReconfigureRequest) -> Option<String> {
        match self.discovery {
            Discovery::Consul(_) => {
                let port = request.drop_port()?;
                Some(format!(
                    "parameter port={port} is ignored and not stored: with Consul each \
                     instance's port is the one it registered (Service.Port)"
                ))
            }
            Discovery::Dns => None,
        }
    }

    /// Refuses what the discovery mode cannot do: `serviceColor` picks Consul registrations
    /// (`<serviceName>-<serviceColor>`, Docker Flow Proxy's blue/green); standalone mode has
    /// no registry to pick from.
    pub(super) fn check_mode(&self, request: &ReconfigureRequest) -> Result<(), AdminError> {
        let checks_certs = request.destinations().any(|d| d.policy.verify_client_cert);
        if checks_certs && !self.client_ca.load(Ordering::Relaxed) {
            return Err(AdminError::InvalidParameter {
                name: "verifyClientSsl",
                value: "true".to_owned(),
                reason: "this proxy checks no client certificates; start it with --client-ca \
                         <PEM file of the CAs that issue them> (DFP_CLIENT_CA), or leave \
                         verifyClientSsl out"
                    .to_owned(),
            });
        }
        self.check_destination_ports(request)?;
        self.check_tcp_port(request)?;
        match (&self.discovery, &request.color) {
            (Discovery::Dns, Some(color)) => Err(AdminError::InvalidParameter {
                name: "serviceColor",
                value: color.clone(),
                reason: "serviceColor selects Consul registrations named serviceName-serviceColor \
                         and needs --consul-address; in standalone mode route the colored \
                         service under its own name (serviceName=<name>-<color>) instead"
                    .to_owned(),
            }),
            (Discovery::Dns | Discovery::Consul(_), _) => Ok(()),
        }
    }

    /// Refuses destinations whose ports this mode cannot give them. Standalone, every
    /// destination needs a port (its own `port.N` or the unindexed `port`): the instances are
    /// the name's addresses at that port. With Consul the ports are the registered ones, so
    /// destinations asking for different ports cannot all get theirs: Registrator registers
    /// a container's ports as separate services, which are routed as separate services.
    fn check_destination_ports(&self, request: &ReconfigureRequest) -> Result<(), AdminError> {
        match self.discovery {
            Discovery::Dns => {
                // The first destination's port is the lookup's, which asks for it.
                match request.more_destinations.iter().find(|d| d.port.is_none()) {
                    Some(d) => Err(AdminError::InDestination {
                        index: d.index,
                        source: Box::new(AdminError::MissingParameter {
                            name: "port",
                            example: "port.1=8080 (standalone mode routes each destination to \
                                      serviceName:port, its own port.N or the unindexed port)",
                        }),
                    }),
                    None => Ok(()),
                }
            }
            Discovery::Consul(_) => {
                let mut ports = request.destinations().filter_map(|d| d.port.map(|p| (d.index, p)));
                let Some((first_index, first)) = ports.next() else { return Ok(()) };
                match ports.find(|(_, port)| *port != first) {
                    None => Ok(()),
                    Some((index, port)) => Err(AdminError::InvalidParameter {
                        name: "port",
                        value: format!(
                            "{first} (destination {first_index}) and {port} (destination {index})"
                        ),
                        reason: "with Consul each instance is reached at the port it registered, \
                                 so destinations cannot choose different ports; a container's \
                                 ports are registered as separate services (Registrator names \
                                 them <name>-<port>): reconfigure each as its own service"
                            .to_owned(),
                    }),
                }
            }
        }
    }

    /// The state entry for a (re)configured service. A service configured again with the same
    /// source of instances (same name, same port) keeps its running follower, so a repeated
    /// reconfigure does not drop and reopen its Consul watch.
    pub(super) fn entry(
        self: &Arc<Self>,
        state: &mut State,
        key: &str,
        request: ReconfigureRequest,
        instances: Vec<SocketAddr>,
    ) -> ServiceEntry {
        let previous = state.services.remove(key);
        let (generation, follower) = match previous {
            Some(old)
                if old.request.port == request.port
                    && old.request.color == request.color
                    && old._follower.is_some() =>
            {
                (old.generation, old._follower)
            }
            _ => {
                let generation = state.generation();
                (generation, self.follower(&request, generation))
            }
        };
        ServiceEntry { request, instances, generation, _follower: follower }
    }

    fn follower(
        self: &Arc<Self>,
        request: &ReconfigureRequest,
        generation: u64,
    ) -> Option<Follower> {
        follow::follow_service(Arc::downgrade(self), &self.discovery, request, generation)
    }

    /// Refuses a request whose paths (on its hosts) or default-backend role another service
    /// already has, by building the table it would give, without instances.
    fn check_conflicts(
        &self,
        state: &State,
        key: &str,
        request: &ReconfigureRequest,
    ) -> Result<(), AdminError> {
        // Adding the specs finds every conflict; indexing them (build) is not needed for that.
        let mut builder = RouteTableBuilder::new();
        let others = state.services.iter().filter(|(k, _)| k.as_str() != key);
        for (_, entry) in others {
            builder.add_destinations(entry.request.destination_specs(&[])).map_err(conflict)?;
        }
        builder.add_destinations(request.destination_specs(&[])).map_err(conflict)?;
        Ok(())
    }

    /// Builds the table for `services` (version = live + 1, round-robin positions carried).
    pub(super) fn build(
        &self,
        services: &BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])>,
    ) -> Result<RouteTable, AdminError> {
        let live = self.table.snapshot();
        let mut builder = RouteTableBuilder::new();
        builder.carry_state_from(&live);
        let build = || {
            for (request, instances) in services.values() {
                builder.add_destinations(request.destination_specs(instances))?;
            }
            builder.build(live.version() + 1)
        };
        build().map_err(conflict)
    }
}

/// A service's parameters as the store keeps them: one JSON object of strings.
fn stored_form(params: &crate::store::Params) -> Result<Vec<u8>, AdminError> {
    serde_json::to_vec(params).map_err(|e| AdminError::Internal(e.to_string()))
}

/// A build error as the admin API reports it: conflicts are the caller's (409).
fn conflict(err: BuildError) -> AdminError {
    match err {
        BuildError::PathOwned { .. }
        | BuildError::DefaultTaken { .. }
        | BuildError::PortOwned { .. }
        | BuildError::NameOwned { .. } => AdminError::PathConflict { source: err },
        BuildError::RoutedTwice { .. } => AdminError::DestinationsOverlap { source: err },
        other => AdminError::Internal(other.to_string()),
    }
}
