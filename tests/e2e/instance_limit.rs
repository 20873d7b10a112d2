//! `instanceMaxConn`: a cap on the exchanges in flight to each instance of a service, over
//! every thread of the proxy. A full instance is passed over; when every instance is full the
//! request gets the proxy's own 503 at once (nothing queues) and a TCP connection is closed;
//! a finished exchange frees its place.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{eventually, free_port, Consul, Proxy, TcpEcho, Upstream};

/// Each instance's `InFlight`, as `config?stats=true` shows it for `service`.
async fn in_flight(proxy: &Proxy, service: &str) -> Vec<u64> {
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/config?stats=true").await;
    assert_eq!(status, 200, "{answer}");
    let services = answer["Services"].as_array().cloned().unwrap_or_default();
    let found = services.iter().find(|s| s["ServiceName"] == service).cloned();
    let health = found.map(|s| s["InstanceHealth"].clone()).unwrap_or(Value::Null);
    let instances = health.as_array().cloned().unwrap_or_default();
    instances.iter().map(|i| i["InFlight"].as_u64().unwrap_or(u64::MAX)).collect()
}

fn sample(metrics: &str, line_start: &str) -> Option<u64> {
    metrics.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[tokio::test]
async fn full_instances_are_passed_over_and_when_all_are_full_the_answer_is_503_at_once() {
    let consul = Consul::start().await;
    let first = Upstream::start_with_delay("slow-1", Duration::from_millis(1500)).await;
    let second = Upstream::start_with_delay("slow-2", Duration::from_millis(1500)).await;
    consul.register("slow-ms", "slow-1", first.port(), None).await;
    consul.register("slow-ms", "slow-2", second.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let route =
        "/v1/docker-flow-proxy/reconfigure?serviceName=slow-ms&servicePath=/slow&instanceMaxConn=1";
    let (status, answer) = proxy.admin(route).await;
    assert_eq!(status, 200, "{answer}");
    let config = proxy.config().await;
    let services = config["Services"].as_array().cloned().unwrap_or_default();
    let slow = services.iter().find(|s| s["ServiceName"] == "slow-ms").expect("listed");
    assert_eq!(slow["InstanceMaxConn"], 1, "{slow}");
    assert_eq!(in_flight(&proxy, "slow-ms").await, [0, 0]);

    // Two slow requests at once: the second finds the first's instance full and goes to the
    // other one, whatever round robin's turn was.
    let url = proxy.url("/slow/a");
    let client = proxy.client().clone();
    let send = |url: String| {
        let client = client.clone();
        tokio::spawn(async move {
            let response = client.get(url).send().await.expect("the proxy answers");
            response.status().as_u16()
        })
    };
    let a = send(url.clone());
    eventually(Duration::from_secs(5), "one request in flight", || async {
        (in_flight(&proxy, "slow-ms").await.iter().sum::<u64>() == 1).then_some(())
    })
    .await;
    let b = send(url.clone());
    eventually(Duration::from_secs(5), "a request in flight on each instance", || async {
        (in_flight(&proxy, "slow-ms").await == [1, 1]).then_some(())
    })
    .await;

    // Every instance is full: the proxy's own 503, at once.
    let started = Instant::now();
    let (status, body) = proxy.get("/slow/c").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("instanceMaxConn"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(1000), "answered at once, not queued");

    assert_eq!(a.await.expect("no panic"), 200);
    assert_eq!(b.await.expect("no panic"), 200);
    assert_eq!((first.hits(), second.hits()), (1, 1), "one request on each instance");
    // Their places are free again (given back just after the last byte was relayed).
    eventually(Duration::from_secs(5), "both places free", || async {
        (in_flight(&proxy, "slow-ms").await == [0, 0]).then_some(())
    })
    .await;
    let (status, body) = proxy.get("/slow/d").await;
    assert_eq!(status, 200, "{body}");
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(&metrics, r#"dfp_proxy_responses_total{status="503",reason="instances_full"}"#),
        Some(1),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_tcp_service_s_connection_past_the_cap_is_closed_and_the_place_freed_on_close() {
    let consul = Consul::start().await;
    let echo = TcpEcho::start("a:").await;
    consul.register("echo", "echo-a", echo.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let port = free_port();
    let route =
        format!("/v1/docker-flow-proxy/reconfigure?serviceName=echo&reqMode=tcp&srcPort={port}&instanceMaxConn=1");
    let (status, answer) = proxy.admin(&route).await;
    assert_eq!(status, 200, "{answer}");

    let mut held = TcpStream::connect(("127.0.0.1", port)).await.expect("the port accepts");
    held.write_all(b"hi").await.expect("sent");
    let mut answer = [0_u8; 4];
    held.read_exact(&mut answer).await.expect("echoed");
    assert_eq!(&answer, b"a:hi");
    assert_eq!(in_flight(&proxy, "echo").await, [1]);

    // The one instance is full: the next connection is closed without reaching it.
    let mut refused = TcpStream::connect(("127.0.0.1", port)).await.expect("the port accepts");
    let _ = refused.write_all(b"hi").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed at once, nothing echoed: {rest:?}");
    assert_eq!(echo.accepted(), 1, "the instance saw one connection");

    // Closing the first frees its place.
    drop(held);
    eventually(Duration::from_secs(5), "the place freed", || async {
        (in_flight(&proxy, "echo").await == [0]).then_some(())
    })
    .await;
    let mut again = TcpStream::connect(("127.0.0.1", port)).await.expect("the port accepts");
    again.write_all(b"yo").await.expect("sent");
    again.read_exact(&mut answer).await.expect("echoed");
    assert_eq!(&answer, b"a:yo");
}

#[tokio::test]
async fn instance_max_conn_must_be_a_whole_number_above_zero() {
    let proxy = Proxy::start(None, &[]).await;
    for value in ["0", "-1", "many", "1.5", "1000001"] {
        let route = format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/x&port=9&instanceMaxConn={value}"
        );
        let (status, answer) = proxy.admin(&route).await;
        assert_eq!(status, 400, "{value}: {answer}");
        let message = answer["Message"].as_str().unwrap_or_default();
        assert!(message.contains("instanceMaxConn"), "{value}: {answer}");
    }
    assert!(
        proxy.config().await["Services"].as_array().is_none_or(Vec::is_empty),
        "nothing routed"
    );
}
