//! Hostile clients and odd instances, byte for byte: what a client that lies, stalls or
//! probes gets, what reaches the instance, and what it costs the instance's health.
//!
//! Each test here is one finding of an attack session against the proxy (raw sockets, exact
//! bytes), kept so that it holds in every engine: client faults are the client's, a client
//! that stops reading is let go, the head limit holds on every request, bodies are forwarded
//! or refused but never dropped, `Host` is checked and never lost, interim responses reach
//! the client, and a head sent one byte at a time is served.
//!
//! Every test runs twice (`over_plain_and_tls!` at the end): `NAME::plain` over TCP and
//! `NAME::tls` over TLS, where the same HTTP/1 engine reads the same bytes after the
//! handshake; a client that lies, stalls or trickles must cost the same over either. The
//! answers are the same on both.

use std::time::Duration;

use crate::support::{
    eventually, http_client, over_plain_and_tls, Proxy, RawUpstream, Reply, Transport,
};

/// A standalone proxy for `transport` whose only route sends `/` to `upstream`.
async fn proxy_to(transport: Transport, upstream: &RawUpstream, extra: &[&str]) -> Proxy {
    let proxy = transport.proxy(extra).await;
    proxy.route_all_to_port(upstream.port()).await;
    proxy
}

/// The value of a counter of the service `127.0.0.1` in `/metrics`.
async fn counter(proxy: &Proxy, name: &str) -> u64 {
    let text = http_client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics body");
    let prefix = format!("{name}{{service=\"127.0.0.1\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a counter value"))
}

async fn instance_blame(proxy: &Proxy) -> (u64, u64) {
    (counter(proxy, "dfp_upstream_errors_total").await, counter(proxy, "dfp_ejections_total").await)
}

