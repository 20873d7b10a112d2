//! The PROXY protocol on the way in (`--accept-proxy`): a listed peer's header names the
//! client for `X-Forwarded-For`, the access log and the source lists, over plain HTTP/1.1,
//! HTTP/1.1 over TLS and HTTP/2; a listed peer without one is closed; an unlisted peer's header
//! is a bad request, never trusted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::limits::metric;
use crate::support::{
    eventually, over_plain_tls_and_h2, Answer, Protocol, Proxy, RawClient, RawUpstream, Reply,
    Upstream,
};
use crate::tls::client_config;

const V1: &[u8] = b"PROXY TCP4 203.0.113.7 127.0.0.1 54321 80\r\n";
const V1_OTHER: &[u8] = b"PROXY TCP4 198.51.100.1 127.0.0.1 1000 80\r\n";
const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

/// A v2 `PROXY` header from `[2001:db8::7]:4242`, with one TLV (ALPN `h2`) to skip.
fn v2_ipv6() -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x29".to_vec();
    header.extend_from_slice(&"2001:db8::7".parse::<std::net::Ipv6Addr>().expect("v6").octets());
    header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    header.extend_from_slice(&4242u16.to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    header.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
    header
}

/// A v2 `LOCAL` header (a balancer's health check): the real peer stays the client.
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

/// A GET of `/` for `app.example`, on a new connection that starts with `header`, in
/// `protocol`.
async fn get_after(proxy: &Proxy, protocol: Protocol, header: &[u8]) -> Answer {
    let mut tcp = TcpStream::connect(protocol.transport().addr(proxy)).await.expect("connect");
    tcp.write_all(header).await.expect("the PROXY header is sent");
    let alpn: &[&[u8]] = match protocol {
        Protocol::Plain => {
            let mut client = RawClient::over(tcp);
            return client.get("/", "").await;
        }
        Protocol::Tls => &[b"http/1.1"],
        Protocol::H2 => &[b"h2"],
    };
    let name = ServerName::try_from("app.example").expect("a DNS name");
    let tls = TlsConnector::from(Arc::new(client_config(alpn)))
        .connect(name, tcp)
        .await
        .expect("the TLS handshake completes after the PROXY header");
    if protocol == Protocol::Tls {
        return RawClient::over(tls).get("/", "").await;
    }
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("the HTTP/2 connection starts");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("https://app.example/")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered within 10 s")
        .expect("an HTTP/2 answer");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the body").to_bytes().to_vec();
    connection.abort();
    Answer {
        interim: Vec::new(),
        status,
        head: format!("HTTP/2 {status}"),
        body,
        trailers: Default::default(),
    }
}

fn forwarded_for(web: &Upstream) -> String {
    let headers = web.last_headers().expect("the instance was reached");
    headers["x-forwarded-for"].to_str().expect("ASCII").to_owned()
}

async fn the_header_names_the_client(protocol: Protocol) {
    let web = Upstream::start("web").await;
    let proxy =
        Proxy::start_logging(None, &["--accept-proxy=127.0.0.1/32", "--access-log"], "info").await;
    protocol.prepare(&proxy).await;
    proxy.route_all_to_port(web.port()).await;

    let answer = get_after(&proxy, protocol, V1).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(forwarded_for(&web), "203.0.113.7", "v1 TCP4");
    eventually(Duration::from_secs(5), "the access log to name the header's client", || {
        let logged = proxy.log().contains("client=203.0.113.7:54321");
        async move { logged.then_some(()) }
    })
    .await;

    let answer = get_after(&proxy, protocol, &v2_ipv6()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(forwarded_for(&web), "2001:db8::7", "v2 AF_INET6 with a TLV");

    for header in [V1_UNKNOWN, V2_LOCAL] {
        let answer = get_after(&proxy, protocol, header).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(forwarded_for(&web), "127.0.0.1", "UNKNOWN and LOCAL keep the peer");
    }

    // The header's client is the client for the source lists too.
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}\
             &allowedSources=203.0.113.0/24",
            web.port()
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let hits = web.hits();
    assert_eq!(get_after(&proxy, protocol, V1).await.status, 200);
    assert_eq!(get_after(&proxy, protocol, V1_OTHER).await.status, 403);
    assert_eq!(get_after(&proxy, protocol, V2_LOCAL).await.status, 403, "the balancer itself");
    assert_eq!(web.hits(), hits + 1);
}

over_plain_tls_and_h2!(the_header_names_the_client);

