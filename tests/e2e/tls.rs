//! HTTPS: TLS termination on `--tls-listen` with certificates chosen by SNI, uploaded through
//! the admin API and swapped in without touching open connections; HTTP/2 over TLS; upgrades
//! and graceful shutdown over TLS; the certificates' survival across restarts and their way
//! to other replicas through Consul.
//!
//! Certificates are made here with rcgen: one test CA per test, which the HTTPS clients trust.
//! Which certificate the proxy served is checked by its exact DER, read from a handshake that
//! accepts anything (so that a handshake without SNI can be checked too).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rcgen::date_time_ymd;

use crate::support::{eventually, free_port, Consul, EchoUpgrade, Proxy, Scratch, Upstream};

mod kit;
pub use kit::*;

#[tokio::test]
async fn sni_picks_the_exact_name_then_a_wildcard_then_the_default() {
    let ca = Ca::new();
    let scratch = Scratch::new();
    let dir = scratch.path("certs");
    std::fs::create_dir_all(&dir).expect("certs dir");
    let alpha = ca.issue(&["alpha.example"]);
    let beta = ca.issue(&["beta.example", "www.beta.example"]);
    write(&dir, "alpha.pem", &alpha.pem);
    write(&dir, "beta.pem", &beta.pem);
    let certs_dir = format!("--certs-dir={}", dir.display());
    let proxy = Proxy::start(None, &[&certs_dir]).await;
    let wild = ca.issue(&["*.shop.example"]);
    assert_eq!(upload(&proxy, "wild", &wild.pem).await.0, 200);

    let table: [(Option<&str>, &Issued); 8] = [
        (Some("alpha.example"), &alpha),
        (Some("beta.example"), &beta),
        (Some("www.beta.example"), &beta),
        (Some("cart.shop.example"), &wild),
        (Some("a.cart.shop.example"), &alpha), // a wildcard covers one label: the default
        (Some("shop.example"), &alpha),
        (Some("unknown.example"), &alpha), // the default: the first loaded
        (None, &alpha),                    // no SNI: the default
    ];
    for (sni, expected) in table {
        assert_eq!(served(&proxy, sni).await.as_ref(), Some(&expected.der), "SNI {sni:?}");
    }

    // A certificate named `default` is the default from then on.
    let fallback = ca.issue(&["fallback.example"]);
    assert_eq!(upload(&proxy, "default", &fallback.pem).await.0, 200);
    assert_eq!(served(&proxy, Some("unknown.example")).await, Some(fallback.der.clone()));
    assert_eq!(served(&proxy, None).await, Some(fallback.der));
    assert_eq!(served(&proxy, Some("alpha.example")).await, Some(alpha.der));

    assert_eq!(listed(&proxy).await, ["alpha", "beta", "wild", "default"]);
    let (_, answer) = proxy.admin("/v1/docker-flow-proxy/certs").await;
    let beta_view = &answer["Certs"][1];
    assert_eq!(beta_view["DnsNames"], serde_json::json!(["beta.example", "www.beta.example"]));
    assert_eq!(beta_view["NotAfter"], "2090-01-01T00:00:00Z");
    assert_eq!(beta_view["Source"], "certs-dir");
    assert_eq!(answer["Certs"][3]["Default"], true);
    assert!(!answer.to_string().contains("PRIVATE KEY"), "keys are never listed: {answer}");

    // Certificates from --certs-dir are deleted by deleting the file, not through the API.
    let (status, answer) = delete(&proxy, "alpha").await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["Status"], "NOK");
}

