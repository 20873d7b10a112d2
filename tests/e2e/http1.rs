//! The HTTP/1 engine at its edges, as a client and an instance see it: response framing found
//! from the bytes (chunked, close-delimited, `Content-Length`, bodiless answers), pipelining
//! with and without bodies on one keep-alive connection, forwarded and hop-by-hop headers,
//! upstream misbehaviour, bad requests that must never reach an instance, a `Date`,
//! `Connection: close` at shutdown, and no timeout on a body once its head has come.
//!
//! The instances are [`RawUpstream`]s writing exact bytes; the proxy runs standalone (no
//! Consul) with one route. The engine relays the instance's field names as written
//! (`Answer::verbatim` in `support/raw.rs`), which shows an answer went through as bytes.
//!
//! Every test runs twice (`over_plain_and_tls!` at the end): `NAME::plain` over TCP and
//! `NAME::tls` over TLS (ALPN `http/1.1` on keep-alive connections, none on one-shot ones),
//! since both reach the same engine and must give the same answers. Where the transport
//! legitimately changes an expectation (`X-Forwarded-Proto`), the test says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::support::{
    eventually, over_plain_and_tls, Proxy, RawUpstream, Received, Reply, Transport,
};

/// A standalone proxy for `transport` whose only route sends `path` to `upstream`.
async fn proxy_to(
    transport: Transport,
    upstream: &RawUpstream,
    path: &str,
    extra: &[&str],
) -> Proxy {
    let proxy = transport.proxy(extra).await;
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath={path}&port={}",
            upstream.port()
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    proxy
}

/// The request target in a request head.
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or_default()
}

/// `len` bytes that are not periodic over any short stretch, so a lost or repeated piece shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `wire` cut right after each marker in turn (each searched after the previous cut).
fn cut_after(wire: &str, markers: &[&str]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut from = 0;
    for marker in markers {
        let at = wire[from..].find(marker).unwrap_or_else(|| panic!("{marker:?} in the wire"));
        let to = from + at + marker.len();
        pieces.push(wire.as_bytes()[from..to].to_vec());
        from = to;
    }
    pieces.push(wire.as_bytes()[from..].to_vec());
    pieces
}

/// Every request line the upstream received, in order.
fn lines(received: &[Received]) -> Vec<&str> {
    received.iter().map(Received::line).collect()
}

