//! Reconfigure and remove, restore at start, and following Consul afterwards: every change
//! ends in a new table, changed off to the side (only the services that changed) and swapped in.
//!
//! Testable without HTTP: the admin listener only parses parameters and renders answers.
//!
//! Split by job so each file stays readable: this file holds the controller's types, its
//! public API and the registry-health glue; `reconfigure.rs` the reconfigure/remove path
//! (mode checks, conflict checks, building a table); `sync.rs` the store sync/restore path
//! and the followers' instance updates; `tests.rs` the unit tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dfp_routing::{service_key, PathPrefix, StreamTls, TableHandle};
use tokio::sync::Notify;

use crate::discovery::Discovery;
use crate::follow::{self, Follower};
use crate::mirror::{Mirrored, StoreMirror};
use crate::store::{services_from, Params, RouteStore, StoreError};
use crate::tcp_ports::{ReservedPorts, TcpPorts};
use crate::users::UsersConfig;
use crate::{AdminError, ReconfigureRequest};

mod acme;
mod reconfigure;
mod sync;
#[cfg(test)]
mod tests;

/// What a successful reconfigure did. When it is returned, the new table is live.
#[derive(Debug, Clone)]
pub struct ReconfigureReport {
    pub service_name: String,
    pub service_paths: Vec<PathPrefix>,
    /// `servicePath` values under a `pathType`, as given.
    pub path_patterns: Vec<String>,
    /// A TCP service's `srcPort`.
    pub tcp_port: Option<u16>,
    /// How a TCP service's connections are taken.
    pub stream_tls: StreamTls,
    /// `serviceDomain` (of the first destination).
    pub domains: Vec<dfp_routing::Domain>,
    pub default_backend: bool,
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

/// Who this proxy is, for the dashboard: set once by the binary when it serves.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The instance name its routes are stored under (`<name>/services/` in Consul KV):
    /// replicas with the same name share them.
    pub instance_name: String,
    /// Its listeners: (what, address), e.g. `("proxy", 0.0.0.0:80)`.
    pub listeners: Vec<(&'static str, std::net::SocketAddr)>,
}

/// The last table the controller published, for the dashboard.
#[derive(Debug, Clone)]
pub struct LastChange {
    pub table_version: u64,
    pub at: std::time::Instant,
    /// What changed it, in words: `reconfigure books-ms`, `remove books-ms`, `store: …` (a
    /// restore or another replica's change), `instances of …` (Consul or DNS).
    pub cause: String,
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
    /// How long changes are gathered before one table change (bursts become one swap).
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
    /// Boxed (~0.9 kB) so that a restore's lists of services being routed hold pointers,
    /// not copies: at 10,000 routes those lists held three copies of every call at once.
    request: Box<ReconfigureRequest>,
    instances: Vec<SocketAddr>,
    generation: u64,
    /// [`Inner::instance_seq`] when its follower last changed `instances` (0: never): a
    /// lookup made before that is older than them.
    updated: u64,
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
    /// By [`key`]: `Books-ms` and `books-ms` are one service. Boxed, as is each entry's
    /// call: a B-tree node has room for 11 entries whether it holds them or not, so entries
    /// inline (then ~1 kB each) left about 0.8 kB of empty slots per service (massif, 1,000
    /// services restored).
    services: BTreeMap<String, Box<ServiceEntry>>,
    /// Store keys (by service key) that name a routed service in another case, left over
    /// from versions that told them apart: ignored, and deleted with the service.
    shadowed: BTreeMap<String, Vec<String>>,
    next_generation: u64,
    /// Services (by key) whose instance changes are recorded but not yet published.
    dirty: std::collections::BTreeSet<String>,
}

impl State {
    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

/// Owns the configured services and publishes a new table for each change.
///
/// Changes are serialised by one async lock, held to check them against the table, store them
/// and publish the table they make; never across a call's instance lookup, so calls look up
/// side by side and the calls queued meanwhile are committed together (see
/// [`Inner::reconfigure`]). The data plane never takes this lock: it only reads the
/// [`TableHandle`].
#[derive(Debug, Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    table: TableHandle,
    discovery: Discovery,
    /// The routes as stored (Consul KV or the state file), followed with Consul.
    store: StoreMirror,
    follow: FollowConfig,
    users: UsersConfig,
    state: tokio::sync::Mutex<State>,
    /// The last table published: when, and why.
    last_change: Mutex<Option<LastChange>>,
    /// Who this proxy is (set once by the binary).
    identity: std::sync::OnceLock<Identity>,
    /// Reconfigure calls looked up and waiting for the next commit.
    queue: Mutex<Vec<reconfigure::Queued>>,
    /// Counts the instance changes followers record, so that a lookup made without the lock
    /// can tell whether the instances it found are older than what is recorded.
    instance_seq: AtomicU64,
    counters: AdminCounters,
    registry: Mutex<RegistryHealth>,
    publish_wanted: Arc<Notify>,
    /// Notified at every table published: the ACME manager looks at the names to certify
    /// again (a route that asks for a certificate is served one without waiting for its
    /// next periodic check).
    table_changed: Arc<Notify>,
    /// The replicas sharing the instance name, as last listed (Consul only).
    replicas: Mutex<Option<crate::replicas::Replicas>>,
    metrics_hook: std::sync::OnceLock<MetricsHook>,
    /// Held by a store sync from start to end: two syncs never interleave (a later listing
    /// applied before an earlier one would be undone by it). Reconfigure calls do not take
    /// it: a sync releases the state lock while it looks instances up.
    syncing: tokio::sync::Mutex<()>,
    /// Held (written) by the restore at start. The admin API answers during it: a reconfigure
    /// goes ahead (and wins over the stored copy), a remove waits for it, since what it
    /// removes may not be restored yet.
    restoring: tokio::sync::RwLock<()>,
    /// Whether `ping` says the proxy is ready (the binary clears it while it starts).
    ready: std::sync::atomic::AtomicBool,
    /// The TLS listener checks client certificates (`--client-ca`): without it, a
    /// `verifyClientSsl` service could never be reached, so such a call is refused.
    client_ca: std::sync::atomic::AtomicBool,
    /// Where TCP services' listeners are opened, and the proxy's own ports (set once by the
    /// binary; without it a `reqMode=tcp` call is refused).
    tcp: std::sync::OnceLock<(Arc<dyn TcpPorts>, ReservedPorts)>,
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
                store: store.routes_mirror(&follow),
                follow,
                users,
                state: tokio::sync::Mutex::new(State::default()),
                queue: Mutex::new(Vec::new()),
                last_change: Mutex::new(None),
                identity: std::sync::OnceLock::new(),
                instance_seq: AtomicU64::new(0),
                counters: AdminCounters::default(),
                registry: Mutex::new(RegistryHealth::default()),
                publish_wanted: Arc::new(Notify::new()),
                table_changed: Arc::new(Notify::new()),
                replicas: Mutex::new(None),
                metrics_hook: std::sync::OnceLock::new(),
                syncing: tokio::sync::Mutex::new(()),
                restoring: tokio::sync::RwLock::new(()),
                ready: std::sync::atomic::AtomicBool::new(true),
                client_ca: std::sync::atomic::AtomicBool::new(false),
                tcp: std::sync::OnceLock::new(),
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
        let restoring = self.inner.restoring.write().await;
        let loaded = self.inner.store.load().await;
        let index = match loaded {
            Ok((stored, index)) => {
                if self.inner.store.is_consul() {
                    self.inner.registry_answered(Ok(()));
                }
                let services = services_from(stored);
                let restored = services.len();
                self.sync_from_store(services).await;
                tracing::info!(services = restored, "routes restored from the store");
                self.check_consul_token().await;
                index
            }
            Err(StoreError::Consul(err)) => {
                tracing::warn!(error = %err, "cannot load routes from Consul yet; serving none until it answers");
                self.inner.registry_answered(Err(err.to_string()));
                0
            }
            Err(err) => return Err(err),
        };
        drop(restoring);
        if let Discovery::Consul(consul) = &self.inner.discovery {
            tokio::spawn(follow::follow_registry(Arc::downgrade(&self.inner), consul.clone()));
        }
        // Another replica's reconfigure or remove reaches this one through the store.
        StoreMirror::follow(&self.inner, index);
        Ok(())
    }