async fn a_broken_request_body_is_the_clients_fault_not_the_instances(transport: Transport) {
    let upstream = RawUpstream::start(|_, _| Reply::ok("fine")).await;
    let proxy = proxy_to(transport, &upstream, &[]).await;

    // Broken chunked framing: 400, the connection ends.
    let mut client = transport.client(&proxy).await;
    client.send(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    let got = String::from_utf8_lossy(&client.read_to_close().await).into_owned();
    assert!(got.starts_with("HTTP/1.1 400 "), "{got:?}");

    // A Content-Length body cut short, then the client goes: a quiet end.
    let mut client = transport.client(&proxy).await;
    client.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly a little").await;
    drop(client);

    // A Content-Length body that stalls for the client timeout: 400.
    let stalled = proxy_to(transport, &upstream, &["--client-timeout=1s"]).await;
    let mut client = transport.client(&stalled).await;
    client.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nsome").await;
    let got = String::from_utf8_lossy(&client.read_to_close().await).into_owned();
    assert!(got.starts_with("HTTP/1.1 400 "), "{got:?}");

    for proxy in [&proxy, &stalled] {
        // The instance is as healthy as before: no error, no ejection, and it serves.
        let mut client = transport.client(proxy).await;
        let answer = client.get("/after", "").await;
        assert_eq!((answer.status, answer.text().as_str()), (200, "fine"));
        assert_eq!(
            instance_blame(proxy).await,
            (0, 0),
            "a client's fault was blamed on the instance"
        );
    }
}

async fn a_client_that_stops_reading_is_let_go_and_frees_the_instance(transport: Transport) {
    // 64 MiB: far more than the socket buffers between the instance and a client that reads
    // nothing hold.
    const LEN: usize = 64 << 20;
    let mut big = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n").into_bytes();
    big.resize(big.len() + LEN, b'x');
    let big = std::sync::Arc::new(big);
    let upstream = RawUpstream::start(move |_, _| Reply::Bytes(big.to_vec())).await;
    let proxy = proxy_to(transport, &upstream, &["--client-timeout=1s"]).await;

    let mut client = transport.client(&proxy).await;
    client.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").await;
    // The client reads nothing. Within the client timeout (plus slack for a loaded machine)
    // the proxy gives up the exchange and closes the instance's connection.
    eventually(Duration::from_secs(20), "the instance's connection to be closed", || {
        let closed = upstream.closed();
        async move { (closed == 1).then_some(()) }
    })
    .await;
    drop(client);
}

async fn the_head_limit_holds_for_every_request_on_a_connection(transport: Transport) {
    let upstream = RawUpstream::start(|_, _| Reply::ok("fine")).await;
    let proxy = proxy_to(transport, &upstream, &[]).await;
    let mut client = transport.client(&proxy).await;
    // First a request with a body, then one whose head is over 64 KiB.
    client.send(b"POST /form HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello").await;
    assert_eq!(client.answer(false).await.status, 200);
    // 70 fields (fewer than the 100 allowed) of 1.2 kB: over 64 KiB in all.
    let mut huge = b"GET /big-head HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..70 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(1200)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    client.send(&huge).await;
    let got = String::from_utf8_lossy(&client.read_to_close().await).into_owned();
    assert!(got.starts_with("HTTP/1.1 431 "), "{got:?}");
    assert_eq!(upstream.received().len(), 1, "the large head reached the instance");
}

async fn bodies_are_forwarded_or_refused_never_dropped(transport: Transport) {
    let upstream = RawUpstream::start(|_, _| Reply::ok("fine")).await;
    let proxy = proxy_to(transport, &upstream, &[]).await;

    // A GET (or HEAD) with a chunked body: the instance gets it, framing and all.
    let mut client = transport.client(&proxy).await;
    client
        .send(b"GET /g HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(client.answer(false).await.status, 200);
    client
        .send(b"HEAD /h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        .await;
    assert_eq!(client.answer(true).await.status, 200);
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].body, b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(received[0].header_values("transfer-encoding"), ["chunked"]);
    assert_eq!(received[1].body, b"2\r\nhi\r\n0\r\n\r\n");

    // A coding the proxy cannot pass on faithfully: refused, nothing forwarded.
    for coding in ["gzip, chunked", "chunked, gzip", "identity"] {
        let mut client = transport.client(&proxy).await;
        client
            .send(
                format!(
                    "POST /z HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        let got = String::from_utf8_lossy(&client.read_to_close().await).into_owned();
        assert!(
            got.starts_with("HTTP/1.1 501 ") || got.starts_with("HTTP/1.1 400 "),
            "{coding}: {got:?}"
        );
    }
    assert_eq!(upstream.received().len(), 2, "a refused body reached the instance");
}

async fn host_is_checked_and_never_lost(transport: Transport) {
    let upstream = RawUpstream::start(|_, _| Reply::ok("fine")).await;
    let proxy = proxy_to(transport, &upstream, &[]).await;

    for host in ["a@b", "t:99999", "t:", "a,b", "a b", "[::1", "t:0"] {
        let mut client = transport.client(&proxy).await;
        client.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await;
        let got = String::from_utf8_lossy(&client.read_to_close().await).into_owned();
        assert!(got.starts_with("HTTP/1.1 400 "), "Host {host:?}: {got:?}");
    }
    assert!(upstream.received().is_empty(), "a bad Host reached the instance");

    // `Connection` may name hop-by-hop fields, never the ones framing and forwarding rely on.
    let mut client = transport.client(&proxy).await;
    client
        .send(
            b"POST /c HTTP/1.1\r\nHost: shop.example\r\nConnection: Host, Content-Length, \
              Transfer-Encoding, X-Forwarded-For, X-Hop\r\nX-Hop: 1\r\nX-Forwarded-For: 10.9.9.9\r\n\
              Content-Length: 5\r\n\r\nhello",
        )
        .await;
    assert_eq!(client.answer(false).await.status, 200);
    let got = upstream.received().pop().expect("forwarded");
    assert_eq!(got.header_values("host"), ["shop.example"], "{got:?}");
    assert_eq!(got.header_values("content-length"), ["5"], "{got:?}");
    assert_eq!(got.body, b"hello");
    assert_eq!(got.header_values("x-forwarded-for"), ["10.9.9.9, 127.0.0.1"], "{got:?}");
    assert!(got.header_values("x-hop").is_empty(), "a listed field was forwarded: {got:?}");

    // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2): it is routed by
    // and sent as Host, with the target in origin form.
    let mut client = transport.client(&proxy).await;
    client.send(b"GET http://a.example/p?q=1 HTTP/1.1\r\nHost: b.example\r\n\r\n").await;
    assert_eq!(client.answer(false).await.status, 200);
    let got = upstream.received().pop().expect("forwarded");
    assert_eq!(got.line(), "GET /p?q=1 HTTP/1.1");
    assert_eq!(got.header_values("host"), ["a.example"], "{got:?}");
    assert_eq!(got.header_values("x-forwarded-host"), ["a.example"], "{got:?}");
}

async fn absolute_form_targets_are_routed_by_their_authority(transport: Transport) {
    let a = RawUpstream::start(|_, _| Reply::ok("a")).await;
    let b = RawUpstream::start(|_, _| Reply::ok("b")).await;
    let proxy = transport.proxy(&[]).await;
    // Two services (standalone: named by what their name resolves to; `localhost` may also
    // resolve to ::1, where nothing listens: the retry covers that).
    for (service, domain, upstream) in
        [("127.0.0.1", "a.example", &a), ("localhost", "b.example", &b)]
    {
        let (status, answer) = proxy
            .admin(&format!(
                "/v1/docker-flow-proxy/reconfigure?serviceName={service}&servicePath=/&port={}\
                 &serviceDomain={domain}",
                upstream.port()
            ))
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut client = transport.client(&proxy).await;
    client.send(b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n").await;
    let answer = client.answer(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "a"), "{answer:?}");
    client.send(b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n").await;
    let answer = client.answer(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "b"), "{answer:?}");
}

async fn interim_responses_reach_the_client_and_expect_is_answered_once(transport: Transport) {
    let upstream = RawUpstream::start(|_, head| {
        if head.starts_with("GET /hints") {
            Reply::Bytes(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            )
        } else {
            Reply::ok("stored")
        }
    })
    .await;
    let proxy = proxy_to(transport, &upstream, &[]).await;

    let mut client = transport.client(&proxy).await;
    let answer = client.get("/hints", "").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.interim.len(), 1, "{answer:?}");
    assert!(answer.interim[0].starts_with("HTTP/1.1 103 "), "{answer:?}");
    assert!(answer.interim[0].contains("Link: </style.css>; rel=preload"), "{answer:?}");

    // `Expect: 100-continue`: this instance reads the body before it answers anything, so the
    // proxy tells the client to go on itself, once; the body then reaches the instance.
    let mut client = transport.client(&proxy).await;
    client
        .send(b"PUT /file HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let mut seen = Vec::new();
    let continued = loop {
        let mut byte = [0_u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            use tokio::io::AsyncReadExt as _;
            client.stream_mut().read(&mut byte).await
        })
        .await
        .expect("an answer to Expect within 10 s")
        .expect("read");
        assert_eq!(read, 1, "closed before 100 Continue: {:?}", String::from_utf8_lossy(&seen));
        seen.push(byte[0]);
        if seen.ends_with(b"\r\n\r\n") {
            break String::from_utf8_lossy(&seen).into_owned();
        }
    };
    assert!(continued.starts_with("HTTP/1.1 100 "), "{continued:?}");
    client.send(b"hello").await;
    let answer = client.answer(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "stored"), "{answer:?}");
    assert!(answer.interim.is_empty(), "a second 100 Continue: {answer:?}");
    let got = upstream.received().pop().expect("forwarded");
    assert_eq!(got.body, b"hello");
}

async fn a_head_sent_one_byte_at_a_time_is_served(transport: Transport) {
    // Each byte of a head is looked at a bounded number of times however it trickles in (the
    // engine scans only what it has not scanned: `h1::tests::heads_are_found_scanning_each_byte_once`).
    // Over plain TCP the kernel joins most of these one-byte writes into larger reads; over
    // TLS each byte is a record of its own, and the engine gets one record's byte per read. CPU
    // time here cannot tell linear from quadratic; this checks the answer.
    let upstream = RawUpstream::start(|_, _| Reply::ok("fine")).await;
    let proxy = proxy_to(transport, &upstream, &["--header-timeout=60s"]).await;
    let mut head = b"GET /slow HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..60 {
        head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(980)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let mut client = transport.client(&proxy).await;
    for byte in &head {
        client.send(std::slice::from_ref(byte)).await;
    }
    let answer = client.answer(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "fine"));
    assert_eq!(upstream.received()[0].header_values("x-filler-59").len(), 1);
}

over_plain_and_tls!(
    a_broken_request_body_is_the_clients_fault_not_the_instances,
    a_client_that_stops_reading_is_let_go_and_frees_the_instance,
    the_head_limit_holds_for_every_request_on_a_connection,
    bodies_are_forwarded_or_refused_never_dropped,
    host_is_checked_and_never_lost,
    absolute_form_targets_are_routed_by_their_authority,
    interim_responses_reach_the_client_and_expect_is_answered_once,
    a_head_sent_one_byte_at_a_time_is_served,
);
