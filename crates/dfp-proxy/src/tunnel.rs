//! Byte tunnels: upgraded HTTP connections (WebSocket and any other `Upgrade`) and TCP
//! services' connections (`reqMode=tcp`). Bytes are copied both ways until either side
//! closes or nothing moves for the idle timeout.
//!
//! One loop serves both because they need the same things: half-closes passed on, an idle
//! timeout that costs no timer operation per chunk, and (for TCP services) a bound on how
//! long a write may make no progress and live byte counts for `/metrics`. The loop copies
//! through user-space buffers; `splice(2)` would need unsafe code (forbidden here) and the
//! measurement in the README ("TCP services") shows loopback copies are not where the time goes.
//!
//! The loop is a hand-written poll, not `select!` over read and write futures: a message
//! through a tunnel is a wake-up, one read, one write and the reads that find nothing more,
//! and building, selecting among and dropping futures for each of those (and polling the
//! idle timer each time) was a third of the user-space instructions of a WebSocket message
//! (BENCHMARKS.md, "WebSocket: the tunnel as one poll").

pub(crate) mod plain;

use std::future::{poll_fn, Future as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How a tunnel runs: its idle timeout, optional bounds on each side's writes, its buffer
/// size and the counters its bytes are added to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tunnel<'c> {
    /// Closed after this long without a byte either way.
    pub(crate) idle: Duration,
    /// Closed when a write to `a` (or to `b`) makes no progress for this long: that side
    /// stopped reading. `None`: only the idle timeout applies.
    pub(crate) write_a_within: Option<Duration>,
    pub(crate) write_b_within: Option<Duration>,
    /// Bytes read at a time, per direction.
    pub(crate) buffer: usize,
    /// Counters of the bytes copied `a` to `b` and `b` to `a`, added to as they move.
    pub(crate) counted: Option<(&'c AtomicU64, &'c AtomicU64)>,
    /// Whether `a` (and `b`) is a plain TCP socket, whose closing sends the same FIN its
    /// `shutdown` would: the side that ends last is then closed without being shut first
    /// (one system call less per connection, HAProxy's way). A TLS side is always shut, to
    /// send its `close_notify`.
    pub(crate) a_plain: bool,
    pub(crate) b_plain: bool,
}

impl Tunnel<'_> {
    /// An upgraded HTTP connection's tunnel: the idle timeout only, 16 KiB buffers.
    pub(crate) fn idle(idle: Duration) -> Tunnel<'static> {
        Tunnel {
            idle,
            write_a_within: None,
            write_b_within: None,
            buffer: 16 * 1024,
            counted: None,
            a_plain: false,
            b_plain: false,
        }
    }
}

/// Copies `a` to `b` and `b` to `a`. A side that ends its output has its half closed on the
/// other side; the tunnel ends when both have, on an error, or after `idle` without traffic.
pub(crate) async fn splice<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    run(a, b, Tunnel::idle(idle)).await;
}

/// Bytes a direction reads at a time until a read fills them: most tunnels (a short TCP
/// exchange, a WebSocket's messages) never move more at once, and a buffer is zeroed when it
/// is made, so starting at the full size cost a short connection two 64 KiB `memset`s, the
/// largest user-space cost of a TCP service's connection in the profile (BENCHMARKS.md, "TCP
/// services").
const FIRST_BUFFER: usize = 4 * 1024;

/// One direction's buffer: [`FIRST_BUFFER`] bytes, grown once to `max` the first time a read
/// fills it (a transfer that keeps the socket full).
struct Buffer {
    bytes: Vec<u8>,
    max: usize,
}

impl Buffer {
    fn new(max: usize) -> Self {
        let max = max.max(1);
        Buffer { bytes: vec![0; FIRST_BUFFER.min(max)], max }
    }

    /// Notes a read of `n` bytes into the buffer.
    fn filled(&mut self, n: usize) {
        if n == self.bytes.len() && n < self.max {
            self.bytes.resize(self.max, 0);
        }
    }
}

