//! TCP services (`reqMode=tcp` with `srcPort`): each accepted connection is forwarded, bytes
//! as they are, to an instance of the service that owns the listener's port.
//!
//! Why it looks like this:
//!
//! - **The table decides, per connection.** A listener knows only its port. Each accepted
//!   connection loads the live table once ([`dfp_routing::RouteTable::tcp_route`], one binary
//!   search) and keeps the `Backend` it found for its whole life. So instance changes from
//!   Consul reach the next connection at once, through the same table swap as HTTP routes,
//!   and a swap never touches a connection that is open: it holds its own `Arc`.
//! - **One rule set for instances.** The instance is picked by the HTTP path's
//!   `choose_instance` (round robin over instances passive health has not ejected); a failed
//!   connect is recorded by the same `attempt_failed` (error counter, ejection, retry while an
//!   instance is left untried). A TCP connect is always safe to try again elsewhere: nothing
//!   of the client's has been sent yet.
//! - **Listeners are the data plane's, opened when the control plane asks.** The binary binds
//!   a port when a reconfigure asks for it (before the table is published, so a port the
//!   proxy cannot bind changes nothing) and hands it to the [`TcpHost`]; [`TcpHost::serve`]
//!   then gives a clone of it to every data-plane thread, each accepting on its own runtime
//!   like the HTTP listeners (same connection limit, same `--accept-proxy` rule, same
//!   accept loop). [`TcpHost::close`] stops every thread's accepting at once; the open
//!   connections go on for at most `--shutdown-grace`, then are closed.
//! - **Timeouts, as HAProxy reads Docker Flow Proxy's:** connect: `--connect-timeout` per
//!   attempt; `timeoutTunnel` (default `--tunnel-timeout`): no byte either way for that long
//!   closes the connection; `timeoutClient` (default `--client-timeout`) and `timeoutServer`
//!   (default `--server-timeout`): a write to the client, or to the instance, that makes no
//!   progress for that long (that side stopped reading) closes it. A protocol where the
//!   instance speaks first (SMTP, MySQL) and one where the client does are served alike:
//!   nothing waits for a first byte.
//! - **Copying:** the tunnel loop HTTP upgrades use (`tunnel.rs`), with [`TCP_BUFFER`]-byte
//!   buffers and live byte counters per service. The README's measurement says why not
//!   `splice(2)`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use dfp_routing::{Backend, InstanceSlot, StreamTls, TableHandle};
use dfp_tls::CertStore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::client_hello::{self, Prefixed};
use crate::rules;
use crate::server::{accept_loop, ConnectionStats, Endpoints, ProxyConfig, ProxyHeaders};
use crate::tunnel::{self, Tunnel};
use crate::upstream::{self, ProxyHello};

/// Bytes read at a time, per direction, on a TCP service's connection.
pub const TCP_BUFFER: usize = 64 * 1024;

/// The listening sockets of TCP services, and the data-plane threads that accept on them.
///
/// Cloning shares the same host. The control plane's calls (through the binary) and the
/// threads' accept loops meet only here, under one short lock that no connection takes.
#[derive(Debug, Clone, Default)]
pub struct TcpHost {
    shared: Arc<Mutex<Host>>,
}

#[derive(Debug, Default)]
struct Host {
    fronts: BTreeMap<u16, Front>,
    /// One sender per data-plane thread: where a port to accept on is handed to it.
    workers: Vec<mpsc::UnboundedSender<Accept>>,
}

/// A TCP service's listening socket, and the signal that stops every thread's accepting.
#[derive(Debug)]
struct Front {
    listener: std::net::TcpListener,
    serving: bool,
    stop: watch::Sender<bool>,
}

/// A port handed to one thread: its own clone of the socket, and the port's stop signal.
#[derive(Debug)]
struct Accept {
    port: u16,
    listener: std::net::TcpListener,
    stop: watch::Receiver<bool>,
}

impl Front {
    fn accept(&self, port: u16) -> Option<Accept> {
        match self.listener.try_clone() {
            Ok(listener) => Some(Accept { port, listener, stop: self.stop.subscribe() }),
            Err(err) => {
                tracing::error!(port, error = %err, "cannot share a TCP service's listener with a thread");
                None
            }
        }
    }
}

impl TcpHost {
    pub fn new() -> Self {
        Self::default()
    }

    fn host(&self) -> std::sync::MutexGuard<'_, Host> {
        // Nothing under this lock can panic halfway; a poisoned lock's data is whole.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a listener for `port` is held (serving or not yet).
    pub fn contains(&self, port: u16) -> bool {
        self.host().fronts.contains_key(&port)
    }

