//! The same exchanges through every engine, compared: plain HTTP/1.1, HTTP/1.1 over TLS (both
//! the proxy's HTTP/1 engine) and HTTP/2 over TLS (hyper's HTTP/2 server, then the same rules
//! and the same upstream connections). What the instance received and what the client got
//! must be the same, field for field and byte for byte, except what the client's own
//! connection decides: `X-Forwarded-Proto` (`http` or `https`) and the port in `Host`.
//!
//! This is the cross-engine comparison; the HTTP/1 engine's own suite (`http1.rs`) runs every
//! test over both of its transports, plain TCP and TLS.
//!
//! Inputs cover the everyday request and the odd ones: a query, forwarded fields a client
//! made up, hop-by-hop fields, bodies with a length, responses framed by length, by chunks and
//! by the instance closing, bodiless answers, interim answers, per-service options (rewrite,
//! header edits, basic auth), a refused credential, a refused expectation, a malformed instance.

use std::collections::BTreeMap;

use crate::support::{Proxy, RawUpstream, Received, Reply};
use crate::tls::{upload, Ca};

/// One exchange as a client sends it.
struct Input {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
}

const INPUTS: &[Input] = &[
    Input { method: "GET", path: "/plain?x=1&y=%20", headers: &[], body: b"" },
    Input {
        method: "GET",
        path: "/plain",
        headers: &[
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
            ("accept", "text/plain"),
            ("x-many", "a"),
        ],
        body: b"",
    },
    Input { method: "HEAD", path: "/plain", headers: &[], body: b"" },
    Input {
        method: "POST",
        path: "/echo",
        headers: &[("content-type", "x/y")],
        body: b"hello=world",
    },
    Input { method: "PUT", path: "/echo", headers: &[], body: &[b'z'; 70_000] },
    Input { method: "GET", path: "/chunked", headers: &[], body: b"" },
    Input { method: "GET", path: "/until-close", headers: &[], body: b"" },
    Input { method: "GET", path: "/no-content", headers: &[], body: b"" },
    Input { method: "GET", path: "/hints", headers: &[], body: b"" },
    Input { method: "GET", path: "/hop", headers: &[], body: b"" },
    Input { method: "GET", path: "/malformed", headers: &[], body: b"" },
    Input { method: "DELETE", path: "/opts/item/7", headers: &[("x-drop", "1")], body: b"" },
    Input {
        method: "GET",
        path: "/auth/x",
        headers: &[("authorization", "Basic dTpwYXNz")], // u:pass
        body: b"",
    },
    Input {
        method: "GET",
        path: "/auth/x",
        headers: &[("authorization", "Basic bm86bm8=")],
        body: b"",
    },
    Input { method: "GET", path: "/refused", headers: &[("expect", "something-else")], body: b"" },
];

/// What the instance answers, by path.
fn reply(head: &str) -> Reply {
    let path = head.split(' ').nth(1).unwrap_or_default();
    let bytes = |s: &str| s.as_bytes().to_vec();
    if path.starts_with("/echo") {
        return Reply::Bytes(bytes(
            "HTTP/1.1 201 Created\r\nContent-Length: 6\r\nX-Echo: yes\r\n\r\nstored",
        ));
    }
    match path {
        "/chunked" => Reply::Bytes(bytes(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
             5\r\nfirst\r\n7;ext=1\r\n second\r\n0\r\n\r\n",
        )),
        "/until-close" => {
            Reply::ThenClose(bytes("HTTP/1.1 200 OK\r\nX-Until: close\r\n\r\nall of it"))
        }
        "/no-content" => Reply::Bytes(bytes("HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n")),
        "/hints" => Reply::Bytes(bytes(
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints",
        )),
        "/hop" => Reply::Bytes(bytes(
            "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Thing: 1\r\nX-Kept: 1\r\nContent-Length: 3\r\n\r\nhop",
        )),
        "/malformed" => Reply::ThenClose(bytes("HTTP/1.1 2x0 Nope\r\n\r\n")),
        _ => Reply::Bytes(bytes("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Plain: 1\r\n\r\nplain")),
    }
}

/// Fields by lowercase name, values in order.
type Fields = BTreeMap<String, Vec<String>>;

/// What one engine gave: per input, what the instance received (if anything: request line,
/// fields, body data) and what the client got (status, fields, body data).
#[derive(Debug, PartialEq)]
struct Seen {
    instance: Option<(String, Fields, Vec<u8>)>,
    client: (u16, Fields, Vec<u8>),
}

/// Fields that depend on the client's connection, not on the rules: left out or made equal.
fn comparable(name: &str, value: &str) -> Option<String> {
    match name {
        "x-forwarded-proto" | "date" | "connection" => None,
        "host" | "x-forwarded-host" => {
            Some(value.rsplit_once(':').map_or(value, |(h, _)| h).to_owned())
        }
        _ => Some(value.to_owned()),
    }
}

