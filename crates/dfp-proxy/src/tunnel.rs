//! Byte tunnels: upgraded HTTP connections (WebSocket and any other `Upgrade`) and TCP
//! services' connections (`reqMode=tcp`). Bytes are copied both ways until either side
//! closes or nothing moves for the idle timeout.
//!
//! One loop serves both because they need the same things: half-closes passed on, an idle
//! timeout that costs no timer operation per chunk, and (for TCP services) a bound on how
//! long a write may make no progress and live byte counts for `/metrics`. The loop copies
//! through user-space buffers; `splice(2)` would need unsafe code (forbidden here) and the
//! measurement in the README ("TCP services") shows loopback copies are not where the time goes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

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

/// Writes `bytes` to `to` and flushes, within `within` (if given) for the whole write.
async fn write_within<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    within: Option<Duration>,
) -> std::io::Result<()> {
    // Flushed at once: over TLS the last bytes could otherwise wait in the session while
    // the tunnel waits for the other side.
    let write = async {
        to.write_all(bytes).await?;
        to.flush().await
    };
    match within {
        // `timeout` polls the write first: a write that completes at once never touches
        // the timer wheel.
        Some(within) => tokio::time::timeout(within, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    }
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

/// [`splice`] as `tunnel` says: its idle timeout, write bounds, buffers and counters.
///
/// Each side is read and written through its own `&mut`, never split: `select!` drops the
/// read futures before it runs the arm that writes, so no lock is needed between a side's
/// reading and its writing (`tokio::io::split` takes one on every poll).
pub(crate) async fn run<A, B>(mut a: A, mut b: B, tunnel: Tunnel<'_>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let idle = tunnel.idle;
    let mut a_buf = Buffer::new(tunnel.buffer);
    let mut b_buf = Buffer::new(tunnel.buffer);
    let (mut a_open, mut b_open) = (true, true);
    let count = |to_b: bool, n: usize| {
        if let Some((a_to_b, b_to_a)) = tunnel.counted {
            let counter = if to_b { a_to_b } else { b_to_a };
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    // Lazy: each message only notes the time; the timer is moved on when it fires early, so
    // a busy tunnel costs no timer operation per message.
    let mut last = tokio::time::Instant::now();
    let quiet = tokio::time::sleep(idle);
    tokio::pin!(quiet);
    while a_open || b_open {
        tokio::select! {
            read = a.read(&mut a_buf.bytes), if a_open => match read {
                Ok(0) | Err(_) => {
                    a_open = false;
                    if b_open || !tunnel.b_plain {
                        let _ = b.shutdown().await;
                    }
                }
                Ok(n) => {
                    if write_within(&mut b, &a_buf.bytes[..n], tunnel.write_b_within).await.is_err() {
                        break;
                    }
                    a_buf.filled(n);
                    count(true, n);
                    last = tokio::time::Instant::now();
                }
            },
            read = b.read(&mut b_buf.bytes), if b_open => match read {
                Ok(0) | Err(_) => {
                    b_open = false;
                    if a_open || !tunnel.a_plain {
                        let _ = a.shutdown().await;
                    }
                }
                Ok(n) => {
                    if write_within(&mut a, &b_buf.bytes[..n], tunnel.write_a_within).await.is_err() {
                        break;
                    }
                    b_buf.filled(n);
                    count(false, n);
                    last = tokio::time::Instant::now();
                }
            },
            () = &mut quiet => {
                if last.elapsed() < idle {
                    quiet.as_mut().reset(last + idle);
                    continue;
                }
                tracing::debug!(?idle, "tunnel idle for too long; closing it");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
