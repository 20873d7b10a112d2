//! Where a service's instances come from: Consul, or DNS in standalone mode.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dfp_consul::{ConsulClient, Instance, ServiceLookup};

use crate::AdminError;

/// How long a DNS lookup of one name may take before it counts as failed.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// The source of instances.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// Instances are the passing entries of Consul's health endpoint.
    Consul(Arc<ConsulClient>),
    /// Standalone: instances are every address the service name resolves to, at `port`.
    Dns,
}

/// How strict a lookup is about a service the registry does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strictness {
    /// An interactive reconfigure: an unknown service is a 404 (a typo guard).
    Interactive,
    /// Restoring stored routes: an unknown service is routed with no instance for now.
    Restore,
}

/// The instances found for a service, and anything the caller should be told about them.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) instances: Vec<SocketAddr>,
    pub(crate) warnings: Vec<String>,
}

impl Discovery {
    /// A short name for messages and the `config` answer.
    pub fn mode(&self) -> &'static str {
        match self {
            Discovery::Consul(_) => "consul",
            Discovery::Dns => "standalone",
        }
    }

    /// Finds the instances of `service`. An unreachable registry is an error; a known
    /// service with no live instance is an empty list with a warning.
    pub(crate) async fn instances(
        &self,
        service: &str,
        port: Option<u16>,
        strictness: Strictness,
    ) -> Result<Found, AdminError> {
        match self {
            // With Consul the controller has dropped `port` already: Consul gives the ports.
            Discovery::Consul(consul) => consul_instances(consul, service, strictness).await,
            Discovery::Dns => dns_instances(service, port, strictness).await,
        }
    }
}

async fn consul_instances(
    consul: &ConsulClient,
    service: &str,
    strictness: Strictness,
) -> Result<Found, AdminError> {
    let lookup =
        consul.lookup_service(service).await.map_err(|err| AdminError::consul(None, &err))?;
    let registered = match lookup.value {
        ServiceLookup::Unknown if strictness == Strictness::Interactive => {
            return Err(AdminError::UnknownService {
                service: service.to_owned(),
                registry: "Consul",
                hint: "check the name (is it registered in Consul, e.g. by Registrator? \
                       `curl $CONSUL_ADDRESS/v1/catalog/services` lists the names; with Consul's \
                       ACLs on, a service the proxy's token may not read looks unknown too: the \
                       token needs service:read on it and node:read)",
            })
        }
        ServiceLookup::Unknown => Vec::new(),
        ServiceLookup::Known(instances) => instances,
    };
    let mut found = resolve_instances(&registered).await;
    finish(&mut found, service, "has no passing instance in Consul");
    Ok(found)
}

/// Turns Consul's instances into socket addresses (names resolved by DNS), sorted, deduped.
pub(crate) async fn resolve_instances(registered: &[Instance]) -> Found {
    let mut found = Found::default();
    for instance in registered {
        match resolve(&instance.address, instance.port).await {
            Ok(addrs) => found.instances.extend(addrs),
            Err(reason) => found.warnings.push(format!(
                "instance {} skipped: its address {:?} {reason}",
                instance.id, instance.address
            )),
        }
    }
    found.instances.sort_unstable();
    found.instances.dedup();
    found
}

async fn dns_instances(
    service: &str,
    port: Option<u16>,
    strictness: Strictness,
) -> Result<Found, AdminError> {
    let Some(port) = port else {
        return Err(AdminError::MissingParameter {
            name: "port",
            example: "port=8080 (standalone mode routes to serviceName:port as resolved by DNS)",
        });
    };
    let mut found = Found::default();
    match resolve(service, port).await {
        Ok(addrs) => found.instances = addrs,
        Err(reason) if strictness == Strictness::Interactive => {
            return Err(AdminError::UnknownService {
                service: service.to_owned(),
                registry: if reason.contains("timed out") {
                    "DNS (the lookup timed out)"
                } else {
                    "DNS"
                },
                hint: "standalone mode routes to serviceName:port, with serviceName resolved by \
                       DNS from the proxy; check the name resolves there (e.g. `getent hosts \
                       NAME`), or give an IP address",
            })
        }
        Err(reason) => found.warnings.push(format!("{service:?} {reason}")),
    }
    finish(&mut found, service, "resolves to no address");
    Ok(found)
}

/// Re-resolves a standalone service: `None` when DNS failed (keep what was there).
pub(crate) async fn dns_refresh(service: &str, port: u16) -> Option<Vec<SocketAddr>> {
    let mut addrs = resolve(service, port).await.ok()?;
    addrs.sort_unstable();
    addrs.dedup();
    Some(addrs)
}

fn finish(found: &mut Found, service: &str, none_message: &str) {
    found.instances.sort_unstable();
    found.instances.dedup();
    if found.instances.is_empty() {
        found.warnings.push(format!(
            "service {service:?} {none_message}; its paths answer 503 until one is available"
        ));
    }
}

/// An IP address as is; a name through the system resolver, bounded in time.
async fn resolve(address: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if address.is_empty() {
        return Err("is empty".to_owned());
    }
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((address, port))).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(err)) => Err(format!("does not resolve ({err})")),
        Err(_) => Err(format!("timed out resolving after {DNS_TIMEOUT:?}")),
    }
}
