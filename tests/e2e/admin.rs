//! The admin API against a real Consul: each error code, with the live table unchanged after
//! it; remove; config; and Consul going away.

use serde_json::Value;

use crate::support::{Consul, Proxy, Upstream};

const BOOKS: &str =
    "/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books";

/// Asserts that an admin call failed with `status`, a NOK answer mentioning `needle`, and left
/// the live table exactly as `before`.
async fn assert_refused(proxy: &Proxy, call: &str, status: u16, needle: &str, before: &Value) {
    let (got, answer) = proxy.admin(call).await;
    assert_eq!(got, status, "{call}: {answer}");
    assert_eq!(answer["Status"], "NOK", "{call}: {answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{call}: message {message:?} should mention {needle:?}");
    assert_eq!(&routes(proxy).await, before, "{call} changed the live table");
}

/// The live table's version and routes (what `config` says beyond Consul's reachability).
async fn routes(proxy: &Proxy) -> Value {
    let config = proxy.config().await;
    serde_json::json!({ "TableVersion": config["TableVersion"], "Services": config["Services"] })
}

#[tokio::test]
async fn every_error_leaves_the_table_untouched() {
    let mut consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    let authors = Upstream::start("authors-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    consul.register("authors-ms", "authors-1", authors.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;

    let (status, answer) = proxy.admin(BOOKS).await;
    assert_eq!(status, 200, "{answer}");
    let before = routes(&proxy).await;
    assert_eq!(before["TableVersion"], 1);

    // 400: invalid or missing parameters.
    let r = "/v1/docker-flow-proxy/reconfigure";
    assert_refused(
        &proxy,
        &format!("{r}?serviceName=authors-ms&servicePath=api"),
        400,
        "start with '/'",
        &before,
    )
    .await;
    assert_refused(&proxy, &format!("{r}?servicePath=/authors"), 400, "serviceName", &before).await;
    assert_refused(&proxy, &format!("{r}?serviceName=authors-ms"), 400, "servicePath", &before)
        .await;
    assert_refused(
        &proxy,
        &format!("{r}?serviceName=a%20b&servicePath=/a"),
        400,
        "serviceName",
        &before,
    )
    .await;
    // A timeout too long for the clock (it once made each request to the service fail).
    for timeout in ["timeoutServer", "timeoutTunnel"] {
        assert_refused(
            &proxy,
            &format!(
                "{r}?serviceName=books-ms&servicePath=/api/v1/books&{timeout}=18446744073709551615"
            ),
            400,
            "2147483",
            &before,
        )
        .await;
    }
    // 404: Consul has never heard of the service.
    assert_refused(
        &proxy,
        &format!("{r}?serviceName=bookz-ms&servicePath=/a"),
        404,
        "bookz-ms",
        &before,
    )
    .await;
    // 409: the path belongs to another service; also when it is only one of several.
    assert_refused(
        &proxy,
        &format!("{r}?serviceName=authors-ms&servicePath=/api/v1/books"),
        409,
        "books-ms",
        &before,
    )
    .await;
    assert_refused(
        &proxy,
        &format!("{r}?serviceName=authors-ms&servicePath=/authors,/api/v1/books/"),
        409,
        "books-ms",
        &before,
    )
    .await;
    // remove of a service that is not routed.
    assert_refused(
        &proxy,
        "/v1/docker-flow-proxy/remove?serviceName=authors-ms",
        404,
        "authors-ms",
        &before,
    )
    .await;
    // Unknown endpoint and wrong method.
    assert_refused(&proxy, "/v1/docker-flow-proxy/nope", 404, "no admin endpoint", &before).await;

    // The CLI exits non-zero with the server's message on stderr.
    let out =
        proxy.cli(&["reconfigure", "--service-name", "bookz-ms", "--service-path", "/x"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown to Consul"), "{stderr}");
    assert!(out.stdout.is_empty(), "failures print nothing on stdout");
    assert_eq!(routes(&proxy).await, before);

    // A second service alongside, then remove it again.
    let (status, answer) =
        proxy.admin(&format!("{r}?serviceName=authors-ms&servicePath=/authors")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.get("/authors/7").await, (200, "authors-1".to_owned()));
    let out = proxy.cli(&["remove", "--service-name", "authors-ms"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(proxy.get("/authors/7").await.0, 404);
    let config = proxy.config().await;
    assert_eq!(config["TableVersion"], 3);
    assert_eq!(config["Services"], before["Services"]);

    // Reconfigure is idempotent: the same call again gives the same routes.
    let (status, _) = proxy.admin(BOOKS).await;
    assert_eq!(status, 200);
    assert_eq!(proxy.config().await["Services"], before["Services"]);

    // Consul goes away: routes keep serving, reconfigure answers 503 and changes nothing.
    consul.stop().await;
    let before = routes(&proxy).await;
    assert_eq!(proxy.get("/api/v1/books/1").await, (200, "books-1".to_owned()));
    assert_refused(&proxy, BOOKS, 503, "unreachable", &before).await;
    assert_refused(
        &proxy,
        &format!("{r}?serviceName=authors-ms&servicePath=/authors"),
        503,
        "Consul",
        &before,
    )
    .await;
    assert_eq!(proxy.get("/api/v1/books").await, (200, "books-1".to_owned()));
}

#[tokio::test]
async fn a_service_without_passing_instances_answers_503() {
    let consul = Consul::start().await;
    let sick = Upstream::start("sick-1").await;
    consul.register("sick-ms", "sick-1", sick.port(), Some(false)).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;

    let (status, answer) = proxy
        .admin("/v1/docker-flow-proxy/reconfigure?serviceName=sick-ms&servicePath=/sick")
        .await;
    assert_eq!(status, 200, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("no passing instance"), "{message}");
    assert_eq!(proxy.get("/sick").await.0, 503);
    assert_eq!(sick.hits(), 0, "a critical instance gets no traffic");
}

#[tokio::test]
async fn unsupported_parameters_are_named_in_the_answer() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;

    let (status, answer) = proxy.admin(&format!("{BOOKS}&distribute=true&fooBar=1")).await;
    assert_eq!(status, 200, "{answer}");
    let message = answer["Message"].as_str().unwrap_or_default();
    assert!(message.contains("distribute") && message.contains("fooBar"), "{message}");
    let warnings = answer["Warnings"].to_string();
    assert!(warnings.contains("parameter distribute is ignored: every replica"), "{warnings}");
}

/// Docker Flow Proxy parameters whose meaning is not built here are 400s that say what to
/// use instead, and change nothing (parity.rs).
#[tokio::test]
async fn refused_parameters_change_nothing() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let (status, answer) = proxy.admin(BOOKS).await;
    assert_eq!(status, 200, "{answer}");
    let version = answer["TableVersion"].clone();

    for (extra, needle) in [
        ("&sslVerifyNone=true", "parameter sslVerifyNone is refused: not supported yet"),
        ("&srcPort=8081", "srcPort=\"8081\" is invalid: it is the port of a TCP service"),
        ("&servicePath.1=/other&srcPort.1=8080", "destination 1 (the parameters ending in .1"),
        ("&checkTcp=true", "parameter checkTcp is refused: not supported yet"),
        ("&serviceCert=x", "PUT /v1/docker-flow-proxy/cert"),
    ] {
        let (status, answer) = proxy.admin(&format!("{BOOKS}{extra}")).await;
        assert_eq!(status, 400, "{extra}: {answer}");
        assert_eq!(answer["Status"], "NOK");
        let message = answer["Message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{extra}: {message}");
    }
    let config = proxy.config().await;
    assert_eq!(config["TableVersion"], version, "a refused call changed the table");
    assert_eq!(proxy.get("/api/v1/books").await.0, 200);
}

#[tokio::test]
async fn metrics_report_the_table() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    proxy.admin(BOOKS).await;
    let text = crate::support::http_client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("body");
    assert!(text.contains("dfp_table_version 1"), "{text}");
    assert!(text.contains("dfp_services 1"), "{text}");
    assert!(text.contains("dfp_admin_calls_total{call=\"reconfigure\",result=\"ok\"} 1"), "{text}");
}

/// `/metrics` larger than one chunk (64 KiB: ~50 services) arrives whole over HTTP, chunked,
/// every service's series in it, and so does the scrape after it.
#[tokio::test]
async fn metrics_of_many_services_arrive_whole_in_chunks() {
    let proxy = Proxy::start(None, &[]).await;
    let services = 120;
    for i in 0..services {
        let call = format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.{}&servicePath=/svc-{i}&port=9",
            i + 1
        );
        let (status, answer) = proxy.admin(&call).await;
        assert_eq!(status, 200, "{call}: {answer}");
    }
    let client = crate::support::http_client();
    for scrape in 1..=2 {
        let response =
            client.get(proxy.admin_url("/metrics")).send().await.expect("metrics answer");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("transfer-encoding").and_then(|v| v.to_str().ok()),
            Some("chunked"),
            "scrape {scrape}"
        );
        let text = response.text().await.expect("body");
        assert!(text.len() > 64 * 1024, "scrape {scrape}: {} bytes", text.len());
        assert!(text.contains(&format!("\ndfp_services {services}\n")), "scrape {scrape}");
        for i in 0..services {
            let series =
                format!("dfp_request_duration_seconds_count{{service=\"127.0.0.{}\"}} 0", i + 1);
            assert!(text.contains(&series), "scrape {scrape}: {series} missing");
        }
        assert!(text.ends_with('\n'), "scrape {scrape}: the text ends mid-line");
    }
}

