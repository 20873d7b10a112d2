//! One request's path through the proxy: check, normalise, route, pick an instance, rewrite,
//! forward (again elsewhere if that is safe), answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfp_routing::{Backend, TableHandle, Upstream};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;

use crate::conn::ConnState;
use crate::error::ProxyError;
use crate::headers::{add_forwarded, strip_hop_by_hop};
use crate::pool::{Pool, Pooled};
use crate::{path, tunnel, ProxyConfig};

/// What the proxy answers with: the upstream's streamed body, or a short body of its own.
pub(crate) type ProxyBody = Either<Pooled, Full<Bytes>>;

/// What the proxy sends upstream: the client's streamed body, or nothing (a retry of a
/// request that had no body).
pub(crate) type UpstreamBody = Either<Uploading, Empty<Bytes>>;

/// The client's request body on its way upstream, noting when it last moved, so that the
/// server timeout counts from the end of an upload (or from the last progress of a slow one),
/// never from its start: a 1 GiB upload is not a slow server.
#[derive(Debug)]
pub(crate) struct Uploading {
    inner: Incoming,
    progress: Option<Arc<Progress>>,
}

#[derive(Debug, Default)]
struct Progress {
    /// [`now_ms`] of the last frame (or of the end).
    last_ms: AtomicU64,
}

