//! Optional credentials on the admin API (standalone, no Consul): refused calls answer 401 and
//! change neither the live table nor the store; basic auth, a bearer token and a Docker-secret
//! style password file let calls through; ping and /metrics stay open; the CLI sends
//! credentials from the environment and from flags; contradictory credentials stop the start;
//! an unauthenticated admin API on a non-loopback address is warned about.

use std::time::Duration;

use serde_json::Value;

use crate::support::proxy::{BIN, CREDENTIAL_ENV};
use crate::support::{free_port, Proxy, Scratch, Upstream};

const CONFIG: &str = "/v1/docker-flow-proxy/config";
const BASIC_CHALLENGE: &str = r#"Basic realm="docker-flow-proxy admin""#;
const BEARER_CHALLENGE: &str = r#"Bearer realm="docker-flow-proxy admin""#;
const WARNING: &str = "the admin API is unauthenticated";

/// How a test call authenticates itself.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

/// An admin call: (status, `WWW-Authenticate` values, JSON answer).
async fn call(
    proxy: &Proxy,
    method: reqwest::Method,
    path_and_query: &str,
    auth: Auth<'_>,
) -> (u16, Vec<String>, Value) {
    let mut request = proxy.client().request(method, proxy.admin_url(path_and_query));
    request = match auth {
        Auth::None => request,
        Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
        Auth::Bearer(token) => request.bearer_auth(token),
    };
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    let challenges = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().expect("ASCII challenge").to_owned())
        .collect();
    let body = response.text().await.expect("admin body");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("admin JSON ({e}): {body}"));
    (status, challenges, json)
}

async fn get(proxy: &Proxy, path_and_query: &str, auth: Auth<'_>) -> (u16, Vec<String>, Value) {
    call(proxy, reqwest::Method::GET, path_and_query, auth).await
}

/// Asserts a 401 in the API's NOK shape, with `challenges`, whose message names `needle`.
fn assert_unauthorized(
    (status, got, answer): &(u16, Vec<String>, Value),
    challenges: &[&str],
    needle: &str,
) {
    assert_eq!(*status, 401, "{answer}");
    assert_eq!(got, challenges, "{answer}");
    assert_eq!(answer["Status"], "NOK", "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "message {message:?} should mention {needle:?}");
}

fn reconfigure(port: u16) -> String {
    format!("/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/web&port={port}")
}

#[tokio::test]
async fn basic_auth_is_required_and_a_refused_call_changes_nothing() {
    let web = Upstream::start("web-1").await;
    let scratch = Scratch::new();
    let state = scratch.path("state.json");
    let state_flag = format!("--state-file={}", state.display());
    let proxy =
        Proxy::start(None, &["--admin-user=admin", "--admin-password=s3cret", &state_flag]).await;
    let right = Auth::Basic("admin", "s3cret");
    let stored = || std::fs::read_to_string(&state).ok();

    let (status, _, before) = get(&proxy, CONFIG, right).await;
    assert_eq!(status, 200, "{before}");
    let store_before = stored();

    // Without credentials, with the wrong password, the wrong user, the wrong scheme: 401,
    // and neither the live table nor the state file moves.
    for auth in [
        Auth::None,
        Auth::Basic("admin", "wrong"),
        Auth::Basic("root", "s3cret"),
        Auth::Bearer("s3cret"),
    ] {
        for path in [CONFIG.to_owned(), reconfigure(web.port())] {
            let answer = get(&proxy, &path, auth).await;
            assert_unauthorized(&answer, &[BASIC_CHALLENGE], "--admin-user");
            assert_unauthorized(&answer, &[BASIC_CHALLENGE], "DFP_ADMIN_PASSWORD");
        }
    }
    let upload =
        call(&proxy, reqwest::Method::PUT, "/v1/docker-flow-proxy/cert?certName=x", Auth::None);
    assert_unauthorized(&upload.await, &[BASIC_CHALLENGE], "curl: -u");
    assert_unauthorized(
        &get(&proxy, "/no/such/endpoint", Auth::None).await,
        &[BASIC_CHALLENGE],
        "",
    );
    assert_eq!(get(&proxy, CONFIG, right).await.2, before, "a refused call changed the table");
    assert_eq!(stored(), store_before, "a refused call wrote the store");
    assert_eq!(proxy.get("/web").await.0, 404, "nothing is routed yet");

    // The right credentials: the call goes through as without any.
    let (status, _, answer) = get(&proxy, &reconfigure(web.port()), right).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.get("/web").await, (200, "web-1".to_owned()));
    assert_ne!(stored(), store_before, "an accepted reconfigure is stored");

    // A refused remove leaves the route in place.
    let remove = "/v1/docker-flow-proxy/remove?serviceName=127.0.0.1";
    assert_unauthorized(&get(&proxy, remove, Auth::None).await, &[BASIC_CHALLENGE], "");
    assert_eq!(proxy.get("/web").await, (200, "web-1".to_owned()));
    assert_eq!(get(&proxy, remove, right).await.0, 200);
    assert_eq!(proxy.get("/web").await.0, 404);
}

