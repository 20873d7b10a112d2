//! The admin listener: Docker Flow Proxy's HTTP API over the [`Controller`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::auth::AdminAuth;
use crate::certs::{self, CertAdmin};
use crate::controller::{Controller, ReconfigureReport, RemoveReport};
use crate::params::{service_name_from_pairs, ReconfigureRequest};
use crate::{AdminError, Discovery};

pub(crate) const PREFIX: &str = "/v1/docker-flow-proxy/";

/// Serves the admin API on `listener` until `shutdown` completes. Without `certs` the
/// certificate endpoints answer 404. Every call is checked against `auth` first.
pub async fn serve(
    listener: TcpListener,
    controller: Arc<Controller>,
    certs: Option<CertAdmin>,
    auth: AdminAuth,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let auth = Arc::new(auth);
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let controller = controller.clone();
        let certs = certs.clone();
        let auth = auth.clone();
        let service = service_fn(move |request| {
            let controller = controller.clone();
            let certs = certs.clone();
            let auth = auth.clone();
            async move { Ok::<_, Infallible>(handle(&controller, certs.as_ref(), &auth, request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "admin connection ended with an error");
            }
        });
    }
    // Admin calls are short; give the ones under way a moment, then go.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// Answers one admin request. A call `auth` refuses is answered 401 before anything else is
/// looked at (its body is never read), so it changes nothing.
pub async fn handle(
    controller: &Controller,
    certs: Option<&CertAdmin>,
    auth: &AdminAuth,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    if let Err(err) = auth.check(&parts.method, parts.uri.path(), &parts.headers) {
        let mut response = failure(&err);
        auth.challenge(response.headers_mut());
        return response;
    }
    let query = parts.uri.query().unwrap_or_default();
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    route(controller, certs, &parts.method, parts.uri.path(), &pairs, body)
        .await
        .unwrap_or_else(|err| failure(&err))
}

async fn route(
    controller: &Controller,
    certs: Option<&CertAdmin>,
    method: &Method,
    path: &str,
    pairs: &[(&str, &str)],
    body: Incoming,
) -> Result<Response<Full<Bytes>>, AdminError> {
    let endpoint = path.strip_prefix(PREFIX).map(|e| e.trim_end_matches('/'));
    match (endpoint, path) {
        (Some("reconfigure"), _) => {
            allow(method, path, &[Method::GET, Method::PUT], "GET or PUT")?;
            let request = ReconfigureRequest::from_pairs(pairs.iter().copied())?;
            let report = controller.reconfigure(request).await?;
            Ok(json(StatusCode::OK, &reconfigured(&report)))
        }
        (Some("remove"), _) => {
            allow(method, path, &[Method::GET, Method::PUT, Method::DELETE], "GET, PUT or DELETE")?;
            let name = service_name_from_pairs(pairs.iter().copied())?;
            let report = controller.remove(&name).await?;
            Ok(json(StatusCode::OK, &removed(&report)))
        }
        (Some("config"), _) => {
            allow(method, path, &[Method::GET], "GET")?;
            let dfp_json =
                pairs.iter().any(|(k, v)| *k == "type" && v.eq_ignore_ascii_case("json"));
            if dfp_json {
                Ok(json(StatusCode::OK, &dfp_services(controller)))
            } else {
                Ok(json(StatusCode::OK, &config(controller)))
            }
        }
        (Some("reload"), _) => {
            allow(method, path, &[Method::GET, Method::PUT], "GET or PUT")?;
            let flag = |name: &str| {
                pairs
                    .iter()
                    .any(|(k, v)| *k == name && (v.eq_ignore_ascii_case("true") || *v == "1"))
            };
            let answer = if flag("recreate") || flag("fromListener") {
                let version = controller.reload_from_store().await?;
                Answer {
                    status: "OK",
                    message: format!(
                        "routes re-read from the store; table version {version} (no Swarm \
                         Listener is consulted: routes come from reconfigure calls and the store)"
                    ),
                }
            } else {
                Answer {
                    status: "OK",
                    message: "nothing to reload: every reconfigure is live when it answers; \
                              recreate=true re-reads the stored routes"
                        .to_owned(),
                }
            };
            Ok(json(StatusCode::OK, &answer))
        }
        (Some("routes"), _) => {
            allow(method, path, &[Method::GET], "GET")?;
            Ok(json(StatusCode::OK, &routes(controller)))
        }
        (Some("ping"), _) => {
            allow(method, path, &[Method::GET, Method::HEAD], "GET")?;
            Ok(json(StatusCode::OK, &Answer { status: "OK", message: "pong".to_owned() }))
        }
        (Some("cert"), _) => {
            allow(method, path, &[Method::PUT, Method::DELETE], "PUT or DELETE")?;
            let certs = certs.ok_or_else(|| AdminError::NoSuchEndpoint(path.to_owned()))?;
            if method == Method::PUT {
                let pem = certs::read_body(body).await?;
                Ok(json(StatusCode::OK, &certs.upload(pairs, pem).await?))
            } else {
                Ok(json(StatusCode::OK, &certs.delete(pairs).await?))
            }
        }
        (Some("certs"), _) => {
            allow(method, path, &[Method::GET], "GET")?;
            let certs = certs.ok_or_else(|| AdminError::NoSuchEndpoint(path.to_owned()))?;
            Ok(json(StatusCode::OK, &certs.list().await))
        }
        (_, "/metrics") => {
            allow(method, path, &[Method::GET], "GET")?;
            Ok(metrics(controller))
        }
        _ => Err(AdminError::NoSuchEndpoint(path.to_owned())),
    }
}

fn allow(
    method: &Method,
    path: &str,
    allowed: &[Method],
    names: &'static str,
) -> Result<(), AdminError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(AdminError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_owned(),
            allowed: names,
        })
    }
}

