//! The HTTP/2 engine's forwarding: a request hyper read from an HTTP/2 client goes through
//! the same rules as the HTTP/1 engine's ([`crate::rules`]: checks, routing, policy, fields,
//! failures, record) and on to an HTTP/1.1 instance over hyper's client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfp_routing::{Backend, HeaderEdits, TableHandle};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::pool::{Pool, Pooled};
use crate::rules::{self, Admission, Admitted, Failure, Forwarding, Record};
use crate::upstream::Connector;
use crate::{path, ProxyConfig};

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
    /// The client's body failed (reset stream, broken off): the client's fault, not the
    /// instance's.
    client_failed: AtomicBool,
}

impl http_body::Body for Uploading {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(frame) = &polled {
            if let Some(progress) = &self.progress {
                progress.last_ms.store(now_ms(), Ordering::Relaxed);
                if matches!(frame, Some(Err(_))) {
                    progress.client_failed.store(true, Ordering::Relaxed);
                }
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

/// What both engines share: the table, this thread's connections to instances, the
/// timeouts. One per data-plane server, shared by its connections.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(crate) table: TableHandle,
    /// The HTTP/1 engine's connections to instances (raw sockets, per thread).
    pub(crate) connector: Connector,
    /// HTTP/2 requests' connections to instances (hyper's client, per thread).
    pool: Pool,
    pub(crate) server_timeout: Duration,
    pub(crate) tunnel_timeout: Duration,
    pub(crate) client_timeout: Duration,
    pub(crate) access_log: bool,
    pub(crate) trust_forwarded_proto: bool,
}

impl Forwarder {
    pub(crate) fn new(table: TableHandle, config: &ProxyConfig) -> Self {
        Forwarder {
            table,
            connector: Connector {
                connect_timeout: config.connect_timeout,
                idle_timeout: config.upstream_idle_timeout,
            },
            pool: Pool {
                connect_timeout: config.connect_timeout,
                idle_timeout: config.upstream_idle_timeout,
            },
            server_timeout: config.server_timeout,
            tunnel_timeout: config.tunnel_timeout,
            client_timeout: config.client_timeout,
            access_log: config.access_log,
            trust_forwarded_proto: config.trust_forwarded_proto,
        }
    }

    /// Answers one HTTP/2 request. Never fails: every problem becomes a response.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        client: Client,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let mut routed = Routed::default();
        let method = request.method().clone();
        let target = if self.access_log { request.uri().to_string() } else { String::new() };
        let response = match self.forward(request, client, &mut routed).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        rules::record(
            &Record {
                client: client.addr,
                method: method.as_str(),
                target: &target,
                backend: routed.backend.as_deref(),
                upstream: routed.upstream,
                status: response.status().as_u16(),
                micros,
            },
            self.access_log,
        );
        Ok(response)
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        client: Client,
        routed: &mut Routed,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, body) = request.into_parts();
        let pairs: Vec<(&str, &[u8])> =
            parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        let fields = pairs.iter().copied();
        let facts = rules::analyse_request(false, fields.clone())?;
        let target = rules::parse_target(
            parts.uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str),
        )?;
        let host = facts.host.and_then(|h| std::str::from_utf8(h).ok());
        let normalised = match path::normalize(target.path) {
            Ok(normalised) => normalised,
            Err(path::EscapesRoot) => {
                return Err(ProxyError::BadRequest("the request path climbs above /\n"));
            }
        };
        let routed_path = normalised.as_deref().unwrap_or(target.path);
        let backend = {
            let table = self.table.load();
            let route = table.lookup_host(host, routed_path).ok_or(ProxyError::NoRoute)?;
            route.backend.clone()
        };
        routed.backend = Some(backend.clone());
        let admission = Admission {
            https: client.tls || (self.trust_forwarded_proto && facts.forwarded_https),
            host,
            path: routed_path,
            query: target.query,
            authorization: facts.authorization,
        };
        let admitted = rules::admit(
            backend.policy(),
            backend.service(),
            &admission,
            (self.server_timeout, self.tunnel_timeout),
        )?;
        if backend.instances().is_empty() {
            return Err(ProxyError::NoInstance);
        }
        let path = admitted.rewritten.as_deref().unwrap_or(routed_path);
        let path_and_query = match target.query {
            Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
            None => PathAndQuery::try_from(path),
        }
        .map_err(|_| ProxyError::BadRequest("the request path is malformed\n"))?;
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
        let forwarding = Forwarding {
            client_ip: &client.addr.ip().to_string(),
            proto: if client.tls { "https" } else { "http" },
            host: facts.host.unwrap_or_default(),
        };
        rules::write_request_fields(&mut headers, fields, &facts, &admitted, &forwarding);
        // Every policy field has been used above or below: no `..` here either.
        let Admitted {
            rewritten: _,
            request_edits: _,
            strip_authorization: _,
            response_edits,
            server_timeout,
            tunnel_timeout: _, // HTTP/2 carries no upgrades here
        } = admitted;

        // Only a request without a body and with idempotent semantics can be sent again.
        let replayable = is_idempotent(&parts.method) && body.is_end_stream();
        let method = parts.method;
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
                if let Ok(host) = HeaderValue::from_str(upstream.authority().as_str()) {
                    outgoing.headers_mut().insert(header::HOST, host);
                }
            }

            let answer =
                await_response(self.pool.send(addr, outgoing), progress.as_deref(), server_timeout)
                    .await;
            let failure = match answer {
                Some(Ok(response)) => match relay(response, response_edits, method == Method::HEAD)
                {
                    Ok(response) => {
                        upstream.health().record_success();
                        return Ok(response);
                    }
                    Err(failure) => failure,
                },
                Some(Err(_))
                    if progress
                        .as_ref()
                        .is_some_and(|p| p.client_failed.load(Ordering::Relaxed)) =>
                {
                    Failure::Client("the request body was broken off\n")
                }
                Some(Err(err)) => Failure::Unreachable(std::io::Error::other(err)),
                None => Failure::Timeout,
            };
            if failure.blames_instance() {
                if rules::attempt_failed(&backend, upstream, &mut tried, replayable, &failure) {
                    continue;
                }
            } else {
                tracing::debug!(service = backend.service(), instance = %addr, %failure, "exchange failed");
            }
            return Err(failure.answer());
        }
    }
}

/// Turns the instance's response into the client's with the same rules as the HTTP/1 engine
/// (hyper frames the body for HTTP/2 itself); an invalid head is the instance's fault.
fn relay(
    response: Response<Pooled>,
    edits: &HeaderEdits,
    head_request: bool,
) -> Result<Response<ProxyBody>, Failure> {
    let (mut parts, body) = response.into_parts();
    let pairs: Vec<(&str, &[u8])> =
        parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    let fields = pairs.iter().copied();
    let facts = rules::analyse_response(
        parts.status.as_u16(),
        parts.version == Version::HTTP_10,
        head_request,
        fields.clone(),
    )
    .map_err(Failure::BadResponse)?;
    if facts.status == 101 {
        return Err(Failure::BadResponse("101 Switching Protocols to a request without Upgrade"));
    }
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    rules::write_response_fields(&mut headers, fields, &facts, edits, false);
    drop(pairs);
    parts.headers = headers;
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, Either::Left(body)))
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
