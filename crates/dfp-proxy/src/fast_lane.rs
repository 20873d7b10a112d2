//! The fast lane: plain-HTTP keep-alive exchanges of the everyday shape, forwarded as bytes.
//!
//! Why it exists: profiles of the proxy under load put most of its user-space time in the
//! general HTTP machinery, not in proxying: a request object and header map built from the
//! client's head and serialised again for the instance, a second HTTP connection object on
//! the upstream side with a channel and a task between the two, the response built and
//! serialised once more. For the request most traffic is made of (a `GET` without a body, to
//! a route with no per-service rewriting) none of that is needed: the head is parsed in
//! place (`httparse`), checked, routed, rewritten in one pass into the upstream's head, and
//! the response head is rewritten the same way while its body is relayed as it comes, its
//! end found from `Content-Length` or chunked framing ([`crate::chunked`]) so that both
//! connections stay alive. The only syscalls per exchange are one read and one write on each
//! leg.
//!
//! What takes the lane (decided from the head, before anything is sent upstream): HTTP/1.1,
//! `GET`/`HEAD`/`OPTIONS`/`DELETE` with no body (no `Content-Length`, `Transfer-Encoding` or
//! `Expect`), no `Upgrade` or `TE`, `Connection` empty or `keep-alive`/`close`, one plain
//! `Host`, a path target, a route whose service has live instances and no per-service
//! redirect, authentication, path rewrite or header edits. Everything else, including every
//! request that is malformed or that the lane cannot read with certainty, is handed over with
//! the bytes read so far to the general path (`forward.rs` on hyper), which then serves the
//! connection to its end: the lane never answers what it does not fully understand, and
//! both paths give the same answers (the end-to-end tests run against both).
//!
//! The rules the general path keeps hold here too: the same routing, forwarded headers,
//! hop-by-hop stripping, path normalisation, round robin, passive health and retries (every
//! request in the lane is bodiless and idempotent, so a failed attempt moves to the next
//! instance), the server timeout (`504`), the head and idle deadlines (the same [`TimedIo`]),
//! the same counters, and graceful shutdown between requests.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future as _};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use dfp_routing::Backend;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::chunked::{ChunkedScanner, Scan};
use crate::conn::{ConnState, TimedIo};
use crate::error::ProxyError;
use crate::forward::{attempt_failed, now_ms, Forwarder};
use crate::path;
use crate::pool::MAX_IDLE_PER_INSTANCE;
use crate::server::MAX_HEAD_BYTES;

/// Header lines read per head, as hyper allows; more sends the request to the general path.
const MAX_HEADERS: usize = 100;
/// Room made in a read buffer before each upstream read.
const READ_CHUNK: usize = 16 * 1024;
/// A response head and the start of its body go out in one write up to this size.
const COALESCE_LIMIT: usize = 64 * 1024;

/// How the lane left a connection.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Closed: by the client, a deadline, `Connection: close`, shutdown or a failure.
    Closed,
    /// The next request is not for the lane: these bytes (its start, and anything after it)
    /// were read from the client and must be served first by the general path.
    Handover(Bytes),
}

