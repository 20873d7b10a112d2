//! One attempt at one instance: the request's head and body out, interim and final
//! response heads in, the response relayed or the connection turned into a tunnel.

use std::future::{poll_fn, Future as _};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Buf as _;
use dfp_routing::{CompressionAlgo, HeaderEdits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::chunked::{ChunkedScanner, Scan};
use crate::compress::Encoder;
use crate::conn::{ClientStream, ConnState, TimedIo};
use crate::forward::Forwarder;
use crate::rules::{
    self, Failure, Framing, ResponseFacts, EXPECT_WAIT, MAX_HEADERS, MAX_HEAD_BYTES,
};
use crate::upstream::ProxyHello;

use super::buffers::{LazyTimer, Scratch};
use super::{
    send, shutting_down, BodyProgress, Conn, Plan, Relayed, BODY_CHUNK, COALESCE_BODY_LIMIT,
    COALESCE_LIMIT, READ_CHUNK,
};

/// One attempt at one instance.
pub(super) struct Attempt<'a> {
    pub(super) addr: SocketAddr,
    /// The sticky cookie the answer sets (the client had none for this instance).
    pub(super) pin: Option<rules::Pin<'a>>,
    pub(super) plan: &'a Plan<'a>,
    pub(super) forwarder: &'a Forwarder,
    pub(super) state: &'a ConnState,
    /// When the request's head was read: a request without a body waits for its answer from
    /// then on.
    pub(super) started: std::time::Instant,
}

/// What the instance's next head turned out to be.
enum ResponseHead {
    /// A `1xx` (not `101`) head of this length.
    Interim { status: u16, head_len: usize },
    Final {
        facts: ResponseFacts,
        head_len: usize,
        /// The body is compressed on its way ([`rules::compression`]); the client's head
        /// already says so and is chunked.
        coding: Option<CompressionAlgo>,
    },
}

