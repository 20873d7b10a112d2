//! The route table, its builder and the handle that publishes it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::backend::{BackendStats, InstanceHealth, Upstream};
use crate::condition::{NoFields, PathPattern, PathType, RequestFields, RouteConditions};
use crate::policy::{Domain, ServicePolicy};
use crate::{Backend, PathPrefix};

/// Why a table could not be built. The live table is never touched by a failed build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error(
        "path {path}{} is already routed to service {owner:?} with the same conditions; remove \
         it from {owner:?} first, or choose another path or other conditions (pathType, \
         serviceHeader, userAgent) for {service:?}",
        host_suffix(domain.as_ref())
    )]
    PathOwned { path: String, domain: Option<Domain>, owner: String, service: String },
    #[error(
        "service {owner:?} is already the default backend; remove isDefaultBackend from it \
         before making {service:?} the default"
    )]
    DefaultTaken { owner: String, service: String },
    #[error("service {0:?} was added twice to one table")]
    DuplicateService(String),
    #[error("service name is empty")]
    EmptyServiceName,
    #[error("path {path} could not be indexed: {reason}")]
    Index { path: PathPrefix, reason: String },
}

fn host_suffix(domain: Option<&Domain>) -> String {
    domain.map(|d| format!(" on {d}")).unwrap_or_default()
}

/// What a lookup found: the backend that owns the path and the index node that matched (the
/// route's prefix, or for a `pathType` route its anchor; `None` when the default backend
/// answered).
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'t> {
    pub backend: &'t Arc<Backend>,
    pub prefix: Option<&'t PathPrefix>,
}

/// A service's entry in a table, for reporting (`config`).
#[derive(Debug, Clone, Copy)]
pub struct ServiceRoutes<'t> {
    pub backend: &'t Arc<Backend>,
    pub prefixes: &'t [PathPrefix],
    /// `servicePath` values under a `pathType` (then `prefixes` is empty).
    pub patterns: &'t [PathPattern],
    /// `serviceHeader`, `userAgent`.
    pub conditions: &'t RouteConditions,
    pub domains: &'t [Domain],
    pub excluded: &'t [PathPrefix],
    pub default_backend: bool,
    /// `serviceColor`: the instances are the registry's `<name>-<color>`.
    pub color: Option<&'t str>,
}

/// What a service asks of the table: its paths, and optionally the hosts they apply to, the
/// paths below them it does not own, whether it is the default backend, and its policy.
#[derive(Debug, Clone, Default)]
pub struct ServiceSpec {
    pub name: String,
    /// The segment-aware prefixes it owns (no `pathType`).
    pub prefixes: Vec<PathPrefix>,
    /// Its `servicePath` values under a `pathType`.
    pub patterns: Vec<PathPattern>,
    /// What a request's fields must show for its paths to take it (`serviceHeader`,
    /// `userAgent`); the default backend role is not conditional.
    pub conditions: RouteConditions,
    /// Empty: any host.
    pub domains: Vec<Domain>,
    pub excluded: Vec<PathPrefix>,
    pub default_backend: bool,
    pub policy: ServicePolicy,
    /// `serviceColor`: the instances were looked up as `<name>-<color>` (shown, not used here).
    pub color: Option<String>,
}

impl ServiceSpec {
    pub fn new(name: &str, prefixes: &[PathPrefix]) -> Self {
        ServiceSpec { name: name.to_owned(), prefixes: prefixes.to_vec(), ..ServiceSpec::default() }
    }
}

/// One service in a built table.
struct ServiceSlot {
    backend: Arc<Backend>,
    prefixes: Vec<PathPrefix>,
    patterns: Vec<PathPattern>,
    conditions: RouteConditions,
    domains: Vec<Domain>,
    excluded: Vec<PathPrefix>,
    color: Option<String>,
}

