//! The route table: the types a table is made of, and the spec a service asks it for.
//!
//! A table has three jobs, each in its own file so that each can be read alone: answering
//! lookups on the hot path (`lookup`), being changed off to the side a service at a time with
//! conflicts refused (`build`), and being published whole through one `ArcSwap` (`handle`). The types they share
//! live here; their private fields are visible to those child modules and nowhere else.

use std::collections::HashMap;
use std::sync::Arc;

use crate::condition::{PathPattern, RequestFields, RouteConditions};
use crate::policy::{Domain, ServicePolicy};
use crate::stats::BackendStats;
use crate::{Backend, PathPrefix};

mod build;
mod handle;
mod lookup;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

pub use build::{RouteTableBuilder, TableEditor};
pub use handle::TableHandle;

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
    #[error(
        "service {service:?} routes path {path}{} in two of its destinations with the same \
         conditions; give each destination its own path (servicePath.N), hosts \
         (serviceDomain.N) or conditions",
        host_suffix(domain.as_ref())
    )]
    RoutedTwice { path: String, domain: Option<Domain>, service: String },
    #[error("destination {destination:?} was added to service {service:?}: all destinations of one service share its name")]
    ForeignDestination { destination: String, service: String },
    #[error(
        "port {port} is already the TCP port (srcPort) of service {owner:?}; remove it from \
         {owner:?} first, or choose another srcPort for {service:?}"
    )]
    PortOwned { port: u16, owner: String, service: String },
    #[error(
        "{domain} on port {port} is already the TLS server name of service {owner:?}; remove it \
         from {owner:?} first, or choose another serviceDomain or srcPort for {service:?}"
    )]
    NameOwned { port: u16, domain: Domain, owner: String, service: String },
    #[error(
        "service {service:?} is routed by TLS server name (reqMode=sni, or reqMode=tcp with \
         serviceDomain) but names no serviceDomain; give the names its connections ask for"
    )]
    NoServerName { service: String },
    #[error("service {service:?} asks for TCP port {port} in more than one destination; a TCP service has one srcPort")]
    TcpDestinations { port: u16, service: String },
    #[error("service name is empty")]
    EmptyServiceName,
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
    /// The destination's place among its service's destinations (Docker Flow Proxy's indexed
    /// `servicePath.N`...): 0 for the first. The destinations of a service share its counters,
    /// round-robin position and instances' health, so per-service reports read destination 0.
    pub destination: usize,
    /// Docker Flow Proxy's index of the destination ([`ServiceSpec::index`]).
    pub index: u8,
    /// `reqMode=tcp`: the port its TCP connections arrive on ([`ServiceSpec::tcp_port`]).
    pub tcp_port: Option<u16>,
    /// How those connections are taken ([`ServiceSpec::stream_tls`]).
    pub stream_tls: StreamTls,
}

/// What a service (or one of its destinations) asks of the table: its paths, and optionally the
/// hosts they apply to, the paths below them it does not own, whether it is the default
/// backend, and its policy. A service with several destinations (Docker Flow Proxy's indexed
/// parameters) is added as one spec per destination, all with its name
/// ([`RouteTableBuilder::add_destinations`]).
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
    /// Docker Flow Proxy's destination index (`servicePath.N`...), 0 for the unindexed
    /// parameters (shown, not used here).
    pub index: u8,
    /// `reqMode=tcp` with `srcPort`: the service is a TCP service, reached by every
    /// connection to this port ([`RouteTable::tcp_route`]); its paths, hosts and conditions
    /// are empty. Two services cannot have the same port ([`BuildError::PortOwned`]). The
    /// table only says which service owns a port: the listener itself belongs to the data
    /// plane (this crate opens nothing).
    pub tcp_port: Option<u16>,
    /// With `tcp_port`: whether the port's connections are forwarded as they are (the
    /// service owns the port alone) or chosen by TLS server name among the port's services,
    /// whose `domains` are the names ([`RouteTable::tls_route`]).
    pub stream_tls: StreamTls,
}

/// How a TCP service's connections are taken from its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamTls {
    /// `reqMode=tcp`: every connection to the port, bytes as they are. The service owns the
    /// port alone.
    #[default]
    Plain,
    /// `reqMode=sni`: connections whose TLS ClientHello names one of the service's domains,
    /// passed through untouched (the instance terminates TLS with its own certificate).
    Passthrough,
    /// `reqMode=tcp` with `serviceDomain`: TLS ends at the proxy (the certificate for the
    /// name the client asks for), the decrypted bytes go to the instance.
    Terminate,
}

impl StreamTls {
    /// Docker Flow Proxy's `reqMode` for it.
    pub fn req_mode(self) -> &'static str {
        match self {
            StreamTls::Plain | StreamTls::Terminate => "tcp",
            StreamTls::Passthrough => "sni",
        }
    }
}

impl ServiceSpec {
    pub fn new(name: &str, prefixes: &[PathPrefix]) -> Self {
        ServiceSpec { name: name.to_owned(), prefixes: prefixes.to_vec(), ..ServiceSpec::default() }
    }
}

