//! `verifyClientSsl` with `--client-ca` (issue 14): a service that asks for client
//! certificates answers 403 to requests without one verified against the CA bundle, over
//! plain HTTP/1.1, HTTP/1.1 over TLS and HTTP/2; services that do not ask are reached
//! without one; a certificate from another CA fails the TLS handshake itself (the verifier
//! refuses it, so no request is ever read on that connection); a proxy without
//! `--client-ca` refuses the option with a 400 that changes nothing.

use std::time::Duration;

use crate::support::{Proxy, Scratch, Upstream};
use crate::tls::{https, tls_addr, upload, Ca};

const HOST: &str = "shop.example";

/// HTTPS clients for [`HOST`] trusting `server_ca`, presenting `identity` (PEM: certificate
/// and key) if any: (HTTP/1.1 only, HTTP/2).
fn clients(proxy: &Proxy, server_ca: &Ca, identity: Option<&str>) -> [reqwest::Client; 2] {
    let _ = rustls::crypto::ring::default_provider().install_default();
    [true, false].map(|http1_only| {
        let root = reqwest::Certificate::from_pem(server_ca.pem().as_bytes()).expect("CA PEM");
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .tls_certs_only([root])
            .resolve(HOST, tls_addr(proxy));
        if let Some(identity) = identity {
            builder = builder
                .identity(reqwest::Identity::from_pem(identity.as_bytes()).expect("identity"));
        }
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().expect("client builds")
    })
}

/// The statuses of `GET /` over HTTP/1.1 and HTTP/2 over TLS (each checked to have used its
/// protocol); `None` where the request failed (a refused handshake).
async fn statuses(clients: &[reqwest::Client; 2], proxy: &Proxy) -> [Option<u16>; 2] {
    let mut out = [None; 2];
    for ((slot, client), version) in
        out.iter_mut().zip(clients).zip([reqwest::Version::HTTP_11, reqwest::Version::HTTP_2])
    {
        if let Ok(response) = client.get(https(proxy, HOST, "/")).send().await {
            assert_eq!(response.version(), version);
            *slot = Some(response.status().as_u16());
        }
    }
    out
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

fn route(web: &Upstream, options: &str) -> String {
    format!(
        "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}{options}",
        web.port()
    )
}

#[tokio::test]
async fn verify_client_ssl_needs_a_certificate_from_the_client_ca() {
    let scratch = Scratch::new();
    let server_ca = Ca::new();
    let client_ca = Ca::new();
    let ca_file = scratch.path("client-ca.pem");
    std::fs::write(&ca_file, client_ca.pem()).expect("write the CA bundle");
    let state = format!("--state-file={}", scratch.path("state.json").display());
    let ca_flag = format!("--client-ca={}", ca_file.display());
    let mut proxy = Proxy::start(None, &[&state, &ca_flag]).await;
    assert_eq!(upload(&proxy, "shop", &server_ca.issue(&[HOST]).pem).await.0, 200);
    let web = Upstream::start("web-1").await;

    let (status, answer) = proxy.admin(&route(&web, "&verifyClientSsl=true")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.config().await["Services"][0]["VerifyClientSsl"], true);

    let alice = client_ca.issue_client("alice");
    let with_cert = clients(&proxy, &server_ca, Some(&alice.pem));
    let without = clients(&proxy, &server_ca, None);
    let stranger = Ca::new().issue_client("mallory");
    let foreign = clients(&proxy, &server_ca, Some(&stranger.pem));
    assert_eq!(statuses(&with_cert, &proxy).await, [Some(200); 2]);
    assert_eq!(statuses(&without, &proxy).await, [Some(403); 2]);
    // Another CA's certificate: the handshake is refused, no request is read.
    assert_eq!(statuses(&foreign, &proxy).await, [None; 2]);
    // Plain HTTP never carries a client certificate.
    assert_eq!(proxy.get("/").await.0, 403);
    assert_eq!(own_answers(&proxy, "client_cert_required").await, 3);
    assert_eq!(web.hits(), 2, "refused requests never reach the instance");

    let (status, answer) = proxy.admin(&route(&web, "&verifyClientSsl=maybe")).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["Message"].as_str().is_some_and(|m| m.contains("verifyClientSsl")), "{answer}");
    assert_eq!(statuses(&without, &proxy).await, [Some(403); 2], "a refused call changes nothing");

    // Restored from the state file.
    assert!(proxy.terminate().await.success());
    proxy = Proxy::start(None, &[&state, &ca_flag]).await;
    let with_cert = clients(&proxy, &server_ca, Some(&alice.pem));
    let without = clients(&proxy, &server_ca, None);
    assert_eq!(statuses(&with_cert, &proxy).await, [Some(200); 2]);
    assert_eq!(statuses(&without, &proxy).await, [Some(403); 2]);

    // A service without the option: reached with or without a certificate.
    let (status, answer) = proxy.admin(&route(&web, "")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&without, &proxy).await, [Some(200); 2]);
    assert_eq!(statuses(&with_cert, &proxy).await, [Some(200); 2]);
    assert_eq!(proxy.get("/").await.0, 200);
    assert!(proxy.config().await["Services"][0].get("VerifyClientSsl").is_none());
}

#[tokio::test]
async fn verify_client_ssl_without_a_client_ca_is_refused() {
    let proxy = Proxy::start(None, &[]).await;
    let web = Upstream::start("web-1").await;
    let (status, answer) = proxy.admin(&route(&web, "&verifyClientSsl=true")).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("--client-ca") && message.contains("verifyClientSsl"), "{message}");
    assert_eq!(proxy.config().await["Services"], serde_json::json!([]), "nothing was routed");
    // false is fine without a CA.
    let (status, answer) = proxy.admin(&route(&web, "&verifyClientSsl=false")).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_client_ca_file_that_is_not_a_bundle_stops_the_server() {
    let scratch = Scratch::new();
    let bad = scratch.path("bad.pem");
    std::fs::write(&bad, "not a certificate").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_docker-flow-proxy"))
        .args(["server", "--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0", "--tls-listen=off"])
        .arg(format!("--state-file={}", scratch.path("state.json").display()))
        .arg(format!("--client-ca={}", bad.display()))
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--client-ca") && stderr.contains("CERTIFICATE"), "{stderr}");
}