#[tokio::test]
async fn https_requests_reach_the_instance_with_forwarded_proto_over_http1_and_http2() {
    let ca = Ca::new();
    let web = Upstream::start("web-1").await;
    let proxy = Proxy::start(None, &[]).await;
    route_all_to(&proxy, &web).await;
    let shop = ca.issue(&["shop.example"]);
    let (status, answer) = upload(&proxy, "shop", &shop.pem).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["Status"], "OK");
    assert_eq!(answer["DnsNames"], serde_json::json!(["shop.example"]));

    // HTTP/2, negotiated with ALPN.
    let h2 = ca.client(&proxy, &["shop.example"], false);
    let response = h2.get(https(&proxy, "shop.example", "/books?x=1")).send().await.expect("h2");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "web-1");
    let headers = web.last_headers().expect("the instance saw the request");
    assert_eq!(headers["x-forwarded-proto"], "https");
    let authority = format!("shop.example:{}", tls_addr(&proxy).port());
    assert_eq!(headers["host"], authority.as_str(), "HTTP/2's :authority becomes Host");
    assert_eq!(headers["x-forwarded-host"], authority.as_str());
    assert_eq!(web.last_uri().as_deref(), Some("/books?x=1"));

    // HTTP/1.1 over TLS.
    let h1 = ca.client(&proxy, &["shop.example"], true);
    let response = h1.get(https(&proxy, "shop.example", "/")).send().await.expect("h1");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.text().await.expect("body"), "web-1");
    assert_eq!(web.last_headers().expect("seen")["x-forwarded-proto"], "https");

    // Plain HTTP still says http.
    assert_eq!(proxy.get("/").await, (200, "web-1".to_owned()));
    assert_eq!(web.last_headers().expect("seen")["x-forwarded-proto"], "http");

    // HTTP/2 with prior knowledge over TLS (ALPN offering h2 alone) is served too.
    let prior = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("CA")])
        .resolve("shop.example", tls_addr(&proxy))
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = prior.get(https(&proxy, "shop.example", "/")).send().await.expect("h2");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);

    // A client that does not trust the certificate's issuer refuses the handshake.
    let stranger = Ca::new().client(&proxy, &["shop.example"], false);
    assert!(stranger.get(https(&proxy, "shop.example", "/")).send().await.is_err());

    let metrics = crate::support::http_client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("\ndfp_tls_certificates 1\n"), "{metrics}");
    // 2090-01-01T00:00:00Z
    assert!(metrics.contains("dfp_tls_certificate_not_after_seconds{cert=\"shop\"} 3786912000"));
}

#[tokio::test]
async fn an_upload_swaps_the_certificate_and_open_connections_keep_working() {
    let ca = Ca::new();
    let web = Upstream::start("web-1").await;
    let proxy = Proxy::start(None, &[]).await;
    route_all_to(&proxy, &web).await;
    assert!(served(&proxy, Some("shop.example")).await.is_none(), "no certificate yet");

    let first = ca.issue(&["shop.example"]);
    assert_eq!(upload(&proxy, "shop", &first.pem).await.0, 200);

    // One keep-alive connection, handshaken with the first certificate.
    let tls = connect(tls_addr(&proxy), Some("shop.example")).await.expect("handshake");
    assert_eq!(leaf(&tls), Some(first.der.clone()));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 over TLS");
    let driver = tokio::spawn(connection);
    let get = || {
        hyper::Request::get("/")
            .header(hyper::header::HOST, "shop.example")
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let response = sender.send_request(get()).await.expect("first request");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"web-1");

    // The same name, a new certificate and key: new handshakes get it at once...
    let second = ca.issue(&["shop.example"]);
    assert_ne!(first.der, second.der);
    let (status, answer) = upload(&proxy, "shop", &second.pem).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(served(&proxy, Some("shop.example")).await, Some(second.der.clone()));
    assert_eq!(listed(&proxy).await, ["shop"], "replaced, not added");

    // ...and the connection opened before the swap still answers, on the same connection.
    for _ in 0..3 {
        let response = sender.send_request(get()).await.expect("the open connection answers");
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"web-1");
    }
    assert!(!driver.is_finished(), "the connection is still open");
    drop(sender);
    let _ = driver.await;

    // Deleting it stops new handshakes for it (nothing else is left to serve).
    assert_eq!(delete(&proxy, "shop").await.0, 200);
    assert!(served(&proxy, Some("shop.example")).await.is_none());
    assert!(listed(&proxy).await.is_empty());
}

