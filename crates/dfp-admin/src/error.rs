//! Why an admin call failed, and the one place each failure gets its status code.

use dfp_routing::{BuildError, PrefixError};

/// A failed admin call. Whatever the variant, the live table is as it was before the call.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("parameter {name} is missing; add it, e.g. {example}")]
    MissingParameter { name: &'static str, example: &'static str },
    #[error("parameter {name}={value:?} is invalid: {reason}")]
    InvalidParameter { name: &'static str, value: String, reason: String },
    #[error("parameter {name} is refused: {instead}")]
    RefusedParameter { name: String, instead: &'static str },
    #[error("destination {index} (the parameters ending in .{index}, over the unindexed ones): {source}")]
    InDestination {
        index: u8,
        #[source]
        source: Box<AdminError>,
    },
    #[error("{source}")]
    DestinationsOverlap {
        #[source]
        source: BuildError,
    },
    #[error("parameter servicePath is invalid: {source}")]
    InvalidPath {
        #[source]
        source: PrefixError,
    },
    #[error("service {service:?} is unknown to {registry}; {hint}, and call reconfigure again")]
    UnknownService { service: String, registry: &'static str, hint: &'static str },
    #[error("service {0:?} is not routed by this proxy; GET /v1/docker-flow-proxy/config lists those that are")]
    NotRouted(String),
    #[error("{source}")]
    PathConflict {
        #[source]
        source: BuildError,
    },
    #[error(
        "port {port} (srcPort) is the proxy's own {listener} listener; choose another srcPort"
    )]
    PortReserved { port: u16, listener: &'static str },
    #[error(
        "port {port} (srcPort) cannot be listened on: {source}; free the port or choose \
         another srcPort (the routing table was left unchanged)"
    )]
    PortUnavailable {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}; the routing table was left unchanged, call again once it is reachable")]
    RegistryUnavailable { what: String },
    /// Consul answered, but its ACLs refused the call: the message names the call and the
    /// rule the token lacks.
    #[error(
        "{what}; the routing table was left unchanged, call again once Consul's ACLs allow it"
    )]
    RegistryDenied { what: String },
    #[error("{what}; the routing table was left unchanged, call again once the store is writable")]
    StoreUnavailable { what: String },
    #[error("internal error: {0}; the routing table was left unchanged")]
    Internal(String),
    #[error("certificate {name:?} was refused: {source}")]
    InvalidCert {
        name: String,
        #[source]
        source: dfp_tls::CertError,
    },
    #[error("no uploaded certificate is named {0:?}; GET /v1/docker-flow-proxy/certs lists them")]
    NoSuchCert(String),
    #[error(
        "certificate {name:?} comes from --certs-dir and cannot be deleted here; remove \
         {name}.pem from that directory and restart the proxy"
    )]
    CertFromDir { name: String },
    #[error(
        "no admin endpoint at {0}; see GET /v1/docker-flow-proxy/config, routes, reconfigure, \
         remove, reload, ping, cert, certs"
    )]
    NoSuchEndpoint(String),
    #[error("method {method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed { method: String, path: String, allowed: &'static str },
    #[error("this admin API requires credentials and {reason}; {how}")]
    Unauthorized { reason: &'static str, how: &'static str },
}

impl AdminError {
    /// The parameter this failure is about, when it is about one.
    pub fn parameter(&self) -> Option<&str> {
        match self {
            AdminError::MissingParameter { name, .. }
            | AdminError::InvalidParameter { name, .. } => Some(name),
            AdminError::RefusedParameter { name, .. } => Some(name),
            AdminError::InvalidPath { .. } => Some("servicePath"),
            AdminError::PortReserved { .. } | AdminError::PortUnavailable { .. } => Some("srcPort"),
            AdminError::InDestination { source, .. } => source.parameter(),
            _ => None,
        }
    }

    /// A failed call to Consul, `doing` what (e.g. "storing the route in Consul KV failed"):
    /// refused by its ACLs, or unreachable.
    pub(crate) fn consul(doing: Option<&str>, err: &dfp_consul::ConsulError) -> AdminError {
        let what = match doing {
            Some(doing) => format!("{doing}: {err}"),
            None => err.to_string(),
        };
        match err {
            dfp_consul::ConsulError::PermissionDenied { .. } => AdminError::RegistryDenied { what },
            _ => AdminError::RegistryUnavailable { what },
        }
    }

    /// The HTTP status of this failure: the client's mistakes are 4xx, an unreachable registry
    /// is 503. Exhaustive on purpose: a new variant must choose its status here.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::MissingParameter { .. }
            | AdminError::InvalidParameter { .. }
            | AdminError::RefusedParameter { .. }
            | AdminError::InvalidPath { .. }
            | AdminError::DestinationsOverlap { .. }
            | AdminError::InvalidCert { .. }
            | AdminError::PortUnavailable { .. } => 400,
            AdminError::InDestination { source, .. } => source.status(),
            AdminError::NoSuchCert(_) => 404,
            AdminError::CertFromDir { .. } => 409,
            AdminError::UnknownService { .. } | AdminError::NotRouted(_) => 404,
            AdminError::Unauthorized { .. } => 401,
            AdminError::NoSuchEndpoint(_) => 404,
            AdminError::MethodNotAllowed { .. } => 405,
            AdminError::PathConflict { .. } | AdminError::PortReserved { .. } => 409,
            AdminError::Internal(_) => 500,
            AdminError::RegistryUnavailable { .. }
            | AdminError::RegistryDenied { .. }
            | AdminError::StoreUnavailable { .. } => 503,
        }
    }
}