/// Where one direction of a tunnel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Reading from its side and writing what it read to the other.
    Copying,
    /// Its side ended (or failed) and everything read was written; `shut`: the other side's
    /// output is to be shut (so it sees the end) before this direction is done.
    Ending {
        shut: bool,
    },
    Done,
}

/// The rules both tunnel engines follow (this module's, on the runtime, and [`plain`]'s loop),
/// kept here so that they cannot drift apart.
impl Stage {
    /// Where a direction goes once its side has ended its output (or failed reading): the other
    /// side is told by a `shutdown` of its output while the other direction still reads
    /// (closing it would end both halves), and always when it is not a plain socket (TLS sends
    /// its `close_notify`); otherwise the close that ends the tunnel tells it, one system call
    /// less per connection (HAProxy's way).
    fn after_end(other_reading: bool, to_plain: bool) -> Stage {
        Stage::Ending { shut: other_reading || !to_plain }
    }

    /// Whether the direction still reads its side.
    fn reading(self) -> bool {
        self == Stage::Copying
    }

    /// Whether a tunnel whose two directions are where `stages` says has ended (a failed write
    /// ends it sooner).
    fn tunnel_ended(stages: [Stage; 2]) -> bool {
        stages == [Stage::Done, Stage::Done]
    }
}

/// One direction of a tunnel: bytes read from one side, written to the other.
struct Pipe<'c> {
    buf: Buffer,
    /// `buf.bytes[start..end]`: read, not yet written.
    start: usize,
    end: usize,
    /// Everything read was written, not yet flushed (a TLS side may hold the last record).
    unflushed: bool,
    stage: Stage,
    /// How long the write of one chunk may wait on the other side, and since when it has.
    write_within: Option<Duration>,
    stalled_since: Option<Instant>,
    counter: Option<&'c AtomicU64>,
    /// Whether the side written to is a plain TCP socket (see [`Tunnel::a_plain`]).
    to_plain: bool,
}

/// What polling a direction found.
enum Flow {
    /// Waiting on a side (its waker registered), or done.
    Idle,
    /// A write to the other side failed: the tunnel ends.
    Broken,
}

impl<'c> Pipe<'c> {
    fn new(
        buffer: usize,
        write_within: Option<Duration>,
        counter: Option<&'c AtomicU64>,
        to_plain: bool,
    ) -> Self {
        Pipe {
            buf: Buffer::new(buffer),
            start: 0,
            end: 0,
            unflushed: false,
            stage: Stage::Copying,
            write_within,
            stalled_since: None,
            counter,
            to_plain,
        }
    }

    /// The write of the current chunk has to wait: notes since when (if writes are bounded).
    fn stalled(&mut self, stalls: &mut bool) {
        if self.write_within.is_some() && self.stalled_since.is_none() {
            self.stalled_since = Some(Instant::now());
            *stalls = true;
        }
    }

    /// When the current chunk's write has waited too long, if it is waiting.
    fn stall_deadline(&self) -> Option<Instant> {
        Some(self.stalled_since? + self.write_within?)
    }