#[tokio::test]
async fn bad_certificates_are_refused_and_change_nothing() {
    let ca = Ca::new();
    let proxy = Proxy::start(None, &[]).await;
    let good = ca.issue(&["good.example"]);
    assert_eq!(upload(&proxy, "good", &good.pem).await.0, 200);

    let other = ca.issue(&["good.example"]);
    let key_of = |pem: &str| pem[pem.find("-----BEGIN PRIVATE KEY").expect("a key")..].to_owned();
    let certs_of = |pem: &str| pem[..pem.find("-----BEGIN PRIVATE KEY").expect("a key")].to_owned();
    let mismatched = format!("{}{}", certs_of(&good.pem), key_of(&other.pem));
    let expired = ca.issue_with(&["good.example"], |p| {
        p.not_before = date_time_ymd(2001, 1, 1);
        p.not_after = date_time_ymd(2002, 1, 1);
    });
    let not_yet = ca.issue_with(&["good.example"], |p| {
        p.not_before = date_time_ymd(2080, 1, 1);
    });
    let cases: [(&str, &str, String, &str); 7] = [
        ("not PEM", "good", "hello".to_owned(), "not PEM"),
        ("no key", "good", certs_of(&good.pem), "no private key"),
        ("no certificate", "good", key_of(&good.pem), "no certificate"),
        ("another key", "good", mismatched, "does not belong"),
        ("expired", "good", expired.pem, "expired at 2002-01-01T00:00:00Z"),
        ("not yet valid", "good", not_yet.pem, "not valid before 2080"),
        ("bad name", "../etc", other.pem.clone(), "certName"),
    ];
    for (what, name, body, says) in cases {
        let (status, answer) = upload(&proxy, name, &body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["Status"], "NOK", "{what}");
        let message = answer["Message"].as_str().expect("Message");
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(listed(&proxy).await, ["good"], "{what} changed nothing");
        assert_eq!(served(&proxy, Some("good.example")).await, Some(good.der.clone()), "{what}");
    }
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/cert").await;
    assert_eq!(status, 405, "GET is not an upload: {answer}");
    let (status, _) = upload(&proxy, "", &other.pem).await;
    assert_eq!(status, 400, "certName is required");
    let (status, answer) = delete(&proxy, "missing").await;
    assert_eq!(status, 404, "{answer}");

    // A bad file in --certs-dir stops the start, naming the file.
    let scratch = Scratch::new();
    let dir = scratch.path("certs");
    std::fs::create_dir_all(&dir).expect("certs dir");
    write(&dir, "ok.pem", &good.pem);
    write(&dir, "broken.pem", &certs_of(&good.pem));
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(crate::support::proxy::BIN)
            .arg("server")
            .arg(format!("--listen=127.0.0.1:{}", free_port()))
            .arg(format!("--admin-listen=127.0.0.1:{}", free_port()))
            .arg(format!("--tls-listen=127.0.0.1:{}", free_port()))
            .arg(format!("--state-file={}", scratch.path("state.json").display()))
            .arg(format!("--certs-dir={}", dir.display()))
            .env_remove("CONSUL_ADDRESS")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the proxy stops at once")
    .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.pem") && stderr.contains("no private key"), "{stderr}");
}

#[tokio::test]
async fn uploaded_certificates_survive_a_restart_standalone() {
    let ca = Ca::new();
    let scratch = Scratch::new();
    let state = format!("--state-file={}", scratch.path("state.json").display());
    let shop = ca.issue(&["shop.example"]);
    {
        let mut proxy = Proxy::start(None, &[&state]).await;
        assert_eq!(upload(&proxy, "shop", &shop.pem).await.0, 200);
        assert!(scratch.path("certs").join("shop.pem").is_file(), "kept beside the state file");
        assert!(proxy.terminate().await.success());
    }
    let proxy = Proxy::start(None, &[&state]).await;
    // Restored before the proxy serves: no waiting.
    assert_eq!(served(&proxy, Some("shop.example")).await, Some(shop.der));
    assert_eq!(listed(&proxy).await, ["shop"]);
}

