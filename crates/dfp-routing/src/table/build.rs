//! Building a table off to the side: refusing conflicting routes, ordering each node's
//! candidates, indexing them per host, and carrying services' state from the live table.
//! Nothing here runs on the request path.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::{
    service_key, BuildError, Candidate, Node, RouteTable, RouteTest, ServiceSlot, ServiceSpec,
    StreamTls,
};
use crate::backend::{BackendStats, InstanceHealth, Upstream};
use crate::condition::PathType;
use crate::policy::Domain;
use crate::{Backend, PathPrefix};

/// Builds a [`RouteTable`] off to the side; nothing is visible until it is published.
///
/// Services are keyed by [`service_key`]: adding `Books-ms` to a builder that has `books-ms`
/// is a duplicate, and state carried from an earlier table follows the name in any case.
#[derive(Default)]
pub struct RouteTableBuilder {
    /// By service key: its destinations as (spec, instances), the first first.
    services: BTreeMap<Arc<str>, Vec<(ServiceSpec, Vec<SocketAddr>)>>,
    /// (host or any, route with its conditions as text) -> owner.
    owners: HashMap<(Option<Domain>, String), Arc<str>>,
    default_owner: Option<Arc<str>>,
    /// TCP port (`srcPort`) -> who has it.
    ports: HashMap<u16, PortUse>,
    /// By service key.
    carried: HashMap<Arc<str>, Carried>,
    /// Counters of services no longer routed (by service key: display name, counters).
    retired: BTreeMap<Arc<str>, (Arc<str>, Arc<BackendStats>)>,
}

/// Who has a TCP service's port.
enum PortUse {
    /// One service, every connection.
    Whole(Arc<str>),
    /// Services chosen by TLS server name: (name, owner).
    ByName(Vec<(Domain, Arc<str>)>),
}

