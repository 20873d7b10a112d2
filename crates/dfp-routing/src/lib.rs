//! The routing model: which service owns which URL path, and which instance gets the next request.
//!
//! This crate owns the data the data plane reads on every request and the control plane
//! replaces on every reconfigure:
//!
//! - [`PathPrefix`]: a service path, validated once when it is configured, never re-checked on
//!   the hot path.
//! - [`RouteTableBuilder`] / [`RouteTable`]: an immutable table built off to the side. Building
//!   refuses a path owned by two services, so a table that exists is consistent.
//! - [`TableHandle`]: the one `ArcSwap` through which a whole table is published. Readers never
//!   lock and never see a half-built table; writers swap, they never patch in place.
//! - [`RouteConditions`] / [`PathPattern`]: Docker Flow Proxy's `serviceHeader`, `userAgent`
//!   and `pathType`, compiled once; evaluated only on the candidates at the index nodes a
//!   lookup visits.
//! - [`Backend`]: a routed service's instances with an exact, lock-free round robin that steps
//!   over instances passive health has ejected, and the service's counters.
//!
//! It must not do IO: no sockets, no tokio, no hyper, no serde. Nothing here can fail at
//! request time; a lookup either finds a backend or it does not.

#![forbid(unsafe_code)]

mod access;
mod backend;
mod compression;
mod condition;
mod policy;
mod prefix;
mod queue;
mod stats;
mod table;

pub use access::{canonical, client_address, MethodList, SourceList};
pub use backend::{
    health_clock_ms, sticky_token, Backend, InstanceHealth, InstanceSlot, Upstream, EJECT_FIRST_MS,
    EJECT_MAX_MS,
};
pub use compression::{Compression, CompressionAlgo};
pub use condition::{
    ConditionError, HeaderCondition, NoFields, PathPattern, PathType, RequestFields,
    RouteConditions,
};
pub use policy::{
    Authentication, Credential, Domain, DomainRedirect, HeaderEdits, PathRewrite, PolicyError,
    ProtoRedirect, ProxyProtocol, ServicePolicy, StickySession, UsersEntry, UsersFrom,
    LONGEST_TIMEOUT,
};
pub use prefix::{PathPrefix, PrefixError};
pub use queue::Ticket;
pub use stats::{count_answers_on_shard, BackendStats, ANSWER_SHARDS, LATENCY_BUCKETS_MS};
pub use table::{
    service_key, BuildError, RouteMatch, RouteTable, RouteTableBuilder, ServiceRoutes, ServiceSpec,
    StreamTls, TableEditor, TableHandle,
};
