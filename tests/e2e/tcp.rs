//! TCP services (`reqMode=tcp` with `srcPort`): a real Consul, real TCP echo instances, the
//! real binary. Round trips and round robin, a killed instance retried past with no failed
//! connection, scaling while a long-lived connection stays open, remove draining, port
//! conflicts and unbindable ports that change nothing, restore at start.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{eventually, free_port, Consul, Proxy, TcpEcho};

const FOLLOW: Duration = Duration::from_secs(5);

fn reconfigure(service: &str, port: u16, extra: &str) -> String {
    format!(
        "/v1/docker-flow-proxy/reconfigure?serviceName={service}&reqMode=tcp&srcPort={port}{extra}"
    )
}

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `message` on `stream` and reads the echo's answer: `<instance name><message>`.
async fn exchange(stream: &mut TcpStream, message: &str) -> String {
    stream.write_all(message.as_bytes()).await.expect("the proxy takes the bytes");
    let mut answer = vec![0_u8; 2 + message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .expect("an answer within 5 s")
        .expect("the answer arrives whole");
    String::from_utf8(answer).expect("text")
}

/// One connection through the proxy's `port`, one exchange: which instance answered.
async fn round_trip(port: u16) -> String {
    let mut stream = TcpStream::connect(at(port)).await.expect("the TCP service's port accepts");
    exchange(&mut stream, "hi").await[..2].to_owned()
}

async fn service<'a>(config: &'a Value, name: &str) -> Option<&'a Value> {
    config["Services"].as_array()?.iter().find(|s| s["ServiceName"] == name)
}