#[tokio::test]
async fn a_bearer_token_opens_the_api_and_ping_and_metrics_stay_open() {
    let proxy = Proxy::start(None, &["--admin-token=t0ken-123"]).await;

    assert_unauthorized(
        &get(&proxy, CONFIG, Auth::None).await,
        &[BEARER_CHALLENGE],
        "--admin-token",
    );
    assert_unauthorized(
        &get(&proxy, CONFIG, Auth::Bearer("t0ken-12")).await,
        &[BEARER_CHALLENGE],
        "DFP_ADMIN_TOKEN_FILE",
    );
    let (status, _, answer) = get(&proxy, CONFIG, Auth::Bearer("t0ken-123")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["Mode"], "standalone");

    // Open without credentials: liveness for health checks, metrics for scrapers.
    let (status, _, answer) = get(&proxy, "/v1/docker-flow-proxy/ping", Auth::None).await;
    assert_eq!((status, &answer["Status"]), (200, &Value::from("OK")), "{answer}");
    let metrics = proxy.client().get(proxy.admin_url("/metrics")).send().await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.expect("metrics body").contains("dfp_table_version"));
}

#[tokio::test]
async fn with_both_either_credential_works() {
    let proxy =
        Proxy::start(None, &["--admin-user=admin", "--admin-password=pw", "--admin-token=tok"])
            .await;
    assert_unauthorized(
        &get(&proxy, CONFIG, Auth::None).await,
        &[BASIC_CHALLENGE, BEARER_CHALLENGE],
        "Bearer",
    );
    assert_eq!(get(&proxy, CONFIG, Auth::Basic("admin", "pw")).await.0, 200);
    assert_eq!(get(&proxy, CONFIG, Auth::Bearer("tok")).await.0, 200);
    assert_eq!(get(&proxy, CONFIG, Auth::Bearer("pw")).await.0, 401);
}

#[tokio::test]
async fn a_password_file_is_read_like_a_docker_secret() {
    let scratch = Scratch::new();
    let file = scratch.path("admin_password");
    std::fs::write(&file, "s3cret with spaces\n").expect("secret file");
    let file_flag = format!("--admin-password-file={}", file.display());
    let proxy = Proxy::start(None, &["--admin-user=admin", &file_flag]).await;

    assert_eq!(get(&proxy, CONFIG, Auth::Basic("admin", "s3cret with spaces")).await.0, 200);
    assert_eq!(get(&proxy, CONFIG, Auth::Basic("admin", "s3cret with spaces\n")).await.0, 401);
    assert_eq!(get(&proxy, CONFIG, Auth::None).await.0, 401);
}

