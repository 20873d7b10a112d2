//! A routed service as the data plane sees it: instances, their passive health, the
//! round-robin cursor, and its counters (kept in `stats.rs`).
//!
//! Everything here that changes at request time is an atomic, and everything that must
//! outlive a table swap (cursor, counters, each instance's health) sits behind an `Arc` that
//! the builder carries from the previous table to the next.

use crate::queue::{Ticket, Waiting};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::stats::BackendStats;

/// The shortest an instance is ejected after a failure, doubled for each failure in a row.
pub const EJECT_FIRST_MS: u64 = 1_000;
/// The longest an instance is ejected.
pub const EJECT_MAX_MS: u64 = 30_000;

/// One instance of a service and its passive health.
#[derive(Debug, Clone)]
pub struct Upstream {
    addr: SocketAddr,
    /// `addr` as a URI authority, built once here instead of on every request.
    authority: http::uri::Authority,
    health: Arc<InstanceHealth>,
    /// The instance's sticky-session token ([`sticky_token`]), computed once per table.
    token: u64,
}

impl Upstream {
    pub(crate) fn new(service: &str, addr: SocketAddr, health: Arc<InstanceHealth>) -> Self {
        let authority = http::uri::Authority::try_from(addr.to_string())
            .unwrap_or_else(|_| unreachable!("a socket address is always a valid URI authority"));
        Upstream { addr, authority, health, token: sticky_token(service, addr) }
    }

    /// The token a sticky-session cookie carries to name this instance ([`sticky_token`]).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The instance as a URI authority (`ip:port`, `[v6]:port`).
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    pub(crate) fn health_arc(&self) -> Arc<InstanceHealth> {
        self.health.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn health(&self) -> &InstanceHealth {
        &self.health
    }

    /// A place among the instance's exchanges in flight, when it has one free under `cap`
    /// (its service's `instanceMaxConn`); `None` when it is full. Without a cap every
    /// request gets one, and nothing is counted (no shared write on the request path).
    pub fn take_slot(&self, cap: Option<NonZeroU32>) -> Option<InstanceSlot> {
        let Some(cap) = cap else { return Some(InstanceSlot(None)) };
        // SeqCst with the waiters' count (see `Waiting`): a slot given back and a waiter
        // registering at the same time must not miss each other.
        self.health
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < cap.get()).then_some(n + 1))
            .ok()?;
        Some(InstanceSlot(Some(self.health.clone())))
    }

    /// Queues `ticket` at the back of this instance's queue: the next place given back here
    /// goes to the first ticket still waiting (see [`Ticket`]). Queue, then try
    /// [`Upstream::take_slot`] again: a place given back in between is then seen either way.
    pub fn enqueue(&self, ticket: &Arc<Ticket>) {
        self.health.waiting.enqueue(ticket);
    }
}

/// One exchange's (a request's, or a TCP connection's) place on an instance under its
/// service's cap, given back when dropped (to the first exchange queued for it, if any).
/// Holds the instance's health `Arc`, so it outlives table swaps and can travel with a
/// response body.
#[derive(Debug)]
pub struct InstanceSlot(Option<Arc<InstanceHealth>>);

impl InstanceSlot {
    /// Whether this is a place on `upstream` (a place handed over from a queue names its
    /// instance only so).
    pub fn is_on(&self, upstream: &Upstream) -> bool {
        self.0.as_ref().is_some_and(|health| Arc::ptr_eq(health, &upstream.health))
    }
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        if let Some(health) = self.0.take() {
            InstanceHealth::give_back(health);
        }
    }
}

/// Passive health: failures in a row, and until when the instance is left out.
///
/// After a failure the instance is ejected for `EJECT_FIRST_MS`, doubling with each further
/// failure in a row up to `EJECT_MAX_MS`. When the window ends it is eligible again; the next
/// request sent to it is the probe: success clears the record, failure ejects it for longer.
/// Times are milliseconds of a monotonic clock the caller reads (this crate does no IO).
#[derive(Debug, Default)]
pub struct InstanceHealth {
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Exchanges in flight to the instance, counted for services with `instanceMaxConn`
    /// only (see [`Upstream::take_slot`]), over every thread.
    in_flight: AtomicU32,
    /// Exchanges queued for a place here.
    waiting: Waiting,
}

