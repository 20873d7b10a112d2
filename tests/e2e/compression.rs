//! `compressionAlgo`/`compressionType` (issue 14): a service's listed types are gzipped (or
//! brotli-compressed, with the coding negotiated from the service's list) on their way to
//! clients that accept it, over plain HTTP/1.1, HTTP/1.1 over TLS and HTTP/2,
//! and decode to exactly what the instance sent, whether it sent a `Content-Length` body or
//! a chunked one; images, bodies the instance already encoded, tiny bodies, `HEAD`, `304`,
//! clients without `Accept-Encoding` and HTTP/1.0 clients get the instance's bytes
//! untouched. The option is validated (a bad value is a 400 that changes nothing) and
//! survives a restart through the state file.
//!
//! The clients are reqwest without its `gzip` feature (the workspace builds none), so what
//! the test reads is what the proxy sent.

use std::io::Read as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{
    http_client, over_plain_tls_and_h2, Protocol, Proxy, RawUpstream, Reply, Scratch,
};
use crate::tls::{https, upload, Ca};

const HOST: &str = "shop.example";

/// What the instance sends for each path.
struct Bodies {
    big: Vec<u8>,
    page: Vec<u8>,
    png: Vec<u8>,
    encoded: Vec<u8>,
    tiny: Vec<u8>,
}

impl Bodies {
    fn new() -> Bodies {
        let big: Vec<u8> = (0u32..)
            .flat_map(|i| format!("line {i} of a large text body\n").into_bytes())
            .take(1024 * 1024)
            .collect();
        let page: Vec<u8> =
            (0..400).flat_map(|i| format!("<p>paragraph {i}</p>\n").into_bytes()).collect();
        let png: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let encoded: Vec<u8> = (0..2_000u32).map(|i| (i * 13 % 256) as u8).collect();
        Bodies { big, page, png, encoded, tiny: b"tiny text".to_vec() }
    }
}

fn reply(bodies: &Bodies, head: &str) -> Reply {
    let target = head.split(' ').nth(1).unwrap_or_default();
    let head_request = head.starts_with("HEAD ");
    let with_length = |fields: &str, body: &[u8]| {
        let mut bytes =
            format!("HTTP/1.1 200 OK\r\n{fields}Content-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        if !head_request {
            bytes.extend_from_slice(body);
        }
        Reply::Bytes(bytes)
    };
    match target {
        "/big" => with_length("Content-Type: text/plain; charset=utf-8\r\n", &bodies.big),
        "/page" => {
            // Chunked, in pieces that arrive in separate reads.
            let mut pieces =
                vec![b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nVary: Origin\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
            for part in bodies.page.chunks(3000) {
                let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                chunk.extend_from_slice(part);
                chunk.extend_from_slice(b"\r\n");
                pieces.push(chunk);
            }
            pieces.push(b"0\r\n\r\n".to_vec());
            Reply::Pieces(pieces)
        }
        "/trailers" => {
            // The page, chunked, then trailers: two that compression leaves true and two
            // checksums of the bytes as sent, which it makes false.
            let mut pieces = vec![b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTrailer: Grpc-Status, X-Checksum, Content-MD5, Digest\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
            for part in bodies.page.chunks(3000) {
                let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                chunk.extend_from_slice(part);
                chunk.extend_from_slice(b"\r\n");
                pieces.push(chunk);
            }
            pieces.push(
                format!("0\r\n{}\r\n", TRAILERS.map(|t| format!("{t}\r\n")).concat()).into_bytes(),
            );
            Reply::Pieces(pieces)
        }
        "/png" => with_length("Content-Type: image/png\r\n", &bodies.png),
        "/encoded" => {
            with_length("Content-Type: text/plain\r\nContent-Encoding: gzip\r\n", &bodies.encoded)
        }
        "/tiny" => with_length("Content-Type: text/plain\r\n", &bodies.tiny),
        "/unchanged" => Reply::Bytes(
            b"HTTP/1.1 304 Not Modified\r\nContent-Type: text/plain\r\nETag: \"v1\"\r\n\r\n"
                .to_vec(),
        ),
        _ => Reply::Bytes(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()),
    }
}

/// The trailers the instance sends after `/trailers`: the last two are checksums of its bytes.
const TRAILERS: [&str; 4] = [
    "Grpc-Status: 0",
    "X-Checksum: abc",
    "Content-MD5: Q2hlY2s=",
    "Digest: sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
];

fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out).expect("a valid brotli stream");
    out
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("a valid gzip stream");
    out
}

