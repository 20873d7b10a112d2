//! The control plane's front door: the admin listener and the reconfigure/remove logic.
//!
//! It owns the set of configured services, asks [`Discovery`] (Consul, or DNS in standalone
//! mode) for their instances, builds each new route table off to the side and publishes it
//! through the shared [`dfp_routing::TableHandle`]. A call that fails publishes nothing.
//!
//! Routes are kept in a [`RouteStore`] (Consul KV, or a state file standalone) and restored
//! at start. After that, followers keep each service's instances current (Consul blocking
//! queries, or DNS re-resolution) and, with Consul, follow the store itself so that every
//! replica sharing an instance name converges on the same routes.
//!
//! TLS certificates are uploaded, listed and deleted here too ([`CertAdmin`]), kept beside the
//! routes (Consul KV or files) and published through the shared [`dfp_tls::CertStore`].
//!
//! It must not serve proxied traffic or touch connections: the data plane only ever sees the
//! tables this crate publishes.
//!
//! # Endpoints
//!
//! All answers are JSON with Docker Flow Proxy's field names: `{"Status":"OK",...}` on success,
//! `{"Status":"NOK","Message":"<what was wrong and what to do>"}` on failure.
//!
//! | method | path | success | failures |
//! |---|---|---|---|
//! | GET, PUT | `/v1/docker-flow-proxy/reconfigure?serviceName=N&servicePath=/a,/b[&port=P]` (or `reqMode=tcp&srcPort=S` for a TCP service) | 200: paths, instances, table version | 400 missing or invalid parameter, or a `srcPort` the proxy cannot listen on; 404 service unknown to Consul (or to DNS, standalone); 409 path (or `srcPort`) owned by another service, or a `srcPort` that is one of the proxy's own listeners; 503 Consul unreachable, or its ACLs refused a call (the message names the rule) |
//! | GET, PUT, DELETE | `/v1/docker-flow-proxy/remove?serviceName=N` | 200 | 400 no `serviceName`; 404 service not routed |
//! | GET | `/v1/docker-flow-proxy/config` | 200: the live table (services, paths, instances, version); with `type=json`, Docker Flow Proxy's shape (a map of `Service`s) | |
//! | GET, PUT | `/v1/docker-flow-proxy/reload[?recreate=true]` | 200: without `recreate` a no-op (every reconfigure is live already); with it (or `fromListener=true`) the stored routes are read again and the table made to match | 503 store unreadable |
//! | GET | `/v1/docker-flow-proxy/routes` | 200: every route (path, host, service) with each instance's passive health (`healthy`, `ejected`, `probing`) | |
//! | GET | `/v1/docker-flow-proxy/ping` | 200 | |
//! | PUT | `/v1/docker-flow-proxy/cert?certName=N`, body: PEM chain and key | 200: names, notAfter; stored, then served | 400 bad name, PEM, key or validity; 503 store unwritable |
//! | DELETE | `/v1/docker-flow-proxy/cert?certName=N` | 200 | 400 no `certName`; 404 no such uploaded certificate; 409 it comes from `--certs-dir`; 503 store unwritable |
//! | GET | `/v1/docker-flow-proxy/certs` | 200: each certificate's name, DNS names, validity (never the key) | |
//! | GET | `/metrics` | 200: Prometheus text | |
//!
//! Any other path answers 404 and any other method 405, both as `NOK` JSON.
//!
//! # Credentials
//!
//! Optional ([`AdminAuth`]): with HTTP basic auth and/or a bearer token configured, every call
//! but `GET`/`HEAD /v1/docker-flow-proxy/ping` and `GET /metrics` must carry one of them in
//! `Authorization`; otherwise it answers 401 with `WWW-Authenticate` challenges and `NOK` JSON
//! saying what to send, before anything else is looked at. Without credentials every call is
//! open, as in Docker Flow Proxy.

#![forbid(unsafe_code)]

mod acme;
mod api;
mod auth;
mod certs;
mod controller;
mod discovery;
pub mod env_services;
mod error;
mod follow;
mod local_writes;
mod mirror;
mod params;
#[cfg(test)]
mod params_fuzz;
pub mod parity;
mod replicas;
mod store;
mod tcp_ports;
mod users;

/// Now, in Unix seconds (0 before 1970, saturated far after).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub use acme::{
    AcmeConfig, AcmeError, AcmeManager, ChallengeKind, LETS_ENCRYPT, LETS_ENCRYPT_STAGING,
};
pub use api::{handle, serve, AdminBody, MetricsBody};
pub use auth::{secret_from_file, AdminAuth, CredentialError, Credentials};
pub use certs::CertAdmin;
pub use controller::{
    AdminCounters, Controller, FollowConfig, Identity, LastChange, MetricsHook, ReconfigureReport,
    RegistryHealth, RemoveReport,
};
pub use discovery::Discovery;
pub use error::AdminError;
pub use params::{CallParams, ReconfigureRequest};
pub use replicas::{start_presence, Presence, Replica};
pub use store::{Params, RouteStore, StoreError};
pub use tcp_ports::{ReservedPorts, TcpPorts};
pub use users::{read_users_file, UsersConfig, UsersError, DEFAULT_SECRETS_DIR};