#[tokio::test]
async fn a_listed_peer_without_a_valid_header_is_closed() {
    let web = Upstream::start("web").await;
    let proxy = Proxy::start(None, &["--accept-proxy=127.0.0.1/32"]).await;
    Protocol::Tls.prepare(&proxy).await;
    proxy.route_all_to_port(web.port()).await;
    assert_eq!(metric(&proxy, "dfp_proxy_header_failures_total").await, Some(0));

    // Plain: a request without a header, a malformed header.
    for start in
        [&b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"[..], b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n"]
    {
        let mut client = RawClient::connect(proxy.addr).await;
        client.send(start).await;
        assert!(client.read_to_close().await.is_empty(), "closed without an answer");
    }
    // TLS: a ClientHello first is no header; the handshake never happens.
    let tls = crate::tls::connect_offering(proxy.tls_addr.expect("TLS"), Some("app.example"), &[]);
    assert!(tls.await.is_err(), "no handshake without the header");
    assert_eq!(web.hits(), 0);
    assert_eq!(metric(&proxy, "dfp_proxy_header_failures_total").await, Some(3));
}

#[tokio::test]
async fn an_unlisted_peers_header_is_a_bad_request_never_trusted() {
    let web = Upstream::start("web").await;
    for flags in [&[][..], &["--accept-proxy=192.0.2.0/24"]] {
        let proxy = Proxy::start(None, flags).await;
        proxy.route_all_to_port(web.port()).await;
        for header in [V1.to_vec(), v2_ipv6()] {
            let request = [&header[..], b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"].concat();
            let answer = crate::support::raw_http(proxy.addr, &request).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{flags:?}: {answer}");
        }
        // Served as ever without one.
        let mut client = RawClient::connect(proxy.addr).await;
        assert_eq!(client.get("/", "").await.status, 200);
        assert_eq!(forwarded_for(&web), "127.0.0.1");
    }
    assert_eq!(web.hits(), 2);
}

/// `sendProxyProtocol=v1`: each connection to the instance starts with a header naming the
/// client (here, the one the incoming header named), and carries that client's request only;
/// without it, the clients' requests share a kept-alive connection.
#[tokio::test]
async fn instances_that_ask_get_the_header_and_never_share_a_connection() {
    let instance = RawUpstream::start(|_, _| Reply::ok("hi")).await;
    // One data-plane thread, one pool: without the option, every request would share it.
    let proxy = Proxy::start(None, &["--accept-proxy=127.0.0.1/32", "--threads=1"]).await;
    Protocol::H2.prepare(&proxy).await;
    let route = |extra: &str| {
        format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}{extra}",
            instance.port()
        )
    };
    let (status, answer) = proxy.admin(&route("&sendProxyProtocol=v1")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.config().await["Services"][0]["SendProxyProtocol"], "v1");

    // Two clients, two requests each, interleaved, each on one kept-alive client connection.
    let connect = |header: &'static [u8]| async move {
        let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        tcp.write_all(header).await.expect("the PROXY header is sent");
        RawClient::over(tcp)
    };
    let (mut a, mut b) = (connect(V1).await, connect(V1_OTHER).await);
    for _ in 0..2 {
        assert_eq!(a.get("/", "").await.status, 200);
        assert_eq!(b.get("/", "").await.status, 200);
    }
    // And one over HTTP/2.
    assert_eq!(get_after(&proxy, Protocol::H2, V1).await.status, 200);

    let received = instance.received();
    assert_eq!(received.len(), 5);
    assert_eq!(instance.accepted(), 5, "one connection per request: {received:#?}");
    let clients = ["203.0.113.7", "198.51.100.1", "203.0.113.7", "198.51.100.1", "203.0.113.7"];
    for (request, client) in received.iter().zip(clients) {
        let (hello, head) = request.head.split_once("\r\n").expect("two lines at least");
        let port = if client == "203.0.113.7" { "54321" } else { "1000" };
        assert_eq!(hello, format!("PROXY TCP4 {client} 127.0.0.1 {port} 80"), "{request:#?}");
        assert!(head.starts_with("GET / HTTP/1.1"), "{request:#?}");
        assert_eq!(request.header_values("x-forwarded-for"), [client]);
    }

    // Without the option, the same clients share the instance's kept-alive connection.
    let (status, answer) = proxy.admin(&route("")).await;
    assert_eq!(status, 200, "{answer}");
    for _ in 0..2 {
        assert_eq!(a.get("/", "").await.status, 200);
        assert_eq!(b.get("/", "").await.status, 200);
    }
    let received = &instance.received()[5..];
    assert!(received.iter().all(|r| r.line() == "GET / HTTP/1.1"), "no header: {received:#?}");
    assert!(received.iter().all(|r| r.connection == received[0].connection), "{received:#?}");
}
