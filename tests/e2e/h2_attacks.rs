//! Attacks on the HTTPS listener (rustls + hyper's HTTP/2), each by a hostile client written
//! here that speaks raw HTTP/2 frames over TLS (ALPN `h2`). Each test holds the proxy to a
//! bounded cost: the attacking connection is refused, stalled or closed within a bounded
//! number of frames, bytes or seconds; the proxy's resident memory stays bounded; and a
//! well-behaved HTTPS request on another connection is answered during or after the attack.
//!
//! Every loop is bounded in count and in time, and everything talks to 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::limits::metric;
use crate::support::{eventually, Proxy, Upstream};
use crate::tls::{client_config, https, route_all_to, tls_addr, upload, Ca};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;

/// How much the proxy's resident memory may grow during an attack. A proxy that buffered
/// what these attacks throw at it would grow by hundreds of megabytes or more.
const RSS_GROWTH_LIMIT_KB: u64 = 64 * 1024;

/// One frame: the 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a test frame is small");
    assert!(len < 1 << 24, "frame length fits 24 bits");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix, the byte's high bits set to `high` (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, n: u32, high: u8, value: usize) {
    let max = (1_usize << n) - 1;
    if value < max {
        out.push(high | u8::try_from(value).expect("below the prefix"));
        return;
    }
    out.push(high | u8::try_from(max).expect("prefix fits"));
    let mut rest = value - max;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).expect("7 bits") | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).expect("7 bits"));
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, text: &[u8]) {
    hpack_int(out, 7, 0, text.len());
    out.extend_from_slice(text);
}

/// A header field "literal without indexing" with a literal name (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// The header block of `GET https://shop.example{path}`.
fn request_block(path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x87]; // :method GET, :scheme https (static table, indexed)
    out.push(0x04); // :path, name from the static table, literal value
    hpack_str(&mut out, path.as_bytes());
    out.push(0x01); // :authority
    hpack_str(&mut out, b"shop.example");
    out
}

/// What the attacker's reader saw the proxy send.
#[derive(Debug, Default, Clone)]
struct Seen {
    frames: usize,
    data_bytes: usize,
    headers: usize,
    /// (last stream id, error code) of the first GOAWAY.
    goaway: Option<(u32, u32)>,
    closed: bool,
}

/// Reads and records every frame the proxy sends on one connection, in its own task.
struct Reader {
    seen: Arc<Mutex<Seen>>,
    /// Becomes true once the proxy sent GOAWAY or closed the connection.
    ended: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn spawn(mut read: ReadHalf<TlsStream<TcpStream>>) -> Reader {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ended_tx, ended) = watch::channel(false);
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut payload = Vec::new();
            loop {
                let mut head = [0_u8; 9];
                if read.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                payload.resize(len, 0);
                if read.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let mut seen = record.lock().expect("not poisoned");
                seen.frames += 1;
                match head[3] {
                    DATA => seen.data_bytes += len,
                    HEADERS => seen.headers += 1,
                    GOAWAY if seen.goaway.is_none() && len >= 8 => {
                        let word = |at: usize| {
                            u32::from_be_bytes(payload[at..at + 4].try_into().expect("4 bytes"))
                        };
                        seen.goaway = Some((word(0) & 0x7fff_ffff, word(4)));
                        let _ = ended_tx.send(true);
                    }
                    _ => {}
                }
            }
            record.lock().expect("not poisoned").closed = true;
            let _ = ended_tx.send(true);
        });
        Reader { seen, ended, task }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// Waits (at most `within`) for the proxy to send GOAWAY or close the connection.
    async fn ended_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.ended.wait_for(|ended| *ended)).await.is_ok()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS connection to the HTTPS listener that negotiated `h2`, with the client preface and