async fn chunked_answers_are_relayed_byte_exact_and_both_connections_kept(transport: Transport) {
    const HEAD: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\
                        Connection: keep-alive\r\nKeep-Alive: timeout=30\r\nX-Raw-Upstream: yes\r\n\r\n";
    const BODY: &str = "5\r\nhello\r\n7;note=x\r\n, world\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n\
                        0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n";
    let upstream = RawUpstream::start(|_, _| {
        // Cut where a relay could lose its place: in the head, in a size line, in a chunk's
        // data and its CRLF, in the last chunk and in the trailers.
        let markers = ["Keep-Alive: ti", "5\r\nhel", "7;no", ", world\r", "xyz\r\n0\r", "abc\r\n"];
        Reply::Pieces(cut_after(&format!("{HEAD}{BODY}"), &markers))
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;

    let mut client = transport.client(&proxy).await;
    for round in ["first", "second"] {
        let answer = client.get("/stream", "").await;
        assert_eq!(answer.status, 200, "{round}: {answer:?}");
        assert!(answer.verbatim(), "{round} answer not relayed as bytes: {answer:?}");
        assert_eq!(answer.text(), BODY, "{round}: the chunked body, byte for byte");
        assert_eq!(answer.header("transfer-encoding"), Some("chunked"), "{round}");
        assert_eq!(answer.header("trailer"), Some("X-Checksum"), "{round}");
        for hop in ["connection", "keep-alive", "content-length"] {
            assert!(!answer.has(hop), "{round}: {hop} reached the client: {answer:?}");
        }
    }

    let received = upstream.received();
    assert_eq!(lines(&received), ["GET /stream HTTP/1.1"; 2]);
    assert!(received.iter().all(|r| r.connection == 0), "{received:?}");
    assert_eq!(upstream.accepted(), 1, "the upstream connection was not reused");
}

async fn close_delimited_answers_arrive_whole_then_the_client_connection_closes(
    transport: Transport,
) {
    let body = pattern(200 * 1024);
    let script_body = body.clone();
    let upstream = RawUpstream::start(move |_, head| {
        let head = match target(head) {
            "/http10" => "HTTP/1.0 200 OK\r\nX-Raw-Upstream: yes\r\nContent-Type: x/y\r\n\r\n",
            _ => "HTTP/1.1 200 OK\r\nConnection: close\r\nX-Raw-Upstream: yes\r\n\r\n",
        };
        Reply::ThenClose([head.as_bytes(), &script_body].concat())
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;

    for path in ["/http10", "/http11-close"] {
        let mut client = transport.client(&proxy).await;
        // Read until the proxy closes: no length, no chunks.
        let answer = client.get(path, "").await;
        assert!(answer.head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {}", answer.head);
        assert!(answer.verbatim(), "{path}: {}", answer.head);
        assert_eq!(answer.header("connection"), Some("close"), "{path}: {}", answer.head);
        assert!(!answer.has("content-length") && !answer.has("transfer-encoding"), "{path}");
        assert_eq!(answer.body.len(), body.len(), "{path}");
        assert!(answer.body == body, "{path}: the body arrived altered");
        assert!(client.closed().await, "{path}: the client connection stayed open");
    }
    assert_eq!(upstream.received().len(), 2);
}

async fn content_length_head_204_and_304_are_framed_exactly(transport: Transport) {
    const MIB: usize = 1 << 20;
    let big = pattern(MIB);
    let script_big = big.clone();
    let upstream = RawUpstream::start(move |_, head| {
        let bytes = match (head.split(' ').next(), target(head)) {
            (Some("HEAD"), "/big") => {
                format!("HTTP/1.1 200 OK\r\nX-Raw-Upstream: yes\r\nContent-Length: {MIB}\r\n\r\n")
                    .into_bytes()
            }
            (_, "/big") => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nX-Raw-Upstream: yes\r\nContent-Length: {MIB}\r\n\r\n"
                );
                [head.as_bytes(), &script_big].concat()
            }
            (_, "/no-content") => {
                b"HTTP/1.1 204 No Content\r\nX-Raw-Upstream: yes\r\n\r\n".to_vec()
            }
            (_, "/early-hints") => {
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 200 OK\r\nX-Raw-Upstream: yes\r\nContent-Length: 6\r\n\r\nhinted"
                    .to_vec()
            }
            (_, "/not-modified") => {
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Raw-Upstream: yes\r\n\r\n".to_vec()
            }
            (_, path) => return Reply::ok(path),
        };
        Reply::Bytes(bytes)
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;
    let mut client = transport.client(&proxy).await;

    let answer = client.get("/big", "").await;
    assert_eq!((answer.status, answer.header("content-length")), (200, Some("1048576")));
    assert!(answer.verbatim(), "{}", answer.head);
    assert!(answer.body == big, "the 1 MiB body arrived altered ({} bytes)", answer.body.len());

    client.send(b"HEAD /big HTTP/1.1\r\nHost: app.example\r\n\r\n").await;
    let answer = client.answer(true).await;
    assert_eq!((answer.status, answer.header("content-length")), (200, Some("1048576")));
    assert!(answer.verbatim(), "{}", answer.head);

    let answer = client.get("/no-content", "").await;
    assert_eq!(answer.status, 204, "{}", answer.head);
    assert!(answer.verbatim(), "{}", answer.head);
    let answer = client.get("/not-modified", "If-None-Match: \"v1\"\r\n").await;
    assert_eq!((answer.status, answer.header("etag")), (304, Some("\"v1\"")), "{}", answer.head);
    assert!(answer.verbatim(), "{}", answer.head);

    // An interim answer before the final one (the client skips any it is given).
    let answer = client.get("/early-hints", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "hinted"), "{answer:?}");

    // A stray body byte after any of them would be read as this answer's status line.
    let answer = client.get("/after", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/after"), "{answer:?}");

    let received = upstream.received();
    assert_eq!(
        lines(&received),
        [
            "GET /big HTTP/1.1",
            "HEAD /big HTTP/1.1",
            "GET /no-content HTTP/1.1",
            "GET /not-modified HTTP/1.1",
            "GET /early-hints HTTP/1.1",
            "GET /after HTTP/1.1",
        ]
    );
    assert_eq!(upstream.accepted(), 1, "an upstream connection was dropped: {received:?}");
}

async fn pipelined_requests_are_answered_in_order(transport: Transport) {
    let upstream = RawUpstream::start(|_, head| {
        Reply::ok(&format!("{} {}", head.split(' ').next().unwrap_or_default(), target(head)))
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;
    let mut client = transport.client(&proxy).await;

    client
        .send(
            b"GET /one HTTP/1.1\r\nHost: app.example\r\n\r\n\
              OPTIONS /two HTTP/1.1\r\nHost: app.example\r\n\r\n\
              DELETE /three HTTP/1.1\r\nHost: app.example\r\n\r\n\
              GET /four HTTP/1.1\r\nHost: app.example\r\n\r\n",
        )
        .await;
    for expected in ["GET /one", "OPTIONS /two", "DELETE /three", "GET /four"] {
        let answer = client.answer(false).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, expected), "{answer:?}");
        assert!(answer.verbatim(), "{expected}: {}", answer.head);
    }
    assert_eq!(
        lines(&upstream.received()),
        [
            "GET /one HTTP/1.1",
            "OPTIONS /two HTTP/1.1",
            "DELETE /three HTTP/1.1",
            "GET /four HTTP/1.1"
        ]
    );
}

async fn requests_with_and_without_bodies_share_a_keep_alive_connection(transport: Transport) {
    let upstream = RawUpstream::start(|_, head| {
        Reply::ok(&format!("{} {}", head.split(' ').next().unwrap_or_default(), target(head)))
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;

    // One request at a time: without a body, with one, without again.
    let mut client = transport.client(&proxy).await;
    let answer = client.get("/first", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "GET /first"));
    assert!(answer.verbatim(), "{}", answer.head);
    client
        .send(
            b"POST /form HTTP/1.1\r\nHost: app.example\r\nContent-Type: x/y\r\n\
              Content-Length: 11\r\n\r\nhello=world",
        )
        .await;
    let answer = client.answer(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "POST /form"), "{answer:?}");
    assert!(answer.verbatim(), "a POST is relayed by the same engine: {}", answer.head);
    let answer = client.get("/third", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "GET /third"), "{answer:?}");

    // The same, pipelined in one write.
    let mut client = transport.client(&proxy).await;
    client
        .send(
            b"GET /p1 HTTP/1.1\r\nHost: app.example\r\n\r\n\
              POST /p2 HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\r\nabcde\
              GET /p3 HTTP/1.1\r\nHost: app.example\r\n\r\n",
        )
        .await;
    for expected in ["GET /p1", "POST /p2", "GET /p3"] {
        let answer = client.answer(false).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, expected), "{answer:?}");
    }

    let received = upstream.received();
    assert_eq!(
        lines(&received),
        [
            "GET /first HTTP/1.1",
            "POST /form HTTP/1.1",
            "GET /third HTTP/1.1",
            "GET /p1 HTTP/1.1",
            "POST /p2 HTTP/1.1",
            "GET /p3 HTTP/1.1",
        ]
    );
    assert_eq!(received[1].body, b"hello=world");
    assert_eq!(received[4].body, b"abcde");

    // `Connection: close`: the answer says so and the connection ends.
    let mut client = transport.client(&proxy).await;
    let answer = client.get("/bye", "Connection: close\r\n").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "GET /bye"), "{answer:?}");
    assert!(answer.verbatim(), "{}", answer.head);
    assert_eq!(answer.header("connection"), Some("close"), "{}", answer.head);
    assert!(client.closed().await, "the connection stayed open after Connection: close");
    let bye = upstream.received().pop().expect("the upstream got /bye");
    assert!(bye.header_values("connection").is_empty(), "Connection was forwarded: {bye:?}");
}

