//! The data plane: accepts client connections on the proxy port and forwards each request to
//! an instance of the service that owns its path.
//!
//! It owns the accept loop, the per-connection HTTP/1.1 server, header rewriting, the pooled
//! upstream client and the mapping of failures to status codes. The only thing it reads from
//! the control plane is the [`dfp_routing::TableHandle`]: one wait-free load per request.
//!
//! It must not know about Consul, the admin API or how tables are built, and it never waits on
//! them: a reconfigure in progress cannot slow a request down.

mod conn;
mod error;
mod forward;
mod headers;
mod path;
mod server;
mod tunnel;

pub use server::{serve, ConnectionStats, ProxyConfig};