impl InstanceHealth {
    /// An exchange's place given back ([`InstanceSlot`]): handed to the first exchange
    /// queued for it, or, with none queued (or the instance ejected: a queued exchange is
    /// better served by another), one fewer in flight. Out of line: a slot without a cap
    /// (the usual case) drops to nothing.
    #[inline(never)]
    fn give_back(health: Arc<InstanceHealth>) {
        let waiting = &health.waiting;
        if waiting.count.load(Ordering::SeqCst) != 0 && !health.is_ejected_now() {
            match waiting.hand_over(InstanceSlot(Some(Arc::clone(&health)))) {
                Ok(()) => return,
                // No ticket waits any more: the place is given back below.
                Err(mut slot) => drop(slot.0.take()),
            }
        }
        health.in_flight.fetch_sub(1, Ordering::SeqCst);
        // A ticket queued after the count was read above saw the place still taken when it
        // looked: SeqCst on both sides means it is counted now, and it looks again.
        if health.waiting.count.load(Ordering::SeqCst) != 0 {
            health.waiting.nudge_first();
        }
    }

    /// Whether the instance is ejected now; reads the clock only when a failure is on record.
    fn is_ejected_now(&self) -> bool {
        self.has_failures() && self.is_ejected(health_clock_ms())
    }

    /// Records a failed attempt at `now_ms`; returns the ejection window's end.
    pub fn record_failure(&self, now_ms: u64) -> u64 {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let window = EJECT_FIRST_MS.saturating_mul(1 << (failures - 1).min(16)).min(EJECT_MAX_MS);
        let until = now_ms.saturating_add(window);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        until
    }

    /// Records a successful attempt. Costs one load when the instance was healthy already.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the instance is left out at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }

    /// Whether any failure is on record (so a caller knows a clock read is needed).
    pub fn has_failures(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) != 0
    }

    /// Exchanges in flight to the instance now (counted only under `instanceMaxConn`).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// How much longer the instance is left out at `now_ms` (`None`: it is not ejected).
    pub fn ejected_for_ms(&self, now_ms: u64) -> Option<u64> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        (until != 0 && now_ms < until).then(|| until - now_ms)
    }
}

/// The clock passive-health windows are measured on: milliseconds since the first read in
/// this process, from a monotonic clock (never 0, so 0 can mean "no window").
///
/// One clock for the whole process, here beside [`InstanceHealth`], because two parties read
/// the same windows: the data plane when it ejects an instance, and the admin API when it
/// says how long an ejection has left. Reading a clock is not IO; this crate still opens
/// nothing and waits on nothing.
pub fn health_clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
}

