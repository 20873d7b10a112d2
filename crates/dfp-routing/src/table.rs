//! The route table, its builder and the handle that publishes it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::backend::{BackendStats, InstanceHealth, Upstream};
use crate::{Backend, PathPrefix};

/// Why a table could not be built. The live table is never touched by a failed build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error(
        "path {path} is already routed to service {owner:?}; remove it from {owner:?} first \
         or choose another path for {service:?}"
    )]
    PathOwned { path: PathPrefix, owner: String, service: String },
    #[error("service {0:?} was added twice to one table")]
    DuplicateService(String),
    #[error("service name is empty")]
    EmptyServiceName,
    #[error("path {path} could not be indexed: {reason}")]
    Index { path: PathPrefix, reason: String },
}

/// What a lookup found: the backend that owns the path and the prefix that matched.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'t> {
    pub backend: &'t Arc<Backend>,
    pub prefix: &'t PathPrefix,
}

/// A service's entry in a table, for reporting (`config`): name, paths and instances.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRoutes<'t> {
    pub backend: &'t Arc<Backend>,
    pub prefixes: &'t [PathPrefix],
}

/// An immutable routing table: path prefixes to backends, longest prefix wins.
///
/// Lookup walks a radix tree (private to this crate) keyed by path bytes, so its cost depends
/// on the request path's length, not on the number of routes.
pub struct RouteTable {
    version: u64,
    index: matchit::Router<usize>,
    routes: Vec<(PathPrefix, usize)>,
    services: Vec<(Arc<Backend>, Vec<PathPrefix>)>,
}

impl RouteTable {
    /// The empty table a proxy starts with: every lookup misses.
    pub fn empty() -> Self {
        RouteTable {
            version: 0,
            index: matchit::Router::new(),
            routes: Vec::new(),
            services: Vec::new(),
        }
    }

    /// The version this table was built as; each swap publishes a higher one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Finds the service owning `path` (the request path, without query string).
    pub fn lookup(&self, path: &str) -> Option<RouteMatch<'_>> {
        let found = self.index.at(path).ok()?;
        let (prefix, service) = &self.routes[*found.value];
        Some(RouteMatch { backend: &self.services[*service].0, prefix })
    }

    /// The routed services, ordered by name.
    pub fn services(&self) -> impl ExactSizeIterator<Item = ServiceRoutes<'_>> {
        self.services.iter().map(|(backend, prefixes)| ServiceRoutes { backend, prefixes })
    }

    /// The backend of a service by name.
    pub fn service(&self, name: &str) -> Option<&Arc<Backend>> {
        self.services
            .binary_search_by(|(b, _)| b.service().cmp(name))
            .ok()
            .map(|i| &self.services[i].0)
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("version", &self.version)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RouteTable`] off to the side; nothing is visible until it is published.
#[derive(Default)]
pub struct RouteTableBuilder {
    services: BTreeMap<Arc<str>, (Vec<PathPrefix>, Vec<SocketAddr>)>,
    owners: HashMap<PathPrefix, Arc<str>>,
    carried: HashMap<Arc<str>, Carried>,
}

/// What a service keeps from one table to the next.
struct Carried {
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
    pub fn carry_state_from(&mut self, previous: &RouteTable) -> &mut Self {
        for (backend, _) in &previous.services {
            let health = backend.instances.iter().map(|u| (u.addr(), u.health_arc())).collect();
            self.carried.insert(
                backend.service.clone(),
                Carried { cursor: backend.cursor.clone(), stats: backend.stats.clone(), health },
            );
        }
        self
    }

    /// Adds a service with the paths it owns and its instances (possibly none yet).
    ///
    /// Refuses a path already owned by another service in this table.
    pub fn add_service(
        &mut self,
        name: &str,
        prefixes: &[PathPrefix],
        instances: &[SocketAddr],
    ) -> Result<&mut Self, BuildError> {
        if name.is_empty() {
            return Err(BuildError::EmptyServiceName);
        }
        if self.services.contains_key(name) {
            return Err(BuildError::DuplicateService(name.to_owned()));
        }
        for prefix in prefixes {
            if let Some(owner) = self.owners.get(prefix) {
                return Err(BuildError::PathOwned {
                    path: prefix.clone(),
                    owner: owner.to_string(),
                    service: name.to_owned(),
                });
            }
        }
        let name: Arc<str> = Arc::from(name);
        let mut own = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            if !own.contains(prefix) {
                self.owners.insert(prefix.clone(), name.clone());
                own.push(prefix.clone());
            }
        }
        own.sort();
        self.services.insert(name, (own, instances.to_vec()));
        Ok(self)
    }

    /// Builds the table as `version`.
    pub fn build(self, version: u64) -> Result<RouteTable, BuildError> {
        let mut index = matchit::Router::new();
        let mut routes = Vec::with_capacity(self.owners.len());
        let mut services = Vec::with_capacity(self.services.len());
        for (name, (prefixes, instances)) in self.services {
            let carried = self.carried.get(&name);
            let upstreams = instances
                .iter()
                .map(|&addr| {
                    let health = carried.and_then(|c| c.health.get(&addr)).cloned();
                    Upstream::new(addr, health.unwrap_or_default())
                })
                .collect();
            let backend = Arc::new(Backend {
                service: name,
                instances: upstreams,
                cursor: carried.map(|c| c.cursor.clone()).unwrap_or_default(),
                stats: carried.map(|c| c.stats.clone()).unwrap_or_default(),
            });
            let service_index = services.len();
            for prefix in &prefixes {
                let route_index = routes.len();
                routes.push((prefix.clone(), service_index));
                for pattern in index_patterns(prefix) {
                    index.insert(pattern, route_index).map_err(|e| BuildError::Index {
                        path: prefix.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            services.push((backend, prefixes));
        }
        Ok(RouteTable { version, index, routes, services })
    }
}

impl fmt::Debug for RouteTableBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTableBuilder")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
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

    #[test]
    fn a_path_has_one_owner() {
        let mut b = RouteTableBuilder::new();
        b.add_service("a", &[p("/x")], &[]).expect("first owner");
        let err = b.add_service("b", &[p("/x/")], &[]).expect_err("same path, other service");
        assert!(matches!(err, BuildError::PathOwned { ref owner, .. } if owner == "a"), "{err}");
        assert!(b.add_service("a", &[p("/y")], &[]).is_err(), "a service is added once");
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
