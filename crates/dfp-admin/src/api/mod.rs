//! The admin listener: Docker Flow Proxy's HTTP API over the [`Controller`].
//!
//! Split by job: this file routes requests and answers reconfigure, remove, reload, ping and
//! the certificate calls; `views.rs` renders the live table as JSON (`config`, `routes`,
//! `config?type=json`); `live.rs` the dashboard's page and the live figures `config` adds for
//! it; `metrics.rs` renders `/metrics`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dfp_routing::StreamTls;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
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
use crate::AdminError;

mod live;
mod metrics;
mod views;

use metrics::metrics;
pub use metrics::MetricsBody;
use views::{config, dfp_services, routes};

pub(crate) const PREFIX: &str = "/v1/docker-flow-proxy/";

/// An admin answer's body: whole for every call but `/metrics`, whose text grows with the
/// routes and is sent as it is rendered (see `metrics.rs`).
pub type AdminBody = Either<Full<Bytes>, MetricsBody>;

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
    live::mark_started();
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
) -> Response<AdminBody> {
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
) -> Result<Response<AdminBody>, AdminError> {
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
                let query = live::ConfigQuery::from_pairs(pairs)?;
                Ok(json(StatusCode::OK, &config(controller, &query)))
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
            if !controller.is_ready() {
                let message = "starting: restoring the stored routes (reconfigure calls are \
                               answered already; requests are served once this is done)";
                let answer = Answer { status: "NOK", message: message.to_owned() };
                return Ok(json(StatusCode::SERVICE_UNAVAILABLE, &answer));
            }
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
        (_, "/dashboard" | "/dashboard/") => {
            allow(method, path, &[Method::GET], "GET")?;
            Ok(live::page().map(Either::Left))
        }
        (_, "/metrics") => {
            allow(method, path, &[Method::GET], "GET")?;
            Ok(metrics(controller).map(Either::Right))
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

fn failure(err: &AdminError) -> Response<AdminBody> {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    tracing::warn!(status = status.as_u16(), error = %err, "admin call failed");
    json(status, &Answer { status: "NOK", message: err.to_string() })
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<AdminBody> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{\"Status\":\"NOK\"}".to_vec());
    bytes.push(b'\n');
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(bytes))));
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
    // What routes to it: its TCP port, its paths (and pathType values), or only the default
    // backend's role.
    let names = || report.domains.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let on = match report.tcp_port {
        Some(port) => match report.stream_tls {
            StreamTls::Plain => format!("TCP port {port}"),
            StreamTls::Passthrough => {
                format!("TLS server name {} on port {port}, passed through", names())
            }
            StreamTls::Terminate => {
                format!("TLS server name {} on port {port}, TLS ended here", names())
            }
        },
        None => {
            let all: Vec<&str> = paths
                .iter()
                .map(String::as_str)
                .chain(report.path_patterns.iter().map(String::as_str))
                .collect();
            match (all.is_empty(), report.default_backend) {
                (false, false) => all.join(","),
                (false, true) => format!("{} and as the default backend", all.join(",")),
                (true, _) => "no path, as the default backend".to_owned(),
            }
        }
    };
    let mut message = format!(
        "{} is routed on {on} to {} instance{}",
        report.service_name,
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
