//! TCP services chosen by TLS server name: `reqMode=sni` (TLS passed through untouched to an
//! instance that ends it with its own certificate) on the HTTPS port beside termination, and
//! on a `srcPort` of its own; and `reqMode=tcp` with `serviceDomain` (TLS ended at the proxy
//! with the certificate for that name, plain bytes to the instance). A real Consul, real TLS
//! echo instances, clients that verify the certificate they get, the real binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::{eventually, free_port, Consul, Proxy, TcpEcho, Upstream};
use crate::tls::{tls_addr, upload, Ca};

const FOLLOW: Duration = Duration::from_secs(5);

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TLS connection to `addr` asking for `name`, that trusts only `ca` and checks the name.
async fn connect_verifying(
    ca: &Ca,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let server = ServerName::try_from(name.to_owned()).expect("a DNS name");
    let connector = TlsConnector::from(Arc::new(ca.verifying_client()));
    tokio::time::timeout(Duration::from_secs(5), connector.connect(server, tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("handshake not complete in 5 s")))
}

/// Sends `message` and reads the echo's answer: `<instance name><message>`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, message: &str) -> String {
    stream.write_all(message.as_bytes()).await.expect("the proxy takes the bytes");
    stream.flush().await.expect("flushed");
    let mut answer = vec![0_u8; 2 + message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .expect("an answer within 5 s")
        .expect("the answer arrives whole");
    String::from_utf8(answer).expect("text")
}

/// One verified connection, one exchange: which instance answered.
async fn round_trip(ca: &Ca, addr: SocketAddr, name: &str) -> String {
    let mut tls = connect_verifying(ca, addr, name).await.expect("the instance's handshake");
    exchange(&mut tls, "hi").await[..2].to_owned()
}

/// Whether the proxy closes a connection that sent `bytes`, without answering.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(addr).await.expect("the port accepts");
    let _ = stream.write_all(bytes).await;
    let mut buf = [0_u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A TLS record header announcing a ClientHello far larger than any real one.
const OVERSIZED_HELLO: &[u8] = &[22, 3, 1, 0x40, 0x00, 1, 0x10, 0x00, 0x00];

fn service<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["Services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["ServiceName"] == name))
        .unwrap_or_else(|| panic!("{name} listed in {config}"))
}

#[tokio::test]
async fn sni_passthrough_shares_the_https_port_with_termination() {
    let consul = Consul::start().await;
    // The instances' own CA and certificate: the proxy never holds them.
    let instance_ca = Ca::new();
    let (chain, key) = instance_ca.issue_for_server(&["db.example.com"]);
    let a = TcpEcho::start_tls("a:", chain.clone(), key.clone_key()).await;
    consul.register("db", "db-a", a.port(), None).await;
    let web = Upstream::start("web").await;
    consul.register("web", "web-1", web.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let https_port = tls_addr(&proxy).port();
    // The proxy's own certificate, for the HTTP service it ends TLS for.
    let proxy_ca = Ca::new();
    assert_eq!(upload(&proxy, "web", &proxy_ca.issue(&["web.example.com"]).pem).await.0, 200);
    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=web&servicePath=/&serviceDomain=web.example.com")
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=db&reqMode=sni&srcPort={https_port}&serviceDomain=db.example.com"
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "db is routed on TLS server name db.example.com on port {https_port}, passed through to 1 instance"
        )),
        "{answer}"
    );

    // A client that trusts only the instance's CA completes its handshake: the proxy passed
    // the ClientHello through untouched and the instance answered with its own certificate.
    assert_eq!(round_trip(&instance_ca, tls_addr(&proxy), "db.example.com").await, "a:");
    assert_eq!(round_trip(&instance_ca, tls_addr(&proxy), "DB.Example.com").await, "a:");
    // The same port still ends TLS for every other name, and for clients that send none.
    let client = proxy_ca.client(&proxy, &["web.example.com"], true);
    let page = client
        .get(crate::tls::https(&proxy, "web.example.com", "/"))
        .send()
        .await
        .expect("HTTPS through the proxy");
    assert_eq!(page.status(), 200);
    assert!(
        connect_verifying(&instance_ca, tls_addr(&proxy), "web.example.com").await.is_err(),
        "web.example.com is the proxy's, not the instance's"
    );
    let no_sni = crate::tls::connect(tls_addr(&proxy), None).await;
    assert!(no_sni.is_ok(), "a handshake without SNI is ended by the proxy as before");

    // Hostile first bytes close that connection only.
    assert!(closed_after(tls_addr(&proxy), b"GET / HTTP/1.1\r\nHost: db\r\n\r\n").await);
    assert!(closed_after(tls_addr(&proxy), OVERSIZED_HELLO).await);
    assert!(closed_after(tls_addr(&proxy), &[22, 3, 1, 0, 5, 2, 0, 0, 1, 0]).await);
    assert_eq!(round_trip(&instance_ca, tls_addr(&proxy), "db.example.com").await, "a:");

    let config = proxy.config().await;
    let db = service(&config, "db");
    assert_eq!(db["ReqMode"], "sni");
    assert_eq!(db["Tls"], "passthrough");
    assert_eq!(db["SrcPort"], https_port);
    assert_eq!(db["Listening"], true);
    let text = proxy.metrics().await;
    assert!(text.contains("dfp_tcp_connections_total{service=\"db\"} 3"), "{text}");

    // Scaled up in Consul: new connections go round robin over both at once.
    let b = TcpEcho::start_tls("b:", chain, key).await;
    consul.register("db", "db-b", b.port(), None).await;
    eventually(FOLLOW, "the new instance to take connections", || {
        let (ca, proxy) = (&instance_ca, &proxy);
        async move { (round_trip(ca, tls_addr(proxy), "db.example.com").await == "b:").then_some(()) }
    })
    .await;

    // Removed: the name is the proxy's to end again, and the port keeps serving HTTPS.
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/remove?serviceName=db").await;
    assert_eq!(status, 200, "{answer}");
    assert!(connect_verifying(&instance_ca, tls_addr(&proxy), "db.example.com").await.is_err());
    let page = client.get(crate::tls::https(&proxy, "web.example.com", "/")).send().await;
    assert_eq!(page.expect("HTTPS still served").status(), 200);
}