/// Scripts written for Docker Flow Proxy call `reload` and read `config?type=json`.
#[tokio::test]
async fn reload_and_config_type_json_answer_as_docker_flow_proxy() {
    let consul = Consul::start().await;
    let books = Upstream::start("books-1").await;
    consul.register("books-ms", "books-1", books.port(), None).await;
    let proxy = Proxy::start(Some(&consul.url()), &[]).await;
    let (status, answer) = proxy.admin(&format!("{BOOKS}&users=alice:secret")).await;
    assert_eq!(status, 200, "{answer}");

    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/reload").await;
    assert_eq!((status, answer["Status"].as_str()), (200, Some("OK")), "{answer}");
    let (status, answer) = proxy.admin("/v1/docker-flow-proxy/reload?recreate=true").await;
    assert_eq!((status, answer["Status"].as_str()), (200, Some("OK")), "{answer}");
    assert_eq!(proxy.get("/api/v1/books").await.0, 401, "still routed, with its users");

    let (status, services) = proxy.admin("/v1/docker-flow-proxy/config?type=json").await;
    assert_eq!(status, 200, "{services}");
    let books_ms = &services["books-ms"];
    assert_eq!(books_ms["ServiceName"], "books-ms");
    assert_eq!(books_ms["ServiceDest"][0]["ServicePath"][0], "/api/v1/books");
    assert_eq!(books_ms["Users"][0]["Username"], "alice");
    assert!(!services.to_string().contains("secret"), "no password in config: {services}");
    assert_eq!(books_ms["Tasks"].as_array().map(Vec::len), Some(1));
}
