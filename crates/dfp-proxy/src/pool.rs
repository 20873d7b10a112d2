//! Kept-alive upstream connections, one pool per data-plane thread.
//!
//! Why not hyper-util's pooled client: every data-plane thread runs its own single-threaded
//! runtime (see the binary's server.rs), so a pool per thread needs no lock, no shared hash
//! map and no task per request. Profiling showed hyper-util's client (a mutex-guarded pool
//! keyed by a SipHash of the URI, a checkout future, a spawned task per request) to be a
//! sizeable share of the proxy's user-space time; this pool is a thread-local map from
//! instance address to a stack of idle HTTP/1.1 senders.
//!
//! Rules:
//! - a connection is taken (LIFO: the warmest first) only if it is not closed and not idle
//!   for longer than the idle timeout;
//! - it goes back when its response body has been read to the end, never earlier (HTTP/1.1
//!   carries one exchange at a time) and never after an upgrade;
//! - a request that a pooled connection could not even start sending (it closed meanwhile)
//!   is sent again on another connection: nothing reached the instance;
//! - at most [`MAX_IDLE_PER_INSTANCE`] idle connections are kept per instance.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::forward::UpstreamBody;

/// Idle connections kept per instance, per thread.
pub(crate) const MAX_IDLE_PER_INSTANCE: usize = 256;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be opened: nothing was sent.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed after the request was handed to it.
    #[error("exchange with {addr} failed: {source}")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// Settings of this thread's pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl Pool {
    /// Sends `request` to `addr` over an idle connection, or a new one, and returns the
    /// response with its body wrapped so the connection returns to the pool at its end.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Pooled>, SendError> {
        loop {
            let (mut sender, reused) = match self.checkout(addr) {
                Some(sender) => (sender, true),
                None => (self.connect(addr).await?, false),
            };
            // A connection given back at its response's end becomes ready once its task has
            // run; one that is closing says so here.
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    let lease = (!upgraded).then(|| Lease {
                        addr,
                        sender,
                        idle_timeout: self.idle_timeout,
                    });
                    return Ok(response.map(|inner| Pooled { inner, lease }));
                }
                Err(mut err) => match err.take_message() {
                    // The pooled connection closed before the request could start: nothing was
                    // sent, so another connection may carry it.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Exchange { addr, source: err.into_error() }),
                },
            }
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<UpstreamBody>> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let stack = idle.get_mut(&addr)?;
            while let Some(candidate) = stack.pop() {
                if !candidate.sender.is_closed() && candidate.since.elapsed() < self.idle_timeout {
                    return Some(candidate.sender);
                }
            }
            None
        })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<UpstreamBody>, SendError> {
        let failed = |source| SendError::Connect { addr, source };
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| failed(std::io::ErrorKind::TimedOut.into()))?
                .map_err(failed)?;
        stream.set_nodelay(true).map_err(failed)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(instance = %addr, error = %err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A connection on loan to one exchange.
struct Lease {
    addr: SocketAddr,
    sender: SendRequest<UpstreamBody>,
    idle_timeout: Duration,
}

impl Lease {
    /// Back to this thread's pool, unless the connection is closing or the pool is full.
    fn give_back(self) {
        if self.sender.is_closed() || self.idle_timeout.is_zero() {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let stack = idle.entry(self.addr).or_default();
            if stack.len() < MAX_IDLE_PER_INSTANCE {
                stack.push(Idle { sender: self.sender, since: Instant::now() });
            }
        });
    }
}

/// An upstream response body; its connection goes back to the pool when it has been read
/// to the end (a body dropped early takes its connection with it: it may be mid-message).
pub(crate) struct Pooled {
    inner: Incoming,
    lease: Option<Lease>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("leased", &self.lease.is_some()).finish()
    }
}

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(lease) = self.lease.take() {
                lease.give_back();
            }
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

impl Drop for Pooled {
    fn drop(&mut self) {
        // A body known to be complete (e.g. HEAD, or Content-Length 0) need not be polled to
        // its end for the connection to be reusable.
        if self.inner.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.give_back();
            }
        }
    }
}
