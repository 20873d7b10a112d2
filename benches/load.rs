//! `dfp-load`: the two load clients `benches/compare.sh` needs that wrk and h2load are not, and
//! the WebSocket echo server behind them.
//!
//! - `handshakes`: a new TLS connection per request, always a full handshake. Stock wrk resumes
//!   TLS sessions when it reconnects; this client turns resumption off (rustls
//!   `Resumption::disabled()`), checks each connection's handshake kind and counts full and
//!   resumed handshakes separately, so a run proves what it measured. Each connection sends one
//!   `GET` with `Connection: close` and reads the answer to its end.
//! - `websocket`: WebSocket messages per second through a proxy: each connection upgrades
//!   (`GET` with `Upgrade: websocket`, expects `101`), then sends a masked text message, waits
//!   for its echo, and sends the next one (one message in flight per connection).
//! - `ws-echo`: the upstream for `websocket`: answers the upgrade (with a correct
//!   `Sec-WebSocket-Accept`) and echoes every message.
//! - `tcp-stream`: bytes per second through a TCP service (`reqMode=tcp`) or HAProxy's
//!   `mode tcp`: each connection stays open, writes a `--size`-byte chunk and reads it back
//!   from `tcp-echo` whole before the next (one chunk in flight per connection). A "request"
//!   is one chunk echoed; `bytes=` counts the bytes sent (each crosses the proxy twice).
//! - `tcp-connect`: connections per second through the same: each connection is opened, sends
//!   `--size` bytes, reads them back, and is closed by the client. A "request" is a connection.
//! - `tcp-echo`: the instance behind both: writes back every byte it reads, until EOF.
//! - `get`: plain HTTP/1.1 keep-alive GETs, one in flight per connection (a closed loop like
//!   wrk's), reconnecting when the proxy closes a connection. With `--timeline FILE` it also
//!   writes what completed and what failed in each `--bucket-ms` slice of the run: the
//!   throughput-over-time chart of `compare.sh`'s churn scenario (a reload's dip shows there,
//!   where a run's average hides it).
//!
//! The clients run for `--duration` seconds (and at most `--max` requests or messages), on one
//! thread, and print one line in the format of `benches/compare/report.lua`, which
//! `compare.sh` parses: `RESULT requests=N duration_us=N p50_us=N p99_us=N connect=N read=N
//! write=N status=N timeout=N` and a few extra fields (p90 and p99.9, handshake kinds,
//! negotiated suite).
//! Latency is from the first byte written (the TCP connect, for `handshakes`) to the end of
//! the answer or echo.
//!
//! Run: `cargo run --release -p dfp-benches --bin dfp-load -- handshakes --addr 127.0.0.1:8443`

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

#[path = "load/get.rs"]
mod get;
#[path = "load/websocket.rs"]
mod websocket;

use get::get_loop;
use websocket::{websocket_loop, ws_echo};