fn failure(err: &AdminError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    tracing::warn!(status = status.as_u16(), error = %err, "admin call failed");
    json(status, &Answer { status: "NOK", message: err.to_string() })
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{\"Status\":\"NOK\"}".to_vec());
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    status: &'static str,
    message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReconfigureAnswer {
    status: &'static str,
    message: String,
    service_name: String,
    service_path: Vec<String>,
    instances: Vec<String>,
    table_version: u64,
    warnings: Vec<String>,
}

fn reconfigured(report: &ReconfigureReport) -> ReconfigureAnswer {
    let paths: Vec<String> = report.service_paths.iter().map(|p| p.to_string()).collect();
    let mut message = format!(
        "{} is routed on {} to {} instance{}",
        report.service_name,
        paths.join(","),
        report.instances.len(),
        if report.instances.len() == 1 { "" } else { "s" }
    );
    for warning in &report.warnings {
        let _ = write!(message, "; warning: {warning}");
    }
    ReconfigureAnswer {
        status: "OK",
        message,
        service_name: report.service_name.clone(),
        service_path: paths,
        instances: report.instances.iter().map(ToString::to_string).collect(),
        table_version: report.table_version,
        warnings: report.warnings.clone(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RemoveAnswer {
    status: &'static str,
    message: String,
    service_name: String,
    table_version: u64,
}

fn removed(report: &RemoveReport) -> RemoveAnswer {
    RemoveAnswer {
        status: "OK",
        message: format!("{} is no longer routed", report.service_name),
        service_name: report.service_name.clone(),
        table_version: report.table_version,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigAnswer {
    status: &'static str,
    mode: &'static str,
    table_version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    consul: Option<ConsulView>,
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
    compression_algo: Option<&'static str>,
    /// Empty with an algorithm: every type.
    #[serde(skip_serializing_if = "Option::is_none")]
    compression_type: Option<String>,
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

fn service_view(s: &dfp_routing::ServiceRoutes<'_>) -> ServiceView {
    use dfp_routing::{ProtoRedirect, UsersFrom};
    let policy = s.backend.policy();
    let redirected = |d: &&dfp_routing::Domain| {
        policy.domain_redirect.as_ref().is_some_and(|r| r.from.contains(d))
    };
    let https_redirect_code = policy.https_redirect.or(policy.proto_redirect.map(|(_, code)| code));
    let proto = policy.proto_redirect.map(|(when, _)| when);
    ServiceView {
        service_name: s.backend.service().to_owned(),
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
        compression_algo: policy.compression.as_ref().map(|c| c.algo().token()),
        compression_type: policy
            .compression
            .as_ref()
            .map(|c| c.types().collect::<Vec<_>>().join(" "))
            .filter(|t| !t.is_empty()),
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
    }
}

/// `config?type=json`: Docker Flow Proxy's shape, a map from service name to its `Service`
/// (Go field names), with one `ServiceDest` holding the paths, domains and per-destination
/// options, and `Tasks` the instances. Only what this proxy acts on is filled in; user names
/// only, never passwords.
fn dfp_services(controller: &Controller) -> BTreeMap<String, DfpService> {
    let table = controller.table().snapshot();
    table
        .services()
        .map(|s| {
            let v = service_view(&s);
            let edits = |e: &Option<HeaderEditsView>| {
                e.as_ref()
                    .map(|e| (e.add.clone(), e.set.clone(), e.delete.clone()))
                    .unwrap_or_default()
            };
            let (add_req, set_req, del_req) = edits(&v.request_headers);
            let (add_res, set_res, del_res) = edits(&v.response_headers);
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
                tasks: v.instances.clone(),
                service_dest: vec![DfpServiceDest {
                    allowed_methods: v.allowed_methods.clone(),
                    denied_methods: v.denied_methods.clone(),
                    deny_http: v.deny_http,
                    https_only: v.https_redirect_code.is_some(),
                    https_redirect_code: v
                        .https_redirect_code
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    req_mode: "http",
                    service_domain: v.service_domain.clone(),
                    service_path: v.service_path.clone(),
                    service_path_exclude: v.service_path_exclude.clone(),
                    timeout_server: v.timeout_server.map(|t| t.to_string()).unwrap_or_default(),
                    timeout_tunnel: v.timeout_tunnel.map(|t| t.to_string()).unwrap_or_default(),
                }],
            };
            (v.service_name, service)
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DfpService {
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
    req_mode: &'static str,
    service_domain: Vec<String>,
    service_path: Vec<String>,
    service_path_exclude: Vec<String>,
    timeout_server: String,
    timeout_tunnel: String,
}

/// The live table as the data plane sees it right now.
fn config(controller: &Controller) -> ConfigAnswer {
    let table = controller.table().snapshot();
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
        services: table.services().map(|s| service_view(&s)).collect(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RoutesAnswer {
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
struct InstanceView {
    address: String,
    /// `healthy`; `ejected` (left out by passive health for `EjectedForMs` more); or
    /// `probing` (failed before, window over: the next request to it is the probe).
    state: &'static str,
    /// Failed attempts in a row.
    failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    ejected_for_ms: Option<u64>,
}

fn instance_view(upstream: &dfp_routing::Upstream, now_ms: u64) -> InstanceView {
    let health = upstream.health();
    let ejected_for_ms = health.ejected_for_ms(now_ms);
    let failures = health.failures();
    let state = match (ejected_for_ms, failures) {
        (Some(_), _) => "ejected",
        (None, 0) => "healthy",
        (None, _) => "probing",
    };
    InstanceView { address: upstream.addr().to_string(), state, failures, ejected_for_ms }
}

/// Every route of the live table, by host (any host first) then path, the default backend
/// last: what `docker-flow-proxy routes` prints. Only instances that pass their checks in
/// Consul (or that DNS gives) are in the table, so the health shown is the proxy's own.
fn routes(controller: &Controller) -> RoutesAnswer {
    let table = controller.table().snapshot();
    let now_ms = dfp_routing::health_clock_ms();
    let mut routes = Vec::new();
    for s in table.services() {
        let instances = || s.backend.instances().iter().map(|u| instance_view(u, now_ms)).collect();
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

/// Prometheus text exposition of the control plane's state.
fn metrics(controller: &Controller) -> Response<Full<Bytes>> {
    let table = controller.table().snapshot();
    let counters = controller.counters();
    let instances: usize = table.services().map(|s| s.backend.instances().len()).sum();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge("dfp_table_version", "Version of the live routing table.", table.version());
    gauge("dfp_services", "Services in the live routing table.", table.services().len() as u64);
    gauge(
        "dfp_instances",
        "Instances in the live routing table, over all services.",
        instances as u64,
    );
    if matches!(controller.discovery(), Discovery::Consul(_)) {
        let up = controller.registry_health().reachable.unwrap_or(false);
        gauge(
            "dfp_consul_reachable",
            "1 when Consul answered the last call, else 0.",
            u64::from(up),
        );
    }
    let _ = writeln!(
        out,
        "# HELP dfp_admin_calls_total Admin calls that change the table, by outcome.\n\
         # TYPE dfp_admin_calls_total counter\n\
         dfp_admin_calls_total{{call=\"reconfigure\",result=\"ok\"}} {}\n\
         dfp_admin_calls_total{{call=\"reconfigure\",result=\"error\"}} {}\n\
         dfp_admin_calls_total{{call=\"remove\",result=\"ok\"}} {}\n\
         dfp_admin_calls_total{{call=\"remove\",result=\"error\"}} {}",
        counters.reconfigure_ok.load(Ordering::Relaxed),
        counters.reconfigure_failed.load(Ordering::Relaxed),
        counters.remove_ok.load(Ordering::Relaxed),
        counters.remove_failed.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP dfp_instance_updates_total Instance-set changes picked up from Consul or DNS.\n\
         # TYPE dfp_instance_updates_total counter\n\
         dfp_instance_updates_total {}\n\
         # HELP dfp_store_syncs_total Route changes applied from the store (restore, other replicas).\n\
         # TYPE dfp_store_syncs_total counter\n\
         dfp_store_syncs_total {}",
        counters.instance_updates.load(Ordering::Relaxed),
        counters.store_syncs.load(Ordering::Relaxed),
    );
    service_metrics(&table, &mut out);
    if let Some(hook) = controller.metrics_hook() {
        (hook.0)(&mut out);
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}

/// Reads one counter of a service's stats.
type ReadCounter = fn(&dfp_routing::BackendStats) -> u64;

/// Per-service counters of the data plane: the live table's services, then the services it
/// no longer routes (their counters stay, so no series a scraper saw goes backwards or
/// vanishes; a service routed again resumes them).
fn service_metrics(table: &dfp_routing::RouteTable, out: &mut String) {
    use dfp_routing::LATENCY_BUCKETS_MS;
    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let services: Vec<(&str, &dfp_routing::BackendStats)> = table
        .services()
        .map(|s| (s.backend.service(), s.backend.stats()))
        .chain(table.retired_stats())
        .collect();
    let _ = writeln!(
        out,
        "# HELP dfp_requests_total Requests answered, by service and status class.\n\
         # TYPE dfp_requests_total counter"
    );
    for (name, stats) in &services {
        for (class, count) in CLASSES.iter().zip(&stats.responses) {
            let _ = writeln!(
                out,
                "dfp_requests_total{{service=\"{name}\",class=\"{class}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
    }
    let counters: [(&str, &str, ReadCounter); 3] = [
        (
            "dfp_upstream_errors_total",
            "Attempts at an instance that failed before a response.",
            |s| s.upstream_errors.load(Ordering::Relaxed),
        ),
        ("dfp_retries_total", "Requests sent again to another instance.", |s| {
            s.retries.load(Ordering::Relaxed)
        }),
        ("dfp_ejections_total", "Times an instance was ejected by passive health.", |s| {
            s.ejections.load(Ordering::Relaxed)
        }),
    ];
    for (metric, help, read) in counters {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for (name, stats) in &services {
            let _ = writeln!(out, "{metric}{{service=\"{name}\"}} {}", read(stats));
        }
    }
    let _ = writeln!(
        out,
        "# HELP dfp_request_duration_seconds Time from request to response head, by service.\n\
         # TYPE dfp_request_duration_seconds histogram"
    );
    for (name, stats) in &services {
        let mut cumulative = 0;
        for (i, bucket) in stats.latency_buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS_MS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |ms| format!("{}", *ms as f64 / 1000.0));
            let _ = writeln!(out, "dfp_request_duration_seconds_bucket{{service=\"{name}\",le=\"{le}\"}} {cumulative}");
        }
        let sum = stats.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "dfp_request_duration_seconds_sum{{service=\"{name}\"}} {sum}");
        let _ =
            writeln!(out, "dfp_request_duration_seconds_count{{service=\"{name}\"}} {cumulative}");
    }
}
