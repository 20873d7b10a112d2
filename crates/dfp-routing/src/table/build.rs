//! Changing a table off to the side, a service at a time: refusing conflicting routes,
//! ordering each node's candidates, indexing them per host, and carrying each service's state
//! (round-robin position, counters, instances' health) to its new routes. Nothing here runs
//! on the request path.
//!
//! There is one way a service gets into a table, [`TableEditor::set`]: a table built from
//! nothing ([`RouteTableBuilder`]) is the same sets from the empty table, and a reconfigure
//! is one set on a copy of the live table that shares everything the set does not touch. So
//! the rules (who owns a route, a port, the default role; the order at a node) are written
//! once, and a change costs what it changes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::{
    service_key, BuildError, Candidate, CandidateMeta, Node, PathIndex, RouteTable, RouteTest,
    ServiceSlot, ServiceSpec, StreamTls,
};
use crate::backend::{InstanceHealth, Upstream};
use crate::condition::PathType;
use crate::policy::Domain;
use crate::stats::BackendStats;
use crate::{Backend, PathPrefix};

/// Changes a copy of a table a service at a time; nothing is visible until the result is
/// published. Each change is checked whole before anything is changed: a refused one leaves
/// the edited table as it was, so the changes that pass can go on being made.
///
/// The copy shares every service, index node and host index with the table it was taken
/// from; a change copies only the nodes and indexes it touches (the index of each host it
/// routes on, the node of each of its paths, the list of services).
pub struct TableEditor {
    table: RouteTable,
    /// The state of services an earlier table routed, for services not in `table` yet
    /// ([`RouteTableBuilder::carry_state_from`]), by service key.
    carried: HashMap<Arc<str>, Carried>,
}

/// What a service keeps from one table to the next.
struct Carried {
    /// The name the service had (its counters' label if it is not routed again).
    name: Arc<str>,
    cursor: Arc<AtomicUsize>,
    stats: Arc<BackendStats>,
    health: HashMap<SocketAddr, Arc<InstanceHealth>>,
}

/// A service's destinations, checked against the table and normalised, with their routes.
struct Prepared {
    key: Arc<str>,
    destinations: Vec<(ServiceSpec, Vec<SocketAddr>)>,
    /// Per destination: its routes (each on every index its hosts give).
    routes: Vec<Vec<Route>>,
}

/// One route of a destination: where it hangs and what it claims.
struct Route {
    anchor: PathPrefix,
    order: Order,
    claim: String,
    test: Option<Arc<RouteTest>>,
}

impl TableEditor {
    /// An editor of a copy of `from` (which stays as it is).
    pub fn new(from: &RouteTable) -> Self {
        TableEditor { table: from.clone(), carried: HashMap::new() }
    }

    /// Whether [`Self::set`] would take `destinations`, without changing anything.
    pub fn check(&self, destinations: &[(ServiceSpec, Vec<SocketAddr>)]) -> Result<(), BuildError> {
        self.prepare(destinations.to_vec()).map(drop)
    }

    /// Routes a service with its destinations (Docker Flow Proxy's indexed `servicePath.N`,
    /// `port.N`...; most services have one), replacing what it had: each destination its own
    /// routes, policy and instances, all under the first's name. They share the service's
    /// counters, round-robin position and instances' health, carried from what the service
    /// had (or from its retired counters). Only the first may be the default backend.
    ///
    /// Refuses a route another service already has on one of the same hosts (or for any
    /// host): the same path with the same path type and the same conditions; routes that
    /// differ in any condition may share a path, the lookup order decides between them. Refuses
    /// a second default backend, a TCP port (or TLS server name on it) another service has,
    /// and a route two destinations of the service both claim. A refused service changes
    /// nothing.
    pub fn set(
        &mut self,
        destinations: Vec<(ServiceSpec, Vec<SocketAddr>)>,
    ) -> Result<&mut Self, BuildError> {
        let prepared = self.prepare(destinations)?;
        let old = self.take_out(&prepared.key);
        let carried = old.or_else(|| self.carried.remove(&prepared.key));
        self.put_in(prepared, carried);
        Ok(self)
    }

    /// Stops routing the service named `name` (any case); its counters are retired. Returns
    /// whether it was routed.
    pub fn remove(&mut self, name: &str) -> bool {
        let key: Arc<str> = Arc::from(service_key(name));
        match self.take_out(&key) {
            Some(old) => {
                self.retire(&key, old.name, old.stats);
                true
            }
            None => false,
        }
    }

