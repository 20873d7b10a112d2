//! The HTTP/1 engine: every HTTP/1.0 and HTTP/1.1 exchange, plain or over TLS, forwarded as
//! bytes.
//!
//! Why our own codec and not hyper's: profiles put most of a general HTTP server's time in
//! machinery a proxy does not need: a request object and header map built from the client's
//! head and serialised again for the instance, a second connection object on the upstream
//! side with a channel and a task between the two, the response built and serialised once
//! more. Here the head is parsed in place (`httparse`), checked and routed, and the
//! instance's head written in one pass; the response head is rewritten the same way and its
//! body relayed as it comes, its end found from `Content-Length` or chunked framing
//! ([`crate::chunked`], relayed verbatim) so that both connections stay alive. Every decision
//! about the exchange is [`crate::rules`]'s; this module only moves bytes.
//!
//! What a connection does, request after request:
//! - the head is found by scanning each new byte once (a head trickled one byte per write
//!   costs linear time), at most [`MAX_HEAD_BYTES`] for every request (else 431);
//! - the head is parsed, checked ([`rules::analyse_request`]: framing, `Host`, `Expect`),
//!   routed (404, 503), admitted by the service's policy ([`rules::admit`]: redirect, auth,
//!   rewrite) or answered by the proxy;
//! - the instance's head goes out over a connection from this thread's pool
//!   ([`crate::upstream`]), then the body, streamed as it arrives (`Content-Length` or
//!   chunked, its framing checked; a client's broken or stalled body is the client's fault:
//!   400 or a quiet close, never an instance's ejection). With `Expect: 100-continue` the
//!   instance's `100` is relayed, or, when it sends none within a second, the proxy's own
//!   (one `100` either way); an instance answering before the body ended gets its answer
//!   relayed and the client connection closed;
//! - interim responses (`100`, `103`) go to HTTP/1.1 clients; a `101` to an upgrade request
//!   turns both connections into a tunnel; the final response is relayed and the connection
//!   kept when both sides allow it;
//! - a failed attempt is classified by [`rules::Failure`]: retried elsewhere only when the
//!   request can be sent again (no body, idempotent, nothing answered);
//! - writes to a client that stops reading fail after the client timeout ([`TimedIo`]),
//!   freeing the instance's connection too.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use dfp_routing::{Backend, HeaderEdits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::chunked::{ChunkedScanner, Scan};

mod attempt;
mod buffers;

use crate::conn::{ClientStream, ConnState, TimedIo};
use crate::error::ProxyError;
use crate::forward::Forwarder;
use crate::rules::{
    self, Admitted, Failure, Forwarding, Record, RequestBody, RoutedRequest, Routing, Sticky,
    MAX_HEADERS, MAX_HEAD_BYTES,
};
use crate::server::Endpoints;
use attempt::Attempt;
use buffers::{LazyTimer, Scratch};

/// Room made in a read buffer before each upstream read.
const READ_CHUNK: usize = 16 * 1024;
/// Room made in the client's read buffer before each read of a request body.
const BODY_CHUNK: usize = 64 * 1024;
/// A client read buffer grown larger than this by a body is given back after the exchange,
/// so an idle connection holds only a small one.
const KEPT_READ_BUFFER: usize = 16 * 1024;
/// A response head and the start of its body go out in one write up to this size.
const COALESCE_LIMIT: usize = 64 * 1024;
/// A request head and the start of its body go out in one write up to this size (a copy of
/// this much costs less than a second syscall).
const COALESCE_BODY_LIMIT: usize = 16 * 1024;