    /// With Consul's ACLs on and no token (or one Consul does not know), Consul 1.8 answers
    /// reads with nothing rather than refusing them: the store looks empty and every service
    /// unknown. Said once at start, with what to set; the calls that fail say it again.
    async fn check_consul_token(&self) {
        let Discovery::Consul(consul) = &self.inner.discovery else { return };
        if let Err(err @ dfp_consul::ConsulError::PermissionDenied { .. }) =
            consul.check_token().await
        {
            tracing::warn!(error = %err, "Consul's ACLs will hide services and refuse writes to this proxy");
        }
    }

    /// Says whether the TLS listener checks client certificates (`--client-ca`); until this
    /// is called with `true`, a reconfigure with `verifyClientSsl=true` is refused (400).
    /// Services restored from the store are kept either way: theirs answer 403 to every
    /// request without a verified certificate, which is what they asked for.
    pub fn set_client_ca_configured(&self, configured: bool) {
        self.inner.client_ca.store(configured, Ordering::Relaxed);
    }

    /// Gives the controller the data plane's host for TCP services' listeners and the ports
    /// the proxy listens on itself (set once, before [`Controller::start`] so that restored
    /// TCP services get their listeners; later calls are ignored).
    pub fn set_tcp_ports(&self, ports: Arc<dyn TcpPorts>, reserved: ReservedPorts) {
        let _ = self.inner.tcp.set((ports, reserved));
    }

