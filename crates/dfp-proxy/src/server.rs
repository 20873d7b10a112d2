//! The accept loop and the plain listener's connections, with graceful shutdown and the
//! limit on open client connections.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfp_routing::TableHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::conn::{ConnState, PlainClient, TimedIo};
use crate::forward::Forwarder;
use crate::h1;
use crate::proxy_protocol;

/// Data-plane settings. [`ProxyConfig::default`] holds Docker Flow Proxy's defaults.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long to wait for an upstream connection to open.
    pub connect_timeout: Duration,
    /// How long a request (or TCP connection) waits for a place when every instance of its
    /// service is at `instanceMaxConn` (HAProxy's `timeout queue`); zero: no queue.
    pub queue_timeout: Duration,
    /// How long to wait for an upstream's response head once the request is sent.
    pub server_timeout: Duration,
    /// How long a client may take to send a request's head once it has begun (else 408).
    pub header_read_timeout: Duration,
    /// How long a kept-alive client connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a write to a client, or a client's request body, may make no progress
    /// (HAProxy's `timeout client`).
    pub client_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub shutdown_grace: Duration,
    /// How long an upgraded connection (WebSocket) may stay open without traffic.
    pub tunnel_timeout: Duration,
    /// Whether each request is logged (target `access`, at info).
    pub access_log: bool,
    /// Whether `X-Forwarded-Proto: https` from the client counts as HTTPS for `httpsOnly`
    /// (enable only when TLS is terminated by a trusted balancer in front of the proxy).
    pub trust_forwarded_proto: bool,
    /// Peers (balancers in front of the proxy) whose right-most untrusted `X-Forwarded-For`
    /// entry is taken as the client's address for services' source lists. Empty: the peer
    /// is always the client.
    pub trusted_proxies: dfp_routing::SourceList,
    /// The CAs client certificates are checked against on the TLS listener (`--client-ca`):
    /// every client is asked for one, one that does not verify fails the handshake, and a
    /// client without one is let through (services with `verifyClientSsl` answer it 403).
    /// `None`: no client certificates are asked for.
    pub client_ca: Option<dfp_tls::ClientCa>,
    /// Peers (L4 balancers) that must open every connection with a PROXY protocol header
    /// (`--accept-proxy`), on this listener: the header's client becomes the connection's
    /// peer for every rule. A listed peer without a valid header is closed; an unlisted one is
    /// never read for one. Empty: no header is expected from anyone.
    pub accept_proxy: dfp_routing::SourceList,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(5),
            queue_timeout: Duration::ZERO,
            server_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            client_timeout: Duration::from_secs(20),
            upstream_idle_timeout: Duration::from_secs(90),
            shutdown_grace: Duration::from_secs(10),
            tunnel_timeout: Duration::from_secs(3600),
            access_log: false,
            trust_forwarded_proto: false,
            trusted_proxies: dfp_routing::SourceList::default(),
            client_ca: None,
            accept_proxy: dfp_routing::SourceList::default(),
        }
    }
}

/// How many client connections may be open at once by default (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Connection counters of the data plane, for `/metrics`, and its limit on open connections.
///
/// One value is shared by every listener and every data-plane thread, so the counters and
/// the limit cover them all: at [`ConnectionStats::max_connections`] open connections, the
/// accept loops stop accepting (each holds at most one more connection, unserved) and new
/// connections wait in the kernel's listen backlog until one closes.
#[derive(Debug)]
pub struct ConnectionStats {
    /// Client connections accepted since start.
    pub accepted: AtomicU64,
    /// Client connections open now.
    pub open: AtomicU64,
    /// TLS handshakes that failed or timed out (the TLS listener's connections).
    pub tls_handshake_failures: AtomicU64,
    /// How often an accepted connection had to wait because the limit was reached.
    pub limit_reached: AtomicU64,
    /// Connections from an `--accept-proxy` peer closed for want of a valid PROXY header
    /// (malformed, truncated, or not complete within the header timeout).
    pub proxy_header_failures: AtomicU64,
    /// One permit per connection that may open; taken at accept, given back at close.
    slots: Arc<Semaphore>,
    max_connections: usize,
}

impl ConnectionStats {
    /// Counters for a data plane that keeps at most `max_connections` client connections
    /// open (at least 1; at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(max_connections: usize) -> Self {
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionStats {
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            limit_reached: AtomicU64::new(0),
            proxy_header_failures: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
        }
    }

    /// The most client connections open at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

impl Default for ConnectionStats {
    fn default() -> Self {
        ConnectionStats::new(DEFAULT_MAX_CONNECTIONS)
    }
}

