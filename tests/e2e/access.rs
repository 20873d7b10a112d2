//! Access rules per service (issue 14): `allowedMethods`/`deniedMethods`, `denyHttp`,
//! `allowedSources`/`deniedSources` with `--trusted-proxies`, and Consul's `serviceColor`.
//!
//! Each rule is checked over the three ways a client reaches the proxy (plain HTTP/1.1,
//! HTTP/1.1 over TLS, HTTP/2 over TLS), which must give the same answer since both engines
//! call the one `rules::admit`; then that a bad value is a 400 that leaves the live table
//! alone, and that the rule survives a restart (state file, or Consul KV for colors).

use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, Consul, Load, Proxy, Scratch, Upstream};
use crate::tls::{https, upload, Ca};

const HOST: &str = "shop.example";

/// A standalone proxy with a certificate for [`HOST`], its state file kept in `scratch`.
struct Setup {
    proxy: Proxy,
    ca: Ca,
    web: Upstream,
}

impl Setup {
    async fn start(scratch: &Scratch, extra: &[&str]) -> Setup {
        let state = format!("--state-file={}", scratch.path("state.json").display());
        let mut args = vec![state.as_str()];
        args.extend_from_slice(extra);
        let proxy = Proxy::start(None, &args).await;
        let ca = Ca::new();
        assert_eq!(upload(&proxy, "shop", &ca.issue(&[HOST]).pem).await.0, 200);
        Setup { proxy, ca, web: Upstream::start("web-1").await }
    }

    /// Routes `/` to the instance with `options` (a query string tail such as `&denyHttp=true`).
    async fn route(&self, options: &str) -> (u16, Value) {
        self.proxy
            .admin(&format!(
                "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}{options}",
                self.web.port()
            ))
            .await
    }

    /// Restarts the proxy on the same state file (routes and certificate restored).
    async fn restart(&mut self, scratch: &Scratch, extra: &[&str]) {
        assert!(self.proxy.terminate().await.success());
        let state = format!("--state-file={}", scratch.path("state.json").display());
        let mut args = vec![state.as_str()];
        args.extend_from_slice(extra);
        self.proxy = Proxy::start(None, &args).await;
    }

    /// The status of `method /` with `headers`, over plain HTTP/1.1, HTTPS HTTP/1.1 and
    /// HTTP/2 over TLS, in that order (each checked to have used that protocol).
    async fn statuses(&self, method: &str, headers: &[(&str, &str)]) -> [u16; 3] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let plain = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .resolve(HOST, self.proxy.addr)
            .build()
            .expect("client builds");
        let targets = [
            (
                plain,
                format!("http://{HOST}:{}/", self.proxy.addr.port()),
                reqwest::Version::HTTP_11,
            ),
            (
                self.ca.client(&self.proxy, &[HOST], true),
                https(&self.proxy, HOST, "/"),
                reqwest::Version::HTTP_11,
            ),
            (
                self.ca.client(&self.proxy, &[HOST], false),
                https(&self.proxy, HOST, "/"),
                reqwest::Version::HTTP_2,
            ),
        ];
        let mut out = [0; 3];
        for (slot, (client, url, version)) in out.iter_mut().zip(targets) {
            let mut request = client.request(method.clone(), url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.expect("the proxy answers");
            assert_eq!(response.version(), version);
            *slot = response.status().as_u16();
        }
        out
    }

    /// The live service as `config` shows it, and the table version.
    async fn live(&self) -> (Value, Value) {
        let config = self.proxy.config().await;
        (config["Services"][0].clone(), config["TableVersion"].clone())
    }

    /// A bad value is a 400 naming the parameter and the bad entry; the table is unchanged.
    async fn refused(&self, options: &str, needles: &[&str]) {
        let before = self.live().await;
        let (status, answer) = self.route(options).await;
        assert_eq!(status, 400, "{options}: {answer}");
        let message = answer["Message"].as_str().expect("a message");
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
        assert_eq!(self.live().await, before, "a refused call changed the table");
    }
}

