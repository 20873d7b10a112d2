//! The CLI as a user types it, against the real server and a real Consul: `config` and
//! `routes` (text and `--json`, with the admin API's credentials), and the rough edges a
//! newcomer hit: a typo'd name on a routed path, a name in another case, `--port` with
//! Consul, and standalone mode's unknown-name message.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, free_port, Consul, Proxy, RefusedPort, Upstream};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a CLI command that must succeed; returns what it printed.
async fn ok(proxy: &Proxy, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = proxy.cli_with_env(args, env).await;
    assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    stdout(&out)
}

const TOKEN: [(&str, &str); 1] = [("DFP_ADMIN_TOKEN", "cli-token")];

#[tokio::test]
async fn config_and_routes_show_the_table_and_each_instances_health() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    let dead = RefusedPort::new(); // registered, passing in Consul, but nothing listens there
    consul.register("books-ms", "books-1", books.port(), None).await;
    consul.register("books-ms", "books-2", dead.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &["--admin-token=cli-token"]).await;
    let reconfigure =
        ["reconfigure", "--service-name", "books-ms", "--service-path", "/api/v1/books"];
    ok(&proxy, &reconfigure, &TOKEN).await;

    // Without credentials the new commands are refused like reconfigure, saying what to pass.
    for command in ["config", "routes"] {
        let out = proxy.cli(&[command]).await;
        assert!(!out.status.success(), "{command} without credentials must fail");
        assert!(stderr(&out).contains("DFP_ADMIN_TOKEN"), "{command}: {}", stderr(&out));
    }

    // Requests find the dead instance refused: it is ejected, the request retried.
    for _ in 0..4 {
        assert_eq!(proxy.get("/api/v1/books").await, (200, "books-1".to_owned()));
    }
    let ejected = format!("127.0.0.1:{}", dead.port());
    let routes: Value =
        serde_json::from_str(&ok(&proxy, &["routes", "--json"], &TOKEN).await).expect("JSON");
    let route = &routes["Routes"][0];
    assert_eq!(route["Path"], "/api/v1/books", "{routes}");
    assert_eq!(route["ServiceName"], "books-ms", "{routes}");
    let states: Vec<(String, String)> = route["Instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (
                i["Address"].as_str().unwrap_or("").to_owned(),
                i["State"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(format!("127.0.0.1:{}", books.port()), "healthy".to_owned())),
        "{routes}"
    );
    // Ejected for a second after its failure; a slow machine may see the window over already
    // (then the next request to it is the probe).
    let dead_state = states.iter().find(|(a, _)| *a == ejected).map(|(_, s)| s.as_str());
    assert!(matches!(dead_state, Some("ejected" | "probing")), "{routes}");

    // The table for people: one line per instance, the route's columns on its first line.
    let text = ok(&proxy, &["routes"], &TOKEN).await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("PATH") && lines[0].contains("STATE"), "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with("/api/v1/books") && l.contains("books-ms")),
        "{text}"
    );
    let dead_line = lines.iter().find(|l| l.contains(&ejected)).expect("the dead instance");
    assert!(
        (dead_line.contains("ejected") || dead_line.contains("probing"))
            && dead_line.contains("failure"),
        "{text}"
    );

    // config: the text names the service and its paths; --json is the admin API's answer.
    let text = ok(&proxy, &["config"], &TOKEN).await;
    assert!(text.contains("Mode: consul"), "{text}");
    assert!(text.lines().any(|l| l == "books-ms"), "{text}");
    assert!(text.contains("  ServicePath: /api/v1/books"), "{text}");
    let json: Value =
        serde_json::from_str(&ok(&proxy, &["config", "--json"], &TOKEN).await).expect("JSON");
    assert_eq!(json["Services"][0]["ServiceName"], "books-ms", "{json}");
    assert_eq!(json["Consul"]["Reachable"], true, "{json}");
}

