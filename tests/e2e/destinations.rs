//! Docker Flow Proxy's indexed destinations (`servicePath.N`, `port.N`, `users.N`...): one
//! service, several routes, each with its own options and (standalone) port, through the real
//! binary. Stored and restored as one service, shown in `config` as one, followed by replicas
//! through Consul KV, and removed as one.

use serde_json::json;

use crate::support::{eventually, proxy::Proxy, Consul, Scratch, Upstream};

async fn reconfigure(proxy: &Proxy, query: &str) -> (u16, serde_json::Value) {
    proxy.admin(&format!("/v1/docker-flow-proxy/reconfigure?{query}")).await
}

/// (status, which instance answered, the `X-Dest` header it received) of a GET.
async fn ask(proxy: &Proxy, path: &str, credentials: Option<(&str, &str)>) -> (u16, String) {
    let mut request = proxy.client().get(proxy.url(path));
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.expect("the proxy answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// Docker Flow Proxy's documented call (two paths, two container ports) with per-destination
/// options over shared ones, standalone: each path reaches its own port with its own options;
/// `config` shows one service; a restart restores it from the state file; bad indexed calls
/// are 400s that change nothing; remove takes every destination.
#[tokio::test]
async fn each_destination_routes_to_its_own_port_with_its_own_options() {
    let app = Upstream::start("app").await;
    let admin = Upstream::start("admin").await;
    let scratch = Scratch::new();
    let state = format!("--state-file={}", scratch.path("state.json").display());
    let mut proxy = Proxy::start(None, &[&state]).await;
    let call = format!(
        "serviceName=127.0.0.1&addReqHeader=X-Dest shared\
         &servicePath.1=/path-1&port.1={}\
         &servicePath.2=/path-2&port.2={}&users.2=ops:secret&addReqHeader.2=X-Dest admin",
        app.port(),
        admin.port()
    );
    let (status, answer) = reconfigure(&proxy, &call).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ServicePath"], json!(["/path-1", "/path-2"]), "{answer}");

    check(&proxy, &app, &admin).await;

    // One service in `config`, its second destination nested with its own fields.
    let config = proxy.config().await;
    let services = config["Services"].as_array().expect("services");
    assert_eq!(services.len(), 1, "{config}");
    let service = &services[0];
    assert_eq!(service["Index"], 1, "{service}");
    assert_eq!(service["ServicePath"], json!(["/path-1"]), "{service}");
    assert_eq!(service["Instances"], json!([format!("127.0.0.1:{}", app.port())]), "{service}");
    let second = &service["Destinations"][0];
    assert_eq!(second["Index"], 2, "{service}");
    assert_eq!(second["ServicePath"], json!(["/path-2"]), "{service}");
    assert_eq!(second["Users"], json!(["ops"]), "{service}");
    assert_eq!(second["Instances"], json!([format!("127.0.0.1:{}", admin.port())]), "{service}");
    let dfp = proxy.admin("/v1/docker-flow-proxy/config?type=json").await.1;
    let dests = &dfp["127.0.0.1"]["ServiceDest"];
    assert_eq!(dests[0]["Index"], 1, "{dfp}");
    assert_eq!(dests[1]["ServicePath"], json!(["/path-2"]), "{dfp}");

    // Bad indexed calls: a 400 naming the destination, and nothing changes.
    let version = config["TableVersion"].clone();
    for (bad, needle) in [
        ("&servicePath.4=/gap", "none ending in .3"),
        ("&servicePath.3=/c&port.3=x", "destination 3"),
        ("&servicePath.3=/path-1&port.3=1", "in two of its destinations"),
        ("&serviceColor.1=blue", "one per service"),
        ("&servicePath.3=/c", "destination 3"),
    ] {
        let (status, answer) = reconfigure(&proxy, &format!("{call}{bad}")).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        let message = answer["Message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{bad}: {message}");
    }
    assert_eq!(proxy.config().await["TableVersion"], version, "a refused call changed the table");

    // A restart restores both destinations from the state file.
    proxy.terminate().await;
    let mut proxy = Proxy::start(None, &[&state]).await;
    check(&proxy, &app, &admin).await;
    assert_eq!(proxy.config().await["Services"], config["Services"]);

    // Remove takes the service with every destination.
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/remove?serviceName=127.0.0.1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ask(&proxy, "/path-1", None).await.0, 404);
    assert_eq!(ask(&proxy, "/path-2", None).await.0, 404);
    proxy.terminate().await;
}

/// With Consul: the unindexed destination and an indexed one (its own host and https
/// redirect) over the same registered instances; a replica follows both through Consul KV;
/// destinations asking for different ports are refused (Consul gives the ports).
#[tokio::test]
async fn destinations_share_consul_instances_and_replicas_follow_them() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let a = Proxy::start(Some(&consul.url()), &["--instance-name=dest-proxy"]).await;
    let b = Proxy::start(Some(&consul.url()), &["--instance-name=dest-proxy"]).await;
    let call = "serviceName=books-ms&servicePath=/api/v1/books&port=8080\
                &serviceDomain.1=admin.example&servicePath.1=/&httpsOnly.1=true";
    let (status, answer) = reconfigure(&a, call).await;
    assert_eq!(status, 200, "{answer}");
    let warnings = answer["Warnings"].to_string();
    assert!(warnings.contains("port=8080 is ignored"), "{answer}");

    let redirect = |proxy: &Proxy| {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let url = proxy.url("/x?y=1");
        async move {
            let response =
                client.get(url).header("host", "admin.example").send().await.expect("answer");
            let location = response.headers().get("location").cloned();
            (response.status().as_u16(), location)
        }
    };
    for proxy in [&a, &b] {
        eventually(std::time::Duration::from_secs(10), "the replica routes both", || async {
            (proxy.get("/api/v1/books").await.0 == 200).then_some(())
        })
        .await;
        let (status, location) = redirect(proxy).await;
        assert_eq!(status, 302, "destination 1 redirects to https");
        assert_eq!(location.expect("a Location"), "https://admin.example/x?y=1");
    }
    let on_b = b.config().await["Services"].clone();
    assert_eq!(on_b, a.config().await["Services"], "the replica shows what A shows");
    assert_eq!(on_b[0]["Destinations"][0]["ServiceDomain"], json!(["admin.example"]), "{on_b}");

    let (status, answer) = reconfigure(
        &a,
        "serviceName=books-ms&servicePath.1=/a&port.1=8080\
        &servicePath.2=/b&port.2=9090",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("Registrator names them <name>-<port>"), "{message}");
    assert_eq!(a.get("/api/v1/books").await.0, 200, "the refused call changed nothing");
}