/// Serves `io` in the lane until the connection ends or a request needs the general path.
pub(crate) async fn serve(
    io: &mut TimedIo,
    state: &ConnState,
    client: SocketAddr,
    forwarder: &Forwarder,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let client_ip = client.ip().to_string();
    let mut buf = BytesMut::with_capacity(4096);
    // Read without a lock (one atomic load) by a response about to go out: once shutdown has
    // begun it says `Connection: close`, as the general path does.
    let shutdown = stop.clone();
    let stopping = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let mut stopping = pin!(stopping);
    let mut timer = LazyTimer::default();
    loop {
        if !buf.is_empty() {
            let mut upstream_head = Scratch::take();
            match read_request(&buf, forwarder, &client_ip, &mut upstream_head) {
                Parsed::Partial => {}
                Parsed::Handover => return Outcome::Handover(buf.split().freeze()),
                Parsed::Forward(plan) => {
                    state.request_started();
                    let served =
                        forward(io, forwarder, &plan, &mut upstream_head, &mut timer, &shutdown)
                            .await;
                    state.request_finished();
                    if forwarder.access_log {
                        log_access(client, &plan, &buf, &served);
                    }
                    buf.advance(plan.head_len);
                    if served.step == Step::Close || plan.close {
                        let _ = io.shutdown().await;
                        return Outcome::Closed;
                    }
                    continue;
                }
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let read = if buf.is_empty() {
            // Between requests: shutdown closes an idle connection at once.
            tokio::select! {
                biased;
                () = &mut stopping => return Outcome::Closed,
                read = io.read_buf(&mut buf) => read,
            }
        } else {
            io.read_buf(&mut buf).await
        };
        match read {
            Ok(0) | Err(_) => return Outcome::Closed,
            Ok(_) => {}
        }
    }
}

/// A request the lane forwards.
struct Plan {
    /// Length of the client's head in the read buffer.
    head_len: usize,
    /// For the access log: the method, and where the request target is in the read buffer.
    method: &'static str,
    target: std::ops::Range<usize>,
    backend: Arc<Backend>,
    /// A `HEAD` request: the response has no body whatever its headers say.
    head_request: bool,
    /// The client asked to close after this exchange.
    close: bool,
}

enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// Not for the lane.
    Handover,
    /// Forward it; the upstream's head has been written.
    Forward(Plan),
}

/// What a request header means to the lane.
enum RequestHeader {
    Host,
    Connection,
    ForwardedFor,
    /// Describes this connection or this hop only: dropped (the lane writes its own
    /// `X-Forwarded-Proto`/`-Host`).
    Drop,
    /// The request needs the general path.
    Refuse,
    Keep,
}

fn classify_request_header(name: &str) -> RequestHeader {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    if is("host") {
        RequestHeader::Host
    } else if is("connection") {
        RequestHeader::Connection
    } else if is("x-forwarded-for") {
        RequestHeader::ForwardedFor
    } else if is("content-length")
        || is("transfer-encoding")
        || is("expect")
        || is("upgrade")
        || is("te")
    {
        RequestHeader::Refuse
    } else if is("keep-alive")
        || is("x-forwarded-proto")
        || is("x-forwarded-host")
        || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
    {
        RequestHeader::Drop
    } else {
        RequestHeader::Keep
    }
}

/// Parses the head at the start of `buf`, decides whether the lane takes it, routes it and
/// writes the upstream's head into `out`.
fn read_request(buf: &[u8], forwarder: &Forwarder, client_ip: &str, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Parsed::Partial,
        // Too large or malformed: the general path gives the right error (431, 400).
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::Handover,
    };
    if request.version != Some(1) {
        return Parsed::Handover;
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Parsed::Handover;
    };
    let (method, head_request) = match method {
        "GET" => ("GET", false),
        "OPTIONS" => ("OPTIONS", false),
        "DELETE" => ("DELETE", false),
        "HEAD" => ("HEAD", true),
        _ => return Parsed::Handover,
    };
    let target_at = target.as_ptr().addr() - buf.as_ptr().addr();
    let target_range = target_at..target_at + target.len();

    let mut host = None;
    let mut forwarded_for = None;
    let mut close = false;
    for header in request.headers.iter() {
        match classify_request_header(header.name) {
            RequestHeader::Host if host.is_none() => host = Some(header.value),
            RequestHeader::Host | RequestHeader::Refuse => return Parsed::Handover,
            RequestHeader::Connection => {
                for token in header.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        // It names other headers to strip: the general path knows how.
                        return Parsed::Handover;
                    }
                }
            }
            RequestHeader::ForwardedFor => {
                forwarded_for = forwarded_for.or(Some(header.value));
            }
            RequestHeader::Drop | RequestHeader::Keep => {}
        }
    }
    let Some(host) = host.filter(|h| is_plain_host(h)).and_then(|h| std::str::from_utf8(h).ok())
    else {
        return Parsed::Handover;
    };

    // The target: a path and maybe a query, in plain ASCII, normalised as the general path does.
    if !target.starts_with('/') || target.bytes().any(|b| b == b'#' || !b.is_ascii_graphic()) {
        return Parsed::Handover;
    }
    let (raw_path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let normalised = match path::normalize(raw_path) {
        Ok(normalised) => normalised,
        Err(path::EscapesRoot) => return Parsed::Handover,
    };
    let routed_path = normalised.as_deref().unwrap_or(raw_path);

    let backend = {
        let table = forwarder.table.load();
        match table.lookup_host(Some(host), routed_path) {
            Some(route) => route.backend.clone(),
            None => return Parsed::Handover,
        }
    };
    let policy = backend.policy();
    if policy.https_redirect.is_some()
        || !policy.users.is_empty()
        || policy.path_rewrite.is_some()
        || !policy.request_headers.is_empty()
        || !policy.response_headers.is_empty()
        || backend.instances().is_empty()
    {
        return Parsed::Handover;
    }

    // The upstream's head, in one pass.
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(routed_path.as_bytes());
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for header in request.headers.iter() {
        if let RequestHeader::Keep | RequestHeader::Host = classify_request_header(header.name) {
            out.extend_from_slice(header.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(header.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    // An earlier proxy's list is extended (when it is readable text, as on the general path).
    if let Some(earlier) =
        forwarded_for.filter(|v| is_visible_text(v) && !v.trim_ascii().is_empty())
    {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Parsed::Forward(Plan { head_len, method, target: target_range, backend, head_request, close })
}

/// `host[:port]` in the shapes clients send (a name or IPv4 address, or `[IPv6]`). Anything
/// else goes to the general path, which checks it fully.
fn is_plain_host(value: &[u8]) -> bool {
    let (name_ok, port) = if let Some(rest) = value.strip_prefix(b"[") {
        match rest.iter().position(|b| *b == b']') {
            Some(end) => {
                let inside = &rest[..end];
                let ok = !inside.is_empty()
                    && inside.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
                (ok, &rest[end + 1..])
            }
            None => (false, &rest[..0]),
        }
    } else {
        let split = value.iter().position(|b| *b == b':').unwrap_or(value.len());
        let name = &value[..split];
        let ok = !name.is_empty()
            && name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        (ok, &value[split..])
    };
    let port_ok = match port.strip_prefix(b":") {
        None => port.is_empty(),
        Some(digits) => {
            !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
        }
    };
    name_ok && port_ok
}

/// What `HeaderValue::to_str` accepts: visible ASCII, spaces and tabs.
fn is_visible_text(value: &[u8]) -> bool {
    value.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    KeepAlive,
    Close,
}

/// Why an attempt at one instance failed.
#[derive(Debug)]
enum Failure {
    /// Before any byte of a response: refused, reset, closed. Another instance may be tried.
    Unreachable(io::Error),
    /// The instance sent something that is not an HTTP/1.1 response head.
    BadResponse(&'static str),
    /// No response head within the server timeout.
    Timeout,
    /// The response (with this status) began but could not be relayed to its end (instance
    /// or client gone, or bad body framing): the client connection is closed.
    Broken(u16),
}

/// Forwards one planned request and answers the client; says whether the connection may
/// carry another request.
async fn forward(
    io: &mut TimedIo,
    forwarder: &Forwarder,
    plan: &Plan,
    upstream_head: &mut Scratch,
    timer: &mut LazyTimer,
    shutdown: &watch::Receiver<bool>,
) -> Served {
    let started = std::time::Instant::now();
    let backend = &plan.backend;
    let server_timeout = backend.policy().server_timeout.unwrap_or(forwarder.server_timeout);
    let deadline = Instant::from_std(started) + server_timeout;
    let mut response = Scratch::take();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_upstream = None;
    let micros = |started: std::time::Instant| {
        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
    };
    let result = loop {
        let Some(upstream) = backend.next_instance_except(now_ms, &tried) else {
            break Err(ProxyError::UpstreamUnreachable);
        };
        let addr = upstream.addr();
        last_upstream = Some(addr);
        let exchange = Exchange {
            addr,
            connect_timeout: forwarder.pool.connect_timeout,
            idle_timeout: forwarder.pool.idle_timeout,
            head_request: plan.head_request,
            close_client: plan.close,
            shutdown,
        };
        match exchange.run(io, upstream_head, &mut response, deadline, timer).await {
            Ok(relayed) => {
                upstream.health().record_success();
                break Ok(relayed);
            }
            Err(Failure::Unreachable(err)) => {
                // Every request in the lane is bodiless and idempotent: replayable.
                if attempt_failed(backend, upstream, &mut tried, true, &err) {
                    continue;
                }
                break Err(ProxyError::UpstreamUnreachable);
            }
            Err(Failure::BadResponse(why)) => {
                backend.stats().upstream_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(service = backend.service(), instance = %addr, error = why, "upstream answered with a malformed response");
                break Err(ProxyError::UpstreamUnreachable);
            }
            Err(Failure::Timeout) => {
                tracing::debug!(service = backend.service(), instance = %addr, timeout = ?server_timeout, "upstream timed out");
                break Err(ProxyError::UpstreamTimeout);
            }
            Err(Failure::Broken(status)) => {
                tracing::debug!(service = backend.service(), instance = %addr, "response broken off; closing the client connection");
                let micros = micros(started);
                backend.stats().record_response(status, micros);
                return Served { step: Step::Close, status, upstream: last_upstream, micros };
            }
        }
    };
    let (step, status) = match result {
        Ok(Relayed { status, close }) => {
            (if close { Step::Close } else { Step::KeepAlive }, status)
        }
        Err(err) => {
            let closing = shutting_down(shutdown);
            let status = write_error(&mut response, &err, plan.head_request, closing);
            let written = io.write_all(&response).await.is_ok();
            (if written && !closing { Step::KeepAlive } else { Step::Close }, status)
        }
    };
    let micros = micros(started);
    backend.stats().record_response(status, micros);
    Served { step, status, upstream: last_upstream, micros }
}

/// How one exchange went, for the connection and the access log.
struct Served {
    step: Step,
    status: u16,
    /// The instance last tried, if any.
    upstream: Option<SocketAddr>,
    micros: u64,
}

/// The access log line, as the general path writes it.
fn log_access(client: SocketAddr, plan: &Plan, buf: &[u8], served: &Served) {
    let uri = buf.get(plan.target.clone()).and_then(|t| std::str::from_utf8(t).ok()).unwrap_or("");
    tracing::info!(
        target: "access",
        client = %client,
        method = %plan.method,
        uri = %uri,
        service = %plan.backend.service(),
        upstream = %served.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        status = served.status,
        micros = served.micros,
        "request"
    );
}

/// Whether the proxy is shutting down (then each answer is the connection's last).
fn shutting_down(shutdown: &watch::Receiver<bool>) -> bool {
    shutdown.has_changed().unwrap_or(true)
}

/// The proxy's own short answer, as the general path would give it.
fn write_error(out: &mut Vec<u8>, err: &ProxyError, head_request: bool, close: bool) -> u16 {
    let (status, text) = err.status_and_text();
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len()
    );
    write_date(out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(text.as_bytes());
    }
    status.as_u16()
}

/// A response relayed to the client.
struct Relayed {
    status: u16,
    /// The client connection must close after it (the body was delimited by the instance
    /// closing, or the client asked).
    close: bool,
}

/// One attempt at one instance.
struct Exchange<'a> {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    head_request: bool,
    close_client: bool,
    shutdown: &'a watch::Receiver<bool>,
}

impl Exchange<'_> {
    async fn run(
        &self,
        io: &mut TimedIo,
        request_head: &[u8],
        buf: &mut Vec<u8>,
        deadline: Instant,
        timer: &mut LazyTimer,
    ) -> Result<Relayed, Failure> {
        // The client's response head, written while the instance's is parsed.
        let mut client_head = Scratch::take();
        let (mut upstream, head) = loop {
            let (mut upstream, reused) = match checkout(self.addr, self.idle_timeout) {
                Some(upstream) => (upstream, true),
                None => (self.connect().await.map_err(Failure::Unreachable)?, false),
            };
            buf.clear();
            if let Err(err) = upstream.write_all(request_head).await {
                if reused {
                    continue;
                }
                return Err(Failure::Unreachable(err));
            }
            match self.read_head(&mut upstream, buf, &mut client_head, deadline, timer).await {
                Ok(head) => break (upstream, head),
                // A kept-alive connection the instance closed meanwhile (the race every
                // pooling proxy has): nothing was answered, so a fresh connection may carry
                // the (bodiless, idempotent) request again.
                Err(Failure::Unreachable(_)) if reused && buf.is_empty() => {}
                Err(failure) => return Err(failure),
            }
        };
        self.relay(io, &mut upstream, head, buf, client_head, timer).await.map(
            |(relayed, reusable)| {
                if reusable && !self.idle_timeout.is_zero() {
                    checkin(self.addr, upstream, self.idle_timeout);
                }
                relayed
            },
        )
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Reads until `buf` starts with a final response head (interim `1xx` heads are read
    /// and dropped, as the general path does).
    /// The client's head goes into `client_head`.
    async fn read_head(
        &self,
        upstream: &mut TcpStream,
        buf: &mut Vec<u8>,
        client_head: &mut Vec<u8>,
        deadline: Instant,
        timer: &mut LazyTimer,
    ) -> Result<ResponseHead, Failure> {
        loop {
            if !buf.is_empty() {
                let close = self.close_client || shutting_down(self.shutdown);
                match parse_response(buf, self.head_request, close, client_head)? {
                    ParsedResponse::Final(head) => return Ok(head),
                    ParsedResponse::Interim(len) => {
                        buf.drain(..len);
                        continue;
                    }
                    ParsedResponse::Partial if buf.len() >= MAX_HEAD_BYTES => {
                        return Err(Failure::BadResponse("response head too large"));
                    }
                    ParsedResponse::Partial => {}
                }
            }
            match read_some(upstream, buf, Some(deadline), timer).await {
                Ok(0) => {
                    return Err(Failure::Unreachable(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(ReadError::Timeout) => return Err(Failure::Timeout),
                Err(ReadError::Io(err)) => return Err(Failure::Unreachable(err)),
            }
        }
    }

    /// Sends the rewritten head and the body to the client. Also says whether the upstream
    /// connection ended exactly at the response's end (and so may be reused).
    async fn relay(
        &self,
        io: &mut TimedIo,
        upstream: &mut TcpStream,
        head: ResponseHead,
        buf: &mut Vec<u8>,
        mut out: Scratch,
        timer: &mut LazyTimer,
    ) -> Result<(Relayed, bool), Failure> {
        let body_start = head.head_len;
        let mut reusable = head.keep_alive;
        let relayed = Relayed { status: head.status, close: head.close };
        let client_gone = |_| Failure::Broken(head.status);
        let mut scanner = ChunkedScanner::new();

        // What came with the head goes out with it (up to the message's end).
        let available = buf.len() - body_start;
        let (mut taken, mut finished) = match head.framing {
            Framing::Empty => (0, true),
            Framing::Length(length) => {
                let take = usize::try_from(length).map_or(available, |l| l.min(available));
                (take, take as u64 == length)
            }
            Framing::Chunked => match scanner.feed(&buf[body_start..]) {
                Ok(Scan::Done(end)) => (end, true),
                Ok(Scan::NeedMore) => (available, false),
                Err(_) => return Err(Failure::Broken(head.status)),
            },
            Framing::UntilClose => (available, false),
        };
        reusable &= taken == available;
        if out.len() + taken <= COALESCE_LIMIT {
            out.extend_from_slice(&buf[body_start..body_start + taken]);
            io.write_all(&out).await.map_err(client_gone)?;
        } else {
            io.write_all(&out).await.map_err(client_gone)?;
            io.write_all(&buf[body_start..body_start + taken]).await.map_err(client_gone)?;
        }
        let mut remaining = match head.framing {
            Framing::Length(length) => length - taken as u64,
            _ => 0,
        };
        // As on the general path, the server timeout covers the wait for the response head:
        // a body may pause (a stream of events, a slow report) for as long as it likes.
        while !finished {
            buf.clear();
            let got = match read_some(upstream, buf, None, timer).await {
                Ok(got) => got,
                Err(_) => return Err(Failure::Broken(head.status)),
            };
            if got == 0 {
                if head.framing == Framing::UntilClose {
                    break;
                }
                return Err(Failure::Broken(head.status));
            }
            match head.framing {
                Framing::Length(_) => {
                    taken = usize::try_from(remaining).map_or(got, |r| r.min(got));
                    remaining -= taken as u64;
                    finished = remaining == 0;
                }
                Framing::Chunked => match scanner.feed(buf) {
                    Ok(Scan::Done(end)) => {
                        taken = end;
                        finished = true;
                    }
                    Ok(Scan::NeedMore) => taken = got,
                    Err(_) => return Err(Failure::Broken(head.status)),
                },
                Framing::UntilClose | Framing::Empty => taken = got,
            }
            reusable &= taken == got;
            io.write_all(&buf[..taken]).await.map_err(client_gone)?;
        }
        Ok((relayed, reusable && head.framing != Framing::UntilClose))
    }
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (`HEAD`, `204`, `304`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

#[derive(Debug)]
struct ResponseHead {
    status: u16,
    head_len: usize,
    framing: Framing,
    /// The instance keeps the connection open after this response.
    keep_alive: bool,
    /// This is the client connection's last response (its head says `Connection: close`).
    close: bool,
}

enum ParsedResponse {
    Partial,
    /// A `1xx` head of this length, to skip.
    Interim(usize),
    Final(ResponseHead),
}

/// Parses the instance's response head at the start of `buf`; for a final one, also writes
/// the client's head into `client_head` (with `Connection: close` when `close` is asked or the
/// body ends with the connection).
fn parse_response(
    buf: &[u8],
    head_request: bool,
    close: bool,
    client_head: &mut Vec<u8>,
) -> Result<ParsedResponse, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
        Err(_) => return Err(Failure::BadResponse("malformed response head")),
    };
    let status = response.code.unwrap_or(0);
    if status == 101 {
        return Err(Failure::BadResponse("101 Switching Protocols to a request without Upgrade"));
    }
    if (100..200).contains(&status) {
        return Ok(ParsedResponse::Interim(head_len));
    }
    let mut keep_alive = response.version == Some(1);
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") {
            if header
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                keep_alive = false;
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = header.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = header.value.trim_ascii();
            let parsed =
                (!value.is_empty() && value.len() <= 18 && value.iter().all(u8::is_ascii_digit))
                    .then(|| value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
            match (parsed, length) {
                (None, _) => return Err(Failure::BadResponse("invalid Content-Length")),
                (Some(new), Some(old)) if new != old => {
                    return Err(Failure::BadResponse("conflicting Content-Length headers"));
                }
                (Some(new), _) => length = Some(new),
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(length)) => Framing::Length(length),
        }
    };
    let close = close || framing == Framing::UntilClose;
    write_response_head(client_head, &response, chunked.is_some(), close);
    Ok(ParsedResponse::Final(ResponseHead { status, head_len, framing, keep_alive, close }))
}

/// The client's response head: HTTP/1.1, the instance's status and reason, its headers less
/// those that describe the upstream connection, and `Connection: close` when this is the
/// client connection's last response.
fn write_response_head(
    out: &mut Vec<u8>,
    response: &httparse::Response<'_, '_>,
    chunked: bool,
    close: bool,
) {
    // Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1).
    let listed = |name: &str| {
        response.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).any(|h| {
            h.value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
    };
    let dated = response.headers.iter().any(|h| h.name.eq_ignore_ascii_case("date"));
    out.clear();
    let _ = write!(out, "HTTP/1.1 {:03} ", response.code.unwrap_or(0));
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in response.headers.iter() {
        let name = header.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let hop_by_hop = is("connection")
            || is("keep-alive")
            || is("upgrade")
            || is("te")
            || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
            // With Transfer-Encoding the body's framing is the chunks; a Content-Length
            // next to it must not reach the client (RFC 9112 §6.3).
            || (chunked && is("content-length"))
            || listed(name);
        if !hop_by_hop {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(header.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !dated {
        // A proxy adds the Date an origin left out (RFC 9110 §6.6.1).
        write_date(out);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `date: <now>\r\n`, formatted at most once a second per thread.
fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second || date.1.is_empty() {
            *date = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

#[derive(Debug)]
enum ReadError {
    Timeout,
    Io(io::Error),
}

/// One read from the instance into `buf`'s spare room, given up at `deadline` if any.
async fn read_some(
    upstream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Option<Instant>,
    timer: &mut LazyTimer,
) -> Result<usize, ReadError> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let mut read = pin!(upstream.read_buf(buf));
    poll_fn(|cx| {
        if let Poll::Ready(read) = read.as_mut().poll(cx) {
            return Poll::Ready(read.map_err(ReadError::Io));
        }
        if deadline.is_some_and(|deadline| timer.expired(cx, deadline)) {
            return Poll::Ready(Err(ReadError::Timeout));
        }
        Poll::Pending
    })
    .await
}

/// One timer per client connection for the upstream deadlines, re-armed only when it fires
/// before the deadline now in force (or when a deadline comes earlier than it): consecutive
/// requests on a busy connection cost no timer operation.
#[derive(Default)]
struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    fn expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if deadline < sleep.deadline() {
            sleep.as_mut().reset(deadline);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

/// A byte buffer borrowed from this thread's spares for the time of one exchange, so an idle
/// connection holds no buffer beyond its read buffer.
struct Scratch(Vec<u8>);

thread_local! {
    static SPARE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl Scratch {
    const KEPT: usize = 64;

    fn take() -> Self {
        let spare = SPARE_BUFFERS.with(|spares| spares.borrow_mut().pop());
        Scratch(spare.unwrap_or_else(|| Vec::with_capacity(READ_CHUNK)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.capacity() > 4 * READ_CHUNK {
            return;
        }
        let mut buffer = std::mem::take(&mut self.0);
        buffer.clear();
        SPARE_BUFFERS.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < Self::KEPT {
                spares.push(buffer);
            }
        });
    }
}

impl Deref for Scratch {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

// ---------------------------------------------------------------------------------------------
// This thread's idle upstream connections for the lane (the general path has its own, of
// hyper connections; see pool.rs for why per thread).

struct IdleStream {
    stream: TcpStream,
    since: std::time::Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<IdleStream>>> = RefCell::new(HashMap::new());
}

/// The warmest idle connection to `addr` that is still quiet. A connection the instance
/// closed (or wrote to unasked) has had a readiness event meanwhile: the check costs no
/// syscall.
fn checkout(addr: SocketAddr, idle_timeout: Duration) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let stack = idle.get_mut(&addr)?;
        let now = std::time::Instant::now();
        while let Some(candidate) = stack.pop() {
            if now.saturating_duration_since(candidate.since) >= idle_timeout {
                // The rest of the stack is older still.
                stack.clear();
                return None;
            }
            let mut cx = Context::from_waker(Waker::noop());
            if candidate.stream.poll_read_ready(&mut cx).is_pending() {
                return Some(candidate.stream);
            }
        }
        None
    })
}

fn checkin(addr: SocketAddr, stream: TcpStream, idle_timeout: Duration) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let stack = idle.entry(addr).or_default();
        if stack.len() < MAX_IDLE_PER_INSTANCE {
            stack.push(IdleStream { stream, since: std::time::Instant::now() });
        }
    });
    SWEEPER.with(|started| {
        if !started.replace(true) {
            tokio::spawn(sweep_idle(idle_timeout));
        }
    });
}

thread_local! {
    static SWEEPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Closes this thread's idle connections that expired or that their instance closed, and
/// forgets instances with none left, every half idle timeout (at least every 30 s): instances
/// come and go with every deploy, and a connection nobody checks out again would otherwise
/// keep its descriptor open for good.
async fn sweep_idle(idle_timeout: Duration) {
    let every = (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        IDLE.with(|idle| {
            let now = std::time::Instant::now();
            let mut cx = Context::from_waker(Waker::noop());
            idle.borrow_mut().retain(|_, stack| {
                stack.retain(|candidate| {
                    now.saturating_duration_since(candidate.since) < idle_timeout
                        && candidate.stream.poll_read_ready(&mut cx).is_pending()
                });
                !stack.is_empty()
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_hosts() {
        for ok in ["shop.example", "shop.example:8080", "127.0.0.1:80", "[::1]", "[::1]:80", "a_b"]
        {
            assert!(is_plain_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["", ":80", "a b", "a/b", "a:", "a:123456", "[::1", "[]", "a@b", "a:8x"] {
            assert!(!is_plain_host(bad.as_bytes()), "{bad}");
        }
    }

    fn framing(head: &str, head_request: bool) -> Result<Framing, &'static str> {
        match parse_response(head.as_bytes(), head_request, false, &mut Vec::new()) {
            Ok(ParsedResponse::Final(h)) => Ok(h.framing),
            Ok(ParsedResponse::Interim(_)) => Err("interim"),
            Ok(ParsedResponse::Partial) => Err("partial"),
            Err(_) => Err("error"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let cases = [
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", false, Ok(Framing::Length(3))),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true, Ok(Framing::Empty)),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Ok(Framing::Empty)),
            ("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", false, Ok(Framing::Empty)),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false, Ok(Framing::Chunked)),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\ncontent-length: 5\r\n\r\n",
                false,
                Ok(Framing::Chunked),
            ),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false, Ok(Framing::UntilClose)),
            ("HTTP/1.0 200 OK\r\n\r\n", false, Ok(Framing::UntilClose)),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
                false,
                Ok(Framing::Length(3)),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                false,
                Err("error"),
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false, Err("error")),
            ("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", false, Err("error")),
            ("HTTP/1.1 100 Continue\r\n\r\n", false, Err("interim")),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, Err("error")),
            ("HTTP/1.1 200 OK\r\ncontent-len", false, Err("partial")),
            ("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false, Err("error")),
        ];
        for (head, head_request, expected) in cases {
            assert_eq!(framing(head, head_request), expected, "{head:?}");
        }
    }

    #[test]
    fn response_heads_lose_hop_by_hop_fields() {
        let head = "HTTP/1.0 200 Fine\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                    Proxy-Thing: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nX-Kept: yes\r\n\r\n";
        let mut out = Vec::new();
        assert!(matches!(
            parse_response(head.as_bytes(), false, true, &mut out),
            Ok(ParsedResponse::Final(_))
        ));
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!(
                "HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\ndate: {}\r\nconnection: close\r\n\r\n",
                httpdate::fmt_http_date(std::time::SystemTime::now())
            )
        );
    }

    #[test]
    fn error_answers_match_the_general_path() {
        let mut out = Vec::new();
        assert_eq!(write_error(&mut out, &ProxyError::UpstreamTimeout, false, false), 504);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{text}");
        assert!(text.ends_with("did not answer in time\n"), "{text}");
        write_error(&mut out, &ProxyError::UpstreamUnreachable, true, true);
        assert!(String::from_utf8_lossy(&out).contains("connection: close\r\n"));
        assert!(String::from_utf8_lossy(&out).ends_with("\r\n\r\n"));
    }
}
