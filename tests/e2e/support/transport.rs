//! How a test's HTTP/1.x client reaches the proxy: plain TCP on `--listen`, or TLS on
//! `--tls-listen`. Both are served by the same HTTP/1 engine (TLS without ALPN `h2` is handed
//! to it after the handshake), so a suite written against [`Transport`] runs for both and a
//! failure names the one that broke.

use std::net::SocketAddr;

use super::{raw_exchange, raw_http, Proxy, RawClient};
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
    /// Starts a standalone proxy with `extra` flags, ready for this transport: over TLS, with a
    /// certificate for `app.example` uploaded through the admin API (being the only one, it is
    /// also served to any other name).
    pub async fn proxy(self, extra: &[&str]) -> Proxy {
        let proxy = Proxy::start(None, extra).await;
        if self == Transport::Tls {
            let ca = Ca::new();
            let (status, answer) = upload(&proxy, "app", &ca.issue(&[SNI]).pem).await;
            assert_eq!(status, 200, "{answer}");
        }
        proxy
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
