//! The data plane: accepts client connections on the proxy port and forwards each request to
//! an instance of the service that owns its path.
//!
//! It owns the accept loops, the per-connection HTTP servers (HTTP/1.1; over TLS also HTTP/2),
//! TLS termination, header rewriting, the pooled upstream client and the mapping of failures
//! to status codes. What it reads from the control plane is two handles, each one `ArcSwap`
//! of a whole immutable value: the [`dfp_routing::TableHandle`] (one wait-free load per
//! request) and, for TLS ([`serve_tls`]), the [`dfp_tls::CertStore`] (one load per handshake).
//!
//! It must not know about Consul, the admin API or how tables are built, and it never waits on
//! them: a reconfigure in progress cannot slow a request down.

mod chunked;
mod conn;
mod error;
mod fast_lane;
mod forward;
mod headers;
mod path;
mod pool;
mod server;
mod tls;
mod tunnel;

pub use server::{serve, ConnectionStats, ProxyConfig};
pub use tls::serve_tls;