    /// Holds `listener` (bound by the caller, non-blocking) as `port`'s, not accepting yet.
    /// Replaces (and so closes) one held already.
    pub fn insert(&self, port: u16, listener: std::net::TcpListener) {
        let (stop, _) = watch::channel(false);
        let old = self.host().fronts.insert(port, Front { listener, serving: false, stop });
        if let Some(old) = old {
            let _ = old.stop.send(true);
        }
    }

    /// Every data-plane thread starts accepting on `port` (a no-op when it does already or
    /// no listener is held for it).
    pub fn serve(&self, port: u16) {
        let mut host = self.host();
        let Host { fronts, workers } = &mut *host;
        let Some(front) = fronts.get_mut(&port).filter(|f| !f.serving) else { return };
        front.serving = true;
        // A thread whose runtime is gone has dropped its receiver: forget it. A socket that
        // cannot be cloned (logged) leaves the thread as it is.
        workers.retain(|worker| match front.accept(port) {
            Some(accept) => worker.send(accept).is_ok(),
            None => true,
        });
        tracing::info!(port, threads = workers.len(), "TCP service listening");
    }

    /// Stops accepting on `port` at once, on every thread; the port's open connections go on
    /// until they end, for at most the shutdown grace.
    pub fn close(&self, port: u16) {
        if let Some(front) = self.host().fronts.remove(&port) {
            let _ = front.stop.send(true);
            tracing::info!(port, "TCP service's listener closed; its connections drain");
        }
    }

    /// Whether `port` is held and accepting.
    pub fn is_listening(&self, port: u16) -> bool {
        self.host().fronts.get(&port).is_some_and(|f| f.serving)
    }

    /// One data-plane thread's part: accepts on every port served now and on each port
    /// served later, until `shutdown` completes; then stops accepting and returns once each
    /// port's connections have closed or the shutdown grace has passed. Run it on every
    /// thread's runtime, beside [`crate::serve`].
    pub async fn run_thread(
        &self,
        table: TableHandle,
        config: ProxyConfig,
        certs: CertStore,
        stats: Arc<ConnectionStats>,
        shutdown: impl Future<Output = ()>,
    ) {
        // Services that end TLS here: one rustls configuration for every port of the thread,
        // its certificates resolved from the live store on each handshake (no ALPN: the bytes
        // are the service's protocol, not HTTP; no client certificates).
        let tls = match crate::tls::server_config(certs, None, Vec::new()) {
            Ok(config) => TlsAcceptor::from(Arc::new(config)),
            Err(err) => {
                tracing::error!(error = %err, "cannot set up TLS for TCP services; their ports are not served");
                return;
            }
        };
        let (tx, mut ports) = mpsc::unbounded_channel();
        {
            let mut host = self.host();
            for (port, front) in host.fronts.iter().filter(|(_, f)| f.serving) {
                if let Some(accept) = front.accept(*port) {
                    let _ = tx.send(accept);
                }
            }
            host.workers.push(tx);
        }
        let (stop_all, stopped) = watch::channel(false);
        let mut loops = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accept = ports.recv() => match accept {
                    Some(accept) => {
                        let forwarder = Forwarder {
                            port: accept.port,
                            table: table.clone(),
                            config: config.clone(),
                            tls: tls.clone(),
                        };
                        loops.spawn(accept_on(accept, forwarder, stats.clone(), stopped.clone()));
                    }
                    None => break,
                },
                Some(_) = loops.join_next(), if !loops.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        let _ = stop_all.send(true);
        while loops.join_next().await.is_some() {}
    }
}

/// One thread's accept loop on one port, until the port is closed or the proxy stops.
async fn accept_on(
    accept: Accept,
    forwarder: Forwarder,
    stats: Arc<ConnectionStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let Accept { port, listener, mut stop } = accept;
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(port, error = %err, "cannot accept on a TCP service's listener");
            return;
        }
    };
    // A closed port (its sender dropped, or told to stop) and a stopping proxy both end it.
    let shutdown = async move {
        tokio::select! {
            () = async { drop(stop.wait_for(|s| *s).await) } => {}
            () = async { drop(stopped.wait_for(|s| *s).await) } => {}
        }
    };
    let grace = forwarder.config.shutdown_grace;
    let headers = ProxyHeaders::of(&forwarder.config);
    let forwarder = Arc::new(forwarder);
    accept_loop(listener, "tcp", &stats, grace, headers, shutdown, move |stream, ends, stop| {
        let forwarder = forwarder.clone();
        async move { forwarder.forward(stream, ends, stop).await }
    })
    .await;
}

