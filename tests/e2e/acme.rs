//! ACME against a real CA: Let's Encrypt's test server pebble on loopback, checking HTTP-01
//! challenges on the proxy's plain listener, issuing short-lived certificates so renewal
//! happens within a test. What a user would notice: a `letsEncrypt=true` service is served
//! over HTTPS with a certificate a client trusting the CA accepts, it is renewed before it
//! expires, replicas sharing a store obtain it once and all serve it, a CA outage leaves
//! the certificate served, and the dashboard, in a real browser, shows each name's state.

use std::time::Duration;

use serde_json::Value;

use crate::support::proxy::BIN;
use crate::support::{eventually, free_port, raw_http, Consul, Pebble, Proxy, Upstream};
use crate::tls::tls_addr;

/// An HTTPS client that trusts only `root` (the CA's) and sends `name` to `proxy`'s TLS
/// listener, keeping the certificate it was served.
fn client_for(root: &str, proxy: &Proxy, name: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).expect("root PEM")])
        .tls_info(true)
        .resolve(name, tls_addr(proxy))
        .build()
        .expect("reqwest client builds")
}

/// A GET of `https://<name>/` through `proxy`, verified against the CA: (status, body, the
/// served leaf certificate's DER); None when the handshake or the request fails.
async fn https_get(
    client: &reqwest::Client,
    proxy: &Proxy,
    name: &str,
) -> Option<(u16, String, Vec<u8>)> {
    let url = format!("https://{name}:{}/", tls_addr(proxy).port());
    let response = client.get(url).send().await.ok()?;
    let leaf = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec))?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?, leaf))
}

/// The `Acme.Names` entry for `name` in the proxy's `certs`.
async fn acme_entry(proxy: &Proxy, name: &str) -> Option<Value> {
    let (status, certs) = proxy.admin("/v1/docker-flow-proxy/certs").await;
    assert_eq!(status, 200, "{certs}");
    let names = certs["Acme"]["Names"].as_array()?;
    names.iter().find(|n| n["Name"] == name).cloned()
}

/// Waits until `proxy` serves `name` with a certificate the CA's `root` verifies, answered by
/// the instance; returns the leaf's DER.
async fn served(root: &str, proxy: &Proxy, name: &str, within: Duration) -> Vec<u8> {
    let client = client_for(root, proxy, name);
    eventually(within, &format!("{name} served over HTTPS with the CA's certificate"), || {
        let client = client.clone();
        async move {
            let (status, body, leaf) = https_get(&client, proxy, name).await?;
            assert_eq!(status, 200, "{body}");
            Some(leaf)
        }
    })
    .await
}

/// A call to the Consul agent's HTTP API, its JSON answer.
async fn consul_call(consul: &Consul, method: reqwest::Method, path: &str, body: &str) -> Value {
    let response = crate::support::http_client()
        .request(method, format!("{}{path}", consul.url()))
        .body(body.to_owned())
        .send()
        .await
        .expect("consul answers");
    response.json().await.expect("consul answers JSON")
}

fn owned(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// A standalone proxy pointed at `pebble` with `flags` besides, and an instance routed on `/`
/// for `domains` with `letsEncrypt=true` and `options`; pebble's issuing root.
async fn certified(
    pebble: &Pebble,
    flags: &[String],
    domains: &str,
    options: &str,
) -> (Proxy, Upstream, String) {
    let upstream = Upstream::start("shop").await;
    let mut all = pebble.proxy_flags();
    all.extend_from_slice(flags);
    let proxy = Proxy::start_logging(None, &owned(&all), "info").await;
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}\
             &serviceDomain={domains}&letsEncrypt=true{options}",
            upstream.port()
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let root = pebble.issuing_root().await;
    (proxy, upstream, root)
}