/// Serves HTTP/1 on `io` until the client closes, a deadline passes, an answer closes the
/// connection, an upgrade's tunnel ends, or shutdown reaches it between requests.
pub(crate) async fn serve<S>(
    io: &mut TimedIo<S>,
    state: &ConnState,
    endpoints: Endpoints,
    tls: bool,
    client_cert: bool,
    forwarder: &Forwarder,
    mut stop: watch::Receiver<bool>,
) where
    S: ClientStream,
{
    let Endpoints { client, local } = endpoints;
    let mut conn = Conn {
        client,
        local,
        client_ip: client.ip().to_string(),
        proto: if tls { "https" } else { "http" },
        client_cert,
        buf: BytesMut::with_capacity(4096),
        timer: LazyTimer::default(),
        shutdown: stop.clone(),
        answered_at: None,
    };
    let stopping = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let mut stopping = pin!(stopping);
    let mut scanned = 0;
    // The service the last request was routed to, kept for the next (see `rules::route`).
    let mut routed = None;
    loop {
        skip_empty_lines(&mut conn.buf);
        if let Some(head_end) = find_head_end(&conn.buf, &mut scanned) {
            scanned = 0;
            state.request_started();
            let step = exchange(io, &mut conn, head_end, forwarder, state, &mut routed).await;
            state.request_finished();
            if conn.buf.capacity() > KEPT_READ_BUFFER && conn.buf.is_empty() {
                conn.buf = BytesMut::with_capacity(4096);
            }
            match step {
                Step::KeepAlive => continue,
                Step::Close => return close_gently(io).await,
                Step::Gone => return,
            }
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            let mut answer = Scratch::take();
            rules::write_error(&mut answer, &ProxyError::HeadTooLarge, false, true);
            if send(io, &answer).await.is_ok() {
                close_gently(io).await;
            }
            return;
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(4096);
        }
        let read = if conn.buf.is_empty() {
            // Between requests: shutdown closes an idle connection at once.
            tokio::select! {
                biased;
                () = &mut stopping => return,
                read = io.read_buf(&mut conn.buf) => read,
            }
        } else {
            io.read_buf(&mut conn.buf).await
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Closes the client connection after a last answer without losing that answer: the write
/// side is shut, then what the client still sends is read and dropped (for at most a second and
/// 256 KiB) until it closes too. Closing at once with unread bytes would make the kernel reset
/// the connection, and a client still sending (a too-large head, a refused body) might never
/// read the answer.
async fn close_gently<S>(io: &mut TimedIo<S>)
where
    S: ClientStream,
{
    if io.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0_u8; 4096];
    let drain = async {
        let mut left: usize = 256 * 1024;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(read) => left = left.saturating_sub(read),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Writes `bytes` to the client and flushes them: over TLS, the last bytes of a write may
/// wait in the TLS session until a flush, and the proxy may next wait on something else
/// (the instance's next bytes, the client's next request). Over plain TCP the flush is free.
async fn send<S>(io: &mut TimedIo<S>, bytes: &[u8]) -> io::Result<()>
where
    S: ClientStream,
{
    io.write_all(bytes).await?;
    io.flush().await
}

/// What lives as long as the client connection.
struct Conn {
    client: SocketAddr,
    /// The address the client connected to (for a PROXY header sent on).
    local: SocketAddr,
    client_ip: String,
    proto: &'static str,
    /// The TLS handshake verified a client certificate against `--client-ca`.
    client_cert: bool,
    /// Bytes read from the client and not consumed yet.
    buf: BytesMut,
    timer: LazyTimer,
    shutdown: watch::Receiver<bool>,
    /// When the instance's final response head arrived, in the exchange under way: what the
    /// latency histogram measures, as for HTTP/2.
    answered_at: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    KeepAlive,
    /// Close after the answer.
    Close,
    /// The client is gone, or the connection became a tunnel that has ended.
    Gone,
}

/// Empty lines before a request line are ignored (RFC 9112 §2.2), so that a client's stray
/// CRLF after a body does not become a request.
pub(crate) fn skip_empty_lines(buf: &mut BytesMut) {
    let skip = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    if skip > 0 {
        buf.advance(skip);
    }
}

/// Where the head at the start of `buf` ends (after its empty line), looking only at bytes
/// not looked at before (`scanned` remembers where to go on).
pub(crate) fn find_head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    // The everyday case: a whole head, and nothing after it, came in one read. (With
    // pipelined requests after it, the parse finds where the first one ends.)
    if *scanned == 0 && buf.ends_with(b"\r\n\r\n") {
        return Some(buf.len());
    }
    let mut at = (*scanned).saturating_sub(2).min(buf.len());
    while let Some(offset) = memchr::memchr(b'\n', &buf[at..]) {
        let lf = at + offset;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            (None, _) | (Some(b'\r'), None) => {
                *scanned = lf;
                return None;
            }
            _ => at = lf + 1,
        }
    }
    *scanned = buf.len();
    None
}

/// A request the engine forwards, once its head has been read, checked, routed and admitted.
struct Plan<'b> {
    backend: &'b Backend,
    body: RequestBody,
    /// The client asked to close after this exchange.
    close: bool,
    http10: bool,
    head_request: bool,
    upgrade: bool,
    expect_continue: bool,
    /// Idempotent and without a body: may be sent to another instance after a failure.
    replayable: bool,
    response_edits: &'b HeaderEdits,
    server_timeout: Duration,
    tunnel_timeout: Duration,
    /// The service pins clients to instances ([`rules::choose_instance`]).
    sticky: Option<Sticky<'b>>,
    /// The service compresses and this client accepts its coding: each response's head
    /// decides ([`rules::compression`]).
    compression: Option<rules::AcceptedCompression<'b>>,
    /// The instances want a PROXY protocol header on each connection.
    send_proxy: Option<dfp_routing::ProxyProtocol>,
}

/// Serves one request whose head ends at `head_end` in the read buffer. `route` keeps the
/// service it is routed to alive for the exchange, and for the connection's next request.
async fn exchange<S>(
    io: &mut TimedIo<S>,
    conn: &mut Conn,
    head_end: usize,
    forwarder: &Forwarder,
    state: &ConnState,
    route: &mut Option<Arc<Backend>>,
) -> Step
where
    S: ClientStream,
{
    let started = std::time::Instant::now();
    conn.answered_at = None;
    let mut upstream_head = Scratch::take();
    let (head_len, prepared) =
        prepare(&conn.buf[..head_end], conn, forwarder, &mut upstream_head, route);
    let head = conn.buf.split_to(head_len);
    let (step, status, upstream, backend) = match prepared {
        Err((err, backend, body)) => {
            let mut answer = Scratch::take();
            let closing = shutting_down(&conn.shutdown) || body != RequestBody::None;
            let status = rules::write_error(&mut answer, &err, head.starts_with(b"HEAD "), closing);
            let written = send(io, &answer).await.is_ok();
            let step = if !written {
                Step::Gone
            } else if closing || err.closes_connection() {
                Step::Close
            } else {
                Step::KeepAlive
            };
            (step, status, None, backend)
        }
        Ok(plan) => {
            let attempt_started = started;
            let (step, status, upstream) =
                forward(io, conn, &plan, &upstream_head, forwarder, state, attempt_started).await;
            (step, status, upstream, Some(plan.backend))
        }
    };
    // The request line is read again only for the access log.
    let (method, target) = if forwarder.access_log { request_line(&head) } else { ("-", "-") };
    let answered = conn.answered_at.map_or_else(|| started.elapsed(), |at| at - started);
    let micros = u64::try_from(answered.as_micros()).unwrap_or(u64::MAX);
    rules::record(
        &Record { client: conn.client, method, target, backend, upstream, status, micros },
        forwarder.access_log,
    );
    step
}

/// The method and target of a head that parsed (for the record), or placeholders.
fn request_line(head: &[u8]) -> (&str, &str) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default();
    let mut parts = line.split(' ');
    (parts.next().unwrap_or("-"), parts.next().unwrap_or("-"))
}

