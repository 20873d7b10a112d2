//! The accept loop and per-connection HTTP/1.1 servers.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use dfp_routing::TableHandle;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::forward::Forwarder;

/// Data-plane settings. [`ProxyConfig::default`] holds Docker Flow Proxy's defaults.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long to wait for an upstream connection to open.
    pub connect_timeout: Duration,
    /// How long to wait for an upstream's response head once the request is sent.
    pub server_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(5),
            server_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(5),
            upstream_idle_timeout: Duration::from_secs(90),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves the proxy on `listener` until `shutdown` completes, then stops accepting and gives
/// open connections [`ProxyConfig::shutdown_grace`] to finish.
///
/// The caller owns the listener (and so the port): tests bind `127.0.0.1:0`.
pub async fn serve(
    listener: TcpListener,
    table: TableHandle,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let forwarder = Arc::new(Forwarder::new(table, &config));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout).keep_alive(true);
    tokio::pin!(shutdown);

    loop {
        let (stream, client_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
        let forwarder = forwarder.clone();
        let service = service_fn(move |request| {
            let forwarder = forwarder.clone();
            async move { forwarder.handle(request, client_addr).await }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(client = %client_addr, error = %err, "client connection ended with an error");
            }
        });
    }

    tracing::info!(grace = ?config.shutdown_grace, "proxy stops accepting; draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all proxy connections closed"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!("grace period over; closing the remaining proxy connections");
        }
    }
    Ok(())
}