/// What a client got: status, the fields that matter here, the body.
#[derive(Debug)]
struct Got {
    status: u16,
    encoding: Option<String>,
    vary: Vec<String>,
    length: Option<String>,
    body: Vec<u8>,
}

/// `accept`: the request's `Accept-Encoding`, if any.
async fn fetch(client: &reqwest::Client, url: &str, head: bool, accept: Option<&str>) -> Got {
    let request = if head { client.head(url) } else { client.get(url) };
    let request = match accept {
        Some(accept) => request.header("accept-encoding", accept),
        None => request,
    };
    let response = request.send().await.expect("the proxy answers");
    let field =
        |name: &str| response.headers().get(name).map(|v| v.to_str().expect("text").to_owned());
    let (status, encoding, length) =
        (response.status().as_u16(), field("content-encoding"), field("content-length"));
    let vary = response
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().expect("text").to_ascii_lowercase())
        .collect();
    let body = response.bytes().await.expect("the whole body").to_vec();
    Got { status, encoding, vary, length, body }
}

/// What the gzip checks' clients accept: brotli too, which a gzip-only service never sends.
const GZIP: Option<&str> = Some("gzip, br");

/// Every check, through one client (`what` names it in failures).
async fn check(what: &str, client: &reqwest::Client, url: &dyn Fn(&str) -> String, b: &Bodies) {
    for (path, original) in [("/big", &b.big), ("/page", &b.page)] {
        let got = fetch(client, &url(path), false, GZIP).await;
        assert_eq!(got.status, 200, "{what} {path}");
        assert_eq!(got.encoding.as_deref(), Some("gzip"), "{what} {path}");
        assert!(got.vary.iter().any(|v| v.contains("accept-encoding")), "{what} {path}: {got:?}");
        assert_eq!(got.length, None, "{what} {path}: no length for a compressed body");
        assert!(got.body.len() < original.len() / 3, "{what} {path}: {} bytes", got.body.len());
        assert!(gunzip(&got.body) == *original, "{what} {path}: decodes to the original");
    }
    // The instance's own Vary is kept beside the proxy's.
    let page = fetch(client, &url("/page"), false, GZIP).await;
    assert!(page.vary.iter().any(|v| v.contains("origin")), "{what}: {:?}", page.vary);

    for (path, original, encoding) in
        [("/png", &b.png, None), ("/encoded", &b.encoded, Some("gzip")), ("/tiny", &b.tiny, None)]
    {
        let got = fetch(client, &url(path), false, GZIP).await;
        assert_eq!((got.status, got.encoding.as_deref()), (200, encoding), "{what} {path}");
        assert!(got.vary.is_empty(), "{what} {path}: {:?}", got.vary);
        assert!(got.body == *original, "{what} {path}: untouched");
        assert_eq!(got.length, Some(original.len().to_string()), "{what} {path}");
    }
    let head = fetch(client, &url("/big"), true, GZIP).await;
    assert_eq!((head.status, head.encoding.as_deref()), (200, None), "{what} HEAD");
    assert!(head.body.is_empty(), "{what} HEAD");
    let unchanged = fetch(client, &url("/unchanged"), false, GZIP).await;
    assert_eq!((unchanged.status, unchanged.encoding.as_deref()), (304, None), "{what} 304");

    let identity = fetch(client, &url("/big"), false, None).await;
    assert_eq!((identity.status, identity.encoding.as_deref()), (200, None), "{what}");
    assert_eq!(identity.length, Some(b.big.len().to_string()), "{what} identity");
    assert!(identity.body == b.big, "{what}: without Accept-Encoding, the instance's bytes");
}