#[tokio::test]
async fn a_lets_encrypt_service_is_certified_served_and_renewed() {
    let plain_port = free_port();
    // 30 s certificates: renewed 20 s in.
    let pebble = Pebble::start(plain_port, Duration::from_secs(30)).await;
    // httpsOnly: plain requests are redirected, yet the CA's challenge is answered.
    let listen = [format!("--listen=127.0.0.1:{plain_port}")];
    let (proxy, _upstream, root) =
        certified(&pebble, &listen, "shop.test,*.shop.test", "&httpsOnly=true").await;
    let first = served(&root, &proxy, "shop.test", Duration::from_secs(30)).await;

    let entry = acme_entry(&proxy, "shop.test").await.expect("shop.test is managed");
    assert_eq!(entry["State"], "valid", "{entry}");
    assert_eq!(entry["CertName"], "acme-shop.test");
    assert_eq!(entry["Service"], "127.0.0.1");
    assert!(entry["NotAfter"].is_string() && entry["RenewAfter"].is_string(), "{entry}");
    let (_, certs) = proxy.admin("/v1/docker-flow-proxy/certs").await;
    let listed = certs["Certs"].as_array().expect("certs");
    assert!(
        listed.iter().any(|c| c["CertName"] == "acme-shop.test" && c["Source"] == "acme"),
        "{certs}"
    );
    // The wildcard cannot be had with HTTP-01: skipped, and said why.
    let skipped = certs["Acme"]["Skipped"].as_array().expect("skipped names");
    assert!(
        skipped.iter().any(|s| s["Name"] == "*.shop.test"
            && s["Why"].as_str().is_some_and(|w| w.contains("DNS-01"))),
        "{certs}"
    );
    // Plain HTTP is still redirected (the challenge path is answered only while pending).
    let plain =
        raw_http(proxy.addr, b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
            .await;
    assert!(plain.starts_with("HTTP/1.1 302"), "{plain}");

    // Renewed two thirds through its 30 s: a new certificate is served, without a restart.
    let renewed =
        eventually(Duration::from_secs(40), "the certificate is renewed and served", || {
            let (root, proxy, first) = (&root, &proxy, &first);
            async move {
                let leaf = served(root, proxy, "shop.test", Duration::from_secs(5)).await;
                (leaf != *first).then_some(leaf)
            }
        })
        .await;
    assert_ne!(renewed, first);

    // Never a key in what the proxy shows or logs.
    let config = proxy.config().await.to_string();
    let (_, certs) = proxy.admin("/v1/docker-flow-proxy/certs").await;
    for shown in [config, certs.to_string(), proxy.log()] {
        assert!(!shown.contains("PRIVATE KEY") && !shown.contains("key_pkcs8"), "a key was shown");
    }
}

#[tokio::test]
async fn the_dashboard_shows_the_certified_and_the_skipped_names_in_a_browser() {
    let plain_port = free_port();
    let pebble = Pebble::start(plain_port, Duration::from_secs(3600)).await;
    let listen = [format!("--listen=127.0.0.1:{plain_port}")];
    let (proxy, _upstream, root) = certified(&pebble, &listen, "shop.test,*.shop.test", "").await;
    served(&root, &proxy, "shop.test", Duration::from_secs(30)).await;
    let entry = acme_entry(&proxy, "shop.test").await.expect("shop.test is managed");
    let (_, certs) = proxy.admin("/v1/docker-flow-proxy/certs").await;
    let directory = certs["Acme"]["Directory"].as_str().expect("the CA's directory").to_owned();
    let not_after = entry["NotAfter"].as_str().expect("a certificate's end").to_owned();

    let page = crate::dashboard::dom(&proxy.admin_url("/dashboard")).await;
    let section = page
        .split("id=\"acme-section\"")
        .nth(1)
        .unwrap_or_else(|| panic!("the page has its ACME section:\n{page}"));
    let tag_end = section.find('>').expect("the section's tag ends");
    assert!(!section[..tag_end].contains("hidden"), "the ACME section is shown:\n{page}");
    assert!(
        section.contains(&format!("CA: {directory} (challenge http-01)")),
        "the CA and the challenge are named:\n{section}"
    );
    // One row per name, in the columns the API gives: name, service, state, dates, result.
    let row = |name: &str| {
        let start = section
            .find(&format!("<th scope=\"row\">{name}</th>"))
            .unwrap_or_else(|| panic!("a row for {name}:\n{section}"));
        let end = section[start..].find("</tr>").expect("the row ends") + start;
        section[start..end].to_owned()
    };
    let certified = row("shop.test");
    for shown in ["<td>127.0.0.1</td>", ">valid</td>", &format!("<td>{not_after}</td>")] {
        assert!(certified.contains(shown), "{shown} in the certified name's row: {certified}");
    }
    let skipped = row("*.shop.test");
    assert!(
        skipped.contains(">skipped</td>") && skipped.contains("DNS-01"),
        "the wildcard is shown skipped, and why: {skipped}"
    );
    crate::dashboard::screenshot(&proxy.admin_url("/dashboard"), "acme.png", 1280, 900).await;
}

#[tokio::test]
async fn the_tls_alpn_challenge_is_answered_on_the_https_listener() {
    // pebble checks TLS-ALPN-01 on the proxy's HTTPS port; HTTP-01 would go to a port where
    // nothing listens, so only the TLS listener can prove the name.
    let tls_port = free_port();
    let pebble = Pebble::start_with(free_port(), tls_port, Duration::from_secs(3600)).await;
    let flags =
        [format!("--tls-listen=127.0.0.1:{tls_port}"), "--acme-challenge=tls-alpn-01".to_owned()];
    let (proxy, _upstream, root) = certified(&pebble, &flags, "alpn.test", "").await;
    served(&root, &proxy, "alpn.test", Duration::from_secs(30)).await;
    let (_, certs) = proxy.admin("/v1/docker-flow-proxy/certs").await;
    assert_eq!(certs["Acme"]["Challenge"], "tls-alpn-01", "{certs}");
    let entry = acme_entry(&proxy, "alpn.test").await.expect("managed");
    assert_eq!(entry["State"], "valid", "{entry}");

    // Outside a validation, a handshake offering only acme-tls/1 gets no certificate.
    let mut config = crate::tls::Ca::new().verifying_client();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(tls_addr(&proxy)).await.expect("connects");
    let name = rustls::pki_types::ServerName::try_from("alpn.test").expect("a name");
    assert!(connector.connect(name, tcp).await.is_err(), "no challenge is being answered");
}

#[tokio::test]
async fn a_ca_outage_leaves_the_certificate_served_and_says_why() {
    let plain_port = free_port();
    let mut pebble = Pebble::start(plain_port, Duration::from_secs(30)).await;
    let listen = [format!("--listen=127.0.0.1:{plain_port}")];
    let (proxy, _upstream, root) = certified(&pebble, &listen, "outage.test", "").await;
    let first = served(&root, &proxy, "outage.test", Duration::from_secs(30)).await;

    // The CA goes away; the renewal (20 s in) fails.
    pebble.stop().await;
    let failed = eventually(Duration::from_secs(30), "the renewal fails", || async {
        acme_entry(&proxy, "outage.test").await.filter(|e| e["State"] == "failed")
    })
    .await;
    let why = failed["LastResult"].as_str().unwrap_or_default();
    assert!(why.contains("ACME CA"), "{failed}");
    assert!(failed["NextAttempt"].is_string(), "{failed}");
    // The certificate obtained before is served still, and the service answers.
    let still = served(&root, &proxy, "outage.test", Duration::from_secs(5)).await;
    assert_eq!(still, first, "the old certificate stays until a renewal succeeds");
    assert!(proxy.log().contains("obtaining an ACME certificate failed"));
}

#[tokio::test]
async fn replicas_sharing_a_store_obtain_once_and_all_serve_it() {
    let consul = Consul::start().await;
    let upstream = Upstream::start("shop").await;
    consul.register("shop", "shop-1", upstream.port(), None).await;
    let plain_port = free_port();
    let pebble = Pebble::start(plain_port, Duration::from_secs(3600)).await;
    let mut first_flags = pebble.proxy_flags();
    first_flags.push(format!("--listen=127.0.0.1:{plain_port}"));
    let a = Proxy::start_logging(Some(&consul.url()), &owned(&first_flags), "info").await;
    let b = Proxy::start_logging(Some(&consul.url()), &owned(&pebble.proxy_flags()), "info").await;

    let (status, answer) = a
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=shop&servicePath=/&serviceDomain=shop.test,www.shop.test&letsEncrypt=true")
        .await;
    assert_eq!(status, 200, "{answer}");
    let root = pebble.issuing_root().await;
    for name in ["shop.test", "www.shop.test"] {
        let on_a = served(&root, &a, name, Duration::from_secs(40)).await;
        let on_b = served(&root, &b, name, Duration::from_secs(20)).await;
        assert_eq!(on_a, on_b, "both replicas serve the one certificate for {name}");
        // One replica placed the order; the other got it through the store.
        let mut obtained = 0;
        for proxy in [&a, &b] {
            let entry = eventually(Duration::from_secs(10), "the name shows as valid", || async {
                acme_entry(proxy, name).await.filter(|e| e["State"] == "valid")
            })
            .await;
            obtained += entry["ObtainedHere"].as_u64().expect("a count");
        }
        assert_eq!(obtained, 1, "{name} was ordered once between the two replicas");
    }
    // One account, kept in KV for both; no lock left held.
    let listed =
        consul_call(&consul, reqwest::Method::GET, "/v1/kv/docker-flow/acme/?keys", "").await;
    let keys: Vec<String> = serde_json::from_value(listed).expect("a key list");
    assert_eq!(keys.iter().filter(|k| k.contains("/acme/accounts/")).count(), 1, "{keys:?}");
    for lock in keys.iter().filter(|k| k.contains("/acme/locks/")) {
        let entries =
            consul_call(&consul, reqwest::Method::GET, &format!("/v1/kv/{lock}"), "").await;
        assert!(entries[0].get("Session").is_none(), "{lock} is still held: {entries}");
    }
    assert!(
        !keys.iter().any(|k| k.contains("/acme/challenges/")),
        "challenges are taken back: {keys:?}"
    );
}

/// A replica that died holding a name's lock: its Consul session, never renewed, holds the
/// lock until Consul ends it (its TTL, at most twice that); meanwhile the live replica shows
/// who holds it and waits, then takes the lock and obtains the certificate.
#[tokio::test]
async fn a_lock_held_by_a_dead_replica_is_freed_with_its_session() {
    let consul = Consul::start().await;
    let upstream = Upstream::start("shop").await;
    consul.register("shop", "shop-1", upstream.port(), None).await;
    let session = consul_call(
        &consul,
        reqwest::Method::PUT,
        "/v1/session/create",
        r#"{"Name":"a replica that died","TTL":"10s","LockDelay":"0s"}"#,
    )
    .await;
    let id = session["ID"].as_str().expect("the session's ID");
    let lock = format!("/v1/kv/docker-flow/acme/locks/dead.test?acquire={id}");
    let taken =
        consul_call(&consul, reqwest::Method::PUT, &lock, "ghost pid 1 (admin 127.0.0.1:1)").await;
    assert_eq!(taken, true, "the dead replica's lock is held");

    let plain_port = free_port();
    let pebble = Pebble::start(plain_port, Duration::from_secs(3600)).await;
    let mut flags = pebble.proxy_flags();
    flags.push(format!("--listen=127.0.0.1:{plain_port}"));
    let proxy = Proxy::start_logging(Some(&consul.url()), &owned(&flags), "info").await;
    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=shop&servicePath=/&serviceDomain=dead.test&letsEncrypt=true")
        .await;
    assert_eq!(status, 200, "{answer}");
    let waiting =
        eventually(Duration::from_secs(10), "the name waits for the lock's holder", || async {
            acme_entry(&proxy, "dead.test").await.filter(|e| e["State"] == "waiting")
        })
        .await;
    assert_eq!(waiting["Holder"], "ghost pid 1 (admin 127.0.0.1:1)", "{waiting}");

    // Nobody renews the session: Consul ends it, the lock is free, the certificate comes.
    let root = pebble.issuing_root().await;
    served(&root, &proxy, "dead.test", Duration::from_secs(45)).await;
    let entry = acme_entry(&proxy, "dead.test").await.expect("managed");
    assert_eq!(entry["State"], "valid", "{entry}");
    assert_eq!(entry["ObtainedHere"], 1, "{entry}");
}

#[tokio::test]
async fn acme_flags_that_cannot_work_stop_the_start_with_the_reason() {
    for (args, expected) in [
        (&["--acme-email=ops@example.com"][..], "--acme-agree-tos"),
        (&["--acme-agree-tos", "--tls-listen=off"][..], "--tls-listen"),
        (&["--acme-agree-tos", "--acme-directory=http://ca.example/dir"][..], "https://"),
        (&["--acme-agree-tos", "--acme-email=not an address"][..], "email"),
    ] {
        let out = tokio::process::Command::new(BIN)
            .arg("server")
            .arg(format!("--listen=127.0.0.1:{}", free_port()))
            .arg(format!("--admin-listen=127.0.0.1:{}", free_port()))
            .args(args)
            .env_remove("CONSUL_ADDRESS")
            .output()
            .await
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must not start");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn lets_encrypt_without_a_name_to_certify_is_refused() {
    let proxy = Proxy::start(None, &[]).await;
    for (query, expected) in [
        ("serviceName=127.0.0.1&servicePath=/&port=1&letsEncrypt=true", "serviceDomain"),
        ("serviceName=127.0.0.1&servicePath=/&port=1&serviceDomain=*.a.test&letsEncrypt=true", "DNS-01"),
        ("serviceName=127.0.0.1&reqMode=tcp&srcPort=1&port=1&serviceDomain=a.test&letsEncrypt=true", "leave out letsEncrypt"),
        ("serviceName=127.0.0.1&servicePath=/&port=1&serviceDomain=a.test&letsEncrypt=maybe", "letsEncrypt"),
    ] {
        let (status, answer) = proxy.admin(&format!("/v1/docker-flow-proxy/reconfigure?{query}")).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer.to_string().contains(expected), "{query}: {answer}");
    }
    assert_eq!(proxy.config().await["Services"].as_array().map_or(0, Vec::len), 0);
}