/// What the first test's service does: each path to its own port, with its own options.
async fn check(proxy: &Proxy, app: &Upstream, admin: &Upstream) {
    let (app_hits, admin_hits) = (app.hits(), admin.hits());
    assert_eq!(ask(proxy, "/path-1/x", None).await, (200, "app".to_owned()));
    assert_eq!(app.hits(), app_hits + 1);
    assert_eq!(header(app, "x-dest"), "shared", "the unindexed option applies");
    assert_eq!(ask(proxy, "/path-2", None).await.0, 401, "users.2: credentials asked");
    assert_eq!(
        ask(proxy, "/path-2", Some(("ops", "secret"))).await,
        (200, "admin".to_owned()),
        "destination 2 goes to port.2"
    );
    assert_eq!(admin.hits(), admin_hits + 1, "the 401 never reached the instance");
    assert_eq!(header(admin, "x-dest"), "admin", "addReqHeader.2 overrides");
    assert_eq!(ask(proxy, "/elsewhere", None).await.0, 404);
}

/// The named header of the last request `upstream` received.
fn header(upstream: &Upstream, name: &str) -> String {
    upstream
        .last_headers()
        .and_then(|h| h.get(name).map(|v| v.to_str().expect("ascii").to_owned()))
        .unwrap_or_default()
}
