//! Against a real Consul cluster (three servers and an agent on loopback), not a `-dev` agent:
//! the leader killed under load, and a member paused (SIGSTOP) in front of the proxy.

use std::time::Duration;

use crate::support::{eventually, ConsulCluster, Load, Proxy, Upstream};

/// Re-election and catalog sync on a loaded CI machine: generous.
const CONVERGE: Duration = Duration::from_secs(30);

fn books(extra: &str) -> String {
    format!(
        "/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books{extra}"
    )
}

async fn instance_count(proxy: &Proxy) -> usize {
    let config = proxy.config().await;
    config["Services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["ServiceName"] == "books-ms"))
        .and_then(|s| s["Instances"].as_array())
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn the_leader_killed_under_load_fails_no_request_and_the_routes_converge_after() {
    let mut cluster = ConsulCluster::start().await;
    let first = Upstream::start("books-1").await;
    cluster.register("books-ms", "books-1", first.port()).await;
    let proxy = Proxy::start(Some(&cluster.agent_url()), &["--consul-timeout=2s"]).await;
    // The agent's registration reaches the servers' catalog in its own time.
    eventually(CONVERGE, "books-ms to be routed", || async {
        (proxy.admin(&books("")).await.0 == 200).then_some(())
    })
    .await;
    let load = Load::start(proxy.url("/api/v1/books"));

    let leader = cluster.leader().await.expect("a leader");
    cluster.kill(leader).await;
    // Until a new leader is elected, Consul cannot answer: a reconfigure is a 503 that changes
    // nothing; then it is a 200 again.
    let answers = std::cell::RefCell::new(Vec::new());
    let round = eventually(CONVERGE, "a reconfigure to succeed after the re-election", || {
        let (proxy, answers) = (&proxy, &answers);
        async move {
            let n = answers.borrow().len();
            let (status, answer) =
                proxy.admin(&books(&format!("&addResHeader=X-Round%20{n}"))).await;
            let message = answer["Message"].as_str().unwrap_or_default().to_owned();
            answers.borrow_mut().push((status, message));
            (status == 200).then_some(n)
        }
    })
    .await;
    for (status, message) in &answers.borrow()[..round] {
        assert_eq!(*status, 503, "while there is no leader: {message}");
    }
    assert!(cluster.leader().await.is_some_and(|l| l != leader), "a new leader");

    // Instances still follow Consul after the re-election.
    let second = Upstream::start("books-2").await;
    cluster.register("books-ms", "books-2", second.port()).await;
    eventually(CONVERGE, "the new instance to be routed", || async {
        (instance_count(&proxy).await == 2).then_some(())
    })
    .await;
    let report = load.stop().await;
    assert!(report.failed.is_empty(), "failed requests: {:?}", report.failed);
    assert!(report.ok > 20, "the load ran: {report:?}");
}

#[tokio::test]
async fn a_paused_consul_address_is_timed_out_and_the_next_one_used() {
    let cluster = ConsulCluster::start().await;
    let upstream = Upstream::start("books").await;
    cluster.register("books-ms", "books-1", upstream.port()).await;
    // The proxy's first address is a server that does not lead (pausing the leader would
    // stop the whole cluster until a re-election, which the other test covers).
    let leader = cluster.leader().await.expect("a leader");
    let mut order: Vec<usize> = (0..3).filter(|&s| s != leader).collect();
    order.push(leader);
    let addresses: Vec<String> = order.iter().map(|&s| cluster.server_url(s)).collect();
    let consul = addresses.join(",");
    let proxy = Proxy::start(Some(&consul), &["--consul-timeout=1s"]).await;
    eventually(CONVERGE, "books-ms to be routed", || async {
        (proxy.admin(&books("")).await.0 == 200).then_some(())
    })
    .await;

    cluster.signal(order[0], "STOP");
    // The paused server takes the call and never answers: after --consul-timeout the proxy
    // tries the next address, and the call succeeds.
    let (status, answer) = proxy.admin(&books("&addResHeader=X-After%20pause")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.get("/api/v1/books").await.0, 200);
    // And it stays with the address that answered: the next call does not wait again.
    let started = std::time::Instant::now();
    let (status, answer) = proxy.admin(&books("&addResHeader=X-After%20again")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1), "waited on the paused server again");
    cluster.signal(order[0], "CONT");
}