#[tokio::test]
async fn consul_mode_rough_edges_are_fixed() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let reconfigure = |name: &'static str, extra: &'static [&'static str]| {
        let mut args =
            vec!["reconfigure", "--service-name", name, "--service-path", "/api/v1/books"];
        args.extend_from_slice(extra);
        args
    };

    // --port with Consul: accepted with a warning, and not stored (Consul gives the ports).
    let answer: Value =
        serde_json::from_str(&ok(&proxy, &reconfigure("books-ms", &["--port", "8080"]), &[]).await)
            .expect("JSON");
    let warnings = answer["Warnings"].to_string();
    assert!(warnings.contains("port=8080 is ignored and not stored"), "{answer}");
    let stored = consul.kv_get("docker-flow/services/books-ms").await.expect("stored");
    let stored: Value = serde_json::from_str(&stored).expect("stored JSON");
    assert!(stored.get("port").is_none(), "port must not be stored: {stored}");
    assert_eq!(proxy.get("/api/v1/books").await, (200, "books-1".to_owned()));

    // A typo on the routed path: the real problem (Consul never heard of it), not a 409.
    let out = proxy.cli(&reconfigure("bokos-ms", &[])).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"bokos-ms\" is unknown to Consul") && err.contains("404"), "{err}");
    assert!(!err.contains("already routed"), "{err}");
    // A real conflict is still a 409.
    consul.register("authors-ms", "authors-1", books.port(), None).await;
    let out = proxy.cli(&reconfigure("authors-ms", &[])).await;
    assert!(
        stderr(&out).contains("already routed") && stderr(&out).contains("409"),
        "{}",
        stderr(&out)
    );

    // The same name in another case is the same service: no second route, no 409.
    let answer: Value =
        serde_json::from_str(&ok(&proxy, &reconfigure("Books-MS", &[]), &[]).await).expect("JSON");
    assert_eq!(answer["ServiceName"], "books-ms", "the name first given stays: {answer}");
    let config = proxy.config().await;
    assert_eq!(config["Services"].as_array().map(Vec::len), Some(1), "{config}");
    assert_eq!(config["Services"][0]["ServiceName"], "books-ms", "{config}");
    assert!(consul.kv_get("docker-flow/services/Books-MS").await.is_none(), "one store key");
    ok(&proxy, &["remove", "--service-name", "BOOKS-ms"], &[]).await;
    assert!(consul.kv_get("docker-flow/services/books-ms").await.is_none(), "removed");
    assert_eq!(proxy.get("/api/v1/books").await.0, 404);
}

#[tokio::test]
async fn standalone_unknown_names_point_at_dns_not_registrator() {
    let proxy = Proxy::start(None, &[]).await;
    let out = proxy
        .cli(&[
            "reconfigure",
            "--service-name",
            "no-such-service.invalid",
            "--service-path",
            "/x",
            "--port",
            "8080",
        ])
        .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unknown to DNS") && err.contains("serviceName:port"), "{err}");
    assert!(!err.contains("Registrator"), "{err}");
}

/// The value of the sample `series` (name and labels, exactly) in `/metrics`, if present.
async fn sample(proxy: &Proxy, series: &str) -> Option<u64> {
    let text =
        proxy.client().get(proxy.admin_url("/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `series` reads `value` (an exchange is counted as it ends, which may be just
/// after its client has the answer), and checks it stays there rather than overshoots.
async fn expect_sample(proxy: &Proxy, series: &str, value: u64) {
    let what = format!("{series} to be {value}");
    let got = eventually(Duration::from_secs(5), &what, || async {
        sample(proxy, series).await.filter(|n| *n >= value)
    })
    .await;
    assert_eq!(got, value, "{series}");
}

#[tokio::test]
async fn metrics_count_the_proxys_own_answers_and_keep_removed_services() {
    let web = Upstream::start("web-1").await;
    let proxy = Proxy::start(None, &[]).await;
    let no_route = r#"dfp_proxy_responses_total{status="404",reason="no_route"}"#;
    let bad_request = r#"dfp_proxy_responses_total{status="400",reason="bad_request"}"#;
    let unreachable = r#"dfp_proxy_responses_total{status="502",reason="upstream_unreachable"}"#;
    assert_eq!(sample(&proxy, no_route).await, Some(0), "every series exists from start");

    // Two requests no route owns, one without Host.
    assert_eq!(proxy.get("/nothing").await.0, 404);
    assert_eq!(proxy.get("/nothing/either").await.0, 404);
    let answer = crate::support::raw_http(proxy.addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    expect_sample(&proxy, no_route, 2).await;
    expect_sample(&proxy, bad_request, 1).await;

    // A service whose only instance is gone: the proxy's 502, counted with its reason.
    let dead = free_port();
    let (status, _) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/dead&port={dead}"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(proxy.get("/dead").await.0, 502);
    expect_sample(&proxy, unreachable, 1).await;

    // A service's counters outlive its removal, and resume when it is routed again.
    proxy.route_all_to_port(web.port()).await; // replaces /dead with / for 127.0.0.1
    for _ in 0..3 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    let ok_series = r#"dfp_requests_total{service="127.0.0.1",class="2xx"}"#;
    let bad_series = r#"dfp_requests_total{service="127.0.0.1",class="5xx"}"#;
    expect_sample(&proxy, ok_series, 3).await;
    let (status, _) = proxy.admin("/v1/docker-flow-proxy/remove?serviceName=127.0.0.1").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&proxy, ok_series).await, Some(3), "a removed service's series stays");
    assert_eq!(sample(&proxy, bad_series).await, Some(1));
    proxy.route_all_to_port(web.port()).await;
    assert_eq!(proxy.get("/").await.0, 200);
    expect_sample(&proxy, ok_series, 4).await; // resumed, not restarted from 0
}
