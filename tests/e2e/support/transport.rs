//! How a test's client reaches the proxy.
//!
//! [`Transport`] is the byte stream an HTTP/1.x client writes on: plain TCP on `--listen`, or
//! TLS on `--tls-listen`. Both are served by the same HTTP/1 engine (TLS without ALPN `h2` is
//! handed to it after the handshake), so a suite written against it runs for both
//! ([`over_plain_and_tls!`]) and a failure names the one that broke.
//!
//! [`Protocol`] adds HTTP/2 over TLS (hyper's HTTP/2 server, handing each stream to the same
//! rules) for tests that send ordinary requests and look at the answers, not at HTTP/1 bytes:
//! [`Protocol::get`] sends a GET with any `Host` (`:authority` over HTTP/2) over each, and
//! [`over_plain_tls_and_h2!`] runs a test once per protocol.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{raw_exchange, raw_http, Answer, Proxy, RawClient};
use crate::tls::{connect_offering, tls_addr, upload, Ca};

/// The server name a TLS client asks for, and the host the proxy's certificate is for.
const SNI: &str = "app.example";

/// The client's connection to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.x over TCP.
    Plain,
    /// HTTP/1.x over TLS: connections from [`Transport::client`] offer ALPN `http/1.1` (as
    /// browsers and curl do); one-shot exchanges ([`Transport::raw_http`]) offer no ALPN at
    /// all (as a scripted client may), which the proxy must take as HTTP/1.1 too.
    Tls,
}

impl Transport {
    /// Starts a standalone proxy with `extra` flags, ready for this transport (see
    /// [`Transport::prepare`]).
    pub async fn proxy(self, extra: &[&str]) -> Proxy {
        let proxy = Proxy::start(None, extra).await;
        self.prepare(&proxy).await;
        proxy
    }

    /// Makes a running proxy ready for this transport: over TLS, uploads a certificate for
    /// `app.example` through the admin API (being the only one, it is also served to any
    /// other name; with Consul it is kept in KV, as any upload is).
    pub async fn prepare(self, proxy: &Proxy) {
        if self == Transport::Tls {
            let ca = Ca::new();
            let (status, answer) = upload(proxy, "app", &ca.issue(&[SNI]).pem).await;
            assert_eq!(status, 200, "{answer}");
        }
    }

    /// The proxy's listener for this transport.
    pub fn addr(self, proxy: &Proxy) -> SocketAddr {
        match self {
            Transport::Plain => proxy.addr,
            Transport::Tls => tls_addr(proxy),
        }
    }

    /// A keep-alive client connection to `proxy`.
    pub async fn client(self, proxy: &Proxy) -> RawClient {
        match self {
            Transport::Plain => RawClient::connect(proxy.addr).await,
            Transport::Tls => {
                let tls = connect_offering(tls_addr(proxy), Some(SNI), &[b"http/1.1"])
                    .await
                    .expect("the TLS handshake completes");
                let alpn = tls.get_ref().1.alpn_protocol();
                assert_eq!(alpn, Some(&b"http/1.1"[..]), "ALPN chose HTTP/1.1");
                tls.get_ref().0.set_nodelay(true).expect("TCP_NODELAY");
                RawClient::over(tls)
            }
        }
    }

    /// Sends `request` on a new connection and returns everything the proxy answered until it
    /// closed the connection (or 5 s passed). See [`raw_http`].
    pub async fn raw_http(self, proxy: &Proxy, request: &[u8]) -> String {
        match self {
            Transport::Plain => raw_http(proxy.addr, request).await,
            Transport::Tls => {
                let tls = connect_offering(tls_addr(proxy), Some(SNI), &[])
                    .await
                    .expect("the TLS handshake completes");
                assert_eq!(tls.get_ref().1.alpn_protocol(), None, "no ALPN was offered");
                raw_exchange(tls, request).await
            }
        }
    }

    /// The scheme the client spoke, as the proxy tells instances in `X-Forwarded-Proto`.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls => "https",
        }
    }
}

/// The protocol a client speaks to the proxy, and so the engine that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 over TCP: the HTTP/1 engine.
    Plain,
    /// HTTP/1.1 over TLS (ALPN `http/1.1`): the HTTP/1 engine after the handshake.
    Tls,
    /// HTTP/2 over TLS (ALPN `h2`): hyper's HTTP/2 server, then the same rules.
    H2,
}