/// Serves the proxy on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in flight finish, closes idle keep-alive connections, and returns once every
/// connection is closed or [`ProxyConfig::shutdown_grace`] has passed.
///
/// The caller owns the listener (and so the port): tests bind `127.0.0.1:0`.
pub async fn serve(
    listener: TcpListener,
    table: TableHandle,
    config: ProxyConfig,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let forwarder = Arc::new(Forwarder::new(table, &config));
    let grace = config.shutdown_grace;
    let headers = ProxyHeaders::of(&config);
    accept_loop(
        listener,
        "proxy",
        &stats,
        grace,
        headers,
        shutdown,
        move |stream, endpoints, stop| {
            let state = Arc::new(ConnState::default());
            let mut io = TimedIo::new(
                PlainClient::new(stream),
                state.clone(),
                config.header_read_timeout,
                config.idle_timeout,
                config.client_timeout,
            );
            let forwarder = forwarder.clone();
            async move {
                h1::serve(&mut io, &state, endpoints, false, false, &forwarder, stop).await;
            }
        },
    )
    .await;
    Ok(())
}

/// The two ends of a client connection as the rules see them: the client (the TCP peer, or
/// the client a PROXY header named) and the address it connected to (the listener's, or the
/// balancer's the header named): what a PROXY header sent on to an instance says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// Which peers must open their connections with a PROXY protocol header, and how long they
/// have to send it (the header read timeout).
#[derive(Debug, Clone)]
pub(crate) struct ProxyHeaders {
    from: dfp_routing::SourceList,
    timeout: Duration,
}

impl ProxyHeaders {
    pub(crate) fn of(config: &ProxyConfig) -> Self {
        ProxyHeaders { from: config.accept_proxy.clone(), timeout: config.header_read_timeout }
    }

    /// The connection's client: the peer itself, or, for a peer that must send a PROXY
    /// header, the client the header names (the peer for `UNKNOWN`/`LOCAL`), with the
    /// address it connected to. `None`: the
    /// connection must be closed (counted in `stats`, logged at debug).
    ///
    /// This is the one place a connection's client address is decided, before TLS and before
    /// either HTTP engine: everything downstream (`X-Forwarded-For`, the access log, the
    /// source lists, `--trusted-proxies`) sees only its answer.
    ///
    /// `listening`: the listener's own address when it names one IP and port, which every
    /// connection it accepts has as its local address (spares a `getsockname` per
    /// connection); `None` for a wildcard listener, where the socket is asked.
    async fn client(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        listening: Option<SocketAddr>,
        stats: &ConnectionStats,
    ) -> Option<Endpoints> {
        let local = match listening.map_or_else(|| stream.local_addr(), Ok) {
            Ok(local) => local,
            Err(err) => {
                tracing::debug!(peer = %peer, error = %err, "the accepted socket has no local address");
                return None;
            }
        };
        let real = Endpoints { client: peer, local };
        if self.from.is_empty() || !self.from.contains(peer.ip()) {
            return Some(real);
        }
        match proxy_protocol::read_header(stream, self.timeout).await {
            Ok(named) => Some(named.map_or(real, |(client, local)| Endpoints { client, local })),
            Err(err) => {
                stats.proxy_header_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %peer, error = %err, "closing a connection without a valid PROXY header");
                None
            }
        }
    }
}

/// What both listeners do around their connections: accept (backing off when accepting
/// fails, e.g. out of descriptors), with `TCP_NODELAY` (from the listening socket when it
/// has it, else set on each), count it, and run `serve` for each
/// connection on its own task, handing it the client's address (after the PROXY header, for
/// peers that send one: see [`ProxyHeaders::client`]) and the stop signal. Once `shutdown`
/// completes: stop accepting, signal every connection (each finishes its request in flight,
/// idle ones close at once), and return when all have closed or `grace` has passed.
///
/// Each connection holds one of `stats`' permits from accept to close, and counts as open
/// from the same moment. A loop takes a permit only
/// after accepting (an idle listener must not sit on permits the other listener needs); with
/// none left, it holds that one connection unserved and stops accepting until a connection
/// closes, and the next ones wait in the kernel's backlog (HAProxy's `maxconn`).
pub(crate) async fn accept_loop<S, F>(
    listener: TcpListener,
    name: &'static str,
    stats: &Arc<ConnectionStats>,
    grace: Duration,
    headers: ProxyHeaders,
    shutdown: impl Future<Output = ()>,
    serve: S,
) where
    S: Fn(TcpStream, Endpoints, watch::Receiver<bool>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let headers = Arc::new(headers);
    let nodelay_inherited = listener_gives_nodelay(&listener);
    let listening = listener.local_addr().ok().filter(|addr| !addr.ip().is_unspecified());
    keep_timer_near();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a sender; when all are gone, every connection has closed.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match stats.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                stats.limit_reached.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    listener = name,
                    max_connections = stats.max_connections,
                    "connection limit reached; accepting again once a connection closes"
                );
                tokio::select! {
                    permit = stats.slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_closed) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        if !nodelay_inherited {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "could not set TCP_NODELAY");
            }
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (serve, headers, stats, stop) =
            (serve.clone(), headers.clone(), stats.clone(), stop_rx.clone());
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let open = OpenConnection::count(&stats);
            if let Some(client) = headers.client(&mut stream, peer, listening, &stats).await {
                serve(stream, client, stop).await;
            }
            drop(open);
            drop(permit);
            drop(alive);
        });
    }

    drop(listener);
    tracing::info!(listener = name, grace = ?grace, "stops accepting; draining connections");
    let _ = stop_tx.send(true);
    drop(alive_tx);
    tokio::select! {
        _ = alive_rx.recv() => tracing::info!(listener = name, "all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                listener = name,
                open = stats.open.load(Ordering::Relaxed),
                "grace period over; closing the remaining connections"
            );
        }
    }
}

