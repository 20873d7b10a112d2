//! Tunnels between two plain TCP sockets (a WebSocket over plain HTTP, once its `101` has gone
//! out), served by an event loop of their own, beside the worker's tokio runtime.
//!
//! Why not the runtime: a message through such a tunnel is two readiness events (the message,
//! its answer), and each costs a read and a write, which the kernel's loopback path makes the
//! bulk of the work, plus, on the runtime, a waker, a trip through the run queue and a poll of
//! the task. Those were ~0.4 µs of a message's ~9.5 µs, what separated the proxy from nginx and
//! held it short of 0.9× HAProxy's CPU per message (BENCHMARKS.md, "WebSocket"). Here an event
//! goes from `epoll_wait` straight to the read and the write, with the readiness kept in two
//! flags per socket.
//!
//! Each worker thread has its own loop thread, started with the worker's first plain tunnel,
//! so workers share nothing here either. The task that made the tunnel keeps waiting for it
//! (holding the instance's connection slot and the client's connection permit, and writing the
//! access-log line once it ends); dropping that task (the shutdown grace has passed) closes the
//! tunnel. Everything the runtime's tunnel promises holds here too: half-closes passed on, the
//! idle timeout checked lazily (no timer per message), a socket that is always readable not
//! starving the others, and the side that ends last closed without a `shutdown` first. The
//! decisions both loops make (what a side's end does, when a tunnel has ended) are
//! [`Stage`]'s, written once in the parent module.
//!
//! TLS tunnels and TCP services (which count their bytes and bound their writes) stay on the
//! runtime's tunnel ([`super::run`]).

use std::cell::RefCell;
use std::io::{self, Read as _, Write as _};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;

use super::{Buffer, Stage};

/// Bytes a direction reads at a time, as on the runtime's tunnel for upgrades.
const BUFFER: usize = 16 * 1024;
/// Reads a direction makes in one turn before the loop serves the other sockets' events: a
/// socket that is always readable cannot hold the loop (tokio's task budget, here).
const READS_PER_TURN: usize = 16;
/// Readiness events taken from the kernel per `epoll_wait`.
const EVENTS: usize = 256;
/// The token of the waker that says commands are waiting.
const COMMANDS: Token = Token(usize::MAX);

/// Copies bytes between `client` and `instance` until both ends have closed their output, a
/// write fails, or nothing moves for `idle`; on this thread's tunnel loop when it has one,
/// else on the runtime. The sockets are closed when it returns (or when it is dropped).
pub(crate) async fn splice(
    client: tokio::net::TcpStream,
    instance: tokio::net::TcpStream,
    idle: Duration,
) {
    let Some(handle) = this_threads_loop() else {
        return super::splice(client, instance, idle).await;
    };
    let sides = match (client.into_std(), instance.into_std()) {
        (Ok(client), Ok(instance)) => [TcpStream::from_std(client), TcpStream::from_std(instance)],
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(error = %err, "could not take a tunnel's sockets off the runtime");
            return;
        }
    };
    let LoopHandle { commands, shared } = handle;
    let (done, ended) = oneshot::channel();
    let waiting = Waiting { shared, ended: false };
    // Only the thread's own handle keeps the channel open while tunnels run: the loop sees
    // it close when the thread ends.
    let sent = commands.send(Open { sides, idle, done });
    drop(commands);
    if sent.is_err() {
        return;
    }
    waiting.shared.wake();
    // The loop drops `done` when the tunnel ends: either way the wait is over.
    let _ = ended.await;
    waiting.finish();
}

/// A tunnel handed to the loop, as its command.
struct Open {
    sides: [TcpStream; 2],
    idle: Duration,
    done: oneshot::Sender<()>,
}

/// What a thread keeps of its tunnel loop.
struct LoopHandle {
    commands: mpsc::Sender<Open>,
    shared: Arc<Shared>,
}

/// What the loop and the threads handing it tunnels share.
struct Shared {
    waker: Waker,
    /// A waiting task went away before its tunnel ended: the loop closes those tunnels.
    abandoned: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        if let Err(err) = self.waker.wake() {
            tracing::warn!(error = %err, "could not wake the tunnel loop");
        }
    }
}