/// The opaque token naming `addr` among `service`'s instances in a sticky-session cookie:
/// the first 64 bits of SHA-256 over the service's key (its lowercase name) and the address.
///
/// Why this shape: the cookie must not show clients the instance's internal address, and it
/// must mean the same instance on every proxy replica and after a restart, with nothing shared
/// between them but the configuration. A hash of what every replica already knows gives
/// both; the service name keys it, so the same address behind two services gets two tokens.
/// It is not a secret: a client that learns a token can only ask for the instance it names,
/// which is what the cookie is for.
pub fn sticky_token(service: &str, addr: SocketAddr) -> u64 {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(crate::service_key(service).as_bytes());
    hasher.update([0]);
    hasher.update(addr.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A routed service: its instances with an exact, lock-free round robin that steps over
/// ejected instances.
pub struct Backend {
    pub(crate) service: Arc<str>,
    pub(crate) instances: Box<[Upstream]>,
    pub(crate) cursor: Arc<AtomicUsize>,
    pub(crate) stats: Arc<BackendStats>,
    pub(crate) policy: crate::ServicePolicy,
}

impl Backend {
    /// What the service asks of each request (redirect, auth, rewrite, headers, timeouts).
    pub fn policy(&self) -> &crate::ServicePolicy {
        &self.policy
    }

    /// The service's name, as first given to reconfigure (names are compared ignoring ASCII
    /// case, see [`crate::service_key`]).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The instances requests are spread over, in the order they were configured.
    pub fn instances(&self) -> &[Upstream] {
        &self.instances
    }

    /// The instances' addresses.
    pub fn addrs(&self) -> impl ExactSizeIterator<Item = SocketAddr> + '_ {
        self.instances.iter().map(|u| u.addr)
    }

    /// Counters of this service (shared with the same service in earlier tables).
    pub fn stats(&self) -> &BackendStats {
        &self.stats
    }

    /// The next instance in round-robin order, or `None` when the service has no instance.
    ///
    /// Exact over healthy instances: `n` calls over `k` instances give each `n/k` calls ±1.
    /// Lock-free: one relaxed atomic increment. An ejected instance is stepped over; when
    /// every instance is ejected the rotation goes on regardless (trying beats refusing).
    /// `now_ms` is called only when some instance has a failure on record.
    pub fn next_instance(&self, now_ms: impl FnOnce() -> u64) -> Option<&Upstream> {
        self.next_instance_except(now_ms, &[])
    }

    /// As [`Backend::next_instance`], never returning an address in `tried` unless every
    /// instance has been tried (then `None`).
    pub fn next_instance_except(
        &self,
        now_ms: impl FnOnce() -> u64,
        tried: &[SocketAddr],
    ) -> Option<&Upstream> {
        let len = self.instances.len();
        if len == 0 || tried.len() >= len && self.instances.iter().all(|u| tried.contains(&u.addr))
        {
            return None;
        }
        let mut now = None;
        let mut now_ms = Some(now_ms);
        let mut fallback = None;
        for _ in 0..len {
            let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
            let upstream = &self.instances[turn % len];
            if tried.contains(&upstream.addr) {
                continue;
            }
            if upstream.health.has_failures() {
                let now = *now.get_or_insert_with(|| now_ms.take().map_or(0, |f| f()));
                if upstream.health.is_ejected(now) {
                    fallback.get_or_insert(upstream);
                    continue;
                }
            }
            return Some(upstream);
        }
        fallback
    }

    /// The instance a sticky-session cookie's `token` names, when it is still one of the
    /// service's instances, not in `tried` and not ejected at `now_ms` (read only when the
    /// instance has a failure on record). `None`: the caller picks by round robin and pins
    /// the client again (Docker Flow Proxy's issue #446: cookies pinned to dead containers).
    ///
    /// The round-robin cursor is not touched, so requests without a cookie keep their exact
    /// rotation whatever pinned clients do.
    pub fn pinned_instance(
        &self,
        token: u64,
        now_ms: impl FnOnce() -> u64,
        tried: &[SocketAddr],
    ) -> Option<&Upstream> {
        let upstream = self.instances.iter().find(|u| u.token == token)?;
        if tried.contains(&upstream.addr)
            || upstream.health.has_failures() && upstream.health.is_ejected(now_ms())
        {
            return None;
        }
        Some(upstream)
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("service", &self.service)
            .field("instances", &self.addrs().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn backend(ports: &[u16]) -> Backend {
        Backend {
            service: Arc::from("s"),
            instances: ports
                .iter()
                .map(|&p| Upstream::new("s", SocketAddr::from(([127, 0, 0, 1], p)), Arc::default()))
                .collect(),
            cursor: Arc::default(),
            stats: Arc::default(),
            policy: crate::ServicePolicy::default(),
        }
    }

    fn pick(b: &Backend, now: u64) -> u16 {
        b.next_instance(|| now).expect("has instances").addr().port()
    }

    #[test]
    fn ejected_instances_are_skipped_until_their_window_ends() {
        let b = backend(&[1, 2, 3]);
        let until = b.instances()[1].health().record_failure(1_000);
        assert_eq!(until, 1_000 + EJECT_FIRST_MS);
        let picks: Vec<u16> = (0..6).map(|_| pick(&b, 1_500)).collect();
        assert!(!picks.contains(&2), "{picks:?}");
        // Window over: it is tried again (the probe), and success clears the record.
        let picks: Vec<u16> = (0..3).map(|_| pick(&b, until)).collect();
        assert!(picks.contains(&2), "{picks:?}");
        b.instances()[1].health().record_success();
        assert!(!b.instances()[1].health().has_failures());
    }

    #[test]
    fn ejection_backs_off_exponentially_and_is_bounded() {
        let h = InstanceHealth::default();
        assert_eq!(h.record_failure(0), EJECT_FIRST_MS);
        assert_eq!(h.record_failure(0), 2 * EJECT_FIRST_MS);
        assert_eq!(h.record_failure(0), 4 * EJECT_FIRST_MS);
        for _ in 0..40 {
            h.record_failure(0);
        }
        assert_eq!(h.record_failure(0), EJECT_MAX_MS);
    }

    #[test]
    fn all_ejected_still_routes_and_tried_ones_are_excluded() {
        let b = backend(&[1, 2]);
        for u in b.instances() {
            u.health().record_failure(0);
        }
        assert!(b.next_instance(|| 10).is_some(), "trying beats refusing");
        let first = b.instances()[0].addr();
        let other = b.next_instance_except(|| 10, &[first]).expect("one left");
        assert_ne!(other.addr(), first);
        let both = [first, b.instances()[1].addr()];
        assert!(b.next_instance_except(|| 10, &both).is_none());
    }

    #[test]
    fn slots_are_bounded_by_the_cap_and_given_back_when_dropped() {
        let b = backend(&[1]);
        let instance = &b.instances()[0];
        // No cap: always a slot, nothing counted.
        let free = instance.take_slot(None).expect("no cap, no limit");
        assert_eq!(instance.health().in_flight(), 0);
        drop(free);
        let cap = NonZeroU32::new(2);
        let one = instance.take_slot(cap).expect("room");
        let two = instance.take_slot(cap).expect("room");
        assert_eq!(instance.health().in_flight(), 2);
        assert!(instance.take_slot(cap).is_none(), "full at the cap");
        drop(one);
        assert_eq!(instance.health().in_flight(), 1);
        let three = instance.take_slot(cap).expect("a place was given back");
        drop((two, three));
        assert_eq!(instance.health().in_flight(), 0);
    }

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn wakes(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    #[test]
    fn places_given_back_go_to_queued_exchanges_one_each_in_the_order_they_queued() {
        let b = backend(&[1]);
        let instance = &b.instances()[0];
        let cap = NonZeroU32::new(1);
        let held = instance.take_slot(cap).expect("room");
        let tickets: Vec<_> = (0..3).map(|_| Ticket::new()).collect();
        let wakers: Vec<_> = (0..3).map(|_| counted()).collect();
        for (ticket, (_, waker)) in tickets.iter().zip(&wakers) {
            instance.enqueue(ticket);
            assert!(ticket.take_place(waker).is_none(), "nothing handed over yet");
        }
        assert!(instance.take_slot(cap).is_none(), "full");
        let mut place = held;
        for (i, ticket) in tickets.iter().enumerate() {
            drop(place);
            let woken: Vec<usize> = wakers.iter().map(|(c, _)| wakes(c)).collect();
            let expected: Vec<usize> = (0..3).map(|j| usize::from(j <= i)).collect();
            assert_eq!(woken, expected, "place {i} wakes exchange {i} only");
            assert_eq!(instance.health().in_flight(), 1, "handed over, never free for a newcomer");
            assert!(instance.take_slot(cap).is_none());
            place = ticket.take_place(&wakers[i].1).expect("the place handed over");
            assert!(place.is_on(instance));
            assert!(ticket.take_place(&wakers[i].1).is_none(), "handed over once");
        }
        drop(place);
        assert_eq!(instance.health().in_flight(), 0, "nobody queued: given back");
    }

    #[test]
    fn a_ticket_that_left_is_passed_over_and_a_place_handed_to_it_untaken_goes_on() {
        let b = backend(&[1]);
        let instance = &b.instances()[0];
        let cap = NonZeroU32::new(1);
        let held = instance.take_slot(cap).expect("room");
        let (gone, late, next) = (Ticket::new(), Ticket::new(), Ticket::new());
        let (next_wakes, next_waker) = counted();
        for ticket in [&gone, &late, &next] {
            instance.enqueue(ticket);
        }
        assert!(next.take_place(&next_waker).is_none());
        gone.leave();
        drop(held);
        // `late` got it (passing over `gone`) but leaves without taking it: it goes on.
        late.leave();
        assert_eq!(wakes(&next_wakes), 1);
        let place = next.take_place(&next_waker).expect("handed on");
        assert_eq!(instance.health().in_flight(), 1);
        drop(place);
        assert_eq!(instance.health().in_flight(), 0);
    }

    #[test]
    fn a_place_on_an_ejected_instance_is_given_back_and_the_first_waiting_told_to_look() {
        let b = backend(&[1]);
        let instance = &b.instances()[0];
        let cap = NonZeroU32::new(1);
        let held = instance.take_slot(cap).expect("room");
        let ticket = Ticket::new();
        let (count, waker) = counted();
        instance.enqueue(&ticket);
        assert!(ticket.take_place(&waker).is_none());
        instance.health().record_failure(health_clock_ms());
        drop(held);
        assert_eq!(instance.health().in_flight(), 0, "not handed over");
        assert_eq!(wakes(&count), 1, "woken to look elsewhere");
        assert!(ticket.take_place(&waker).is_none(), "and still queued, without a place");
    }

    #[test]
    fn a_queue_of_tickets_that_left_is_compacted_as_it_grows() {
        let b = backend(&[1]);
        let instance = &b.instances()[0];
        for _ in 0..10_000 {
            let ticket = Ticket::new();
            instance.enqueue(&ticket);
            ticket.leave();
        }
        let queued = instance.health().waiting.queue().len();
        assert!(queued <= 128, "{queued} tickets kept for nobody");
    }

    #[test]
    fn threads_queueing_for_one_place_are_all_served_and_every_place_is_given_back() {
        /// Wakes a parked thread.
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let b = Arc::new(backend(&[1]));
        let cap = NonZeroU32::new(1);
        let served = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, served) = (b.clone(), served.clone());
                std::thread::spawn(move || {
                    let instance = &b.instances()[0];
                    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
                    for _ in 0..5_000 {
                        let place = instance.take_slot(cap).or_else(|| {
                            let ticket = Ticket::new();
                            instance.enqueue(&ticket);
                            let started = std::time::Instant::now();
                            let place = loop {
                                if let Some(place) = ticket.take_place(&waker) {
                                    break place;
                                }
                                if let Some(place) = instance.take_slot(cap) {
                                    break place;
                                }
                                // Parked until woken: a wake-up lost while the others are
                                // parked too shows as a 5 s park.
                                assert!(
                                    started.elapsed() < std::time::Duration::from_secs(3),
                                    "a place given back never reached this waiter"
                                );
                                std::thread::park_timeout(std::time::Duration::from_secs(5));
                            };
                            ticket.leave();
                            Some(place)
                        });
                        served.fetch_add(1, Ordering::SeqCst);
                        std::thread::yield_now();
                        drop(place);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no waiter stuck or panicked");
        }
        assert_eq!(served.load(Ordering::SeqCst), 40_000);
        assert_eq!(b.instances()[0].health().in_flight(), 0, "every place given back");
    }

    #[test]
    fn healthy_picks_never_read_the_clock() {
        let b = backend(&[1, 2]);
        for _ in 0..4 {
            b.next_instance(|| panic!("no failure on record, no clock needed"));
        }
    }

    #[test]
    fn pinned_instances_are_kept_while_live_and_never_move_the_rotation() {
        let b = backend(&[1, 2, 3]);
        let second = b.instances()[1].token();
        let picked = b.pinned_instance(second, || 0, &[]).expect("live");
        assert_eq!(picked.addr().port(), 2);
        // Round robin is untouched by pinned picks.
        let picks: Vec<u16> = (0..3).map(|_| pick(&b, 0)).collect();
        assert_eq!(picks, [1, 2, 3]);
        // Gone from the table, tried already, or ejected: no pinned instance.
        assert!(b.pinned_instance(second ^ 1, || 0, &[]).is_none());
        assert!(b.pinned_instance(second, || 0, &[picked.addr()]).is_none());
        b.instances()[1].health().record_failure(100);
        assert!(b.pinned_instance(second, || 200, &[]).is_none());
        assert!(b.pinned_instance(second, || 100 + EJECT_FIRST_MS, &[]).is_some(), "window over");
    }

    #[test]
    fn tokens_are_stable_per_service_and_address() {
        let addr = SocketAddr::from(([10, 0, 0, 7], 8080));
        assert_eq!(sticky_token("Books", addr), sticky_token("books", addr));
        assert_ne!(sticky_token("books", addr), sticky_token("shop", addr));
        assert_ne!(
            sticky_token("books", addr),
            sticky_token("books", SocketAddr::from(([10, 0, 0, 8], 8080)))
        );
    }
}
