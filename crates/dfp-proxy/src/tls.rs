//! The TLS listener: HTTPS termination with certificates that change without a restart.
//!
//! Each connection is handshaken with rustls (ring provider; ALPN `h2`, `http/1.1`); the
//! certificate comes from the [`CertStore`], which resolves SNI against the live certificate
//! set on every handshake. Publishing a new set changes what the next handshake sees and
//! nothing else: an established connection keeps the certificate it was handshaken with and
//! goes on serving requests.
//!
//! After the handshake, the protocol ALPN chose decides the engine. HTTP/1.1 (or no ALPN)
//! goes to the same HTTP/1 engine as plain connections (`h1/`), over the decrypted stream
//! with the same deadlines (`TimedIo`: 408 on a slow head, idle keep-alive, client timeout on
//! writes), marked as TLS (so `X-Forwarded-Proto: https`). HTTP/2 is served by hyper's HTTP/2
//! server, whose requests go through `forward.rs` under the same rules.
//!
//! Deadlines of an HTTP/2 connection: the handshake must complete within
//! `header_read_timeout`; a connection with no request under way for `idle_timeout` is shut
//! down gracefully (GOAWAY), which also bounds a client that handshakes and sends nothing, and
//! that close waits at most `client_timeout` for the client's acknowledgement; writes that make
//! no progress for `client_timeout` fail the connection (a flooder that reads nothing); and
//! when every response with data to send has waited that long on the client's flow-control
//! window ([`StallWatch`]), the connection is closed, freeing the instances' connections.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfp_routing::{StreamTls, TableHandle};
use dfp_tls::{CertStore, ClientCa};
use http::header::{self, HeaderValue};
use http::{Request, Version};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::client_hello::Prefixed;
use crate::conn::{ConnState, EndOfBody, TimedIo};
use crate::forward::{Client, Forwarder};
use crate::h1;
use crate::rules::MAX_HEAD_BYTES;
use crate::server::{accept_loop, ConnectionStats, Endpoints, ProxyConfig, ProxyHeaders};
use crate::tcp;

/// Serves HTTPS on `listener` until `shutdown` completes, with the certificates of `certs`.
/// Then, as [`crate::serve`] does: stops accepting, lets requests in flight finish for up to
/// [`ProxyConfig::shutdown_grace`], closes idle connections at once, and returns.
///
/// Handshakes are refused (and logged at debug) while `certs` holds no certificate.
/// `stats` may be shared with the plain listener: its counters then cover both.
pub async fn serve_tls(
    listener: TcpListener,
    table: TableHandle,
    config: ProxyConfig,
    certs: CertStore,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let forwarder = Arc::new(Forwarder::new(table, &config));
    let acceptor = TlsAcceptor::from(Arc::new(server_config(
        certs,
        config.client_ca.as_ref(),
        // `acme-tls/1` last: only the ACME CA offers it, to validate a TLS-ALPN-01 challenge.
        vec![b"h2".to_vec(), b"http/1.1".to_vec(), dfp_tls::ACME_TLS_ALPN.to_vec()],
    )?));
    let mut http = http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX));
    let http = Arc::new(http);
    let grace = config.shutdown_grace;
    let headers = ProxyHeaders::of(&config);
    let counters = stats.clone();
    let port = listener.local_addr()?.port();
    let passthrough = Arc::new(Passthrough { port, config: config.clone() });
    accept_loop(
        listener,
        "TLS",
        &counters,
        grace,
        headers,
        shutdown,
        move |stream, endpoints, stop| {
            let connection = TlsConnection {
                acceptor: acceptor.clone(),
                http: http.clone(),
                forwarder: forwarder.clone(),
                passthrough: passthrough.clone(),
                header_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                client_timeout: config.client_timeout,
                stop,
                stats: stats.clone(),
            };
            connection.run(stream, endpoints)
        },
    )
    .await;
    Ok(())
}

/// rustls settings: ring, TLS 1.2 and 1.3, the `alpn` protocols offered (the HTTPS listener:
/// `h2` then `http/1.1`; TCP services ending TLS here: none), certificates from `certs` (SNI). With `client_ca`, every client is asked for a certificate: one that does not
/// verify against it fails the handshake, none at all is allowed (only `verifyClientSsl`
/// services need one, and they answer 403 without it); without, none is asked for.
pub(crate) fn server_config(
    certs: CertStore,
    client_ca: Option<&ClientCa>,
    alpn: Vec<Vec<u8>>,
) -> io::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(ca.verifier().map_err(io::Error::other)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = alpn;
    Ok(config)
}

/// What the listener needs to pass connections through to `reqMode=sni` services that share
/// its port: the port (what their `srcPort` says) and the defaults their connections run under.
struct Passthrough {
    port: u16,
    config: ProxyConfig,
}

