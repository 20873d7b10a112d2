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
