//! Redirects and path rewrites Docker Flow Proxy users configure: `redirectWhenHttpProto`,
//! `redirectUnlessHttpsProto`, `redirectFromDomain` and `reqPathSearchReplace`, through the
//! real binary (standalone), kept across a restart by the state file, counted in `/metrics`.

use crate::support::{proxy::Proxy, Scratch, Upstream};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// `(status, Location)` of a GET with `Host: host` and the given `X-Forwarded-Proto`.
async fn ask(proxy: &Proxy, host: &str, path: &str, proto: Option<&str>) -> (u16, String) {
    let mut request = no_redirects().get(proxy.url(path)).header("host", host);
    if let Some(proto) = proto {
        request = request.header("x-forwarded-proto", proto);
    }
    let response = request.send().await.expect("the proxy answers");
    let location = response
        .headers()
        .get("location")
        .map_or_else(String::new, |v| v.to_str().expect("ascii").to_owned());
    (response.status().as_u16(), location)
}

async fn reconfigure(proxy: &Proxy, query: &str) -> (u16, serde_json::Value) {
    proxy.admin(&format!("/v1/docker-flow-proxy/reconfigure?{query}")).await
}

/// What the first configuration does, asked before and after a restart.
async fn check_moved_and_forwarded_proto(proxy: &Proxy, web: &Upstream) {
    let https = |l: &str| (301, format!("https://new.example{l}"));
    // redirectWhenHttpProto with httpsRedirectCode: only `X-Forwarded-Proto: http`.
    assert_eq!(ask(proxy, "new.example", "/p?x=1", Some("http")).await, https("/p?x=1"));
    assert_eq!(ask(proxy, "new.example", "/p", Some("https")).await.0, 200);
    assert_eq!(ask(proxy, "new.example", "/p", None).await.0, 200);
    // redirectFromDomain: 301 to the first serviceDomain, same path and query, port dropped.
    assert_eq!(
        ask(proxy, "old.example:8080", "/cart?id=7", None).await,
        (301, "http://new.example/cart?id=7".to_owned())
    );
    // reqPathSearch first, then each reqPathSearchReplace pair over the previous result.
    assert_eq!(ask(proxy, "new.example", "/a/x?q=1", None).await.0, 200);
    assert_eq!(web.last_uri().as_deref(), Some("/c/y?q=1"));
}

#[tokio::test]
async fn redirects_and_search_replace_pairs_survive_a_restart() {
    let web = Upstream::start("web-1").await;
    let scratch = Scratch::new();
    let state = format!("--state-file={}", scratch.path("state.json").display());
    let mut proxy = Proxy::start(None, &[&state]).await;
    let service = format!("serviceName=127.0.0.1&port={}&servicePath=/", web.port());
    let moved = format!(
        "{service}&serviceDomain=new.example&redirectFromDomain=old.example\
         &redirectWhenHttpProto=true&httpsRedirectCode=301\
         &reqPathSearch=^/a/&reqPathReplace=/b/&reqPathSearchReplace=^/b/,/c/:x$,y"
    );
    let (status, answer) = reconfigure(&proxy, &moved).await;
    assert_eq!(status, 200, "{answer}");
    check_moved_and_forwarded_proto(&proxy, &web).await;

    let config = proxy.config().await;
    let shown = &config["Services"][0];
    assert_eq!(shown["ServiceDomain"], serde_json::json!(["new.example"]), "{shown}");
    assert_eq!(shown["RedirectFromDomain"], serde_json::json!(["old.example"]), "{shown}");
    assert_eq!(shown["RedirectWhenHttpProto"], true, "{shown}");
    assert_eq!(shown["HttpsRedirectCode"], 301, "{shown}");
    assert_eq!(shown["ReqPathSearchReplace"], serde_json::json!(["^/b/,/c/", "x$,y"]), "{shown}");

    // Bad values are refused and change nothing.
    for bad in [
        "&sessionType=sticky-client",
        "&redirectUnlessHttpsProto=maybe",
        "&reqPathSearchReplace=/no-comma",
        "&redirectFromDomain=old.example",
    ] {
        let (status, answer) = reconfigure(&proxy, &format!("{service}{bad}")).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(
            answer["Message"]
                .as_str()
                .is_some_and(|m| m.contains(&bad[1..bad.find('=').expect("=")])),
            "{answer}"
        );
    }
    assert_eq!(proxy.config().await["Services"], config["Services"]);

    // A restart restores every option from the state file.
    proxy.terminate().await;
    let mut proxy = Proxy::start(None, &[&state]).await;
    check_moved_and_forwarded_proto(&proxy, &web).await;

    // redirectUnlessHttpsProto: anything but `https` is redirected, with the default 302.
    let unless = format!("{service}&redirectUnlessHttpsProto=true");
    assert_eq!(reconfigure(&proxy, &unless).await.0, 200);
    let to = (302, "https://lb.example/p".to_owned());
    assert_eq!(ask(&proxy, "lb.example", "/p", None).await, to);
    assert_eq!(ask(&proxy, "lb.example", "/p", Some("http")).await, to);
    assert_eq!(ask(&proxy, "lb.example", "/p", Some("https")).await.0, 200);
    proxy.terminate().await;
    let proxy = Proxy::start(None, &[&state]).await;
    assert_eq!(ask(&proxy, "lb.example", "/p", None).await, to);

    let metrics = crate::support::http_client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"dfp_proxy_responses_total{status="302",reason="https_redirect"} 1"#),
        "{metrics}"
    );
}