#[tokio::test]
async fn listed_types_are_gzipped_for_clients_that_accept_it() {
    let bodies = Arc::new(Bodies::new());
    let script = bodies.clone();
    let upstream = RawUpstream::start(move |_, head| reply(&script, head)).await;
    let scratch = Scratch::new();
    let state = format!("--state-file={}", scratch.path("state.json").display());
    let mut proxy = Proxy::start(None, &[&state]).await;
    let ca = Ca::new();
    assert_eq!(upload(&proxy, "shop", &ca.issue(&[HOST]).pem).await.0, 200);
    let route = |options: &str| {
        format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}{options}",
            upstream.port()
        )
    };
    let (status, answer) =
        proxy.admin(&route("&compressionAlgo=gzip&compressionType=text/plain%20text/html")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("Warnings").is_none_or(|w| w.to_string().find("compression").is_none()));
    let service = &proxy.config().await["Services"][0];
    assert_eq!(service["CompressionAlgo"], "gzip", "{service}");
    assert_eq!(service["CompressionType"], "text/plain text/html", "{service}");

    let plain = http_client();
    let plain_url = |path: &str| proxy.url(path);
    check("HTTP/1.1", &plain, &plain_url, &bodies).await;
    let tls_url = |path: &str| https(&proxy, HOST, path);
    let h1 = ca.client(&proxy, &[HOST], true);
    check("HTTP/1.1 over TLS", &h1, &tls_url, &bodies).await;
    let h2 = ca.client(&proxy, &[HOST], false);
    let version = h2.get(tls_url("/tiny")).send().await.expect("answer").version();
    assert_eq!(version, reqwest::Version::HTTP_2);
    check("HTTP/2", &h2, &tls_url, &bodies).await;

    // An HTTP/1.0 client reads no chunked body: it gets the instance's, with its length.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connects");
    stream.write_all(b"GET /big HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n").await.expect("sent");
    let mut answer10 = Vec::new();
    stream.read_to_end(&mut answer10).await.expect("read to close");
    let head_end = answer10.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    let head10 = String::from_utf8_lossy(&answer10[..head_end]).to_ascii_lowercase();
    assert!(!head10.contains("content-encoding"), "{head10}");
    assert!(answer10[head_end..] == bodies.big, "HTTP/1.0: untouched");

    // A bad value is a 400 naming it, and changes nothing.
    for bad in ["&compressionAlgo=brotli", "&compressionAlgo=gzip&compressionType=text"] {
        let (status, answer) = proxy.admin(&route(bad)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["Message"].as_str().is_some_and(|m| m.contains("compression")), "{answer}");
    }
    assert_eq!(
        fetch(&plain, &proxy.url("/big"), false, GZIP).await.encoding.as_deref(),
        Some("gzip")
    );

    // Restored from the state file.
    assert!(proxy.terminate().await.success());
    proxy = Proxy::start(None, &[&state]).await;
    assert_eq!(proxy.config().await["Services"][0]["CompressionAlgo"], "gzip");
    let plain_url = |path: &str| proxy.url(path);
    check("HTTP/1.1 after a restart", &plain, &plain_url, &bodies).await;

    // Without the option, nothing is compressed.
    let (status, answer) = proxy.admin(&route("")).await;
    assert_eq!(status, 200, "{answer}");
    let got = fetch(&plain, &proxy.url("/big"), false, GZIP).await;
    assert_eq!(got.encoding, None);
    assert!(got.body == bodies.big);
}

/// A service listing `br gzip`: each client gets the first of the two it accepts, and the
/// body decodes to exactly what the instance sent, over each protocol.
async fn check_negotiated(what: &str, client: &reqwest::Client, url: &dyn Fn(&str) -> String) {
    let b = Bodies::new();
    let cases = [
        ("gzip, deflate, br", Some("br")),
        ("gzip;q=1.0, br;q=0.5", Some("br")),
        ("gzip", Some("gzip")),
        ("br;q=0, gzip", Some("gzip")),
        ("*", Some("br")),
        ("deflate, identity", None),
    ];
    for (accept, coding) in cases {
        for (path, original) in [("/big", &b.big), ("/page", &b.page)] {
            let got = fetch(client, &url(path), false, Some(accept)).await;
            let what = format!("{what} {path} Accept-Encoding: {accept}");
            assert_eq!((got.status, got.encoding.as_deref()), (200, coding), "{what}");
            let body = match coding {
                Some("br") => unbrotli(&got.body),
                Some(_) => gunzip(&got.body),
                None => got.body.clone(),
            };
            assert!(body == *original, "{what}: decodes to the original");
            if coding.is_some() {
                assert!(got.body.len() < original.len() / 3, "{what}: {} bytes", got.body.len());
                assert!(got.vary.iter().any(|v| v.contains("accept-encoding")), "{what}");
            }
        }
    }
}

