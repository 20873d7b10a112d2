//! Routing conditions (issue 14): Docker Flow Proxy's `pathType` (`path_beg`, `path`,
//! `path_end`, `path_reg`), `serviceHeader` and `userAgent`, through the real binary.
//!
//! Several services share one path with different conditions; each request is sent over
//! plain HTTP/1.1, HTTP/1.1 over TLS and HTTP/2 over TLS, which must be routed alike since
//! both engines call the one `rules::route`. Then: a route with the same path and the same
//! conditions as another service's is a 409 that changes nothing, a bad condition is a 400,
//! and the routes survive a restart on the same state file.

use std::time::Duration;

use crate::support::{Proxy, Scratch, Upstream};
use crate::tls::{https, upload, Ca};

const HOST: &str = "shop.example";

/// Standalone service names that all resolve to 127.0.0.1 (each a service of its own).
const LOOPBACK_NAMES: [&str; 8] =
    ["127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0x7f.1", "0177.1", "0177.0.1"];

/// A standalone proxy with a certificate for [`HOST`], its state file in `scratch`.
struct Setup {
    proxy: Proxy,
    ca: Ca,
}

impl Setup {
    async fn start(scratch: &Scratch) -> Setup {
        let state = format!("--state-file={}", scratch.path("state.json").display());
        let proxy = Proxy::start(None, &[state.as_str()]).await;
        let ca = Ca::new();
        assert_eq!(upload(&proxy, "shop", &ca.issue(&[HOST]).pem).await.0, 200);
        Setup { proxy, ca }
    }

    async fn reconfigure(&self, query: &str) -> (u16, serde_json::Value) {
        self.proxy.admin(&format!("/v1/docker-flow-proxy/reconfigure?{query}")).await
    }

    /// `(status, body)` of `GET path` with `headers`, over plain HTTP/1.1, HTTP/1.1 over TLS
    /// and HTTP/2 over TLS; asserts the three agree and returns the one answer.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let plain = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .resolve(HOST, self.proxy.addr)
            .build()
            .expect("client builds");
        let targets = [
            (
                plain,
                format!("http://{HOST}:{}{path}", self.proxy.addr.port()),
                reqwest::Version::HTTP_11,
            ),
            (self.ca.client(&self.proxy, &[HOST], true), https(&self.proxy, HOST, path), {
                reqwest::Version::HTTP_11
            }),
            (self.ca.client(&self.proxy, &[HOST], false), https(&self.proxy, HOST, path), {
                reqwest::Version::HTTP_2
            }),
        ];
        let mut answers = Vec::new();
        for (client, url, version) in targets {
            let mut request = client.get(&url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.expect("the proxy answers");
            assert_eq!(response.version(), version, "{url}");
            let status = response.status().as_u16();
            let body =
                if status == 200 { response.text().await.expect("body") } else { String::new() };
            answers.push((status, body));
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "engines differ on {path} {headers:?}: {answers:?}"
        );
        answers.swap_remove(0)
    }
}

/// The services of the main test: (name in the answers, reconfigure options).
const ROUTES: [(&str, &str); 8] = [
    ("api", "servicePath=/api"),
    ("mobile", "servicePath=/api&userAgent=iphone,android"),
    ("v3", "servicePath=/api&serviceHeader=X-Version:3"),
    ("raw", "servicePath=/api/v&pathType=path_beg"),
    ("exact", "servicePath=/api/status&pathType=path"),
    ("images", "servicePath=.png&pathType=path_end"),
    ("numbers", "servicePath=%5E/n/%5B0-9%5D%2B%24&pathType=path_reg"),
    ("web", "servicePath=/"),
];

/// Routes [`ROUTES`], each to its own upstream (answering its name), on one proxy.
async fn route_all(setup: &Setup) -> Vec<Upstream> {
    let mut upstreams = Vec::new();
    for ((name, options), service) in ROUTES.iter().zip(LOOPBACK_NAMES) {
        let upstream = Upstream::start(name).await;
        let (status, answer) = setup
            .reconfigure(&format!("serviceName={service}&port={}&{options}", upstream.port()))
            .await;
        assert_eq!(status, 200, "{name}: {answer}");
        upstreams.push(upstream);
    }
    upstreams
}

/// Request fields as (name, value).
type Fields<'a> = &'a [(&'a str, &'a str)];