/// What a TCP service's connection needs: its listener's port, the table, the defaults, and
/// for services that end TLS here the acceptor (certificates from the live store).
struct Forwarder {
    port: u16,
    table: TableHandle,
    config: ProxyConfig,
    tls: TlsAcceptor,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A connection to the port: to the service that has the port whole, or, on a port
    /// shared by TLS server name, to the service its ClientHello names, TLS passed through
    /// or ended here as that service asks. A ClientHello that is malformed, too large, late
    /// or names no service on the port closes the connection, and nothing else.
    async fn forward(&self, mut client: TcpStream, ends: Endpoints, stop: watch::Receiver<bool>) {
        let table = self.table.load();
        if let Some(backend) = table.tcp_route(self.port).cloned() {
            drop(table);
            return serve_stream(backend, client, true, ends, stop, &self.config).await;
        }
        if !table.routes_by_server_name(self.port) {
            tracing::debug!(port = self.port, "no TCP service owns this port any more; closing");
            return;
        }
        drop(table);
        let mut hello = Vec::new();
        let name = match read_server_name(&mut client, &mut hello, &self.config, ends).await {
            Ok(Some(name)) => name,
            Ok(None) => {
                tracing::debug!(port = self.port, client = %ends.client, "TLS ClientHello names no server, and this port's services are chosen by name; closing");
                return;
            }
            Err(()) => return,
        };
        let found = self.table.load().tls_route(self.port, &name).map(|(b, how)| (b.clone(), how));
        let Some((backend, how)) = found else {
            tracing::debug!(port = self.port, server_name = %name, client = %ends.client, "no TCP service on this port has this TLS server name; closing");
            return;
        };
        let client = Prefixed::new(hello, client);
        match how {
            StreamTls::Passthrough | StreamTls::Plain => {
                serve_stream(backend, client, true, ends, stop, &self.config).await;
            }
            // Boxed: a TLS session is several kilobytes, and kept inline it would make every
            // connection's future (plain ones too) that large, copied as it is moved.
            StreamTls::Terminate => Box::pin(self.terminate(backend, client, ends, stop)).await,
        }
    }

    /// TLS ended here (within the header timeout), then the service's bytes.
    async fn terminate(
        &self,
        backend: Arc<Backend>,
        client: Prefixed<TcpStream>,
        ends: Endpoints,
        stop: watch::Receiver<bool>,
    ) {
        let handshake = self.tls.accept(client);
        match tokio::time::timeout(self.config.header_read_timeout, handshake).await {
            Ok(Ok(tls)) => serve_stream(backend, tls, false, ends, stop, &self.config).await,
            Ok(Err(err)) => {
                tracing::debug!(service = backend.service(), client = %ends.client, error = %err, "TLS handshake failed");
            }
            Err(_) => {
                tracing::debug!(service = backend.service(), client = %ends.client, "TLS handshake not complete in time");
            }
        }
    }
}

/// Reads a TLS ClientHello into `hello` within the header timeout: the server name it asks
/// for (`Ok(None)`: it names none, as a client that dialled an address), or `Err(())` (logged
/// at debug) when it is malformed, too large or late. The bytes read stay in `hello`, to be
/// replayed to whoever takes the connection.
pub(crate) async fn read_server_name<S: AsyncRead + Unpin>(
    client: &mut S,
    hello: &mut Vec<u8>,
    config: &ProxyConfig,
    ends: Endpoints,
) -> Result<Option<Box<str>>, ()> {
    let read = client_hello::read_client_hello(client, hello);
    match tokio::time::timeout(config.header_read_timeout, read).await {
        Ok(Ok(name)) => Ok(name),
        Ok(Err(err)) => {
            tracing::debug!(client = %ends.client, error = %err, "not a TLS ClientHello that can be routed; closing");
            Err(())
        }
        Err(_) => {
            tracing::debug!(client = %ends.client, "TLS ClientHello not complete in time; closing");
            Err(())
        }
    }
}

/// Counts a connection of a service as open for as long as it lives.
struct OpenTcp(Arc<Backend>);