    /// Whether a TCP service's `port` is accepting connections (`false` when it could not be
    /// listened on at restore, or no listener host was given).
    pub fn tcp_listening(&self, port: u16) -> bool {
        self.inner.tcp.get().is_some_and(|(ports, reserved)| {
            reserved.https == Some(port) || ports.is_listening(port)
        })
    }

    /// Whether the proxy serves what it has stored: `ping` answers 503 until then. The binary
    /// clears it before the admin API opens and sets it once the restore is done and the
    /// data plane runs, so a health check that pings sees the proxy ready only then, while
    /// reconfigure calls are answered from the start. Ready unless cleared.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
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

    /// Says who this proxy is (set once; later calls are ignored).
    pub fn set_identity(&self, identity: Identity) {
        let _ = self.inner.identity.set(identity);
    }

    /// Who this proxy is, once the binary has said.
    pub fn identity(&self) -> Option<&Identity> {
        self.inner.identity.get()
    }

    /// The last table published, if any change was made since the start.
    pub fn last_change(&self) -> Option<LastChange> {
        self.inner.last_change.lock().ok().and_then(|last| last.clone())
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
        let (stored, _) = self.inner.store.load().await.map_err(|err| {
            AdminError::StoreUnavailable { what: format!("cannot read the stored routes: {err}") }
        })?;
        self.inner.sync_from_store(services_from(stored), None).await;
        Ok(self.inner.table.load().version())
    }

    /// Makes the routes match `desired` (the store's content): adds and updates what differs,
    /// removes what is gone, in one table swap. Nothing is written back to the store.
    pub(crate) async fn sync_from_store(&self, desired: BTreeMap<String, Params>) {
        self.inner.sync_from_store(desired, None).await;
    }
}

impl Controller {
    pub(crate) fn weak_inner(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// The replicas sharing the instance name, as last listed (None standalone, or before
    /// the first listing).
    pub(crate) fn replicas(&self) -> Option<crate::replicas::Replicas> {
        self.inner.replicas.lock().ok().and_then(|r| r.clone())
    }
}

impl Inner {
    pub(crate) fn set_replicas(&self, replicas: crate::replicas::Replicas) {
        if let Ok(mut current) = self.replicas.lock() {
            *current = Some(replicas);
        }
    }

