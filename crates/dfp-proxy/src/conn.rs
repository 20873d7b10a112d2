//! Client-connection timeouts that hyper does not give us as we need them:
//!
//! - **request headers** (`--header-timeout`, 5 s): once the first byte of a request head has
//!   arrived, the whole head must follow within this time, else the client gets
//!   `408 Request Timeout` and the connection is closed (slowloris);
//! - **idle keep-alive** (`--idle-timeout`, 15 s): a kept-alive connection with no request
//!   under way is closed quietly after this time;
//! - **client** (`--client-timeout`, 20 s, HAProxy's `timeout client`): a write to the client
//!   that makes no progress for this long fails, so a client that stops reading a large
//!   response frees its connection and the instance's instead of holding them for good.
//!
//! Both live in [`TimedIo`], a wrapper around the client's socket that knows, through a shared
//! [`ConnState`], whether a request is being served. While one is (or the connection was
//! upgraded to a tunnel) no deadline applies: the server and tunnel timeouts govern instead.
//!
//! The timer is lazy: one `Sleep` per connection, re-armed only when it fires early or when a
//! partial head needs an earlier deadline, so a busy keep-alive connection costs no timer
//! operation per request.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// What the request side of a connection is doing, shared by the socket wrapper, the service
/// and the response body.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    busy: AtomicBool,
    /// Requests whose head was complete, so far: a head in progress that was recorded at an
    /// older count has been completed since.
    requests: AtomicU64,
    upgraded: AtomicBool,
    /// When the last response ended, in ms of [`clock_ms`].
    idle_since_ms: AtomicU64,
    /// The connection task, parked in a read while a request was busy: woken when the
    /// request ends so that the read arms the idle deadline. Per connection, never contended.
    reader: Mutex<Option<Waker>>,
}

impl ConnState {
    /// A request head was parsed: its service is running.
    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.busy.store(true, Ordering::Relaxed);
    }

    /// The response was sent (or dropped): the connection waits for the next request.
    pub(crate) fn request_finished(&self) {
        self.idle_since_ms.store(clock_ms(), Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
        if let Some(waker) = self.reader.lock().ok().and_then(|mut w| w.take()) {
            waker.wake();
        }
    }

    fn park_reader(&self, waker: &Waker) {
        if let Ok(mut slot) = self.reader.lock() {
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
    }

    /// The connection became a tunnel: it has its own idle timeout.
    pub(crate) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }
}

/// The origin of [`clock_ms`], on tokio's (monotonic, test-pausable) clock.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since [`origin`].
fn clock_ms() -> u64 {
    u64::try_from(Instant::now().duration_since(origin()).as_millis()).unwrap_or(u64::MAX)
}

fn instant_of(ms: u64) -> Instant {
    origin() + Duration::from_millis(ms)
}

/// The client socket (plain, or TLS over it), with the header and idle deadlines applied to
/// its reads and the client timeout to its writes.
#[derive(Debug)]
pub(crate) struct TimedIo<S = TcpStream> {
    stream: S,
    state: Arc<ConnState>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// When the first byte of a request head arrived, and the request count then; the head
    /// is complete once the count has moved on.
    head_started: Option<(Instant, u64)>,
    timer: Pin<Box<Sleep>>,
    write_timeout: Duration,
    /// Since when writes have made no progress, and the timer that ends the wait (its own:
    /// a tunnel polls reads and writes from two places).
    write_stalled: Option<(Instant, Pin<Box<Sleep>>)>,
    /// Whether the header and idle deadlines apply to reads (HTTP/2 has its own).
    timed_reads: bool,
}

impl<S> TimedIo<S> {
    pub(crate) fn new(
        stream: S,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
        write_timeout: Duration,
    ) -> Self {
        state.idle_since_ms.store(clock_ms(), Ordering::Relaxed);
        TimedIo {
            stream,
            state,
            header_timeout,
            idle_timeout,
            head_started: None,
            timer: Box::pin(tokio::time::sleep(idle_timeout)),
            write_timeout,
            write_stalled: None,
            timed_reads: true,
        }
    }

    /// The socket with only the client timeout on its writes: for HTTP/2, whose reads carry
    /// many streams and have the connection's own idle watchdog.
    pub(crate) fn writes_only(stream: S, write_timeout: Duration) -> Self {
        let state = Arc::new(ConnState::default());
        let mut io = TimedIo::new(stream, state, Duration::MAX, Duration::MAX, write_timeout);
        io.timed_reads = false;
        io
    }

    /// The socket itself, for a tunnel: once a connection is upgraded no deadline of this
    /// wrapper applies (the tunnel has its own idle timeout), so its bytes need not pass
    /// through it.
    pub(crate) fn upgraded_stream(&mut self) -> &mut S {
        debug_assert!(
            self.state.upgraded.load(Ordering::Relaxed),
            "only an upgraded connection bypasses its deadlines"
        );
        &mut self.stream
    }