impl Drop for OpenTcp {
    fn drop(&mut self) {
        self.0.stats().tcp_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection of a TCP service (`reqMode=tcp`, `sni`, or TLS ended here): the
/// service's source lists, a connection to one of its instances (with the PROXY header it
/// asks for), then bytes both ways under its timeouts until either side is done, counted in
/// its metrics. The one set of rules for every TCP service's connection, whichever listener
/// accepted it; `client` may already be decrypted, or replay a ClientHello read to route it.
/// `plain_client`: `client` is the TCP socket itself (perhaps replaying a ClientHello), not
/// a TLS session ended here.
pub(crate) async fn serve_stream<C: AsyncRead + AsyncWrite + Unpin>(
    backend: Arc<Backend>,
    client: C,
    plain_client: bool,
    ends: Endpoints,
    mut stop: watch::Receiver<bool>,
    config: &ProxyConfig,
) {
    let stats = backend.stats();
    stats.tcp_accepted.fetch_add(1, Ordering::Relaxed);
    stats.tcp_open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenTcp(backend.clone());
    let policy = backend.policy();
    let client_ip = || dfp_routing::canonical(ends.client.ip());
    if !rules::source_admitted(&policy.allowed_sources, &policy.denied_sources, client_ip) {
        tracing::debug!(service = backend.service(), client = %ends.client, "client not in the service's sources; closing");
        return;
    }
    // `_slot`: the connection's place on the instance (`instanceMaxConn`), for its life.
    let Some((instance, _slot)) = connect(&backend, ends, config).await else {
        stats.tcp_connect_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let tunnel = Tunnel {
        idle: policy.tunnel_timeout.unwrap_or(config.tunnel_timeout),
        write_a_within: Some(policy.client_timeout.unwrap_or(config.client_timeout)),
        write_b_within: Some(policy.server_timeout.unwrap_or(config.server_timeout)),
        buffer: TCP_BUFFER,
        counted: Some((&stats.bytes_to_instance, &stats.bytes_to_client)),
        a_plain: plain_client,
        b_plain: true,
    };
    let copy = tunnel::run(client, instance, tunnel);
    tokio::pin!(copy);
    tokio::select! {
        () = &mut copy => {}
        () = async { drop(stop.wait_for(|s| *s).await) } => {
            // The port was closed or the proxy stops: finish within the grace.
            if tokio::time::timeout(config.shutdown_grace, copy).await.is_err() {
                tracing::debug!(service = backend.service(), "connection still open after the shutdown grace; closed");
            }
        }
    }
}

/// A connection to an instance, with its place on it: round robin over those not ejected
/// (nor full, under `instanceMaxConn`), each connect within the connect timeout, another
/// instance after each failure until every one was tried.
async fn connect(
    backend: &Backend,
    ends: Endpoints,
    config: &ProxyConfig,
) -> Option<(TcpStream, InstanceSlot)> {
    let hello = backend.policy().send_proxy.map(|version| ProxyHello {
        version,
        client: ends.client,
        local: ends.local,
    });
    let mut tried = Vec::new();
    loop {
        let chosen = rules::take_instance(backend, None, &tried, config.queue_timeout).await;
        let (instance, _, slot) = match chosen {
            Ok(chosen) => chosen,
            Err(why) => {
                tracing::debug!(
                    service = backend.service(),
                    tried = tried.len(),
                    full = why == rules::NoChoice::Full,
                    "no instance to connect to; closing"
                );
                return None;
            }
        };
        match upstream::connect(instance.addr(), config.connect_timeout, hello).await {
            Ok(stream) => {
                instance.health().record_success();
                return Some((stream, slot));
            }
            Err(err) => {
                if !rules::attempt_failed(backend, instance, &mut tried, true, &err) {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfp_routing::{RouteTableBuilder, ServiceSpec};
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An echo server that prefixes what it sends back with `name`.
    async fn echo(name: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0_u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(name.as_bytes()).await.is_err() {
                            break;
                        }
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn connections_round_robin_retry_past_a_dead_instance_and_are_counted() {
        let a = echo("a:").await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let b = echo("b:").await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("addr").port();
        let mut builder = RouteTableBuilder::new();
        let spec =
            ServiceSpec { name: "echo".into(), tcp_port: Some(port), ..ServiceSpec::default() };
        builder.add(spec, &[a, dead, b]).expect("valid");
        let table = TableHandle::new(builder.build(1).expect("builds"));
        let host = TcpHost::new();
        host.insert(port, listener);
        host.serve(port);
        assert!(host.is_listening(port));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let thread = {
            let (host, table) = (host.clone(), table.clone());
            tokio::spawn(async move {
                let config = ProxyConfig {
                    shutdown_grace: Duration::from_millis(200),
                    ..ProxyConfig::default()
                };
                let stop = async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                };
                let stats = Arc::new(ConnectionStats::default());
                host.run_thread(table, config, CertStore::new(), stats, stop).await;
            })
        };
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            c.write_all(b"hi").await.expect("write");
            let mut buf = [0_u8; 4];
            c.read_exact(&mut buf).await.expect("every connection reaches a live instance");
            seen.push(String::from_utf8_lossy(&buf).into_owned());
        }
        assert_eq!(seen, ["a:hi", "b:hi", "a:hi", "b:hi"], "the dead one is stepped over");
        let backend = table.load().tcp_route(port).cloned().expect("routed");
        let stats = backend.stats();
        assert_eq!(load(&stats.tcp_accepted), 4);
        assert_eq!(load(&stats.tcp_connect_failures), 0);
        assert!(load(&stats.upstream_errors) >= 1, "the dead instance's refusal was recorded");
        assert_eq!(load(&stats.bytes_to_instance), 8);
        assert_eq!(load(&stats.bytes_to_client), 16);

        host.close(port);
        assert!(!host.is_listening(port));
        tokio::time::timeout(Duration::from_secs(5), async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a closed port refuses connections");
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(5), thread)
            .await
            .expect("thread ends")
            .expect("no panic");
    }
}
