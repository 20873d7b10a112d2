//! `instanceMaxConn`: a cap on the exchanges in flight to each instance of a service, over
//! every thread of the proxy. A full instance is passed over; when every instance is full the
//! request waits in a queue for up to `--queue-timeout` (by default the connect timeout, as
//! in HAProxy) and takes the first place given back, in arrival order; still full at the end
//! of the wait, it gets the proxy's own 503 (a TCP connection is closed). With
//! `--queue-timeout 0s` there is no queue: the 503 at once. A service's own `timeoutQueue`
//! wins over the proxy's, and its `maxQueue` caps how many wait. A finished exchange frees
//! its place.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{
    eventually, free_port, over_plain_tls_and_h2, Consul, Protocol, Proxy, TcpEcho, Upstream,
};

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
async fn full_instances_are_passed_over_and_when_all_stay_full_the_answer_is_503_after_the_queue() {
    let consul = Consul::start().await;
    let first = Upstream::start_with_delay("slow-1", Duration::from_millis(3000)).await;
    let second = Upstream::start_with_delay("slow-2", Duration::from_millis(3000)).await;
    consul.register("slow-ms", "slow-1", first.port(), None).await;
    consul.register("slow-ms", "slow-2", second.port(), None).await;
    // No `--queue-timeout`: the queue waits for the connect timeout, as HAProxy's does.
    let proxy = Proxy::start(Some(&consul.url()), &["--connect-timeout", "1s"]).await;
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

    // Every instance is full, and stays full for longer than the queue's wait (by default
    // the connect timeout, here 1s): the proxy's own 503 once the wait is over.
    let started = Instant::now();
    let (status, body) = proxy.get("/slow/c").await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("instanceMaxConn"), "{body}");
    assert!(waited >= Duration::from_millis(900), "it waited in the queue first: {waited:?}");
    assert!(waited < Duration::from_millis(2500), "no longer than the queue's wait: {waited:?}");

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

/// Over each engine (`over_plain_tls_and_h2!` below): requests that find the one instance full
/// wait in the queue and are served one after the other as places are given back.
async fn a_request_queued_behind_a_full_instance_is_served_when_its_place_is_given_back(
    protocol: Protocol,
) {
    let consul = Consul::start().await;
    let slow = Upstream::start_with_delay("slow-1", Duration::from_millis(1000)).await;
    consul.register("queue-ms", "slow-1", slow.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &["--queue-timeout", "10s"]).await;
    protocol.prepare(&proxy).await;
    let route =
        "/v1/docker-flow-proxy/reconfigure?serviceName=queue-ms&servicePath=/q&instanceMaxConn=1";
    let (status, answer) = proxy.admin(route).await;
    assert_eq!(status, 200, "{answer}");

    let proxy = std::sync::Arc::new(proxy);
    let send = |path: &'static str| {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let answer = protocol.get(&proxy, "app.example", path, &[]).await;
            (answer.status, Instant::now())
        })
    };
    let first = send("/q/first");
    eventually(Duration::from_secs(5), "the first request in flight", || async {
        (in_flight(&proxy, "queue-ms").await == [1]).then_some(())
    })
    .await;
    // The one instance is full: these two wait in the queue, as the metrics show.
    let second = send("/q/second");
    let third = send("/q/third");
    let queued = r#"dfp_queued_requests{service="queue-ms"}"#;
    eventually(Duration::from_secs(5), "two requests queued", || async {
        (sample(&proxy.metrics().await, queued) == Some(2)).then_some(())
    })
    .await;
    let mut done = Vec::new();
    for request in [first, second, third] {
        let (status, at) = request.await.expect("no panic");
        assert_eq!(status, 200);
        done.push(at);
    }
    assert_eq!(slow.hits(), 3, "every request reached the instance");
    // One at a time: each answer came a whole response time after the one before.
    done.sort();
    assert!(done[1] - done[0] >= Duration::from_millis(900), "{done:?}");
    assert!(done[2] - done[1] >= Duration::from_millis(900), "{done:?}");
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(&metrics, r#"dfp_proxy_responses_total{status="503",reason="instances_full"}"#),
        Some(0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, queued), Some(0), "{metrics}");
    let total = r#"dfp_queued_requests_total{service="queue-ms"}"#;
    assert_eq!(sample(&metrics, total), Some(2), "{metrics}");
}