impl Attempt<'_> {
    pub(super) async fn run<S>(
        &self,
        io: &mut TimedIo<S>,
        conn: &mut Conn,
        request_head: &[u8],
        body: &mut BodyProgress,
    ) -> Result<Relayed, Failure>
    where
        S: ClientStream,
    {
        let plan = self.plan;
        let connector = &self.forwarder.connector;
        let mut buf = Scratch::take();
        let mut client_head = Scratch::take();
        let mut continue_sent = false;
        // The start of the body that came with the head goes out in the head's write (one
        // syscall for a small POST, as for a GET): unless the client waits for `100 Continue`.
        let mut first = Scratch::take();
        let mut prefix = None;
        if !body.done && !plan.expect_continue && !conn.buf.is_empty() {
            let room = COALESCE_BODY_LIMIT.saturating_sub(request_head.len());
            let (take, finished) = body.take(&conn.buf[..conn.buf.len().min(room)])?;
            if take > 0 {
                first.extend_from_slice(request_head);
                first.extend_from_slice(&conn.buf[..take]);
                prefix = Some((take, finished));
            }
        }
        let first: &[u8] = if prefix.is_some() { &first } else { request_head };
        let hello = plan.send_proxy.map(|version| ProxyHello {
            version,
            client: conn.client,
            local: conn.local,
        });
        let (mut upstream, head) = 'connection: loop {
            let (mut upstream, reused) =
                connector.get(self.addr, hello).await.map_err(Failure::Unreachable)?;
            if let Err(err) = upstream.write_all(first).await {
                if reused {
                    continue;
                }
                return Err(Failure::Unreachable(err));
            }
            if let Some((take, finished)) = prefix.take() {
                conn.buf.advance(take);
                body.started = true;
                body.done = finished;
            }
            buf.clear();
            let mut body_sent = body.done;
            if !body_sent && !plan.expect_continue {
                body_sent = self.send_body(io, conn, &upstream, body).await?;
            } else if !body_sent {
                // Give the instance a moment to say `100 Continue` (or to answer at once);
                // then tell the client to go on ourselves.
                let spoke = tokio::time::timeout(EXPECT_WAIT, upstream.readable()).await.is_ok();
                if !spoke {
                    send(io, b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .map_err(|_| Failure::Client("the client is gone\n"))?;
                    continue_sent = true;
                    body_sent = self.send_body(io, conn, &upstream, body).await?;
                }
            }
            // The server timeout runs from the end of the upload (without a body, from the
            // request's head, which saves a clock read).
            let sent_at =
                if body.started { Instant::now() } else { Instant::from_std(self.started) };
            let mut deadline = sent_at + plan.server_timeout;
            loop {
                let close = plan.close || !body_sent;
                let read = self.read_head(
                    &mut upstream,
                    &mut buf,
                    &mut client_head,
                    close,
                    conn,
                    deadline,
                );
                match read.await {
                    Ok(ResponseHead::Final { facts, head_len, coding }) => {
                        conn.answered_at = Some(std::time::Instant::now());
                        break 'connection (upstream, (facts, head_len, body_sent, coding));
                    }
                    Ok(ResponseHead::Interim { status, head_len }) => {
                        let duplicate = status == 100 && continue_sent;
                        if !plan.http10 && !duplicate {
                            send(io, &client_head)
                                .await
                                .map_err(|_| Failure::Client("the client is gone\n"))?;
                        }
                        continue_sent |= status == 100;
                        buf.drain(..head_len);
                        if status == 100 && !body_sent {
                            body_sent = self.send_body(io, conn, &upstream, body).await?;
                            deadline = Instant::now() + plan.server_timeout;
                        }
                    }
                    // A kept-alive connection the instance closed meanwhile (the race every
                    // pooling proxy has): nothing was answered and nothing of a body went, so
                    // a fresh connection may carry the request again.
                    Err(Failure::Unreachable(_)) if reused && buf.is_empty() && !body.started => {
                        continue 'connection;
                    }
                    Err(failure) => return Err(failure),
                }
            }
        };
        let (facts, head_len, body_sent, coding) = head;
        if facts.status == 101 {
            return self
                .tunnel(io, conn, upstream, &buf[head_len..], &client_head, facts.status)
                .await;
        }
        let close = facts.framing == Framing::UntilClose || plan.close || !body_sent;
        let reusable = match coding {
            None => {
                self.relay(io, &mut upstream, &facts, head_len, &mut buf, client_head, conn).await?
            }
            Some(coding) => {
                let relay = Compressed { io, upstream: &mut upstream, head: &facts, conn };
                relay.run(coding, head_len, &mut buf, client_head).await?
            }
        };
        if reusable && body_sent {
            connector.give_back(self.addr, upstream, hello);
        }
        Ok(Relayed { status: facts.status, close, tunnelled: false })
    }

    /// Sends the request body to the instance as it arrives from the client. `Ok(false)` when
    /// the instance began to answer before the body ended (the rest is not sent).
    async fn send_body<S>(
        &self,
        io: &mut TimedIo<S>,
        conn: &mut Conn,
        upstream: &TcpStream,
        body: &mut BodyProgress,
    ) -> Result<bool, Failure>
    where
        S: ClientStream,
    {
        let client_timeout = self.forwarder.client_timeout;
        loop {
            let (take, finished) = body.take(&conn.buf)?;
            if take > 0 {
                body.started = true;
                if !upload(upstream, &conn.buf[..take], self.plan.server_timeout).await? {
                    return Ok(false);
                }
                conn.buf.advance(take);
            }
            if finished {
                body.done = true;
                return Ok(true);
            }
            // A body is read in larger pieces than a head: fewer syscalls on each leg.
            if conn.buf.capacity() - conn.buf.len() < BODY_CHUNK / 4 {
                conn.buf.reserve(BODY_CHUNK);
            }
            let deadline = Instant::now() + client_timeout;
            let mut read = pin!(io.read_buf(&mut conn.buf));
            let timer = &mut conn.timer;
            let event = poll_fn(|cx| {
                if upstream.poll_read_ready(cx).is_ready() {
                    return Poll::Ready(Err(true));
                }
                if let Poll::Ready(read) = read.as_mut().poll(cx) {
                    return Poll::Ready(Ok(read));
                }
                if timer.expired(cx, deadline) {
                    return Poll::Ready(Err(false));
                }
                Poll::Pending
            })
            .await;
            match event {
                Err(true) => return Ok(false),
                Err(false) => {
                    return Err(Failure::Client(
                        "the request body stalled for the client timeout\n",
                    ))
                }
                Ok(Ok(0)) => {
                    return Err(Failure::Client("the request body ended before its end\n"))
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    return Err(Failure::Client(
                        "the client connection failed during the request body\n",
                    ))
                }
            }
        }
    }

    /// Reads until `buf` starts with a response head; for interim and final ones, also writes
    /// the client's version of it into `client_head`.
    async fn read_head(
        &self,
        upstream: &mut TcpStream,
        buf: &mut Vec<u8>,
        client_head: &mut Vec<u8>,
        close: bool,
        conn: &mut Conn,
        deadline: Instant,
    ) -> Result<ResponseHead, Failure> {
        loop {
            if !buf.is_empty() {
                // Once shutdown has begun, every answer says it is the connection's last.
                let close = close || shutting_down(&conn.shutdown);
                match parse_response(buf, self.plan, self.pin.as_ref(), close, client_head)? {
                    Some(head) => return Ok(head),
                    None if buf.len() >= MAX_HEAD_BYTES => {
                        return Err(Failure::BadResponse("response head too large"));
                    }
                    None => {}
                }
            }
            match read_some(upstream, buf, Some(deadline), &mut conn.timer).await {
                Ok(0) => return Err(Failure::Unreachable(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(ReadError::Timeout) => return Err(Failure::Timeout),
                Err(ReadError::Io(err)) => return Err(Failure::Unreachable(err)),
            }
        }
    }

    /// Sends the rewritten head and the body to the client. Says whether the upstream
    /// connection ended exactly at the response's end (and so may be reused).
    #[allow(clippy::too_many_arguments)]
    async fn relay<S>(
        &self,
        io: &mut TimedIo<S>,
        upstream: &mut TcpStream,
        head: &ResponseFacts,
        body_start: usize,
        buf: &mut Vec<u8>,
        mut out: Scratch,
        conn: &mut Conn,
    ) -> Result<bool, Failure>
    where
        S: ClientStream,
    {
        let status = head.status;
        let mut reusable = head.keep_alive;
        let client_gone = |_| Failure::Broken(status);
        let mut scanner = ChunkedScanner::new();

        // What came with the head goes out with it (up to the message's end).
        let available = buf.len() - body_start;
        let (mut taken, mut finished) = match head.framing {
            Framing::Empty => (0, true),
            Framing::Length(length) => {
                let take = usize::try_from(length).map_or(available, |l| l.min(available));
                (take, take as u64 == length)
            }
            Framing::Chunked if available == 0 => (0, false),
            Framing::Chunked => match scanner.feed(&buf[body_start..]) {
                Ok(Scan::Done(end)) => (end, true),
                Ok(Scan::NeedMore) => (available, false),
                Err(_) => return Err(Failure::Broken(status)),
            },
            Framing::UntilClose => (available, false),
        };
        reusable &= taken == available;
        if out.len() + taken <= COALESCE_LIMIT {
            out.extend_from_slice(&buf[body_start..body_start + taken]);
            send(io, &out).await.map_err(client_gone)?;
        } else {
            send(io, &out).await.map_err(client_gone)?;
            send(io, &buf[body_start..body_start + taken]).await.map_err(client_gone)?;
        }
        let mut remaining = match head.framing {
            Framing::Length(length) => length - taken as u64,
            _ => 0,
        };
        // The server timeout covers the wait for the response head: a body may pause (a
        // stream of events, a slow report) for as long as it likes.
        while !finished {
            buf.clear();
            let got = match read_some(upstream, buf, None, &mut conn.timer).await {
                Ok(got) => got,
                Err(_) => return Err(Failure::Broken(status)),
            };
            if got == 0 {
                if head.framing == Framing::UntilClose {
                    break;
                }
                return Err(Failure::Broken(status));
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
                    Err(_) => return Err(Failure::Broken(status)),
                },
                Framing::UntilClose | Framing::Empty => taken = got,
            }
            reusable &= taken == got;
            send(io, &buf[..taken]).await.map_err(client_gone)?;
        }
        Ok(reusable && head.framing != Framing::UntilClose)
    }

    /// A `101` to an upgrade request: the head goes to the client, then bytes flow both ways
    /// until either side closes or nothing moves for the tunnel timeout.
    async fn tunnel<S>(
        &self,
        io: &mut TimedIo<S>,
        conn: &mut Conn,
        mut upstream: TcpStream,
        early: &[u8],
        client_head: &[u8],
        status: u16,
    ) -> Result<Relayed, Failure>
    where
        S: ClientStream,
    {
        let gone = |_| Failure::Broken(status);
        self.state.upgraded();
        send(io, client_head).await.map_err(gone)?;
        // Bytes either side sent right after the switch go first.
        if !early.is_empty() {
            send(io, early).await.map_err(gone)?;
        }
        if !conn.buf.is_empty() {
            upstream.write_all(&conn.buf).await.map_err(gone)?;
            conn.buf.clear();
        }
        let idle = self.plan.tunnel_timeout;
        // A plain client's socket goes to the tunnel loop; a TLS one stays on the runtime.
        match io.upgraded_stream().take_socket() {
            Some(client) => crate::tunnel::plain::splice(client, upstream, idle).await,
            None => crate::tunnel::splice(io.upgraded_stream(), upstream, idle).await,
        }
        Ok(Relayed { status, close: true, tunnelled: true })
    }
}

