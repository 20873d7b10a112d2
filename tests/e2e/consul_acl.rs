//! A Consul cluster with ACLs on (default deny): the proxy sends `CONSUL_HTTP_TOKEN` (or the
//! token of `CONSUL_HTTP_TOKEN_FILE`) on every call, routes and stores with a token holding the
//! README's policy, and refuses a reconfigure with a 503 naming the missing rule otherwise,
//! routing nothing.

use serde_json::Value;

use crate::support::{Consul, Proxy, Scratch, Upstream};

const MASTER: &str = "root-token";

const WEB: &str = "/v1/docker-flow-proxy/reconfigure?serviceName=web&servicePath=/web";

/// The ```hcl block of README.md's "Consul ACLs" section: the policy operators are told to
/// grant is the one these tests grant.
fn readme_policy() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md is readable");
    let section = readme.split("### Consul ACLs").nth(1).expect("README has a Consul ACLs section");
    let block = section.split("```hcl\n").nth(1).expect("the section has an hcl block");
    block.split("```").next().expect("the block ends").to_owned()
}

/// A Consul with ACLs on and `web` registered (with the master token) at a real instance.
async fn cluster() -> (Consul, Upstream) {
    let consul = Consul::start_with_acl(MASTER).await;
    let web = Upstream::start("web-1").await;
    consul.register("web", "web-1", web.port(), None).await;
    (consul, web)
}

async fn start_proxy(consul: &Consul, env: &[(&str, &str)]) -> Proxy {
    Proxy::start_with_env(Some(&consul.url()), &[], env, "info").await
}

fn message(answer: &Value) -> String {
    answer["Message"].as_str().unwrap_or_default().to_owned()
}

/// Routed, stored in KV, and no sign of the token in the log.
async fn routes_and_stores(consul: &Consul, proxy: &Proxy, token: &str) {
    let (status, answer) = proxy.admin(WEB).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["Instances"].as_array().map(Vec::len), Some(1), "{answer}");
    let (status, body) = proxy.get("/web").await;
    assert_eq!((status, body.contains("web-1")), (200, true), "{body}");
    let stored = consul.kv_get("docker-flow/services/web").await.expect("the route is in KV");
    assert!(stored.contains("\"/web\""), "{stored}");
    let config = proxy.config().await;
    assert_eq!(config["Consul"]["Reachable"], true, "{config}");
    assert!(!proxy.log().contains(token), "the token never reaches the log");
}

#[tokio::test]
async fn a_token_with_the_readme_policy_routes_and_stores() {
    let (consul, _web) = cluster().await;
    let token = consul.create_token("dfp", &readme_policy()).await;
    let proxy = start_proxy(&consul, &[("CONSUL_HTTP_TOKEN", &token)]).await;
    routes_and_stores(&consul, &proxy, &token).await;
}

#[tokio::test]
async fn a_token_file_works_as_the_variable() {
    let (consul, _web) = cluster().await;
    let token = consul.create_token("dfp", &readme_policy()).await;
    let scratch = Scratch::new();
    let file = scratch.path("consul-token");
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let file = file.to_str().expect("utf-8 path").to_owned();
    let proxy = start_proxy(&consul, &[("CONSUL_HTTP_TOKEN_FILE", &file)]).await;
    routes_and_stores(&consul, &proxy, &token).await;
}

#[tokio::test]
async fn a_refused_reconfigure_is_a_503_naming_the_rule_and_routes_nothing() {
    let (consul, _web) = cluster().await;
    let read_only = consul
        .create_token(
            "dfp-read-only",
            r#"service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
key_prefix "docker-flow/" { policy = "read" }"#,
        )
        .await;
    // (what, the proxy's environment, what its message must say)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 3] = [
        // Consul finds the service, then refuses the KV write.
        (
            "a token without key:write",
            &[("CONSUL_HTTP_TOKEN", &read_only)],
            "key:write on \"docker-flow/services/web\"",
        ),
        // Consul hides the service from the anonymous token: the proxy asks why.
        ("no token", &[], "no token was given"),
        // Consul refuses every call.
        (
            "an unknown token",
            &[("CONSUL_HTTP_TOKEN", "00000000-0000-0000-0000-000000000000")],
            "Consul knows no such token",
        ),
    ];
    for (what, env, expected) in cases {
        // A refused token does not stop the start (as an unreachable Consul does not).
        let proxy = start_proxy(&consul, env).await;
        let (status, answer) = proxy.admin(WEB).await;
        let msg = message(&answer);
        assert_eq!(status, 503, "{what}: {answer}");
        assert!(msg.contains(expected), "{what}: {msg}");
        assert!(msg.contains("Consul refused"), "{what}: {msg}");
        assert_eq!(proxy.get("/web").await.0, 404, "{what}: nothing is routed");
        assert_eq!(proxy.config().await["Services"], serde_json::json!([]), "{what}");
        let last_error = proxy.config().await["Consul"]["LastError"].clone();
        assert!(last_error.as_str().is_some_and(|e| e.contains(expected)), "{what}: {last_error}");
        assert!(proxy.log().contains(expected), "{what}: the log says it too");
    }
    assert_eq!(consul.kv_get("docker-flow/services/web").await, None, "nothing was stored");
}