/// How long one step (connect, handshake, a read) may take before it counts as a timeout.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(name = "dfp-load", about = "Load clients for benches/compare.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A new TLS connection with a full handshake for every request.
    Handshakes {
        #[command(flatten)]
        load: Load,
        /// The request's path.
        #[arg(long, default_value = "/api/v1/books")]
        path: String,
    },
    /// WebSocket echo round trips, one message in flight per connection.
    Websocket {
        #[command(flatten)]
        load: Load,
        /// The upgrade request's path.
        #[arg(long, default_value = "/ws")]
        path: String,
        /// Bytes per message.
        #[arg(long, default_value_t = 128)]
        size: usize,
    },
    /// The WebSocket echo server.
    WsEcho {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Long TCP connections, each echoing one chunk at a time through the proxy.
    TcpStream {
        #[command(flatten)]
        load: Load,
        /// Bytes per chunk.
        #[arg(long, default_value_t = 65536)]
        size: usize,
    },
    /// A new TCP connection per small echo exchange, closed by the client.
    TcpConnect {
        #[command(flatten)]
        load: Load,
        /// Bytes sent (and read back) per connection.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// The TCP echo server (the instance for tcp-stream and tcp-connect).
    TcpEcho {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Plain HTTP/1.1 keep-alive GETs, one in flight per connection.
    Get {
        #[command(flatten)]
        load: Load,
        /// The request's path.
        #[arg(long, default_value = "/api/v1/books")]
        path: String,
        /// Write completed and failed requests per time slice to this file (tab-separated:
        /// slice start in ms since the run began, completed, failed).
        #[arg(long)]
        timeline: Option<std::path::PathBuf>,
        /// The timeline's slice, in milliseconds.
        #[arg(long, default_value_t = 100)]
        bucket_ms: u64,
    },
}

#[derive(Debug, clap::Args)]
struct Load {
    /// The proxy's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// At most this many requests (handshakes) or messages in all.
    #[arg(long, default_value_t = u64::MAX)]
    max: u64,
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Handshakes { load, path } => {
            let tally = runtime
                .block_on(run_clients(&load, move |shared| handshake_loop(shared, path.clone())))?;
            report(&tally)
        }
        Command::Websocket { load, path, size } => {
            let tally = runtime.block_on(run_clients(&load, move |shared| {
                websocket_loop(shared, path.clone(), size)
            }))?;
            report(&tally)
        }
        Command::WsEcho { listen } => runtime.block_on(ws_echo(listen)),
        Command::TcpStream { load, size } => {
            let tally = runtime
                .block_on(run_clients(&load, move |shared| tcp_stream_loop(shared, size)))?;
            report(&tally)
        }
        Command::TcpConnect { load, size } => {
            let tally = runtime
                .block_on(run_clients(&load, move |shared| tcp_connect_loop(shared, size)))?;
            report(&tally)
        }
        Command::TcpEcho { listen } => runtime.block_on(async {
            let listener = TcpListener::bind(listen).await?;
            tcp_echo(listener).await
        }),
        Command::Get { load, path, timeline, bucket_ms } => {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", load.addr).into_bytes();
            let request: std::rc::Rc<[u8]> = request.into();
            let tally = runtime
                .block_on(run_clients(&load, move |shared| get_loop(shared, request.clone())))?;
            if let Some(file) = timeline {
                write_timeline(&file, &tally, bucket_ms.max(1))?;
            }
            report(&tally)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients' common frame: N connections until a deadline or a request budget.

/// What every client task shares.
struct Shared {
    addr: SocketAddr,
    /// When the run began: the timeline's zero.
    began: Instant,
    deadline: Instant,
    budget: std::cell::Cell<u64>,
    tls: TlsConnector,
}

impl Shared {
    /// Takes one request from the budget; false when time or budget is up.
    fn take(&self) -> bool {
        let left = self.budget.get();
        if left == 0 || Instant::now() >= self.deadline {
            return false;
        }
        self.budget.set(left - 1);
        true
    }
}

/// What one task counted.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    full: u64,
    resumed: u64,
    /// Payload bytes written and read back whole (tcp-stream, tcp-connect).
    bytes: u64,
    negotiated: Option<String>,
    duration: Duration,
    /// When each request ended, in ms since the run began, and whether it succeeded (`get`
    /// only: the timeline).
    ended_ms: Vec<(u32, bool)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.status += other.status;
        self.timeout += other.timeout;
        self.full += other.full;
        self.resumed += other.resumed;
        self.bytes += other.bytes;
        self.ended_ms.extend(other.ended_ms);
        if self.negotiated.is_none() {
            self.negotiated = other.negotiated;
        }
    }

    /// Notes when a request ended, for the timeline.
    fn ended(&mut self, shared: &Shared, ok: bool) {
        let ms = u32::try_from(shared.began.elapsed().as_millis()).unwrap_or(u32::MAX);
        self.ended_ms.push((ms, ok));
    }

    fn record(&mut self, started: Instant) {
        let us = started.elapsed().as_micros();
        self.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
    }

    /// Counts a failed step by its kind.
    fn fail(&mut self, failure: Failure) {
        match failure {
            Failure::Connect => self.connect += 1,
            Failure::Read => self.read += 1,
            Failure::Write => self.write += 1,
            Failure::Status => self.status += 1,
            Failure::Timeout => self.timeout += 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Connect,
    Read,
    Write,
    Status,
    Timeout,
}

/// Runs `step` within [`STEP_TIMEOUT`]; an error becomes `kind`, running out of time a timeout.
async fn bounded<T, E>(
    kind: Failure,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Failure> {
    match timeout(STEP_TIMEOUT, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(kind),
        Err(_) => Err(Failure::Timeout),
    }
}

async fn run_clients<F, Fut>(load: &Load, task: F) -> std::io::Result<Tally>
where
    F: Fn(std::rc::Rc<Shared>) -> Fut,
    Fut: std::future::Future<Output = Tally> + 'static,
{
    let shared = std::rc::Rc::new(Shared {
        addr: load.addr,
        began: Instant::now(),
        deadline: Instant::now() + Duration::from_secs(load.duration),
        budget: std::cell::Cell::new(load.max),
        tls: TlsConnector::from(Arc::new(client_config())),
    });
    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    let tally = local
        .run_until(async {
            let mut tasks = JoinSet::new();
            for _ in 0..load.connections {
                tasks.spawn_local(task(shared.clone()));
            }
            let mut all = Tally::default();
            while let Some(done) = tasks.join_next().await {
                all.merge(done.map_err(std::io::Error::other)?);
            }
            Ok::<_, std::io::Error>(all)
        })
        .await?;
    Ok(Tally { duration: started.elapsed(), ..tally })
}

fn report(tally: &Tally) -> std::io::Result<()> {
    let mut sorted = tally.latencies_us.clone();
    sorted.sort_unstable();
    // The value at or below which `per_mille` thousandths of the latencies are.
    let percentile = |per_mille: usize| -> u32 {
        if sorted.is_empty() {
            return 0;
        }
        sorted[((sorted.len() * per_mille).div_ceil(1000)).clamp(1, sorted.len()) - 1]
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "RESULT requests={} duration_us={} p50_us={} p99_us={} connect={} read={} write={} \
         status={} timeout={} full_handshakes={} resumed_handshakes={} bytes={} negotiated={} \
         p90_us={} p999_us={}",
        sorted.len(),
        tally.duration.as_micros(),
        percentile(500),
        percentile(990),
        tally.connect,
        tally.read,
        tally.write,
        tally.status,
        tally.timeout,
        tally.full,
        tally.resumed,
        tally.bytes,
        tally.negotiated.as_deref().unwrap_or("-"),
        percentile(900),
        percentile(999),
    )
}

/// Writes `tally`'s requests per `bucket_ms` slice of the run: `start_ms completed failed`.
fn write_timeline(file: &std::path::Path, tally: &Tally, bucket_ms: u64) -> std::io::Result<()> {
    let slices = usize::try_from(tally.duration.as_millis() as u64 / bucket_ms + 1).unwrap_or(1);
    let mut counts = vec![(0u64, 0u64); slices];
    for &(ms, ok) in &tally.ended_ms {
        let slice = usize::try_from(u64::from(ms) / bucket_ms).unwrap_or(usize::MAX);
        if let Some(count) = counts.get_mut(slice) {
            if ok {
                count.0 += 1;
            } else {
                count.1 += 1;
            }
        }
    }
    // The last slice is cut short by the deadline: left out, it would read as a dip.
    counts.truncate(slices.saturating_sub(1).max(1));
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    for (i, (done, failed)) in counts.iter().enumerate() {
        writeln!(out, "{}\t{done}\t{failed}", i as u64 * bucket_ms)?;
    }
    out.flush()
}

/// Reads until the end of an HTTP head; returns the head's length (with its blank line) or
/// None when the stream ends first. `buf` keeps what came after it.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        buf.reserve(16384);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// handshakes

/// Accepts whatever certificate the proxy presents: the benchmark measures the server's side
/// of the handshake, and every proxy serves the same self-signed certificate.
#[derive(Debug)]
struct AcceptAnything(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// rustls (ring) with its default versions, suites and groups, HTTP/1.1 by ALPN, and no
/// session resumption: every handshake is a full one.
fn client_config() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

async fn handshake_loop(shared: std::rc::Rc<Shared>, path: String) -> Tally {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", shared.addr)
            .into_bytes();
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(4096);
    while shared.take() {
        let started = Instant::now();
        match one_handshake(&shared, &request, &mut buf, &mut tally).await {
            Ok(()) => tally.record(started),
            Err(failure) => tally.fail(failure),
        }
    }
    tally
}

async fn one_handshake(
    shared: &Shared,
    request: &[u8],
    buf: &mut Vec<u8>,
    tally: &mut Tally,
) -> Result<(), Failure> {
    let tcp = bounded(Failure::Connect, TcpStream::connect(shared.addr)).await?;
    tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let name = ServerName::IpAddress(shared.addr.ip().into());
    let mut tls = bounded(Failure::Connect, shared.tls.connect(name, tcp)).await?;
    let (_, session) = tls.get_ref();
    match session.handshake_kind() {
        Some(HandshakeKind::Resumed) => tally.resumed += 1,
        _ => tally.full += 1,
    }
    if tally.negotiated.is_none() {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        tally.negotiated = Some(format!(
            "{}/{}/{}",
            or_dash(session.protocol_version().map(|v| format!("{v:?}"))),
            or_dash(session.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()))),
            or_dash(session.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name()))),
        ));
    }
    bounded(Failure::Write, tls.write_all(request)).await?;
    buf.clear();
    // The proxy closes after the answer (Connection: close); an end without close_notify is
    // fine once a whole answer is in.
    let _ = bounded(Failure::Read, tls.read_to_end(buf)).await;
    if !complete_ok(buf) {
        return Err(if buf.is_empty() { Failure::Read } else { Failure::Status });
    }
    Ok(())
}

/// An answer `200` whose head and (Content-Length) body are complete.
fn complete_ok(buf: &[u8]) -> bool {
    if !(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")) {
        return false;
    }
    let Some(end) = find(buf, b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(n) => buf.len() >= end + 4 + n,
        None => true,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// tcp-stream, tcp-connect, tcp-echo

/// The bytes a TCP client sends: a fixed pattern, so the echo can be checked byte for byte.
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Writes `chunk` and reads as many bytes back at the same time (a chunk larger than the
/// socket buffers cannot deadlock), within one step timeout; the echo must equal `chunk`.
async fn echo_once(tcp: &mut TcpStream, chunk: &[u8], back: &mut [u8]) -> Result<(), Failure> {
    let (mut reader, mut writer) = tcp.split();
    let (written, read) = tokio::join!(
        bounded(Failure::Write, writer.write_all(chunk)),
        bounded(Failure::Read, reader.read_exact(back)),
    );
    written?;
    read?;
    if back != chunk {
        return Err(Failure::Status);
    }
    Ok(())
}

async fn tcp_stream_loop(shared: std::rc::Rc<Shared>, size: usize) -> Tally {
    let mut tally = Tally::default();
    if let Err(failure) = tcp_stream_session(&shared, size, &mut tally).await {
        tally.fail(failure);
    }
    tally
}

async fn tcp_stream_session(
    shared: &Shared,
    size: usize,
    tally: &mut Tally,
) -> Result<(), Failure> {
    let mut tcp = bounded(Failure::Connect, TcpStream::connect(shared.addr)).await?;
    tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let chunk = pattern(size);
    let mut back = vec![0; size];
    while shared.take() {
        let started = Instant::now();
        echo_once(&mut tcp, &chunk, &mut back).await?;
        tally.record(started);
        tally.bytes += size as u64;
    }
    Ok(())
}

async fn tcp_connect_loop(shared: std::rc::Rc<Shared>, size: usize) -> Tally {
    let mut tally = Tally::default();
    let chunk = pattern(size);
    let mut back = vec![0; size];
    while shared.take() {
        let started = Instant::now();
        match tcp_connect_once(&shared, &chunk, &mut back).await {
            Ok(()) => {
                tally.record(started);
                tally.bytes += size as u64;
            }
            Err(failure) => tally.fail(failure),
        }
    }
    tally
}

async fn tcp_connect_once(shared: &Shared, chunk: &[u8], back: &mut [u8]) -> Result<(), Failure> {
    let mut tcp = bounded(Failure::Connect, TcpStream::connect(shared.addr)).await?;
    tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
    echo_once(&mut tcp, chunk, back).await?;
    // The client closes first; the proxy passes the end on to the echo.
    let _ = timeout(STEP_TIMEOUT, tcp.shutdown()).await;
    Ok(())
}

/// Serves the echo on a bound listener (the caller owns the port) until an accept fails.
async fn tcp_echo(listener: TcpListener) -> std::io::Result<()> {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            loop {
                let (mut stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::task::spawn_local(async move {
                    let (mut reader, mut writer) = stream.split();
                    // Until the peer's EOF (or an error: an expected disconnect).
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        })
        .await
}