impl ServiceSlot {
    /// Whether one of the service's excluded paths owns `path` (segment-aware).
    fn excludes(&self, path: &str) -> bool {
        self.excluded.iter().any(|e| {
            let e = e.as_str();
            path.strip_prefix(e).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// An immutable routing table: for a host and a path, the owning backend.
///
/// Hosts first: routes of services with a matching `serviceDomain` (exact name, then a
/// one-label wildcard), then routes for any host, then the default backend. Within each, the
/// longest segment-aware prefix wins, walking a radix tree (private to this crate) keyed by
/// path bytes, so lookup cost depends on the request, not on the number of routes.
///
/// Each node of the tree holds its candidates in order: routes with conditions (a `pathType`
/// pattern, `serviceHeader`, `userAgent`) first, the one unconditioned route last (see
/// [`Candidate`] for the order among conditioned ones). The first candidate whose conditions
/// hold and whose service does not exclude the path wins; when none does, the lookup goes on
/// at the next shorter node, as it does for a path a service excludes.
pub struct RouteTable {
    version: u64,
    any_host: matchit::Router<usize>,
    by_host: HashMap<Box<str>, matchit::Router<usize>>,
    by_wildcard: HashMap<Box<str>, matchit::Router<usize>>,
    default_service: Option<usize>,
    routes: Vec<Node>,
    services: Vec<ServiceSlot>,
    /// Counters of services routed by an earlier table and not by this one, by name: a
    /// removed service's series go on being reported (a counter that vanished and came back
    /// from zero would look like a reset to a scraper), and a service routed again resumes
    /// them. Carried from table to table like the rest of a service's state.
    retired: Vec<(Arc<str>, Arc<BackendStats>)>,
}

/// A node of the radix index: a segment-aware prefix and the routes that hang off it.
struct Node {
    prefix: PathPrefix,
    candidates: Box<[Candidate]>,
}

/// A route at a node, with what it needs checked (`None`: nothing; the common case).
///
/// Order at one node, fixed when the table is built: conditioned routes first, by path
/// specificity (`path` exact, then `path_beg` or a plain prefix with header conditions,
/// longer value first, then `path_end`, longer first, then `path_reg`), then by the number
/// of conditions (more first: each `serviceHeader` entry counts one, a `userAgent` list one),
/// then by service name and path text; the unconditioned route last.
struct Candidate {
    service: usize,
    test: Option<Box<RouteTest>>,
}

/// What a conditioned route checks: its `pathType` pattern (none for a prefix route) and its
/// fields conditions.
struct RouteTest {
    pattern: Option<PathPattern>,
    conditions: RouteConditions,
}

impl RouteTest {
    fn matches(&self, path: &str, fields: &dyn RequestFields) -> bool {
        self.pattern.as_ref().is_none_or(|p| p.matches(path)) && self.conditions.matches(fields)
    }
}

/// The key a service name is compared by: ASCII lowercase, as Consul compares service names
/// (and DNS compares host names). `Books-ms` and `books-ms` are one service.
pub fn service_key(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

impl RouteTable {
    /// The empty table a proxy starts with: every lookup misses.
    pub fn empty() -> Self {
        RouteTable {
            version: 0,
            any_host: matchit::Router::new(),
            by_host: HashMap::new(),
            by_wildcard: HashMap::new(),
            default_service: None,
            routes: Vec::new(),
            services: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// The version this table was built as; each swap publishes a higher one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Finds the service owning `path` (the request path, without query string) for any host.
    pub fn lookup(&self, path: &str) -> Option<RouteMatch<'_>> {
        self.lookup_host(None, path)
    }

    /// Finds the service owning `path` on `host` (the request's `Host`, any case, with or
    /// without a port), for a request without fields: routes with `serviceHeader` or
    /// `userAgent` are passed over.
    pub fn lookup_host(&self, host: Option<&str>, path: &str) -> Option<RouteMatch<'_>> {
        self.lookup_request(host, path, &NoFields)
    }

    /// Finds the service owning `path` on `host` for a request with `fields` (read only for
    /// the conditioned routes at the nodes the lookup visits).
    pub fn lookup_request(
        &self,
        host: Option<&str>,
        path: &str,
        fields: &dyn RequestFields,
    ) -> Option<RouteMatch<'_>> {
        if !self.by_host.is_empty() || !self.by_wildcard.is_empty() {
            if let Some(host) = host.and_then(normalise_host) {
                if let Some(found) =
                    self.by_host.get(host.as_ref()).and_then(|r| self.find(r, path, fields))
                {
                    return Some(found);
                }
                let parent = host.split_once('.').map(|(_, rest)| rest);
                if let Some(found) = parent
                    .and_then(|p| self.by_wildcard.get(p))
                    .and_then(|r| self.find(r, path, fields))
                {
                    return Some(found);
                }
            }
        }
        self.find(&self.any_host, path, fields).or_else(|| {
            self.default_service
                .map(|i| RouteMatch { backend: &self.services[i].backend, prefix: None })
        })
    }

    /// The longest owner of `path` in `index` whose conditions hold and that does not exclude
    /// it.
    fn find<'t>(
        &'t self,
        index: &'t matchit::Router<usize>,
        path: &str,
        fields: &dyn RequestFields,
    ) -> Option<RouteMatch<'t>> {
        let mut probe = path;
        loop {
            let found = index.at(probe).ok()?;
            let Node { prefix, candidates } = &self.routes[*found.value];
            for candidate in candidates.iter() {
                if candidate.test.as_ref().is_some_and(|t| !t.matches(path, fields)) {
                    continue;
                }
                let slot = &self.services[candidate.service];
                if !slot.excludes(path) {
                    return Some(RouteMatch { backend: &slot.backend, prefix: Some(prefix) });
                }
            }
            // No candidate here: ask again for the owners of the prefix's parent (all shorter).
            if prefix.is_root() {
                return None;
            }
            probe = match prefix.as_str().rfind('/') {
                Some(0) | None => "/",
                Some(i) => &prefix.as_str()[..i],
            };
        }
    }

    /// The routed services, ordered by [`service_key`].
    pub fn services(&self) -> impl ExactSizeIterator<Item = ServiceRoutes<'_>> {
        self.services.iter().enumerate().map(|(i, s)| ServiceRoutes {
            backend: &s.backend,
            prefixes: &s.prefixes,
            patterns: &s.patterns,
            conditions: &s.conditions,
            domains: &s.domains,
            excluded: &s.excluded,
            default_backend: self.default_service == Some(i),
            color: s.color.as_deref(),
        })
    }

    /// The backend of a service by name, compared as [`service_key`] compares names.
    pub fn service(&self, name: &str) -> Option<&Arc<Backend>> {
        let key = service_key(name);
        self.services
            .binary_search_by(|s| service_key(s.backend.service()).as_ref().cmp(key.as_ref()))
            .ok()
            .map(|i| &self.services[i].backend)
    }

    /// Counters of services that earlier tables routed and this one does not (removed
    /// services), by name, ordered by name. Their series stay in `/metrics`.
    pub fn retired_stats(&self) -> impl ExactSizeIterator<Item = (&str, &BackendStats)> {
        self.retired.iter().map(|(name, stats)| (name.as_ref(), stats.as_ref()))
    }
}

/// `Host` without port or trailing dot, lowercase. Borrowed unless it had uppercase letters.
fn normalise_host(host: &str) -> Option<std::borrow::Cow<'_, str>> {
    let host = if host.starts_with('[') {
        // An IPv6 literal: never a configured domain name.
        return None;
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("version", &self.version)
            .field("services", &self.services.iter().map(|s| &s.backend).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RouteTable`] off to the side; nothing is visible until it is published.
///
/// Services are keyed by [`service_key`]: adding `Books-ms` to a builder that has `books-ms`
/// is a duplicate, and state carried from an earlier table follows the name in any case.
#[derive(Default)]
pub struct RouteTableBuilder {
    /// By service key: (spec, instances).
    services: BTreeMap<Arc<str>, (ServiceSpec, Vec<SocketAddr>)>,
    /// (host or any, route with its conditions as text) -> owner.
    owners: HashMap<(Option<Domain>, String), Arc<str>>,
    default_owner: Option<Arc<str>>,
    /// By service key.
    carried: HashMap<Arc<str>, Carried>,
    /// Counters of services no longer routed (by service key: display name, counters).
    retired: BTreeMap<Arc<str>, (Arc<str>, Arc<BackendStats>)>,
}

/// What a service keeps from one table to the next.
struct Carried {
    /// The name the service had (its counters' label if it is not routed again).
    name: Arc<str>,
    cursor: Arc<AtomicUsize>,
    stats: Arc<BackendStats>,
    health: HashMap<SocketAddr, Arc<InstanceHealth>>,
}

impl RouteTableBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps, for every service that `previous` already routes, its round-robin position
    /// (so a swap does not send the next requests back to each first instance), its counters,
    /// and the passive health of the instances it keeps (an ejected instance stays ejected).
    /// The counters of services `previous` routes and the new table will not, and of those
    /// it had retired already, become the new table's retired counters (a service added
    /// again resumes them).
    pub fn carry_state_from(&mut self, previous: &RouteTable) -> &mut Self {
        for (name, stats) in &previous.retired {
            self.retired.insert(Arc::from(service_key(name)), (name.clone(), stats.clone()));
        }
        for slot in &previous.services {
            let backend = &slot.backend;
            let health = backend.instances.iter().map(|u| (u.addr(), u.health_arc())).collect();
            let key: Arc<str> = Arc::from(service_key(&backend.service));
            self.retired.remove(&key);
            self.carried.insert(
                key,
                Carried {
                    name: backend.service.clone(),
                    cursor: backend.cursor.clone(),
                    stats: backend.stats.clone(),
                    health,
                },
            );
        }
        self
    }

    /// Adds a service with the paths it owns (for any host) and its instances.
    pub fn add_service(
        &mut self,
        name: &str,
        prefixes: &[PathPrefix],
        instances: &[SocketAddr],
    ) -> Result<&mut Self, BuildError> {
        self.add(ServiceSpec::new(name, prefixes), instances)
    }

    /// Adds a service as `spec` describes it, with its instances (possibly none yet).
    ///
    /// Refuses a route another service already has on one of the same hosts (or for any
    /// host): the same path with the same path type and the same conditions. Routes that
    /// differ in any condition may share a path; the lookup order decides between them.
    /// Refuses a second default backend too.
    pub fn add(
        &mut self,
        mut spec: ServiceSpec,
        instances: &[SocketAddr],
    ) -> Result<&mut Self, BuildError> {
        if spec.name.is_empty() {
            return Err(BuildError::EmptyServiceName);
        }
        let key: Arc<str> = Arc::from(service_key(&spec.name));
        if self.services.contains_key(&key) {
            return Err(BuildError::DuplicateService(spec.name.clone()));
        }
        spec.prefixes.sort();
        spec.prefixes.dedup();
        spec.patterns.sort_by(|a, b| (a.kind(), a.as_str()).cmp(&(b.kind(), b.as_str())));
        spec.patterns.dedup();
        spec.domains.sort();
        spec.domains.dedup();
        let hosts: Vec<Option<Domain>> = if spec.domains.is_empty() {
            vec![None]
        } else {
            spec.domains.iter().cloned().map(Some).collect()
        };
        let routes = route_keys(&spec);
        for host in &hosts {
            for route in &routes {
                if let Some(owner) = self.owners.get(&(host.clone(), route.clone())) {
                    return Err(BuildError::PathOwned {
                        path: route.clone(),
                        domain: host.clone(),
                        owner: owner.to_string(),
                        service: spec.name.clone(),
                    });
                }
            }
        }
        if spec.default_backend {
            if let Some(owner) = &self.default_owner {
                return Err(BuildError::DefaultTaken {
                    owner: owner.to_string(),
                    service: spec.name.clone(),
                });
            }
        }
        let name: Arc<str> = Arc::from(spec.name.as_str());
        for host in hosts {
            for route in &routes {
                self.owners.insert((host.clone(), route.clone()), name.clone());
            }
        }
        if spec.default_backend {
            self.default_owner = Some(name.clone());
        }
        self.services.insert(key, (spec, instances.to_vec()));
        Ok(self)
    }

    /// Builds the table as `version`.
    pub fn build(self, version: u64) -> Result<RouteTable, BuildError> {
        let mut table = RouteTable { version, ..RouteTable::empty() };
        // (index, node prefix) -> candidates with their order; ordered maps so that a table
        // built twice from the same services is the same table.
        let mut nodes: BTreeMap<(IndexId, PathPrefix), Vec<(Order, Candidate)>> = BTreeMap::new();
        let mut retired = self.retired;
        for (key, carried) in &self.carried {
            if !self.services.contains_key(key) {
                retired.insert(key.clone(), (carried.name.clone(), carried.stats.clone()));
            }
        }
        for (key, (spec, instances)) in self.services {
            let routes = candidates(&spec, table.services.len(), &key);
            let carried = self.carried.get(&key);
            let resumed = retired.remove(&key).map(|(_, stats)| stats);
            let upstreams = instances
                .iter()
                .map(|&addr| {
                    let health = carried.and_then(|c| c.health.get(&addr)).cloned();
                    Upstream::new(&spec.name, addr, health.unwrap_or_default())
                })
                .collect();
            let stats = carried.map(|c| c.stats.clone()).or(resumed).unwrap_or_default();
            let backend = Arc::new(Backend {
                service: Arc::from(spec.name.as_str()),
                instances: upstreams,
                cursor: carried.map(|c| c.cursor.clone()).unwrap_or_default(),
                stats,
                policy: spec.policy,
            });
            let service_index = table.services.len();
            if spec.default_backend {
                table.default_service = Some(service_index);
            }
            for (anchor, order, candidate) in routes {
                let indexes: Vec<IndexId> = if spec.domains.is_empty() {
                    vec![IndexId::Any]
                } else {
                    spec.domains.iter().map(IndexId::of).collect()
                };
                for index in indexes {
                    let test = candidate.test.as_ref().map(|t| {
                        Box::new(RouteTest {
                            pattern: t.pattern.clone(),
                            conditions: t.conditions.clone(),
                        })
                    });
                    nodes
                        .entry((index, anchor.clone()))
                        .or_default()
                        .push((order.clone(), Candidate { service: candidate.service, test }));
                }
            }
            table.services.push(ServiceSlot {
                backend,
                prefixes: spec.prefixes,
                patterns: spec.patterns,
                conditions: spec.conditions,
                domains: spec.domains,
                excluded: spec.excluded,
                color: spec.color,
            });
        }
        for ((index, prefix), mut found) in nodes {
            found.sort_by(|a, b| a.0.cmp(&b.0));
            let route_index = table.routes.len();
            let router = match index {
                IndexId::Any => &mut table.any_host,
                IndexId::Host(host) => table.by_host.entry(host).or_default(),
                IndexId::Wildcard(parent) => table.by_wildcard.entry(parent).or_default(),
            };
            for pattern in index_patterns(&prefix) {
                router.insert(pattern, route_index).map_err(|e| BuildError::Index {
                    path: prefix.clone(),
                    reason: e.to_string(),
                })?;
            }
            let candidates = found.into_iter().map(|(_, c)| c).collect();
            table.routes.push(Node { prefix, candidates });
        }
        table.retired = retired.into_values().collect();
        table.retired.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(table)
    }
}

impl fmt::Debug for RouteTableBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTableBuilder")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Which radix index a node goes in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum IndexId {
    Any,
    Host(Box<str>),
    Wildcard(Box<str>),
}

impl IndexId {
    fn of(domain: &Domain) -> Self {
        match domain {
            Domain::Exact(host) => IndexId::Host(host.clone()),
            Domain::Wildcard(parent) => IndexId::Wildcard(parent.clone()),
        }
    }
}

/// A candidate's place at its node (see [`Candidate`]): compared as a tuple, smallest first.
/// (unconditioned, path rank, longer value first, more conditions first, service, path).
type Order = (bool, u8, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>, Arc<str>, String);

/// A service's routes as (node prefix, order, candidate). The test is built once per route and
/// cloned into each host's index.
fn candidates(
    spec: &ServiceSpec,
    service: usize,
    key: &Arc<str>,
) -> Vec<(PathPrefix, Order, Candidate)> {
    use std::cmp::Reverse;
    let conditions = &spec.conditions;
    let weight = Reverse(conditions.weight());
    let mut out = Vec::new();
    for prefix in &spec.prefixes {
        let test = (!conditions.is_empty())
            .then(|| Box::new(RouteTest { pattern: None, conditions: conditions.clone() }));
        let order = (
            test.is_none(),
            1,
            Reverse(prefix.as_str().len()),
            weight,
            key.clone(),
            prefix.as_str().to_owned(),
        );
        out.push((prefix.clone(), order, Candidate { service, test }));
    }
    for pattern in &spec.patterns {
        let (rank, len) = match pattern.kind() {
            PathType::Exact => (0, 0),
            PathType::Beg => (1, pattern.as_str().len()),
            PathType::End => (2, pattern.as_str().len()),
            PathType::Regex => (3, 0),
        };
        let test =
            Box::new(RouteTest { pattern: Some(pattern.clone()), conditions: conditions.clone() });
        let order = (false, rank, Reverse(len), weight, key.clone(), pattern.as_str().to_owned());
        out.push((pattern.anchor().clone(), order, Candidate { service, test: Some(test) }));
    }
    out
}

/// A service's routes as the text ownership is keyed by (and conflicts are reported with):
/// `/api`, `/api (pathType=path_beg)`, `/api (userAgent=mobile)`. Two services with the same
/// text on one host collide.
fn route_keys(spec: &ServiceSpec) -> Vec<String> {
    let conditions = spec.conditions.to_string();
    let describe =
        |path: &str, path_type: Option<PathType>| match (path_type, conditions.is_empty()) {
            (None, true) => path.to_owned(),
            (None, false) => format!("{path} ({conditions})"),
            (Some(t), true) => format!("{path} (pathType={t})"),
            (Some(t), false) => format!("{path} (pathType={t} {conditions})"),
        };
    spec.prefixes
        .iter()
        .map(|p| describe(p.as_str(), None))
        .chain(spec.patterns.iter().map(|p| describe(p.as_str(), Some(p.kind()))))
        .collect()
}

/// The radix-tree patterns that make `prefix` own its path, the path with a trailing slash, and
/// every path below it. A prefix never holds `{` or `}` (see [`PathPrefix`]), so it needs no
/// escaping.
fn index_patterns(prefix: &PathPrefix) -> Vec<String> {
    if prefix.is_root() {
        vec!["/".to_owned(), "/{*rest}".to_owned()]
    } else {
        let p = prefix.as_str();
        vec![p.to_owned(), format!("{p}/"), format!("{p}/{{*rest}}")]
    }
}

/// The one place the live table is published. Cloning the handle shares the same table.
///
/// Readers call [`TableHandle::load`] on every request: wait-free, no lock. Writers build a
/// whole new table and [`TableHandle::publish`] it; in-flight requests keep the table they
/// loaded until they drop it.
#[derive(Clone)]
pub struct TableHandle {
    live: Arc<ArcSwap<RouteTable>>,
}

impl TableHandle {
    pub fn new(table: RouteTable) -> Self {
        TableHandle { live: Arc::new(ArcSwap::from_pointee(table)) }
    }

    /// The live table. Hold the guard briefly: never across an `.await`.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.live.load()
    }

    /// The live table as an owned `Arc`, for callers that keep it a while (reporting).
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.live.load_full()
    }

    /// Makes `table` the live table, at once, for every reader.
    pub fn publish(&self, table: RouteTable) {
        self.live.store(Arc::new(table));
    }
}

impl Default for TableHandle {
    fn default() -> Self {
        TableHandle::new(RouteTable::empty())
    }
}

impl fmt::Debug for TableHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableHandle").field("version", &self.load().version()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Domain;

    fn p(s: &str) -> PathPrefix {
        PathPrefix::parse(s).expect("test prefixes are valid")
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn table(routes: &[(&str, &[&str])]) -> RouteTable {
        let mut b = RouteTableBuilder::new();
        for (i, (service, paths)) in routes.iter().enumerate() {
            let prefixes: Vec<_> = paths.iter().map(|s| p(s)).collect();
            let port = u16::try_from(i).expect("few services") + 1;
            b.add_service(service, &prefixes, &[addr(port)]).expect("no conflicts in test table");
        }
        b.build(1).expect("test table builds")
    }

    /// Looks `path` up in a table of `routes` and checks which service (if any) gets it.
    fn check(routes: &[(&str, &[&str])], path: &str, expected: Option<&str>) {
        let t = table(routes);
        let got = t.lookup(path).map(|m| m.backend.service().to_owned());
        assert_eq!(got.as_deref(), expected, "routes {routes:?}, path {path:?}");
    }

    /// A table as data: (service, its paths).
    type Routes = &'static [(&'static str, &'static [&'static str])];

    const BOOKS: Routes = &[("books", &["/api/v1/books"])];
    const NESTED: Routes = &[
        ("api", &["/api"]),
        ("books", &["/api/v1/books"]),
        ("authors", &["/api/v1/authors", "/authors"]),
    ];
    const WITH_ROOT: Routes = &[("web", &["/"]), ("books", &["/api/v1/books"])];

    #[test]
    fn routing_semantics() {
        #[rustfmt::skip]
        let cases: &[(Routes, &str, Option<&str>)] = &[
            // segment-aware prefix
            (BOOKS, "/api/v1/books", Some("books")),
            (BOOKS, "/api/v1/books/", Some("books")),
            (BOOKS, "/api/v1/books/1", Some("books")),
            (BOOKS, "/api/v1/books/1/chapters/2", Some("books")),
            (BOOKS, "/api/v1/booksellers", None),
            (BOOKS, "/api/v1/book", None),
            (BOOKS, "/api/v1", None),
            (BOOKS, "/", None),
            (BOOKS, "/API/v1/books", None),
            (BOOKS, "", None),
            // longest prefix wins, and a miss deeper down falls back to the shorter owner
            (NESTED, "/api", Some("api")),
            (NESTED, "/api/v1", Some("api")),
            (NESTED, "/api/v1/books/7", Some("books")),
            (NESTED, "/api/v1/booksellers", Some("api")),
            (NESTED, "/api/v1/bo", Some("api")),
            (NESTED, "/api/v1/authors", Some("authors")),
            (NESTED, "/api/v2/books", Some("api")),
            (NESTED, "/apix", None),
            (NESTED, "/authors/x", Some("authors")),
            (NESTED, "/author", None),
            // `/` catches everything nothing longer owns
            (WITH_ROOT, "/", Some("web")),
            (WITH_ROOT, "/index.html", Some("web")),
            (WITH_ROOT, "/api/v1/booksellers", Some("web")),
            (WITH_ROOT, "/api/v1/books/1", Some("books")),
            (WITH_ROOT, "//x", Some("web")),
        ];
        for (routes, path, expected) in cases {
            check(routes, path, *expected);
        }
    }

    fn spec(name: &str, paths: &[&str], domains: &[&str], excluded: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            prefixes: paths.iter().map(|s| p(s)).collect(),
            domains: domains.iter().map(|d| Domain::parse(d).expect("valid domain")).collect(),
            excluded: excluded.iter().map(|s| p(s)).collect(),
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn hosts_first_then_any_host_then_default() {
        let mut b = RouteTableBuilder::new();
        b.add(spec("shop", &["/"], &["shop.example.com"], &[]), &[addr(1)]).expect("valid");
        b.add(spec("tenants", &["/"], &["*.tenants.example.com"], &[]), &[addr(2)]).expect("valid");
        b.add(spec("api", &["/api"], &[], &[]), &[addr(3)]).expect("valid");
        b.add(spec("shop-api", &["/api"], &["shop.example.com"], &[]), &[addr(4)]).expect("valid");
        let mut fallback = spec("fallback", &[], &[], &[]);
        fallback.default_backend = true;
        b.add(fallback, &[addr(5)]).expect("valid");
        let t = b.build(1).expect("builds");
        #[rustfmt::skip]
        let cases: &[(Option<&str>, &str, &str)] = &[
            (Some("shop.example.com"), "/cart", "shop"),
            (Some("SHOP.Example.com:8080"), "/cart", "shop"),
            (Some("shop.example.com."), "/cart", "shop"),
            (Some("shop.example.com"), "/api/x", "shop-api"),
            (Some("a.tenants.example.com"), "/x", "tenants"),
            (Some("a.b.tenants.example.com"), "/api", "api"),
            (Some("tenants.example.com"), "/x", "fallback"),
            (Some("other.example.com"), "/api/v1", "api"),
            (Some("other.example.com"), "/nothing", "fallback"),
            (None, "/api", "api"),
            (Some("[::1]:80"), "/api", "api"),
        ];
        for (host, path, want) in cases {
            let got = t.lookup_host(*host, path).map(|m| m.backend.service());
            assert_eq!(got, Some(*want), "host {host:?} path {path}");
        }
        let default = t.lookup_host(Some("x"), "/nothing").expect("default");
        assert!(default.prefix.is_none());
    }

    #[test]
    fn excluded_paths_fall_through_to_shorter_owners() {
        let mut b = RouteTableBuilder::new();
        b.add(spec("web", &["/"], &[], &[]), &[addr(1)]).expect("valid");
        b.add(spec("books", &["/api/books"], &[], &["/api/books/admin"]), &[addr(2)])
            .expect("valid");
        let t = b.build(1).expect("builds");
        let owner = |path: &str| t.lookup(path).map(|m| m.backend.service().to_owned());
        assert_eq!(owner("/api/books/7").as_deref(), Some("books"));
        assert_eq!(owner("/api/books/admin").as_deref(), Some("web"));
        assert_eq!(owner("/api/books/admin/x").as_deref(), Some("web"));
        assert_eq!(owner("/api/books/administrator").as_deref(), Some("books"));
    }

    #[test]
    fn hosts_and_defaults_have_one_owner() {
        let mut b = RouteTableBuilder::new();
        b.add(spec("a", &["/x"], &["a.example.com"], &[]), &[]).expect("valid");
        b.add(spec("b", &["/x"], &["b.example.com"], &[]), &[]).expect("same path, other host");
        b.add(spec("c", &["/x"], &[], &[]), &[]).expect("same path, any host");
        let err = b.add(spec("d", &["/x"], &["A.example.com"], &[]), &[]).expect_err("taken");
        assert!(err.to_string().contains("a.example.com"), "{err}");
        let mut first = spec("e", &[], &[], &[]);
        first.default_backend = true;
        b.add(first.clone(), &[]).expect("first default");
        first.name = "f".into();
        assert!(matches!(b.add(first, &[]), Err(BuildError::DefaultTaken { .. })));
    }

    #[test]
    fn a_path_has_one_owner() {
        let mut b = RouteTableBuilder::new();
        b.add_service("a", &[p("/x")], &[]).expect("first owner");
        let err = b.add_service("b", &[p("/x/")], &[]).expect_err("same path, other service");
        assert!(matches!(err, BuildError::PathOwned { ref owner, .. } if owner == "a"), "{err}");
        assert!(b.add_service("a", &[p("/y")], &[]).is_err(), "a service is added once");
    }

    /// A service with conditions: `paths` under `path_type` (none: plain prefixes),
    /// `serviceHeader`, `userAgent`.
    fn conditioned(
        name: &str,
        path_type: Option<PathType>,
        paths: &[&str],
        header: Option<&str>,
        agent: Option<&str>,
    ) -> ServiceSpec {
        let mut s = ServiceSpec::new(name, &[]);
        match path_type {
            None => s.prefixes = paths.iter().map(|x| p(x)).collect(),
            Some(t) => {
                s.patterns =
                    paths.iter().map(|x| PathPattern::parse(t, x).expect("valid")).collect();
            }
        }
        s.conditions = RouteConditions::parse(header, agent).expect("valid conditions");
        s
    }

    #[test]
    fn conditions_pick_among_routes_on_one_path() {
        use PathType::*;
        let mut b = RouteTableBuilder::new();
        let services = [
            conditioned("web", None, &["/"], None, None),
            conditioned("api", None, &["/api"], None, None),
            conditioned("mobile", None, &["/api"], None, Some("iphone,android")),
            conditioned("v3", None, &["/api"], Some("X-Version:3"), None),
            conditioned("v3-mobile", None, &["/api"], Some("X-Version:3"), Some("iphone")),
            conditioned("raw", Some(Beg), &["/api/v"], None, None),
            conditioned("exact", Some(Exact), &["/api/status"], None, None),
            conditioned("images", Some(End), &[".png"], None, None),
            conditioned("numbers", Some(Regex), &["^/n/[0-9]+$"], None, None),
            conditioned("legacy", Some(Beg), &["/leg"], None, None),
            conditioned("deep", None, &["/api/v1/deep"], None, None),
        ];
        for (i, s) in services.into_iter().enumerate() {
            b.add(s, &[addr(u16::try_from(i).expect("few") + 1)]).expect("no conflict");
        }
        let t = b.build(1).expect("builds");
        let iphone: &[(&str, &str)] = &[("User-Agent", "Mozilla (iPhone)")];
        let v3: &[(&str, &str)] = &[("x-version", "3")];
        let v3_iphone: &[(&str, &str)] = &[("x-version", "3"), ("user-agent", "iphone")];
        let v4: &[(&str, &str)] = &[("x-version", "4")];
        let none: &[(&str, &str)] = &[];
        #[rustfmt::skip]
        type Fields<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(&str, Fields<'_>, &str)] = &[
            // fields decide among the routes at /api; more conditions first
            ("/api/x", none, "api"),
            ("/api/x", iphone, "mobile"),
            ("/api/x", v3, "v3"),
            ("/api/x", v3_iphone, "v3-mobile"),
            ("/api/x", v4, "api"),
            // path_beg is a raw prefix hanging off /api: before the plain /api
            ("/api/v1", none, "raw"),
            ("/api/vx", iphone, "raw"),
            // ... but a longer plain prefix still wins
            ("/api/v1/deep/x", iphone, "deep"),
            // exact path only
            ("/api/status", iphone, "exact"),
            ("/api/status/x", none, "api"),
            // path_end and path_reg compete at /: only where no longer prefix owns the path
            ("/img/a.png", none, "images"),
            ("/api/a.png", none, "api"),
            ("/n/42", none, "numbers"),
            ("/n/42x", none, "web"),
            ("/legacy", none, "legacy"),
            ("/le", none, "web"),
        ];
        for (path, fields, want) in cases {
            let got = t.lookup_request(None, path, fields).map(|m| m.backend.service());
            assert_eq!(got, Some(*want), "path {path} fields {fields:?}");
        }
        // Without fields, header conditions never hold.
        assert_eq!(t.lookup("/api/x").map(|m| m.backend.service()), Some("api"));
    }

    #[test]
    fn conditioned_routes_fall_through_to_shorter_owners_or_miss() {
        let mut b = RouteTableBuilder::new();
        b.add(conditioned("bots", None, &["/api"], None, Some("googlebot")), &[]).expect("valid");
        b.add(conditioned("root", None, &["/"], Some("X-Env:prod"), None), &[]).expect("valid");
        let t = b.build(1).expect("builds");
        let owner = |fields: &[(&str, &str)]| {
            t.lookup_request(None, "/api/x", &fields).map(|m| m.backend.service().to_owned())
        };
        assert_eq!(owner(&[("user-agent", "Googlebot/2.1")]).as_deref(), Some("bots"));
        assert_eq!(owner(&[("x-env", "prod")]).as_deref(), Some("root"));
        assert_eq!(owner(&[("x-env", "dev")]), None, "no candidate anywhere: 404");
    }

    #[test]
    fn equal_conditions_on_one_path_conflict() {
        use PathType::*;
        let mut b = RouteTableBuilder::new();
        b.add(conditioned("a", None, &["/api"], None, Some("iphone")), &[]).expect("first");
        b.add(conditioned("b", None, &["/api"], None, None), &[]).expect("other conditions");
        b.add(conditioned("c", None, &["/api"], Some("X-V:1"), None), &[]).expect("other");
        b.add(conditioned("d", Some(Beg), &["/api"], None, None), &[]).expect("other type");
        b.add(conditioned("e", Some(Exact), &["/api"], None, None), &[]).expect("other type");
        let cases = [
            conditioned("x", None, &["/api"], None, Some("IPhone")),
            conditioned("x", None, &["/api/"], None, None),
            conditioned("x", None, &["/api"], Some("x-v : 1"), None),
            conditioned("x", Some(Beg), &["/api"], None, None),
        ];
        for spec in cases {
            let err = b.add(spec.clone(), &[]).expect_err("same path, same conditions");
            assert!(matches!(err, BuildError::PathOwned { .. }), "{spec:?}: {err}");
        }
        let err = b
            .add(conditioned("x", None, &["/api"], None, Some("iphone")), &[])
            .expect_err("duplicate");
        assert!(err.to_string().contains("/api (userAgent=iphone)"), "{err}");
    }

    #[test]
    fn service_names_compare_as_consul_compares_them() {
        let mut b = RouteTableBuilder::new();
        b.add_service("Books-ms", &[p("/b")], &[addr(1)]).expect("first");
        let err = b.add_service("books-MS", &[p("/c")], &[]).expect_err("the same service");
        assert!(matches!(err, BuildError::DuplicateService(_)), "{err}");
        let t = b.build(1).expect("builds");
        assert_eq!(t.service("BOOKS-MS").map(|b| b.service()), Some("Books-ms"), "display kept");

        // State follows the name in any case: counters carry to `books-ms`.
        t.service("books-ms").expect("routed").stats().record_response(200, 10);
        let mut next = RouteTableBuilder::new();
        next.carry_state_from(&t);
        next.add_service("books-ms", &[p("/b")], &[addr(1)]).expect("valid");
        let next = next.build(2).expect("builds");
        let stats = next.service("books-ms").expect("routed").stats();
        assert_eq!(stats.responses[1].load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_removed_services_counters_are_kept_and_resumed() {
        use std::sync::atomic::Ordering::Relaxed;
        let count = |t: &RouteTable| -> Vec<(String, u64)> {
            let live = t.services().map(|s| (s.backend.service(), s.backend.stats()));
            live.chain(t.retired_stats())
                .map(|(n, s)| (n.to_owned(), s.responses[1].load(Relaxed)))
                .collect()
        };
        let mut b = RouteTableBuilder::new();
        b.add_service("a", &[p("/a")], &[addr(1)]).expect("valid");
        b.add_service("b", &[p("/b")], &[addr(2)]).expect("valid");
        let first = b.build(1).expect("builds");
        first.service("b").expect("routed").stats().record_response(200, 1);

        // `b` removed: its counters stay, as retired, through any number of swaps.
        let mut tables = vec![first];
        for version in 2..=3 {
            let mut b = RouteTableBuilder::new();
            b.carry_state_from(tables.last().expect("a table"));
            b.add_service("a", &[p("/a")], &[addr(1)]).expect("valid");
            tables.push(b.build(version).expect("builds"));
        }
        let removed = tables.last().expect("a table");
        assert_eq!(count(removed), [("a".to_owned(), 0), ("b".to_owned(), 1)]);

        // Routed again (in another case): it resumes its counters, and is no longer retired.
        let mut b = RouteTableBuilder::new();
        b.carry_state_from(removed);
        b.add_service("a", &[p("/a")], &[addr(1)]).expect("valid");
        b.add_service("B", &[p("/b")], &[addr(2)]).expect("valid");
        let back = b.build(4).expect("builds");
        assert_eq!(back.retired_stats().len(), 0);
        assert_eq!(count(&back), [("a".to_owned(), 0), ("B".to_owned(), 1)], "ordered by key");
    }

    #[test]
    fn round_robin_is_exact() {
        let instances: Vec<_> = (1..=3).map(addr).collect();
        let mut b = RouteTableBuilder::new();
        b.add_service("s", &[p("/")], &instances).expect("valid");
        let t = b.build(1).expect("builds");
        let backend = t.lookup("/").expect("routed").backend;
        let mut hits = HashMap::new();
        for _ in 0..100 {
            *hits.entry(backend.next_instance(|| 0).expect("has instances").addr()).or_insert(0) +=
                1;
        }
        for i in &instances {
            assert!((33..=34).contains(&hits[i]), "{hits:?}");
        }
    }

    #[test]
    fn rotation_continues_across_swaps() {
        let instances: Vec<_> = (1..=2).map(addr).collect();
        let build = |previous: Option<&RouteTable>, version| {
            let mut b = RouteTableBuilder::new();
            if let Some(prev) = previous {
                b.carry_state_from(prev);
            }
            b.add_service("s", &[p("/")], &instances).expect("valid");
            b.build(version).expect("builds")
        };
        let first = build(None, 1);
        assert_eq!(
            first.service("s").and_then(|b| b.next_instance(|| 0)).map(|u| u.addr()),
            Some(addr(1))
        );
        let second = build(Some(&first), 2);
        assert_eq!(
            second.service("s").and_then(|b| b.next_instance(|| 0)).map(|u| u.addr()),
            Some(addr(2))
        );
    }

    #[test]
    fn no_instance_means_none() {
        let mut b = RouteTableBuilder::new();
        b.add_service("s", &[p("/s")], &[]).expect("valid");
        let t = b.build(1).expect("builds");
        assert_eq!(
            t.lookup("/s").expect("still routed").backend.next_instance(|| 0).map(|u| u.addr()),
            None
        );
    }

    #[test]
    fn handle_publishes_whole_tables() {
        let handle = TableHandle::default();
        let before = handle.snapshot();
        handle.publish(table(BOOKS));
        assert_eq!(before.version(), 0);
        assert!(before.lookup("/api/v1/books").is_none(), "old readers keep the old table");
        assert_eq!(handle.load().version(), 1);
        assert!(handle.load().lookup("/api/v1/books").is_some());
    }

    #[test]
    fn many_routes_build_and_resolve() {
        let mut b = RouteTableBuilder::new();
        for i in 0..10_000 {
            let name = format!("svc-{i}");
            b.add_service(&name, &[p(&format!("/api/{i}/items"))], &[addr(1)]).expect("valid");
        }
        let t = b.build(1).expect("builds");
        assert_eq!(t.lookup("/api/9999/items/3").map(|m| m.backend.service()), Some("svc-9999"));
        assert!(t.lookup("/api/9999/itemsx").is_none());
    }
}

/// Property tests: the radix-tree lookup agrees with the plain definition of
/// "longest segment-aware prefix" on random tables and paths, and never panics.
#[cfg(test)]
mod properties {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::RouteTableBuilder;
    use crate::PathPrefix;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("ab".to_owned()),
            Just("b".to_owned()),
            Just("api".to_owned()),
            "[a-c]{1,3}"
        ]
    }

    fn prefix() -> impl Strategy<Value = String> {
        proptest::collection::vec(segment(), 0..4).prop_map(|s| format!("/{}", s.join("/")))
    }

    fn request_path() -> impl Strategy<Value = String> {
        (proptest::collection::vec(segment(), 0..5), prop_oneof![Just(""), Just("/"), Just("x")])
            .prop_map(|(s, tail)| format!("/{}{tail}", s.join("/")))
    }

    /// The definition: `p` owns `path` when `p` is `/`, or `path` is `p`, or `path` starts with
    /// `p/`; the longest owner wins.
    fn reference<'a>(prefixes: &'a [String], path: &str) -> Option<&'a str> {
        prefixes
            .iter()
            .filter(|p| *p == "/" || path == p.as_str() || path.starts_with(&format!("{p}/")))
            .max_by_key(|p| p.len())
            .map(String::as_str)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn lookup_is_longest_segment_aware_prefix(
            raw in proptest::collection::btree_set(prefix(), 1..12),
            paths in proptest::collection::vec(request_path(), 1..16),
        ) {
            let prefixes: Vec<String> = raw.into_iter().collect();
            let mut builder = RouteTableBuilder::new();
            let addr = SocketAddr::from(([127, 0, 0, 1], 1));
            for p in &prefixes {
                // Each prefix is its own service, named after it.
                let parsed = PathPrefix::parse(p).expect("generated prefixes are valid");
                builder.add_service(p, &[parsed], &[addr]).expect("distinct prefixes");
            }
            let table = builder.build(1).expect("builds");
            for path in &paths {
                let got = table.lookup(path).map(|m| m.backend.service());
                prop_assert_eq!(got, reference(&prefixes, path), "path {}", path);
            }
        }

        #[test]
        fn parse_and_lookup_never_panic(input in "\\PC{0,40}", path in "\\PC{0,40}") {
            if let Ok(prefix) = PathPrefix::parse(&input) {
                let reparsed = PathPrefix::parse(prefix.as_str());
                prop_assert_eq!(reparsed, Ok(prefix.clone()));
                let mut builder = RouteTableBuilder::new();
                builder.add_service("s", &[prefix], &[]).expect("one service");
                let table = builder.build(1).expect("builds");
                let _ = table.lookup(&path);
            }
        }
    }
}