over_plain_tls_and_h2!(
    a_request_queued_behind_a_full_instance_is_served_when_its_place_is_given_back
);

/// Connects to the proxy's TCP `port`, sends a few bytes and waits for the close: asserts that
/// nothing came back, and returns how long the close took.
async fn closed_without_an_echo(port: u16) -> Duration {
    let started = Instant::now();
    let mut refused = TcpStream::connect(("127.0.0.1", port)).await.expect("the port accepts");
    let _ = refused.write_all(b"hi").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed, nothing echoed: {rest:?}");
    started.elapsed()
}

#[tokio::test]
async fn a_tcp_service_s_connection_past_the_cap_waits_for_a_place_or_is_closed() {
    let consul = Consul::start().await;
    let echo = TcpEcho::start("a:").await;
    consul.register("echo", "echo-a", echo.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &["--queue-timeout", "1s"]).await;
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

    // The one instance is full for longer than the queue's wait (`--queue-timeout 1s`): the
    // next connection is closed without reaching it, once the wait is over.
    let waited = closed_without_an_echo(port).await;
    assert!(waited >= Duration::from_millis(900), "after the queue's wait: {waited:?}");
    assert_eq!(echo.accepted(), 1, "the instance saw one connection");

    // A connection that arrives while the place is taken waits for it: closing the first
    // lets it through.
    let mut queued = TcpStream::connect(("127.0.0.1", port)).await.expect("the port accepts");
    queued.write_all(b"q!").await.expect("sent");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(echo.accepted(), 1, "still waiting for the place");
    drop(held);
    let mut echoed = [0_u8; 4];
    tokio::time::timeout(Duration::from_secs(5), queued.read_exact(&mut echoed))
        .await
        .expect("served once the place was given back")
        .expect("echoed");
    assert_eq!(&echoed, b"a:q!");
    drop(queued);
    eventually(Duration::from_secs(5), "the place freed", || async {
        (in_flight(&proxy, "echo").await == [0]).then_some(())
    })
    .await;
    let mut again = TcpStream::connect(("127.0.0.1", port)).await.expect("the port accepts");
    again.write_all(b"yo").await.expect("sent");
    again.read_exact(&mut answer).await.expect("echoed");
    assert_eq!(&answer, b"a:yo");
    drop(again);
    eventually(Duration::from_secs(5), "the place freed", || async {
        (in_flight(&proxy, "echo").await == [0]).then_some(())
    })
    .await;

    // The service's own `timeoutQueue=0`: no queue for it, though the proxy's is 1 s.
    let (status, answer) = proxy.admin(&format!("{route}&timeoutQueue=0")).await;
    assert_eq!(status, 200, "{answer}");
    let mut held = TcpStream::connect(("127.0.0.1", port)).await.expect("the port accepts");
    held.write_all(b"hi").await.expect("sent");
    let mut answer = [0_u8; 4];
    held.read_exact(&mut answer).await.expect("echoed");
    let accepted = echo.accepted();
    let waited = closed_without_an_echo(port).await;
    assert!(waited < Duration::from_millis(900), "closed at once, not after the 1 s queue");
    assert_eq!(echo.accepted(), accepted, "the instance never saw it");
}

#[tokio::test]
async fn with_no_queue_a_request_that_finds_every_instance_full_gets_503_at_once() {
    let consul = Consul::start().await;
    let slow = Upstream::start_with_delay("slow-1", Duration::from_millis(3000)).await;
    consul.register("noqueue-ms", "slow-1", slow.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &["--queue-timeout", "0s"]).await;
    let route =
        "/v1/docker-flow-proxy/reconfigure?serviceName=noqueue-ms&servicePath=/n&instanceMaxConn=1";
    let (status, answer) = proxy.admin(route).await;
    assert_eq!(status, 200, "{answer}");
    let client = proxy.client().clone();
    let url = proxy.url("/n/first");
    let first =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    eventually(Duration::from_secs(5), "the first request in flight", || async {
        (in_flight(&proxy, "noqueue-ms").await == [1]).then_some(())
    })
    .await;
    let started = Instant::now();
    let (status, body) = proxy.get("/n/second").await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < Duration::from_millis(1000), "answered at once, not queued");
    assert_eq!(first.await.expect("no panic").expect("answered"), 200);
    assert_eq!(slow.hits(), 1);
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

