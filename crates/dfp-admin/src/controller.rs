//! Reconfigure and remove, restore at start, and following Consul afterwards: every change
//! ends in one whole new table, built off to the side and swapped in.
//!
//! Testable without HTTP: the admin listener only parses parameters and renders answers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dfp_routing::{
    service_key, BuildError, PathPrefix, RouteTable, RouteTableBuilder, TableHandle,
};
use tokio::sync::Notify;

use crate::discovery::{Discovery, Strictness};
use crate::follow::{self, Follower};
use crate::store::{Params, RouteStore, StoreError};
use crate::users::UsersConfig;
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

/// Counts of control-plane outcomes, for `/metrics`.
#[derive(Debug, Default)]
pub struct AdminCounters {
    pub reconfigure_ok: AtomicU64,
    pub reconfigure_failed: AtomicU64,
    pub remove_ok: AtomicU64,
    pub remove_failed: AtomicU64,
    /// Instance-set changes that came from following Consul or DNS.
    pub instance_updates: AtomicU64,
    /// Route changes that came from the store (another replica, or a restore).
    pub store_syncs: AtomicU64,
}

/// Whether the registry (Consul) answered the last time anyone asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryHealth {
    /// `None` until the first call.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
}

/// How the controller follows the registry after a reconfigure.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// How long a Consul blocking query waits for a change.
    pub consul_wait: Duration,
    /// How often standalone services are resolved again.
    pub dns_refresh: Duration,
    /// How long changes are gathered before one rebuild (bursts become one swap).
    pub coalesce: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        FollowConfig {
            consul_wait: Duration::from_secs(30),
            dns_refresh: Duration::from_secs(5),
            coalesce: Duration::from_millis(10),
        }
    }
}

/// A configured service: its call, the instances last found, and the task following them.
#[derive(Debug)]
struct ServiceEntry {
    request: ReconfigureRequest,
    instances: Vec<SocketAddr>,
    generation: u64,
    _follower: Option<Follower>,
}

/// The key a service is kept under: its name as Consul compares names (ignoring ASCII case).
/// The entry's request keeps the name as first given, for display and as its store key.
fn key(name: &str) -> String {
    service_key(name).into_owned()
}

/// The configured services. Only changed under the controller's lock, and for calls only
/// after the table built from the new state has been published.
#[derive(Debug, Default)]
struct State {
    /// By [`key`]: `Books-ms` and `books-ms` are one service.
    services: BTreeMap<String, ServiceEntry>,
    /// Store keys (by service key) that name a routed service in another case, left over
    /// from versions that told them apart: ignored, and deleted with the service.
    shadowed: BTreeMap<String, Vec<String>>,
    next_generation: u64,
    /// Instance changes recorded but not yet published.
    dirty: bool,
    /// For each service (by key), the local write (reconfigure or remove) that last stored
    /// it, by its sequence number (see `Inner::local_writes`).
    touched: HashMap<String, u64>,
}

impl State {
    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Every service's stored parameters, by the name it is stored under (its display name).
    fn params(&self) -> BTreeMap<String, Params> {
        self.services
            .values()
            .map(|e| (e.request.service_name.clone(), e.request.params.clone()))
            .collect()
    }
}

/// Owns the configured services and publishes a new table for each change.
///
/// Changes are serialised by one async lock held across a whole call (validation, lookup,
/// store, build, publish), so two changes never interleave. The data plane never takes this
/// lock: it only reads the [`TableHandle`].
#[derive(Debug, Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    table: TableHandle,
    discovery: Discovery,
    store: RouteStore,
    follow: FollowConfig,
    users: UsersConfig,
    state: tokio::sync::Mutex<State>,
    counters: AdminCounters,
    registry: Mutex<RegistryHealth>,
    publish_wanted: Arc<Notify>,
    metrics_hook: std::sync::OnceLock<MetricsHook>,
    /// Local writes to the store so far. A store listing read while one happened may predate
    /// it, so the services it touched are not taken from that listing (see `sync_from_store`).
    local_writes: AtomicU64,
    /// The TLS listener checks client certificates (`--client-ca`): without it, a
    /// `verifyClientSsl` service could never be reached, so such a call is refused.
    client_ca: std::sync::atomic::AtomicBool,
}