impl Protocol {
    /// The listener this protocol is spoken on.
    pub fn transport(self) -> Transport {
        match self {
            Protocol::Plain => Transport::Plain,
            Protocol::Tls | Protocol::H2 => Transport::Tls,
        }
    }

    /// Makes a running proxy ready for this protocol. See [`Transport::prepare`].
    pub async fn prepare(self, proxy: &Proxy) {
        self.transport().prepare(proxy).await;
    }

    /// The scheme the client spoke, as the proxy tells instances in `X-Forwarded-Proto`.
    pub fn scheme(self) -> &'static str {
        self.transport().scheme()
    }

    /// A GET of `path` for `host` (`Host` over HTTP/1.1, `:authority` over HTTP/2) with the
    /// extra fields given (`"Name: value"`), on a new connection. Over HTTP/2 the answer's head
    /// is written out as `HTTP/2 STATUS` and `name: value` lines, so that [`Answer::header`]
    /// reads it as it reads an HTTP/1.1 head.
    pub async fn get(self, proxy: &Proxy, host: &str, path: &str, extra: &[&str]) -> Answer {
        if self == Protocol::H2 {
            return h2_get(proxy, host, path, extra).await;
        }
        let mut client = self.transport().client(proxy).await;
        let extra: String = extra.iter().map(|line| format!("{line}\r\n")).collect();
        client.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").as_bytes()).await;
        client.answer(false).await
    }
}

async fn h2_get(proxy: &Proxy, host: &str, path: &str, extra: &[&str]) -> Answer {
    let tls = connect_offering(tls_addr(proxy), Some(SNI), &[b"h2"])
        .await
        .expect("the TLS handshake completes");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose HTTP/2");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("the HTTP/2 connection starts");
    let connection = tokio::spawn(connection);
    let mut request = hyper::Request::get(format!("https://{host}{path}"));
    for line in extra {
        let (name, value) = line.split_once(':').expect("a field is `Name: value`");
        request = request.header(name.trim(), value.trim());
    }
    let request = request.body(Empty::<Bytes>::new()).expect("a valid request");
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let response = sender.send_request(request).await.expect("an HTTP/2 answer");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("the body arrives whole");
        let trailers: Vec<String> = body
            .trailers()
            .into_iter()
            .flatten()
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("<binary>")))
            .collect();
        (parts, (body.to_bytes(), trailers))
    })
    .await
    .expect("answered within 10 s");
    drop(sender);
    connection.abort();
    let (parts, (body, trailers)) = response;
    let mut head = format!("HTTP/2 {}", parts.status.as_u16());
    for (name, value) in &parts.headers {
        head.push_str(&format!("\r\n{name}: {}", value.to_str().unwrap_or("<binary>")));
    }
    let status = parts.status.as_u16();
    Answer { interim: Vec::new(), status, head, body: body.to_vec(), trailers }
}

/// Runs each test function named (an `async fn(Transport)` in the invoking module) once per
/// transport: `NAME::plain` over TCP, `NAME::tls` over TLS.
macro_rules! over_plain_and_tls {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::support::Transport;

            #[tokio::test]
            async fn plain() {
                super::$name(Transport::Plain).await;
            }

            #[tokio::test]
            async fn tls() {
                super::$name(Transport::Tls).await;
            }
        }
    )*};
}

/// Runs each test function named (an `async fn(Protocol)` in the invoking module) once per
/// protocol: `NAME::plain`, `NAME::tls` (HTTP/1.1 over TLS) and `NAME::h2` (HTTP/2 over TLS).
macro_rules! over_plain_tls_and_h2 {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::support::Protocol;

            #[tokio::test]
            async fn plain() {
                super::$name(Protocol::Plain).await;
            }

            #[tokio::test]
            async fn tls() {
                super::$name(Protocol::Tls).await;
            }

            #[tokio::test]
            async fn h2() {
                super::$name(Protocol::H2).await;
            }
        }
    )*};
}

pub(crate) use {over_plain_and_tls, over_plain_tls_and_h2};