async fn own_answers(proxy: &Proxy, reason: &str) -> u64 {
    let text = crate::support::http_client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics body");
    let series = format!("dfp_proxy_responses_total{{status=\"403\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

#[tokio::test]
async fn methods_are_allowed_and_denied_alike_over_every_transport() {
    let scratch = Scratch::new();
    let mut setup = Setup::start(&scratch, &[]).await;
    let (status, answer) =
        setup.route("&allowedMethods=get,POST,DELETE&deniedMethods=DELETE").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(setup.statuses("GET", &[]).await, [200; 3]);
    assert_eq!(setup.statuses("PUT", &[]).await, [403; 3], "not allowed");
    assert_eq!(setup.statuses("DELETE", &[]).await, [403; 3], "denied wins over allowed");
    assert_eq!(setup.web.hits(), 3, "refused requests never reach the instance");
    assert_eq!(own_answers(&setup.proxy, "forbidden_method").await, 6);
    let (service, _) = setup.live().await;
    assert_eq!(service["AllowedMethods"], serde_json::json!(["GET", "POST", "DELETE"]));
    assert_eq!(service["DeniedMethods"], serde_json::json!(["DELETE"]));

    setup.refused("&allowedMethods=GET,GE%20T", &["allowedMethods", "GE T"]).await;

    // Restored from the state file.
    setup.restart(&scratch, &[]).await;
    assert_eq!(setup.statuses("PUT", &[]).await, [403; 3]);
    assert_eq!(setup.statuses("POST", &[]).await, [200; 3]);
}

#[tokio::test]
async fn deny_http_refuses_plain_http_and_serves_https() {
    let scratch = Scratch::new();
    let mut setup = Setup::start(&scratch, &["--trust-forwarded-proto"]).await;
    let (status, answer) = setup.route("&denyHttp=true&httpsOnly=true").await;
    assert_eq!(status, 200, "{answer}");
    // denyHttp wins over httpsOnly's redirect.
    assert_eq!(setup.statuses("GET", &[]).await, [403, 200, 200]);
    // A trusted balancer that terminated TLS says so.
    assert_eq!(setup.statuses("GET", &[("X-Forwarded-Proto", "https")]).await, [200; 3]);
    assert_eq!(own_answers(&setup.proxy, "http_denied").await, 1);
    assert_eq!(setup.live().await.0["DenyHttp"], true);

    setup.refused("&denyHttp=maybe", &["denyHttp", "maybe", "true or false"]).await;

    setup.restart(&scratch, &[]).await;
    assert_eq!(setup.statuses("GET", &[]).await, [403, 200, 200]);
    // Without --trust-forwarded-proto the header proves nothing.
    assert_eq!(setup.statuses("GET", &[("X-Forwarded-Proto", "https")]).await, [403, 200, 200]);
}

#[tokio::test]
async fn source_lists_check_the_peer_alike_over_every_transport() {
    let scratch = Scratch::new();
    let mut setup = Setup::start(&scratch, &[]).await;
    // The tests' client is 127.0.0.1.
    let cases: [(&str, [u16; 3]); 5] = [
        ("&allowedSources=10.0.0.0/8,::1", [403; 3]),
        ("&allowedSources=127.0.0.0/8", [200; 3]),
        ("&allowedSources=127.0.0.0/8&deniedSources=127.0.0.1", [403; 3]),
        ("&deniedSources=192.0.2.0/24,2001:db8::/32", [200; 3]),
        ("&allowedSources=::ffff:127.0.0.0/104", [200; 3]),
    ];
    for (options, expected) in cases {
        let (status, answer) = setup.route(options).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(setup.statuses("GET", &[]).await, expected, "{options}");
    }
    // Not behind a trusted proxy: X-Forwarded-For proves nothing.
    setup.route("&allowedSources=10.0.0.0/8").await;
    assert_eq!(setup.statuses("GET", &[("X-Forwarded-For", "10.1.2.3")]).await, [403; 3]);
    assert_eq!(own_answers(&setup.proxy, "forbidden_source").await, 9);
    assert_eq!(setup.live().await.0["AllowedSources"], serde_json::json!(["10.0.0.0/8"]));

    setup.refused("&allowedSources=10.0.0.0/8,10.0.0.300", &["allowedSources", "10.0.0.300"]).await;
    setup.refused("&deniedSources=10.1.0.0/8", &["deniedSources", "10.1.0.0/8", "host bits"]).await;

    // Restarted behind a trusted balancer (127.0.0.1): the right-most untrusted entry counts.
    setup.restart(&scratch, &["--trusted-proxies=127.0.0.1/32"]).await;
    assert_eq!(setup.statuses("GET", &[]).await, [403; 3], "the balancer itself");
    let forwarded = [("X-Forwarded-For", "10.1.2.3")];
    assert_eq!(setup.statuses("GET", &forwarded).await, [200; 3]);
    let forged = [("X-Forwarded-For", "10.1.2.3, 192.0.2.7, 127.0.0.1")];
    assert_eq!(setup.statuses("GET", &forged).await, [403; 3], "a forged left entry is skipped");
}

#[tokio::test]
async fn a_bad_trusted_proxies_flag_stops_the_start_with_a_message() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_docker-flow-proxy"))
        .args(["server", "--listen=127.0.0.1:0", "--trusted-proxies=10.0.0.0/33"])
        .output()
        .await
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("10.0.0.0/33"), "{stderr}");
}

