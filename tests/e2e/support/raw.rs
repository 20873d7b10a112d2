//! Raw HTTP/1.1 peers, for tests that need exact bytes on the wire: an upstream that answers
//! each request head with the bytes its script chooses and records what it received, and a
//! keep-alive client that sends bytes and reads the answers one at a time, over plain TCP or
//! any other byte stream (a TLS connection to the proxy).
//!
//! Every read the client makes gives up after [`READ_LIMIT`]; the upstream's connections are
//! closed when it is dropped, like a process that dies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// How long a client read may wait before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// What a [`RawUpstream`] does with one request.
#[derive(Debug)]
pub enum Reply {
    /// Writes these bytes, then waits for the next request on the connection.
    Bytes(Vec<u8>),
    /// Writes these pieces one at a time, 20 ms apart, so that they arrive in separate reads;
    /// then waits for the next request.
    Pieces(Vec<Vec<u8>>),
    /// Writes these bytes and closes the connection.
    ThenClose(Vec<u8>),
    /// Writes the first bytes (an answer), then, 100 ms later and unasked, the second (say a
    /// `408`, as some servers send before closing an idle connection), and closes.
    ThenUnasked(Vec<u8>, Vec<u8>),
    /// Writes `before`, waits for a permit of `gate` (the test adds them), writes `after`;
    /// then waits for the next request.
    Gated { before: Vec<u8>, gate: Arc<Semaphore>, after: Vec<u8> },
    /// Closes the connection without answering.
    Close,
    /// Never answers; the connection stays open.
    Silent,
}

impl Reply {
    /// `200 OK` with a `Content-Length` body, and a mixed-case header (see [`Answer::verbatim`]).
    pub fn ok(body: &str) -> Reply {
        Reply::Bytes(Reply::ok_bytes(body))
    }

    /// The bytes of [`Reply::ok`].
    pub fn ok_bytes(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nX-Raw-Upstream: yes\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// One request as a [`RawUpstream`] received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which accepted connection carried it (0 for the first accepted, and so on).
    pub connection: usize,
    /// The head as sent, request line and headers, up to and without the blank line.
    pub head: String,
    /// The body as it came (`Content-Length` bytes, or the chunks with their framing).
    pub body: Vec<u8>,
}

impl Received {
    /// The request line.
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// Every value of the header `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        header_values(&self.head, name)
    }
}

#[derive(Default)]
struct Log {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    received: Mutex<Vec<Received>>,
}