/// an empty SETTINGS frame already sent.
async fn open_h2(
    proxy: &Proxy,
) -> (ReadHalf<TlsStream<TcpStream>>, WriteHalf<TlsStream<TcpStream>>) {
    let config = client_config(&[b"h2"]);
    let tcp = TcpStream::connect(tls_addr(proxy)).await.expect("the proxy accepts");
    let name = ServerName::try_from("shop.example").expect("a DNS name");
    let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose HTTP/2");
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    tls.write_all(&start).await.expect("preface");
    tls.flush().await.expect("preface sent");
    tokio::io::split(tls)
}

/// How a flood ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The proxy sent GOAWAY or closed the connection (as the reader saw).
    Ended,
    /// A write failed: the proxy closed the connection.
    WriteFailed,
    /// A write did not complete for 3 s: the proxy stopped reading.
    Stalled,
    /// Every frame was sent, or the time ran out, and the connection is still open.
    Exhausted,
}

/// What a flood sent and how it ended.
#[derive(Debug)]
struct Flood {
    units: usize,
    bytes: usize,
    outcome: Outcome,
}

/// Writes `next(i)` for `i` in `0..units`, `batch` at a time, until the reader (if any) saw
/// the connection end, a write fails or stalls, `units` are sent or `budget` has passed.
async fn flood(
    write: &mut WriteHalf<TlsStream<TcpStream>>,
    reader: Option<&Reader>,
    units: usize,
    batch: usize,
    budget: Duration,
    mut next: impl FnMut(usize) -> Vec<u8>,
) -> Flood {
    let deadline = Instant::now() + budget;
    let mut sent = Flood { units: 0, bytes: 0, outcome: Outcome::Exhausted };
    let mut buf = Vec::new();
    while sent.units < units && Instant::now() < deadline {
        if reader.is_some_and(|r| *r.ended.borrow()) {
            sent.outcome = Outcome::Ended;
            return sent;
        }
        buf.clear();
        let upto = (sent.units + batch).min(units);
        for i in sent.units..upto {
            buf.extend(next(i));
        }
        let write = async {
            write.write_all(&buf).await?;
            write.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(3), write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                sent.outcome = Outcome::WriteFailed;
                return sent;
            }
            Err(_) => {
                sent.outcome = Outcome::Stalled;
                return sent;
            }
        }
        sent.units = upto;
        sent.bytes += buf.len();
    }
    if reader.is_some_and(|r| *r.ended.borrow()) {
        sent.outcome = Outcome::Ended;
    }
    sent
}

/// A standalone proxy with `/` routed to an instance and a certificate for `shop.example`.
struct Target {
    ca: Ca,
    web: Upstream,
    proxy: Proxy,
    /// Resident memory (kB) after one request of each protocol, before any attack.
    rss_before: u64,
}

impl Target {
    async fn start(extra: &[&str]) -> Target {
        let ca = Ca::new();
        let web = Upstream::start("web-1").await;
        let proxy = Proxy::start(None, extra).await;
        route_all_to(&proxy, &web).await;
        assert_eq!(upload(&proxy, "shop", &ca.issue(&["shop.example"]).pem).await.0, 200);
        let target = Target { ca, web, proxy, rss_before: 0 };
        target.served().await;
        let rss_before = target.proxy.memory_kb().0;
        Target { rss_before, ..target }
    }