/// Ends the loop once the thread that hands it tunnels has gone and its tunnels have closed.
struct ThreadLoop(Option<LoopHandle>);

impl Drop for ThreadLoop {
    fn drop(&mut self) {
        if let Some(LoopHandle { commands, shared }) = self.0.take() {
            // The channel closes first, so the loop sees it once woken.
            drop(commands);
            shared.wake();
        }
    }
}

thread_local! {
    static THREAD_LOOP: RefCell<Option<ThreadLoop>> = const { RefCell::new(None) };
}

/// This thread's tunnel loop, started on first use; `None` if it cannot be (the tunnel then
/// runs on the runtime).
fn this_threads_loop() -> Option<LoopHandle> {
    THREAD_LOOP
        .try_with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(ThreadLoop(start_loop()));
            }
            cell.as_ref()?
                .0
                .as_ref()
                .map(|h| LoopHandle { commands: h.commands.clone(), shared: h.shared.clone() })
        })
        .ok()
        .flatten()
}

fn start_loop() -> Option<LoopHandle> {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let started = || -> io::Result<LoopHandle> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), COMMANDS)?;
        let shared = Arc::new(Shared { waker, abandoned: AtomicBool::new(false) });
        let (commands, received) = mpsc::channel();
        let name = format!("dfp-tunnels-{}", STARTED.fetch_add(1, Ordering::Relaxed));
        let looping = TunnelLoop::new(poll, received, shared.clone());
        std::thread::Builder::new().name(name).spawn(move || looping.run())?;
        Ok(LoopHandle { commands, shared })
    };
    started()
        .map_err(|err| {
            tracing::warn!(error = %err, "cannot start a tunnel loop; tunnels run on the runtime");
        })
        .ok()
}

/// The task waiting for a tunnel: going away before the tunnel ends tells the loop to close it.
struct Waiting {
    shared: Arc<Shared>,
    ended: bool,
}

impl Waiting {
    fn finish(mut self) {
        self.ended = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.abandoned.store(true, Ordering::Relaxed);
            self.shared.wake();
        }
    }
}

/// One direction of a tunnel: what was read from one socket, not yet written to the other.
struct Way {
    buf: Buffer,
    /// `buf.bytes[start..end]`: read, not yet written.
    start: usize,
    end: usize,
    stage: Stage,
}

/// Readiness of one socket as its events told it, cleared by a read or write that found it
/// gone. `closed`: the peer's end (or an error) was seen, so reads go on until they say so.
#[derive(Clone, Copy)]
struct Ready {
    readable: bool,
    writable: bool,
    closed: bool,
}

/// What a turn of a direction came to.
#[derive(PartialEq, Eq)]
enum Turn {
    /// Waiting for an event, or done.
    Waiting,
    /// Its turn's reads are used up with more to read: it goes again after the other events.
    Again,
    /// A write failed: the tunnel ends.
    Broken,
}

impl Way {
    fn new() -> Self {
        Way { buf: Buffer::new(BUFFER), start: 0, end: 0, stage: Stage::Copying }
    }