    /// Answers ACME HTTP-01 challenges with `challenges` (token -> key authorization) from
    /// now on, in place of the ones answered before.
    pub fn set_acme_challenges(&mut self, challenges: HashMap<Box<str>, Arc<str>>) {
        self.table.challenges = Arc::new(challenges);
    }

    /// The edited table, as `version`.
    pub fn finish(mut self, version: u64) -> RouteTable {
        for (key, carried) in std::mem::take(&mut self.carried) {
            self.retire(&key, carried.name, carried.stats);
        }
        self.table.version = version;
        self.table
    }

    /// Normalises `destinations` and checks them against the other services of the table.
    fn prepare(
        &self,
        destinations: Vec<(ServiceSpec, Vec<SocketAddr>)>,
    ) -> Result<Prepared, BuildError> {
        let Some((first, _)) = destinations.first() else {
            return Err(BuildError::EmptyServiceName);
        };
        if first.name.is_empty() {
            return Err(BuildError::EmptyServiceName);
        }
        let name: Arc<str> = Arc::from(first.name.as_str());
        let key: Arc<str> = Arc::from(service_key(&name));
        let default_backend = first.default_backend;
        let mut claimed: Vec<(Option<Domain>, String)> = Vec::new();
        let mut normalised = Vec::with_capacity(destinations.len());
        let mut routes = Vec::with_capacity(destinations.len());
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
            let own = routes_of(&spec, &key);
            let hosts: Vec<Option<Domain>> = if spec.domains.is_empty() {
                vec![None]
            } else {
                spec.domains.iter().cloned().map(Some).collect()
            };
            for host in hosts {
                for route in &own {
                    let claim = (host.clone(), route.claim.clone());
                    if let Some(owner) = self.claimant(&claim.0, route, &key) {
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
            routes.push(own);
        }
        self.check_tcp(&normalised, &key, &name)?;
        if default_backend {
            if let Some(owner) = self.table.default_service.as_ref().filter(|s| s.key != key) {
                return Err(BuildError::DefaultTaken {
                    owner: owner.backend.service.to_string(),
                    service: name.to_string(),
                });
            }
        }
        Ok(Prepared { key, destinations: normalised, routes })
    }

    /// The service (other than `key`) that has `route`'s claim on `host`: claims that are
    /// equal hang at the same node of the same index.
    fn claimant(&self, host: &Option<Domain>, route: &Route, key: &str) -> Option<&str> {
        let index = match host {
            None => Some(&self.table.any_host),
            Some(Domain::Exact(name)) => self.table.by_host.get(name),
            Some(Domain::Wildcard(parent)) => self.table.by_wildcard.get(parent),
        }?;
        let node = index.nodes.get(&route.anchor)?;
        node.candidates
            .iter()
            .find(|c| c.meta.claim == route.claim && *c.slot.key != *key)
            .map(|c| c.slot.backend.service())
    }

    /// Refuses a TCP port another service has whole, or a TLS server name on a shared port
    /// another service has; and more than one port for one service.
    fn check_tcp(
        &self,
        destinations: &[(ServiceSpec, Vec<SocketAddr>)],
        key: &str,
        name: &str,
    ) -> Result<(), BuildError> {
        let mut tcp_port = None;
        for (spec, _) in destinations {
            let Some(port) = spec.tcp_port else { continue };
            if tcp_port.replace(port).is_some() {
                return Err(BuildError::TcpDestinations { port, service: name.to_owned() });
            }
            let by_name = spec.stream_tls != StreamTls::Plain;
            if by_name && spec.domains.is_empty() {
                return Err(BuildError::NoServerName { service: name.to_owned() });
            }
            let mut others = self
                .table
                .tcp
                .iter()
                .filter(|(p, slot)| *p == port && *slot.key != *key)
                .map(|(_, slot)| slot)
                .peekable();
            let Some(first) = others.peek().copied() else { continue };
            let shared = by_name && first.stream_tls != StreamTls::Plain;
            if !shared {
                return Err(BuildError::PortOwned {
                    port,
                    owner: first.backend.service().to_owned(),
                    service: name.to_owned(),
                });
            }
            for other in others {
                if let Some(domain) = other.domains.iter().find(|d| spec.domains.contains(d)) {
                    return Err(BuildError::NameOwned {
                        port,
                        domain: domain.clone(),
                        owner: other.backend.service().to_owned(),
                        service: name.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Takes the service `key` out of every index, list and role, returning its state.
    fn take_out(&mut self, key: &Arc<str>) -> Option<Carried> {
        let table = &mut self.table;
        let start = table.services.partition_point(|s| *s.key < **key);
        let end = start + table.services[start..].iter().take_while(|s| s.key == *key).count();
        if start == end {
            return None;
        }
        let old: Vec<Arc<ServiceSlot>> = table.services.drain(start..end).collect();
        if table.default_service.as_ref().is_some_and(|d| d.key == *key) {
            table.default_service = None;
        }
        if old.iter().any(|s| s.tcp_port.is_some()) {
            table.tcp.retain(|(_, s)| s.key != *key);
            table.tls_names.retain(|(.., s)| s.key != *key);
        }
        let first = &old[0].backend;
        let mut carried = Carried {
            name: first.service.clone(),
            cursor: first.cursor.clone(),
            stats: first.stats.clone(),
            health: HashMap::new(),
        };
        for slot in &old {
            for upstream in slot.backend.instances.iter() {
                carried.health.entry(upstream.addr()).or_insert_with(|| upstream.health_arc());
            }
            let anchors: Vec<&PathPrefix> =
                slot.prefixes.iter().chain(slot.patterns.iter().map(|p| p.anchor())).collect();
            for index in IndexId::all(&slot.domains) {
                let mut emptied = false;
                if let Some(at) = self.index_mut(&index) {
                    for anchor in &anchors {
                        let Some(node) = at.nodes.get_mut(*anchor) else { continue };
                        let node_mut = Arc::make_mut(node);
                        let kept: Vec<Candidate> = node_mut
                            .candidates
                            .iter()
                            .filter(|c| !Arc::ptr_eq(&c.slot, slot))
                            .cloned()
                            .collect();
                        if kept.is_empty() {
                            at.nodes.remove(*anchor);
                        } else {
                            node_mut.candidates = kept.into();
                        }
                    }
                    emptied = at.nodes.is_empty();
                }
                if emptied {
                    self.drop_index(&index);
                }
            }
        }
        Some(carried)
    }

    /// Puts a checked service in, with the state it carries.
    fn put_in(&mut self, prepared: Prepared, carried: Option<Carried>) {
        let Prepared { key, destinations, routes } = prepared;
        let resumed = match &carried {
            Some(_) => None,
            None => self.resume(&key),
        };
        let stats = carried.as_ref().map(|c| c.stats.clone()).or(resumed).unwrap_or_default();
        let cursor = carried.as_ref().map(|c| c.cursor.clone()).unwrap_or_default();
        // One health per instance address across the destinations: an instance ejected
        // through one destination is ejected for all of them.
        let mut health = carried.map(|c| c.health).unwrap_or_default();
        let mut slots = Vec::with_capacity(destinations.len());
        for (destination, ((spec, instances), routes)) in
            destinations.into_iter().zip(routes).enumerate()
        {
            let upstreams = instances
                .iter()
                .map(|&addr| {
                    Upstream::new(&spec.name, addr, health.entry(addr).or_default().clone())
                })
                .collect();
            let backend = Arc::new(Backend {
                service: Arc::from(spec.name.as_str()),
                instances: upstreams,
                cursor: cursor.clone(),
                stats: stats.clone(),
                policy: spec.policy,
            });
            let slot = Arc::new(ServiceSlot {
                key: key.clone(),
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
                default_backend: spec.default_backend,
            });
            if slot.default_backend {
                self.table.default_service = Some(slot.clone());
            }
            if let Some(port) = slot.tcp_port {
                let tcp = &mut self.table.tcp;
                let at = tcp.partition_point(|(p, s)| (*p, &*s.key) < (port, &*key));
                tcp.insert(at, (port, slot.clone()));
                if slot.stream_tls != StreamTls::Plain {
                    for domain in &slot.domains {
                        let (wildcard, name) = match domain {
                            Domain::Exact(name) => (false, name.clone()),
                            Domain::Wildcard(parent) => (true, parent.clone()),
                        };
                        let names = &mut self.table.tls_names;
                        let at = names.partition_point(|(p, w, n, _)| {
                            (*p, *w, n.as_ref()) < (port, wildcard, name.as_ref())
                        });
                        names.insert(at, (port, wildcard, name, slot.clone()));
                    }
                }
            }
            let indexes = IndexId::all(&slot.domains);
            for route in routes {
                let candidate = Candidate {
                    slot: slot.clone(),
                    test: route.test,
                    meta: Arc::new(CandidateMeta { order: route.order, claim: route.claim }),
                };
                for index in &indexes {
                    self.add_candidate(index, &route.anchor, candidate.clone());
                }
            }
            slots.push(slot);
        }
        let services = &mut self.table.services;
        let at = services.partition_point(|s| *s.key < *key);
        services.splice(at..at, slots);
    }

    /// Hangs `candidate` at `anchor` in `index`, in its place among the node's candidates.
    fn add_candidate(&mut self, index: &IndexId, anchor: &PathPrefix, candidate: Candidate) {
        let at: &mut PathIndex = match index {
            IndexId::Any => Arc::make_mut(&mut self.table.any_host),
            IndexId::Host(host) => Arc::make_mut(
                Arc::make_mut(&mut self.table.by_host).entry(host.clone()).or_default(),
            ),
            IndexId::Wildcard(parent) => Arc::make_mut(
                Arc::make_mut(&mut self.table.by_wildcard).entry(parent.clone()).or_default(),
            ),
        };
        let text = anchor.as_str();
        at.note_length(text.len());
        at.max_depth = at.max_depth.max(text.bytes().filter(|&b| b == b'/').count());
        let node = at
            .nodes
            .entry(anchor.clone())
            .or_insert_with(|| Arc::new(Node { prefix: anchor.clone(), candidates: Box::new([]) }));
        let node = Arc::make_mut(node);
        let mut candidates = std::mem::take(&mut node.candidates).into_vec();
        let place = candidates.partition_point(|c| c.meta.order <= candidate.meta.order);
        candidates.insert(place, candidate);
        node.candidates = candidates.into();
    }

    /// The index `index` names, made the editor's own, if it exists.
    fn index_mut(&mut self, index: &IndexId) -> Option<&mut PathIndex> {
        let at = match index {
            IndexId::Any => &mut self.table.any_host,
            IndexId::Host(host) => Arc::make_mut(&mut self.table.by_host).get_mut(host)?,
            IndexId::Wildcard(parent) => {
                Arc::make_mut(&mut self.table.by_wildcard).get_mut(parent)?
            }
        };
        Some(Arc::make_mut(at))
    }

    /// Forgets a host's index that routes nothing any more (so that a table with no host
    /// routes left skips the host lookup again).
    fn drop_index(&mut self, index: &IndexId) {
        match index {
            IndexId::Any => {}
            IndexId::Host(host) => {
                Arc::make_mut(&mut self.table.by_host).remove(host);
            }
            IndexId::Wildcard(parent) => {
                Arc::make_mut(&mut self.table.by_wildcard).remove(parent);
            }
        }
    }

    /// Keeps a service's counters that no table routes any more, by name.
    fn retire(&mut self, key: &str, name: Arc<str>, stats: Arc<BackendStats>) {
        let retired = &mut self.table.retired;
        retired.retain(|(n, _)| service_key(n) != key);
        let at = retired.partition_point(|(n, _)| *n < name);
        retired.insert(at, (name, stats));
    }

    /// The retired counters of the service `key`, taken back.
    fn resume(&mut self, key: &str) -> Option<Arc<BackendStats>> {
        let retired = &mut self.table.retired;
        let at = retired.iter().position(|(n, _)| service_key(n) == key)?;
        Some(retired.remove(at).1)
    }
}

/// Builds a [`RouteTable`] from nothing, off to the side: the services' [`TableEditor::set`]s
/// on the empty table. Nothing is visible until it is published.
///
/// Services are keyed by [`service_key`]: adding `Books-ms` to a builder that has `books-ms`
/// is a duplicate, and state carried from an earlier table follows the name in any case.
pub struct RouteTableBuilder {
    editor: TableEditor,
    added: HashSet<Arc<str>>,
}

impl Default for RouteTableBuilder {
    fn default() -> Self {
        RouteTableBuilder { editor: TableEditor::new(&RouteTable::empty()), added: HashSet::new() }
    }
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
    /// again resumes them). The ACME challenges `previous` answers are answered too.
    pub fn carry_state_from(&mut self, previous: &RouteTable) -> &mut Self {
        // The ACME challenges being answered are not routes: they stay until their owner
        // takes them back.
        self.editor.table.challenges = previous.challenges.clone();
        for (name, stats) in &previous.retired {
            self.editor.retire(&service_key(name), name.clone(), stats.clone());
        }
        for slot in &previous.services {
            let backend = &slot.backend;
            // A service's destinations share cursor and counters; their instances' health is
            // gathered from all of them.
            let carried = self.editor.carried.entry(slot.key.clone()).or_insert_with(|| Carried {
                name: backend.service.clone(),
                cursor: backend.cursor.clone(),
                stats: backend.stats.clone(),
                health: HashMap::new(),
            });
            for upstream in backend.instances.iter() {
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

    /// Adds a service as `spec` describes it, with its instances (possibly none yet). Refuses
    /// what [`TableEditor::set`] refuses.
    pub fn add(
        &mut self,
        spec: ServiceSpec,
        instances: &[SocketAddr],
    ) -> Result<&mut Self, BuildError> {
        self.add_destinations(vec![(spec, instances.to_vec())])
    }

    /// Adds a service with several destinations ([`TableEditor::set`]); a service added
    /// twice is refused ([`BuildError::DuplicateService`]).
    pub fn add_destinations(
        &mut self,
        destinations: Vec<(ServiceSpec, Vec<SocketAddr>)>,
    ) -> Result<&mut Self, BuildError> {
        let Some((first, _)) = destinations.first() else {
            return Err(BuildError::EmptyServiceName);
        };
        let key: Arc<str> = Arc::from(service_key(&first.name));
        if self.added.contains(&key) {
            return Err(BuildError::DuplicateService(first.name.clone()));
        }
        self.editor.set(destinations)?;
        self.added.insert(key);
        Ok(self)
    }

    /// Builds the table as `version`.
    pub fn build(self, version: u64) -> Result<RouteTable, BuildError> {
        Ok(self.editor.finish(version))
    }
}

impl fmt::Debug for RouteTableBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTableBuilder")
            .field(
                "services",
                &self.editor.table.services.iter().map(|s| &s.key).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TableEditor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableEditor").field("table", &self.table).finish_non_exhaustive()
    }
}

/// Which index a route goes in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum IndexId {
    Any,
    Host(Box<str>),
    Wildcard(Box<str>),
}

impl IndexId {
    /// The indexes a destination with `domains` routes in: its hosts' (any host without).
    fn all(domains: &[Domain]) -> Vec<IndexId> {
        if domains.is_empty() {
            return vec![IndexId::Any];
        }
        domains
            .iter()
            .map(|domain| match domain {
                Domain::Exact(host) => IndexId::Host(host.clone()),
                Domain::Wildcard(parent) => IndexId::Wildcard(parent.clone()),
            })
            .collect()
    }
}

/// A candidate's place at its node (see [`Candidate`]): compared as a tuple, smallest first.
/// (unconditioned, path rank, longer value first, more conditions first, service, path).
pub(super) type Order =
    (bool, u8, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>, Arc<str>, String);

/// A service's routes: where each hangs, its order there, and its claim as the text
/// ownership is keyed by (and conflicts are reported with): `/api`,
/// `/api (pathType=path_beg)`, `/api (userAgent=mobile)`. The test is built once per route and
/// shared by each host's index.
fn routes_of(spec: &ServiceSpec, key: &Arc<str>) -> Vec<Route> {
    use std::cmp::Reverse;
    let conditions = &spec.conditions;
    let text = conditions.to_string();
    let claim = |path: &str, path_type: Option<PathType>| match (path_type, text.is_empty()) {
        (None, true) => path.to_owned(),
        (None, false) => format!("{path} ({text})"),
        (Some(t), true) => format!("{path} (pathType={t})"),
        (Some(t), false) => format!("{path} (pathType={t} {text})"),
    };
    let weight = Reverse(conditions.weight());
    let mut out = Vec::new();
    for prefix in &spec.prefixes {
        let test = (!conditions.is_empty())
            .then(|| Arc::new(RouteTest { pattern: None, conditions: conditions.clone() }));
        let order = (
            test.is_none(),
            1,
            Reverse(prefix.as_str().len()),
            weight,
            key.clone(),
            prefix.as_str().to_owned(),
        );
        out.push(Route {
            anchor: prefix.clone(),
            order,
            claim: claim(prefix.as_str(), None),
            test,
        });
    }
    for pattern in &spec.patterns {
        let (rank, len) = match pattern.kind() {
            PathType::Exact => (0, 0),
            PathType::Beg => (1, pattern.as_str().len()),
            PathType::End => (2, pattern.as_str().len()),
            PathType::Regex => (3, 0),
        };
        let test =
            Arc::new(RouteTest { pattern: Some(pattern.clone()), conditions: conditions.clone() });
        let order = (false, rank, Reverse(len), weight, key.clone(), pattern.as_str().to_owned());
        out.push(Route {
            anchor: pattern.anchor().clone(),
            order,
            claim: claim(pattern.as_str(), Some(pattern.kind())),
            test: Some(test),
        });
    }
    out
}