/// One destination of a service in a built table (most services have one). A service's slots
/// are adjacent, in destination order, and share their backend's counters, cursor and health.
/// Shared by reference between the tables that route it unchanged, so a change to one service
/// copies none of the others.
struct ServiceSlot {
    /// [`service_key`] of the service's name: what the table orders and finds it by.
    key: Arc<str>,
    backend: Arc<Backend>,
    destination: usize,
    index: u8,
    prefixes: Vec<PathPrefix>,
    patterns: Vec<PathPattern>,
    conditions: RouteConditions,
    domains: Vec<Domain>,
    excluded: Vec<PathPrefix>,
    color: Option<String>,
    tcp_port: Option<u16>,
    stream_tls: StreamTls,
    default_backend: bool,
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
/// longest segment-aware prefix wins: the lookup asks a hash index of the host's route
/// prefixes for the request path cut at each `/`, longest first, starting no deeper than the
/// deepest prefix the index has, so its cost depends on the request, not on the number of
/// routes.
///
/// Each node of an index holds its candidates in order: routes with conditions (a `pathType`
/// pattern, `serviceHeader`, `userAgent`) first, the one unconditioned route last (see
/// [`Candidate`] for the order among conditioned ones). The first candidate whose conditions
/// hold and whose service does not exclude the path wins; when none does, the lookup goes on
/// at the next shorter prefix, as it does for a path a service excludes.
///
/// Tables are changed a service at a time ([`TableEditor`]): the new table shares every
/// service slot, index node and host index the change does not touch with the old one, so a
/// reconfigure costs what it changes, not what the table holds. A table built from nothing
/// ([`RouteTableBuilder`]) is the same edits from the empty table.
#[derive(Clone)]
pub struct RouteTable {
    version: u64,
    any_host: Arc<PathIndex>,
    by_host: Arc<HashMap<Box<str>, Arc<PathIndex>>>,
    by_wildcard: Arc<HashMap<Box<str>, Arc<PathIndex>>>,
    default_service: Option<Arc<ServiceSlot>>,
    /// Every destination of every service, ordered by (key, destination).
    services: Vec<Arc<ServiceSlot>>,
    /// TCP services by port (`srcPort`), sorted by (port, key): a port shared by services
    /// chosen by TLS server name has one entry per service.
    tcp: Vec<(u16, Arc<ServiceSlot>)>,
    /// The TLS server names of those services, sorted by (port, wildcard, name). A wildcard
    /// `*.example.com` is kept as its parent `example.com`.
    tls_names: Vec<(u16, bool, Box<str>, Arc<ServiceSlot>)>,
    /// Counters of services routed by an earlier table and not by this one, by name: a
    /// removed service's series go on being reported (a counter that vanished and came back
    /// from zero would look like a reset to a scraper), and a service routed again resumes
    /// them. Carried from table to table like the rest of a service's state.
    retired: Vec<(Arc<str>, Arc<BackendStats>)>,
    /// ACME HTTP-01 challenges being answered: token -> key authorization. A request for
    /// `/.well-known/acme-challenge/<token>` on any host gets the text, before any route is
    /// looked up (an `httpsOnly` service must not redirect the CA away, and no service's
    /// instance knows the answer). Empty but while a certificate is being obtained.
    challenges: Arc<HashMap<Box<str>, Arc<str>>>,
}

/// The route prefixes of one host (or of any host), by prefix text.
#[derive(Clone)]
struct PathIndex {
    nodes: HashMap<PathPrefix, Arc<Node>, foldhash::fast::FixedState>,
    /// The most `/` any prefix here has had (`/` itself has one): a lookup starts with the
    /// request path cut before its next `/`, as no longer cut can be a prefix here.
    max_depth: usize,
    /// Bit `n` set: a prefix here has had `n` bytes. A cut of another length is not looked
    /// for, so most cuts of a path that misses (or hits deep) are never hashed.
    lengths: [u64; LENGTH_WORDS],
}

/// Words of [`PathIndex::lengths`]: one bit per length up to the longest prefix accepted.
const LENGTH_WORDS: usize = crate::prefix::MAX_LEN / 64 + 1;

impl PathIndex {
    fn has_length(&self, len: usize) -> bool {
        self.lengths.get(len / 64).is_some_and(|word| word & (1 << (len % 64)) != 0)
    }

    fn note_length(&mut self, len: usize) {
        if let Some(word) = self.lengths.get_mut(len / 64) {
            *word |= 1 << (len % 64);
        }
    }
}

impl Default for PathIndex {
    fn default() -> Self {
        PathIndex { nodes: HashMap::default(), max_depth: 0, lengths: [0; LENGTH_WORDS] }
    }
}

/// A node of an index: a segment-aware prefix and the routes that hang off it.
#[derive(Clone)]
struct Node {
    prefix: PathPrefix,
    candidates: Box<[Candidate]>,
}

/// A route at a node, with what it needs checked (`None`: nothing; the common case).
///
/// Order at one node, fixed when the route is added: conditioned routes first, by path
/// specificity (`path` exact, then `path_beg` or a plain prefix with header conditions,
/// longer value first, then `path_end`, longer first, then `path_reg`), then by the number
/// of conditions (more first: each `serviceHeader` entry counts one, a `userAgent` list one),
/// then by service name and path text; the unconditioned route last.
#[derive(Clone)]
struct Candidate {
    slot: Arc<ServiceSlot>,
    test: Option<Arc<RouteTest>>,
    /// What editing needs and lookups do not: its place and its claim.
    meta: Arc<CandidateMeta>,
}

/// A candidate's place at its node and the route it claims on its host, as text (`/api`,
/// `/api (pathType=path_beg)`, `/api (userAgent=mobile)`): two services with the same claim
/// on one host collide, and such claims always meet at the same node.
struct CandidateMeta {
    order: build::Order,
    claim: String,
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