#[tokio::test]
async fn certificates_reach_every_replica_and_survive_restarts_through_consul() {
    let ca = Ca::new();
    let consul = Consul::start().await;
    let mut first = Proxy::start(Some(&consul.url()), &[]).await;
    let second = Proxy::start(Some(&consul.url()), &[]).await;

    let shop = ca.issue(&["shop.example"]);
    assert_eq!(upload(&first, "shop", &shop.pem).await.0, 200);
    let stored = consul.kv_get("docker-flow/certs/shop").await.expect("stored in KV");
    assert!(stored.contains("BEGIN CERTIFICATE"), "{stored}");
    assert_eq!(served(&first, Some("shop.example")).await, Some(shop.der.clone()));
    eventually(Duration::from_secs(10), "the second replica to serve the upload", || async {
        (served(&second, Some("shop.example")).await.as_ref() == Some(&shop.der)).then_some(())
    })
    .await;
    assert_eq!(listed(&second).await, ["shop"]);

    // A restarted replica restores it from KV before it serves.
    assert!(first.terminate().await.success());
    drop(first);
    let restarted = Proxy::start(Some(&consul.url()), &[]).await;
    assert_eq!(served(&restarted, Some("shop.example")).await, Some(shop.der.clone()));

    // A delete sent to one replica reaches the others.
    assert_eq!(delete(&second, "shop").await.0, 200);
    assert!(consul.kv_get("docker-flow/certs/shop").await.is_none());
    eventually(Duration::from_secs(10), "the delete to reach the restarted replica", || async {
        served(&restarted, Some("shop.example")).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_lets_https_requests_in_flight_finish() {
    let ca = Ca::new();
    let slow = Upstream::start_with_delay("slow-1", Duration::from_millis(800)).await;
    let mut proxy = Proxy::start(None, &[]).await;
    route_all_to(&proxy, &slow).await;
    let shop = ca.issue(&["shop.example"]);
    assert_eq!(upload(&proxy, "shop", &shop.pem).await.0, 200);

    // An HTTP/2 request in flight when SIGTERM arrives still gets its answer.
    let client = ca.client(&proxy, &["shop.example"], false);
    let url = https(&proxy, "shop.example", "/in-flight");
    let in_flight = tokio::spawn(async move {
        let response = client.get(url).send().await.expect("answered");
        (response.version(), response.status().as_u16(), response.text().await.expect("body"))
    });
    eventually(Duration::from_secs(5), "the request to reach the upstream", || {
        let hits = slow.hits();
        async move { (hits > 0).then_some(()) }
    })
    .await;
    let status = proxy.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    let (version, code, body) = in_flight.await.expect("request task");
    assert_eq!((version, code, body.as_str()), (reqwest::Version::HTTP_2, 200, "slow-1"));
}

#[tokio::test]
async fn websocket_upgrades_pass_through_over_tls() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca = Ca::new();
    let echo = EchoUpgrade::start().await;
    let proxy = Proxy::start(None, &[]).await;
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/ws&port={}",
            echo.port
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(upload(&proxy, "shop", &ca.issue(&["shop.example"]).pem).await.0, 200);

    let mut tls = connect(tls_addr(&proxy), Some("shop.example")).await.expect("handshake");
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).await.expect("head"), 1, "closed early: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping over tls").await.expect("write");
    let mut echoed = [0_u8; 13];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping over tls");
}

#[tokio::test]
async fn https_only_services_redirect_plain_http_and_serve_https() {
    let ca = Ca::new();
    let web = Upstream::start("web-1").await;
    let proxy = Proxy::start(None, &[]).await;
    let call = format!(
        "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}&httpsOnly=true",
        web.port()
    );
    let (status, answer) = proxy.admin(&call).await;
    assert_eq!(status, 200, "{answer}");
    let shop = ca.issue(&["shop.example"]);
    assert_eq!(upload(&proxy, "shop", &shop.pem).await.0, 200);

    // Plain HTTP: redirected, and the instance never sees the request.
    let answer = crate::support::raw_http(
        proxy.addr,
        b"GET /cart?id=7 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 302"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("location: https://shop.example/cart?id=7"),
        "{answer}"
    );
    assert_eq!(web.hits(), 0);

    // Over TLS the same service answers.
    let client = ca.client(&proxy, &["shop.example"], false);
    let response =
        client.get(https(&proxy, "shop.example", "/cart?id=7")).send().await.expect("https");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "web-1");
}

#[tokio::test]
async fn a_response_in_pieces_reaches_an_https_client_piece_by_piece() {
    // Over TLS the last bytes of a write can wait in the TLS session: the proxy must flush
    // each piece, or a client waits for bytes the proxy already had while the instance pauses
    // (server-sent events, a slow report).
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca = Ca::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let script_gate = gate.clone();
    let upstream = crate::support::RawUpstream::start(move |_, _| crate::support::Reply::Gated {
        before: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n".to_vec(),
        gate: script_gate.clone(),
        after: b"4\r\nlast\r\n0\r\n\r\n".to_vec(),
    })
    .await;
    let proxy = Proxy::start(None, &[]).await;
    proxy.route_all_to_port(upstream.port()).await;
    let (status, answer) = upload(&proxy, "shop", &ca.issue(&["shop.example"]).pem).await;
    assert_eq!(status, 200, "{answer}");

    let mut tls = connect(tls_addr(&proxy), Some("shop.example")).await.expect("handshake");
    tls.write_all(b"GET /events HTTP/1.1\r\nHost: shop.example\r\n\r\n").await.expect("sent");
    let mut got = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0_u8; 4096];
        while !got.ends_with(b"5\r\nfirst\r\n") {
            let n = tls.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "the first piece did not arrive whole: {:?}",
        String::from_utf8_lossy(&got)
    );
    gate.add_permits(1);
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0_u8; 4096];
        while !got.ends_with(b"0\r\n\r\n") {
            let n = tls.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(rest.is_ok(), "the rest did not arrive: {:?}", String::from_utf8_lossy(&got));
}