/// The relay of a body compressed on its way ([`Attempt::relay`]'s other branch, taken only
/// when the rules said so): the instance's body is taken by its framing (a chunked one
/// decoded by the same [`ChunkedScanner`]), each piece read goes through the encoder at
/// once, and what the encoder gives goes out as one chunk, so nothing is held back longer
/// than one read. The instance's trailers follow the last chunk, less those compression makes
/// false ([`crate::trailers::write_last_chunk`]). The instance's connection is reusable exactly as in the plain relay.
struct Compressed<'a, S> {
    io: &'a mut TimedIo<S>,
    upstream: &'a mut TcpStream,
    head: &'a ResponseFacts,
    conn: &'a mut Conn,
}

impl<S> Compressed<'_, S>
where
    S: ClientStream,
{
    async fn run(
        self,
        coding: CompressionAlgo,
        body_start: usize,
        buf: &mut Vec<u8>,
        out: Scratch,
    ) -> Result<bool, Failure> {
        let Compressed { io, upstream, head, conn } = self;
        let status = head.status;
        let client_gone = |_| Failure::Broken(status);
        let mut encoder = Some(Encoder::new(coding));
        let mut scanner = ChunkedScanner::new();
        // A chunked body's trailer section, written after the compressed body.
        let mut trailer_section = Vec::new();
        let mut remaining = match head.framing {
            Framing::Length(length) => length,
            _ => 0,
        };
        let mut plain = Scratch::take();
        let mut frame = Scratch::take();
        let mut reusable = head.keep_alive;
        // The head goes out with what came with it, as in the plain relay.
        frame.extend_from_slice(&out);
        drop(out);
        let mut start = body_start;
        let mut finished = false;
        loop {
            let input = &buf[start..];
            plain.clear();
            let taken = match head.framing {
                Framing::Length(_) => {
                    let take =
                        usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                    remaining -= take as u64;
                    finished = remaining == 0;
                    plain.extend_from_slice(&input[..take]);
                    take
                }
                Framing::Chunked => {
                    let scan = scanner
                        .feed_parts(
                            input,
                            |range| plain.extend_from_slice(&input[range]),
                            |range| trailer_section.extend_from_slice(&input[range]),
                        )
                        .map_err(|_| Failure::Broken(status))?;
                    match scan {
                        Scan::Done(end) => {
                            finished = true;
                            end
                        }
                        Scan::NeedMore => input.len(),
                    }
                }
                Framing::UntilClose | Framing::Empty => {
                    plain.extend_from_slice(input);
                    input.len()
                }
            };
            reusable &= taken == input.len();
            let mut packed = Scratch::take();
            if let (Some(encoder), false) = (encoder.as_mut(), plain.is_empty()) {
                encoder.compress(&plain, &mut packed);
            }
            if finished {
                if let Some(encoder) = encoder.take() {
                    encoder.finish(&mut packed);
                }
            }
            if !packed.is_empty() {
                write_chunk(&mut frame, &packed);
            }
            if finished {
                crate::trailers::write_last_chunk(&trailer_section, &mut frame);
            }
            if !frame.is_empty() {
                send(io, &frame).await.map_err(client_gone)?;
                frame.clear();
            }
            if finished {
                break;
            }
            buf.clear();
            start = 0;
            let got = match read_some(upstream, buf, None, &mut conn.timer).await {
                Ok(got) => got,
                Err(_) => return Err(Failure::Broken(status)),
            };
            if got == 0 {
                if head.framing == Framing::UntilClose {
                    finished = true;
                    // One more turn with nothing read: the encoder's end and the last chunk.
                    continue;
                }
                return Err(Failure::Broken(status));
            }
        }
        Ok(reusable && head.framing != Framing::UntilClose)
    }
}