fn instance_view(received: &Received) -> (String, Fields, Vec<u8>) {
    let mut lines = received.head.lines();
    let line = lines.next().unwrap_or_default().to_owned();
    let mut fields = Fields::new();
    for field in lines {
        let Some((name, value)) = field.split_once(':') else { continue };
        let name = name.trim().to_ascii_lowercase();
        // The body's framing on the instance's leg is the proxy's choice; its bytes are
        // compared below.
        if name == "transfer-encoding" || name == "content-length" {
            continue;
        }
        if let Some(value) = comparable(&name, value.trim()) {
            fields.entry(name).or_default().push(value);
        }
    }
    let body = if received.header_values("transfer-encoding").is_empty() {
        received.body.clone()
    } else {
        dechunk(&received.body)
    };
    (line, fields, body)
}

/// The data of a chunked body.
fn dechunk(mut wire: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let line_end = wire.windows(2).position(|w| w == b"\r\n").expect("a size line");
        let line = std::str::from_utf8(&wire[..line_end]).expect("ASCII");
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).expect("hex");
        wire = &wire[line_end + 2..];
        if size == 0 {
            return data;
        }
        data.extend_from_slice(&wire[..size]);
        wire = &wire[size + 2..];
    }
}

async fn client_view(response: reqwest::Response) -> (u16, Fields, Vec<u8>) {
    let status = response.status().as_u16();
    let mut fields = Fields::new();
    for (name, value) in response.headers() {
        // Framing is each protocol's own (HTTP/2 has no chunks); the bytes are compared.
        if matches!(name.as_str(), "transfer-encoding" | "content-length") {
            continue;
        }
        let value = value.to_str().unwrap_or("<binary>");
        if let Some(value) = comparable(name.as_str(), value) {
            fields.entry(name.as_str().to_owned()).or_default().push(value);
        }
    }
    let body = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, fields, body)
}

/// Sends every input through `client` at `base` and records what both sides saw.
async fn run(client: &reqwest::Client, base: &str, upstream: &RawUpstream) -> Vec<Seen> {
    let mut seen = Vec::new();
    for input in INPUTS {
        let before = upstream.received().len();
        let mut request =
            client.request(input.method.parse().expect("method"), format!("{base}{}", input.path));
        for (name, value) in input.headers {
            request = request.header(*name, *value);
        }
        if !input.body.is_empty() {
            request = request.body(input.body.to_vec());
        }
        let response = request.send().await.expect("an answer");
        let client = client_view(response).await;
        let received = upstream.received();
        assert!(received.len() <= before + 1, "{}: sent more than once", input.path);
        let instance = received.get(before).map(instance_view);
        seen.push(Seen { instance, client });
    }
    seen
}

