//! Every reconfigure parameter Docker Flow Proxy documents, and what this proxy does with it.
//!
//! Docker Flow Proxy's users (and Docker Flow Swarm Listener, which turns `com.df.*` labels
//! into reconfigure calls) send its parameters unchanged. One that we silently ignored would
//! give a migrating user different behaviour without an error, so each parameter has exactly
//! one status here, and [`crate::ReconfigureRequest::from_pairs`] acts on it:
//!
//! - [`Status::Built`]: this proxy acts on it, with Docker Flow Proxy's meaning;
//! - [`Status::Ignored`]: it means nothing here (HAProxy templates, swarm fan-out); the call
//!   is accepted and the answer's warnings say why;
//! - [`Status::Refused`]: its meaning is not built here; the call is a 400 that says what to
//!   use instead, and changes nothing.
//!
//! A parameter Docker Flow Proxy does not know at all is not in this table: tools send extras,
//! so it is accepted and named in the answer's warnings.
//!
//! The README's "Docker Flow Proxy parameters" table is checked against [`PARAMETERS`] row by
//! row (`readme_table_matches_the_code`), so the two cannot drift.

/// What this proxy does with one Docker Flow Proxy parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Acted on; `section` is the README heading (its anchor) that documents it.
    Built { section: &'static str },
    /// Accepted and ignored; `why` is the warning in the answer.
    Ignored { why: &'static str },
    /// A 400; `instead` says what to use instead or what happens.
    Refused { instead: &'static str },
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parameter {
    /// Docker Flow Proxy's name (camelCase, as in the query string).
    pub name: &'static str,
    pub status: Status,
}

const fn built(name: &'static str, section: &'static str) -> Parameter {
    Parameter { name, status: Status::Built { section } }
}

const fn ignored(name: &'static str, why: &'static str) -> Parameter {
    Parameter { name, status: Status::Ignored { why } }
}

const fn refused(name: &'static str, instead: &'static str) -> Parameter {
    Parameter { name, status: Status::Refused { instead } }
}

const OPTIONS: &str = "service-options";
const CONDITIONS: &str = "routing-conditions-pathtype-serviceheader-useragent";
const TCP: &str = "tcp-services";
const TCP_ONLY: &str = "not supported yet: a TCP service (reqMode=tcp or sni) is forwarded round \
                        robin to its instances; groups, TCP health checks and keep-alive flags \
                        are other issues";
const TEMPLATES: &str = "HAProxy templates and config snippets mean nothing here: there is no \
                         HAProxy config; the service's options are the reconfigure parameters";

/// Docker Flow Proxy's reconfigure parameters (its docs/usage.md: general, HTTP-mode and
/// TCP-mode query parameters, the environment-variable map, and remove's), plus this proxy's
/// own (`allowedSources`, `deniedSources`, `instanceMaxConn`, `letsEncrypt`, `maxQueue`,
/// `sendProxyProtocol`, `timeoutQueue`), in alphabetical
/// order within each block.
pub const PARAMETERS: &[Parameter] = &[
    // Built here.
    built("addReqHeader", OPTIONS),
    built("addResHeader", OPTIONS),
    built("allowedMethods", OPTIONS),
    built("allowedSources", OPTIONS),
    built("compressionAlgo", OPTIONS),
    built("compressionType", OPTIONS),
    built("delReqHeader", OPTIONS),
    built("delResHeader", OPTIONS),
    built("deniedMethods", OPTIONS),
    built("deniedSources", OPTIONS),
    built("denyHttp", OPTIONS),
    built("httpsOnly", OPTIONS),
    built("httpsRedirectCode", OPTIONS),
    built("ignoreAuthorization", OPTIONS),
    built("instanceMaxConn", OPTIONS),
    built("isDefaultBackend", OPTIONS),
    built("letsEncrypt", "lets-encrypt"),
    built("maxQueue", OPTIONS),
    built("pathType", CONDITIONS),
    built("port", "standalone-mode"),
    built("redirectFromDomain", OPTIONS),
    built("redirectUnlessHttpsProto", OPTIONS),
    built("redirectWhenHttpProto", OPTIONS),
    built("reqMode", TCP),
    built("reqPathReplace", OPTIONS),
    built("reqPathSearch", OPTIONS),
    built("reqPathSearchReplace", OPTIONS),
    built("sendProxyProtocol", OPTIONS),
    built("serviceColor", OPTIONS),
    built("serviceDomain", OPTIONS),
    built("serviceHeader", CONDITIONS),
    built("serviceName", "admin-api"),
    built("servicePath", "admin-api"),
    built("servicePathExclude", OPTIONS),
    built("sessionCookie", OPTIONS),
    built("sessionType", OPTIONS),
    built("setReqHeader", OPTIONS),
    built("setResHeader", OPTIONS),
    built("srcPort", TCP),
    built("timeoutClient", TCP),
    built("timeoutQueue", OPTIONS),
    built("timeoutServer", OPTIONS),
    built("timeoutTunnel", OPTIONS),
    built("userAgent", CONDITIONS),
    built("users", OPTIONS),
    built("usersPassEncrypted", OPTIONS),
    built("usersSecret", OPTIONS),
    built("verifyClientSsl", OPTIONS),
    // Meaningless here: accepted with a warning that says why.
    ignored(
        "aclName",
        "Docker Flow Proxy orders its rules by aclName; this proxy matches the longest \
         segment-aware path prefix first (so /.well-known/acme-challenge wins over / whatever \
         the names), so no sort key is needed",
    ),
    ignored("backendExtra", TEMPLATES),
    ignored(
        "checkResolvers",
        "instances are always re-resolved: followed in Consul, or re-resolved by DNS every \
         --dns-refresh standalone",
    ),
    ignored(
        "connectionMode",
        "an HAProxy connection mode; this proxy keeps client connections alive and pools \
         upstream connections (HAProxy's http-keep-alive) for every service",
    ),
    ignored(
        "discoveryType",
        "the discovery is chosen per proxy, not per service: Consul health with \
         --consul-address, DNS (serviceName:port) without",
    ),
    ignored(
        "distribute",
        "every replica reads the same store (Consul KV under --instance-name), so a call to one \
         replica reaches all of them without fan-out",
    ),
    ignored(
        "replicas",
        "the instances are those Consul (or DNS) lists, not a count sent with the call",
    ),
    ignored("templateBePath", TEMPLATES),
    ignored("templateFePath", TEMPLATES),
    ignored("userDef", "data for custom HAProxy templates, which do not exist here"),
    // Not built here: a 400 that says what to use instead.
    refused("balanceGroup", TCP_ONLY),
    refused("checkTcp", TCP_ONLY),
    refused("clitcpka", TCP_ONLY),
    refused(
        "httpsPort",
        "not supported yet: instances are reached over plain HTTP at their registered port \
         (or port, standalone); drop httpsPort",
    ),
    refused(
        "outboundHostname",
        "not supported yet: register the remote service in Consul (or, standalone, give a \
         serviceName that DNS resolves to it) and route it by serviceName",
    ),
    refused(
        "proxyInstanceName",
        "not supported: this proxy applies every call sent to it; send the call only to the \
         proxies that should route the service (each keeps its routes under its own \
         --instance-name)",
    ),
    refused(
        "serviceCert",
        "upload the certificate with PUT /v1/docker-flow-proxy/cert?certName=NAME (PEM chain \
         and key as the body) or put it in --certs-dir; it is served for the names it holds",
    ),
    refused(
        "serviceDomainAlgo",
        "not supported: serviceDomain matches the Host exactly, and a leading *. matches its \
         subdomains; drop serviceDomainAlgo and write the domains that way",
    ),
    refused("serviceGroup", TCP_ONLY),
    refused("srcHttpsPort", TCP_ONLY),
    refused(
        "sslVerifyNone",
        "not supported yet: instances are reached over plain HTTP, so there is no upstream \
         certificate to verify; drop sslVerifyNone",
    ),
];

/// How this proxy reads one parameter name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A row of [`PARAMETERS`], named as is.
    Known(Parameter),
    /// `<name>.<N>`: a Docker Flow Proxy indexed destination of a known parameter.
    Indexed(Parameter),
    /// Not a Docker Flow Proxy parameter.
    Unknown,
}

/// The row for `name`, if Docker Flow Proxy (or this proxy) knows it.
pub fn lookup(name: &str) -> Option<Parameter> {
    PARAMETERS.iter().copied().find(|p| p.name == name)
}

/// Reads a parameter name: known as is, indexed (`servicePath.1`), or unknown.
pub fn read(name: &str) -> Reading {
    if let Some(parameter) = lookup(name) {
        return Reading::Known(parameter);
    }
    match name.rsplit_once('.') {
        Some((base, index)) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
            lookup(base).map_or(Reading::Unknown, Reading::Indexed)
        }
        _ => Reading::Unknown,
    }
}

/// Whether this proxy acts on `name`.
pub fn is_built(name: &str) -> bool {
    matches!(lookup(name), Some(Parameter { status: Status::Built { .. }, .. }))
}

/// `camelCase` to Docker Flow Proxy's environment form: `SERVICE_PATH` for `servicePath`.
pub fn env_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parameter_has_one_row() {
        for (i, p) in PARAMETERS.iter().enumerate() {
            assert!(PARAMETERS[..i].iter().all(|q| q.name != p.name), "{} is listed twice", p.name);
            assert!(p.name.bytes().all(|b| b.is_ascii_alphanumeric()), "{}", p.name);
        }
    }

    #[test]
    fn names_read_as_docker_flow_proxy_sends_them() {
        let cases: &[(&str, &str)] = &[
            ("servicePath", "built"),
            ("distribute", "ignored"),
            ("sessionType", "built"),
            ("servicePath.1", "indexed"),
            ("port.10", "indexed"),
            ("userDef.1", "indexed"),
            ("servicePath.", "unknown"),
            ("servicePath.x", "unknown"),
            ("foo.1", "unknown"),
            ("com.df.notify", "unknown"),
            ("ServicePath", "unknown"),
        ];
        for (name, expected) in cases {
            let got = match read(name) {
                Reading::Known(Parameter { status: Status::Built { .. }, .. }) => "built",
                Reading::Known(Parameter { status: Status::Ignored { .. }, .. }) => "ignored",
                Reading::Known(Parameter { status: Status::Refused { .. }, .. }) => "refused",
                Reading::Indexed(_) => "indexed",
                Reading::Unknown => "unknown",
            };
            assert_eq!(got, *expected, "{name}");
        }
    }

    #[test]
    fn env_names_are_docker_flow_proxys() {
        for (param, env) in [
            ("servicePath", "SERVICE_PATH"),
            ("aclName", "ACL_NAME"),
            ("port", "PORT"),
            ("redirectUnlessHttpsProto", "REDIRECT_UNLESS_HTTPS_PROTO"),
            ("templateBePath", "TEMPLATE_BE_PATH"),
            ("reqPathSearchReplace", "REQ_PATH_SEARCH_REPLACE"),
        ] {
            assert_eq!(env_name(param), env);
        }
    }

    /// The README's table, row for row: name, status, and the built row's link or the
    /// ignored/refused row's reason, exactly as here.
    #[test]
    fn readme_table_matches_the_code() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("<!-- parity-table:start -->")
            .expect("README.md has a <!-- parity-table:start --> marker");
        let end = readme
            .find("<!-- parity-table:end -->")
            .expect("README.md has a <!-- parity-table:end --> marker");
        let got: Vec<&str> = readme[start..end].lines().filter(|l| l.starts_with("| `")).collect();
        let want: Vec<String> = PARAMETERS.iter().map(readme_row).collect();
        let expected = want.join("\n");
        assert_eq!(
            got.join("\n"),
            expected,
            "README.md's parity table differs from parity.rs; replace its rows with:\n{expected}"
        );
    }

    fn readme_row(p: &Parameter) -> String {
        match p.status {
            Status::Built { section } => {
                format!("| `{}` | built | [{section}](#{section}) |", p.name)
            }
            Status::Ignored { why } => format!("| `{}` | ignored | {why} |", p.name),
            Status::Refused { instead } => format!("| `{}` | refused (400) | {instead} |", p.name),
        }
    }
}
