//! Docker Flow Proxy's per-service options over plain HTTP: host routing with wildcards,
//! HTTPS redirects, path rewrites, basic auth, header edits, per-service timeouts, excluded
//! paths and the default backend; each shown in `config` and restored after a restart.

use serde_json::Value;

use crate::support::{raw_http, Consul, Proxy, Upstream};

/// A GET with an explicit Host and headers over a fresh connection: (status, headers, body).
async fn get(proxy: &Proxy, host: &str, path: &str, extra: &[&str]) -> (u16, String, String) {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let answer = raw_http(proxy.addr, request.as_bytes()).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn reconfigure(proxy: &Proxy, query: &str) -> (u16, Value) {
    proxy.admin(&format!("/v1/docker-flow-proxy/reconfigure?{query}")).await
}

/// Starts Consul and one upstream per name, each registered as `<name>` in Consul.
async fn services(names: &[&str]) -> (Consul, Vec<Upstream>) {
    let consul = Consul::start().await;
    let mut upstreams = Vec::new();
    for name in names {
        let upstream = Upstream::start(name).await;
        consul.register(name, name, upstream.port(), None).await;
        upstreams.push(upstream);
    }
    (consul, upstreams)
}

#[tokio::test]
async fn hosts_route_first_with_wildcards_then_paths_then_the_default_backend() {
    let (consul, _up) = services(&["shop", "tenants", "api", "fallback", "books"]).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    for query in [
        "serviceName=shop&servicePath=/&serviceDomain=shop.example.com,www.shop.example.com",
        "serviceName=tenants&servicePath=/&serviceDomain=*.tenants.example.com",
        "serviceName=api&servicePath=/api",
        "serviceName=fallback&isDefaultBackend=true",
        "serviceName=books&servicePath=/books&servicePathExclude=/books/admin",
    ] {
        let (status, answer) = reconfigure(&proxy, query).await;
        assert_eq!(status, 200, "{query}: {answer}");
    }
    #[rustfmt::skip]
    let cases = [
        ("shop.example.com", "/cart", "shop"),
        ("SHOP.example.com:80", "/cart", "shop"),
        ("www.shop.example.com", "/", "shop"),
        ("a.tenants.example.com", "/x", "tenants"),
        ("b.tenants.example.com", "/api/x", "tenants"),
        ("a.b.tenants.example.com", "/api/x", "api"),
        ("other.example.com", "/api/v1", "api"),
        ("other.example.com", "/nowhere", "fallback"),
        ("other.example.com", "/books/7", "books"),
        ("other.example.com", "/books/admin/users", "fallback"),
    ];
    for (host, path, want) in cases {
        let (status, _, body) = get(&proxy, host, path, &[]).await;
        assert_eq!((status, body.as_str()), (200, want), "{host}{path}");
    }
    // The same path on two hosts is fine; on the same host it is a conflict.
    let (status, answer) =
        reconfigure(&proxy, "serviceName=books&servicePath=/&serviceDomain=shop.example.com").await;
    assert_eq!(status, 409, "{answer}");
    let (status, answer) =
        reconfigure(&proxy, "serviceName=api&servicePath=/api&isDefaultBackend=true").await;
    assert_eq!(status, 409, "a second default backend: {answer}");
    let (status, answer) =
        reconfigure(&proxy, "serviceName=api&servicePath=/api&serviceDomain=bad..name").await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test]
async fn https_only_redirects_plain_http_with_the_chosen_code() {
    let (consul, _up) = services(&["secure", "secure301"]).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let trusting =
        Proxy::start(Some(&consul.url()), &["--trust-forwarded-proto", "--instance-name=trusting"])
            .await;
    for p in [&proxy, &trusting] {
        assert_eq!(reconfigure(p, "serviceName=secure&servicePath=/s&httpsOnly=true").await.0, 200);
        assert_eq!(
            reconfigure(
                p,
                "serviceName=secure301&servicePath=/t&httpsOnly=true&httpsRedirectCode=301"
            )
            .await
            .0,
            200
        );
    }
    let (status, head, _) = get(&proxy, "shop.example.com:8080", "/s/cart?id=7", &[]).await;
    assert_eq!(status, 302);
    assert!(head.contains("location: https://shop.example.com/s/cart?id=7"), "{head}");
    let (status, head, _) = get(&proxy, "shop.example.com", "/t", &[]).await;
    assert_eq!(status, 301, "{head}");

    // X-Forwarded-Proto from the client counts only when the proxy is told to trust it.
    let offloaded = ["X-Forwarded-Proto: https"];
    assert_eq!(get(&proxy, "shop.example.com", "/s", &offloaded).await.0, 302);
    assert_eq!(get(&trusting, "shop.example.com", "/s", &offloaded).await.0, 200);
    assert_eq!(get(&trusting, "shop.example.com", "/s", &[]).await.0, 302);
    let (status, answer) = reconfigure(
        &proxy,
        "serviceName=secure&servicePath=/s&httpsOnly=true&httpsRedirectCode=200",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test]
async fn rewrite_auth_headers_and_timeouts_apply_per_service() {
    let (consul, upstreams) = services(&["books", "slow", "quick"]).await;
    let books = &upstreams[0];
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    // bob's password is "secret", as a SHA-512 crypt hash.
    let hash = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    let query = format!(
        "serviceName=books&servicePath=/api/v1/books\
         &reqPathSearch=%5E/api/v1/(.*)&reqPathReplace=/%5C1\
         &users=alice:wonderland,bob:{}\
         &addReqHeader=X-Added%20one,X-Added%20two&setReqHeader=X-Env%20production&delReqHeader=X-Drop\
         &addResHeader=X-Served-By%20dfp&delResHeader=X-Upstream",
        url_escape(hash)
    );
    let (status, answer) = reconfigure(&proxy, &query).await;
    assert_eq!(status, 200, "{answer}");

    // Basic auth: missing, wrong, right (plain and hashed).
    let (status, head, _) = get(&proxy, "h", "/api/v1/books/7?x=1", &[]).await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: basic realm=\"books\""), "{head}");
    let wrong = "Authorization: Basic YWxpY2U6d3Jvbmc="; // alice:wrong
    assert_eq!(get(&proxy, "h", "/api/v1/books/7", &[wrong]).await.0, 401);
    assert_eq!(books.hits(), 0, "unauthorised requests never reach the service");
    let bob = "Authorization: Basic Ym9iOnNlY3JldA=="; // bob:secret
    assert_eq!(get(&proxy, "h", "/api/v1/books/7", &[bob]).await.0, 200);
    let alice = "Authorization: Basic YWxpY2U6d29uZGVybGFuZA=="; // alice:wonderland
    let (status, head, body) =
        get(&proxy, "h", "/api/v1/books/7?x=1", &[alice, "X-Drop: 1", "X-Env: staging"]).await;
    assert_eq!((status, body.as_str()), (200, "books"));

    // Rewrite, request and response header edits.
    assert_eq!(books.last_uri().as_deref(), Some("/books/7?x=1"));
    let seen = books.last_headers().expect("reached");
    assert!(seen.get("authorization").is_none(), "credentials were forwarded");
    assert!(seen.get("x-drop").is_none());
    assert_eq!(seen["x-env"], "production");
    let added: Vec<_> =
        seen.get_all("x-added").iter().map(|v| v.to_str().unwrap_or_default()).collect();
    assert_eq!(added, ["one", "two"]);
    assert!(head.contains("x-served-by: dfp"), "{head}");
    assert!(!head.contains("x-upstream"), "{head}");

    // A per-service server timeout.
    assert_eq!(reconfigure(&proxy, "serviceName=slow&servicePath=/slow&timeoutServer=1&reqPathSearch=%5E/slow&reqPathReplace=").await.0, 200);
    assert_eq!(reconfigure(&proxy, "serviceName=quick&servicePath=/quick").await.0, 200);
    assert_eq!(get(&proxy, "h", "/slow/sleep?ms=2500", &[]).await.0, 504);
    // (the rewrite-free service keeps the 20 s default)
    assert_eq!(get(&proxy, "h", "/quick", &[]).await.0, 200);

    // Bad options are refused and change nothing.
    let before = proxy.config().await["Services"].clone();
    for bad in [
        "serviceName=quick&servicePath=/quick&reqPathSearch=(",
        "serviceName=quick&servicePath=/quick&users=nocolon",
        "serviceName=quick&servicePath=/quick&users=x:$6$bad&usersPassEncrypted=true",
        "serviceName=quick&servicePath=/quick&addReqHeader=NoValue",
        "serviceName=quick&servicePath=/quick&timeoutServer=soon",
        "serviceName=quick&servicePath=/quick&reqMode=tcp",
    ] {
        let (status, answer) = reconfigure(&proxy, bad).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    assert_eq!(proxy.config().await["Services"], before);
}

#[tokio::test]
async fn every_option_shows_in_config_and_survives_a_restart() {
    let (consul, _up) = services(&["books"]).await;
    let mut proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let query = "serviceName=books&servicePath=/api&serviceDomain=*.example.com\
                 &servicePathExclude=/api/admin&httpsOnly=true&httpsRedirectCode=308\
                 &reqPathSearch=%5E/api&reqPathReplace=&users=alice:wonderland\
                 &setReqHeader=X-Env%20prod&delResHeader=Server&timeoutServer=7&timeoutTunnel=60";
    assert_eq!(reconfigure(&proxy, query).await.0, 200);
    let shown = proxy.config().await["Services"][0].clone();
    proxy.kill().await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let restored = proxy.config().await["Services"][0].clone();
    assert_eq!(restored, shown, "restored from Consul KV as configured");
    assert_eq!(restored["ServiceDomain"], serde_json::json!(["*.example.com"]));
    assert_eq!(restored["ServicePathExclude"], serde_json::json!(["/api/admin"]));
    assert_eq!(restored["HttpsRedirectCode"], 308);
    assert_eq!(restored["ReqPathSearch"], "^/api");
    assert_eq!(restored["Users"], serde_json::json!(["alice"]));
    assert_eq!(restored["TimeoutServer"], 7);
    assert_eq!(restored["TimeoutTunnel"], 60);
    assert!(!restored.to_string().contains("wonderland"), "passwords never leave the proxy");
    let (status, head, _) = get(&proxy, "a.example.com", "/api/x", &[]).await;
    assert_eq!(status, 308, "{head}");
}

/// Percent-encodes the characters of a crypt hash that a query string would mangle.
fn url_escape(s: &str) -> String {
    s.replace('$', "%24").replace('/', "%2F").replace('.', "%2E")
}
