//! Routes that follow Consul, survive restarts and are shared by replicas: scaling without a
//! reconfigure, critical checks, restarts, replicas converging, Consul outages, standalone
//! state files.

use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, Consul, Load, Proxy, Scratch, Upstream};

const BOOKS: &str =
    "/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books";

/// How long a change in Consul may take to reach the table in these tests. The design target
/// is well under 1 s (blocking queries answer at once); the slack is for loaded CI machines.
const FOLLOW: Duration = Duration::from_secs(5);

async fn instances(proxy: &Proxy, service: &str) -> Vec<String> {
    let config = proxy.config().await;
    let services = config["Services"].as_array().cloned().unwrap_or_default();
    services
        .iter()
        .find(|s| s["ServiceName"] == service)
        .and_then(|s| s["Instances"].as_array())
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

async fn wait_for_instances(proxy: &Proxy, service: &str, want: usize, what: &str) {
    eventually(FOLLOW, what, || async {
        (instances(proxy, service).await.len() == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn scaling_up_and_down_needs_no_reconfigure_and_fails_no_request() {
    let consul = Consul::start().await;
    let first = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", first.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(proxy.admin(BOOKS).await.0, 200);
    let load = Load::start(proxy.url("/api/v1/books"));

    // Scale up: the new instance gets traffic with no call to the proxy.
    let second = Upstream::start("books-2").await;
    consul.register("books-ms", "books-2", second.port(), None).await;
    wait_for_instances(&proxy, "books-ms", 2, "the new instance to be routed").await;
    eventually(FOLLOW, "the new instance to get requests", || {
        let hits = second.hits();
        async move { (hits > 0).then_some(()) }
    })
    .await;

    // Scale down: deregistered first (as Registrator does when a container stops), then gone.
    consul.deregister("books-1").await;
    wait_for_instances(&proxy, "books-ms", 1, "the removed instance to leave the table").await;
    let after_removal = first.hits();
    let more = second.hits() + 20;
    eventually(FOLLOW, "more requests to the remaining instance", || {
        let hits = second.hits();
        async move { (hits >= more).then_some(()) }
    })
    .await;
    assert_eq!(first.hits(), after_removal, "a removed instance still got requests");
    drop(first);

    let report = load.stop().await;
    assert!(report.failed.is_empty(), "failed requests while scaling: {:?}", report.failed);
    assert!(report.ok > 20, "the load loop ran: {report:?}");
}

#[tokio::test]
async fn a_critical_check_takes_an_instance_out_and_a_passing_one_back() {
    let consul = Consul::start().await;
    let a = Upstream::start("books-a").await;
    let b = Upstream::start("books-b").await;
    consul.register("books-ms", "books-a", a.port(), Some(true)).await;
    consul.register("books-ms", "books-b", b.port(), Some(true)).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(proxy.admin(BOOKS).await.0, 200);
    assert_eq!(instances(&proxy, "books-ms").await.len(), 2);

    consul.set_check("books-a", false).await;
    wait_for_instances(&proxy, "books-ms", 1, "the critical instance to leave").await;
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(proxy.get("/api/v1/books").await, (200, "books-b".to_owned()));
    }
    assert_eq!(a.hits(), before);

    consul.set_check("books-a", true).await;
    wait_for_instances(&proxy, "books-ms", 2, "the instance to come back").await;
}

#[tokio::test]
async fn a_restarted_proxy_restores_its_routes_from_consul() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    let sick = Upstream::start("sick-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    consul.register("sick-ms", "sick-1", sick.port(), Some(false)).await;
    let mut proxy = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(proxy.admin(&format!("{BOOKS}&distribute=true")).await.0, 200);
    let sick_call = "/v1/docker-flow-proxy/reconfigure?serviceName=sick-ms&servicePath=/sick";
    assert_eq!(proxy.admin(sick_call).await.0, 200);

    // The whole call is stored, every parameter.
    let stored = consul.kv_get("docker-flow/services/books-ms").await.expect("stored in KV");
    let stored: Value = serde_json::from_str(&stored).expect("JSON");
    assert_eq!(stored["servicePath"], "/api/v1/books");
    assert_eq!(stored["distribute"], "true");
    // The same call again (listeners resend them) writes nothing; a changed one does.
    let key = "docker-flow/services/books-ms";
    let written = consul.kv_modify_index(key).await;
    assert_eq!(proxy.admin(&format!("{BOOKS}&distribute=true")).await.0, 200);
    assert_eq!(consul.kv_modify_index(key).await, written, "an identical reconfigure rewrote KV");
    assert_eq!(proxy.admin(&format!("{BOOKS}&distribute=false")).await.0, 200);
    assert_ne!(consul.kv_modify_index(key).await, written, "a changed reconfigure was not stored");
    assert_eq!(proxy.admin(&format!("{BOOKS}&distribute=true")).await.0, 200);

    proxy.kill().await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    // Ready means restored: no waiting, no reconfigure.
    assert_eq!(proxy.get("/api/v1/books/1").await, (200, "books-1".to_owned()));
    assert_eq!(
        proxy.get("/sick").await.0,
        503,
        "a service with no passing instance is restored too"
    );
    let config = proxy.config().await;
    assert_eq!(config["Services"].as_array().map(Vec::len), Some(2), "{config}");

    // Remove deletes the stored route.
    assert_eq!(proxy.admin("/v1/docker-flow-proxy/remove?serviceName=sick-ms").await.0, 200);
    assert_eq!(consul.kv_get("docker-flow/services/sick-ms").await, None);
}

#[tokio::test]
async fn replicas_with_one_instance_name_converge_and_others_stay_apart() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let a = Proxy::start(Some(&consul.url()), &[]).await;
    let b = Proxy::start(Some(&consul.url()), &[]).await;
    let other = Proxy::start(Some(&consul.url()), &["--instance-name=other-proxy"]).await;

    // Reconfigure on A reaches B.
    assert_eq!(a.admin(BOOKS).await.0, 200);
    eventually(FOLLOW, "replica B to serve the route sent to A", || async {
        (b.get("/api/v1/books").await.0 == 200).then_some(())
    })
    .await;
    // Remove on B reaches A.
    assert_eq!(b.admin("/v1/docker-flow-proxy/remove?serviceName=books-ms").await.0, 200);
    eventually(FOLLOW, "replica A to drop the route removed on B", || async {
        (a.get("/api/v1/books").await.0 == 404).then_some(())
    })
    .await;
    // And back again from B to A.
    assert_eq!(b.admin(BOOKS).await.0, 200);
    eventually(FOLLOW, "replica A to serve the route sent to B", || async {
        (a.get("/api/v1/books").await.0 == 200).then_some(())
    })
    .await;

    // The proxy with another instance name saw none of it.
    assert_eq!(other.get("/api/v1/books").await.0, 404);
    assert_eq!(other.config().await["TableVersion"], 0);
}

#[tokio::test]
async fn consul_outages_never_stop_the_routes() {
    let mut consul = Consul::start_persistent().await;
    let first = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", first.port(), None).await;
    let mut proxy = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(proxy.admin(BOOKS).await.0, 200);

    // Consul stops and comes back while requests keep flowing.
    let load = Load::start(proxy.url("/api/v1/books"));
    consul.stop().await;
    eventually(FOLLOW, "the proxy to notice Consul is gone", || async {
        (proxy.config().await["Consul"]["Reachable"] == false).then_some(())
    })
    .await;
    assert_eq!(proxy.get("/api/v1/books").await, (200, "books-1".to_owned()));
    let metrics = crate::support::http_client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(metrics.contains("dfp_consul_reachable 0"), "{metrics}");
    consul.restart().await;
    eventually(Duration::from_secs(15), "the proxy to reach Consul again", || async {
        (proxy.config().await["Consul"]["Reachable"] == true).then_some(())
    })
    .await;
    let report = load.stop().await;
    assert!(report.failed.is_empty(), "requests failed during the outage: {:?}", report.failed);

    // The watch resumed: a new instance is picked up without a reconfigure.
    let second = Upstream::start("books-2").await;
    consul.register("books-ms", "books-2", second.port(), None).await;
    wait_for_instances(&proxy, "books-ms", 2, "the watch to resume after the outage").await;

    // A proxy that starts while Consul is down serves what it can, and restores the routes
    // once Consul answers.
    proxy.kill().await;
    consul.stop().await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(proxy.config().await["Consul"]["Reachable"], false);
    assert_eq!(proxy.get("/api/v1/books").await.0, 404);
    consul.restart().await;
    eventually(
        Duration::from_secs(15),
        "the routes to be restored once Consul is back",
        || async { (proxy.get("/api/v1/books").await.0 == 200).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn several_consul_addresses_fail_over_in_order() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    // The first agent refuses connections; the second is real.
    let addresses = format!("http://127.0.0.1:1,{}", consul.url());
    let proxy = Proxy::start(Some(&addresses), &[]).await;
    assert_eq!(proxy.admin(BOOKS).await.0, 200);
    assert_eq!(proxy.get("/api/v1/books").await, (200, "books-1".to_owned()));
}

#[tokio::test]
async fn standalone_routes_survive_a_restart_and_a_corrupt_state_file_is_refused() {
    let web = Upstream::start("web-1").await;
    let scratch = Scratch::new();
    let state = scratch.path("state.json");
    let flag = format!("--state-file={}", state.display());
    let mut proxy = Proxy::start(None, &[&flag]).await;
    let call = format!(
        "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/web&port={}",
        web.port()
    );
    assert_eq!(proxy.admin(&call).await.0, 200);
    proxy.kill().await;

    let mut proxy = Proxy::start(None, &[&flag]).await;
    assert_eq!(proxy.get("/web/x").await, (200, "web-1".to_owned()));
    proxy.kill().await;

    std::fs::write(&state, b"{ half a file").expect("corrupt the state file");
    let out = tokio::process::Command::new(crate::support::proxy::BIN)
        .args(["server", "--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0", &flag])
        .arg("--tls-listen=127.0.0.1:0") // not the default 0.0.0.0:443, which may be taken
        .env_remove("CONSUL_ADDRESS")
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success(), "a corrupt state file must stop the proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&state.display().to_string()) && stderr.contains("not valid JSON"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&state).expect("still there"), b"{ half a file", "never overwritten");
}