type Refusal<'b> = (ProxyError, Option<&'b Backend>, RequestBody);

/// Parses, checks, routes and admits the request head `head`, and writes the instance's head
/// into `out`. `route` keeps the routed backend alive for as long as the plan borrows it.
fn prepare<'b>(
    head: &[u8],
    conn: &Conn,
    forwarder: &Forwarder,
    out: &mut Vec<u8>,
    route: &'b mut Option<Arc<Backend>>,
) -> (usize, Result<Plan<'b>, Refusal<'b>>) {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let refuse = |err| (err, None, RequestBody::None);
    // `head` ends at the first empty line found, or at the end of what was read when that
    // ends with one (pipelined requests): the parse says where the first head really ends.
    let head_len = match request.parse(head) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return (head.len(), Err(refuse(ProxyError::HeadTooLarge)));
        }
        Ok(httparse::Status::Partial) | Err(_) => {
            let malformed = ProxyError::BadRequest("the request head is malformed\n");
            return (head.len(), Err(refuse(malformed)));
        }
    };
    (head_len, prepare_parsed(&request, conn, forwarder, out, route))
}

/// [`prepare`] once the head has parsed.
fn prepare_parsed<'b>(
    request: &httparse::Request<'_, '_>,
    conn: &Conn,
    forwarder: &Forwarder,
    out: &mut Vec<u8>,
    route: &'b mut Option<Arc<Backend>>,
) -> Result<Plan<'b>, Refusal<'b>> {
    let refuse = |err| (err, None, RequestBody::None);
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(refuse(ProxyError::BadRequest("the request head is malformed\n")));
    };
    let http10 = version == 0;
    let fields = request.headers.iter().map(|h| (h.name, h.value));
    let facts = rules::analyse_request(http10, fields.clone()).map_err(refuse)?;
    let body = facts.body();
    let refuse = |err| (err, None, body);
    let target = rules::parse_target(target).map_err(refuse)?;
    // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2).
    let host = match target.authority {
        Some(authority) => Some(authority),
        None => facts.host.and_then(|h| std::str::from_utf8(h).ok()),
    };
    let client_ip =
        || rules::client_ip(conn.client.ip(), &forwarder.trusted_proxies, fields.clone());
    let field_list = rules::FieldList(fields.clone());
    let cookie = |name: &str| rules::cookie_token(fields.clone(), name);
    let request = RoutedRequest {
        fields: rules::Fields(&field_list),
        https: conn.proto == "https" || (forwarder.trust_forwarded_proto && facts.forwarded_https),
        client_cert: conn.client_cert,
        method,
        client: rules::ClientIp(&client_ip),
        authorization: facts.authorization,
        forwarded_proto: facts.forwarded_proto,
        cookie: rules::CookieToken(&cookie),
        // An HTTP/1.0 client reads no chunked body, and a compressed one has no length.
        accept_encoding: if http10 { None } else { facts.accept_encoding },
        defaults: (forwarder.server_timeout, forwarder.tunnel_timeout),
    };
    let Routing { path: routed_path, backend, admitted, first } =
        rules::route(&forwarder.table, route, host, &target, request)
            .map_err(|(err, backend)| (err, backend.map(|b| &**b), body))?;
    let backend: &Backend = backend;

    // The instance's head, in one pass.
    let path = admitted.rewritten.as_deref().unwrap_or(&routed_path);
    out.clear();
    rules::write_request_line(out, method, path, target.query, http10);
    let instance_host;
    let forwarded_host = match (target.authority, facts.host) {
        (Some(authority), _) => authority.as_bytes(),
        (None, Some(host)) => host,
        (None, None) => {
            // An HTTP/1.0 client may send none; the instance gets its own address.
            instance_host = first.authority().as_str();
            instance_host.as_bytes()
        }
    };
    let forwarding =
        Forwarding { client_ip: &conn.client_ip, proto: conn.proto, host: forwarded_host };
    let mut facts = facts;
    if target.authority.is_some() {
        facts.host = Some(forwarded_host);
    }
    rules::write_request_fields(out, fields, &facts, &admitted, &forwarding);
    out.extend_from_slice(b"\r\n");

    // Every policy field has been used above or goes into the plan: no `..` here either.
    let Admitted {
        rewritten: _,
        request_edits: _,
        strip_authorization: _,
        response_edits,
        server_timeout,
        tunnel_timeout,
        sticky,
        compression,
        send_proxy,
    } = admitted;
    let head_request = method == "HEAD";
    let no_body = matches!(body, RequestBody::None | RequestBody::Length(0));
    Ok(Plan {
        backend,
        body,
        close: facts.close,
        http10,
        head_request,
        upgrade: facts.upgrade.is_some(),
        expect_continue: facts.expect_continue && !no_body,
        replayable: rules::replayable(method, !no_body, facts.upgrade.is_some()),
        response_edits,
        server_timeout,
        tunnel_timeout,
        sticky,
        compression,
        send_proxy,
    })
}