#[tokio::test]
async fn every_engine_gives_the_same_answers() {
    let ca = Ca::new();
    let upstream = RawUpstream::start(|_, head| reply(head)).await;
    let proxy = Proxy::start(None, &[]).await;
    let routes = [
        format!("serviceName=127.0.0.1&servicePath=/&port={}", upstream.port()),
        format!(
            "serviceName=localhost&servicePath=/opts&port={}&reqPathSearch=^/opts/(.*)&reqPathReplace=/edited/\\1\
             &setReqHeader=X-Env%20prod&delReqHeader=X-Drop&addResHeader=X-Served-By%20dfp",
            upstream.port()
        ),
    ];
    for query in &routes {
        let (status, answer) =
            proxy.admin(&format!("/v1/docker-flow-proxy/reconfigure?{query}")).await;
        assert_eq!(status, 200, "{query}: {answer}");
    }
    let auth = RawUpstream::start(|_, head| reply(head)).await;
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.1&servicePath=/auth&port={}&users=u:pass",
            auth.port()
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = upload(&proxy, "shop", &ca.issue(&["shop.example"]).pem).await;
    assert_eq!(status, 200, "{answer}");

    let plain = crate::support::http_client();
    let tls_http1 = ca.client(&proxy, &["shop.example"], true);
    let tls_http2 = ca.client(&proxy, &["shop.example"], false);
    let plain_base = format!("http://shop.example:{}", proxy.addr.port());
    let plain = reqwest::Client::builder()
        .no_proxy()
        .resolve("shop.example", proxy.addr)
        .http1_only()
        .build()
        .unwrap_or(plain);
    let tls_base = format!("https://shop.example:{}", crate::tls::tls_addr(&proxy).port());

    // Which upstream an input reaches: /auth goes to its own.
    let mut results = Vec::new();
    for (name, client, base) in [
        ("plain HTTP/1.1", &plain, &plain_base),
        ("HTTP/1.1 over TLS", &tls_http1, &tls_base),
        ("HTTP/2", &tls_http2, &tls_base),
    ] {
        let mut seen = run(client, base, &upstream).await;
        // The /auth inputs land on `auth`: fold what it received in.
        let auth_received = auth.received();
        for (input, seen) in INPUTS.iter().zip(seen.iter_mut()) {
            if input.path.starts_with("/auth") && input.headers[0].1 == "Basic dTpwYXNz" {
                seen.instance = auth_received.last().map(instance_view);
            }
        }
        results.push((name, seen));
    }
    let (reference_name, reference) = &results[0];
    for (name, seen) in &results[1..] {
        for ((input, expected), got) in INPUTS.iter().zip(reference).zip(seen) {
            assert_eq!(
                expected, got,
                "{} {}: {reference_name} and {name} differ",
                input.method, input.path
            );
        }
    }

    // And the reference itself is what the rules say.
    let by_path =
        |path: &str| &reference[INPUTS.iter().position(|i| i.path == path).expect("an input")];
    let hop = by_path("/hop");
    assert!(
        !hop.client.1.contains_key("x-hop") && !hop.client.1.contains_key("keep-alive"),
        "{hop:?}"
    );
    assert!(hop.client.1.contains_key("x-kept"), "{hop:?}");
    assert_eq!(by_path("/chunked").client.2, b"first second");
    assert_eq!(by_path("/until-close").client.2, b"all of it");
    assert_eq!(by_path("/malformed").client.0, 502);
    let refused = by_path("/refused");
    assert_eq!((refused.client.0, &refused.instance), (417, &None));
    let opts = by_path("/opts/item/7");
    let (line, fields, _) = opts.instance.as_ref().expect("forwarded");
    assert_eq!(line, "DELETE /edited/item/7 HTTP/1.1");
    assert_eq!(fields.get("x-env").map(Vec::as_slice), Some(&["prod".to_owned()][..]));
    assert!(!fields.contains_key("x-drop"));
    assert_eq!(opts.client.1.get("x-served-by").map(Vec::as_slice), Some(&["dfp".to_owned()][..]));
    let spoofed = &reference[1];
    let (_, fields, _) = spoofed.instance.as_ref().expect("forwarded");
    assert_eq!(fields["x-forwarded-for"], ["10.1.1.1, 127.0.0.1"]);
    assert_eq!(fields["x-forwarded-host"], ["shop.example"]);
    let refused = &reference[INPUTS.len() - 2];
    assert_eq!(refused.client.0, 401);

    // Each engine counted both /auth answers under their service, the policy's 401 too.
    let metrics = proxy.metrics().await;
    for (class, count) in [("2xx", 3), ("4xx", 3)] {
        let sample = format!("dfp_requests_total{{service=\"127.1\",class=\"{class}\"}} {count}");
        assert!(metrics.lines().any(|l| l == sample), "{sample} in:\n{metrics}");
    }
}

/// An HTTP/2 request body of unknown length (no `content-length`, DATA frames as they come)
/// goes on to the HTTP/1.1 instance chunked: `Transfer-Encoding: chunked`, the data whole,
/// the last chunk at the end.
#[tokio::test]
async fn an_http2_body_without_a_length_goes_on_chunked() {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::{Body, Frame};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// Pieces sent one DATA frame each, with no length announced.
    struct Pieces(VecDeque<&'static [u8]>);
    impl Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|piece| Ok(Frame::data(Bytes::from_static(piece)))))
        }
    }

    let upstream = RawUpstream::start(|_, _| Reply::ok("fine")).await;
    let proxy = crate::support::Transport::Tls.proxy(&[]).await;
    let route = format!(
        "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}",
        upstream.port()
    );
    let (status, answer) = proxy.admin(&route).await;
    assert_eq!(status, 200, "{answer}");

    let tls =
        crate::tls::connect_offering(crate::tls::tls_addr(&proxy), Some("app.example"), &[b"h2"])
            .await
            .expect("the TLS handshake completes");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("the HTTP/2 connection starts");
    let connection = tokio::spawn(connection);
    let pieces: VecDeque<&'static [u8]> = [&b"hello"[..], b", ", &[b'x'; 20_000], b"!"].into();
    let request = hyper::Request::post("https://app.example/echo")
        .body(Pieces(pieces.clone()))
        .expect("a valid request");
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("answered within 10 s")
            .expect("an HTTP/2 answer");
    assert_eq!(response.status(), 200);
    connection.abort();

    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header_values("transfer-encoding"), ["chunked"]);
    assert!(received[0].header_values("content-length").is_empty(), "{}", received[0].head);
    assert!(received[0].body.ends_with(b"\r\n0\r\n\r\n"), "the last chunk ends it");
    assert_eq!(dechunk(&received[0].body), pieces.iter().copied().collect::<Vec<_>>().concat());
}
