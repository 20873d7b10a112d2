//! The restore at start: the admin API answers while the stored routes are restored (a
//! reconfigure goes ahead and wins; a remove waits for what it removes), and `ping` says
//! ready only once they are served.

use std::time::{Duration, Instant};

use crate::support::{eventually, Consul, DelayRelay, Proxy, Upstream};

/// How long the relay holds back each lookup of a stored service: the restore's length.
const HELD: Duration = Duration::from_secs(3);

fn reconfigure(service: &str, path: &str) -> String {
    format!("/v1/docker-flow-proxy/reconfigure?serviceName={service}&servicePath={path}")
}

#[tokio::test]
async fn reconfigure_is_answered_while_stored_routes_are_restored() {
    let consul = Consul::start().await;
    let stored = Upstream::start("stored").await;
    let books = Upstream::start("books").await;
    for name in ["slow-a", "slow-b"] {
        consul.register(name, name, stored.port(), None).await;
    }
    consul.register("books-ms", "books-1", books.port(), None).await;
    {
        let first = Proxy::start(Some(&consul.url()), &[]).await;
        for name in ["slow-a", "slow-b"] {
            let (status, answer) = first.admin(&reconfigure(name, &format!("/{name}"))).await;
            assert_eq!(status, 200, "{answer}");
        }
    }

    // The next proxy reaches Consul through a relay that holds the stored services' lookups.
    let relay = DelayRelay::start(consul.addr(), "/v1/health/service/slow-", HELD).await;
    let started = Instant::now();
    let proxy = Proxy::start_unready(Some(&relay.url()), &[]).await;
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/ping").await;
    assert_eq!(status, 503, "not ready while restoring: {answer}");
    assert!(answer["Message"].as_str().unwrap_or_default().contains("restoring"), "{answer}");

    let (status, answer) = proxy.admin(&reconfigure("books-ms", "/api/v1/books")).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = proxy.admin("/v1/docker-flow-proxy/ping").await;
    assert_eq!(status, 503, "the reconfigure was answered during the restore");
    assert!(started.elapsed() < HELD, "answered before the restore ended");

    // A remove of a stored service waits for the restore, then removes it (not a 404).
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/remove?serviceName=slow-b").await;
    assert_eq!(status, 200, "{answer}");
    eventually(Duration::from_secs(10), "ping to say ready", || async {
        (proxy.admin("/v1/docker-flow-proxy/ping").await.0 == 200).then_some(())
    })
    .await;

    // Served: the call made during the restore, the stored route left, not the removed one.
    assert_eq!(proxy.get("/api/v1/books").await.0, 200);
    assert_eq!(proxy.get("/slow-a").await.0, 200);
    assert_eq!(proxy.get("/slow-b").await.0, 404, "no route");
    assert!(consul.kv_get("docker-flow/services/books-ms").await.is_some(), "stored");
    assert!(consul.kv_get("docker-flow/services/slow-b").await.is_none(), "removed from KV");
}
