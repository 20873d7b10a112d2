//! Static services from the environment (`DFP_SERVICE_*`, Docker Flow Proxy 1.272): routed at
//! start like a reconfigure, standalone and with Consul; a bad one stops the start and names
//! the variable.

use std::process::Stdio;

use tokio::process::Command;

use crate::support::proxy::{BIN, CREDENTIAL_ENV};
use crate::support::{free_port, Consul, Proxy, Scratch, Upstream};

#[tokio::test]
async fn standalone_static_services_are_routed_at_start() {
    let books = Upstream::start("books-1").await;
    let web = Upstream::start("web-1").await;
    let (books_port, web_port) = (books.port().to_string(), web.port().to_string());
    let env = [
        ("DFP_SERVICE_SERVICE_NAME", "127.0.0.1"),
        ("DFP_SERVICE_SERVICE_PATH", "/api/v1/books"),
        ("DFP_SERVICE_PORT", books_port.as_str()),
        ("DFP_SERVICE_DISTRIBUTE", "true"),
        // Indexed destinations in the environment (`SERVICE_PATH_1` is `servicePath.1`),
        // the unindexed header edit the fallback of both.
        ("DFP_SERVICE_1_SERVICE_NAME", "localhost"),
        ("DFP_SERVICE_1_SERVICE_PATH_1", "/web"),
        ("DFP_SERVICE_1_PORT_1", web_port.as_str()),
        ("DFP_SERVICE_1_SERVICE_PATH_2", "/shop"),
        ("DFP_SERVICE_1_PORT_2", books_port.as_str()),
        ("DFP_SERVICE_1_SET_RES_HEADER", "X-Static yes"),
    ];
    let proxy = Proxy::start_with_env(None, &[], &env, "warn").await;
    assert_eq!(proxy.get("/api/v1/books/1").await, (200, "books-1".to_owned()));
    let answer = proxy.client().get(proxy.url("/web")).send().await.expect("proxy answers");
    assert_eq!(answer.headers()["x-static"], "yes");
    assert_eq!(answer.text().await.expect("body"), "web-1");
    let answer = proxy.client().get(proxy.url("/shop")).send().await.expect("proxy answers");
    assert_eq!(answer.headers()["x-static"], "yes", "the fallback applies to destination 2");
    assert_eq!(answer.text().await.expect("body"), "books-1", "destination 2's own port");
}

#[tokio::test]
async fn consul_static_services_win_over_the_store_and_restart_idempotently() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let key = "docker-flow/services/books-ms";

    // What a reconfigure stored earlier is replaced by the static definition.
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/old")
        .await;
    assert_eq!(status, 200, "{answer}");
    drop(proxy);

    let env =
        [("DFP_SERVICE_SERVICE_NAME", "books-ms"), ("DFP_SERVICE_SERVICE_PATH", "/api/v1/books")];
    let proxy = Proxy::start_with_env(Some(&consul.url()), &[], &env, "warn").await;
    assert_eq!(proxy.get("/api/v1/books").await, (200, "books-1".to_owned()));
    assert_eq!(proxy.get("/old").await.0, 404, "the static definition won");
    let index = consul.kv_modify_index(key).await.expect("the static service is stored");
    drop(proxy);

    // Started again with the same variables: same routes, nothing written.
    let proxy = Proxy::start_with_env(Some(&consul.url()), &[], &env, "warn").await;
    assert_eq!(proxy.get("/api/v1/books").await, (200, "books-1".to_owned()));
    assert_eq!(consul.kv_modify_index(key).await, Some(index), "a restart rewrote the store");
}

/// Runs `docker-flow-proxy server` with `env` and returns its exit success and stderr; it
/// must stop by itself (a bad static service stops the start).
async fn start_failing(env: &[(&str, &str)]) -> (bool, String) {
    let scratch = Scratch::new();
    let mut command = Command::new(BIN);
    for name in CREDENTIAL_ENV.into_iter().chain(["CONSUL_ADDRESS"]) {
        command.env_remove(name);
    }
    let run = command
        .args(["server", "--tls-listen=off"])
        .arg(format!("--listen=127.0.0.1:{}", free_port()))
        .arg(format!("--admin-listen=127.0.0.1:{}", free_port()))
        .arg(format!("--state-file={}", scratch.path("state.json").display()))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), run)
        .await
        .expect("the server stops by itself")
        .expect("the binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_bad_static_service_stops_the_start_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("DFP_SERVICE_SERVICE_NAME", "127.0.0.1"), ("DFP_SERVICE_SERVCE_PATH", "/a")],
            "DFP_SERVICE_SERVCE_PATH names no reconfigure parameter",
        ),
        (
            &[
                ("DFP_SERVICE_2_SERVICE_NAME", "127.0.0.1"),
                ("DFP_SERVICE_2_SERVICE_PATH", "/a"),
                ("DFP_SERVICE_2_PORT", "80"),
                ("DFP_SERVICE_2_SRC_PORT", "8080"),
            ],
            "(DFP_SERVICE_2_SRC_PORT): parameter srcPort=\"8080\" is invalid",
        ),
        (
            &[("DFP_SERVICE_SERVICE_NAME", "127.0.0.1"), ("DFP_SERVICE_SERVICE_PATH", "api")],
            "(DFP_SERVICE_SERVICE_PATH): parameter servicePath is invalid",
        ),
        (
            &[("DFP_SERVICE_SERVICE_NAME", "127.0.0.1"), ("DFP_SERVICE_SERVICE_PATH", "/a")],
            "parameter port is missing",
        ),
    ];
    for (env, needle) in cases {
        let (ok, stderr) = start_failing(env).await;
        assert!(!ok, "{env:?} started");
        assert!(stderr.contains(needle), "{env:?}: {stderr}");
    }
}
