//! This thread's kept-alive connections to instances, for the HTTP/1 engine.
//!
//! Why per thread: every data-plane thread runs its own single-threaded runtime (see the
//! binary's server.rs), so a pool per thread needs no lock and no shared map. It is a
//! thread-local map from instance address to a stack of idle sockets.
//!
//! Rules:
//! - a connection is taken LIFO (the warmest first), only if it is younger than the idle
//!   timeout and has had no readiness event since it went idle: an instance that closed it,
//!   or wrote to it unasked, has made it readable, and the check costs no syscall;
//! - it goes back only when its response ended exactly where the bytes read ended, never after
//!   an upgrade, a broken body or a response delimited by the instance closing;
//! - at most [`MAX_IDLE_PER_INSTANCE`] idle connections are kept per instance and thread;
//! - a sweeper task per thread closes expired or closed ones every half idle timeout, so
//!   descriptors do not pile up as instances come and go with every deploy;
//! - a connection that began with a PROXY protocol header (`sendProxyProtocol`) is never
//!   pooled: the instance takes every request on it as that one client's. Keying the pool by
//!   client instead would leave an idle connection behind every client that left, for the
//!   whole idle timeout (HAProxy closes such "private" connections with the client's session,
//!   which a thread-wide pool cannot see), so each request of such a service gets a
//!   connection of its own, closed after it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use dfp_routing::ProxyProtocol;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::proxy_protocol;

/// Idle connections kept per instance, per thread.
pub(crate) const MAX_IDLE_PER_INSTANCE: usize = 256;

struct IdleStream {
    stream: TcpStream,
    since: Instant,
}

/// Instance addresses hashed with a few multiplications instead of SipHash: the map is this
/// thread's own, keyed by addresses from the route table, so hash flooding is not a concern,
/// and it is looked up twice per request.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type IdleMap = HashMap<SocketAddr, Vec<IdleStream>, BuildHasherDefault<AddrHasher>>;

thread_local! {
    static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
    static SWEEPER: Cell<bool> = const { Cell::new(false) };
}

/// Connection settings toward instances.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connector {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// The PROXY protocol header a service's instances want before a connection's first request:
/// its version, the client, and the address the client connected to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyHello {
    pub(crate) version: ProxyProtocol,
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
}

impl Connector {
    /// An idle connection to `addr` that is still quiet (and `true`), or a new one (`false`).
    /// With `hello`, always a new one, which has been sent the header: such a connection is
    /// one client's and is never pooled (see the module's rules).
    pub(crate) async fn get(
        &self,
        addr: SocketAddr,
        hello: Option<ProxyHello>,
    ) -> io::Result<(TcpStream, bool)> {
        if hello.is_none() {
            if let Some(stream) = checkout(addr, self.idle_timeout) {
                return Ok((stream, true));
            }
        }
        Ok((connect(addr, self.connect_timeout, hello).await?, false))
    }

    /// Gives a connection whose last response ended cleanly back to this thread's pool;
    /// closes it instead when it was opened with a PROXY header (`hello`) for one client.
    pub(crate) fn give_back(&self, addr: SocketAddr, stream: TcpStream, hello: Option<ProxyHello>) {
        if self.idle_timeout.is_zero() || hello.is_some() {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let stack = idle.entry(addr).or_default();
            if stack.len() < MAX_IDLE_PER_INSTANCE {
                stack.push(IdleStream { stream, since: Instant::now() });
            }
        });
        let idle_timeout = self.idle_timeout;
        SWEEPER.with(|started| {
            if !started.replace(true) {
                tokio::spawn(sweep_idle(idle_timeout));
            }
        });
    }
}

/// A new connection to `addr` (never a pooled one), opened within `timeout`, with
/// `TCP_NODELAY`, and sent the PROXY header `hello` asks for. What a TCP service's
/// connection is, and what the pool fills up with.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    hello: Option<ProxyHello>,
) -> io::Result<TcpStream> {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    if let Some(hello) = hello {
        let header = proxy_protocol::encode(hello.version, hello.client, hello.local);
        stream.write_all(&header).await?;
    }
    Ok(stream)
}

fn checkout(addr: SocketAddr, idle_timeout: Duration) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let stack = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(candidate) = stack.pop() {
            if now.saturating_duration_since(candidate.since) >= idle_timeout {
                // The rest of the stack is older still.
                stack.clear();
                return None;
            }
            if is_quiet(&candidate.stream) {
                return Some(candidate.stream);
            }
        }
        None
    })
}

/// No readiness event since the connection went idle: not closed, nothing sent unasked.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    stream.poll_read_ready(&mut cx).is_pending()
}

/// Closes this thread's idle connections that expired or that their instance closed, and
/// forgets instances with none left, every half idle timeout (at least every 30 s).
async fn sweep_idle(idle_timeout: Duration) {
    let every = (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        IDLE.with(|idle| {
            let now = Instant::now();
            idle.borrow_mut().retain(|_, stack| {
                stack.retain(|candidate| {
                    now.saturating_duration_since(candidate.since) < idle_timeout
                        && is_quiet(&candidate.stream)
                });
                !stack.is_empty()
            });
        });
    }
}
