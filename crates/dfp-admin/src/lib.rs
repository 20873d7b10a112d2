//! The control plane's front door: the admin listener and the reconfigure/remove logic.
//!
//! It owns the set of configured services, asks [`Discovery`] (Consul, or DNS in standalone
//! mode) for their instances, builds each new route table off to the side and publishes it
//! through the shared [`dfp_routing::TableHandle`]. A call that fails publishes nothing.
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
//! | GET, PUT | `/v1/docker-flow-proxy/reconfigure?serviceName=N&servicePath=/a,/b[&port=P]` | 200: paths, instances, table version | 400 missing or invalid parameter; 404 service unknown to Consul (or to DNS, standalone); 409 path owned by another service; 503 Consul unreachable |
//! | GET, PUT, DELETE | `/v1/docker-flow-proxy/remove?serviceName=N` | 200 | 400 no `serviceName`; 404 service not routed |
//! | GET | `/v1/docker-flow-proxy/config` | 200: the live table (services, paths, instances, version) | |
//! | GET | `/v1/docker-flow-proxy/ping` | 200 | |
//! | GET | `/metrics` | 200: Prometheus text | |
//!
//! Any other path answers 404 and any other method 405, both as `NOK` JSON.

mod api;
mod controller;
mod discovery;
mod error;
mod params;

pub use api::{handle, serve};
pub use controller::{AdminCounters, Controller, ReconfigureReport, RemoveReport};
pub use discovery::Discovery;
pub use error::AdminError;
pub use params::ReconfigureRequest;