impl PortUse {
    /// A service that has the port (the first, when several share it).
    fn owner(&self) -> &Arc<str> {
        match self {
            PortUse::Whole(owner) => owner,
            PortUse::ByName(names) => &names[0].1,
        }
    }
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
            let key: Arc<str> = Arc::from(service_key(&backend.service));
            self.retired.remove(&key);
            // A service's destinations share cursor and counters; their instances' health is
            // gathered from all of them.
            let carried = self.carried.entry(key).or_insert_with(|| Carried {
                name: backend.service.clone(),
                cursor: backend.cursor.clone(),
                stats: backend.stats.clone(),
                health: HashMap::new(),
            });
            for upstream in &backend.instances {
                carried.health.entry(upstream.addr()).or_insert_with(|| upstream.health_arc());
            }
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
        spec: ServiceSpec,
        instances: &[SocketAddr],
    ) -> Result<&mut Self, BuildError> {
        self.add_destinations(vec![(spec, instances.to_vec())])
    }

    /// Adds a service with several destinations (Docker Flow Proxy's indexed `servicePath.N`,
    /// `port.N`...): each its own routes, policy and instances, all under the first's name.
    /// They share the service's counters, round-robin position and instances' health. Only
    /// the first may be the default backend (a later one's `default_backend` is not read).
    ///
    /// Refuses what [`Self::add`] refuses, and a route two destinations of the service both
    /// claim ([`BuildError::RoutedTwice`]).
    pub fn add_destinations(
        &mut self,
        destinations: Vec<(ServiceSpec, Vec<SocketAddr>)>,
    ) -> Result<&mut Self, BuildError> {
        let Some((first, _)) = destinations.first() else {
            return Err(BuildError::EmptyServiceName);
        };
        if first.name.is_empty() {
            return Err(BuildError::EmptyServiceName);
        }
        let name: Arc<str> = Arc::from(first.name.as_str());
        let key: Arc<str> = Arc::from(service_key(&name));
        if self.services.contains_key(&key) {
            return Err(BuildError::DuplicateService(first.name.clone()));
        }
        let default_backend = first.default_backend;
        let mut claimed: Vec<(Option<Domain>, String)> = Vec::new();
        let mut normalised = Vec::with_capacity(destinations.len());
        for (position, (mut spec, instances)) in destinations.into_iter().enumerate() {
            if service_key(&spec.name) != *key {
                return Err(BuildError::ForeignDestination {
                    destination: spec.name,
                    service: name.to_string(),
                });
            }
            spec.name = name.to_string();
            spec.default_backend = position == 0 && default_backend;
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
            for host in hosts {
                for route in route_keys(&spec) {
                    let claim = (host.clone(), route);
                    if let Some(owner) = self.owners.get(&claim) {
                        return Err(BuildError::PathOwned {
                            path: claim.1,
                            domain: claim.0,
                            owner: owner.to_string(),
                            service: spec.name.clone(),
                        });
                    }
                    if claimed.contains(&claim) {
                        return Err(BuildError::RoutedTwice {
                            path: claim.1,
                            domain: claim.0,
                            service: name.to_string(),
                        });
                    }
                    claimed.push(claim);
                }
            }
            normalised.push((spec, instances));
        }
        let mut tcp_port = None;
        for (spec, _) in &normalised {
            let Some(port) = spec.tcp_port else { continue };
            if tcp_port.replace((port, spec.stream_tls, spec.domains.clone())).is_some() {
                return Err(BuildError::TcpDestinations { port, service: name.to_string() });
            }
            let by_name = spec.stream_tls != StreamTls::Plain;
            if by_name && spec.domains.is_empty() {
                return Err(BuildError::NoServerName { service: name.to_string() });
            }
            match self.ports.get(&port) {
                None => {}
                Some(PortUse::ByName(names)) if by_name => {
                    if let Some((domain, owner)) =
                        names.iter().find(|(d, _)| spec.domains.contains(d))
                    {
                        return Err(BuildError::NameOwned {
                            port,
                            domain: domain.clone(),
                            owner: owner.to_string(),
                            service: name.to_string(),
                        });
                    }
                }
                Some(used) => {
                    return Err(BuildError::PortOwned {
                        port,
                        owner: used.owner().to_string(),
                        service: name.to_string(),
                    });
                }
            }
        }
        if default_backend {
            if let Some(owner) = &self.default_owner {
                return Err(BuildError::DefaultTaken {
                    owner: owner.to_string(),
                    service: name.to_string(),
                });
            }
            self.default_owner = Some(name.clone());
        }
        for claim in claimed {
            self.owners.insert(claim, name.clone());
        }
        match tcp_port {
            Some((port, StreamTls::Plain, _)) => {
                self.ports.insert(port, PortUse::Whole(name.clone()));
            }
            Some((port, _, domains)) => {
                let used = self.ports.entry(port).or_insert_with(|| PortUse::ByName(Vec::new()));
                if let PortUse::ByName(names) = used {
                    names.extend(domains.into_iter().map(|d| (d, name.clone())));
                }
            }
            None => {}
        }
        self.services.insert(key, normalised);
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
        for (key, destinations) in self.services {
            let carried = self.carried.get(&key);
            let resumed = retired.remove(&key).map(|(_, stats)| stats);
            let stats = carried.map(|c| c.stats.clone()).or(resumed).unwrap_or_default();
            let cursor = carried.map(|c| c.cursor.clone()).unwrap_or_default();
            // One health per instance address across the destinations: an instance ejected
            // through one destination is ejected for all of them.
            let mut health: HashMap<SocketAddr, Arc<InstanceHealth>> =
                carried.map(|c| c.health.clone()).unwrap_or_default();
            for (destination, (spec, instances)) in destinations.into_iter().enumerate() {
                let service_index = table.services.len();
                let routes = candidates(&spec, service_index, &key);
                let upstreams = instances
                    .iter()
                    .map(|&addr| {
                        let health = health.entry(addr).or_default().clone();
                        Upstream::new(&spec.name, addr, health)
                    })
                    .collect();
                let backend = Arc::new(Backend {
                    service: Arc::from(spec.name.as_str()),
                    instances: upstreams,
                    cursor: cursor.clone(),
                    stats: stats.clone(),
                    policy: spec.policy,
                });
                if spec.default_backend {
                    table.default_service = Some(service_index);
                }
                if let Some(port) = spec.tcp_port {
                    table.tcp.push((port, service_index));
                    if spec.stream_tls != StreamTls::Plain {
                        for domain in &spec.domains {
                            let (wildcard, name) = match domain {
                                Domain::Exact(name) => (false, name.clone()),
                                Domain::Wildcard(parent) => (true, parent.clone()),
                            };
                            table.tls_names.push((port, wildcard, name, service_index));
                        }
                    }
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
                    destination,
                    index: spec.index,
                    prefixes: spec.prefixes,
                    patterns: spec.patterns,
                    conditions: spec.conditions,
                    domains: spec.domains,
                    excluded: spec.excluded,
                    color: spec.color,
                    tcp_port: spec.tcp_port,
                    stream_tls: spec.stream_tls,
                });
            }
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
        table.tcp.sort_unstable();
        table.tls_names.sort_unstable();
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