/// Appends `data` to `frame` as one chunk (RFC 9112 §7.1).
fn write_chunk(frame: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write as _;
    let _ = write!(frame, "{:x}\r\n", data.len());
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\r\n");
}

/// Writes all of `bytes` to the instance, unless it starts answering first (`Ok(false)`).
/// A write that makes no progress for `timeout` is the instance's fault.
async fn upload(
    upstream: &TcpStream,
    mut bytes: &[u8],
    timeout: Duration,
) -> Result<bool, Failure> {
    while !bytes.is_empty() {
        match upstream.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    biased;
                    _ = upstream.readable() => return Ok(false),
                    writable = upstream.writable() => writable.map_err(Failure::Unreachable)?,
                    () = tokio::time::sleep(timeout) => return Err(Failure::Timeout),
                }
            }
            Err(err) => return Err(Failure::Unreachable(err)),
        }
    }
    Ok(true)
}

/// Parses the instance's response head at the start of `buf` (`None`: not complete yet) and
/// writes the client's version of it into `client_head` (with `Connection: close` when
/// `close` is asked or the body ends with the connection).
fn parse_response(
    buf: &[u8],
    plan: &Plan<'_>,
    pin: Option<&rules::Pin<'_>>,
    close: bool,
    client_head: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::BadResponse("malformed response head")),
    };
    let status = response.code.unwrap_or(0);
    if status == 101 && !plan.upgrade {
        return Err(Failure::BadResponse("101 Switching Protocols to a request without Upgrade"));
    }
    let fields = response.headers.iter().map(|h| (h.name, h.value));
    let facts = rules::analyse_response(
        status,
        response.version == Some(0),
        plan.head_request,
        fields.clone(),
    )
    .map_err(Failure::BadResponse)?;
    client_head.clear();
    client_head.extend_from_slice(b"HTTP/1.1 ");
    client_head.extend_from_slice(&status_digits(status));
    client_head.push(b' ');
    client_head.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    client_head.extend_from_slice(b"\r\n");
    let interim = (100..200).contains(&status) && status != 101;
    let (edits, pin) = if interim { (&EMPTY_EDITS, None) } else { (plan.response_edits, pin) };
    let coding = rules::compression(plan.compression, &facts, fields.clone());
    rules::write_response_fields(client_head, fields, &facts, edits, pin, true, coding);
    if coding.is_some() {
        client_head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !interim && status != 101 {
        if close || facts.framing == Framing::UntilClose {
            client_head.extend_from_slice(b"connection: close\r\n");
        } else if plan.http10 {
            client_head.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    client_head.extend_from_slice(b"\r\n");
    Ok(Some(if interim {
        ResponseHead::Interim { status, head_len }
    } else {
        ResponseHead::Final { facts, head_len, coding }
    }))
}

/// A status code's three digits (httparse accepts only three-digit codes).
fn status_digits(status: u16) -> [u8; 3] {
    let digit = |n: u16| b'0' + u8::try_from(n % 10).unwrap_or(0);
    [digit(status / 100), digit(status / 10), digit(status)]
}

static EMPTY_EDITS: HeaderEdits =
    HeaderEdits { delete: Vec::new(), set: Vec::new(), add: Vec::new() };

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