impl http_body::Body for Uploading {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            if let Some(progress) = &self.progress {
                progress.last_ms.store(now_ms(), Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Waits for `response` at most `timeout` after the request body last moved (for a request
/// without a body: after it was sent). `None` when that time passed.
async fn await_response<F: std::future::Future>(
    response: F,
    progress: Option<&Progress>,
    timeout: Duration,
) -> Option<F::Output> {
    let Some(progress) = progress else {
        return tokio::time::timeout(timeout, response).await.ok();
    };
    tokio::pin!(response);
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    loop {
        let quiet_for = now_ms().saturating_sub(progress.last_ms.load(Ordering::Relaxed));
        let left = Duration::from_millis(timeout_ms.saturating_sub(quiet_for));
        if left.is_zero() {
            return None;
        }
        if let Ok(out) = tokio::time::timeout(left, response.as_mut()).await {
            return Some(out);
        }
    }
}

/// Forwards requests along the live table. One per data-plane server, shared by connections.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(crate) table: TableHandle,
    pub(crate) pool: Pool,
    pub(crate) server_timeout: Duration,
    tunnel_timeout: Duration,
    pub(crate) access_log: bool,
    trust_forwarded_proto: bool,
}

impl Forwarder {
    pub(crate) fn new(table: TableHandle, config: &ProxyConfig) -> Self {
        let pool = Pool {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.upstream_idle_timeout,
        };
        Forwarder {
            table,
            pool,
            server_timeout: config.server_timeout,
            tunnel_timeout: config.tunnel_timeout,
            access_log: config.access_log,
            trust_forwarded_proto: config.trust_forwarded_proto,
        }
    }

    /// Answers one client request. Never fails: every problem becomes a response.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        client: Client,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let client_addr = client.addr;
        let started = Instant::now();
        let mut routed = Routed::default();
        let method = self.access_log.then(|| request.method().clone());
        let target = self.access_log.then(|| request.uri().to_string());
        let response = match self.forward(request, client, &mut routed).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(backend) = &routed.backend {
            backend.stats().record_response(response.status().as_u16(), micros);
        }
        if self.access_log {
            tracing::info!(
                target: "access",
                client = %client_addr,
                method = %method.unwrap_or_default(),
                uri = %target.unwrap_or_default(),
                service = %routed.backend.as_ref().map_or("-", |b| b.service()),
                upstream = %routed.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                status = response.status().as_u16(),
                micros,
                "request"
            );
        }
        Ok(response)
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        client: Client,
        routed: &mut Routed,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        check_framing_and_host(&request)?;
        let mut path_and_query = normalised_target(request.uri())?;
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        let backend = {
            let table = self.table.load();
            let route =
                table.lookup_host(host, path_and_query.path()).ok_or(ProxyError::NoRoute)?;
            route.backend.clone()
        };
        routed.backend = Some(backend.clone());
        let policy = backend.policy();

        if let Some(status) = policy.https_redirect {
            let forwarded_https = self.trust_forwarded_proto
                && request
                    .headers()
                    .get("x-forwarded-proto")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
            if !client.tls && !forwarded_https {
                return Err(https_redirect(host, &path_and_query, status));
            }
        }
        if !policy.authorizes(request.headers().get(header::AUTHORIZATION)) {
            return Err(ProxyError::Unauthorized { realm: realm(backend.service()) });
        }
        if let Some(rewrite) = &policy.path_rewrite {
            if let Some(path) = rewrite.apply(path_and_query.path()) {
                path_and_query = with_path(&path, path_and_query.query())?;
            }
        }
        if backend.instances().is_empty() {
            return Err(ProxyError::NoInstance);
        }

        let conn_state = request.extensions().get::<Arc<ConnState>>().cloned();
        let upgrade = upgrade_protocol(request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        // Only a request without a body and with idempotent semantics can be sent again.
        let replayable = is_idempotent(&parts.method) && body.is_end_stream();
        let method = parts.method;
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        if let Some(protocol) = upgrade {
            headers.insert(header::UPGRADE, protocol);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        add_forwarded(&mut headers, client.addr.ip(), if client.tls { "https" } else { "http" });
        if !policy.users.is_empty() {
            // The credentials were for the proxy; the instance never sees them.
            headers.remove(header::AUTHORIZATION);
        }
        policy.request_headers.apply(&mut headers);
        let server_timeout = policy.server_timeout.unwrap_or(self.server_timeout);
        let tunnel_timeout = policy.tunnel_timeout.unwrap_or(self.tunnel_timeout);

        // Only an upload needs its progress watched; a request without a body costs nothing.
        let progress = (!body.is_end_stream()).then(|| {
            let progress = Arc::new(Progress::default());
            progress.last_ms.store(now_ms(), Ordering::Relaxed);
            progress
        });
        let mut body = Some(Uploading { inner: body, progress: progress.clone() });
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let Some(upstream) = backend.next_instance_except(now_ms, &tried) else {
                return Err(ProxyError::UpstreamUnreachable);
            };
            let addr = upstream.addr();
            routed.upstream = Some(addr);
            let mut outgoing = Request::new(match body.take() {
                Some(body) => Either::Left(body),
                None => Either::Right(Empty::new()),
            });
            *outgoing.method_mut() = method.clone();
            // Origin form (`/path?query`): an HTTP/1.1 instance is asked for its own path.
            *outgoing.uri_mut() = Uri::from(path_and_query.clone());
            *outgoing.version_mut() = Version::HTTP_11;
            *outgoing.headers_mut() =
                if replayable { headers.clone() } else { std::mem::take(&mut headers) };
            if !outgoing.headers().contains_key(header::HOST) {
                // An HTTP/1.0 client may send none; HTTP/1.1 requires one upstream.
                if let Ok(host) = HeaderValue::from_str(upstream.authority().as_str()) {
                    outgoing.headers_mut().insert(header::HOST, host);
                }
            }

            let answer =
                await_response(self.pool.send(addr, outgoing), progress.as_deref(), server_timeout)
                    .await
                    .ok_or(());
            match answer {
                Ok(Ok(response)) => {
                    upstream.health().record_success();
                    let mut response =
                        relay(response, client_upgrade, conn_state.as_deref(), tunnel_timeout);
                    policy.response_headers.apply(response.headers_mut());
                    return Ok(response);
                }
                Ok(Err(err)) => {
                    if attempt_failed(&backend, upstream, &mut tried, replayable, &err) {
                        continue;
                    }
                    return Err(ProxyError::UpstreamUnreachable);
                }
                Err(_elapsed) => {
                    tracing::debug!(service = backend.service(), instance = %addr, timeout = ?server_timeout, "upstream timed out");
                    return Err(ProxyError::UpstreamTimeout);
                }
            }
        }
    }
}

/// Records an attempt at `upstream` that failed before any response (it counts toward the
/// instance's ejection) and says whether to try another instance: only for a `replayable`
/// request, and only while an instance is left untried.
pub(crate) fn attempt_failed(
    backend: &Backend,
    upstream: &Upstream,
    tried: &mut Vec<SocketAddr>,
    replayable: bool,
    error: &dyn std::fmt::Display,
) -> bool {
    let stats = backend.stats();
    stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
    upstream.health().record_failure(now_ms());
    stats.ejections.fetch_add(1, Ordering::Relaxed);
    tried.push(upstream.addr());
    let retry = replayable && tried.len() < backend.instances().len();
    tracing::debug!(service = backend.service(), instance = %upstream.addr(), %error, retry, "upstream attempt failed");
    if retry {
        stats.retries.fetch_add(1, Ordering::Relaxed);
    }
    retry
}

/// Turns the instance's response into the client's: hop-by-hop headers out, body streamed;
/// a `101 Switching Protocols` keeps its upgrade headers and starts the tunnel.
fn relay(
    mut response: Response<Pooled>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    conn_state: Option<&ConnState>,
    tunnel_timeout: Duration,
) -> Response<ProxyBody> {
    {
        match client_upgrade {
            Some(client) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let protocol = response.headers().get(header::UPGRADE).cloned();
                let upstream = hyper::upgrade::on(&mut response);
                strip_hop_by_hop(response.headers_mut());
                if let Some(protocol) = protocol {
                    response.headers_mut().insert(header::UPGRADE, protocol);
                }
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(state) = conn_state {
                    state.upgraded();
                }
                tokio::spawn(tunnel::run(client, upstream, tunnel_timeout));
            }
            _ => strip_hop_by_hop(response.headers_mut()),
        }
        // The client leg is ours: hyper speaks HTTP/1.1 to it (or 1.0 to a 1.0 client) whatever
        // version the instance answered with.
        *response.version_mut() = Version::HTTP_11;
        response.map(Either::Left)
    }
}

/// `301`..`308` to the same host and path over HTTPS (the port, if any, is dropped: HTTPS is
/// served on its own port).
fn https_redirect(host: Option<&str>, target: &PathAndQuery, status: u16) -> ProxyError {
    let host = host.map_or("", |h| {
        if h.starts_with('[') {
            h.split_once(']').map_or(h, |(v6, _)| v6).trim_end_matches(']')
        } else {
            h.rsplit_once(':').map_or(h, |(name, _)| name)
        }
    });
    let host = if host.starts_with('[') { format!("{host}]") } else { host.to_owned() };
    let location = HeaderValue::try_from(format!("https://{host}{}", target.as_str()))
        .unwrap_or_else(|_| HeaderValue::from_static("/"));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    ProxyError::Redirect { location, status }
}

fn realm(service: &str) -> HeaderValue {
    let safe: String =
        service.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    HeaderValue::try_from(format!("Basic realm=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
}

fn with_path(path: &str, query: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    let joined = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    match PathAndQuery::try_from(joined) {
        Ok(pq) if pq.path().starts_with('/') => Ok(pq),
        _ => Err(ProxyError::RewriteFailed),
    }
}

/// Who sent a request, and how.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    /// The request arrived over TLS terminated by this proxy.
    pub(crate) tls: bool,
}

/// What a request was routed to, for counters and the access log.
#[derive(Default)]
struct Routed {
    backend: Option<Arc<Backend>>,
    upstream: Option<SocketAddr>,
}

/// Refuses requests whose framing or `Host` an instance might read differently from us:
/// `Content-Length` together with `Transfer-Encoding` (the classic request-smuggling shape),
/// and a missing (HTTP/1.1), repeated or malformed `Host`.
fn check_framing_and_host<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let headers = request.headers();
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::BadRequest(
            "a request must not have both Content-Length and Transfer-Encoding\n",
        ));
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("an HTTP/1.1 request needs a Host header\n"))
        }
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("a request must have one Host header\n")),
        (Some(host), None) => match host.to_str().ok().map(Authority::try_from) {
            Some(Ok(authority)) if !authority.host().is_empty() => Ok(()),
            _ => Err(ProxyError::BadRequest("the Host header is not a valid host[:port]\n")),
        },
    }
}

