//! The JSON views of the live table: `config` (services, paths, instances, version),
//! `config?type=json` (Docker Flow Proxy's `Service` shape) and `routes` (every route with its
//! instances' passive health). Split out of `api.rs` (a pure move): rendering, not routing.

use dfp_routing::StreamTls;
use http::HeaderValue;
use serde::Serialize;
use std::collections::BTreeMap;

use crate::controller::Controller;
use crate::Discovery;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ConfigAnswer {
    status: &'static str,
    mode: &'static str,
    table_version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    consul: Option<ConsulView>,
    /// With `stats=true`: the proxy itself (the dashboard's header).
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<super::live::ProxyView>,
    /// With `filter`, `offset` or `limit`: the services that match, before paging.
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<usize>,
    services: Vec<ServiceView>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConsulView {
    agents: Vec<String>,
    /// `null` until the first call to Consul.
    reachable: Option<bool>,
    last_error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceView {
    service_name: String,
    /// Docker Flow Proxy's destination index (`servicePath.N`...): shown for services with
    /// indexed destinations, 0 for the unindexed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u8>,
    service_path: Vec<String>,
    /// Docker Flow Proxy's `pathType` of `service_path`; absent: segment-aware prefixes.
    #[serde(skip_serializing_if = "Option::is_none")]
    path_type: Option<&'static str>,
    /// `Name:value` entries, every one required (field names lowercase).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_header: Vec<String>,
    /// Lowercase substrings, any one of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    user_agent: Vec<String>,
    instances: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_domain: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_path_exclude: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_default_backend: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_color: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_sources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    denied_sources: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deny_http: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    verify_client_ssl: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    compression_algo: Option<String>,
    /// Empty with an algorithm: every type.
    #[serde(skip_serializing_if = "Option::is_none")]
    compression_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    send_proxy_protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_max_conn: Option<u32>,
    /// Seconds; `0`: no queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_queue: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_queue: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    denied_methods: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    https_redirect_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_when_http_proto: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_unless_https_proto: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    redirect_from_domain: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    req_path_search: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    req_path_replace: Option<String>,
    /// `search,replace` pairs, in the order they apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    req_path_search_replace: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_cookie: Option<String>,
    /// User names only: passwords and hashes never leave the proxy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    users: Vec<String>,
    /// Where the users come from: `service` (its `users`), `secret` (its `usersSecret`) or
    /// `global` (the proxy's `USERS` or users file).
    #[serde(skip_serializing_if = "Option::is_none")]
    users_from: Option<&'static str>,
    /// The secret's name (`dfp_users_<name>`), never its content.
    #[serde(skip_serializing_if = "Option::is_none")]
    users_secret: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_authorization: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_headers: Option<HeaderEditsView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_headers: Option<HeaderEditsView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_server: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_tunnel: Option<u64>,
    /// `tcp` or `sni` for a TCP service (absent: HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    req_mode: Option<&'static str>,
    /// A TCP service chosen by TLS server name (its `ServiceDomain`): `passthrough`
    /// (`reqMode=sni`: the instance ends TLS) or `terminated` (`reqMode=tcp` with
    /// `serviceDomain`: the proxy ends TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'static str>,
    /// A TCP service's port on the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    src_port: Option<u16>,
    /// Whether a TCP service's port accepts connections (`false`: it could not be listened
    /// on when it was restored; a reconfigure once the port is free opens it).
    #[serde(skip_serializing_if = "Option::is_none")]
    listening: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_client: Option<u64>,
    /// The service's further destinations (indexed `servicePath.N`...), each with its own
    /// paths, hosts, options and instances; the fields above are the first destination's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    destinations: Vec<ServiceView>,
    /// With `stats=true`: each instance's passive health as the data plane sees it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_health: Option<Vec<InstanceView>>,
    /// With `stats=true`: the service's counters (shared by its destinations).
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<super::live::StatsView>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HeaderEditsView {
    delete: Vec<String>,
    set: Vec<String>,
    add: Vec<String>,
}

fn header_edits_view(edits: &dfp_routing::HeaderEdits) -> Option<HeaderEditsView> {
    let pairs = |list: &[(http::HeaderName, HeaderValue)]| {
        list.iter().map(|(n, v)| format!("{n} {}", String::from_utf8_lossy(v.as_bytes()))).collect()
    };
    (!edits.is_empty()).then(|| HeaderEditsView {
        delete: edits.delete.iter().map(ToString::to_string).collect(),
        set: pairs(&edits.set),
        add: pairs(&edits.add),
    })
}

fn service_view(
    s: &dfp_routing::ServiceRoutes<'_>,
    listening: &dyn Fn(u16) -> bool,
) -> ServiceView {
    use dfp_routing::{ProtoRedirect, UsersFrom};
    let policy = s.backend.policy();
    let redirected = |d: &&dfp_routing::Domain| {
        policy.domain_redirect.as_ref().is_some_and(|r| r.from.contains(d))
    };
    let https_redirect_code = policy.https_redirect.or(policy.proto_redirect.map(|(_, code)| code));
    let proto = policy.proto_redirect.map(|(when, _)| when);
    ServiceView {
        service_name: s.backend.service().to_owned(),
        index: (s.index > 0 || s.destination > 0).then_some(s.index),
        service_path: s
            .prefixes
            .iter()
            .map(ToString::to_string)
            .chain(s.patterns.iter().map(|p| p.as_str().to_owned()))
            .collect(),
        path_type: s.patterns.first().map(|p| p.kind().as_str()),
        service_header: s.conditions.headers.iter().map(ToString::to_string).collect(),
        user_agent: s.conditions.user_agents.iter().map(ToString::to_string).collect(),
        instances: s.backend.addrs().map(|a| a.to_string()).collect(),
        service_domain: s
            .domains
            .iter()
            .filter(|d| !redirected(d))
            .map(ToString::to_string)
            .collect(),
        service_path_exclude: s.excluded.iter().map(ToString::to_string).collect(),
        is_default_backend: s.default_backend,
        service_color: s.color.map(str::to_owned),
        allowed_sources: policy.allowed_sources.entries().collect(),
        denied_sources: policy.denied_sources.entries().collect(),
        deny_http: policy.deny_http,
        verify_client_ssl: policy.verify_client_cert,
        compression_algo: policy
            .compression
            .as_ref()
            .map(|c| c.algos().map(|a| a.token()).collect::<Vec<_>>().join(" ")),
        compression_type: policy
            .compression
            .as_ref()
            .map(|c| c.types().collect::<Vec<_>>().join(" "))
            .filter(|t| !t.is_empty()),
        send_proxy_protocol: policy.send_proxy.map(dfp_routing::ProxyProtocol::token),
        instance_max_conn: policy.instance_max_conn.map(std::num::NonZeroU32::get),
        timeout_queue: policy.queue_timeout.map(|d| d.as_secs()),
        max_queue: policy.max_queue.map(std::num::NonZeroU32::get),
        allowed_methods: policy.allowed_methods.names().map(str::to_owned).collect(),
        denied_methods: policy.denied_methods.names().map(str::to_owned).collect(),
        https_redirect_code,
        redirect_when_http_proto: (proto == Some(ProtoRedirect::WhenHttp)).then_some(true),
        redirect_unless_https_proto: (proto == Some(ProtoRedirect::UnlessHttps)).then_some(true),
        redirect_from_domain: policy
            .domain_redirect
            .iter()
            .flat_map(|r| r.from.iter().map(ToString::to_string))
            .collect(),
        req_path_search: policy.path_rewrite.as_ref().map(|r| r.search().to_owned()),
        req_path_replace: policy.path_rewrite.as_ref().map(|r| r.replacement().to_owned()),
        req_path_search_replace: policy
            .search_replace
            .iter()
            .map(|r| format!("{},{}", r.search(), r.replacement()))
            .collect(),
        session_type: policy.sticky.as_ref().map(|_| "sticky-server"),
        session_cookie: policy.sticky.as_ref().map(|s| s.cookie().to_owned()),
        users: policy.auth.users().iter().map(|u| u.user().to_owned()).collect(),
        users_from: policy.auth.from().map(|from| match from {
            UsersFrom::Service => "service",
            UsersFrom::Secret(_) => "secret",
            UsersFrom::Global => "global",
        }),
        users_secret: match policy.auth.from() {
            Some(UsersFrom::Secret(name)) => Some(name.to_string()),
            Some(UsersFrom::Service | UsersFrom::Global) | None => None,
        },
        ignore_authorization: matches!(policy.auth, dfp_routing::Authentication::Ignored),
        request_headers: header_edits_view(&policy.request_headers),
        response_headers: header_edits_view(&policy.response_headers),
        timeout_server: policy.server_timeout.map(|d| d.as_secs()),
        timeout_tunnel: policy.tunnel_timeout.map(|d| d.as_secs()),
        req_mode: s.tcp_port.map(|_| s.stream_tls.req_mode()),
        tls: match (s.tcp_port, s.stream_tls) {
            (None, _) | (_, StreamTls::Plain) => None,
            (Some(_), StreamTls::Passthrough) => Some("passthrough"),
            (Some(_), StreamTls::Terminate) => Some("terminated"),
        },
        src_port: s.tcp_port,
        listening: s.tcp_port.map(listening),
        timeout_client: policy.client_timeout.map(|d| d.as_secs()),
        destinations: Vec::new(),
        instance_health: None,
        stats: None,
    }
}

/// The live table's services, each with its further destinations nested in it.
fn service_views(table: &dfp_routing::RouteTable, controller: &Controller) -> Vec<ServiceView> {
    service_views_where(table, controller, &super::live::ConfigQuery::default()).0
}

/// The views of the services `query` asks for (all by default; a page of those its filter
/// matches), with live figures when it asks for them, and how many services matched:
/// `config`, `config?stats=true…` and the dashboard are this one model. Only the services on
/// the page are rendered, so a page of a 10,000-route table costs a page.
fn service_views_where(
    table: &dfp_routing::RouteTable,
    controller: &Controller,
    query: &super::live::ConfigQuery,
) -> (Vec<ServiceView>, usize) {
    let listening = |port| controller.tcp_listening(port);
    let now_ms = dfp_routing::health_clock_ms();
    let page = if query.pages() {
        query.offset..query.offset.saturating_add(query.limit)
    } else {
        0..usize::MAX
    };
    let mut views: Vec<ServiceView> = Vec::with_capacity(table.services().len().min(page.len()));
    let (mut matched, mut shown) = (0_usize, false);
    for s in table.services() {
        if s.destination == 0 {
            // A service's further destinations go with its first.
            let hit = query.matches(&s);
            shown = hit && page.contains(&matched);
            matched += usize::from(hit);
        }
        if !shown {
            continue;
        }
        let mut view = service_view(&s, &listening);
        if query.stats {
            view.instance_health = Some(instance_views(s.backend, now_ms));
            if s.destination == 0 {
                view.stats = Some(super::live::StatsView::of(s.backend.stats()));
            }
        }
        match views.last_mut() {
            Some(first) if s.destination > 0 => {
                first.index.get_or_insert(0);
                first.destinations.push(view);
            }
            _ => views.push(view),
        }
    }
    (views, matched)
}

/// `config?type=json`: Docker Flow Proxy's shape, a map from service name to its `Service`
/// (Go field names), with a `ServiceDest` per destination holding its paths, domains and
/// options, and `Tasks` the instances. Only what this proxy acts on is filled in; user names
/// only, never passwords.
pub(super) fn dfp_services(controller: &Controller) -> BTreeMap<String, DfpService> {
    let table = controller.table().snapshot();
    service_views(&table, controller)
        .into_iter()
        .map(|v| {
            let edits = |e: &Option<HeaderEditsView>| {
                e.as_ref()
                    .map(|e| (e.add.clone(), e.set.clone(), e.delete.clone()))
                    .unwrap_or_default()
            };
            let (add_req, set_req, del_req) = edits(&v.request_headers);
            let (add_res, set_res, del_res) = edits(&v.response_headers);
            let mut tasks: Vec<String> = v.instances.clone();
            tasks.extend(v.destinations.iter().flat_map(|d| d.instances.iter().cloned()));
            tasks.sort();
            tasks.dedup();
            let service_dest =
                std::iter::once(&v).chain(&v.destinations).map(dfp_service_dest).collect();
            let service = DfpService {
                service_name: v.service_name.clone(),
                is_default_backend: v.is_default_backend,
                add_req_header: add_req,
                set_req_header: set_req,
                del_req_header: del_req,
                add_res_header: add_res,
                set_res_header: set_res,
                del_res_header: del_res,
                req_path_search: v.req_path_search.clone().unwrap_or_default(),
                req_path_replace: v.req_path_replace.clone().unwrap_or_default(),
                users: v.users.iter().map(|u| DfpUser { username: u.clone() }).collect(),
                tasks,
                service_dest,
            };
            (v.service_name, service)
        })
        .collect()
}

/// One destination in Docker Flow Proxy's `ServiceDest` shape.
fn dfp_service_dest(v: &ServiceView) -> DfpServiceDest {
    DfpServiceDest {
        allowed_methods: v.allowed_methods.clone(),
        denied_methods: v.denied_methods.clone(),
        deny_http: v.deny_http,
        https_only: v.https_redirect_code.is_some(),
        https_redirect_code: v.https_redirect_code.map(|c| c.to_string()).unwrap_or_default(),
        index: v.index.unwrap_or(0),
        req_mode: v.req_mode.unwrap_or("http"),
        src_port: v.src_port.unwrap_or(0),
        service_domain: v.service_domain.clone(),
        service_path: v.service_path.clone(),
        service_path_exclude: v.service_path_exclude.clone(),
        timeout_server: v.timeout_server.map(|t| t.to_string()).unwrap_or_default(),
        timeout_tunnel: v.timeout_tunnel.map(|t| t.to_string()).unwrap_or_default(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DfpService {
    service_name: String,
    is_default_backend: bool,
    add_req_header: Vec<String>,
    set_req_header: Vec<String>,
    del_req_header: Vec<String>,
    add_res_header: Vec<String>,
    set_res_header: Vec<String>,
    del_res_header: Vec<String>,
    req_path_search: String,
    req_path_replace: String,
    users: Vec<DfpUser>,
    tasks: Vec<String>,
    service_dest: Vec<DfpServiceDest>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DfpUser {
    username: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DfpServiceDest {
    allowed_methods: Vec<String>,
    denied_methods: Vec<String>,
    deny_http: bool,
    https_only: bool,
    https_redirect_code: String,
    index: u8,
    req_mode: &'static str,
    src_port: u16,
    service_domain: Vec<String>,
    service_path: Vec<String>,
    service_path_exclude: Vec<String>,
    timeout_server: String,
    timeout_tunnel: String,
}

/// The live table as the data plane sees it right now.
pub(super) fn config(controller: &Controller, query: &super::live::ConfigQuery) -> ConfigAnswer {
    let table = controller.table().snapshot();
    let (services, matched) = service_views_where(&table, controller, query);
    let total = query.pages().then_some(matched);
    ConfigAnswer {
        status: "OK",
        mode: controller.discovery().mode(),
        table_version: table.version(),
        consul: match controller.discovery() {
            Discovery::Consul(consul) => {
                let health = controller.registry_health();
                Some(ConsulView {
                    agents: consul.agents().map(str::to_owned).collect(),
                    reachable: health.reachable,
                    last_error: health.last_error,
                })
            }
            Discovery::Dns => None,
        },
        proxy: query.stats.then(|| super::live::ProxyView::now(controller)),
        total,
        services,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RoutesAnswer {
    status: &'static str,
    table_version: u64,
    routes: Vec<RouteView>,
}

/// One route: a path (on a host, or any) and the service it leads to, with each instance's
/// passive health as the data plane sees it now.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RouteView {
    /// `null` for the default backend's row.
    path: Option<String>,
    /// `null`: any host.
    domain: Option<String>,
    service_name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_default_backend: bool,
    instances: Vec<InstanceView>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct InstanceView {
    address: String,
    /// `healthy`; `ejected` (left out by passive health for `EjectedForMs` more); or
    /// `probing` (failed before, window over: the next request to it is the probe).
    state: &'static str,
    /// Failed attempts in a row.
    failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    ejected_for_ms: Option<u64>,
    /// Requests (or TCP connections) in flight to it now, over every thread: counted, and
    /// shown, for a service with `instanceMaxConn` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    in_flight: Option<u32>,
}

/// Each instance of `backend` as `config?stats=true` and `routes` show it.
fn instance_views(backend: &dfp_routing::Backend, now_ms: u64) -> Vec<InstanceView> {
    let capped = backend.policy().instance_max_conn.is_some();
    backend.instances().iter().map(|u| instance_view(u, now_ms, capped)).collect()
}

fn instance_view(upstream: &dfp_routing::Upstream, now_ms: u64, capped: bool) -> InstanceView {
    let health = upstream.health();
    let ejected_for_ms = health.ejected_for_ms(now_ms);
    let failures = health.failures();
    let state = match (ejected_for_ms, failures) {
        (Some(_), _) => "ejected",
        (None, 0) => "healthy",
        (None, _) => "probing",
    };
    let in_flight = capped.then(|| health.in_flight());
    InstanceView {
        address: upstream.addr().to_string(),
        state,
        failures,
        ejected_for_ms,
        in_flight,
    }
}

/// Every route of the live table, by host (any host first) then path, the default backend
/// last: what `docker-flow-proxy routes` prints. Only instances that pass their checks in
/// Consul (or that DNS gives) are in the table, so the health shown is the proxy's own.
pub(super) fn routes(controller: &Controller) -> RoutesAnswer {
    let table = controller.table().snapshot();
    let now_ms = dfp_routing::health_clock_ms();
    let mut routes = Vec::new();
    for s in table.services() {
        let instances = || instance_views(s.backend, now_ms);
        let domains: Vec<Option<String>> = if s.domains.is_empty() {
            vec![None]
        } else {
            s.domains.iter().map(|d| Some(d.to_string())).collect()
        };
        for domain in &domains {
            let paths = s.prefixes.iter().map(ToString::to_string);
            for path in
                paths.chain(s.patterns.iter().map(|p| format!("{} ({})", p.as_str(), p.kind())))
            {
                routes.push(RouteView {
                    path: Some(path),
                    domain: domain.clone(),
                    service_name: s.backend.service().to_owned(),
                    is_default_backend: false,
                    instances: instances(),
                });
            }
        }
        if let Some(port) = s.tcp_port {
            let (mode, domains) = match s.stream_tls {
                StreamTls::Plain => ("tcp", vec![None]),
                StreamTls::Passthrough => ("sni", s.domains.iter().map(Some).collect()),
                StreamTls::Terminate => ("tls", s.domains.iter().map(Some).collect()),
            };
            for domain in domains {
                routes.push(RouteView {
                    path: Some(format!("{mode} :{port}")),
                    domain: domain.map(ToString::to_string),
                    service_name: s.backend.service().to_owned(),
                    is_default_backend: false,
                    instances: instances(),
                });
            }
        }
        if s.default_backend {
            routes.push(RouteView {
                path: None,
                domain: None,
                service_name: s.backend.service().to_owned(),
                is_default_backend: true,
                instances: instances(),
            });
        }
    }
    routes.sort_by(|a, b| {
        (a.is_default_backend, &a.domain, &a.path).cmp(&(b.is_default_backend, &b.domain, &b.path))
    });
    RoutesAnswer { status: "OK", table_version: table.version(), routes }
}