    /// Moves bytes from `from` to `to` until one of them has to wait. `other_reading`: the
    /// other direction still reads, so `to` must be told of this side's end by a shutdown
    /// even when it is a plain socket (its close would end both halves). `moved`: set when a
    /// byte was written; `stalls`: set when a write started to wait.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        other_reading: bool,
        moved: &mut bool,
        stalls: &mut bool,
    ) -> Flow
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            match self.stage {
                Stage::Copying if self.start < self.end => {
                    let chunk = &self.buf.bytes[self.start..self.end];
                    match Pin::new(&mut *to).poll_write(cx, chunk) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Flow::Broken,
                        Poll::Ready(Ok(n)) => {
                            self.start += n;
                            self.unflushed = self.start == self.end;
                            if let Some(counter) = self.counter {
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            *moved = true;
                        }
                        Poll::Pending => {
                            self.stalled(stalls);
                            return Flow::Idle;
                        }
                    }
                }
                // Flushed before reading on: over TLS the last bytes could otherwise wait in
                // the session while the tunnel waits for the other side.
                Stage::Copying if self.unflushed => match Pin::new(&mut *to).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        self.stalled_since = None;
                    }
                    Poll::Ready(Err(_)) => return Flow::Broken,
                    Poll::Pending => {
                        self.stalled(stalls);
                        return Flow::Idle;
                    }
                },
                Stage::Copying => {
                    self.stalled_since = None;
                    let mut read = ReadBuf::new(&mut self.buf.bytes);
                    match Pin::new(&mut *from).poll_read(cx, &mut read) {
                        Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                            let n = read.filled().len();
                            (self.start, self.end) = (0, n);
                            self.buf.filled(n);
                        }
                        // The end of this side's output, or an error reading it: the other
                        // side is told, then this direction is done.
                        Poll::Ready(_) => {
                            self.stage = Stage::after_end(other_reading, self.to_plain);
                        }
                        Poll::Pending => return Flow::Idle,
                    }
                }
                Stage::Ending { shut: true } => match Pin::new(&mut *to).poll_shutdown(cx) {
                    Poll::Ready(_) => self.stage = Stage::Done,
                    Poll::Pending => return Flow::Idle,
                },
                Stage::Ending { shut: false } => self.stage = Stage::Done,
                Stage::Done => return Flow::Idle,
            }
        }
    }
}

/// The tunnel's one timer, for the idle timeout and the write bounds. It is lazy: a message
/// only notes the time, and the timer is moved on when it fires early, so a busy tunnel
/// costs no timer operation per message; and it is polled (to register the task) only when
/// it was reset or the task's waker changed, not on every wake-up.
struct Deadlines<'s> {
    timer: Pin<&'s mut Sleep>,
    registered: Option<Waker>,
    idle: Duration,
    last_moved: Instant,
}

impl Deadlines<'_> {
    /// Whether a deadline has passed (the tunnel ends), after moving the timer on to the
    /// earliest one still ahead when it fired early or `earlier` is sooner than it.
    fn expired(
        &mut self,
        cx: &mut Context<'_>,
        stalls: [Option<Instant>; 2],
        earlier: bool,
    ) -> bool {
        let fired = self.timer.is_elapsed();
        let same_task = self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !fired && same_task && !earlier {
            return false;
        }
        loop {
            let due = stalls.into_iter().flatten().fold(self.last_moved + self.idle, Instant::min);
            if Instant::now() >= due {
                if due == self.last_moved + self.idle {
                    tracing::debug!(idle = ?self.idle, "tunnel idle for too long; closing it");
                } else {
                    tracing::debug!(
                        "a side of the tunnel read nothing for its write timeout; closing it"
                    );
                }
                return true;
            }
            if self.timer.deadline() != due {
                self.timer.as_mut().reset(due);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                self.registered = Some(cx.waker().clone());
                return false;
            }
        }
    }
}

