//! The seed scenario from the original article, verbatim: reconfigure books-ms with the CLI,
//! curl it, scale to three instances, reconfigure again, see exact round robin.

use serde_json::Value;

use crate::support::{Consul, Proxy, Upstream};

#[tokio::test]
async fn seed_scenario_reconfigure_scale_and_round_robin() {
    let consul = Consul::start().await;
    let first = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", first.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;

    // The article's command, as typed (DFP_ADMIN points the CLI at this proxy's admin port).
    let out = proxy
        .cli(&["reconfigure", "--service-name", "books-ms", "--service-path", "/api/v1/books"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "reconfigure failed: {stderr}");
    let answer: Value =
        serde_json::from_slice(&out.stdout).expect("the CLI prints the JSON answer");
    assert_eq!(answer["Status"], "OK");
    assert_eq!(answer["ServiceName"], "books-ms");
    assert_eq!(answer["ServicePath"], serde_json::json!(["/api/v1/books"]));
    assert_eq!(answer["Instances"].as_array().map(Vec::len), Some(1), "{answer}");

    // curl -I proxy/api/v1/books -> 200
    let client = crate::support::http_client();
    let head = client.head(proxy.url("/api/v1/books")).send().await.expect("proxy answers HEAD");
    assert_eq!(head.status(), 200);
    assert_eq!(proxy.get("/api/v1/books").await, (200, "books-1".to_owned()));

    // Path semantics through the real data plane.
    assert_eq!(proxy.get("/api/v1/books/1").await.0, 200);
    assert_eq!(proxy.get("/api/v1/books?page=2").await.0, 200);
    assert_eq!(proxy.get("/api/v1/books/").await.0, 200);
    assert_eq!(proxy.get("/api/v1/booksellers").await.0, 404);
    assert_eq!(proxy.get("/api/v1").await.0, 404);
    assert_eq!(proxy.get("/").await.0, 404);

    // Scale to three instances, then reconfigure again (the article's flow).
    let second = Upstream::start("books-2").await;
    let third = Upstream::start("books-3").await;
    consul.register("books-ms", "books-2", second.port(), None).await;
    consul.register("books-ms", "books-3", third.port(), None).await;
    let out = proxy
        .cli(&["reconfigure", "--service-name", "books-ms", "--service-path", "/api/v1/books"])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    assert_eq!(answer["Instances"].as_array().map(Vec::len), Some(3), "{answer}");

    let upstreams = [&first, &second, &third];
    let before: Vec<usize> = upstreams.iter().map(|u| u.hits()).collect();
    for _ in 0..300 {
        let (status, body) = proxy.get("/api/v1/books").await;
        assert_eq!(status, 200, "{body}");
    }
    for (upstream, before) in upstreams.iter().zip(before) {
        let got = upstream.hits() - before;
        assert!((99..=101).contains(&got), "{} got {got} of 300 requests", upstream.name());
    }

    // The table now lists all three instances.
    let config = proxy.config().await;
    let service = &config["Services"][0];
    assert_eq!(service["ServiceName"], "books-ms");
    assert_eq!(service["Instances"].as_array().map(Vec::len), Some(3), "{config}");
    assert_eq!(config["Mode"], "consul");
}