    /// A write returned `Pending`: whether it has now been stalled for the client timeout
    /// (tunnels excepted: they have their own idle timeout).
    fn write_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.state.upgraded.load(Ordering::Relaxed) {
            return false;
        }
        let timeout = self.write_timeout;
        let (since, timer) = self.write_stalled.get_or_insert_with(|| {
            let now = Instant::now();
            (now, Box::pin(tokio::time::sleep_until(now + timeout)))
        });
        let deadline = *since + timeout;
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    fn wrote(&mut self) {
        self.write_stalled = None;
    }

    /// The deadline that applies now, if any.
    fn deadline(&self) -> Option<Instant> {
        if self.state.busy.load(Ordering::Relaxed) || self.state.upgraded.load(Ordering::Relaxed) {
            return None;
        }
        Some(match self.head_started {
            Some((started, _)) => started + self.header_timeout,
            None => {
                instant_of(self.state.idle_since_ms.load(Ordering::Relaxed)) + self.idle_timeout
            }
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.timed_reads {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let requests = this.state.requests.load(Ordering::Relaxed);
        if this.head_started.is_some_and(|(_, seen)| seen != requests) {
            // A request started since: the head in progress was complete.
            this.head_started = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let got_bytes = buf.filled().len() > before;
                if got_bytes && this.head_started.is_none() && this.deadline().is_some() {
                    this.head_started = Some((Instant::now(), requests));
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let Some(deadline) = this.deadline() else {
                    if !this.state.upgraded.load(Ordering::Relaxed) {
                        this.state.park_reader(cx.waker());
                    }
                    return Poll::Pending;
                };
                // Lazy timer: fire, then check what is really due.
                if deadline < this.timer.deadline() {
                    this.timer.as_mut().reset(deadline);
                }
                loop {
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if Instant::now() < deadline {
                        this.timer.as_mut().reset(deadline);
                        continue;
                    }
                    if this.head_started.is_some() {
                        // Best effort: the client may be gone already.
                        let stream = Pin::new(&mut this.stream);
                        if let Poll::Ready(Ok(_)) = stream.poll_write(cx, REQUEST_TIMEOUT) {
                            let _ = Pin::new(&mut this.stream).poll_flush(cx);
                        }
                        crate::metrics::OwnAnswer::HeaderTimeout.count();
                        tracing::debug!("request head not complete in time; answered 408");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not complete in time",
                        )));
                    }
                    tracing::debug!("keep-alive connection idle for too long; closing it");
                    // A quiet end of input: hyper closes the connection without an answer.
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

fn stalled_too_long() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client read nothing for the client timeout")
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(written) => {
                self.wrote();
                Poll::Ready(written)
            }
            Poll::Pending if self.write_expired(cx) => Poll::Ready(Err(stalled_too_long())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(written) => {
                self.wrote();
                Poll::Ready(written)
            }
            Poll::Pending if self.write_expired(cx) => Poll::Ready(Err(stalled_too_long())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(flushed) => {
                self.wrote();
                Poll::Ready(flushed)
            }
            Poll::Pending if self.write_expired(cx) => Poll::Ready(Err(stalled_too_long())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A client connection's transport as the HTTP/1 engine sees it: its bytes, and, when it is a
/// plain socket, the socket itself, which an upgraded connection's tunnel takes over to serve
/// it off the runtime ([`crate::tunnel::plain`]).
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin {
    /// Takes the plain socket out, leaving a stream whose reads and writes fail; `None` over
    /// TLS, whose bytes need the session.
    fn take_socket(&mut self) -> Option<TcpStream>;
}

/// The plain listener's client socket, which a tunnel can take out of it.
#[derive(Debug)]
pub(crate) struct PlainClient(Option<TcpStream>);

impl PlainClient {
    pub(crate) fn new(stream: TcpStream) -> Self {
        PlainClient(Some(stream))
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.0.as_mut().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "the socket was handed to a tunnel")
        })
    }
}

impl ClientStream for PlainClient {
    fn take_socket(&mut self) -> Option<TcpStream> {
        self.0.take()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream for tokio_rustls::server::TlsStream<S> {
    fn take_socket(&mut self) -> Option<TcpStream> {
        None
    }
}

impl AsyncRead for PlainClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlainClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_shutdown(cx)
    }
}

/// A response body that drops `guard` once it has been sent (its end polled) or dropped, so
/// what must happen at the end of a response happens exactly once: the plain listener's
/// [`RequestDone`] starts the idle deadline from there, the TLS listener's in-flight count
/// goes down.
#[derive(Debug)]
pub(crate) struct EndOfBody<B, G> {
    inner: B,
    guard: Option<G>,
}

impl<B, G> EndOfBody<B, G> {
    pub(crate) fn new(inner: B, guard: G) -> Self {
        EndOfBody { inner, guard: Some(guard) }
    }
}

impl<B: http_body::Body + Unpin, G: Unpin> http_body::Body for EndOfBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