/// Everything one TLS connection needs, moved into its task.
struct TlsConnection {
    acceptor: TlsAcceptor,
    http: Arc<http2::Builder<TokioExecutor>>,
    forwarder: Arc<Forwarder>,
    passthrough: Arc<Passthrough>,
    header_timeout: Duration,
    idle_timeout: Duration,
    client_timeout: Duration,
    stop: watch::Receiver<bool>,
    stats: Arc<ConnectionStats>,
}

impl TlsConnection {
    async fn run(mut self, mut stream: TcpStream, endpoints: Endpoints) {
        let client_addr = endpoints.client;
        // `reqMode=sni` services on this port: the ClientHello is read first, and one that
        // names such a service is passed through to it untouched; every other is replayed
        // into the handshake below. Without such services nothing is read ahead.
        let mut hello = Vec::new();
        let Passthrough { port, ref config } = *self.passthrough;
        if self.forwarder.table.load().routes_by_server_name(port) {
            let Ok(name) = tcp::read_server_name(&mut stream, &mut hello, config, endpoints).await
            else {
                // rustls would have refused it too.
                self.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let table = self.forwarder.table.load();
            let found =
                name.and_then(|name| table.tls_route(port, &name).map(|(b, h)| (b.clone(), h)));
            drop(table);
            if let Some((backend, StreamTls::Passthrough)) = found {
                let client = Prefixed::new(hello, stream);
                tcp::serve_stream(backend, client, true, endpoints, self.stop, config).await;
                return;
            }
        }
        let stream = Prefixed::new(hello, stream);
        let handshake = tokio::time::timeout(self.header_timeout, self.acceptor.accept(stream));
        let tls = tokio::select! {
            handshake = handshake => match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    self.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = %client_addr, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_elapsed) => {
                    self.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = %client_addr, timeout = ?self.header_timeout, "TLS handshake not complete in time");
                    return;
                }
            },
            () = stopping(&mut self.stop) => return,
        };
        // A certificate is only ever recorded when it verified: the verifier fails the
        // handshake for one that does not.
        let client_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
        if tls.get_ref().1.alpn_protocol() == Some(dfp_tls::ACME_TLS_ALPN) {
            // The CA has seen the challenge certificate: nothing more is served (RFC 8737).
            let mut tls = tls;
            let _ = tokio::time::timeout(self.header_timeout, tls.shutdown()).await;
            return;
        }
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_http2(tls, endpoints, client_cert).await;
        } else {
            let state = Arc::new(ConnState::default());
            let mut io = TimedIo::new(
                tls,
                state.clone(),
                self.header_timeout,
                self.idle_timeout,
                self.client_timeout,
            );
            let stop = self.stop.clone();
            h1::serve(&mut io, &state, endpoints, true, client_cert, &self.forwarder, stop).await;
        }
    }

    async fn serve_http2(
        mut self,
        tls: TlsStream<Prefixed<TcpStream>>,
        endpoints: Endpoints,
        client_cert: bool,
    ) {
        let client_addr = endpoints.client;
        let activity = Arc::new(Activity::new());
        let forwarder = self.forwarder.clone();
        let requests = activity.clone();
        let ip_text: Arc<str> = client_addr.ip().to_string().into();
        let service = service_fn(move |mut request: Request<Incoming>| {
            let in_flight = InFlight::start(requests.clone());
            let stalls = in_flight.0.clone();
            authority_as_host(&mut request);
            let client = Client {
                addr: client_addr,
                ip_text: ip_text.clone(),
                local: endpoints.local,
                tls: true,
                client_cert,
            };
            // Boxed: hyper keeps each stream's future by value and moves it as the stream is
            // spawned and polled; a profile showed those moves (of this large future) as the
            // biggest single cost of an HTTP/2 request.
            Box::pin(forwarder.clone().handle(request, client, move |body| {
                StallWatch::new(EndOfBody::new(body, in_flight), stalls)
            }))
        });
        // A client that reads nothing (a flood whose answers it never takes) makes our writes
        // stall: after the client timeout the connection fails and closes.
        let io = TimedIo::writes_only(tls, self.client_timeout);
        let connection = self.http.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        // A graceful close waits for the client's acknowledgement; one that never comes ends
        // the wait after the client timeout.
        let client_timeout = self.client_timeout;
        let result = loop {
            let deadline = activity
                .idle_deadline(self.idle_timeout)
                .min(Instant::now() + (client_timeout / 2).max(Duration::from_millis(250)));
            tokio::select! {
                result = connection.as_mut() => break result,
                () = stopping(&mut self.stop) => {
                    // Finish the requests in flight (if any), then close; idle ones close now.
                    connection.as_mut().graceful_shutdown();
                    break connection.as_mut().await;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if activity.idle_for(self.idle_timeout) {
                        tracing::debug!(client = %client_addr, "TLS connection idle for too long; closing it");
                        connection.as_mut().graceful_shutdown();
                        break tokio::time::timeout(client_timeout, connection.as_mut())
                            .await
                            .unwrap_or(Ok(()));
                    }
                    if activity.stalled_for(client_timeout) {
                        // Every stream that has data to send waits for the client to open its
                        // window: the client stopped reading. Its streams hold instances'
                        // connections, so the whole connection goes.
                        tracing::debug!(client = %client_addr, "HTTP/2 client read nothing for the client timeout; closing it");
                        break Ok(());
                    }
                }
            }
        };
        if let Err(err) = result {
            tracing::debug!(client = %client_addr, error = %err, "TLS client connection ended with an error");
        }
    }
}