async fn forwarded_and_hop_by_hop_headers(transport: Transport) {
    let upstream = RawUpstream::start(|_, _| Reply::ok("ok")).await;
    let proxy = proxy_to(transport, &upstream, "/api", &[]).await;
    let mut client = transport.client(&proxy).await;

    client
        .send(
            b"GET /api/x/../y?q=1&r=/../z HTTP/1.1\r\n\
              Host: shop.example:8080\r\n\
              Connection: keep-alive\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
              X-Forwarded-For: 203.0.113.9\r\n\
              X-Forwarded-Proto: https\r\n\
              X-Forwarded-Host: evil.example\r\n\
              X-Kept: yes\r\n\
              Accept: */*\r\n\r\n",
        )
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.verbatim(), "{}", answer.head);

    let received = upstream.received();
    let got = &received[0];
    assert_eq!(got.line(), "GET /api/y?q=1&r=/../z HTTP/1.1", "path normalised, query kept");
    let expected: &[(&str, &[&str])] = &[
        ("host", &["shop.example:8080"]),
        ("x-forwarded-for", &["203.0.113.9, 127.0.0.1"]),
        // The client's own connection, whatever it claimed: `http` over TCP, `https` over TLS.
        ("x-forwarded-proto", &[transport.scheme()]),
        ("x-forwarded-host", &["shop.example:8080"]),
        ("x-kept", &["yes"]),
        ("accept", &["*/*"]),
        ("connection", &[]),
        ("keep-alive", &[]),
        ("proxy-authorization", &[]),
    ];
    for (name, values) in expected {
        assert_eq!(&got.header_values(name), values, "{name} in {}", got.head);
    }

    // Targets as the instance sees them; a client with no forwarded headers of its own.
    let targets = [
        ("/api//a/./b", "/api/a/b"),
        ("/api/%2e%2e/api/c?x=/%2e%2e/", "/api/c?x=/%2e%2e/"),
        ("/api/d/", "/api/d/"),
        ("/api/e/f/..", "/api/e/"),
    ];
    for (sent, _) in targets {
        let answer = client.get(sent, "").await;
        assert_eq!(answer.status, 200, "{sent}: {answer:?}");
        assert!(answer.verbatim(), "{sent}: {}", answer.head);
    }
    let received = upstream.received();
    for (got, (sent, forwarded)) in received[1..].iter().zip(targets) {
        assert_eq!(target(&got.head), forwarded, "{sent} reached the upstream as {}", got.line());
        assert_eq!(got.header_values("x-forwarded-for"), ["127.0.0.1"], "{}", got.head);
        assert_eq!(got.header_values("x-forwarded-host"), ["app.example"], "{}", got.head);
    }
    assert_eq!(received.len(), 1 + targets.len());
}