/// A TCP upstream on 127.0.0.1 that reads requests (heads, and bodies framed by
/// `Content-Length` or chunked) and answers as its script says. The script gets the request's index on its connection (0 for
/// the first) and its head.
pub struct RawUpstream {
    port: u16,
    log: Arc<Log>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start<F>(script: F) -> RawUpstream
    where
        F: Fn(usize, &str) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback port");
        let port = listener.local_addr().expect("bound").port();
        let log = Arc::new(Log::default());
        let script = Arc::new(script);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the accept task drops it and them.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let connection = task_log.accepted.fetch_add(1, Ordering::SeqCst);
                let (log, script) = (task_log.clone(), script.clone());
                connections.spawn(async move {
                    serve(stream, connection, &log, &*script).await;
                    log.closed.fetch_add(1, Ordering::SeqCst);
                });
                while connections.try_join_next().is_some() {}
            }
        });
        RawUpstream { port, log, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.log.accepted.load(Ordering::SeqCst)
    }

    /// Connections this upstream has closed (or seen closed) so far.
    pub fn closed(&self) -> usize {
        self.log.closed.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.log.received.lock().expect("not poisoned").clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    connection: usize,
    log: &Log,
    script: &(dyn Fn(usize, &str) -> Reply + Send + Sync),
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    for index in 0.. {
        let Some(head_end) = find_reading(&mut stream, &mut buf, 0, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let body_start = head_end + 4;
        let Some(body_end) = body_end(&mut stream, &mut buf, &head, body_start).await else {
            return;
        };
        let body = buf[body_start..body_end].to_vec();
        buf.drain(..body_end);
        let reply = script(index, &head);
        log.received.lock().expect("not poisoned").push(Received { connection, head, body });
        match reply {
            Reply::Bytes(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::Pieces(pieces) => {
                for piece in pieces {
                    if stream.write_all(&piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Reply::ThenClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Reply::ThenUnasked(answer, unasked) => {
                if stream.write_all(&answer).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = stream.write_all(&unasked).await;
                }
                return;
            }
            Reply::Gated { before, gate, after } => {
                if stream.write_all(&before).await.is_err() {
                    return;
                }
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                if stream.write_all(&after).await.is_err() {
                    return;
                }
            }
            Reply::Close => return,
            Reply::Silent => std::future::pending::<()>().await,
        }
    }
}

/// Reads from `stream` into `buf` until `buf[from..]` holds `needle`; its offset, or `None`
/// when the connection ended first.
async fn find_reading(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    from: usize,
    needle: &[u8],
) -> Option<usize> {
    loop {
        if let Some(at) = buf.get(from..).and_then(|b| find(b, needle)) {
            return Some(from + at);
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

/// Reads more bytes into `buf`; false when the connection ended.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.reserve(16 * 1024);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

/// Where the request body that starts at `start` ends (`Content-Length`, or chunked up to the
/// trailers' blank line), reading as needed; `None` when the connection ended first.
async fn body_end(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &str,
    start: usize,
) -> Option<usize> {
    let chunked = header_values(head, "transfer-encoding")
        .iter()
        .any(|te| te.rsplit(',').next().unwrap_or_default().trim().eq_ignore_ascii_case("chunked"));
    if !chunked {
        let length: usize =
            header_values(head, "content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < start + length {
            if !read_more(stream, buf).await {
                return None;
            }
        }
        return Some(start + length);
    }
    let mut pos = start;
    loop {
        let line_end = find_reading(stream, buf, pos, b"\r\n").await?;
        let line = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16);
        pos = line_end + 2;
        match size.ok()? {
            0 => loop {
                let end = find_reading(stream, buf, pos, b"\r\n").await?;
                let blank = end == pos;
                pos = end + 2;
                if blank {
                    return Some(pos);
                }
            },
            size => {
                while buf.len() < pos + size + 2 {
                    if !read_more(stream, buf).await {
                        return None;
                    }
                }
                pos += size + 2;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// One response as a [`RawClient`] read it.
#[derive(Debug)]
pub struct Answer {
    /// The interim (`1xx`) heads that came before it, as sent.
    pub interim: Vec<String>,
    pub status: u16,
    /// Status line and headers, as sent, without the blank line.
    pub head: String,
    /// The body as it came on the wire: for a chunked response, the chunks with their sizes,
    /// extensions and trailers.
    pub body: Vec<u8>,
    /// The trailer fields, as `name: value` lines as sent: after a chunked body's last chunk
    /// (they stay in `body` too), or in an HTTP/2 trailers frame.
    pub trailers: Vec<String>,
}

impl Answer {
    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_values(&self.head, name).first().copied()
    }

    /// Whether the head has a header `name` at all (case-insensitive).
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the proxy's HTTP/1 engine relayed this answer from a [`RawUpstream`] as bytes:
    /// it passes field names on as the instance wrote them (`X-Raw-Upstream`), where a general
    /// HTTP library writes every name in lower case.
    pub fn verbatim(&self) -> bool {
        self.head.contains("\r\nX-Raw-Upstream: yes")
    }
}

/// The field lines after a whole chunked body's last chunk.
fn trailer_lines(mut wire: &[u8]) -> Vec<String> {
    loop {
        let line_end = find(wire, b"\r\n").expect("a size line");
        let line = String::from_utf8_lossy(&wire[..line_end]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
            .expect("a hex size");
        wire = &wire[line_end + 2..];
        if size == 0 {
            return String::from_utf8_lossy(wire)
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
        }
        wire = &wire[size + 2..];
    }
}

/// A client's byte stream to the proxy: a TCP socket, or a TLS connection over one.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for T {}

/// A client connection that reads one response at a time, framed as RFC 9112 §6.3 says.
pub struct RawClient {
    stream: Box<dyn ClientStream>,
    buf: Vec<u8>,
}

impl RawClient {
    /// A plain TCP connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("the proxy accepts");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        RawClient::over(stream)
    }

    /// A client on a connection already made (e.g. a TLS one).
    pub fn over(stream: impl ClientStream + 'static) -> RawClient {
        RawClient { stream: Box::new(stream), buf: Vec::new() }
    }

    /// The connection, for reads byte by byte.
    pub fn stream_mut(&mut self) -> &mut dyn ClientStream {
        &mut *self.stream
    }

    /// Writes `bytes` and flushes them: a TLS stream may keep records the socket would not
    /// take yet until it is flushed.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("the request is sent");
        self.stream.flush().await.expect("the request is flushed");
    }

    /// Sends `GET path` with `Host: app.example` and the extra header lines given (each ending
    /// in `\r\n`), then reads the answer.
    pub async fn get(&mut self, path: &str, extra: &str) -> Answer {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n{extra}\r\n").as_bytes())
            .await;
        self.answer(false).await
    }

    /// Reads more bytes into the buffer; 0 when the server closed (or the connection failed).
    async fn read_more(&mut self) -> usize {
        self.try_read_more().await.unwrap_or(0)
    }

    /// Reads more bytes into the buffer; `Ok(0)` when the server closed cleanly: a FIN over
    /// TCP, `close_notify` then a FIN over TLS. A reset, or a TLS connection cut without
    /// `close_notify`, is an error.
    async fn try_read_more(&mut self) -> std::io::Result<usize> {
        self.buf.reserve(64 * 1024);
        let read = tokio::time::timeout(READ_LIMIT, self.stream.read_buf(&mut self.buf)).await;
        read.unwrap_or_else(|_| {
            panic!(
                "no more bytes within {READ_LIMIT:?}; so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    /// Reads until `buf[from..]` holds `needle`; its offset.
    async fn find_from(&mut self, from: usize, needle: &[u8]) -> usize {
        loop {
            if let Some(at) = self.buf.get(from..).and_then(|b| find(b, needle)) {
                return from + at;
            }
            if self.read_more().await == 0 {
                panic!(
                    "the connection closed mid-answer: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    async fn fill(&mut self, len: usize) {
        while self.buf.len() < len {
            if self.read_more().await == 0 {
                panic!(
                    "the connection closed {} bytes short of the body's end",
                    len - self.buf.len()
                );
            }
        }
    }

    /// Reads the next final response (interim `1xx` ones are skipped); `to_head` says it
    /// answers a `HEAD` request (so has no body).
    pub async fn answer(&mut self, to_head: bool) -> Answer {
        let mut interim = Vec::new();
        let (head_end, head, status) = loop {
            let head_end = self.find_from(0, b"\r\n\r\n").await;
            let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a status line: {head:?}"));
            if (100..200).contains(&status) {
                self.buf.drain(..head_end + 4);
                interim.push(head);
                continue;
            }
            break (head_end, head, status);
        };
        let start = head_end + 4;
        let chunked = header_values(&head, "transfer-encoding")
            .last()
            .is_some_and(|te| te.rsplit(',').next().unwrap_or_default().trim() == "chunked");
        let length = header_values(&head, "content-length").first().map(|v| {
            v.parse::<usize>().unwrap_or_else(|_| panic!("bad Content-Length in {head:?}"))
        });
        let end = if to_head || status == 204 || status == 304 {
            start
        } else if chunked {
            self.chunked_end(start).await
        } else if let Some(length) = length {
            self.fill(start + length).await;
            start + length
        } else {
            // Delimited by the close: only a clean one says the body is whole (over TLS, a
            // cut without `close_notify` could be a truncation, and clients treat it so).
            loop {
                match self.try_read_more().await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => panic!(
                        "a close-delimited answer ended in an error, not a clean close ({e}): \
                         {head:?}"
                    ),
                }
            }
            self.buf.len()
        };
        let body = self.buf[start..end].to_vec();
        let trailers = if chunked { trailer_lines(&body) } else { Vec::new() };
        self.buf.drain(..end);
        Answer { interim, status, head, body, trailers }
    }

    /// Where the chunked body starting at `pos` ends (after the trailers' blank line).
    async fn chunked_end(&mut self, mut pos: usize) -> usize {
        loop {
            let line_end = self.find_from(pos, b"\r\n").await;
            let line = String::from_utf8_lossy(&self.buf[pos..line_end]).into_owned();
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            pos = line_end + 2;
            if size == 0 {
                loop {
                    let end = self.find_from(pos, b"\r\n").await;
                    let blank = end == pos;
                    pos = end + 2;
                    if blank {
                        return pos;
                    }
                }
            }
            self.fill(pos + size + 2).await;
            assert_eq!(&self.buf[pos + size..pos + size + 2], b"\r\n", "chunk data ends in CRLF");
            pos += size + 2;
        }
    }

    /// Whether the server closes the connection (without sending anything more) within 5 s.
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0_u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut byte)).await;
        self.buf.is_empty() && matches!(read, Ok(Ok(0) | Err(_)))
    }

    /// Everything the server sends until it closes the connection (at most [`READ_LIMIT`]
    /// per read).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        while self.read_more().await > 0 {}
        std::mem::take(&mut self.buf)
    }
}
