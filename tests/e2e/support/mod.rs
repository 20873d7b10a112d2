//! Real processes and sockets for the end-to-end tests: a Consul dev agent, upstream HTTP
//! servers, and the `docker-flow-proxy` binary itself. Everything listens on 127.0.0.1 and
//! every process is stopped when its guard drops.

mod cluster;
mod consul;
mod echo;
mod pebble;
pub mod proxy;
mod raw;
mod relay;
mod transport;

mod upstream;

use std::future::Future;
use std::time::{Duration, Instant};

pub use cluster::ConsulCluster;
pub use consul::Consul;
pub use echo::TcpEcho;
pub use pebble::Pebble;
pub use proxy::{Proxy, Scratch};
pub use raw::{Answer, ClientStream, RawClient, RawUpstream, Received, Reply};
pub use relay::DelayRelay;
pub(crate) use transport::{over_plain_and_tls, over_plain_tls_and_h2};
pub use transport::{Protocol, Transport};
pub use upstream::{EchoUpgrade, Upstream};

/// A port that was free a moment ago (the kernel picks it; the listener is dropped at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the kernel hands out a free loopback port")
}

/// A loopback port that refuses connections for as long as this lives: bound but never
/// listening, so no other socket can take it meanwhile. (A port from [`free_port`] can be
/// handed to another test's listener before the proxy dials it, and a "dead" instance then
/// answers.)
pub struct RefusedPort {
    _socket: socket2::Socket,
    port: u16,
}

impl RefusedPort {
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("a loopback port");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("the bound port");
        RefusedPort { _socket: socket, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Waits until `check` returns `Some`, polling every 50 ms, for at most `within`.
/// Tests wait for facts this way; they never sleep and hope.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client that never goes through a proxy from the environment.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client builds")
}

/// A client that keeps requesting `url` one request after another until stopped (or 60 s or
/// 100,000 requests pass), counting answers that were not 200.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<LoadReport>,
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: Vec<String>,
}

impl Load {
    pub fn start(url: String) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client = http_client();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut report = LoadReport { ok: 0, failed: Vec::new() };
            for _ in 0..100_000 {
                if flag.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        report.ok += 1;
                    }
                    Ok(r) => report.failed.push(format!("status {}", r.status())),
                    Err(e) => report.failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            report
        });
        Load { stop, task }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("load task ends")
    }
}

/// Sends raw bytes to `addr` and returns everything the server answered until it closed
/// the connection (or 5 s passed). For requests a well-behaved client would never send.
pub async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("proxy accepts");
    raw_exchange(stream, request).await
}

/// As [`raw_http`], on a connection already made (e.g. a TLS one).
pub async fn raw_exchange(mut stream: impl ClientStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(request).await.expect("request is sent");
    // A TLS stream may keep records the socket would not take yet until it is flushed.
    stream.flush().await.expect("request is flushed");
    let mut answer = Vec::new();
    // Over TLS, a close without `close_notify` is an error here; what came before it is kept.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The seed scenario: books-ms with three instances (`books-1` … `books-3`) registered in a
/// fresh Consul agent, routed on `/api/v1/books` by a fresh proxy following it.
pub async fn seed_books() -> (Consul, Vec<Upstream>, Proxy) {
    let consul = Consul::start().await;
    let mut instances = Vec::new();
    for name in ["books-1", "books-2", "books-3"] {
        let upstream = Upstream::start(name).await;
        consul.register("books-ms", name, upstream.port(), None).await;
        instances.push(upstream);
    }
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books")
        .await;
    assert_eq!(status, 200, "{answer}");
    (consul, instances, proxy)
}