fn metric(text: &str, line_start: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[tokio::test]
async fn tcp_services_round_robin_and_retry_past_a_killed_instance() {
    let consul = Consul::start().await;
    let a = TcpEcho::start("a:").await;
    let b = TcpEcho::start("b:").await;
    consul.register("echo", "echo-a", a.port(), None).await;
    consul.register("echo", "echo-b", b.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let port = free_port();
    let (status, answer) = proxy.admin(&reconfigure("echo", port, "")).await;
    assert_eq!(status, 200, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.starts_with(&format!("echo is routed on TCP port {port} to 2")), "{answer}");

    let config = proxy.config().await;
    let echo = service(&config, "echo").await.expect("listed");
    assert_eq!(echo["ReqMode"], "tcp");
    assert_eq!(echo["SrcPort"], port);
    assert_eq!(echo["Listening"], true);
    assert_eq!(echo["Instances"].as_array().map(Vec::len), Some(2));

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(round_trip(port).await);
    }
    seen.sort();
    assert_eq!(seen, ["a:", "a:", "b:", "b:"], "round robin over both instances");
    assert_eq!(a.accepted() + b.accepted(), 4, "one instance connection per client connection");

    // Killed, still registered in Consul: every connection is retried on the other one.
    let a_port = a.port();
    drop(a);
    eventually(FOLLOW, "the killed instance to refuse connections", || async move {
        TcpStream::connect(at(a_port)).await.is_err().then_some(())
    })
    .await;
    for i in 0..20 {
        assert_eq!(round_trip(port).await, "b:", "connection {i}");
    }
    let text = proxy.metrics().await;
    assert_eq!(metric(&text, "dfp_tcp_connections_total{service=\"echo\"}"), Some(24));
    assert_eq!(metric(&text, "dfp_tcp_connect_failures_total{service=\"echo\"}"), Some(0));
    assert!(metric(&text, "dfp_upstream_errors_total{service=\"echo\"}") >= Some(1), "{text}");
    // Bytes are counted once each write has returned, which may be just after the client
    // read them.
    eventually(FOLLOW, "every byte to be counted", || {
        let proxy = &proxy;
        async move {
            let text = proxy.metrics().await;
            let to = |d: &str| {
                metric(&text, &format!("dfp_tcp_bytes_total{{service=\"echo\",direction=\"{d}\"}}"))
            };
            (to("to_instance") == Some(48) && to("to_client") == Some(96)).then_some(())
        }
    })
    .await;
    eventually(FOLLOW, "the open gauge to fall back to 0", || {
        let proxy = &proxy;
        async move {
            let text = proxy.metrics().await;
            (metric(&text, "dfp_tcp_open_connections{service=\"echo\"}") == Some(0)).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn instance_changes_reach_new_connections_and_open_ones_outlive_reconfigures_until_remove_drains(
) {
    let consul = Consul::start().await;
    let a = TcpEcho::start("a:").await;
    consul.register("echo", "echo-a", a.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &["--shutdown-grace=2s"]).await;
    let port = free_port();
    assert_eq!(proxy.admin(&reconfigure("echo", port, "")).await.0, 200);
    let mut long_lived = TcpStream::connect(at(port)).await.expect("connects");
    assert_eq!(exchange(&mut long_lived, "1").await, "a:1");

    // Scale: b up, a out of Consul (its process still runs, as a draining container does).
    let b = TcpEcho::start("b:").await;
    consul.register("echo", "echo-b", b.port(), None).await;
    consul.deregister("echo-a").await;
    let b_port = b.port();
    eventually(FOLLOW, "only b to be routed", || {
        let proxy = &proxy;
        async move {
            let config = proxy.config().await;
            let instances = service(&config, "echo").await?["Instances"].clone();
            (instances == serde_json::json!([at(b_port).to_string()])).then_some(())
        }
    })
    .await;
    for _ in 0..3 {
        assert_eq!(round_trip(port).await, "b:", "new connections go to the new instance");
    }
    assert_eq!(exchange(&mut long_lived, "2").await, "a:2", "the open one stays where it was");

    // The same service and port again, with other options: the listener is kept.
    let (status, answer) = proxy.admin(&reconfigure("echo", port, "&timeoutTunnel=600")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(exchange(&mut long_lived, "3").await, "a:3");
    assert_eq!(round_trip(port).await, "b:");

    // Remove: new connections are refused at once, the open one finishes within the grace.
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/remove?serviceName=echo").await;
    assert_eq!(status, 200, "{answer}");
    eventually(FOLLOW, "the port to refuse connections", || async {
        TcpStream::connect(at(port)).await.is_err().then_some(())
    })
    .await;
    assert_eq!(exchange(&mut long_lived, "4").await, "a:4", "still open within the grace");
    // Closed by the proxy once the 2 s grace is over: EOF or a reset, either ends the read.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), long_lived.read_to_end(&mut rest));
    let _eof_or_reset = ended.await.expect("closed once the grace is over");
    drop((a, b));
}

#[tokio::test]
async fn port_conflicts_are_409_and_unbindable_ports_400_changing_nothing() {
    let consul = Consul::start().await;
    let a = TcpEcho::start("a:").await;
    consul.register("echo", "echo-a", a.port(), None).await;
    consul.register("other", "other-a", a.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let port = free_port();
    assert_eq!(proxy.admin(&reconfigure("echo", port, "")).await.0, 200);

    let (status, answer) = proxy.admin(&reconfigure("other", port, "")).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["Message"].as_str().is_some_and(|m| m.contains("\"echo\"")), "{answer}");
    let http_port: u16 =
        proxy.url("").rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let (status, answer) = proxy.admin(&reconfigure("other", http_port, "")).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["Message"].as_str().is_some_and(|m| m.contains("HTTP (--listen)")), "{answer}");

    let version = proxy.config().await["TableVersion"].clone();
    let held = std::net::TcpListener::bind(at(0)).expect("the test holds a port");
    let taken = held.local_addr().expect("addr").port();
    let (status, answer) = proxy.admin(&reconfigure("other", taken, "")).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("srcPort") && message.contains("in use"), "{message}");
    let config = proxy.config().await;
    assert_eq!(config["TableVersion"], version, "nothing was published");
    assert!(service(&config, "other").await.is_none());

    for (query, needle) in [
        ("/v1/docker-flow-proxy/reconfigure?serviceName=other&reqMode=tcp", "srcPort is missing"),
        (
            &*reconfigure("other", free_port(), "&users=a:b&servicePath=/x"),
            "leave out servicePath, users",
        ),
    ] {
        let (status, answer) = proxy.admin(query).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["Message"].as_str().is_some_and(|m| m.contains(needle)), "{answer}");
    }
    assert_eq!(round_trip(port).await, "a:", "the first service still serves");
}

#[tokio::test]
async fn tcp_services_are_restored_at_start_and_an_unbindable_port_does_not_stop_it() {
    let consul = Consul::start().await;
    let a = TcpEcho::start("a:").await;
    consul.register("echo", "echo-a", a.port(), None).await;
    let port = free_port();
    let mut proxy = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(proxy.admin(&reconfigure("echo", port, "")).await.0, 200);
    assert_eq!(round_trip(port).await, "a:");
    proxy.terminate().await;

    // Restored from Consul KV: the listener is opened again before the proxy serves.
    let mut proxy = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(round_trip(port).await, "a:");
    proxy.terminate().await;

    // The port is taken while the proxy is down: it starts, and shows the route not listening.
    let held = std::net::TcpListener::bind(at(port)).expect("the test takes the port");
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let config = proxy.config().await;
    let echo = service(&config, "echo").await.expect("the route is kept");
    assert_eq!(echo["Listening"], false, "{echo}");
    // Freed, then asked again: it listens.
    drop(held);
    assert_eq!(proxy.admin(&reconfigure("echo", port, "")).await.0, 200);
    assert_eq!(round_trip(port).await, "a:");
}

/// Reads from `stream` until `end` arrives (or it closes, or 5 s pass): what was read.
async fn read_until(stream: &mut TcpStream, end: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0_u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !seen.ends_with(end.as_bytes()) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// A TCP service behind an L4 balancer: the balancer's PROXY header names the client, the
/// service's source list judges that client, and the instance gets the header it asked for.
#[tokio::test]
async fn tcp_services_take_the_proxy_protocol_and_source_lists() {
    let consul = Consul::start().await;
    let echo = TcpEcho::start("e:").await;
    consul.register("echo", "echo-1", echo.port(), None).await;
    // Every test connection comes from 127.0.0.1: the "balancer".
    let proxy = Proxy::start(Some(&consul.url()), &["--accept-proxy=127.0.0.1/32"]).await;
    let port = free_port();
    let extra = "&allowedSources=10.1.0.0/16&sendProxyProtocol=v1";
    let (status, answer) = proxy.admin(&reconfigure("echo", port, extra)).await;
    assert_eq!(status, 200, "{answer}");

    // An allowed client named by the balancer: its bytes reach the instance after the
    // header the proxy sends, which names the same client.
    let mut stream = TcpStream::connect(at(port)).await.expect("accepts");
    let header = format!("PROXY TCP4 10.1.2.3 127.0.0.1 5555 {port}\r\n");
    stream.write_all(format!("{header}hi").as_bytes()).await.expect("writes");
    let echoed = read_until(&mut stream, "hi").await;
    assert!(echoed.contains("PROXY TCP4 10.1.2.3 "), "the instance got no header: {echoed:?}");
    assert!(echoed.ends_with("hi"), "{echoed:?}");
    assert_eq!(echo.accepted(), 1);

    // A client outside allowedSources, and a listed peer without a header: closed, and the
    // instance never sees them.
    for opening in ["PROXY TCP4 192.168.1.1 127.0.0.1 5555 1\r\nhi".to_owned(), "hi".to_owned()] {
        let mut stream = TcpStream::connect(at(port)).await.expect("accepts");
        stream.write_all(opening.as_bytes()).await.expect("writes");
        let echoed = read_until(&mut stream, "hi").await;
        assert_eq!(echoed, "", "{opening:?} was served");
    }
    assert_eq!(echo.accepted(), 1, "a refused connection reached the instance");
    let text = proxy.metrics().await;
    assert_eq!(metric(&text, "dfp_proxy_header_failures_total "), Some(1), "{text}");
}

/// The CLI adds a TCP service as the admin API does: `--req-mode tcp --src-port P`, no path.
#[tokio::test]
async fn the_cli_adds_a_tcp_service() {
    let consul = Consul::start().await;
    let echo = TcpEcho::start("c:").await;
    consul.register("cli-echo", "cli-echo-1", echo.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let port = free_port().to_string();
    let args = ["reconfigure", "--service-name", "cli-echo", "--req-mode", "tcp", "--src-port"];
    let output = proxy.cli(&[&args[..], &[port.as_str()]].concat()).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(round_trip(port.parse().expect("a port")).await, "c:");
}

/// `sendProxyProtocol=v2`: the instance's connection opens with a binary v2 header naming
/// the client and the address it connected to, then carries the client's bytes as sent.
#[tokio::test]
async fn tcp_services_send_the_v2_header_their_instances_ask_for() {
    let consul = Consul::start().await;
    let instance = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let instance_port = instance.local_addr().expect("address").port();
    consul.register("v2", "v2-1", instance_port, None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let port = free_port();
    let (status, answer) = proxy.admin(&reconfigure("v2", port, "&sendProxyProtocol=v2")).await;
    assert_eq!(status, 200, "{answer}");

    let mut client = TcpStream::connect(at(port)).await.expect("accepts");
    let client_port = client.local_addr().expect("client address").port();
    client.write_all(b"hello").await.expect("writes");
    let (mut upstream, _) = tokio::time::timeout(Duration::from_secs(5), instance.accept())
        .await
        .expect("the proxy connects within 5 s")
        .expect("accepted");
    // Signature, version 2 + PROXY, TCP over IPv4, 12 address bytes, then the payload.
    let mut got = vec![0_u8; 16 + 12 + 5];
    tokio::time::timeout(Duration::from_secs(5), upstream.read_exact(&mut got))
        .await
        .expect("within 5 s")
        .expect("header and payload");
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n", "the v2 signature");
    assert_eq!(got[12], 0x21, "version 2, PROXY command");
    assert_eq!(got[13], 0x11, "TCP over IPv4");
    assert_eq!(u16::from_be_bytes([got[14], got[15]]), 12);
    assert_eq!(&got[16..20], &[127, 0, 0, 1], "the client's address");
    assert_eq!(&got[20..24], &[127, 0, 0, 1], "the address it connected to");
    assert_eq!(u16::from_be_bytes([got[24], got[25]]), client_port, "the client's port");
    assert_eq!(u16::from_be_bytes([got[26], got[27]]), port, "the proxy's port");
    assert_eq!(&got[28..], b"hello", "then the client's bytes, as sent");
    upstream.write_all(b"back").await.expect("the instance answers");
    let mut back = [0_u8; 4];
    client.read_exact(&mut back).await.expect("the answer reaches the client");
    assert_eq!(&back, b"back");
}