#[tokio::test]
async fn tls_ended_in_front_of_a_tcp_service_beside_passthrough_on_one_src_port() {
    let consul = Consul::start().await;
    let plain = TcpEcho::start("p:").await;
    consul.register("pg", "pg-1", plain.port(), None).await;
    let instance_ca = Ca::new();
    let (chain, key) = instance_ca.issue_for_server(&["db.example.com"]);
    let db = TcpEcho::start_tls("d:", chain, key).await;
    consul.register("db", "db-1", db.port(), None).await;
    let redis = TcpEcho::start("r:").await;
    consul.register("redis", "redis-1", redis.port(), None).await;
    consul.register("other", "other-1", redis.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let proxy_ca = Ca::new();
    assert_eq!(upload(&proxy, "pg", &proxy_ca.issue(&["pg.example.com"]).pem).await.0, 200);
    let port = free_port();
    let reconfigure = |service: &str, mode: &str, domain: &str| {
        format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName={service}&reqMode={mode}&srcPort={port}&serviceDomain={domain}"
        )
    };

    let (status, answer) = proxy.admin(&reconfigure("pg", "tcp", "pg.example.com")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["Message"].as_str().unwrap_or_default().contains("TLS ended here"), "{answer}");
    // TLS ends at the proxy with its certificate for the name; the instance gets plain bytes.
    let mut tls = connect_verifying(&proxy_ca, at(port), "pg.example.com")
        .await
        .expect("the proxy's certificate for pg.example.com");
    assert_eq!(exchange(&mut tls, "select 1").await, "p:select 1");
    assert_eq!(exchange(&mut tls, "select 2").await, "p:select 2", "the connection lives on");
    drop(tls);

    // A service passed through shares the port, chosen by the name its clients ask for.
    let (status, answer) = proxy.admin(&reconfigure("db", "sni", "db.example.com")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(round_trip(&instance_ca, at(port), "db.example.com").await, "d:");
    let mut tls = connect_verifying(&proxy_ca, at(port), "pg.example.com").await.expect("pg");
    assert_eq!(exchange(&mut tls, "x").await, "p:x");

    // Conflicts are 409s that change nothing: a name taken on the port, the port for a plain
    // TCP service, the HTTPS port for a service whose TLS would end here.
    let (status, answer) = proxy.admin(&reconfigure("other", "sni", "db.example.com")).await;
    assert_eq!(status, 409, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("db.example.com") && message.contains("\"db\""), "{answer}");
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=redis&reqMode=tcp&srcPort={port}"
        ))
        .await;
    assert_eq!(status, 409, "{answer}");
    let https_port = tls_addr(&proxy).port();
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=redis&reqMode=tcp&srcPort={https_port}&serviceDomain=r.example.com"
        ))
        .await;
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=redis&reqMode=sni&srcPort={port}"
        ))
        .await;
    assert_eq!(status, 400, "sni without serviceDomain: {answer}");
    assert_eq!(round_trip(&instance_ca, at(port), "db.example.com").await, "d:");

    // Names no service on the port has, and clients that send none, are closed.
    assert!(connect_verifying(&proxy_ca, at(port), "other.example.com").await.is_err());
    assert!(crate::tls::connect(at(port), None).await.is_err());
    assert!(closed_after(at(port), b"PING\r\n").await);
    assert!(closed_after(at(port), OVERSIZED_HELLO).await);

    let config = proxy.config().await;
    assert_eq!(service(&config, "pg")["Tls"], "terminated");
    assert_eq!(service(&config, "pg")["ReqMode"], "tcp");
    assert_eq!(service(&config, "db")["Tls"], "passthrough");
    let (status, routes) = proxy.admin("/v1/docker-flow-proxy/routes").await;
    assert_eq!(status, 200, "{routes}");
    let text = routes.to_string();
    assert!(text.contains(&format!("tls :{port}")) && text.contains(&format!("sni :{port}")));

    // Removing one keeps the port for the other; removing both closes it.
    let (status, _) = proxy.admin("/v1/docker-flow-proxy/remove?serviceName=pg").await;
    assert_eq!(status, 200);
    assert_eq!(round_trip(&instance_ca, at(port), "db.example.com").await, "d:");
    let (status, _) = proxy.admin("/v1/docker-flow-proxy/remove?serviceName=db").await;
    assert_eq!(status, 200);
    eventually(FOLLOW, "the port to close once no service has it", || async move {
        TcpStream::connect(at(port)).await.is_err().then_some(())
    })
    .await;
}