/// [`splice`] as `tunnel` says: its idle timeout, write bounds, buffers and counters.
///
/// Each side is read and written through its own `&mut`, never split: both directions are
/// polled in turn from one task, so no lock is needed between a side's reading and its
/// writing (`tokio::io::split` takes one on every poll). Which direction goes first
/// alternates, so one that is always ready cannot starve the other once tokio's budget
/// makes it yield.
pub(crate) async fn run<A, B>(mut a: A, mut b: B, tunnel: Tunnel<'_>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_to_b, b_to_a) = match tunnel.counted {
        Some((a_to_b, b_to_a)) => (Some(a_to_b), Some(b_to_a)),
        None => (None, None),
    };
    let mut forth = Pipe::new(tunnel.buffer, tunnel.write_b_within, a_to_b, tunnel.b_plain);
    let mut back = Pipe::new(tunnel.buffer, tunnel.write_a_within, b_to_a, tunnel.a_plain);
    let timer = tokio::time::sleep(tunnel.idle);
    tokio::pin!(timer);
    let mut deadlines =
        Deadlines { timer, registered: None, idle: tunnel.idle, last_moved: Instant::now() };
    let mut forth_first = true;
    poll_fn(|cx| {
        let (mut moved, mut stalls) = (false, false);
        let mut step = |first_forth: bool, moved: &mut bool, stalls: &mut bool| {
            if first_forth {
                let reading = back.stage.reading();
                forth.poll(cx, &mut a, &mut b, reading, moved, stalls)
            } else {
                let reading = forth.stage.reading();
                back.poll(cx, &mut b, &mut a, reading, moved, stalls)
            }
        };
        for first_forth in [forth_first, !forth_first] {
            if let Flow::Broken = step(first_forth, &mut moved, &mut stalls) {
                return Poll::Ready(());
            }
        }
        forth_first = !forth_first;
        if Stage::tunnel_ended([forth.stage, back.stage]) {
            return Poll::Ready(());
        }
        if moved {
            deadlines.last_moved = Instant::now();
        }
        let stall_deadlines = [forth.stall_deadline(), back.stall_deadline()];
        if deadlines.expired(cx, stall_deadlines, stalls) {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn bytes_flow_both_ways_and_idle_tunnels_close() {
        let (client, proxy_client_side) = tokio::io::duplex(64);
        let (proxy_upstream_side, upstream) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(splice(
            proxy_client_side,
            proxy_upstream_side,
            Duration::from_millis(200),
        ));
        let (mut client, mut upstream) = (client, upstream);
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0_u8; 4];
        upstream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        upstream.write_all(b"pong").await.expect("write");
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
        // Nothing moves: the tunnel closes by itself.
        tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("idle tunnel ends")
            .expect("no panic");
    }

    #[tokio::test]
    async fn bytes_are_counted_each_way_and_a_side_that_stops_reading_is_dropped() {
        let counters = std::sync::Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        // A 1-byte pipe toward a client that never reads: the write to it stalls.
        let (mut client, proxy_client_side) = tokio::io::duplex(1);
        let (proxy_upstream_side, mut upstream) = tokio::io::duplex(64);
        let c = counters.clone();
        let tunnel = tokio::spawn(async move {
            let tunnel = Tunnel {
                idle: Duration::from_secs(60),
                write_a_within: Some(Duration::from_millis(200)),
                write_b_within: None,
                buffer: 8,
                counted: Some((&c.0, &c.1)),
                a_plain: false,
                b_plain: false,
            };
            run(proxy_client_side, proxy_upstream_side, tunnel).await;
        });
        client.write_all(b"abc").await.expect("write");
        let mut buf = [0_u8; 3];
        upstream.read_exact(&mut buf).await.expect("read");
        assert_eq!(counters.0.load(Ordering::Relaxed), 3);
        upstream.write_all(b"more than one byte").await.expect("write");
        tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("a stalled write ends the tunnel long before the idle timeout")
            .expect("no panic");
    }

    #[tokio::test]
    async fn a_transfer_larger_than_the_first_buffer_arrives_whole_and_plain_sides_end_cleanly() {
        let (mut client, proxy_client_side) = tokio::io::duplex(256 * 1024);
        let (proxy_upstream_side, mut upstream) = tokio::io::duplex(256 * 1024);
        let counters = std::sync::Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let c = counters.clone();
        let tunnel = tokio::spawn(async move {
            let tunnel = Tunnel {
                idle: Duration::from_secs(60),
                write_a_within: None,
                write_b_within: None,
                buffer: 64 * 1024,
                counted: Some((&c.0, &c.1)),
                a_plain: true,
                b_plain: true,
            };
            run(proxy_client_side, proxy_upstream_side, tunnel).await;
        });
        let sent: Vec<u8> = (0..1_000_000_u32).map(|i| (i % 251) as u8).collect();
        let writing = {
            let sent = sent.clone();
            tokio::spawn(async move {
                client.write_all(&sent).await.expect("write");
                client.shutdown().await.expect("client done");
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.expect("read the reply and the end");
                back
            })
        };
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.expect("the client's end reaches the instance");
        assert!(got == sent, "{} bytes arrived of {}, not all in order", got.len(), sent.len());
        upstream.write_all(b"done").await.expect("reply");
        drop(upstream);
        // The instance ended last: the client still gets its reply, then the end.
        assert_eq!(writing.await.expect("no panic"), b"done");
        tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("the tunnel ends once both sides have")
            .expect("no panic");
        assert_eq!(counters.0.load(Ordering::Relaxed), 1_000_000);
        assert_eq!(counters.1.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_tunnel_busy_for_longer_than_its_idle_timeout_stays_open_until_it_is_quiet() {
        let (mut client, proxy_client_side) = tokio::io::duplex(64);
        let (proxy_upstream_side, mut upstream) = tokio::io::duplex(64);
        let idle = Duration::from_millis(500);
        let tunnel = tokio::spawn(splice(proxy_client_side, proxy_upstream_side, idle));
        let mut buf = [0_u8; 4];
        // Eight messages 100 ms apart: 800 ms of traffic, more than the idle timeout.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"ping").await.expect("write");
            upstream.read_exact(&mut buf).await.expect("the tunnel is still open");
        }
        let quiet = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("the quiet tunnel ends")
            .expect("no panic");
        assert!(
            quiet.elapsed() >= Duration::from_millis(450),
            "closed only once quiet for the idle timeout"
        );
    }

    #[tokio::test]
    async fn a_direction_that_is_always_ready_does_not_starve_the_other() {
        let (client, proxy_client_side) = tokio::io::duplex(64 * 1024);
        let (proxy_upstream_side, mut upstream) = tokio::io::duplex(64 * 1024);
        let tunnel =
            tokio::spawn(splice(proxy_client_side, proxy_upstream_side, Duration::from_secs(60)));
        // The instance reads everything the client sends and, once the upload is flowing,
        // says one thing back; the client keeps uploading until it hears it (at most 256 MiB).
        let instance = tokio::spawn(async move {
            let mut buf = vec![0_u8; 64 * 1024];
            let mut total = 0_usize;
            let mut said = false;
            loop {
                let n = upstream.read(&mut buf).await.expect("read");
                if n == 0 {
                    return total;
                }
                total += n;
                if !said && total >= 1024 * 1024 {
                    upstream.write_all(b"heard you").await.expect("write");
                    said = true;
                }
            }
        });
        let (mut from_proxy, mut to_proxy) = tokio::io::split(client);
        let listening = tokio::spawn(async move {
            let mut reply = [0_u8; 9];
            from_proxy.read_exact(&mut reply).await.map(|_| reply)
        });
        let chunk = vec![7_u8; 16 * 1024];
        let mut sent = 0_usize;
        while !listening.is_finished() {
            to_proxy.write_all(&chunk).await.expect("upload");
            sent += chunk.len();
            assert!(sent < 256 * 1024 * 1024, "the reply never came while the upload flowed");
        }
        let heard = listening.await.expect("no panic").expect("the reply arrives");
        assert_eq!(&heard, b"heard you");
        to_proxy.shutdown().await.expect("end of the upload");
        let total = tokio::time::timeout(Duration::from_secs(5), instance)
            .await
            .expect("the instance sees the end")
            .expect("no panic");
        assert_eq!(total, sent, "every byte of the upload arrived");
        tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("the tunnel ends")
            .expect("no panic");
    }

    #[test]
    fn a_buffer_grows_once_a_read_fills_it_and_never_past_its_size() {
        let mut buffer = Buffer::new(64 * 1024);
        assert_eq!(buffer.bytes.len(), FIRST_BUFFER);
        buffer.filled(100);
        assert_eq!(buffer.bytes.len(), FIRST_BUFFER, "a short read keeps it small");
        buffer.filled(FIRST_BUFFER);
        assert_eq!(buffer.bytes.len(), 64 * 1024);
        buffer.filled(64 * 1024);
        assert_eq!(buffer.bytes.len(), 64 * 1024);
        assert_eq!(Buffer::new(8).bytes.len(), 8, "a tunnel asking for less gets what it asked");
    }
}
