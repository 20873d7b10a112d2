//! The reconfigure/remove path: checks a call against the discovery mode and the other
//! services' paths, looks its instances up, stores it, then builds and publishes the new table.
//! Split out of `controller.rs` (a pure move) to keep each file to one job.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dfp_routing::{BuildError, RouteTable, TableEditor};

use super::{key, Inner, ReconfigureReport, RemoveReport, ServiceEntry, State};
use crate::discovery::{Discovery, Found, Strictness};
use crate::follow::{self, Follower};
use crate::{AdminError, ReconfigureRequest};

impl Inner {
    /// Checks the call, looks its instances up (no lock held: calls look up side by side),
    /// then queues it for the next commit and waits for its answer. A commit takes every call
    /// queued by then: each is checked against the table as the calls before it left it, the
    /// accepted ones are stored together, and one table with all of them goes live before any
    /// is answered. So N calls in flight cost one table change and one round of KV writes,
    /// not N of each, and a call's answer still means its route is live.
    pub(super) async fn reconfigure(
        self: &Arc<Self>,
        mut request: ReconfigureRequest,
    ) -> Result<ReconfigureReport, AdminError> {
        self.check_mode(&request)?;
        // The secret is read before anything else is asked: a missing one changes nothing.
        request.for_each_destination(|d| self.users.resolve(d, Strictness::Interactive))?;
        let mode_warning = self.fit_to_mode(&mut request);
        // A follower's instance update recorded after this is newer than the lookup below.
        let seen = self.instance_seq.load(Ordering::Acquire);
        // A name Consul (or DNS) never heard of is the real problem even when the paths
        // conflict too (a typo); a conflict is found when the call is committed, as every
        // successful call is. Only when the lookup fails otherwise (Consul unreachable) is
        // the conflict looked for here, so that it still wins: the caller must change the
        // call whatever Consul does.
        let found = self
            .discovery
            .instances(&request.lookup_name(), request.port, Strictness::Interactive)
            .await;
        self.note_registry(&found);
        let found = match found {
            Ok(found) => found,
            Err(unknown @ AdminError::UnknownService { .. }) => return Err(unknown),
            Err(other) => {
                let live = self.table.snapshot();
                TableEditor::new(&live).check(&request.destination_specs(&[])).map_err(conflict)?;
                return Err(other);
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = Queued { request, found, mode_warning, seen, reply };
        self.queue
            .lock()
            .map_err(|_| AdminError::Internal("queue poisoned".to_owned()))?
            .push(queued);
        // Committed on a task of its own: a caller that hangs up does not stop the calls
        // committed with its own.
        tokio::spawn(self.clone().commit_queued());
        answer.await.unwrap_or_else(|_| {
            Err(AdminError::Internal("the change was dropped before it was committed".to_owned()))
        })
    }

    /// Commits what is queued, under the state lock, until nothing is.
    async fn commit_queued(self: Arc<Self>) {
        let mut state = self.state.lock().await;
        loop {
            let batch = match self.queue.lock() {
                Ok(mut queue) => std::mem::take(&mut *queue),
                Err(_) => return,
            };
            if batch.is_empty() {
                return;
            }
            let later = self.commit(&mut state, batch).await;
            if let Ok(mut queue) = self.queue.lock() {
                // A service called twice in one batch: its later call goes in the next one,
                // in order, so its stored copy is the later call's.
                queue.splice(0..0, later);
            }
        }
    }

    /// Commits `batch` (see [`Inner::reconfigure`]); returns the calls left for the next
    /// commit.
    async fn commit(self: &Arc<Self>, state: &mut State, batch: Vec<Queued>) -> Vec<Queued> {
        let live = self.table.snapshot();
        let mut editor = TableEditor::new(&live);
        let as_live = TableEditor::new(&live);
        let mut keys = std::collections::HashSet::new();
        let mut taken: Vec<Taken> = Vec::new();
        let mut later = Vec::new();
        for mut call in batch {
            let key = key(&call.request.service_name);
            if !keys.insert(key.clone()) {
                later.push(call);
                continue;
            }
            if let Some(entry) = state.services.get(&key) {
                // The same service named in another case: it keeps the name it was first
                // given (its store key and the label of its metrics).
                call.request.rename(&entry.request.service_name);
                // Its follower found other instances after this call looked: they are newer,
                // and the follower that found them goes on (same source).
                if entry.updated > call.seen && same_source(&entry.request, &call.request) {
                    call.found.instances = entry.instances.clone();
                }
            }
            let specs = call.request.destination_specs(&call.found.instances);
            if let Err(err) = editor.check(&specs) {
                if as_live.check(&specs).is_ok() {
                    // Its conflict is with a call of this batch, not live yet (and whose
                    // store write may still fail): decided in the next commit, against that
                    // call's outcome, so a 409 always names a route that is live.
                    later.push(call);
                    continue;
                }
                let _ = call.reply.send(Err(conflict(err)));
                continue;
            }
            // A TCP service's port is bound before anything is stored or published, so a
            // port the proxy cannot listen on is a 400 that changes nothing; the same service
            // and port again keeps its listener (and its open connections).
            let bound = match self.bind_tcp(&call.request) {
                Ok(bound) => bound,
                Err(err) => {
                    let _ = call.reply.send(Err(err));
                    continue;
                }
            };
            if let Err(err) = editor.set(specs.clone()) {
                self.close_bound(bound);
                let _ = call.reply.send(Err(conflict(err)));
                continue;
            }
            // A call repeating what is stored already (Docker Flow's listeners resend every
            // service's reconfigure now and then) writes nothing: no store write, no wake-up
            // of every replica's store watch.
            let stored_already = state
                .services
                .get(&key)
                .is_some_and(|entry| entry.request.params == call.request.params);
            taken.push(Taken { call, key, specs, bound, stored_already });
        }

        // What each call stores (nothing when it is stored already).
        let forms: Vec<Option<Result<Vec<u8>, AdminError>>> = taken
            .iter()
            .map(|t| (!t.stored_already).then(|| stored_form(&t.call.request.params)))
            .collect();
        let writes: Vec<(String, Vec<u8>, String)> = taken
            .iter()
            .zip(&forms)
            .filter_map(|(t, form)| match form {
                Some(Ok(value)) => {
                    Some((t.call.request.service_name.clone(), value.clone(), t.key.clone()))
                }
                _ => None,
            })
            .collect();
        let mut outcomes = self.store_all(writes).await.into_iter();
        let mut stored = Vec::with_capacity(taken.len());
        let mut failed = false;
        for (t, form) in taken.into_iter().zip(forms) {
            let outcome = match form {
                None => Ok(()),
                Some(Err(err)) => Err(err),
                Some(Ok(_)) => outcomes.next().unwrap_or_else(|| {
                    Err(AdminError::Internal("the store gave no outcome for a write".to_owned()))
                }),
            };
            match outcome {
                Ok(()) => stored.push(t),
                Err(err) => {
                    // A refused or failed KV write is Consul's state too (`config`'s LastError).
                    let write: Result<(), AdminError> = Err(err);
                    self.note_registry(&write);
                    self.close_bound(t.bound);
                    failed = true;
                    if let Err(err) = write {
                        let _ = t.call.reply.send(Err(err));
                    }
                }
            }
        }
        if stored.is_empty() {
            return later;
        }
        if failed {
            // What was stored goes live, and only that: the same sets again (they passed).
            editor = TableEditor::new(&live);
            for t in &stored {
                if let Err(err) = editor.set(t.specs.clone()) {
                    tracing::error!(error = %err, "a stored change no longer fits; table unchanged");
                    return later;
                }
            }
        }

        let version = live.version() + 1;
        let names: Vec<&str> =
            stored.iter().map(|t| t.call.request.service_name.as_str()).collect();
        self.publish(editor.finish(version), format!("reconfigure {}", list_of(&names)));
        for t in stored {
            let Taken { call, key, .. } = t;
            let Queued { request, found, mode_warning, reply, .. } = call;
            let old_port = state.services.get(&key).and_then(|e| e.request.tcp_port);
            self.settle_tcp(old_port, request.tcp_port);
            state.dirty.remove(&key);
            let entry = self.entry(state, &key, Box::new(request.clone()), found.instances.clone());
            state.services.insert(key, entry);
            let _ = reply.send(Ok(report(request, found, mode_warning, version)));
        }
        later
    }

    /// Stores each write: side by side in Consul KV (a commit's writes are independent keys),
    /// with one rewrite of the state file standalone. The outcomes are in the order of
    /// `writes`.
    async fn store_all(
        self: &Arc<Self>,
        writes: Vec<(String, Vec<u8>, String)>,
    ) -> Vec<Result<(), AdminError>> {
        if !self.store.is_consul() || writes.len() < 2 {
            return self.store.put_all(&writes).await;
        }
        let count = writes.len();
        let mut tasks = tokio::task::JoinSet::new();
        for (at, (name, value, key)) in writes.into_iter().enumerate() {
            let inner = self.clone();
            tasks.spawn(async move { (at, inner.store.put(&name, &value, &key).await) });
        }
        let mut outcomes: Vec<Result<(), AdminError>> = (0..count)
            .map(|_| Err(AdminError::Internal("the store write did not finish".to_owned())))
            .collect();
        while let Some(done) = tasks.join_next().await {
            if let Ok((at, outcome)) = done {
                outcomes[at] = outcome;
            }
        }
        outcomes
    }

    /// Closes a TCP port a refused change had bound.
    fn close_bound(&self, bound: Option<u16>) {
        if let (Some(port), Some(ports)) = (bound, self.tcp_ports()) {
            ports.close(port);
        }
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
        let live = self.table.snapshot();
        let mut editor = TableEditor::new(&live);
        editor.remove(&key);
        let table = editor.finish(live.version() + 1);
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
        self.publish(table, format!("remove {name}"));
        state.dirty.remove(&key);
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
        request: Box<ReconfigureRequest>,
        instances: Vec<SocketAddr>,
    ) -> Box<ServiceEntry> {
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
        Box::new(ServiceEntry { request, instances, generation, updated: 0, _follower: follower })
    }

    fn follower(
        self: &Arc<Self>,
        request: &ReconfigureRequest,
        generation: u64,
    ) -> Option<Follower> {
        follow::follow_service(Arc::downgrade(self), &self.discovery, request, generation)
    }

    /// The table with `keys`' current calls and instances set again (an instance change
    /// recorded by their followers), or `None` when nothing needs it. Services that no longer
    /// fit (cannot happen: their routes did not change) are left as they were, and logged.
    pub(super) fn with_instances(&self, state: &State, keys: &[String]) -> Option<RouteTable> {
        let live = self.table.snapshot();
        let mut editor = TableEditor::new(&live);
        let mut changed = false;
        for key in keys {
            let Some(entry) = state.services.get(key) else { continue };
            match editor.set(entry.request.destination_specs(&entry.instances)) {
                Ok(_) => changed = true,
                Err(err) => {
                    tracing::error!(service = %entry.request.service_name, error = %err, "instance changes could not be applied")
                }
            }
        }
        changed.then(|| editor.finish(live.version() + 1))
    }
}

/// Names for a log or a cause: all of a few, else the first few and how many more.
pub(super) fn list_of(names: &[&str]) -> String {
    const SHOWN: usize = 3;
    match names.len() {
        0..=SHOWN => names.join(", "),
        n => format!("{} and {} more", names[..SHOWN].join(", "), n - SHOWN),
    }
}

/// Whether two calls for one service take their instances from the same place (its
/// follower goes on across them).
pub(super) fn same_source(old: &ReconfigureRequest, new: &ReconfigureRequest) -> bool {
    old.port == new.port && old.color == new.color
}

/// A call waiting for the next commit, with what its lookup found.
pub(super) struct Queued {
    request: ReconfigureRequest,
    found: Found,
    mode_warning: Option<String>,
    /// The instance-update sequence before the lookup ([`Inner::instance_seq`]).
    seen: u64,
    reply: tokio::sync::oneshot::Sender<Result<ReconfigureReport, AdminError>>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("service", &self.request.service_name)
            .finish_non_exhaustive()
    }
}

/// A call a commit accepted, until its store write is done.
struct Taken {
    call: Queued,
    key: String,
    specs: Vec<(dfp_routing::ServiceSpec, Vec<SocketAddr>)>,
    /// The TCP port this call bound (closed again if it fails).
    bound: Option<u16>,
    stored_already: bool,
}

/// The answer to a committed call.
fn report(
    request: ReconfigureRequest,
    found: Found,
    mode_warning: Option<String>,
    version: u64,
) -> ReconfigureReport {
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
    ReconfigureReport {
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
    }
}

/// A service's parameters as the store keeps them: one JSON object of strings.
fn stored_form(params: &crate::params::CallParams) -> Result<Vec<u8>, AdminError> {
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