/// Whether the proxy is shutting down (then each answer is the connection's last).
fn shutting_down(shutdown: &watch::Receiver<bool>) -> bool {
    shutdown.has_changed().unwrap_or(true)
}

/// Forwards a planned request, trying instances as the rules allow, and answers the client.
/// Returns what the connection does next, the status the client got and the last instance
/// tried.
async fn forward<S>(
    io: &mut TimedIo<S>,
    conn: &mut Conn,
    plan: &Plan<'_>,
    upstream_head: &[u8],
    forwarder: &Forwarder,
    state: &ConnState,
    started: std::time::Instant,
) -> (Step, u16, Option<SocketAddr>)
where
    S: ClientStream,
{
    let backend = plan.backend;
    let mut body = BodyProgress::new(plan.body);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last = None;
    let result = loop {
        // `_slot`: the request's place on the instance, held until the exchange (or its
        // tunnel) is over.
        let queue = forwarder.queue_timeout;
        let chosen = rules::take_instance(backend, plan.sticky, &tried, queue).await;
        let (upstream, pin, _slot) = match chosen {
            Ok(chosen) => chosen,
            Err(rules::NoChoice::Left) => {
                break Err(Failure::Unreachable(io::ErrorKind::NotConnected.into()));
            }
            Err(rules::NoChoice::Full) => break Err(Failure::Full),
        };
        let addr = upstream.addr();
        last = Some(addr);
        let attempt = Attempt { addr, pin, plan, forwarder, state, started };
        match attempt.run(io, conn, upstream_head, &mut body).await {
            Ok(relayed) => {
                upstream.health().record_success();
                break Ok(relayed);
            }
            Err(failure) if failure.blames_instance() => {
                // Sent again only while nothing of the body has left the client's buffer.
                if rules::attempt_failed(backend, upstream, &mut tried, plan.replayable, &failure) {
                    continue;
                }
                break Err(failure);
            }
            Err(failure) => {
                tracing::debug!(service = backend.service(), instance = %addr, %failure, "exchange failed");
                break Err(failure);
            }
        }
    };
    match result {
        Ok(relayed) => {
            let step = if relayed.tunnelled {
                Step::Gone
            } else if relayed.close || plan.close || !body.done {
                Step::Close
            } else {
                Step::KeepAlive
            };
            (step, relayed.status, last)
        }
        Err(Failure::Broken(status)) => (Step::Close, status, last),
        Err(failure) => {
            let closing = shutting_down(&conn.shutdown) || plan.close || !body.done;
            let mut answer = Scratch::take();
            let err = failure.answer();
            let status = rules::write_error(&mut answer, &err, plan.head_request, closing);
            let written = send(io, &answer).await.is_ok();
            let step = match (written, closing || err.closes_connection()) {
                (false, _) => Step::Gone,
                (true, true) => Step::Close,
                (true, false) => Step::KeepAlive,
            };
            (step, status, last)
        }
    }
}

