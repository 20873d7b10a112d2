//! What following Consul costs: a registration change (a deploy, a scale) makes a proxy read
//! the nodes' listings and the services that changed, not every service it routes. Counted
//! with the proxy's own `dfp_consul_requests_total`, against a real Consul agent.

use std::time::Duration;

use crate::support::{eventually, Consul, Proxy, Upstream};

const FOLLOW: Duration = Duration::from_secs(10);

async fn requests(proxy: &Proxy) -> u64 {
    let text = proxy.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("dfp_consul_requests_total ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dfp_consul_requests_total in {text}"))
}

/// The request count once it has stood still for a while (blocking queries re-sent, the
/// followers' reads done).
async fn settled(proxy: &Proxy) -> u64 {
    let mut last = requests(proxy).await;
    let mut still = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = requests(proxy).await;
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still == 3 {
            return now;
        }
    }
    panic!("the proxy's requests to Consul never settled (last {last})");
}

async fn instance_count(proxy: &Proxy, service: &str) -> usize {
    let config = proxy.config().await;
    config["Services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["ServiceName"] == service))
        .and_then(|s| s["Instances"].as_array())
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn a_registration_change_costs_requests_for_what_changed_not_for_every_route() {
    let consul = Consul::start().await;
    let books = Upstream::start("books").await;
    consul.register("books-ms", "books-0", books.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books")
        .await;
    assert_eq!(status, 200, "{answer}");

    let mut routed = 1;
    let mut extra = Vec::new();
    let mut costs = Vec::new();
    for (round, routes) in [10_usize, 200].into_iter().enumerate() {
        while routed < routes {
            let name = format!("svc-{routed}");
            consul.register(&name, &format!("{name}-1"), books.port(), None).await;
            let call =
                format!("/v1/docker-flow-proxy/reconfigure?serviceName={name}&servicePath=/{name}");
            let (status, answer) = proxy.admin(&call).await;
            assert_eq!(status, 200, "{answer}");
            routed += 1;
        }
        let before = settled(&proxy).await;
        // One registration change: a new instance of one routed service.
        let instance = Upstream::start("books-more").await;
        consul.register("books-ms", &format!("books-{}", round + 1), instance.port(), None).await;
        extra.push(instance);
        eventually(FOLLOW, "the new instance to be routed", || {
            let proxy = &proxy;
            async move { (instance_count(proxy, "books-ms").await == round + 2).then_some(()) }
        })
        .await;
        let cost = settled(&proxy).await - before;
        costs.push((routes, cost));
    }
    // The same small number at 10 and at 200 routes: the blocking queries that returned and
    // were sent again, the nodes' listings, and the one changed service (read once or twice,
    // as the catalog and the checks each report it). Reading every routed service would be
    // 200 at the second size.
    assert!(costs.iter().all(|&(_, c)| c <= 12), "(routes, requests per change): {costs:?}");
    assert!(costs[1].1 <= costs[0].1 + 2, "the cost grew with the routes: {costs:?}");
}
