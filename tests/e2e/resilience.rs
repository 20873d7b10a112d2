//! A data plane operators can trust: swaps under load drop nothing, a dying instance costs no
//! GET, timeouts answer, bad input is refused before any upstream, tunnels and big bodies
//! stream, and the counters say what happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{eventually, http_client, raw_http, EchoUpgrade, Proxy, Upstream};

fn reconfigure_standalone(path: &str, port: u16) -> String {
    format!(
        "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath={path}&port={port}"
    )
}

#[tokio::test]
async fn swapping_the_table_every_50ms_under_load_fails_no_request() {
    let upstreams =
        [Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await];
    let proxy = Proxy::start(None, &[]).await;
    assert_eq!(proxy.admin(&reconfigure_standalone("/", upstreams[0].port())).await.0, 200);

    // 8 keep-alive clients for as long as the instance set changes: 150 changes, 50 ms apart
    // (about 10 s; up to 60 s on a loaded machine, where each reconfigure takes longer).
    let swapping = Arc::new(AtomicBool::new(true));
    let url = proxy.url("/swap");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            let swapping = swapping.clone();
            tokio::spawn(async move {
                let client = http_client();
                let (mut ok, mut failed) = (0_usize, Vec::new());
                while swapping.load(Ordering::Relaxed) && ok + failed.len() < 1_000_000 {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            ok += 1;
                        }
                        Ok(r) => failed.push(format!("status {}", r.status())),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut swaps = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while swaps < 150 && Instant::now() < deadline {
        let port = upstreams[swaps % upstreams.len()].port();
        let (status, answer) = proxy.admin(&reconfigure_standalone("/", port)).await;
        assert_eq!(status, 200, "{answer}");
        swaps += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    swapping.store(false, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for client in clients {
        let (o, f) = client.await.expect("client task");
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {swaps} swaps: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(swaps, 150, "the swaps did not finish within 60 s");
    assert!(upstreams.iter().all(|u| u.hits() > 0), "every instance set got traffic");
}

#[tokio::test]
async fn killing_one_of_three_instances_under_load_fails_no_get() {
    let (consul, mut instances, proxy) = crate::support::seed_books().await;

    let url = proxy.url("/api/v1/books");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = http_client();
                let deadline = Instant::now() + Duration::from_secs(3);
                let (mut ok, mut failed) = (0_usize, Vec::new());
                while Instant::now() < deadline && ok < 200_000 {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            ok += 1;
                        }
                        Ok(r) => failed.push(format!("status {}", r.status())),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The instance dies without deregistering: Consul still lists it.
    drop(instances.remove(1));
    let (mut ok, mut failed) = (0, Vec::new());
    for client in clients {
        let (o, f) = client.await.expect("client task");
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} GETs failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "the load ran: {ok}");

    let metrics = http_client().get(proxy.admin_url("/metrics")).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("body");
    let value = |line_start: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(value("dfp_ejections_total{service=\"books-ms\"}") >= 1, "{metrics}");
    assert!(
        value("dfp_requests_total{service=\"books-ms\",class=\"2xx\"}") as usize >= ok,
        "{metrics}"
    );

    // A request that cannot be sent again (a POST with a body) to a dead instance gets 502.
    let dead = crate::support::RefusedPort::new();
    consul.register("orders-ms", "orders-1", dead.port(), None).await;
    proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=orders-ms&servicePath=/orders")
        .await;
    let response =
        http_client().post(proxy.url("/orders")).body("{}").send().await.expect("answer");
    assert_eq!(response.status(), 502);
}

#[tokio::test]
async fn timeouts_answer_408_close_idle_and_spare_busy_connections() {
    let slow = Upstream::start("slow").await;
    let proxy = Proxy::start(None, &["--header-timeout=1s", "--idle-timeout=1s"]).await;
    assert_eq!(proxy.admin(&reconfigure_standalone("/", slow.port())).await.0, 200);

    // Slowloris: half a head, then nothing. 408 and a close.
    let started = Instant::now();
    let answer = raw_http(proxy.addr, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());

    // An idle keep-alive connection is closed quietly.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connects");
    stream.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("sent");
    let mut buf = vec![0_u8; 4096];
    let n = stream.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "idle connection should be closed without a word: {closed:?}"
    );

    // A request that takes longer than both timeouts is not cut short.
    let (status, body) = proxy.get("/sleep?ms=1500").await;
    assert_eq!((status, body.as_str()), (200, "slow"));
}

#[tokio::test]
async fn bad_input_is_refused_before_any_upstream() {
    let books = Upstream::start("books").await;
    let admin = Upstream::start("admin").await;
    let proxy = Proxy::start(None, &[]).await;
    assert_eq!(proxy.admin(&reconfigure_standalone("/api/v1/books", books.port())).await.0, 200);
    let admin_route = format!(
        "/v1/docker-flow-proxy/reconfigure?serviceName=localhost&servicePath=/api/v1/admin&port={}",
        admin.port()
    );
    // `localhost` may also resolve to ::1, where nothing listens: the retry covers that.
    assert_eq!(proxy.admin(&admin_route).await.0, 200);

    let refused: &[(&[u8], &str)] = &[
        (b"GET /api/v1/books HTTP/1.1\r\nHost: a b\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /api/v1/books HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /api/v1/books HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /api/v1/books/../../../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400"),
    ];
    for (request, expected) in refused {
        let answer = raw_http(proxy.addr, request).await;
        assert!(
            answer.starts_with(expected),
            "{:?} -> {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    let mut huge = b"GET /api/v1/books HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..200 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(500)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let answer = raw_http(proxy.addr, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(books.hits(), 0, "a refused request reached the upstream");

    // Content-Length with Transfer-Encoding (RFC 9112 §6.3: "ought to be handled as an
    // error"): refused, and what follows it on the connection never becomes a request.
    let smuggle = b"POST /api/v1/books HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/books/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let answer = raw_http(proxy.addr, smuggle).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(books.hits(), 0, "an ambiguous request or what followed it reached the upstream");

    // Dot segments are resolved before routing: this is the admin service's path, and the
    // admin service sees it resolved, never the books service.
    for sneaky in [
        "/api/v1/books/../admin/users",
        "/api/v1/books/%2e%2e/admin/users",
        "/api/v1/books/.%2E/admin//users",
    ] {
        let (status, body) = proxy.get(sneaky).await;
        assert_eq!((status, body.as_str()), (200, "admin"), "{sneaky}");
        assert_eq!(admin.last_uri().as_deref(), Some("/api/v1/admin/users"), "{sneaky}");
    }
    assert_eq!(books.hits(), 0);
}

#[tokio::test]
async fn websocket_upgrades_tunnel_both_ways() {
    let echo = EchoUpgrade::start().await;
    let proxy = Proxy::start(None, &[]).await;
    assert_eq!(proxy.admin(&reconfigure_standalone("/ws", echo.port)).await.0, 200);

    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connects");
    stream
        .write_all(b"GET /ws/chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("sent");
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.expect("reads"), 1, "closed early: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"hello"[..], b"second frame", &[0_u8, 159, 255, 7]] {
        stream.write_all(message).await.expect("sent");
        let mut echoed = vec![0_u8; message.len()];
        stream.read_exact(&mut echoed).await.expect("echoed");
        assert_eq!(echoed, message);
    }
}

/// Opens a WebSocket through the proxy and returns the socket once the `101` is read.
async fn upgraded(proxy: &Proxy, path: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connects");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.expect("reads"), 1, "closed early: {head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// The plain tunnel's life as a client sees it: the service's `timeoutTunnel` closes a quiet
/// tunnel (and only a quiet one), and a client that ends its side still gets the instance's
/// last bytes before the end.
#[tokio::test]
async fn websocket_tunnels_keep_their_timeout_and_pass_half_closes_on() {
    let echo = EchoUpgrade::start().await;
    let proxy = Proxy::start(None, &[]).await;
    let reconfigure = format!("{}&timeoutTunnel=1", reconfigure_standalone("/ws", echo.port));
    assert_eq!(proxy.admin(&reconfigure).await.0, 200);

    // Busy for twice the timeout: stays open.
    let mut busy = upgraded(&proxy, "/ws/busy").await;
    let mut buf = [0_u8; 4];
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        busy.write_all(b"ping").await.expect("sent");
        busy.read_exact(&mut buf).await.expect("a busy tunnel stays open");
        assert_eq!(&buf, b"ping");
    }
    // Then quiet: closed after about a second.
    let quiet = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), busy.read(&mut buf))
        .await
        .expect("the quiet tunnel is closed within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, not {read:?}");
    let waited = quiet.elapsed();
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before timeoutTunnel");

    // The client ends its side after a last message: the echo of it still arrives, then the end.
    let mut ending = upgraded(&proxy, "/ws/ending").await;
    ending.write_all(b"last words").await.expect("sent");
    ending.shutdown().await.expect("the client ends its side");
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), ending.read_to_end(&mut back))
        .await
        .expect("the end arrives")
        .expect("read");
    assert_eq!(back, b"last words");
}

#[tokio::test]
async fn big_bodies_stream_with_flat_memory_and_trailers_survive() {
    let upstream = Upstream::start("files").await;
    let proxy = Proxy::start(None, &[]).await;
    assert_eq!(proxy.admin(&reconfigure_standalone("/", upstream.port())).await.0, 200);
    let (_, peak_before) = proxy.memory_kb();

    // 1 GiB up, generated as it is sent.
    const GIB: u64 = 1 << 30;
    let chunks = futures_stream(GIB);
    let response = http_client()
        .post(proxy.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .expect("upload answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("count"), GIB.to_string());

    // 256 MiB down, read as it arrives.
    let mut response = http_client()
        .get(proxy.url(&format!("/download?bytes={}", 256 << 20)))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .expect("download answered");
    let mut received: u64 = 0;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        received += chunk.len() as u64;
    }
    assert_eq!(received, 256 << 20);

    let (_, peak_after) = proxy.memory_kb();
    assert!(
        peak_after.saturating_sub(peak_before) < 64 * 1024,
        "peak RSS grew from {peak_before} kB to {peak_after} kB while streaming"
    );

    // Chunked bodies keep their trailers.
    let answer = raw_http(
        proxy.addr,
        b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{answer}");
    assert!(lower.contains("\r\n0\r\nx-checksum: abc\r\n"), "{answer}");
}

/// `total` zero bytes as a stream of 256 KiB chunks, made as they are sent.
fn futures_stream(
    total: u64,
) -> impl futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    struct Zeros(u64);
    impl futures_core::Stream for Zeros {
        type Item = Result<bytes::Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            static CHUNK: [u8; 256 * 1024] = [0; 256 * 1024];
            if self.0 == 0 {
                return std::task::Poll::Ready(None);
            }
            let n = self.0.min(CHUNK.len() as u64);
            self.0 -= n;
            std::task::Poll::Ready(Some(Ok(bytes::Bytes::from_static(&CHUNK[..n as usize]))))
        }
    }
    Zeros(total)
}

#[tokio::test]
async fn access_log_has_one_line_per_request() {
    let web = Upstream::start("web").await;
    let proxy = Proxy::start_logging(None, &["--access-log"], "info").await;
    assert_eq!(proxy.admin(&reconfigure_standalone("/", web.port())).await.0, 200);
    assert_eq!(proxy.get("/logged?x=1").await.0, 200);
    let line = eventually(Duration::from_secs(5), "the access log line", || {
        let log = proxy.log();
        async move { log.lines().find(|l| l.contains("/logged?x=1")).map(str::to_owned) }
    })
    .await;
    assert!(line.contains("status=200") && line.contains("service=127.0.0.1"), "{line}");
    assert!(line.contains("method=GET") && line.contains("uri=/logged?x=1"), "{line}");
    assert!(line.contains(&format!("upstream=127.0.0.1:{}", web.port())), "{line}");
    // The same line for a request the general path serves (one with a body).
    let posted = http_client().post(proxy.url("/posted")).body("x").send().await.expect("answered");
    assert_eq!(posted.status(), 200);
    let line = eventually(Duration::from_secs(5), "the general path's access log line", || {
        let log = proxy.log();
        async move { log.lines().find(|l| l.contains("/posted")).map(str::to_owned) }
    })
    .await;
    assert!(line.contains("method=POST") && line.contains("uri=/posted"), "{line}");
    assert!(line.contains("status=200") && line.contains("service=127.0.0.1"), "{line}");
}

#[tokio::test]
async fn a_slow_upload_is_not_a_slow_server() {
    let upstream = Upstream::start("files").await;
    let proxy = Proxy::start(None, &["--server-timeout=1s"]).await;
    assert_eq!(proxy.admin(&reconfigure_standalone("/", upstream.port())).await.0, 200);
    // Four chunks 600 ms apart: 2.4 s of upload, never 1 s without progress.
    let response = http_client()
        .post(proxy.url("/upload"))
        .body(reqwest::Body::wrap_stream(Trickle { left: 4, pause: None }))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("count"), (4 * 1024).to_string());
}

/// `left` chunks of 1 KiB, 600 ms apart.
struct Trickle {
    left: u32,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl futures_core::Stream for Trickle {
    type Item = Result<bytes::Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future as _;
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(600))));
        if pause.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        self.pause = None;
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(bytes::Bytes::from_static(&[b'x'; 1024]))))
    }
}