#[tokio::test]
async fn service_color_is_refused_standalone_with_a_reason() {
    let scratch = Scratch::new();
    let setup = Setup::start(&scratch, &[]).await;
    assert_eq!(setup.route("").await.0, 200);
    setup.refused("&serviceColor=blue", &["serviceColor", "--consul-address"]).await;
}

#[tokio::test]
async fn service_color_switches_blue_to_green_with_no_failed_request() {
    let consul = Consul::start().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    consul.register("books-blue", "books-blue-1", blue.port(), None).await;
    consul.register("books-green", "books-green-1", green.port(), None).await;
    let mut proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let call = |color: &str| {
        format!("/v1/docker-flow-proxy/reconfigure?serviceName=books&servicePath=/books&serviceColor={color}")
    };
    let (status, answer) = proxy.admin(&call("blue")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.get("/books").await, (200, "blue".to_owned()));
    let config = proxy.config().await;
    assert_eq!(config["Services"][0]["ServiceName"], "books", "the route keeps the name");
    assert_eq!(config["Services"][0]["ServiceColor"], "blue");

    // A color nobody registered: 404 naming it, and blue keeps serving.
    let (status, answer) = proxy.admin(&call("red")).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["Message"].as_str().is_some_and(|m| m.contains("books-red")), "{answer}");
    assert_eq!(proxy.get("/books").await, (200, "blue".to_owned()));

    // The switch, under load: one call, every request answered.
    let load = Load::start(proxy.url("/books"));
    eventually(Duration::from_secs(5), "blue to serve the load", || {
        let hits = blue.hits();
        async move { (hits > 5).then_some(()) }
    })
    .await;
    let (status, answer) = proxy.admin(&call("green")).await;
    assert_eq!(status, 200, "{answer}");
    let green_before = green.hits();
    eventually(Duration::from_secs(5), "green to serve the load", || {
        let hits = green.hits();
        async move { (hits > green_before + 5).then_some(()) }
    })
    .await;
    let report = load.stop().await;
    assert!(report.failed.is_empty(), "failed requests: {:?}", report.failed);
    assert!(report.ok > 10, "{report:?}");
    let blue_after = blue.hits();
    assert_eq!(proxy.get("/books").await, (200, "green".to_owned()));
    assert_eq!(blue.hits(), blue_after, "blue gets nothing after the switch");

    // Stored in Consul KV and restored by a restarted proxy.
    assert!(consul
        .kv_get("docker-flow/services/books")
        .await
        .is_some_and(|stored| stored.contains("serviceColor") && stored.contains("green")));
    assert!(proxy.terminate().await.success());
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    eventually(Duration::from_secs(5), "the restored green route", || async {
        (proxy.get("/books").await == (200, "green".to_owned())).then_some(())
    })
    .await;
    // Consul changes to the colored registration still reach the route.
    let green_2 = Upstream::start("green").await;
    consul.register("books-green", "books-green-2", green_2.port(), None).await;
    eventually(Duration::from_secs(5), "the new green instance to be routed", || async {
        let config = proxy.config().await;
        let count = config["Services"][0]["Instances"].as_array().map_or(0, Vec::len);
        (count == 2).then_some(())
    })
    .await;
}