/// Renders more Prometheus text into `/metrics` (the binary adds the data plane's gauges).
#[derive(Clone)]
pub struct MetricsHook(pub Arc<dyn Fn(&mut String) + Send + Sync>);

impl std::fmt::Debug for MetricsHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsHook")
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wakes the publisher so that it sees the controller is gone and ends.
        self.publish_wanted.notify_one();
    }
}

impl Controller {
    /// A controller with no routes and no users beyond the services' own. Call
    /// [`Controller::start`] on the runtime that should run the followers before serving the
    /// admin API.
    pub fn new(
        table: TableHandle,
        discovery: Discovery,
        store: RouteStore,
        follow: FollowConfig,
    ) -> Self {
        Self::with_users(table, discovery, store, follow, UsersConfig::default())
    }

    /// [`Controller::new`] with the proxy's global users and the directory of `usersSecret`
    /// files.
    pub fn with_users(
        table: TableHandle,
        discovery: Discovery,
        store: RouteStore,
        follow: FollowConfig,
        users: UsersConfig,
    ) -> Self {
        Controller {
            inner: Arc::new(Inner {
                table,
                discovery,
                store,
                follow,
                users,
                state: tokio::sync::Mutex::new(State::default()),
                counters: AdminCounters::default(),
                registry: Mutex::new(RegistryHealth::default()),
                publish_wanted: Arc::new(Notify::new()),
                metrics_hook: std::sync::OnceLock::new(),
                local_writes: AtomicU64::new(0),
                client_ca: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Restores the stored routes, then starts following the store (Consul KV) and publishing
    /// coalesced instance changes. Returns once the restored table is live.
    ///
    /// With Consul unreachable it returns at once, serving nothing yet, and keeps retrying in
    /// the background. A state file that cannot be read is an error (the caller should stop).
    pub async fn start(&self) -> Result<(), StoreError> {
        tokio::spawn(publisher(Arc::downgrade(&self.inner), self.inner.publish_wanted.clone()));
        let loaded = self.inner.store.load().await;
        let index = match loaded {
            Ok((services, index)) => {
                if matches!(self.inner.store, RouteStore::ConsulKv { .. }) {
                    self.inner.registry_answered(Ok(()));
                }
                let restored = services.len();
                self.sync_from_store(services).await;
                tracing::info!(services = restored, "routes restored from the store");
                index
            }
            Err(StoreError::Consul(err)) => {
                tracing::warn!(error = %err, "cannot load routes from Consul yet; serving none until it answers");
                self.inner.registry_answered(Err(err.to_string()));
                0
            }
            Err(err) => return Err(err),
        };
        if let Discovery::Consul(consul) = &self.inner.discovery {
            tokio::spawn(follow::follow_registry(Arc::downgrade(&self.inner), consul.clone()));
        }
        if let RouteStore::ConsulKv { consul, instance_name } = &self.inner.store {
            tokio::spawn(follow::follow_store(
                Arc::downgrade(&self.inner),
                consul.clone(),
                instance_name.clone(),
                index,
            ));
        }
        Ok(())
    }

    /// Says whether the TLS listener checks client certificates (`--client-ca`); until this
    /// is called with `true`, a reconfigure with `verifyClientSsl=true` is refused (400).
    /// Services restored from the store are kept either way: theirs answer 403 to every
    /// request without a verified certificate, which is what they asked for.
    pub fn set_client_ca_configured(&self, configured: bool) {
        self.inner.client_ca.store(configured, Ordering::Relaxed);
    }

    /// Adds `hook`'s output to `/metrics` (set once; later calls are ignored).
    pub fn set_metrics_hook(&self, hook: MetricsHook) {
        let _ = self.inner.metrics_hook.set(hook);
    }

    pub(crate) fn metrics_hook(&self) -> Option<&MetricsHook> {
        self.inner.metrics_hook.get()
    }

    /// The handle the data plane reads.
    pub fn table(&self) -> &TableHandle {
        &self.inner.table
    }

    /// Where instances come from.
    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// Outcome counters.
    pub fn counters(&self) -> &AdminCounters {
        &self.inner.counters
    }

    /// Whether Consul answered last time.
    pub fn registry_health(&self) -> RegistryHealth {
        self.inner.registry.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Routes the request's paths to the service's current instances, stores the call, and
    /// follows the service's instances from then on.
    ///
    /// Calling it again for the same service replaces its paths and picks up its current
    /// instances. On any error the live table and the store are exactly as they were.
    pub async fn reconfigure(
        &self,
        request: ReconfigureRequest,
    ) -> Result<ReconfigureReport, AdminError> {
        let result = self.inner.reconfigure(request).await;
        let counters = &self.inner.counters;
        let counter =
            if result.is_ok() { &counters.reconfigure_ok } else { &counters.reconfigure_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Stops routing a service and deletes it from the store. Unknown services are an error
    /// (a typo guard), and change nothing.
    pub async fn remove(&self, service: &str) -> Result<RemoveReport, AdminError> {
        let result = self.inner.remove(service).await;
        let counters = &self.inner.counters;
        let counter = if result.is_ok() { &counters.remove_ok } else { &counters.remove_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// `reload?recreate=true`: reads the store again and makes the live table match it (what
    /// a restart would restore). Returns the live table's version.
    pub async fn reload_from_store(&self) -> Result<u64, AdminError> {
        let (services, _) = self.inner.store.load().await.map_err(|err| {
            AdminError::StoreUnavailable { what: format!("cannot read the stored routes: {err}") }
        })?;
        self.inner.sync_from_store(services, None).await;
        Ok(self.inner.table.load().version())
    }

    /// Makes the routes match `desired` (the store's content): adds and updates what differs,
    /// removes what is gone, in one table swap. Nothing is written back to the store.
    pub(crate) async fn sync_from_store(&self, desired: BTreeMap<String, Params>) {
        self.inner.sync_from_store(desired, None).await;
    }
}

impl Inner {
    async fn reconfigure(
        self: &Arc<Self>,
        mut request: ReconfigureRequest,
    ) -> Result<ReconfigureReport, AdminError> {
        self.check_mode(&request)?;
        // The secret is read before anything else is asked: a missing one changes nothing.
        self.users.resolve(&mut request, Strictness::Interactive)?;
        let mut state = self.state.lock().await;
        let key = key(&request.service_name);
        let mode_warning = self.fit_to_mode(&mut request);
        if let Some(entry) = state.services.get(&key) {
            // The same service named in another case: it keeps the name it was first given
            // (its store key and the label of its metrics).
            request.rename(&entry.request.service_name);
        }
        // Cheap checks first: a conflicting path is refused before anyone asks Consul, unless
        // the name is a typo: then Consul's (or DNS's) "never heard of it" is the real problem.
        if let Err(conflict) = self.check_conflicts(&state, &key, &request) {
            let lookup = self
                .discovery
                .instances(&request.lookup_name(), request.port, Strictness::Interactive)
                .await;
            self.note_registry(&lookup);
            return Err(match lookup {
                Err(unknown @ AdminError::UnknownService { .. }) => unknown,
                Ok(_) | Err(_) => conflict,
            });
        }
        let found = self
            .discovery
            .instances(&request.lookup_name(), request.port, Strictness::Interactive)
            .await;
        self.note_registry(&found);
        let found = found?;

        let mut services: BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])> = state
            .services
            .iter()
            .map(|(k, e)| (k.as_str(), (&e.request, e.instances.as_slice())))
            .collect();
        services.insert(&key, (&request, &found.instances));
        let table = self.build(&services)?;

        // A call repeating what is stored already (Docker Flow's listeners resend every
        // service's reconfigure now and then) writes nothing: no store write, no wake-up of
        // every replica's store watch.
        let stored_already =
            state.services.get(&key).is_some_and(|entry| entry.request.params == request.params);
        if !stored_already {
            let mut all = state.params();
            all.insert(request.service_name.clone(), request.params.clone());
            self.store.save(&request.service_name, &request.params, &all).await?;
            let seq = self.local_writes.fetch_add(1, Ordering::SeqCst) + 1;
            state.touched.insert(key.clone(), seq);
        }

        let version = table.version();
        self.table.publish(table);
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
        Ok(ReconfigureReport {
            service_name: request.service_name,
            service_paths: request.service_paths,
            instances: found.instances,
            table_version: version,
            warnings,
        })
    }

    async fn remove(self: &Arc<Self>, service: &str) -> Result<RemoveReport, AdminError> {
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
        let mut all = state.params();
        all.remove(&name);
        self.store.delete(&name, &all).await?;
        // Copies stored under the name in another case (older versions) go too, or the next
        // store listing would route the service again.
        for shadow in state.shadowed.remove(&key).unwrap_or_default() {
            if let Err(err) = self.store.delete(&shadow, &all).await {
                tracing::warn!(key = %shadow, error = %err, "could not delete a stored copy of the route in another case");
            }
        }
        let seq = self.local_writes.fetch_add(1, Ordering::SeqCst) + 1;
        state.touched.insert(key.clone(), seq);
        let version = table.version();
        self.table.publish(table);
        state.dirty = false;
        state.services.remove(&key);
        tracing::info!(service = %name, table_version = version, "removed");
        Ok(RemoveReport { service_name: name, table_version: version })
    }

    /// The sequence number of the latest local write to the store.
    pub(crate) fn local_write_seq(&self) -> u64 {
        self.local_writes.load(Ordering::SeqCst)
    }

    /// Makes the routes match `desired`, a listing of the store. With `read_after` (the local
    /// write sequence when the listing was requested), services written locally since then
    /// are left as they are: the listing may predate that write. Returns whether any service
    /// was left for that reason (the caller should read the store again).
    pub(crate) async fn sync_from_store(
        self: &Arc<Self>,
        desired: BTreeMap<String, Params>,
        read_after: Option<u64>,
    ) -> bool {
        let mut state = self.state.lock().await;
        let newer_locally = |state: &State, name: &str| {
            read_after.is_some_and(|seen| state.touched.get(name).is_some_and(|&seq| seq > seen))
        };
        // The store's services by key. A service stored under several cases (versions before
        // names were compared as Consul compares them) is served once, from the first listed.
        let mut by_key: BTreeMap<String, (String, Params)> = BTreeMap::new();
        let mut shadowed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, params) in desired {
            let k = key(&name);
            match by_key.get(&k) {
                Some((kept, _)) => {
                    tracing::warn!(%kept, ignored = %name, "two stored routes name the same service (Consul compares names ignoring case); serving the first");
                    shadowed.entry(k).or_default().push(name);
                }
                None => {
                    by_key.insert(k, (name, params));
                }
            }
        }
        state.shadowed = shadowed;
        let mut deferred = false;
        let mut removed: Vec<String> = Vec::new();
        for k in state.services.keys().filter(|k| !by_key.contains_key(*k)) {
            if newer_locally(&state, k) {
                deferred = true;
            } else {
                removed.push(k.clone());
            }
        }
        let mut changed = Vec::new();
        for (k, (name, params)) in &by_key {
            // Most of a listing is unchanged: compare before parsing (regexes, credentials).
            if state.services.get(k).is_some_and(|e| self.same_call(&e.request.params, params)) {
                continue;
            }
            let pairs = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let mut request = match ReconfigureRequest::from_stored_pairs(pairs) {
                Ok(request) if request.service_name.eq_ignore_ascii_case(name) => request,
                Ok(request) => {
                    tracing::warn!(
                        key = %name,
                        service = %request.service_name,
                        "stored route's serviceName differs from its key; skipped"
                    );
                    continue;
                }
                Err(err) => {
                    tracing::warn!(service = %name, error = %err, "stored route is invalid; skipped");
                    continue;
                }
            };
            if let Err(err) = self.check_mode(&request) {
                tracing::warn!(service = %name, error = %err, "stored route does not fit this mode; skipped");
                continue;
            }
            let _ = self.fit_to_mode(&mut request);
            if state.services.get(k).is_some_and(|e| e.request.params == request.params) {
                continue;
            }
            if newer_locally(&state, k) {
                deferred = true;
                continue;
            }
            match self.users.resolve(&mut request, Strictness::Restore) {
                Ok(None) => {}
                Ok(Some(warning)) => tracing::warn!(service = %name, "{warning}"),
                Err(err) => {
                    tracing::warn!(service = %name, error = %err, "stored route's users cannot be read; skipped");
                    continue;
                }
            }
            changed.push(request);
        }
        if removed.is_empty() && changed.is_empty() {
            return deferred;
        }

        // Look the changed services up (an unknown or unreachable one starts with no instance,
        // or keeps the ones it had, and its follower fills them in).
        let mut found = Vec::with_capacity(changed.len());
        for request in changed {
            let lookup = self
                .discovery
                .instances(&request.lookup_name(), request.port, Strictness::Restore)
                .await;
            self.note_registry(&lookup);
            let instances = match lookup {
                Ok(f) => f.instances,
                Err(err) => {
                    tracing::warn!(service = %request.service_name, error = %err, "lookup failed; keeping its last instances");
                    let kept = state
                        .services
                        .get(&key(&request.service_name))
                        .map(|e| e.instances.clone());
                    kept.unwrap_or_default()
                }
            };
            found.push((key(&request.service_name), request, instances));
        }

        // Build; a stored route whose path another service owns is left out, not the others.
        loop {
            let mut services: BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])> = state
                .services
                .iter()
                .filter(|(k, _)| !removed.contains(k))
                .map(|(k, e)| (k.as_str(), (&e.request, e.instances.as_slice())))
                .collect();
            for (k, request, instances) in &found {
                services.insert(k, (request, instances));
            }
            match self.build(&services) {
                Ok(table) => {
                    self.table.publish(table);
                    break;
                }
                Err(AdminError::PathConflict {
                    source:
                        BuildError::PathOwned { service, owner, .. }
                        | BuildError::DefaultTaken { service, owner, .. },
                }) => {
                    tracing::warn!(%service, %owner, "stored route conflicts with another; skipped");
                    let before = found.len();
                    found.retain(|(_, r, _)| r.service_name != service && r.service_name != owner);
                    if found.len() == before {
                        return deferred;
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "stored routes could not be built; table unchanged");
                    return deferred;
                }
            }
        }
        state.dirty = false;
        for name in &removed {
            state.services.remove(name);
            tracing::info!(service = %name, "removed (from the store)");
        }
        for (k, request, instances) in found {
            tracing::info!(service = %request.service_name, paths = ?request.service_paths, instances = ?instances, "routed (from the store)");
            let entry = self.entry(&mut state, &k, request, instances);
            state.services.insert(k, entry);
        }
        self.counters.store_syncs.fetch_add(1, Ordering::Relaxed);
        deferred
    }

    /// The routed services whose instances are registered under a name in `only` (or all),
    /// for a refresh of their instances: `(service, name looked up, generation)`. The name
    /// looked up differs from the service's with `serviceColor`.
    pub(crate) async fn routed_services(
        &self,
        only: Option<&std::collections::BTreeSet<String>>,
    ) -> Vec<(String, String, u64)> {
        // Consul reports a check under the service's name as registered, in any case.
        let only: Option<std::collections::BTreeSet<String>> =
            only.map(|only| only.iter().map(|name| key(name)).collect());
        let state = self.state.lock().await;
        state
            .services
            .values()
            .map(|entry| (entry, entry.request.lookup_name()))
            .filter(|(_, lookup)| only.as_ref().is_none_or(|only| only.contains(&key(lookup))))
            .map(|(entry, lookup)| (entry.request.service_name.clone(), lookup, entry.generation))
            .collect()
    }

    /// Records new instances for a service found by its follower. The publisher rebuilds.
    pub(crate) async fn update_instances(
        &self,
        service: &str,
        generation: u64,
        instances: Vec<SocketAddr>,
    ) {
        let mut state = self.state.lock().await;
        let Some(entry) = state.services.get_mut(&key(service)) else {
            return;
        };
        if entry.generation != generation || entry.instances == instances {
            return;
        }
        tracing::info!(service, before = ?entry.instances, after = ?instances, "instances changed");
        entry.instances = instances;
        state.dirty = true;
        self.counters.instance_updates.fetch_add(1, Ordering::Relaxed);
        self.publish_wanted.notify_one();
    }

    /// Publishes the recorded instance changes, if any are still pending.
    async fn publish_pending(&self) {
        let mut state = self.state.lock().await;
        if !state.dirty {
            return;
        }
        let services: BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])> = state
            .services
            .iter()
            .map(|(k, e)| (k.as_str(), (&e.request, e.instances.as_slice())))
            .collect();
        match self.build(&services) {
            Ok(table) => {
                tracing::debug!(table_version = table.version(), "published instance changes");
                self.table.publish(table);
                state.dirty = false;
            }
            Err(err) => tracing::error!(error = %err, "instance changes could not be built"),
        }
    }

    pub(crate) fn registry_answered(&self, outcome: Result<(), String>) {
        let Ok(mut health) = self.registry.lock() else {
            return;
        };
        let was = health.reachable;
        match outcome {
            Ok(()) => {
                health.reachable = Some(true);
                if was == Some(false) {
                    tracing::info!("Consul is reachable again");
                }
            }
            Err(error) => {
                if was != Some(false) {
                    tracing::warn!(%error, "Consul is unreachable; serving the last table");
                }
                health.reachable = Some(false);
                health.last_error = Some(error);
            }
        }
    }

    fn note_registry<T>(&self, outcome: &Result<T, AdminError>) {
        if !matches!(self.discovery, Discovery::Consul(_)) {
            return;
        }
        match outcome {
            Err(AdminError::RegistryUnavailable { what }) => {
                self.registry_answered(Err(what.clone()));
            }
            _ => self.registry_answered(Ok(())),
        }
    }

    /// Fits a request to the discovery mode. With Consul, instances and their ports come
    /// from Consul's registrations, so a `port` (Docker Flow Proxy's container port, which
    /// tools such as Docker Flow Swarm Listener send on every call) is dropped, not stored,
    /// and the answer says so. Returns that warning.
    fn fit_to_mode(&self, request: &mut ReconfigureRequest) -> Option<String> {
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
    fn check_mode(&self, request: &ReconfigureRequest) -> Result<(), AdminError> {
        if request.policy.verify_client_cert && !self.client_ca.load(Ordering::Relaxed) {
            return Err(AdminError::InvalidParameter {
                name: "verifyClientSsl",
                value: "true".to_owned(),
                reason: "this proxy checks no client certificates; start it with --client-ca \
                         <PEM file of the CAs that issue them> (DFP_CLIENT_CA), or leave \
                         verifyClientSsl out"
                    .to_owned(),
            });
        }
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

    /// Whether stored parameters replay the call that `current` holds: equal, but for the
    /// `port` older versions stored with Consul (which [`Inner::fit_to_mode`] drops).
    fn same_call(&self, current: &Params, stored: &Params) -> bool {
        match self.discovery {
            Discovery::Consul(_) => current.iter().eq(stored.iter().filter(|(k, _)| *k != "port")),
            Discovery::Dns => current == stored,
        }
    }

    pub(crate) fn follow_config(&self) -> &FollowConfig {
        &self.follow
    }

    /// The state entry for a (re)configured service. A service configured again with the same
    /// source of instances (same name, same port) keeps its running follower, so a repeated
    /// reconfigure does not drop and reopen its Consul watch.
    fn entry(
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
            builder.add(entry.request.spec(), &[]).map_err(conflict)?;
        }
        builder.add(request.spec(), &[]).map_err(conflict)?;
        Ok(())
    }

    /// Builds the table for `services` (version = live + 1, round-robin positions carried).
    fn build(
        &self,
        services: &BTreeMap<&str, (&ReconfigureRequest, &[SocketAddr])>,
    ) -> Result<RouteTable, AdminError> {
        let live = self.table.snapshot();
        let mut builder = RouteTableBuilder::new();
        builder.carry_state_from(&live);
        let build = || {
            for (request, instances) in services.values() {
                builder.add(request.spec(), instances)?;
            }
            builder.build(live.version() + 1)
        };
        build().map_err(conflict)
    }
}

/// A build error as the admin API reports it: conflicts are the caller's (409).
fn conflict(err: BuildError) -> AdminError {
    match err {
        BuildError::PathOwned { .. } | BuildError::DefaultTaken { .. } => {
            AdminError::PathConflict { source: err }
        }
        other => AdminError::Internal(other.to_string()),
    }
}

/// Publishes instance changes: waits for a change, gathers the burst for the coalescing
/// window, then rebuilds once. Ends when the controller is gone.
async fn publisher(inner: Weak<Inner>, wanted: Arc<Notify>) {
    loop {
        wanted.notified().await;
        let Some(coalesce) = inner.upgrade().map(|i| i.follow.coalesce) else {
            return;
        };
        tokio::time::sleep(coalesce).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.publish_pending().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, paths: &[&str], port: u16) -> ReconfigureRequest {
        let port = port.to_string();
        let joined = paths.join(",");
        ReconfigureRequest::from_pairs([
            ("serviceName", name),
            ("servicePath", joined.as_str()),
            ("port", port.as_str()),
        ])
        .expect("valid request")
    }

    // Standalone discovery with an IP literal as the "name" needs no DNS server.
    fn controller() -> Controller {
        Controller::new(
            TableHandle::default(),
            Discovery::Dns,
            RouteStore::Memory,
            FollowConfig::default(),
        )
    }

    #[tokio::test]
    async fn reconfigure_publishes_and_reports() {
        let c = controller();
        let report = c.reconfigure(request("127.0.0.1", &["/api"], 8080)).await.expect("valid");
        assert_eq!(report.table_version, 1);
        assert_eq!(report.instances, ["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")]);
        let live = c.table().load();
        assert_eq!(live.lookup("/api/x").map(|m| m.backend.service()), Some("127.0.0.1"));
    }

    #[tokio::test]
    async fn conflicts_and_bad_requests_leave_the_table_alone() {
        let c = controller();
        c.reconfigure(request("127.0.0.1", &["/api"], 8080)).await.expect("valid");
        let before = c.table().snapshot();

        let err = c
            .reconfigure(request("127.0.0.2", &["/other", "/api/"], 8080))
            .await
            .expect_err("taken");
        assert_eq!(err.status(), 409);
        assert!(err.to_string().contains("/api"), "{err}");

        let mut no_port = request("127.0.0.2", &["/other"], 1);
        no_port.port = None;
        assert_eq!(c.reconfigure(no_port).await.expect_err("port is required").status(), 400);
        assert_eq!(c.remove("nope").await.expect_err("not routed").status(), 404);

        let after = c.table().snapshot();
        assert!(Arc::ptr_eq(&before, &after), "no failed call publishes a table");
        assert_eq!(c.counters().reconfigure_failed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn reconfigure_again_replaces_paths_and_remove_drops_them() {
        let c = controller();
        c.reconfigure(request("127.0.0.1", &["/a"], 1)).await.expect("valid");
        c.reconfigure(request("127.0.0.1", &["/b"], 2)).await.expect("same service again");
        {
            let live = c.table().load();
            assert!(live.lookup("/a").is_none());
            let b = live.lookup("/b").expect("moved");
            assert_eq!(
                b.backend.addrs().collect::<Vec<_>>(),
                ["127.0.0.1:2".parse::<SocketAddr>().expect("addr")]
            );
        }
        let removed = c.remove("127.0.0.1").await.expect("routed");
        assert_eq!(removed.table_version, 3);
        assert!(c.table().load().lookup("/b").is_none());
    }

    #[tokio::test]
    async fn a_name_in_another_case_is_the_same_service() {
        let c = controller();
        c.reconfigure(request("localhost", &["/a"], 1)).await.expect("valid");
        // The same service in another case: it moves (no 409 against itself, no second
        // route), and keeps the name it was first given.
        let report = c.reconfigure(request("LocalHost", &["/b"], 1)).await.expect("same service");
        assert_eq!(report.service_name, "localhost");
        let live = c.table().snapshot();
        assert_eq!(live.services().len(), 1);
        assert!(live.lookup("/a").is_none());
        assert_eq!(live.lookup("/b").map(|m| m.backend.service()), Some("localhost"));
        assert_eq!(c.remove("LOCALHOST").await.expect("routed").service_name, "localhost");
        assert_eq!(c.table().snapshot().services().len(), 0);
    }

    #[tokio::test]
    async fn a_store_naming_one_service_in_two_cases_serves_it_once() {
        let c = controller();
        let mut desired = BTreeMap::new();
        for (name, path) in [("LocalHost", "/a"), ("localhost", "/b")] {
            desired.insert(name.to_owned(), request(name, &[path], 80).params);
        }
        c.sync_from_store(desired).await;
        let live = c.table().snapshot();
        assert_eq!(live.services().len(), 1, "one service, not two routes to the same instances");
        assert_eq!(live.lookup("/a").map(|m| m.backend.service()), Some("LocalHost"));
        assert!(live.lookup("/b").is_none(), "the copy in another case is ignored");
        c.remove("localhost").await.expect("routed, in any case");
        assert_eq!(c.inner.state.lock().await.shadowed.len(), 0, "its copies are deleted too");
    }

    #[tokio::test]
    async fn a_listing_older_than_a_local_write_does_not_undo_it() {
        let c = controller();
        let before = c.inner.local_write_seq();
        c.reconfigure(request("127.0.0.1", &["/a"], 1)).await.expect("valid");
        // A listing requested before the write, answered without it.
        let deferred = c.inner.sync_from_store(BTreeMap::new(), Some(before)).await;
        assert!(deferred, "the follower is told to read again");
        assert!(c.table().load().lookup("/a").is_some(), "the local write stands");
        // A listing requested after the write is the truth.
        let after = c.inner.local_write_seq();
        assert!(!c.inner.sync_from_store(BTreeMap::new(), Some(after)).await);
        assert!(c.table().load().lookup("/a").is_none());
    }

    #[tokio::test]
    async fn store_sync_adds_updates_removes_in_one_swap_and_skips_conflicts() {
        let c = controller();
        c.reconfigure(request("127.0.0.1", &["/a"], 1)).await.expect("valid");
        let mut desired = BTreeMap::new();
        for (name, path) in [("127.0.0.2", "/b"), ("127.0.0.3", "/c"), ("127.0.0.4", "/b")] {
            desired.insert(name.to_owned(), request(name, &[path], 80).params);
        }
        c.sync_from_store(desired).await;
        let live = c.table().load();
        assert_eq!(live.version(), 2, "one swap for the whole batch");
        assert!(live.lookup("/a").is_none(), "a service gone from the store is removed");
        assert_eq!(live.lookup("/c").map(|m| m.backend.service()), Some("127.0.0.3"));
        // The two services claiming /b conflict: both are left out, the rest is served.
        assert!(live.lookup("/b").is_none());
    }
}