    /// A well-behaved HTTP/2 request on a connection of its own is answered.
    async fn served(&self) {
        let client = self.ca.client(&self.proxy, &["shop.example"], false);
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            client.get(https(&self.proxy, "shop.example", "/")).send(),
        )
        .await
        .expect("a normal request is answered within 20 s")
        .expect("a normal request is answered");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "web-1");
    }

    /// The proxy's resident memory grew by less than [`RSS_GROWTH_LIMIT_KB`].
    fn memory_bounded(&self, during: &str) {
        let (now, _) = self.proxy.memory_kb();
        let growth = now.saturating_sub(self.rss_before);
        assert!(
            growth < RSS_GROWTH_LIMIT_KB,
            "{during}: resident memory grew by {growth} kB (from {} kB)",
            self.rss_before
        );
    }

    /// Every client connection, the attacker's included, is closed within `within`.
    async fn all_closed_within(&self, within: Duration, what: &str) {
        eventually(within, what, || async {
            (metric(&self.proxy, "dfp_open_connections").await? == 0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_costs_a_bounded_number_of_requests() {
    let target = Target::start(&[]).await;
    let (read, mut write) = open_h2(&target.proxy).await;
    let mut reader = Reader::spawn(read);
    let block = request_block("/");
    // CVE-2023-44487: open a stream and cancel it at once, thousands of times.
    const STREAMS: usize = 20_000;
    let sent = flood(&mut write, Some(&reader), STREAMS, 100, Duration::from_secs(30), |i| {
        let id = u32::try_from(2 * i + 1).expect("stream ids fit");
        let mut pair = frame(HEADERS, END_STREAM | END_HEADERS, id, &block);
        pair.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        pair
    })
    .await;
    assert!(reader.ended_within(Duration::from_secs(10)).await, "not stopped: {sent:?}");
    let seen = reader.seen();
    let (last_stream, code) = seen.goaway.unwrap_or_else(|| panic!("no GOAWAY: {seen:?} {sent:?}"));
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM: {seen:?}");
    assert!(last_stream < 2 * 1_000, "processed up to stream {last_stream}: {sent:?}");
    let hits = target.web.hits();
    assert!(hits <= 1_000, "{hits} of {STREAMS} cancelled requests reached the instance");
    target.memory_bounded("rapid reset");
    target.served().await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    // Frames of 1 KiB of header fields each, and empty frames (which never grow the block).
    for payload in [1_000_usize, 0] {
        let target = Target::start(&[]).await;
        let (read, mut write) = open_h2(&target.proxy).await;
        let mut reader = Reader::spawn(read);
        let mut fields = Vec::new();
        while fields.len() + 40 < payload {
            hpack_literal(&mut fields, b"x-flood", &[b'a'; 30]);
        }
        let opening = frame(HEADERS, END_STREAM, 1, &request_block("/"));
        let sent = flood(&mut write, Some(&reader), 100_000, 100, Duration::from_secs(30), |i| {
            let more = frame(CONTINUATION, 0, 1, &fields);
            if i == 0 {
                [opening.clone(), more].concat()
            } else {
                more
            }
        })
        .await;
        let what = format!("CONTINUATION frames of {} bytes: {sent:?}", fields.len());
        assert!(reader.ended_within(Duration::from_secs(10)).await, "not stopped: {what}");
        assert_ne!(sent.outcome, Outcome::Exhausted, "{what}");
        assert!(sent.bytes < 4 << 20, "{what}");
        let seen = reader.seen();
        assert_eq!(seen.headers, 0, "the endless request was never answered: {seen:?}");
        assert_eq!(target.web.hits(), 1, "nor forwarded (the one hit is Target's own)");
        target.memory_bounded(&what);
        target.served().await;
    }
}

/// The floods of frames that each ask for an acknowledgement (SETTINGS, PING).
fn ack_floods() -> [(&'static str, Vec<u8>); 2] {
    [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])), // MAX_CONCURRENT_STREAMS 100
        ("PING", frame(PING, 0, 0, b"12345678")),
    ]
}

/// Floods a new connection with `flood_frame` and never reads; the connection's halves, so
/// that it stays open, and what was sent.
async fn flood_unread(
    target: &Target,
    flood_frame: &[u8],
) -> ((ReadHalf<TlsStream<TcpStream>>, WriteHalf<TlsStream<TcpStream>>), Flood) {
    let (read, mut write) = open_h2(&target.proxy).await;
    let sent = flood(&mut write, None, 10_000_000, 1_000, Duration::from_secs(30), |_| {
        flood_frame.to_vec()
    })
    .await;
    ((read, write), sent)
}

#[tokio::test]
async fn settings_and_ping_floods_from_a_client_that_never_reads_stall_in_bounded_memory() {
    for (what, flood_frame) in ack_floods() {
        let target = Target::start(&[]).await;
        // Every frame asks for an acknowledgement; the attacker never reads one. The proxy
        // acknowledges one before it reads the next, so it stops reading once the socket's
        // buffers are full, instead of queueing acknowledgements.
        let (_connection, sent) = flood_unread(&target, &flood_frame).await;
        assert_eq!(sent.outcome, Outcome::Stalled, "{what}: {sent:?}");
        assert!(sent.bytes < 64 << 20, "{what}: read {sent:?}");
        target.memory_bounded(what);
        target.served().await;
    }
}

#[tokio::test]
async fn a_flooder_that_never_reads_is_closed_by_the_idle_timeout() {
    for (what, flood_frame) in ack_floods() {
        let target = Target::start(&["--idle-timeout=2s", "--client-timeout=2s"]).await;
        let (_connection, sent) = flood_unread(&target, &flood_frame).await;
        assert_ne!(sent.outcome, Outcome::Exhausted, "{what}: {sent:?}");
        // No request is under way, so the idle timeout applies, even though the GOAWAY that
        // begins the close can never be written.
        target
            .all_closed_within(Duration::from_secs(20), &format!("the {what} flooder closed"))
            .await;
    }
}

#[tokio::test]
async fn a_ping_flood_from_a_reading_client_ends_with_the_idle_timeout() {
    let target = Target::start(&["--idle-timeout=2s"]).await;
    let (read, mut write) = open_h2(&target.proxy).await;
    let mut reader = Reader::spawn(read);
    let ping = frame(PING, 0, 0, b"12345678");
    // Pings until the proxy ends the connection, for at most 20 s: it must end it while the
    // flood is still going.
    let sent = flood(&mut write, Some(&reader), usize::MAX, 100, Duration::from_secs(20), |_| {
        ping.clone()
    })
    .await;
    assert!(
        matches!(sent.outcome, Outcome::Ended | Outcome::WriteFailed),
        "not ended by the idle timeout: {sent:?} {:?}",
        reader.seen()
    );
    assert!(reader.ended_within(Duration::from_secs(10)).await, "not stopped: {sent:?}");
    target.memory_bounded("PING flood");
    target.served().await;
}

#[tokio::test]
async fn an_idle_http2_client_that_never_acknowledges_the_goaway_is_closed() {
    let target = Target::start(&["--idle-timeout=2s", "--client-timeout=2s"]).await;
    let (read, _write) = open_h2(&target.proxy).await;
    let mut reader = Reader::spawn(read);
    // It reads everything (so nothing stalls) and sends nothing more, not even the PING ack
    // that hyper's graceful shutdown waits for before its final GOAWAY.
    assert!(reader.ended_within(Duration::from_secs(10)).await, "no GOAWAY: {:?}", reader.seen());
    let closed = eventually(Duration::from_secs(20), "the idle connection closed", || async {
        reader.seen().closed.then_some(())
    });
    closed.await;
}

/// Opens twenty streams on a new connection, each asking for 1 GiB, and never sends a
/// WINDOW_UPDATE; returns once the proxy has filled the initial window.
async fn download_unread(target: &Target) -> (Reader, WriteHalf<TlsStream<TcpStream>>) {
    let (read, mut write) = open_h2(&target.proxy).await;
    let reader = Reader::spawn(read);
    let block = request_block("/download?bytes=1073741824");
    let mut requests = Vec::new();
    for i in 0..20_u32 {
        requests.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    write.write_all(&requests).await.expect("requests");
    write.flush().await.expect("sent");
    eventually(Duration::from_secs(20), "the first window's worth of data", || async {
        (reader.seen().data_bytes >= 65_535).then_some(())
    })
    .await;
    (reader, write)
}

#[tokio::test]
async fn a_response_never_read_is_not_buffered_without_bound() {
    let target = Target::start(&[]).await;
    let (reader, _write) = download_unread(&target).await;
    // Given time to read on from the instance, a proxy that buffered would grow by gigabytes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = reader.seen();
    assert_eq!(seen.data_bytes, 65_535, "no more than the window was sent: {seen:?}");
    target.memory_bounded("responses never read");
    target.served().await;
}

#[tokio::test]
async fn a_response_never_read_does_not_hold_its_connection_forever() {
    let target =
        Target::start(&["--idle-timeout=2s", "--server-timeout=2s", "--client-timeout=2s"]).await;
    let (mut reader, _write) = download_unread(&target).await;
    assert!(
        reader.ended_within(Duration::from_secs(30)).await,
        "a connection whose responses are never read stays open: {:?}",
        reader.seen()
    );
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_client_hello_is_closed_by_the_header_timeout() {
    let target = Target::start(&["--header-timeout=1s"]).await;
    let addr = tls_addr(&target.proxy);
    let failures_before = metric(&target.proxy, "dfp_tls_handshake_failures_total").await;
    // Nothing at all, and a record header that promises 512 bytes and sends 10.
    let silent = TcpStream::connect(addr).await.expect("accepted");
    let mut partial = TcpStream::connect(addr).await.expect("accepted");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 1, 0, 1, 0xfc, 3, 3, 0, 0, 0, 0])
        .await
        .expect("sent");
    for (what, mut stream) in [("silent", silent), ("partial ClientHello", partial)] {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{what}: still open 10 s after a 1 s header timeout");
        assert!(rest.len() < 64, "{what}: answered {rest:?}");
    }
    let failures = metric(&target.proxy, "dfp_tls_handshake_failures_total").await;
    assert!(failures >= failures_before.map(|n| n + 2), "{failures:?}");
    target.memory_bounded("silent handshakes");
    target.served().await;
}

/// The bytes of a ClientHello for `shop.example` (offering `h2`), as a client sends first.
fn client_hello() -> Vec<u8> {
    let config = client_config(&[b"h2"]);
    let name = ServerName::try_from("shop.example").expect("a DNS name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("ClientHello");
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_leaves_the_proxy_serving() {
    const COMPLETE: usize = 300;
    const ABANDONED: usize = 300;
    let target = Target::start(&["--header-timeout=2s"]).await;
    let addr = tls_addr(&target.proxy);
    let mut flood = JoinSet::new();
    // Handshakes that complete, then close at once.
    for _ in 0..COMPLETE {
        flood.spawn(async move {
            let config = client_config(&[]);
            let name = ServerName::try_from("shop.example").expect("a DNS name");
            let handshake = async {
                let tcp = TcpStream::connect(addr).await?;
                TlsConnector::from(Arc::new(config)).connect(name, tcp).await
            };
            tokio::time::timeout(Duration::from_secs(60), handshake).await.is_ok_and(|r| r.is_ok())
        });
    }
    // Handshakes that send a ClientHello (so the proxy does the key exchange and signs),
    // then never answer: held open until the header timeout.
    let hello = client_hello();
    let mut abandoned = Vec::with_capacity(ABANDONED);
    for _ in 0..ABANDONED {
        let mut tcp = TcpStream::connect(addr).await.expect("accepted");
        tcp.write_all(&hello).await.expect("ClientHello");
        abandoned.push(tcp);
    }
    // Served while the flood is under way.
    target.served().await;
    let mut completed = 0;
    while let Some(done) = flood.join_next().await {
        completed += usize::from(done.expect("handshake task"));
    }
    assert_eq!(completed, COMPLETE, "every complete handshake was served within 60 s");
    target.memory_bounded("handshake flood");
    target.all_closed_within(Duration::from_secs(30), "abandoned handshakes closed").await;
    drop(abandoned);
    target.served().await;
}
