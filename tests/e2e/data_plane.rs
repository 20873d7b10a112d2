//! The data plane's contract with real sockets: status mapping, forwarded and hop-by-hop
//! headers, malformed requests, graceful shutdown.
//!
//! Status mapping runs once per protocol (`NAME::plain`, `NAME::tls`, `NAME::h2`): every
//! engine classifies an instance's failure the same way. The header and malformed-request
//! tests send HTTP/1 bytes, so they run over plain TCP and TLS (`NAME::plain`, `NAME::tls`);
//! HTTP/2's own framing is engines.rs's and h2_attacks.rs's. Shutdown is plain only (the TLS
//! listener's drain is tls.rs's).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{
    over_plain_and_tls, over_plain_tls_and_h2, Consul, Protocol, Proxy, RefusedPort, Transport,
    Upstream,
};

async fn routed(consul: &Consul, proxy: &Proxy, service: &str, path: &str) {
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName={service}&servicePath={path}"
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let _ = consul;
}

async fn failures_map_to_502_and_504(protocol: Protocol) {
    let consul = Consul::start().await;
    let slow = Upstream::start_with_delay("slow-1", Duration::from_secs(3)).await;
    consul.register("slow-ms", "slow-1", slow.port(), None).await;
    // An instance whose port nothing listens on: connection refused.
    let dead = RefusedPort::new();
    consul.register("dead-ms", "dead-1", dead.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &["--server-timeout=1s"]).await;
    protocol.prepare(&proxy).await;
    routed(&consul, &proxy, "slow-ms", "/slow").await;
    routed(&consul, &proxy, "dead-ms", "/dead").await;

    let get = |path| protocol.get(&proxy, "app.example", path, &[]);
    let answer = get("/dead/x").await;
    assert_eq!(answer.status, 502, "{answer:?}");
    let answer = get("/slow").await;
    assert_eq!(answer.status, 504, "{answer:?}");
    assert_eq!(get("/nothing-here").await.status, 404);
}

async fn headers_are_forwarded_and_hop_by_hop_ones_stripped(transport: Transport) {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    transport.prepare(&proxy).await;
    routed(&consul, &proxy, "books-ms", "/api/v1/books").await;

    let request = "GET /api/v1/books/1?x=y HTTP/1.1\r\n\
                   Host: shop.example\r\n\
                   Connection: close, X-Secret\r\n\
                   X-Secret: s3cr3t\r\n\
                   Keep-Alive: timeout=5\r\n\
                   Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
                   X-Forwarded-For: 203.0.113.9\r\n\
                   X-Kept: yes\r\n\r\n";
    let answer = transport.raw_http(&proxy, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("keep-alive: timeout=30"),
        "the upstream's Keep-Alive crossed back: {answer}"
    );

    let headers = books.last_headers().expect("the upstream got the request");
    assert_eq!(books.last_uri().as_deref(), Some("/api/v1/books/1?x=y"));
    assert_eq!(headers["host"], "shop.example");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    // The one field the client's connection decides: the scheme it spoke.
    assert_eq!(headers["x-forwarded-proto"], transport.scheme());
    assert_eq!(headers["x-forwarded-host"], "shop.example");
    assert_eq!(headers["x-kept"], "yes");
    for stripped in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(headers.get(stripped).is_none(), "{stripped} reached the upstream");
    }
}

async fn malformed_requests_never_reach_an_upstream(transport: Transport) {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    transport.prepare(&proxy).await;
    routed(&consul, &proxy, "books-ms", "/").await;

    let cases: &[&[u8]] = &[
        b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"NOT A REQUEST\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for request in cases {
        let answer = transport.raw_http(&proxy, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 4"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(books.hits(), 0, "a malformed request reached the upstream");
    // The proxy is still fine.
    assert_eq!(transport.client(&proxy).await.get("/ok", "").await.status, 200);
}

// Plain only: this is about the process and its listeners at shutdown; tls.rs has the same
// drain for HTTPS (`sigterm_lets_https_requests_in_flight_finish`).
#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let consul = Consul::start().await;
    let slow = Upstream::start_with_delay("slow-1", Duration::from_millis(800)).await;
    consul.register("slow-ms", "slow-1", slow.port(), None).await;
    let mut proxy = Proxy::start(Some(&consul.url()), &[]).await;
    routed(&consul, &proxy, "slow-ms", "/").await;

    // An idle keep-alive connection: one answered request, then nothing.
    let mut idle = tokio::net::TcpStream::connect(proxy.addr).await.expect("connects");
    idle.write_all(b"GET /warm-up HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("sent");
    let mut buf = vec![0_u8; 4096];
    let n = idle.read(&mut buf).await.expect("answered");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A request in flight when SIGTERM arrives still gets its answer.
    let before = slow.hits();
    let url = proxy.url("/in-flight");
    let in_flight = tokio::spawn(async move {
        let response = crate::support::http_client().get(url).send().await.expect("answered");
        (response.status().as_u16(), response.text().await.expect("body"))
    });
    crate::support::eventually(Duration::from_secs(5), "the request to reach the upstream", || {
        let hits = slow.hits();
        async move { (hits > before).then_some(()) }
    })
    .await;
    let started = std::time::Instant::now();
    let status = proxy.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(in_flight.await.expect("joined"), (200, "slow-1".to_owned()));
    // The idle connection was closed at shutdown, not waited for (the grace period is 10 s).
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "idle connection left open: {closed:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown waited {:?}", started.elapsed());
}

over_plain_tls_and_h2!(failures_map_to_502_and_504);

over_plain_and_tls!(
    headers_are_forwarded_and_hop_by_hop_ones_stripped,
    malformed_requests_never_reach_an_upstream,
);