/// Whether the listening socket has `TCP_NODELAY`, which Linux copies to every socket it
/// accepts (the binary sets it before listening), so that no accepted connection needs its
/// own `setsockopt`. It is not set here: a connection already queued would not get it.
fn listener_gives_nodelay(listener: &TcpListener) -> bool {
    socket2::SockRef::from(listener).tcp_nodelay().unwrap_or(false)
}

/// How far ahead this thread's timer driver is always armed (see [`keep_timer_near`]).
const TIMER_TICK: Duration = Duration::from_secs(1);

thread_local! {
    static TICKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keeps this thread's timer armed at most [`TIMER_TICK`] ahead, once per data-plane thread.
///
/// Tokio's timer wakes its own driver (a `write` to an eventfd) whenever a timer is started
/// that expires before the one the driver last armed. Every new connection starts one (the
/// connect timeout, a handshake's or a header's deadline) while the connections already
/// open have only far-off idle deadlines armed: one extra system call per connection. A
/// task that sleeps [`TIMER_TICK`] in a loop keeps the armed deadline within a second, so
/// timers of a second or more never wake the driver; its cost is one timer firing a
/// second per thread.
fn keep_timer_near() {
    if TICKING.with(|ticking| ticking.replace(true)) {
        return;
    }
    tokio::spawn(async {
        loop {
            tokio::time::sleep(TIMER_TICK).await;
        }
    });
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(Arc<ConnectionStats>);

impl OpenConnection {
    fn count(stats: &Arc<ConnectionStats>) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(stats.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serve` saw of each connection: its `TCP_NODELAY`, and its two ends.
    type Seen = (bool, Endpoints);

    /// A listener on `addr`, with `TCP_NODELAY` set before it listens when `nodelay`.
    fn listener(addr: SocketAddr, nodelay: bool) -> TcpListener {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_tcp_nodelay(nodelay).expect("nodelay");
        socket.bind(&addr.into()).expect("bind");
        socket.listen(16).expect("listen");
        socket.set_nonblocking(true).expect("non-blocking");
        TcpListener::from_std(socket.into()).expect("registered")
    }

    async fn accepted_on(addr: SocketAddr, nodelay: bool) -> (Seen, SocketAddr) {
        let listener = listener(addr, nodelay);
        let port = listener.local_addr().expect("bound").port();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(ConnectionStats::new(8));
        let headers = ProxyHeaders {
            from: dfp_routing::SourceList::default(),
            timeout: Duration::from_secs(1),
        };
        let shutdown = async move { drop(stop_rx.clone().wait_for(|s| *s).await) };
        let serving = tokio::spawn(async move {
            accept_loop(
                listener,
                "test",
                &stats,
                Duration::from_secs(1),
                headers,
                shutdown,
                move |stream, ends, _| {
                    let seen = seen_tx.clone();
                    async move {
                        let _ = seen.send((stream.nodelay().expect("nodelay"), ends));
                    }
                },
            )
            .await;
        });
        let client = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let seen = seen_rx.recv().await.expect("served");
        let _ = stop_tx.send(true);
        serving.await.expect("no panic");
        (seen, client.local_addr().expect("client address"))
    }

    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_the_address_they_reached() {
        // A listener naming its address, with TCP_NODELAY: the connection has both.
        let ((nodelay, ends), client) =
            accepted_on(SocketAddr::from(([127, 0, 0, 1], 0)), true).await;
        assert!(nodelay, "TCP_NODELAY is on for accepted connections");
        assert_eq!(ends.client, client);
        assert_eq!(ends.local.ip(), std::net::Ipv4Addr::LOCALHOST);
        assert_ne!(ends.local.port(), 0);
        // A wildcard listener without it: each connection is set, and its socket is asked
        // which address the client reached.
        let ((nodelay, ends), client) =
            accepted_on(SocketAddr::from(([0, 0, 0, 0], 0)), false).await;
        assert!(nodelay);
        assert_eq!(ends.client, client);
        assert_eq!(ends.local.ip(), std::net::Ipv4Addr::LOCALHOST, "not the wildcard");
    }
}
