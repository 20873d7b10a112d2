//! Connection limits: a burst of connections fits in the listen backlog (`--listen-backlog`)
//! and is served whole; `--max-connections` bounds the client connections open at once across
//! the plain and HTTPS listeners, while the admin API stays reachable.
//!
//! The limit holds on both listeners: its test runs with the connection held back arriving
//! over plain TCP (`NAME::plain`) and over TLS (`NAME::tls`), served once a connection on the
//! other listener closes. The burst and backlog tests are about the listening sockets
//! themselves (the backlog one reads both listeners' backlogs), so they run once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::{
    eventually, http_client, over_plain_and_tls, ClientStream, Proxy, RawClient, Transport,
    Upstream,
};
use crate::tls::{connect, route_all_to, upload, Ca};

/// The value of the un-labelled sample `name` in the proxy's `/metrics`.
pub async fn metric(proxy: &Proxy, name: &str) -> Option<u64> {
    let text =
        http_client().get(proxy.admin_url("/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// How many files this process may open (the soft `RLIMIT_NOFILE`, from /proc).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

const BURST: usize = 2_000;

// Plain only: this is about the listen backlog taking a burst of connects; 2,000 TLS
// handshakes would test the handshake's CPU cost on a 2-core machine, not the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_opened_at_once_are_all_served() {
    // Each connection costs a descriptor here and one for the instance's side, and the proxy
    // (which inherits the limit) the same again.
    let needed = 3 * BURST as u64;
    let limit = open_files_limit();
    assert!(limit >= needed, "this test needs `ulimit -n` of at least {needed}; it is {limit}");
    let web = Upstream::start("web-1").await;
    let proxy = Proxy::start(None, &["--idle-timeout=120s", "--header-timeout=60s"]).await;
    route_all_to(&proxy, &web).await;
    let addr = proxy.addr;

    // All at once: every connect is in flight before the first is answered.
    let mut connecting = JoinSet::new();
    for _ in 0..BURST {
        connecting.spawn(async move {
            tokio::time::timeout(Duration::from_secs(60), TcpStream::connect(addr)).await
        });
    }
    let mut streams = Vec::with_capacity(BURST);
    while let Some(connected) = connecting.join_next().await {
        let stream = connected.expect("connect task").expect("connects within 60 s");
        streams.push(stream.expect("the proxy's backlog takes the connection"));
    }
    assert_eq!(streams.len(), BURST);
    // The proxy holds them all open at once (the default limit is far above).
    eventually(Duration::from_secs(60), "the proxy to accept every connection", || async {
        (metric(&proxy, "dfp_open_connections").await? >= BURST as u64).then_some(())
    })
    .await;

    let mut answers = JoinSet::new();
    for mut stream in streams {
        answers.spawn(async move {
            let exchange = async {
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await?;
                std::io::Result::Ok(String::from_utf8_lossy(&answer).into_owned())
            };
            tokio::time::timeout(Duration::from_secs(60), exchange).await
        });
    }
    let mut served = 0;
    while let Some(answer) = answers.join_next().await {
        let answer = answer.expect("request task").expect("answered within 60 s").expect("io");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("web-1"), "{answer}");
        served += 1;
    }
    assert_eq!(served, BURST);
    assert_eq!(web.hits(), BURST, "each request reached the instance once");
}

/// Connects over `transport` to `addr`, sends a GET with `Connection: close` and reads the
/// answer until the proxy closes. Over TLS the handshake itself waits until the proxy takes
/// the connection.
async fn one_request(transport: Transport, addr: SocketAddr) -> String {
    let mut stream: Box<dyn ClientStream> = match transport {
        Transport::Plain => Box::new(TcpStream::connect(addr).await.expect("the backlog takes it")),
        Transport::Tls => Box::new(connect(addr, Some("shop.example")).await.expect("handshake")),
    };
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    stream.flush().await.expect("request flushed");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("a clean close after the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether `task` finishes within `wait` (false: still waiting).
async fn done_within<T>(task: &mut tokio::task::JoinHandle<T>, wait: Duration) -> bool {
    tokio::time::timeout(wait, task).await.is_ok()
}

async fn past_max_connections_a_connection_waits_until_one_closes(transport: Transport) {
    let ca = Ca::new();
    let web = Upstream::start("web-1").await;
    let proxy = Proxy::start(None, &["--max-connections=10", "--threads=2"]).await;
    route_all_to(&proxy, &web).await;
    assert_eq!(upload(&proxy, "shop", &ca.issue(&["shop.example"]).pem).await.0, 200);
    assert_eq!(metric(&proxy, "dfp_max_connections").await, Some(10));

    // Ten connections, plain and HTTPS, each answered once and kept open.
    let mut plain = Vec::new();
    for _ in 0..6 {
        let mut client = RawClient::connect(proxy.addr).await;
        assert_eq!(client.get("/", "").await.text(), "web-1");
        plain.push(client);
    }
    let mut https = Vec::new();
    for _ in 0..4 {
        let mut tls =
            connect(proxy.tls_addr.expect("HTTPS"), Some("shop.example")).await.expect("handshake");
        tls.write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n").await.expect("request");
        let mut answer = vec![0_u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut answer))
            .await
            .expect("answered in time")
            .expect("answer");
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
        https.push(tls);
    }
    assert_eq!(metric(&proxy, "dfp_open_connections").await, Some(10));

    // The eleventh connects (the kernel's backlog takes it) but is not served...
    let mut eleventh = tokio::spawn(one_request(transport, transport.addr(&proxy)));
    eventually(Duration::from_secs(10), "the limit to hold a connection back", || async {
        (metric(&proxy, "dfp_connection_limit_reached_total").await? >= 1).then_some(())
    })
    .await;
    assert!(!done_within(&mut eleventh, Duration::from_millis(500)).await, "served past 10");
    assert_eq!(web.hits(), 10);

    // ...while the admin API and /metrics answer.
    let (status, _) = proxy.admin("/v1/docker-flow-proxy/ping").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&proxy, "dfp_open_connections").await, Some(10));
    assert!(!done_within(&mut eleventh, Duration::from_millis(200)).await, "served past 10");

    // A connection on the other listener closes: the eleventh is served.
    match transport {
        Transport::Plain => drop(https.pop()),
        Transport::Tls => drop(plain.pop()),
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), eleventh)
        .await
        .expect("served once a connection closed")
        .expect("the request task");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("web-1"), "{answer}");

    // The ten kept open still work.
    for client in &mut plain {
        assert_eq!(client.get("/", "").await.text(), "web-1");
    }
}

/// The backlog of the socket listening at `addr`, as the kernel reports it (`ss`'s Send-Q of
/// a listening socket).
fn listen_backlog(addr: SocketAddr) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("ss: {text:?}"))
}

// Once: it reads the backlog of both listeners.
#[tokio::test]
async fn the_listen_backlog_follows_the_flag_up_to_the_kernels_cap() {
    let cap: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4096);
    let default = Proxy::start(None, &[]).await;
    assert_eq!(listen_backlog(default.addr), 4096.min(cap), "the default backlog");
    let set = Proxy::start(None, &["--listen-backlog=1000"]).await;
    assert_eq!(listen_backlog(set.addr), 1000.min(cap));
    let tls = crate::tls::tls_addr(&set);
    assert_eq!(listen_backlog(tls), 1000.min(cap), "the HTTPS listener's");
}

over_plain_and_tls!(past_max_connections_a_connection_waits_until_one_closes);
