//! `sessionType=sticky-server` through the real binary, over plain HTTP/1.1 and HTTP/2 over
//! TLS: a client with the cookie stays on its instance, clients without it rotate exactly,
//! and a cookie naming an instance that is gone is re-pinned (Docker Flow Proxy's #446).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{eventually, proxy::Proxy, Consul, Upstream};
use crate::tls::{https, upload, Ca};

struct Answer {
    upstream: String,
    set_cookie: Option<String>,
    cache_control: Option<String>,
}

async fn get(client: &reqwest::Client, url: &str, cookie: Option<&str>) -> Answer {
    let mut request = client.get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("other=1; {cookie}"));
    }
    let response = request.send().await.expect("the proxy answers");
    assert_eq!(response.status(), 200);
    let header =
        |name: &str| response.headers().get(name).map(|v| v.to_str().expect("ascii").to_owned());
    Answer {
        upstream: header("x-upstream").expect("an instance answered"),
        set_cookie: header("set-cookie"),
        cache_control: header("cache-control"),
    }
}

/// `name=value` of a `Set-Cookie` value.
fn pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().expect("split yields one part")
}

async fn sticky_sessions(h2: bool) {
    let consul = Consul::start().await;
    let mut instances = Vec::new();
    for i in 1..=3 {
        let upstream = Upstream::start(&format!("shop-{i}")).await;
        consul.register("shop-ms", &format!("shop-{i}"), upstream.port(), None).await;
        instances.push(upstream);
    }
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=shop-ms&servicePath=/&sessionType=sticky-server&sessionCookie=DFP_SERVER")
        .await;
    assert_eq!(status, 200, "{answer}");
    let ca = Ca::new();
    let (client, url) = if h2 {
        assert_eq!(upload(&proxy, "shop", &ca.issue(&["shop.example"]).pem).await.0, 200);
        (ca.client(&proxy, &["shop.example"], false), https(&proxy, "shop.example", "/"))
    } else {
        (crate::support::http_client(), proxy.url("/"))
    };

    // Without a cookie: exact round robin, and each answer pins the client, uncacheably.
    let mut counts = BTreeMap::new();
    let mut cookies = BTreeMap::new();
    for _ in 0..9 {
        let answer = get(&client, &url, None).await;
        let set_cookie = answer.set_cookie.expect("a client without cookie is pinned");
        assert!(set_cookie.starts_with("DFP_SERVER="), "{set_cookie}");
        assert!(set_cookie.contains("Path=/") && set_cookie.contains("HttpOnly"), "{set_cookie}");
        assert!(!set_cookie.contains("127.0.0.1"), "the cookie hides the address: {set_cookie}");
        assert_eq!(answer.cache_control.as_deref(), Some("private"));
        *counts.entry(answer.upstream.clone()).or_insert(0) += 1;
        cookies.insert(answer.upstream, pair(&set_cookie).to_owned());
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [3, 3, 3], "{counts:?}");

    // With a cookie: the same instance 20 times, and no new cookie.
    let (pinned, cookie) = cookies.iter().next().map(|(u, c)| (u.clone(), c.clone())).expect("3");
    for _ in 0..20 {
        let answer = get(&client, &url, Some(&cookie)).await;
        assert_eq!(answer.upstream, pinned);
        assert_eq!(answer.set_cookie, None, "a valid pin is not set again");
    }
    // Clients without a cookie still rotate exactly around the pinned ones.
    let mut counts = BTreeMap::new();
    for _ in 0..6 {
        *counts.entry(get(&client, &url, None).await.upstream).or_insert(0) += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{counts:?}");
    // A forged cookie is no pin: the client is pinned afresh.
    let forged = get(&client, &url, Some("DFP_SERVER=ffffffffffffffff")).await;
    assert!(forged.set_cookie.is_some());

    // The pinned instance goes away: the next request goes elsewhere and re-pins.
    let index = instances.iter().position(|u| u.name() == pinned).expect("one of ours");
    consul.deregister(&pinned).await;
    drop(instances.remove(index));
    eventually(Duration::from_secs(10), "the instance leaves the table", || async {
        let config = proxy.config().await;
        (config["Services"][0]["Instances"].as_array().map_or(0, Vec::len) == 2).then_some(())
    })
    .await;
    let answer = get(&client, &url, Some(&cookie)).await;
    assert_ne!(answer.upstream, pinned);
    let repinned = answer.set_cookie.expect("re-pinned");
    assert_eq!(pair(&repinned), cookies[&answer.upstream], "the same token as before");
    for _ in 0..5 {
        assert_eq!(get(&client, &url, Some(pair(&repinned))).await.upstream, answer.upstream);
    }
}

#[tokio::test]
async fn sticky_sessions_over_http1() {
    sticky_sessions(false).await;
}

#[tokio::test]
async fn sticky_sessions_over_h2() {
    sticky_sessions(true).await;
}

/// A pinned instance that refuses connections is tried once, ejected, and the request is
/// answered by another instance with a new pin: the retry does not loop on the dead pin.
#[tokio::test]
async fn a_dead_pinned_instance_is_not_retried() {
    let consul = Consul::start().await;
    let live = Upstream::start("live-1").await;
    let doomed = Upstream::start("doomed-1").await;
    consul.register("app-ms", "live-1", live.port(), None).await;
    consul.register("app-ms", "doomed-1", doomed.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=app-ms&servicePath=/&sessionType=sticky-server")
        .await;
    assert_eq!(status, 200, "{answer}");
    let client = crate::support::http_client();
    let mut cookie = None;
    for _ in 0..2 {
        let answer = get(&client, &proxy.url("/"), None).await;
        if answer.upstream == "doomed-1" {
            cookie = answer.set_cookie;
        }
    }
    let cookie = cookie.expect("round robin reached doomed-1");
    assert!(cookie.starts_with("app-ms="), "the default cookie is the service's name: {cookie}");
    // Still registered in Consul, but it refuses connections now.
    drop(doomed);
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    for _ in 0..3 {
        let answer = get(&fresh, &proxy.url("/"), Some(pair(&cookie))).await;
        assert_eq!(answer.upstream, "live-1");
        assert!(answer.set_cookie.expect("re-pinned").starts_with("app-ms="));
    }
}