    /// Moves bytes from `from` to `to` until one of them has to wait. `other_reading`: the
    /// other direction still reads, so `to` is told of this side's end by a shutdown (closing
    /// it would end both halves).
    fn turn(
        &mut self,
        from: &TcpStream,
        from_ready: &mut Ready,
        mut to: &TcpStream,
        to_ready: &mut Ready,
        other_reading: bool,
        moved: &mut bool,
    ) -> Turn {
        let mut reads = 0;
        loop {
            match self.stage {
                Stage::Copying if self.start < self.end => {
                    if !to_ready.writable {
                        return Turn::Waiting;
                    }
                    match to.write(&self.buf.bytes[self.start..self.end]) {
                        Ok(0) => return Turn::Broken,
                        Ok(n) => {
                            self.start += n;
                            *moved = true;
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            to_ready.writable = false;
                            return Turn::Waiting;
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Turn::Broken,
                    }
                }
                Stage::Copying => {
                    if !(from_ready.readable || from_ready.closed) {
                        return Turn::Waiting;
                    }
                    if reads == READS_PER_TURN {
                        return Turn::Again;
                    }
                    reads += 1;
                    let mut reader = from;
                    match reader.read(&mut self.buf.bytes) {
                        Ok(0) => self.stage = Stage::after_end(other_reading, true),
                        Ok(n) => {
                            (self.start, self.end) = (0, n);
                            // A read that did not fill the buffer emptied the socket: the next
                            // bytes (or its end) come with an event of their own.
                            if n < self.buf.bytes.len() {
                                from_ready.readable = false;
                            }
                            self.buf.filled(n);
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            from_ready.readable = false;
                            from_ready.closed = false;
                            return Turn::Waiting;
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        // An error reading ends this side's output, as its end would.
                        Err(_) => self.stage = Stage::after_end(other_reading, true),
                    }
                }
                Stage::Ending { shut } => {
                    if shut {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    self.stage = Stage::Done;
                }
                Stage::Done => return Turn::Waiting,
            }
        }
    }
}

/// A tunnel on the loop: the client's socket (side 0) and the instance's (side 1).
struct Tunnel {
    sides: [TcpStream; 2],
    ready: [Ready; 2],
    /// `ways[0]`: side 0 to side 1; `ways[1]`: back.
    ways: [Way; 2],
    idle: Duration,
    last_moved: Instant,
    /// Dropped when the tunnel ends: wakes the task waiting for it.
    done: oneshot::Sender<()>,
}

impl Tunnel {
    /// Serves both directions, the one reading from `first` first. Returns whether the tunnel
    /// has ended, and whether a direction used up its turn with more to read.
    fn serve(&mut self, first: usize, moved: &mut bool) -> (bool, bool) {
        let mut again = false;
        for from in [first, 1 - first] {
            let to = 1 - from;
            let other_reading = self.ways[to].stage.reading();
            let [ready_0, ready_1] = &mut self.ready;
            let (from_ready, to_ready) =
                if from == 0 { (ready_0, ready_1) } else { (ready_1, ready_0) };
            let turn = self.ways[from].turn(
                &self.sides[from],
                from_ready,
                &self.sides[to],
                to_ready,
                other_reading,
                moved,
            );
            match turn {
                Turn::Broken => return (true, false),
                Turn::Again => again = true,
                Turn::Waiting => {}
            }
        }
        let ended = Stage::tunnel_ended([self.ways[0].stage, self.ways[1].stage]);
        (ended, again && !ended)
    }

    fn idle_until(&self) -> Instant {
        self.last_moved + self.idle
    }
}

/// The loop: its poller, its tunnels (a slot each, reused), and its commands.
struct TunnelLoop {
    poll: Poll,
    commands: mpsc::Receiver<Open>,
    shared: Arc<Shared>,
    tunnels: Vec<Option<Tunnel>>,
    free: Vec<usize>,
    open: usize,
    /// When the idle timeouts are next looked at: no later than the earliest could pass.
    next_sweep: Option<Instant>,
    /// Tunnels whose direction used up its turn, served again before the next wait.
    again: Vec<usize>,
    /// The thread handing out tunnels has gone: the loop ends with its last tunnel.
    orphaned: bool,
}

impl TunnelLoop {
    fn new(poll: Poll, commands: mpsc::Receiver<Open>, shared: Arc<Shared>) -> Self {
        TunnelLoop {
            poll,
            commands,
            shared,
            tunnels: Vec::new(),
            free: Vec::new(),
            open: 0,
            next_sweep: None,
            again: Vec::new(),
            orphaned: false,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        let mut again = Vec::new();
        let mut clock = Instant::now();
        while !(self.orphaned && self.open == 0) {
            let timeout = if self.again.is_empty() {
                self.next_sweep.map(|at| at.saturating_duration_since(clock))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %err, "the tunnel loop cannot wait for events; its tunnels close");
                    return;
                }
            }
            // One clock read per wake-up, shared by the tunnels that moved bytes in it.
            let mut now = None;
            let mut commands = false;
            for event in &events {
                if event.token() == COMMANDS {
                    commands = true;
                    continue;
                }
                let (slot, side) = (event.token().0 / 2, event.token().0 % 2);
                let Some(Some(tunnel)) = self.tunnels.get_mut(slot) else { continue };
                let ready = &mut tunnel.ready[side];
                ready.readable |= event.is_readable() || event.is_error();
                ready.writable |= event.is_writable() || event.is_error();
                ready.closed |= event.is_read_closed() || event.is_error();
                self.serve(slot, side, &mut now);
            }
            // Directions that used up their turn go again, after every other event was served.
            std::mem::swap(&mut again, &mut self.again);
            for slot in again.drain(..) {
                self.serve(slot, 0, &mut now);
            }
            if commands {
                self.take_commands();
            }
            clock = now.unwrap_or_else(Instant::now);
            if self.next_sweep.is_some_and(|at| clock >= at) {
                self.sweep(false);
            }
        }
    }

    /// Opens the tunnels handed over, and closes those whose task went away.
    fn take_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(open) => self.open(open),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.orphaned = true;
                    break;
                }
            }
        }
        if self.shared.abandoned.swap(false, Ordering::Relaxed) {
            self.sweep(true);
        }
    }

    fn open(&mut self, Open { mut sides, idle, done }: Open) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.tunnels.push(None);
            self.tunnels.len() - 1
        });
        for (side, socket) in sides.iter_mut().enumerate() {
            let token = Token(slot * 2 + side);
            if let Err(err) = self.poll.registry().register(
                socket,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::debug!(error = %err, "could not watch a tunnel's socket; closing it");
                self.free.push(slot);
                return;
            }
        }
        let now = Instant::now();
        // Both sockets may hold bytes already: served at once, as if each had an event.
        let ready = Ready { readable: true, writable: true, closed: false };
        let tunnel = Tunnel {
            sides,
            ready: [ready; 2],
            ways: [Way::new(), Way::new()],
            idle,
            last_moved: now,
            done,
        };
        self.next_sweep = Some(self.next_sweep.map_or(now + idle, |at| at.min(now + idle)));
        self.tunnels[slot] = Some(tunnel);
        self.open += 1;
        self.serve(slot, 0, &mut Some(now));
    }

    /// Serves the tunnel in `slot` (if it is still open), the direction reading from side
    /// `first` first; then closes it if it ended, or queues it to go again if a direction used
    /// up its turn. `now`: the wake-up's one clock read, made when a byte first moves.
    fn serve(&mut self, slot: usize, first: usize, now: &mut Option<Instant>) {
        let Some(Some(tunnel)) = self.tunnels.get_mut(slot) else { return };
        let mut moved = false;
        let (ended, more) = tunnel.serve(first, &mut moved);
        if moved {
            tunnel.last_moved = *now.get_or_insert_with(Instant::now);
        }
        if ended {
            self.close(slot);
        } else if more {
            self.again.push(slot);
        }
    }

    /// Closes the tunnels idle for their timeout (and, `abandoned`, those nobody waits for),
    /// and notes when the next could be.
    fn sweep(&mut self, abandoned: bool) {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for slot in 0..self.tunnels.len() {
            let Some(tunnel) = &self.tunnels[slot] else { continue };
            let (until, idle) = (tunnel.idle_until(), tunnel.idle);
            let unwaited = abandoned && tunnel.done.is_closed();
            if now >= until {
                tracing::debug!(?idle, "tunnel idle for too long; closing it");
                self.close(slot);
            } else if unwaited {
                tracing::debug!("tunnel closed: nothing waits for it any more (the proxy stops)");
                self.close(slot);
            } else {
                next = Some(next.map_or(until, |at| at.min(until)));
            }
        }
        self.next_sweep = next;
    }

    /// Ends a tunnel: its sockets close (which takes them out of the poller) and its task
    /// wakes.
    fn close(&mut self, slot: usize) {
        if self.tunnels[slot].take().is_some() {
            self.free.push(slot);
            self.open -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
