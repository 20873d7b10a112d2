//! The data plane: accepts client connections on the proxy port and forwards each request to
//! an instance of the service that owns its path.
//!
//! It owns the accept loops, the HTTP engines (its own HTTP/1 codec for plain and TLS
//! connections, hyper's HTTP/2 server for HTTP/2 clients), TLS termination, the one set of
//! rules both engines follow (`rules/`: checks, forwarded fields, policy, failures, records),
//! the per-thread upstream connections and the mapping of failures to status codes. What it reads from the control plane is two handles, each one `ArcSwap`
//! of a whole immutable value: the [`dfp_routing::TableHandle`] (one wait-free load per
//! request) and, for TLS ([`serve_tls`]), the [`dfp_tls::CertStore`] (one load per handshake).
//!
//! It must not know about Consul, the admin API or how tables are built, and it never waits on
//! them: a reconfigure in progress cannot slow a request down.

#![forbid(unsafe_code)]

mod chunked;
mod client_hello;
mod compress;
mod conn;
mod error;
mod forward;
#[cfg(test)]
mod fuzz;
mod h1;
mod metrics;
mod path;
mod proxy_protocol;
mod rules;
mod server;
mod tcp;
mod tls;
mod trailers;
mod tunnel;
mod upstream;

pub use metrics::own_answers;
pub use server::{serve, ConnectionStats, ProxyConfig, DEFAULT_MAX_CONNECTIONS};
pub use tcp::{TcpHost, TCP_BUFFER};
pub use tls::serve_tls;
