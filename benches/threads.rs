//! What does a second data-plane thread serving the same service cost each answer?
//!
//! Every request to a service writes a few of its counters, and every thread serves every
//! service, so a value all threads write moves between their cores' caches on each request.
//! `benches/compare.sh --only threads` measures the whole effect on the proxy, but a few
//! cache-line moves per request hide in its run-to-run noise. This bench isolates them:
//! each case times one operation on the measuring thread while a second thread does the
//! same operation on the same service as fast as it can (the worst case: on the proxy the
//! other thread touches the line once per request, so each touch is one move).
//!
//! - `answer`: counting an answer (`BackendStats::record_response`). `own-shards` is the
//!   proxy's way (each data-plane thread counts in its own shard); `one-shard` puts both
//!   threads on the same shard, as when every thread wrote one set of counters.
//! - `backend-ref`: taking and dropping a reference to the service (`Arc<Backend>` clone and
//!   drop), which the HTTP/1 engine now does once per connection and service, not per request.
//! - `round-robin`: `Backend::next_instance`, whose cursor stays shared so that round robin
//!   is exact over every thread (README: "exact round robin"): the one write to a shared line
//!   each request still makes.
//!
//! Each case also runs `alone` (no second thread) for the baseline.
//!
//! Run: `cargo bench -p dfp-benches --bench threads`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dfp_benches::table_of;
use dfp_routing::{count_answers_on_shard, Backend};

/// The longest the second thread runs, whatever the bench does (a bound if it never stops it).
const SECOND_THREAD_LIMIT: Duration = Duration::from_secs(120);

/// Runs `work` in a loop on a second thread (which counts its answers in shard `shard`)
/// until the returned guard is dropped.
fn beside(shard: usize, work: impl Fn() + Send + 'static) -> SecondThread {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        count_answers_on_shard(shard);
        let until = Instant::now() + SECOND_THREAD_LIMIT;
        while !stopped.load(Ordering::Relaxed) && Instant::now() < until {
            for _ in 0..1_000 {
                work();
            }
        }
    });
    SecondThread { stop, thread: Some(thread) }
}

struct SecondThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SecondThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn service() -> Arc<Backend> {
    let table = table_of(1);
    table.service("service-0").expect("routed").clone()
}

fn answer(c: &mut Criterion) {
    let mut group = c.benchmark_group("answer");
    count_answers_on_shard(0);
    let backend = service();
    group.bench_function("alone", |b| {
        b.iter(|| backend.stats().record_response(black_box(200), black_box(900)));
    });
    for (case, other_shard) in [("own-shards", 1), ("one-shard", 0)] {
        let other = backend.clone();
        let _second = beside(other_shard, move || other.stats().record_response(200, 900));
        group.bench_function(case, |b| {
            b.iter(|| backend.stats().record_response(black_box(200), black_box(900)));
        });
    }
    group.finish();
}

fn backend_ref(c: &mut Criterion) {
    let mut group = c.benchmark_group("backend-ref");
    let backend = service();
    group.bench_function("alone", |b| b.iter(|| drop(black_box(backend.clone()))));
    let other = backend.clone();
    let _second = beside(1, move || drop(black_box(other.clone())));
    group.bench_function("beside-another-thread", |b| b.iter(|| drop(black_box(backend.clone()))));
    group.finish();
}

fn round_robin(c: &mut Criterion) {
    let mut group = c.benchmark_group("round-robin");
    let backend = service();
    let pick = |backend: &Backend| black_box(backend.next_instance(|| 0).map(|u| u.addr()));
    group.bench_function("alone", |b| b.iter(|| pick(&backend)));
    let other = backend.clone();
    let _second = beside(1, move || {
        pick(&other);
    });
    group.bench_function("beside-another-thread", |b| b.iter(|| pick(&backend)));
    group.finish();
}

criterion_group!(benches, answer, backend_ref, round_robin);
criterion_main!(benches);