/// What each request gets: (path, fields, the service's name).
async fn check_routing(setup: &Setup) {
    #[rustfmt::skip]
    let cases: &[(&str, Fields<'_>, &str)] = &[
        ("/api/x", &[], "api"),
        ("/api/x", &[("User-Agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)")], "mobile"),
        ("/api/x", &[("User-Agent", "curl/8")], "api"),
        ("/api/x", &[("X-Version", "3")], "v3"),
        ("/api/x", &[("X-Version", "4")], "api"),
        ("/api/v2/books", &[], "raw"),
        ("/api/status", &[], "exact"),
        ("/api/status/x", &[], "api"),
        ("/logo.png", &[], "images"),
        ("/api/logo.png", &[], "api"),
        ("/n/42", &[], "numbers"),
        ("/n/42x", &[], "web"),
        ("/other", &[], "web"),
    ];
    for (path, headers, want) in cases {
        let (status, body) = setup.get(path, headers).await;
        assert_eq!((status, body.as_str()), (200, *want), "{path} {headers:?}");
    }
}

#[tokio::test]
async fn conditions_choose_among_services_on_one_path_in_both_engines() {
    let scratch = Scratch::new();
    let setup = Setup::start(&scratch).await;
    let _upstreams = route_all(&setup).await;
    check_routing(&setup).await;

    let config = setup.proxy.config().await;
    let services = config["Services"].as_array().expect("services").clone();
    let shown = |key: &str, value: serde_json::Value| {
        assert!(services.iter().any(|s| s[key] == value), "{key}={value} not in {config}");
    };
    shown("UserAgent", serde_json::json!(["android", "iphone"]));
    shown("ServiceHeader", serde_json::json!(["x-version:3"]));
    shown("PathType", serde_json::json!("path_reg"));
    shown("ServicePath", serde_json::json!(["^/n/[0-9]+$"]));
}

#[tokio::test]
async fn only_conditioned_routes_on_a_path_miss_with_404() {
    let scratch = Scratch::new();
    let setup = Setup::start(&scratch).await;
    let bots = Upstream::start("bots").await;
    let query =
        format!("serviceName=127.0.0.1&port={}&servicePath=/api&userAgent=googlebot", bots.port());
    assert_eq!(setup.reconfigure(&query).await.0, 200);
    assert_eq!(setup.get("/api", &[("User-Agent", "Googlebot/2.1")]).await, (200, "bots".into()));
    assert_eq!(setup.get("/api", &[("User-Agent", "curl/8")]).await.0, 404);
}

#[tokio::test]
async fn same_path_same_conditions_is_a_conflict_and_bad_conditions_a_400() {
    let scratch = Scratch::new();
    let setup = Setup::start(&scratch).await;
    let first = Upstream::start("first").await;
    let query = |service: &str, options: &str| {
        format!("serviceName={service}&port={}&servicePath=/api&{options}", first.port())
    };
    assert_eq!(setup.reconfigure(&query("127.0.0.1", "userAgent=iphone")).await.0, 200);
    let before = setup.proxy.config().await;

    // The same conditions, written differently, for another service: 409.
    let (status, answer) = setup.reconfigure(&query("127.1", "userAgent=IPhone")).await;
    assert_eq!(status, 409, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("/api (userAgent=iphone)"), "{message}");
    // Bad values: 400, naming what was wrong.
    for (options, needle) in [
        ("pathType=path_sub", "pathType"),
        ("pathType=path_reg&servicePath=(", "regular expression"),
        ("serviceHeader=X-Version", "serviceHeader"),
    ] {
        let (status, answer) = setup.reconfigure(&query("127.1", options)).await;
        assert_eq!(status, 400, "{options}: {answer}");
        assert!(answer["Message"].as_str().unwrap_or_default().contains(needle), "{answer}");
    }
    assert_eq!(setup.proxy.config().await, before, "nothing changed");
    assert_eq!(setup.get("/api", &[("User-Agent", "iphone")]).await, (200, "first".into()));

    // Other conditions on the same path are not a conflict.
    assert_eq!(setup.reconfigure(&query("127.1", "serviceHeader=X-V:1")).await.0, 200);
}

#[tokio::test]
async fn conditions_survive_a_restart() {
    let scratch = Scratch::new();
    let mut setup = Setup::start(&scratch).await;
    let _upstreams = route_all(&setup).await;
    let before = setup.proxy.config().await["Services"].clone();
    assert!(setup.proxy.terminate().await.success());
    let state = format!("--state-file={}", scratch.path("state.json").display());
    setup.proxy = Proxy::start(None, &[state.as_str()]).await;
    assert_eq!(upload(&setup.proxy, "shop", &setup.ca.issue(&[HOST]).pem).await.0, 200);
    assert_eq!(setup.proxy.config().await["Services"], before, "restored as configured");
    check_routing(&setup).await;
}