/// The request's path (normalised, see [`path`]) and query, as routed and forwarded.
fn normalised_target(uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    let original = match uri.path_and_query() {
        Some(pq) if pq.path().starts_with('/') => pq,
        _ => return Err(ProxyError::BadRequest("the request target must be a path such as /x\n")),
    };
    match path::normalize(original.path()) {
        Ok(None) => Ok(original.clone()),
        Ok(Some(normal)) => {
            let rebuilt = match original.query() {
                Some(query) => format!("{normal}?{query}"),
                None => normal,
            };
            PathAndQuery::try_from(rebuilt)
                .map_err(|_| ProxyError::BadRequest("the request path is malformed\n"))
        }
        Err(path::EscapesRoot) => Err(ProxyError::BadRequest("the request path climbs above /\n")),
    }
}

/// The protocol a request asks to switch to, when it asks (`Connection: upgrade` plus
/// `Upgrade: <protocol>`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

/// Milliseconds of a monotonic clock, for passive health windows. Read only when an
/// instance has a failure on record.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[(&str, &str)], version: Version) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = version;
        for (k, v) in lines {
            r.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        r
    }

    #[test]
    fn framing_and_host_checks() {
        let ok = [
            request(&[("host", "shop.example")], Version::HTTP_11),
            request(&[("host", "shop.example:8080")], Version::HTTP_11),
            request(&[("host", "[::1]:80")], Version::HTTP_11),
            request(&[], Version::HTTP_10),
        ];
        for r in &ok {
            assert!(check_framing_and_host(r).is_ok(), "{:?}", r.headers());
        }
        let bad = [
            request(&[], Version::HTTP_11),
            request(&[("host", "a"), ("host", "b")], Version::HTTP_11),
            request(&[("host", "a b")], Version::HTTP_11),
            request(&[("host", "a/b")], Version::HTTP_11),
            request(&[("host", "")], Version::HTTP_11),
            request(
                &[("host", "a"), ("content-length", "3"), ("transfer-encoding", "chunked")],
                Version::HTTP_11,
            ),
        ];
        for r in &bad {
            assert!(check_framing_and_host(r).is_err(), "{:?}", r.headers());
        }
    }

    #[test]
    fn targets_are_normalised_with_their_query() {
        let uri: Uri = "/api/v1/books/%2e%2e/admin?x=/../y".parse().expect("uri");
        assert_eq!(normalised_target(&uri).expect("fine").as_str(), "/api/v1/admin?x=/../y");
        let uri: Uri = "/../etc/passwd".parse().expect("uri");
        assert!(normalised_target(&uri).is_err());
        let uri: Uri = "*".parse().expect("uri");
        assert!(normalised_target(&uri).is_err());
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_protocol(&h).is_none());
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(upgrade_protocol(&h), Some(HeaderValue::from_static("websocket")));
    }
}