/// Completes once the listener stops (or its sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// HTTP/2 carries the host in the `:authority` pseudo-header, not in `Host`: give the request
/// the `Host` an HTTP/1.1 request would have had, so routing, `X-Forwarded-Host` and the
/// instance see the same thing whichever protocol the client spoke.
fn authority_as_host<B>(request: &mut Request<B>) {
    if request.version() != Version::HTTP_2 || request.headers().contains_key(header::HOST) {
        return;
    }
    let host = request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// Whether a connection has a request under way, and since when it has had none; and whether
/// the client is taking the data its responses have for it.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `origin` when the last request ended (or the connection began).
    idle_since_ms: AtomicU64,
    origin: Instant,
    /// Responses that handed hyper data and have not been asked for more since: hyper asks
    /// once the client's flow-control window has room, so these wait on the client.
    awaiting_client: AtomicUsize,
    /// When a response was last asked for more data (or began waiting), ms after `origin`.
    client_progress_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            origin: Instant::now(),
            awaiting_client: AtomicUsize::new(0),
            client_progress_ms: AtomicU64::new(0),
        }
    }

    /// Whether responses have waited on the client, with none of them taken further, for
    /// `limit`.
    fn stalled_for(&self, limit: Duration) -> bool {
        self.awaiting_client.load(Ordering::Acquire) > 0
            && self.now_ms().saturating_sub(self.client_progress_ms.load(Ordering::Acquire))
                >= u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When the connection would have been idle for `limit`; while a request is under way,
    /// a time to look again.
    fn idle_deadline(&self, limit: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + limit;
        }
        self.origin + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)) + limit
    }

    fn idle_for(&self, limit: Duration) -> bool {
        self.idle_at(self.now_ms(), limit)
    }

    /// Whether, at `now_ms`, the connection has had no request under way for `limit`.
    fn idle_at(&self, now_ms: u64, limit: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && now_ms.saturating_sub(self.idle_since_ms.load(Ordering::Acquire))
                >= u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
    }
}

/// An HTTP/2 response body that tells its connection's [`Activity`] when it handed data on
/// and when it was asked for more, so a client that stops reading is seen.
struct StallWatch<B> {
    inner: B,
    activity: Arc<Activity>,
    awaiting: bool,
}

impl<B> StallWatch<B> {
    fn new(inner: B, activity: Arc<Activity>) -> Self {
        StallWatch { inner, activity, awaiting: false }
    }

    fn asked_again(&mut self) {
        if std::mem::replace(&mut self.awaiting, false) {
            self.activity.awaiting_client.fetch_sub(1, Ordering::AcqRel);
            self.activity.client_progress_ms.store(self.activity.now_ms(), Ordering::Release);
        }
    }
}

impl<B> Drop for StallWatch<B> {
    fn drop(&mut self) {
        if self.awaiting {
            self.activity.awaiting_client.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for StallWatch<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.asked_again();
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            self.awaiting = true;
            if self.activity.awaiting_client.fetch_add(1, Ordering::AcqRel) == 0 {
                self.activity.client_progress_ms.store(self.activity.now_ms(), Ordering::Release);
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

/// One request under way: from the request head until its response body has been sent, or
/// until hyper drops either (a client that reset its stream).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_authority_becomes_the_host() {
        let mut h2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://shop.example:8443/cart")
            .body(())
            .expect("request");
        authority_as_host(&mut h2);
        assert_eq!(h2.headers()[header::HOST], "shop.example:8443");

        let mut h1 = Request::builder().uri("/cart").body(()).expect("request");
        authority_as_host(&mut h1);
        assert!(!h1.headers().contains_key(header::HOST), "HTTP/1.1 keeps what it was sent");

        let mut both = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://a.example/")
            .header(header::HOST, "b.example")
            .body(())
            .expect("request");
        authority_as_host(&mut both);
        assert_eq!(both.headers()[header::HOST], "b.example", "an explicit Host stays");
    }

    #[test]
    fn a_connection_is_idle_only_without_requests() {
        let limit = Duration::from_secs(15);
        let activity = Arc::new(Activity::new());
        assert!(!activity.idle_at(14_999, limit));
        assert!(activity.idle_at(15_000, limit), "a connection that never sends a request");
        let request = InFlight::start(activity.clone());
        assert!(!activity.idle_at(60_000, limit), "a request under way is never idle");
        drop(request);
        let ended = activity.idle_since_ms.load(Ordering::Acquire);
        assert!(!activity.idle_at(ended + 14_999, limit), "idle from the end of the last request");
        assert!(activity.idle_at(ended + 15_000, limit));
    }
}
