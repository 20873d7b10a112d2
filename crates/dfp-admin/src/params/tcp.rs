//! The parameters of a TCP service (`reqMode=tcp` or `reqMode=sni`, with `srcPort`): which
//! ones a TCP destination may be given, how its port and mode are read, and how stored HTTP
//! calls from versions that ignored the TCP-only ones are replayed. Apart from `mod.rs`,
//! which reads HTTP routes.
//!
//! The modes, as Docker Flow Proxy names them: `reqMode=tcp` forwards every connection to
//! the port as it is; `reqMode=sni` passes TLS through untouched to the service whose
//! `serviceDomain` the ClientHello names (several services share the port); and, this
//! proxy's addition, `reqMode=tcp` with `serviceDomain` ends TLS at the proxy with the
//! certificate for that name and forwards the decrypted bytes (several services may share
//! the port too, chosen by the name).

use std::collections::BTreeMap;

use dfp_routing::StreamTls;

use super::policy::{invalid, parse_port_named};
use crate::parity::{self, Status};
use crate::AdminError;

/// The parameters a TCP service may be given: the rest only mean something for HTTP.
const TCP_PARAMETERS: [&str; 15] = [
    "serviceName",
    "serviceDomain",
    "serviceColor",
    "port",
    "reqMode",
    "srcPort",
    "timeoutClient",
    "timeoutServer",
    "timeoutTunnel",
    "allowedSources",
    "deniedSources",
    "sendProxyProtocol",
    "instanceMaxConn",
    "timeoutQueue",
    "maxQueue",
];

/// Reads `reqMode`, `srcPort` and whether `serviceDomain` is given (`has_domains`): the TCP
/// port of a `reqMode=tcp`/`sni` destination and how its connections are taken, `None` for
/// HTTP. A TCP destination needs `srcPort`; `srcPort` needs a TCP mode; `sni` needs
/// `serviceDomain`; a TCP destination given an HTTP-only parameter (`has_paths`: a
/// `servicePath`) is refused naming all of them, so a migrating user learns at once what its
/// route would silently lose.
pub(super) fn tcp_port<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    has_paths: bool,
    has_domains: bool,
) -> Result<Option<(u16, StreamTls)>, AdminError> {
    let mode =
        match get("reqMode").map(str::trim) {
            None => None,
            Some(mode) if mode.eq_ignore_ascii_case("http") => None,
            Some(mode) if mode.eq_ignore_ascii_case("tcp") => {
                Some(if has_domains { StreamTls::Terminate } else { StreamTls::Plain })
            }
            Some(mode) if mode.eq_ignore_ascii_case("sni") => {
                if !has_domains {
                    return Err(AdminError::MissingParameter {
                        name: "serviceDomain",
                        example: "serviceDomain=db.example.com (the TLS server name a reqMode=sni \
                              service's connections ask for)",
                    });
                }
                Some(StreamTls::Passthrough)
            }
            Some(mode) => return Err(invalid(
                "reqMode",
                mode,
                "give reqMode=http (the default), reqMode=tcp with srcPort, or reqMode=sni with \
                 srcPort and serviceDomain",
            )),
        };
    let tcp = mode.is_some();
    let src_port = get("srcPort").map(|v| parse_port_named(v, "srcPort")).transpose()?;
    match (tcp, src_port) {
        (false, None) => Ok(None),
        (false, Some(port)) => Err(invalid(
            "srcPort",
            &port.to_string(),
            "it is the port of a TCP service; give reqMode=tcp or reqMode=sni too (an HTTP service is routed by servicePath on the proxy's listeners)",
        )),
        (true, None) => Err(AdminError::MissingParameter {
            name: "srcPort",
            example: "srcPort=6379 (the proxy's port that a reqMode=tcp or sni service is reached on)",
        }),
        (true, Some(port)) => {
            let mut http_only: Vec<&str> = parity::PARAMETERS
                .iter()
                .filter(|p| matches!(p.status, Status::Built { .. }))
                .map(|p| p.name)
                .filter(|name| !TCP_PARAMETERS.contains(name) && *name != "servicePath")
                .filter(|name| get(name).is_some())
                .collect();
            if has_paths {
                http_only.insert(0, "servicePath");
            }
            let mode = mode.unwrap_or_default();
            if http_only.is_empty() {
                Ok(Some((port, mode)))
            } else {
                Err(invalid(
                    "reqMode",
                    mode.req_mode(),
                    &format!(
                        "a TCP service's bytes are forwarded as they are, so HTTP-only parameters \
                         mean nothing for it; leave out {}",
                        http_only.join(", ")
                    ),
                ))
            }
        }
    }
}

/// A stored HTTP call (no `reqMode=tcp`) with `srcPort` or `timeoutClient`: versions that
/// refused both stored them as ignored, so a restore ignores them again instead of skipping
/// the route (an upgrade keeps serving it as it was served).
pub(super) fn forget_tcp_only_of_http(
    params: &mut BTreeMap<String, String>,
    ignored: &mut Vec<String>,
) {
    let tcp = params.iter().any(|(k, v)| {
        (k == "reqMode" || k.starts_with("reqMode.")) && v.trim().eq_ignore_ascii_case("tcp")
    });
    if tcp {
        return;
    }
    let tcp_only = |k: &str| {
        k.split('.').next().is_some_and(|base| base == "srcPort" || base == "timeoutClient")
    };
    params.retain(|k, _| {
        if tcp_only(k) {
            if !ignored.iter().any(|seen| seen == k) {
                ignored.push(k.clone());
            }
            false
        } else {
            true
        }
    });
}
