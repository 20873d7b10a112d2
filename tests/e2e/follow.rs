//! Routes that follow Consul, survive restarts and are shared by replicas: scaling without a
//! reconfigure, critical checks, restarts, replicas converging (with every service option),
//! Consul outages, standalone state files.

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

/// A request through `proxy` for `host` (redirects not followed): status, fields and body.
async fn send(
    proxy: &Proxy,
    method: reqwest::Method,
    host: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client builds");
    let mut request = client.request(method, proxy.url(path)).header("host", host);
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the proxy answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("the body arrives whole").to_vec())
}

fn field<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ascii"))
}

/// The `config` entries of these services, in this order (`Null` for one not routed).
async fn entries(proxy: &Proxy, services: &[&str]) -> Vec<Value> {
    let config = proxy.config().await;
    let all = config["Services"].as_array().cloned().unwrap_or_default();
    services
        .iter()
        .map(|name| all.iter().find(|s| s["ServiceName"] == *name).cloned().unwrap_or_default())
        .collect()
}

/// Waits (bounded by [`FOLLOW`]) until `proxy`'s entries of `services` are `want`; on
/// timeout the assertion shows how they differ.
async fn wait_for_entries(proxy: &Proxy, services: &[&str], want: &[Value], what: &str) {
    let deadline = std::time::Instant::now() + FOLLOW;
    loop {
        let got = entries(proxy, services).await;
        if got == want {
            return;
        }
        if std::time::Instant::now() >= deadline {
            assert_eq!(got, want, "timed out after {FOLLOW:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 14's per-service options reach a replica through Consul KV: one reconfigure sent to
/// A carries many of them at once, and B (same instance name) shows the same `config` entry
/// and behaves alike; then a change sent to B (an option dropped) is followed by A.
#[tokio::test]
async fn replicas_follow_every_service_option_through_consul_kv() {
    let consul = Consul::start().await;
    let shop = [Upstream::start("shop-1").await, Upstream::start("shop-2").await];
    for upstream in &shop {
        consul.register("shop-ms", upstream.name(), upstream.port(), None).await;
    }
    // Blue/green: the conditioned service's instances are registered under its color.
    let mobile = Upstream::start("mobile-green-1").await;
    consul.register("mobile-ms-green", "mobile-green-1", mobile.port(), None).await;
    let flags =
        ["--instance-name=shop-proxy", "--users=admin:secret", "--trusted-proxies=127.0.0.1"];
    let a = Proxy::start(Some(&consul.url()), &flags).await;
    let b = Proxy::start(Some(&consul.url()), &flags).await;

    let shop_options = "serviceName=shop-ms&servicePath=/shop&pathType=path_beg\
        &serviceDomain=shop.example&redirectFromDomain=old.example\
        &redirectWhenHttpProto=true\
        &sessionType=sticky-server&sessionCookie=DFP_SHOP\
        &reqPathSearchReplace=^/shop/dl,/download:^/shop/old/,/shop/new/\
        &compressionAlgo=gzip&allowedSources=127.0.0.0/8&ignoreAuthorization=true";
    let reconfigure = |options: &str| format!("/v1/docker-flow-proxy/reconfigure?{options}");
    let (status, answer) =
        a.admin(&reconfigure(&format!("{shop_options}&deniedMethods=DELETE"))).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = a
        .admin(&reconfigure(
            "serviceName=mobile-ms&servicePath=/shop&serviceDomain=shop.example\
             &userAgent=iphone&serviceHeader=X-App:shop&serviceColor=green",
        ))
        .await;
    assert_eq!(status, 200, "{answer}");

    // (1) B's `config` shows what A's does, option for option (instances included: both read
    // them from Consul, the colored ones by `<serviceName>-<serviceColor>`).
    let services = ["shop-ms", "mobile-ms"];
    let on_a = entries(&a, &services).await;
    for (key, value) in [
        ("PathType", serde_json::json!("path_beg")),
        ("DeniedMethods", serde_json::json!(["DELETE"])),
        ("RedirectFromDomain", serde_json::json!(["old.example"])),
        ("RedirectWhenHttpProto", serde_json::json!(true)),
        ("SessionType", serde_json::json!("sticky-server")),
        ("SessionCookie", serde_json::json!("DFP_SHOP")),
        (
            "ReqPathSearchReplace",
            serde_json::json!(["^/shop/dl,/download", "^/shop/old/,/shop/new/"]),
        ),
        ("CompressionAlgo", serde_json::json!("gzip")),
        ("AllowedSources", serde_json::json!(["127.0.0.0/8"])),
        ("IgnoreAuthorization", serde_json::json!(true)),
    ] {
        assert_eq!(on_a[0][key], value, "{key} on A: {}", on_a[0]);
    }
    assert_eq!(on_a[1]["UserAgent"], serde_json::json!(["iphone"]), "{}", on_a[1]);
    assert_eq!(on_a[1]["ServiceHeader"], serde_json::json!(["x-app:shop"]), "{}", on_a[1]);
    assert_eq!(on_a[1]["ServiceColor"], "green", "{}", on_a[1]);
    assert_eq!(on_a[1]["Instances"].as_array().map(Vec::len), Some(1), "{}", on_a[1]);
    wait_for_entries(&b, &services, &on_a, "replica B to show A's options").await;

    // (2) B acts on them.
    let get = reqwest::Method::GET;
    let host = "shop.example";
    // deniedMethods: refused before any instance sees it.
    let hits = shop[0].hits() + shop[1].hits();
    assert_eq!(send(&b, reqwest::Method::DELETE, host, "/shop/x", &[]).await.0, 403);
    assert_eq!(shop[0].hits() + shop[1].hits(), hits, "a denied method reached an instance");
    // allowedSources, with the client named by X-Forwarded-For from a trusted balancer.
    let outsider = [("x-forwarded-for", "10.1.2.3")];
    assert_eq!(send(&b, get.clone(), host, "/shop/x", &outsider).await.0, 403);
    // redirectFromDomain and redirectWhenHttpProto.
    let (status, headers, _) = send(&b, get.clone(), "old.example", "/shop/x?q=1", &[]).await;
    assert_eq!(
        (status, field(&headers, "location")),
        (301, Some("http://shop.example/shop/x?q=1"))
    );
    let (status, headers, _) =
        send(&b, get.clone(), host, "/shop/x", &[("x-forwarded-proto", "http")]).await;
    assert_eq!((status, field(&headers, "location")), (302, Some("https://shop.example/shop/x")));
    // pathType=path_beg: a raw prefix, `/shopping` included; ignoreAuthorization: no 401
    // although the proxy has global users; sticky-server: the answer pins the client.
    let (status, headers, body) = send(&b, get.clone(), host, "/shopping", &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let pinned = String::from_utf8(body).expect("a name");
    let cookie = field(&headers, "set-cookie").expect("pinned").split(';').next().expect("pair");
    assert!(cookie.starts_with("DFP_SHOP="), "{cookie}");
    assert_eq!(field(&headers, "cache-control"), Some("private"));
    let cookie = cookie.to_owned();
    for proxy in [&b, &a] {
        // The same pin on every replica (its token does not depend on the proxy).
        let (status, headers, body) =
            send(proxy, get.clone(), host, "/shop/x", &[("cookie", &cookie)]).await;
        assert_eq!((status, String::from_utf8(body).expect("a name")), (200, pinned.clone()));
        assert_eq!(field(&headers, "set-cookie"), None, "a valid pin is not set again");
    }
    // reqPathSearchReplace: the pairs rewrite the path the instance gets, query kept.
    let pinned_upstream = shop.iter().find(|u| u.name() == pinned).expect("one of ours");
    let with_cookie = [("cookie", cookie.as_str())];
    assert_eq!(send(&b, get.clone(), host, "/shop/old/x?q=1", &with_cookie).await.0, 200);
    assert_eq!(pinned_upstream.last_uri().as_deref(), Some("/shop/new/x?q=1"));
    // compressionAlgo: gzip for a client that accepts it (the instance's 1000 bytes).
    let gzip = [("cookie", cookie.as_str()), ("accept-encoding", "gzip")];
    let (status, headers, body) = send(&b, get.clone(), host, "/shop/dl?bytes=1000", &gzip).await;
    assert_eq!(status, 200);
    assert_eq!(pinned_upstream.last_uri().as_deref(), Some("/download?bytes=1000"));
    assert_eq!(field(&headers, "content-encoding"), Some("gzip"));
    assert!(body.starts_with(&[0x1f, 0x8b]) && body.len() < 1000, "{} bytes", body.len());
    let (_, headers, body) = send(&b, get.clone(), host, "/shop/dl?bytes=1000", &[]).await;
    assert_eq!((field(&headers, "content-encoding"), body.len()), (None, 1000));
    // userAgent + serviceHeader + serviceColor: the conditioned service, whose instance is
    // the green one, behind the global users (it does not ignore them).
    let iphone = [("user-agent", "Mozilla/5.0 (iPhone)"), ("x-app", "shop")];
    let (status, headers, _) = send(&b, get.clone(), host, "/shop/x", &iphone).await;
    assert_eq!(status, 401);
    assert!(field(&headers, "www-authenticate").is_some_and(|v| v.contains("mobile-ms")));
    // `admin:secret`, the global user.
    let iphone = [iphone[0], iphone[1], ("authorization", "Basic YWRtaW46c2VjcmV0")];
    let (status, _, body) = send(&b, get.clone(), host, "/shop/x", &iphone).await;
    assert_eq!((status, body.as_slice()), (200, b"mobile-green-1".as_slice()));
    let (status, _, body) = send(&b, get.clone(), host, "/shop/x", &iphone[..1]).await;
    assert!(status == 200 && body.starts_with(b"shop-"), "one condition is not enough");

    // A change sent to B (deniedMethods dropped) is followed by A.
    let (status, answer) = b.admin(&reconfigure(shop_options)).await;
    assert_eq!(status, 200, "{answer}");
    let on_b = entries(&b, &services).await;
    assert_eq!(on_b[0].get("DeniedMethods"), None, "{}", on_b[0]);
    wait_for_entries(&a, &services, &on_b, "replica A to drop the option removed on B").await;
    let (status, _, body) = send(&a, reqwest::Method::DELETE, host, "/shop/x", &with_cookie).await;
    assert_eq!((status, String::from_utf8(body).expect("a name")), (200, pinned));
}
