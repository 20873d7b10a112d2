//! Standalone mode: no Consul; reconfigure names instances by `port`, resolved by DNS.

use crate::support::{Proxy, Upstream};

#[tokio::test]
async fn standalone_routes_to_the_resolved_name_and_port() {
    let web = Upstream::start("web-1").await;
    let proxy = Proxy::start(None, &[]).await;

    // An IP literal resolves to itself; any DNS name works the same way.
    let out = proxy
        .cli(&[
            "reconfigure",
            "--service-name",
            "127.0.0.1",
            "--service-path",
            "/",
            "--port",
            &web.port().to_string(),
        ])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(proxy.get("/anything").await, (200, "web-1".to_owned()));
    assert_eq!(proxy.config().await["Mode"], "standalone");

    let (status, answer) =
        proxy.admin("/v1/docker-flow-proxy/reconfigure?serviceName=web&servicePath=/web").await;
    assert_eq!(status, 400, "port is required standalone: {answer}");
    assert!(answer["Message"].as_str().unwrap_or_default().contains("port"), "{answer}");

    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=no-such-host.invalid&servicePath=/x&port=80")
        .await;
    assert_eq!(status, 404, "an unresolvable name is unknown: {answer}");
}

/// Without `--state-file` the routes go to the XDG state directory, never the current folder
/// (a proxy started from a checkout used to leave its state in the repository); with no
/// place to put them the server refuses to start and says what to pass.
#[tokio::test]
async fn the_default_state_file_is_in_the_xdg_state_directory() {
    use std::process::Stdio;
    use tokio::process::Command;

    use crate::support::proxy::{BIN, CREDENTIAL_ENV};
    use crate::support::{eventually, free_port, http_client, Scratch};

    let scratch = Scratch::new();
    let cwd = scratch.path("cwd");
    let state_home = scratch.path("state");
    std::fs::create_dir_all(&cwd).expect("scratch dir");
    let (listen, admin) = (free_port(), free_port());
    let mut command = Command::new(BIN);
    for name in CREDENTIAL_ENV.into_iter().chain(["DFP_STATE_FILE", "CONSUL_ADDRESS"]) {
        command.env_remove(name);
    }
    let mut server = command
        .args(["server", "--tls-listen=off"])
        .arg(format!("--listen=127.0.0.1:{listen}"))
        .arg(format!("--admin-listen=127.0.0.1:{admin}"))
        .env("XDG_STATE_HOME", &state_home)
        .env("HOME", scratch.path("home"))
        .current_dir(&cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let client = http_client();
    let reconfigure = format!(
        "http://127.0.0.1:{admin}/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port=9"
    );
    eventually(std::time::Duration::from_secs(20), "the route is accepted", || async {
        let answer = client.get(&reconfigure).send().await.ok()?;
        (answer.status() == 200).then_some(())
    })
    .await;
    let state = std::fs::read_to_string(state_home.join("docker-flow-proxy/state.json"))
        .expect("the route is kept in $XDG_STATE_HOME/docker-flow-proxy/state.json");
    assert!(state.contains("127.0.0.1"), "{state}");
    let left_in_cwd: Vec<_> = std::fs::read_dir(&cwd).expect("cwd readable").collect();
    assert!(left_in_cwd.is_empty(), "nothing is written to the current folder: {left_in_cwd:?}");
    server.kill().await.expect("the server stops");

    // No absolute XDG_STATE_HOME and no absolute HOME: no default, a clear refusal.
    let mut command = Command::new(BIN);
    for name in CREDENTIAL_ENV.into_iter().chain(["DFP_STATE_FILE", "CONSUL_ADDRESS", "HOME"]) {
        command.env_remove(name);
    }
    let out = command
        .args(["server", "--tls-listen=off", "--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0"])
        .env("XDG_STATE_HOME", "relative/dir")
        .current_dir(&cwd)
        .output()
        .await
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no place for the state file: {stderr}");
    assert!(stderr.contains("--state-file") && stderr.contains("XDG_STATE_HOME"), "{stderr}");
}