    /// Makes `table` live, noting why for the dashboard. Every table the controller makes
    /// goes live here.
    fn publish(&self, table: dfp_routing::RouteTable, cause: String) {
        let table_version = table.version();
        self.table.publish(table);
        self.table_changed.notify_one();
        if let Ok(mut last) = self.last_change.lock() {
            *last = Some(LastChange { table_version, at: std::time::Instant::now(), cause });
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
                    // Unreachable, or refused by its ACLs (the error says which).
                    tracing::warn!(%error, "Consul cannot be used; serving the last table");
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
            Err(AdminError::RegistryUnavailable { what } | AdminError::RegistryDenied { what }) => {
                self.registry_answered(Err(what.clone()));
            }
            _ => self.registry_answered(Ok(())),
        }
    }

    pub(crate) fn follow_config(&self) -> &FollowConfig {
        &self.follow
    }

    /// The listener host for TCP services (set by the binary).
    pub(crate) fn tcp_ports(&self) -> Option<&Arc<dyn TcpPorts>> {
        self.tcp.get().map(|(ports, _)| ports)
    }

    /// Refuses a TCP port the proxy cannot give a service: one of its own listeners' (409),
    /// or any when no listener host was given.
    pub(crate) fn check_tcp_port(&self, request: &ReconfigureRequest) -> Result<(), AdminError> {
        let Some(port) = request.tcp_port else { return Ok(()) };
        let Some((_, reserved)) = self.tcp.get() else {
            return Err(AdminError::InvalidParameter {
                name: "reqMode",
                value: "tcp".to_owned(),
                reason: "this proxy was started without TCP listeners; route the service over \
                         HTTP (servicePath) instead"
                    .to_owned(),
            });
        };
        if reserved.https == Some(port) && request.stream_tls == StreamTls::Passthrough {
            return Ok(());
        }
        match reserved.owner(port) {
            Some(listener) => Err(AdminError::PortReserved { port, listener }),
            None => Ok(()),
        }
    }

    /// Whether `request`'s port is the HTTPS listener's, shared by `reqMode=sni` services:
    /// the data plane's TLS listener has it, so it is never bound, served or closed here.
    fn on_https_listener(&self, request: &ReconfigureRequest) -> bool {
        self.tcp.get().is_some_and(|(_, reserved)| {
            reserved.https.is_some() && reserved.https == request.tcp_port
        })
    }

    /// Binds a TCP service's port before its change is stored and published; `Some(port)`
    /// when this call bound it (and must close it again if the change fails).
    pub(crate) fn bind_tcp(&self, request: &ReconfigureRequest) -> Result<Option<u16>, AdminError> {
        let (Some(port), Some(ports)) = (request.tcp_port, self.tcp_ports()) else {
            return Ok(None);
        };
        if self.on_https_listener(request) {
            return Ok(None);
        }
        match ports.bind(port) {
            Ok(true) => Ok(Some(port)),
            Ok(false) => Ok(None),
            Err(source) => Err(AdminError::PortUnavailable { port, source }),
        }
    }

    /// After a table went live: `new` (a service's port now, if any) accepts, and `old` (its
    /// port before) stops accepting unless it is the same port or the live table still
    /// routes it (services chosen by TLS server name share a port).
    pub(crate) fn settle_tcp(&self, old: Option<u16>, new: Option<u16>) {
        let Some(ports) = self.tcp_ports() else { return };
        if let Some(old) = old.filter(|old| Some(*old) != new) {
            if !self.table.load().tcp_ports().any(|(port, _)| port == old) {
                ports.close(old);
            }
        }
        if let Some(new) = new {
            ports.serve(new);
        }
    }
}

/// Publishes instance changes: waits for a change, gathers the burst for the coalescing
/// window, then publishes them in one table change. Ends when the controller is gone.
/// The routes' side of the store mirror: a listing becomes a store sync.
impl Mirrored for Inner {
    fn mirror(&self) -> &StoreMirror {
        &self.store
    }

    async fn apply(self: Arc<Self>, stored: BTreeMap<String, Vec<u8>>, mark: u64) -> bool {
        self.sync_from_store(services_from(stored), Some(mark)).await
    }

    fn answered(&self, outcome: Result<(), &dfp_consul::ConsulError>) {
        self.registry_answered(outcome.map_err(ToString::to_string));
    }
}

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