#[tokio::test]
async fn brotli_is_sent_to_clients_that_accept_it_and_gzip_to_the_others() {
    let bodies = Arc::new(Bodies::new());
    let upstream = RawUpstream::start(move |_, head| reply(&bodies, head)).await;
    let mut proxy = Proxy::start(None, &[]).await;
    let ca = Ca::new();
    assert_eq!(upload(&proxy, "shop", &ca.issue(&[HOST]).pem).await.0, 200);
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}\
             &compressionAlgo=br%20gzip&compressionType=text/plain%20text/html",
            upstream.port()
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.config().await["Services"][0]["CompressionAlgo"], "br gzip");

    check_negotiated("HTTP/1.1", &http_client(), &|path| proxy.url(path)).await;
    let tls_url = |path: &str| https(&proxy, HOST, path);
    check_negotiated("HTTP/1.1 over TLS", &ca.client(&proxy, &[HOST], true), &tls_url).await;
    let h2 = ca.client(&proxy, &[HOST], false);
    let version = h2.get(tls_url("/tiny")).send().await.expect("answer").version();
    assert_eq!(version, reqwest::Version::HTTP_2);
    check_negotiated("HTTP/2", &h2, &tls_url).await;
    assert!(proxy.terminate().await.success());
}

/// The data of a chunked body as it came on the wire.
fn dechunk(mut wire: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let line_end = wire.windows(2).position(|w| w == b"\r\n").expect("a size line");
        let line = std::str::from_utf8(&wire[..line_end]).expect("ASCII");
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).expect("hex");
        wire = &wire[line_end + 2..];
        if size == 0 {
            return data;
        }
        data.extend_from_slice(&wire[..size]);
        wire = &wire[size + 2..];
    }
}

/// A chunked response's trailers reach the client after the compressed body (an HTTP/1.1
/// trailer section, an HTTP/2 trailers frame), less the checksums of the instance's bytes
/// that compression makes false; uncompressed, every one arrives.
async fn trailers_follow_a_compressed_body(protocol: Protocol) {
    let bodies = Arc::new(Bodies::new());
    let page = bodies.page.clone();
    let upstream = RawUpstream::start(move |_, head| reply(&bodies, head)).await;
    let proxy = Proxy::start(None, &[]).await;
    protocol.prepare(&proxy).await;
    let (status, answer) = proxy
        .admin(&format!(
            "/v1/docker-flow-proxy/reconfigure?serviceName=127.0.0.1&servicePath=/&port={}\
             &compressionAlgo=br%20gzip&compressionType=text/html",
            upstream.port()
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let lower = |lines: &[&str]| {
        let mut lines: Vec<String> = lines.iter().map(|l| l.to_ascii_lowercase()).collect();
        lines.sort();
        lines
    };
    for (accept, coding) in [("br", Some("br")), ("gzip", Some("gzip")), ("identity", None)] {
        let what = format!("{protocol:?} Accept-Encoding: {accept}");
        let extra = ["TE: trailers".to_owned(), format!("Accept-Encoding: {accept}")];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let got = protocol.get(&proxy, "shop.example", "/trailers", &extra).await;
        assert_eq!((got.status, got.header("content-encoding")), (200, coding), "{what}");
        let data = if protocol == Protocol::H2 { got.body.clone() } else { dechunk(&got.body) };
        let data = match coding {
            Some("br") => unbrotli(&data),
            Some(_) => gunzip(&data),
            None => data,
        };
        assert!(data == page, "{what}: the body decodes to the instance's");
        let want = if coding.is_some() { &TRAILERS[..2] } else { &TRAILERS[..] };
        let got_trailers: Vec<&str> = got.trailers.iter().map(String::as_str).collect();
        assert_eq!(lower(&got_trailers), lower(want), "{what}");
    }
}

over_plain_tls_and_h2!(trailers_follow_a_compressed_body);