/// How far the request body has gone to the instance.
struct BodyProgress {
    framing: RequestBody,
    /// Bytes of a `Content-Length` body still to send.
    remaining: u64,
    scanner: ChunkedScanner,
    /// All of it has been sent (or there is none).
    done: bool,
    /// Some of it has left the client's buffer: the request cannot be sent again.
    started: bool,
}

impl BodyProgress {
    fn new(framing: RequestBody) -> Self {
        let (remaining, done) = match framing {
            RequestBody::None => (0, true),
            RequestBody::Length(length) => (length, length == 0),
            RequestBody::Chunked => (0, false),
        };
        BodyProgress { framing, remaining, scanner: ChunkedScanner::new(), done, started: false }
    }

    /// How many of `available` bytes belong to the body, and whether they end it.
    fn take(&mut self, available: &[u8]) -> Result<(usize, bool), Failure> {
        match self.framing {
            RequestBody::None => Ok((0, true)),
            RequestBody::Length(_) => {
                let take = usize::try_from(self.remaining)
                    .map_or(available.len(), |r| r.min(available.len()));
                self.remaining -= take as u64;
                Ok((take, self.remaining == 0))
            }
            RequestBody::Chunked if available.is_empty() => Ok((0, false)),
            RequestBody::Chunked => match self.scanner.feed(available) {
                Ok(Scan::Done(end)) => Ok((end, true)),
                Ok(Scan::NeedMore) => Ok((available.len(), false)),
                Err(_) => Err(Failure::Client("the request body's chunked framing is broken\n")),
            },
        }
    }
}

/// A response relayed to the client.
struct Relayed {
    status: u16,
    /// The client connection must close after it.
    close: bool,
    /// The connection became a tunnel, which has ended.
    tunnelled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_found_scanning_each_byte_once() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
        // Fed one byte at a time, the end is found exactly when its last byte arrives.
        let mut scanned = 0;
        for len in 1..head.len() {
            let found = find_head_end(&head[..len], &mut scanned);
            assert_eq!(found, (len >= 27).then_some(27), "at {len}");
            if found.is_some() {
                break;
            }
            assert!(scanned <= len);
        }
        let mut scanned = 0;
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\nx", &mut scanned), Some(16));
        let mut scanned = 0;
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", &mut scanned), None);
    }

    #[test]
    fn empty_lines_before_a_request_are_skipped() {
        let mut buf = BytesMut::from(&b"\r\n\r\nGET /"[..]);
        skip_empty_lines(&mut buf);
        assert_eq!(&buf[..], b"GET /");
    }
}
