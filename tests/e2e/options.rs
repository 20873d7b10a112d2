//! Docker Flow Proxy's per-service options: host routing with wildcards, HTTPS redirects,
//! path rewrites, basic auth, header edits, per-service timeouts, excluded paths and the
//! default backend; each shown in `config` and restored after a restart.
//!
//! The tests that send requests run once per protocol (`over_plain_tls_and_h2!` at the end):
//! `NAME::plain` (HTTP/1.1 over TCP), `NAME::tls` (HTTP/1.1 over TLS) and `NAME::h2` (HTTP/2
//! over TLS, the host in `:authority`), since every engine must apply a service's options the
//! same way. What the client's connection legitimately changes is said where it is checked:
//! an HTTPS-only service redirects plain HTTP and serves HTTPS, and `X-Forwarded-Proto` is the
//! scheme the client spoke.

use serde_json::Value;

use crate::support::{over_plain_tls_and_h2, Consul, Protocol, Proxy, Upstream};

/// A GET of `path` for `host` with the extra fields given, over `protocol` on a fresh
/// connection: (status, head with lower-case names and values, body).
async fn get(
    protocol: Protocol,
    proxy: &Proxy,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (u16, String, String) {
    let answer = protocol.get(proxy, host, path, extra).await;
    (answer.status, answer.head.to_ascii_lowercase(), answer.text())
}

/// A proxy following `consul` with `extra` flags, ready for `protocol`.
async fn start(protocol: Protocol, consul: &Consul, extra: &[&str]) -> Proxy {
    let proxy = Proxy::start(Some(&consul.url()), extra).await;
    protocol.prepare(&proxy).await;
    proxy
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

async fn hosts_route_first_with_wildcards_then_paths_then_the_default_backend(protocol: Protocol) {
    let (consul, _up) = services(&["shop", "tenants", "api", "fallback", "books"]).await;
    let proxy = start(protocol, &consul, &[]).await;
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
        let (status, _, body) = get(protocol, &proxy, host, path, &[]).await;
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

async fn https_only_redirects_plain_http_and_serves_https(protocol: Protocol) {
    let (consul, upstreams) = services(&["secure", "secure301"]).await;
    let proxy = start(protocol, &consul, &[]).await;
    let trusting =
        start(protocol, &consul, &["--trust-forwarded-proto", "--instance-name=trusting"]).await;
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
    let cart = get(protocol, &proxy, "shop.example.com:8080", "/s/cart?id=7", &[]).await;
    let moved = get(protocol, &proxy, "shop.example.com", "/t", &[]).await;
    let offloaded = ["X-Forwarded-Proto: https"];
    let downgraded = ["X-Forwarded-Proto: http"];
    if protocol == Protocol::Plain {
        // Plain HTTP is redirected to HTTPS, with the code chosen.
        let (status, head, _) = cart;
        assert_eq!(status, 302, "{head}");
        assert!(head.contains("location: https://shop.example.com/s/cart?id=7"), "{head}");
        assert_eq!(moved.0, 301, "{}", moved.1);

        // X-Forwarded-Proto from the client counts only when the proxy is told to trust it.
        assert_eq!(get(protocol, &proxy, "shop.example.com", "/s", &offloaded).await.0, 302);
        assert_eq!(get(protocol, &trusting, "shop.example.com", "/s", &offloaded).await.0, 200);
        assert_eq!(get(protocol, &trusting, "shop.example.com", "/s", &[]).await.0, 302);
        assert_eq!(get(protocol, &trusting, "shop.example.com", "/s", &downgraded).await.0, 302);
    } else {
        // Over HTTPS (HTTP/1.1 or HTTP/2) the same services serve: the request already came
        // the way they ask for.
        assert_eq!((cart.0, cart.2.as_str()), (200, "secure"), "{}", cart.1);
        assert_eq!((moved.0, moved.2.as_str()), (200, "secure301"), "{}", moved.1);
        let headers = upstreams[0].last_headers().expect("served");
        assert_eq!(headers["x-forwarded-proto"], "https");

        // Whatever X-Forwarded-Proto a client sends, trusted or not, the TLS the proxy
        // terminated itself counts: no redirect.
        for p in [&proxy, &trusting] {
            for extra in [&[][..], &offloaded, &downgraded] {
                let (status, head, _) = get(protocol, p, "shop.example.com", "/s", extra).await;
                assert_eq!(status, 200, "{extra:?}: {head}");
            }
        }
    }
    let (status, answer) = reconfigure(
        &proxy,
        "serviceName=secure&servicePath=/s&httpsOnly=true&httpsRedirectCode=200",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
}

async fn rewrite_auth_headers_and_timeouts_apply_per_service(protocol: Protocol) {
    let (consul, upstreams) = services(&["books", "slow", "quick"]).await;
    let books = &upstreams[0];
    let proxy = start(protocol, &consul, &[]).await;
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
    let (status, head, _) = get(protocol, &proxy, "h", "/api/v1/books/7?x=1", &[]).await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: basic realm=\"books\""), "{head}");
    let wrong = "Authorization: Basic YWxpY2U6d3Jvbmc="; // alice:wrong
    assert_eq!(get(protocol, &proxy, "h", "/api/v1/books/7", &[wrong]).await.0, 401);
    assert_eq!(books.hits(), 0, "unauthorised requests never reach the service");
    let bob = "Authorization: Basic Ym9iOnNlY3JldA=="; // bob:secret
    assert_eq!(get(protocol, &proxy, "h", "/api/v1/books/7", &[bob]).await.0, 200);
    let alice = "Authorization: Basic YWxpY2U6d29uZGVybGFuZA=="; // alice:wonderland
    let (status, head, body) =
        get(protocol, &proxy, "h", "/api/v1/books/7?x=1", &[alice, "X-Drop: 1", "X-Env: staging"])
            .await;
    assert_eq!((status, body.as_str()), (200, "books"));

    // Rewrite, request and response header edits.
    assert_eq!(books.last_uri().as_deref(), Some("/books/7?x=1"));
    let seen = books.last_headers().expect("reached");
    assert!(seen.get("authorization").is_none(), "credentials were forwarded");
    assert!(seen.get("x-drop").is_none());
    assert_eq!(seen["x-env"], "production");
    // The one field the client's connection decides: the scheme it spoke.
    assert_eq!(seen["x-forwarded-proto"], protocol.scheme());
    let added: Vec<_> =
        seen.get_all("x-added").iter().map(|v| v.to_str().unwrap_or_default()).collect();
    assert_eq!(added, ["one", "two"]);
    assert!(head.contains("x-served-by: dfp"), "{head}");
    assert!(!head.contains("x-upstream"), "{head}");

    // A per-service server timeout.
    assert_eq!(reconfigure(&proxy, "serviceName=slow&servicePath=/slow&timeoutServer=1&reqPathSearch=%5E/slow&reqPathReplace=").await.0, 200);
    assert_eq!(reconfigure(&proxy, "serviceName=quick&servicePath=/quick").await.0, 200);
    assert_eq!(get(protocol, &proxy, "h", "/slow/sleep?ms=2500", &[]).await.0, 504);
    // (the rewrite-free service keeps the 20 s default)
    assert_eq!(get(protocol, &proxy, "h", "/quick", &[]).await.0, 200);

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

// Plain HTTP only: this is about the control plane (`config`, Consul KV, a restart); what the
// options do over each protocol is checked above.
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
    let (status, head, _) = get(Protocol::Plain, &proxy, "a.example.com", "/api/x", &[]).await;
    assert_eq!(status, 308, "{head}");
}

over_plain_tls_and_h2!(
    hosts_route_first_with_wildcards_then_paths_then_the_default_backend,
    https_only_redirects_plain_http_and_serves_https,
    rewrite_auth_headers_and_timeouts_apply_per_service,
);

/// Percent-encodes the characters of a crypt hash that a query string would mangle.
fn url_escape(s: &str) -> String {
    s.replace('$', "%24").replace('/', "%2F").replace('.', "%2E")
}
