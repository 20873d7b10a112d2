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

use dfp_routing::{Backend, TableHandle};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

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
        stats: Arc<ConnectionStats>,
        shutdown: impl Future<Output = ()>,
    ) {
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
                        let forwarder = Forwarder { port: accept.port, table: table.clone(), config: config.clone() };
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

/// What a TCP service's connection needs: its listener's port, the table and the defaults.
#[derive(Debug)]
struct Forwarder {
    port: u16,
    table: TableHandle,
    config: ProxyConfig,
}

/// Counts a connection of a service as open for as long as it lives.
struct OpenTcp(Arc<Backend>);

impl Drop for OpenTcp {
    fn drop(&mut self) {
        self.0.stats().tcp_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Forwarder {
    async fn forward(&self, client: TcpStream, ends: Endpoints, mut stop: watch::Receiver<bool>) {
        let Some(backend) = self.table.load().tcp_route(self.port).cloned() else {
            tracing::debug!(port = self.port, "no TCP service owns this port any more; closing");
            return;
        };
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
        let Some(instance) = self.connect(&backend, ends).await else {
            stats.tcp_connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let tunnel = Tunnel {
            idle: policy.tunnel_timeout.unwrap_or(self.config.tunnel_timeout),
            write_a_within: Some(policy.client_timeout.unwrap_or(self.config.client_timeout)),
            write_b_within: Some(policy.server_timeout.unwrap_or(self.config.server_timeout)),
            buffer: TCP_BUFFER,
            counted: Some((&stats.bytes_to_instance, &stats.bytes_to_client)),
        };
        let copy = tunnel::run(client, instance, tunnel);
        tokio::pin!(copy);
        tokio::select! {
            () = &mut copy => {}
            () = async { drop(stop.wait_for(|s| *s).await) } => {
                // The port was closed or the proxy stops: finish within the grace.
                let grace = self.config.shutdown_grace;
                if tokio::time::timeout(grace, copy).await.is_err() {
                    tracing::debug!(service = backend.service(), "connection still open after the shutdown grace; closed");
                }
            }
        }
    }

    /// A connection to an instance: round robin over those not ejected, each connect within
    /// the connect timeout, another instance after each failure until every one was tried.
    async fn connect(&self, backend: &Backend, ends: Endpoints) -> Option<TcpStream> {
        let hello = backend.policy().send_proxy.map(|version| ProxyHello {
            version,
            client: ends.client,
            local: ends.local,
        });
        let mut tried = Vec::new();
        loop {
            let Some((instance, _)) = rules::choose_instance(backend, None, &tried) else {
                tracing::debug!(
                    service = backend.service(),
                    tried = tried.len(),
                    "no instance to connect to; closing"
                );
                return None;
            };
            match upstream::connect(instance.addr(), self.config.connect_timeout, hello).await {
                Ok(stream) => {
                    instance.health().record_success();
                    return Some(stream);
                }
                Err(err) => {
                    if !rules::attempt_failed(backend, instance, &mut tried, true, &err) {
                        return None;
                    }
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
                host.run_thread(table, config, Arc::new(ConnectionStats::default()), stop).await;
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