#[tokio::test]
async fn the_cli_sends_credentials_from_the_environment_and_from_flags() {
    let web = Upstream::start("web-1").await;
    let scratch = Scratch::new();
    let file = scratch.path("admin_token");
    std::fs::write(&file, "tok-from-file\n").expect("token file");
    let file_flag = format!("--admin-token-file={}", file.display());
    let proxy =
        Proxy::start(None, &["--admin-user=admin", "--admin-password=pw", &file_flag]).await;
    let port = web.port().to_string();
    let reconfigure =
        ["reconfigure", "--service-name", "127.0.0.1", "--service-path", "/web", "--port", &port];
    let remove = ["remove", "--service-name", "127.0.0.1"];
    let ok = |out: &std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };

    // Without credentials: exit 1, and the server's message says what to pass.
    let out = proxy.cli(&reconfigure).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401") && stderr.contains("DFP_ADMIN_USER"), "{stderr}");
    assert_eq!(proxy.get("/web").await.0, 404);

    // From the environment, as inside the server's container.
    ok(&proxy
        .cli_with_env(&reconfigure, &[("DFP_ADMIN_USER", "admin"), ("DFP_ADMIN_PASSWORD", "pw")])
        .await);
    assert_eq!(proxy.get("/web").await, (200, "web-1".to_owned()));
    let token_file = file.display().to_string();
    ok(&proxy.cli_with_env(&remove, &[("DFP_ADMIN_TOKEN_FILE", &token_file)]).await);
    assert_eq!(proxy.get("/web").await.0, 404);

    // From flags.
    let with_flags: Vec<&str> =
        reconfigure.iter().copied().chain(["--admin-token", "tok-from-file"]).collect();
    ok(&proxy.cli(&with_flags).await);
    assert_eq!(proxy.get("/web").await, (200, "web-1".to_owned()));
    let with_flags: Vec<&str> =
        remove.iter().copied().chain(["--admin-user=admin", "--admin-password=pw"]).collect();
    ok(&proxy.cli(&with_flags).await);
    assert_eq!(proxy.get("/web").await.0, 404);

    // Wrong credentials are refused; ping needs none but sends them if given.
    let out = proxy.cli(&["ping", "--admin-token", "nope"]).await;
    ok(&out);
    let out = proxy.cli(&["remove", "--service-name", "x", "--admin-token", "nope"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{out:?}");
    ok(&proxy.cli(&["ping"]).await);
}

#[tokio::test]
async fn contradictory_or_empty_credentials_stop_the_start() {
    let scratch = Scratch::new();
    let empty = scratch.path("empty");
    std::fs::write(&empty, "\n").expect("empty secret file");
    let empty = format!("--admin-password-file={}", empty.display());
    let token_file = format!("--admin-token-file={}", scratch.path("token").display());
    std::fs::write(scratch.path("token"), "tok").expect("token file");
    let missing = format!("--admin-token-file={}", scratch.path("missing").display());
    let cases: [(&[&str], &str); 7] = [
        (&["--admin-user=admin"], "DFP_ADMIN_USER) is set without a password"),
        (&["--admin-password=pw"], "without a user"),
        (&["--admin-user=admin", &empty], "password is empty"),
        (&["--admin-user=", "--admin-password=pw"], "user is empty"),
        (&["--admin-token="], "token is empty"),
        (&[&missing], "cannot read"),
        (&["--admin-token=tok", &token_file], "are both set"),
    ];
    let state = format!("--state-file={}", scratch.path("state.json").display());
    for (flags, needle) in cases {
        let mut command = tokio::process::Command::new(BIN);
        for name in CREDENTIAL_ENV {
            command.env_remove(name);
        }
        command
            .args(["server", "--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0"])
            .args(["--tls-listen=off", &state])
            .args(flags)
            .env_remove("CONSUL_ADDRESS")
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .unwrap_or_else(|_| panic!("{flags:?}: the server should refuse to start"))
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} started");
        assert!(stderr.contains(needle), "{flags:?}: {stderr:?} should say {needle:?}");
    }
}

#[tokio::test]
async fn an_unauthenticated_admin_api_beyond_loopback_is_warned_about() {
    let everywhere = format!("--admin-listen=0.0.0.0:{}", free_port());
    let open = Proxy::start(None, &[&everywhere]).await;
    let log = open.log();
    assert_eq!(log.matches(WARNING).count(), 1, "one warning line: {log}");
    assert!(log.contains("DFP_ADMIN_TOKEN"), "the warning says how to protect it: {log}");

    let everywhere = format!("--admin-listen=0.0.0.0:{}", free_port());
    let protected = Proxy::start(None, &[&everywhere, "--admin-token=tok"]).await;
    assert!(!protected.log().contains(WARNING), "{}", protected.log());

    let loopback = Proxy::start(None, &[]).await;
    assert!(!loopback.log().contains(WARNING), "{}", loopback.log());
}