/// A service's own queue settings win over the proxy's `--queue-timeout`: `timeoutQueue=0`
/// answers the 503 at once while other services queue, and `maxQueue` refuses at once the
/// request one past the queue's length while those already waiting are still served. Both are
/// shown by `config`, and refused (changing nothing) without `instanceMaxConn`.
#[tokio::test]
async fn a_service_s_own_queue_time_and_length_win_over_the_proxy_s() {
    let consul = Consul::start().await;
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(3000)).await;
    consul.register("own-noqueue", "slow-a", slow.port(), None).await;
    consul.register("own-shortqueue", "slow-b", slow.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &["--queue-timeout", "10s"]).await;
    let base = "/v1/docker-flow-proxy/reconfigure?instanceMaxConn=1";
    for route in [
        format!("{base}&serviceName=own-noqueue&servicePath=/a&timeoutQueue=0"),
        format!("{base}&serviceName=own-shortqueue&servicePath=/b&maxQueue=1"),
    ] {
        let (status, answer) = proxy.admin(&route).await;
        assert_eq!(status, 200, "{answer}");
    }
    let proxy = std::sync::Arc::new(proxy);
    let send = |path: &'static str| {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.get(path).await.0 })
    };
    // Until the one place of `service` is taken (by a request the instance holds for 3 s).
    let taken = |service: &'static str| {
        let proxy = proxy.clone();
        async move {
            eventually(Duration::from_secs(5), "the first request in flight", || async {
                (in_flight(&proxy, service).await == [1]).then_some(())
            })
            .await;
        }
    };
    // A request to `path` answered 503 without waiting the proxy's 10 s queue.
    let refused_at_once = |path: &'static str| {
        let proxy = proxy.clone();
        async move {
            let started = Instant::now();
            let (status, body) = proxy.get(path).await;
            assert_eq!(status, 503, "{path}: {body}");
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(5), "{path}: not queued, {waited:?}");
        }
    };

    // timeoutQueue=0: no queue for this service, though the proxy's is 10 s.
    let held = send("/a/held");
    taken("own-noqueue").await;
    refused_at_once("/a/refused").await;
    assert_eq!(held.await.expect("no panic"), 200);

    // maxQueue=1: one waits; the next is refused at once; the one waiting is served.
    let held = send("/b/held");
    taken("own-shortqueue").await;
    let waiting = send("/b/waiting");
    let queued = r#"dfp_queued_requests{service="own-shortqueue"}"#;
    eventually(Duration::from_secs(5), "one request queued", || async {
        (sample(&proxy.metrics().await, queued) == Some(1)).then_some(())
    })
    .await;
    refused_at_once("/b/one-too-many").await;
    assert_eq!(held.await.expect("no panic"), 200);
    assert_eq!(waiting.await.expect("no panic"), 200, "the queued one was served");
    assert_eq!(slow.hits(), 3, "the two refused never reached the instance");
    let total = r#"dfp_queued_requests_total{service="own-shortqueue"}"#;
    assert_eq!(sample(&proxy.metrics().await, total), Some(1));

    // Shown by config.
    let services = proxy.config().await["Services"].as_array().cloned().unwrap_or_default();
    let shown = |name: &str, field: &str| {
        let service = services.iter().find(|s| s["ServiceName"] == name);
        service.map(|s| s[field].clone()).unwrap_or(Value::Null)
    };
    assert_eq!(shown("own-noqueue", "TimeoutQueue"), 0);
    assert_eq!(shown("own-shortqueue", "MaxQueue"), 1);

    // Without instanceMaxConn: a 400 that names what to do, and the route is as it was.
    let route =
        "/v1/docker-flow-proxy/reconfigure?serviceName=own-noqueue&servicePath=/a&timeoutQueue=5";
    let (status, answer) = proxy.admin(route).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("timeoutQueue") && message.contains("instanceMaxConn"), "{answer}");
    let services = proxy.config().await["Services"].as_array().cloned().unwrap_or_default();
    let kept = services.iter().find(|s| s["ServiceName"] == "own-noqueue").cloned();
    let kept = kept.unwrap_or(Value::Null);
    assert_eq!(
        (kept["TimeoutQueue"].clone(), kept["InstanceMaxConn"].clone()),
        (0.into(), 1.into())
    );
}