async fn malformed_upstream_answers_are_502(transport: Transport) {
    let upstream = RawUpstream::start(|_, head| {
        let bytes: &[u8] = match target(head) {
            "/not-http" => b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            "/bad-header" => b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            "/bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
            "/two-lengths" => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
            }
            "/switching" => {
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
            }
            path => return Reply::ok(path),
        };
        Reply::Bytes(bytes.to_vec())
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;
    let mut client = transport.client(&proxy).await;

    for path in ["/not-http", "/bad-header", "/bad-length", "/two-lengths", "/switching"] {
        let answer = client.get(path, "").await;
        assert_eq!(answer.status, 502, "{path}: {answer:?}");
        assert_eq!(answer.text(), "the service instance could not be reached\n", "{path}");
    }
    // The proxy's own answers were whole: the connection carries on.
    let answer = client.get("/fine", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/fine"), "{answer:?}");
}

async fn a_silent_upstream_is_a_504_after_the_server_timeout(transport: Transport) {
    let upstream = RawUpstream::start(|_, head| match target(head) {
        "/silent" => Reply::Silent,
        path => Reply::ok(path),
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &["--server-timeout=1s"]).await;

    let mut client = transport.client(&proxy).await;
    let started = Instant::now();
    let answer = client.get("/silent", "").await;
    let waited = started.elapsed();
    assert_eq!(answer.status, 504, "{answer:?}");
    assert_eq!(answer.text(), "the service instance did not answer in time\n");
    assert!(waited >= Duration::from_millis(900), "504 after {waited:?}, before the timeout");
    assert!(waited < Duration::from_secs(5), "504 only after {waited:?}");
    let answer = client.get("/fine", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/fine"), "{answer:?}");
    // The server timeout covers the wait for the head only: a body may pause longer (see
    // a_body_that_pauses_longer_than_the_server_timeout_is_not_cut).
}

async fn pooled_upstream_connections_are_reused_only_while_clean(transport: Transport) {
    let upstream = RawUpstream::start(|index, head| match target(head) {
        // Answers, then closes as an instance's idle timeout would.
        "/then-close" => Reply::ThenClose(Reply::ok_bytes("closing")),
        // Closes a reused connection as the request arrives (the race every pool has).
        "/drop-reused" if index > 0 => Reply::Close,
        // Answers, then says goodbye unasked and closes.
        "/then-408" => Reply::ThenUnasked(
            Reply::ok_bytes("bye soon"),
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
        // Sends more than its Content-Length: what follows looks like another answer.
        "/too-long" => Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
              HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"
                .to_vec(),
        ),
        path => Reply::ok(path),
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;
    let mut client = transport.client(&proxy).await;
    let mut expect = async |path: &str, body: &str| {
        let answer = client.get(path, "").await;
        assert_eq!((answer.status, answer.text().as_str()), (200, body), "{path}: {answer:?}");
    };
    let closed_at_least = async |n: usize| {
        eventually(Duration::from_secs(5), "the upstream to close a connection", || {
            let closed = upstream.closed();
            async move { (closed >= n).then_some(()) }
        })
        .await;
    };

    expect("/then-close", "closing").await;
    closed_at_least(1).await;
    expect("/after-close", "/after-close").await;
    // `/after-close`'s connection is pooled; the instance drops it when this arrives.
    expect("/drop-reused", "/drop-reused").await;
    expect("/then-408", "bye soon").await;
    closed_at_least(3).await;
    expect("/after-408", "/after-408").await;
    expect("/too-long", "abc").await;
    expect("/after-stray", "/after-stray").await;

    let received = upstream.received();
    let dropped: Vec<usize> = received
        .iter()
        .filter(|r| target(&r.head) == "/drop-reused")
        .map(|r| r.connection)
        .collect();
    assert_eq!(dropped.len(), 2, "sent once, then again on a fresh connection: {received:?}");
    assert_ne!(dropped[0], dropped[1], "{received:?}");
}

async fn bad_requests_get_400_and_never_reach_the_upstream(transport: Transport) {
    let upstream = RawUpstream::start(|_, head| Reply::ok(target(head))).await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;

    let cases: &[(&str, &[u8])] = &[
        ("a space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("a path above /", b"GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("an escaped path above /", b"GET /a/%2e%2e/%2E%2E/etc HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("two Hosts", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("no Host", b"GET /x HTTP/1.1\r\n\r\n"),
        ("a Host that is not host[:port]", b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n"),
    ];
    for (what, request) in cases {
        let answer = transport.raw_http(&proxy, request).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{what}: {answer:?}");
    }
    assert_eq!(upstream.accepted(), 0, "a bad request reached the upstream");

    // After a request forwarded on the same connection.
    let mut client = transport.client(&proxy).await;
    let answer = client.get("/ok", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/ok"), "{answer:?}");
    let answer = client.get("/ok/../../etc/passwd", "").await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(client.closed().await, "the connection stayed open after a 400");
    assert_eq!(lines(&upstream.received()), ["GET /ok HTTP/1.1"]);
}

async fn content_length_with_transfer_encoding_is_refused_and_ends_the_connection(
    transport: Transport,
) {
    let upstream = RawUpstream::start(|_, head| Reply::ok(target(head))).await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;

    // RFC 9112 §6.3: both framings in one request "ought to be handled as an error": 400, the
    // connection ends, and the bytes after it never become a request. Here it follows an
    // ordinary request on the same connection.
    let mut client = transport.client(&proxy).await;
    let answer = client.get("/ok", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/ok"), "{answer:?}");
    client
        .send(
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
    let got = String::from_utf8_lossy(&client.read_to_close().await).into_owned();
    assert!(got.starts_with("HTTP/1.1 400 "), "{got:?}");
    assert!(got.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{got:?}");
    assert!(!got.contains("/smuggled"), "the smuggled request was answered: {got:?}");
    let received = upstream.received();
    assert_eq!(lines(&received), ["GET /ok HTTP/1.1"], "{received:?}");
}

async fn answers_carry_a_date_when_the_instance_sends_none(transport: Transport) {
    // RFC 9110 §6.6.1: a recipient with a clock that forwards a response without a Date MUST
    // add one, for answers with and without a request body alike.
    let upstream = RawUpstream::start(|_, head| Reply::ok(target(head))).await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;

    let mut general = transport.client(&proxy).await;
    general
        .send(b"POST /general HTTP/1.1\r\nHost: app.example\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    let answer = general.answer(false).await;
    assert_eq!((answer.status, answer.verbatim()), (200, true), "{answer:?}");
    assert!(answer.has("date"), "the POST's answer has no Date: {}", answer.head);

    let mut lane = transport.client(&proxy).await;
    let answer = lane.get("/lane", "").await;
    assert_eq!((answer.status, answer.verbatim()), (200, true), "{answer:?}");
    assert!(answer.has("date"), "the GET's answer has no Date: {}", answer.head);
}

async fn an_answer_in_flight_at_shutdown_says_connection_close(transport: Transport) {
    let gate = Arc::new(Semaphore::new(0));
    let script_gate = gate.clone();
    let upstream = RawUpstream::start(move |_, head| {
        let (gate, after) = (script_gate.clone(), Reply::ok_bytes(target(head)));
        Reply::Gated { before: Vec::new(), gate, after }
    })
    .await;
    let mut proxy = proxy_to(transport, &upstream, "/", &[]).await;
    let addr = transport.addr(&proxy);

    // In flight together: a GET, and a POST with a body.
    let mut lane = transport.client(&proxy).await;
    lane.send(b"GET /lane HTTP/1.1\r\nHost: app.example\r\n\r\n").await;
    let mut general = transport.client(&proxy).await;
    general
        .send(b"POST /general HTTP/1.1\r\nHost: app.example\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    eventually(Duration::from_secs(5), "both requests to reach the upstream", || {
        let received = upstream.received().len();
        async move { (received == 2).then_some(()) }
    })
    .await;

    let clients = async {
        eventually(Duration::from_secs(10), "the proxy to stop accepting", || async move {
            tokio::net::TcpStream::connect(addr).await.is_err().then_some(())
        })
        .await;
        gate.add_permits(2);
        let answers = (general.answer(false).await, lane.answer(false).await);
        (answers, general.closed().await, lane.closed().await)
    };
    let (exit, ((general_answer, lane_answer), general_closed, lane_closed)) =
        tokio::join!(proxy.terminate(), clients);
    assert!(exit.success(), "exit status {exit:?}");

    // Both answers tell the client not to reuse the connection, then it closes.
    assert_eq!(general_answer.status, 200, "{general_answer:?}");
    assert_eq!(general_answer.header("connection"), Some("close"), "{}", general_answer.head);
    assert!(general_closed, "the POST's connection stayed open");
    // The lane should say the same: a keep-alive client would otherwise send its next request
    // (maybe not one it can retry) into a connection that is closing.
    assert_eq!((lane_answer.status, lane_answer.verbatim()), (200, true), "{lane_answer:?}");
    assert!(lane_closed, "the GET's connection stayed open");
    assert_eq!(lane_answer.header("connection"), Some("close"), "{}", lane_answer.head);
}

async fn a_body_that_pauses_longer_than_the_server_timeout_is_not_cut(transport: Transport) {
    // `--server-timeout` bounds the wait for an answer's head (see `server --help`); a body
    // may then pause longer (server-sent events, a slow export), with or without a request body.
    let gate = Arc::new(Semaphore::new(0));
    let script_gate = gate.clone();
    let upstream = RawUpstream::start(move |_, _| Reply::Gated {
        before: b"HTTP/1.1 200 OK\r\nX-Raw-Upstream: yes\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nfirst\r\n"
            .to_vec(),
        gate: script_gate.clone(),
        after: b"4\r\nlast\r\n0\r\n\r\n".to_vec(),
    })
    .await;
    let proxy = proxy_to(transport, &upstream, "/", &["--server-timeout=1s"]).await;

    let mut general = transport.client(&proxy).await;
    general
        .send(b"POST /general HTTP/1.1\r\nHost: app.example\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    let mut lane = transport.client(&proxy).await;
    lane.send(b"GET /lane HTTP/1.1\r\nHost: app.example\r\n\r\n").await;
    eventually(Duration::from_secs(5), "both requests to reach the upstream", || {
        let received = upstream.received().len();
        async move { (received == 2).then_some(()) }
    })
    .await;
    // The stimulus is time itself: both bodies stay silent for longer than the server timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gate.add_permits(2);

    let answer = general.answer(false).await;
    assert_eq!((answer.status, answer.verbatim()), (200, true), "{answer:?}");
    let text = answer.text();
    assert!(text.contains("first") && text.contains("last"), "POST: {text:?}");
    let answer = lane.answer(false).await;
    assert_eq!((answer.status, answer.verbatim()), (200, true), "{answer:?}");
    assert_eq!(answer.text(), "5\r\nfirst\r\n4\r\nlast\r\n0\r\n\r\n");
}

async fn idle_upstream_connections_are_closed_after_the_upstream_idle_timeout(
    transport: Transport,
) {
    let upstream = RawUpstream::start(|_, head| Reply::ok(target(head))).await;
    let proxy = proxy_to(transport, &upstream, "/", &["--upstream-idle-timeout=2s"]).await;
    let mut client = transport.client(&proxy).await;
    let answer = client.get("/kept", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/kept"), "{answer:?}");
    assert_eq!(upstream.closed(), 0, "the upstream connection is kept for reuse at first");
    // Nobody asks for it again: the proxy closes it once it has been idle for 2 s (its
    // descriptor is not kept for good).
    eventually(Duration::from_secs(10), "the idle upstream connection to be closed", || async {
        (upstream.closed() == 1).then_some(())
    })
    .await;
    // A later request opens a fresh one.
    let answer = client.get("/again", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/again"), "{answer:?}");
    assert_eq!(upstream.accepted(), 2);
}

/// The engine keeps the service a connection's last request went to, for the next one: a
/// reconfigure or a remove in between must still be what that next request meets.
async fn a_keep_alive_connection_meets_each_reconfigure_of_its_service(transport: Transport) {
    let upstream = RawUpstream::start(|_, head| Reply::ok(target(head))).await;
    let proxy = proxy_to(transport, &upstream, "/", &[]).await;
    let mut client = transport.client(&proxy).await;
    let answer = client.get("/before", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/before"), "{answer:?}");

    // The same service, now with a header for its instances.
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}\
             &setReqHeader=X-Tier%20gold",
            upstream.port()
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let answer = client.get("/after", "").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "/after"), "{answer:?}");
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].connection, received[1].connection, "one upstream connection");
    assert!(received[0].header_values("x-tier").is_empty(), "{}", received[0].head);
    assert_eq!(received[1].header_values("x-tier"), ["gold"], "{}", received[1].head);

    // Removed: the same client connection gets the 404 of a path no service owns.
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/remove?serviceName=127.0.0.1").await;
    assert_eq!(status, 200, "{answer}");
    let answer = client.get("/gone", "").await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(upstream.received().len(), 2, "nothing more reached the instance");

    // Both answers the service gave are counted once.
    let metrics = proxy.metrics().await;
    assert!(
        metrics.lines().any(|l| l == "dfp_requests_total{service=\"127.0.0.1\",class=\"2xx\"} 2"),
        "{metrics}"
    );
}

over_plain_and_tls!(
    chunked_answers_are_relayed_byte_exact_and_both_connections_kept,
    close_delimited_answers_arrive_whole_then_the_client_connection_closes,
    content_length_head_204_and_304_are_framed_exactly,
    pipelined_requests_are_answered_in_order,
    requests_with_and_without_bodies_share_a_keep_alive_connection,
    forwarded_and_hop_by_hop_headers,
    malformed_upstream_answers_are_502,
    a_silent_upstream_is_a_504_after_the_server_timeout,
    pooled_upstream_connections_are_reused_only_while_clean,
    bad_requests_get_400_and_never_reach_the_upstream,
    content_length_with_transfer_encoding_is_refused_and_ends_the_connection,
    answers_carry_a_date_when_the_instance_sends_none,
    an_answer_in_flight_at_shutdown_says_connection_close,
    a_body_that_pauses_longer_than_the_server_timeout_is_not_cut,
    idle_upstream_connections_are_closed_after_the_upstream_idle_timeout,
    a_keep_alive_connection_meets_each_reconfigure_of_its_service,
);
