//! Per-service counters, as `/metrics` and the live view read them.
//!
//! A module of their own because some are written on every answer by every data-plane
//! thread: their layout in memory decides whether threads serving the same service write the
//! same cache line ([`BackendStats`] says how it is kept apart).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Per-service counters, read by `/metrics`.
///
/// The counters every answer moves (its status class, its latency) are kept per data-plane
/// thread ([`AnswerCounts`], one shard per thread, see [`count_answers_on_shard`]): two
/// threads answering for the same service then never write the same cache line, and the
/// readers (`/metrics`, the live view) add the shards up. The rest are counted where
/// something goes wrong or a TCP connection opens, not on every answer, and stay one atomic
/// each.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Each thread's answer counters, made on the first answer it counts for the service:
    /// a service no thread has answered for holds no shard (idle routes stay small).
    answers: [OnceLock<Box<AnswerCounts>>; ANSWER_SHARDS],
    /// Attempts at an instance that failed before a response (refused, reset, timed out).
    pub upstream_errors: AtomicU64,
    /// Requests sent again to another instance after a failed attempt.
    pub retries: AtomicU64,
    /// Times an instance was ejected.
    pub ejections: AtomicU64,
    /// TCP services (`reqMode=tcp`): client connections accepted on the service's port.
    pub tcp_accepted: AtomicU64,
    /// TCP services: client connections open now.
    pub tcp_open: AtomicU64,
    /// TCP services: connections closed because no instance could be connected to (every
    /// attempt failed, or the service had no instance).
    pub tcp_connect_failures: AtomicU64,
    /// TCP services: bytes copied from clients to instances.
    pub bytes_to_instance: AtomicU64,
    /// TCP services: bytes copied from instances to clients.
    pub bytes_to_client: AtomicU64,
    /// Services with `instanceMaxConn`: requests (or TCP connections) waiting in the queue
    /// for a place now.
    pub queued: AtomicU64,
    /// Services with `instanceMaxConn`: requests (or TCP connections) that have waited in
    /// the queue, whether or not they got a place.
    pub queued_total: AtomicU64,
}

/// Upper bounds of the latency histogram's buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

/// How many shards a service's answer counters are split into. Threads beyond this many
/// share shards (`index % ANSWER_SHARDS`): still exact, as every shard is atomic, only no
/// longer on a line of their own.
pub const ANSWER_SHARDS: usize = 8;

thread_local! {
    static ANSWER_SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread count the answers it records ([`BackendStats::record_response`])
/// in shard `index % ANSWER_SHARDS`. Each data-plane thread calls it once with its own
/// index; a thread that never does (the admin thread, tests) counts in shard 0.
pub fn count_answers_on_shard(index: usize) {
    ANSWER_SHARD.with(|shard| shard.set(index % ANSWER_SHARDS));
}

/// One thread's counts of a service's answers, aligned to a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct AnswerCounts {
    /// By status class: index 0 for 1xx … 4 for 5xx.
    responses: [AtomicU64; 5],
    /// By time to the response head, over [`LATENCY_BUCKETS_MS`] (+Inf last).
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    /// Sum of those times in microseconds.
    latency_sum_us: AtomicU64,
}

impl BackendStats {
    /// Counts an answer with `status` that took `micros` to its head, in the calling thread's
    /// shard.
    pub fn record_response(&self, status: u16, micros: u64) {
        let shard = ANSWER_SHARD.with(std::cell::Cell::get);
        let counts = self.answers[shard].get_or_init(Box::default);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        counts.responses[class].fetch_add(1, Ordering::Relaxed);
        let ms = micros / 1000;
        let bucket =
            LATENCY_BUCKETS_MS.iter().position(|&b| ms < b).unwrap_or(LATENCY_BUCKETS_MS.len());
        counts.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        counts.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Answers so far by status class: index 0 for 1xx … 4 for 5xx.
    pub fn responses(&self) -> [u64; 5] {
        self.sum(|counts| &counts.responses)
    }

    /// Answers so far by time to the response head: one count per bucket of
    /// [`LATENCY_BUCKETS_MS`], and one more above the last.
    pub fn latency_buckets(&self) -> [u64; LATENCY_BUCKETS_MS.len() + 1] {
        self.sum(|counts| &counts.latency_buckets)
    }

    /// The sum of the answers' times to the response head, in microseconds.
    pub fn latency_sum_us(&self) -> u64 {
        let [sum] = self.sum(|counts| std::slice::from_ref(&counts.latency_sum_us));
        sum
    }

    /// Adds up one group of counters over the shards that exist.
    fn sum<const N: usize>(&self, group: impl Fn(&AnswerCounts) -> &[AtomicU64]) -> [u64; N] {
        let mut total = [0; N];
        for counts in self.answers.iter().filter_map(OnceLock::get) {
            for (sum, counter) in total.iter_mut().zip(group(counts)) {
                *sum += counter.load(Ordering::Relaxed);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn stats_classify_statuses_and_latency() {
        let s = BackendStats::default();
        s.record_response(200, 1_500);
        s.record_response(503, 20_000_000);
        s.record_response(101, 0);
        assert_eq!(s.responses(), [1, 1, 0, 0, 1]);
        let buckets = s.latency_buckets();
        assert_eq!(buckets[1], 1, "1.5 ms is in the 2 ms bucket");
        assert_eq!(buckets[LATENCY_BUCKETS_MS.len()], 1);
        assert_eq!(s.latency_sum_us(), 20_001_500);
    }

    #[test]
    fn each_thread_counts_in_its_own_shard_and_readers_see_the_sum() {
        let s = Arc::new(BackendStats::default());
        assert!(s.answers.iter().all(|shard| shard.get().is_none()), "no answer, no shard");
        let threads: Vec<_> = [1, 2, 1 + ANSWER_SHARDS]
            .into_iter()
            .map(|index| {
                let s = s.clone();
                std::thread::spawn(move || {
                    count_answers_on_shard(index);
                    for _ in 0..1_000 {
                        s.record_response(200, 3_000);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("counted");
        }
        s.record_response(404, 0); // this thread never said: shard 0
        let used: Vec<bool> = s.answers.iter().map(|shard| shard.get().is_some()).collect();
        assert_eq!(used, [true, true, true, false, false, false, false, false]);
        assert_eq!(s.responses(), [0, 3_000, 0, 1, 0]);
        assert_eq!(s.latency_buckets()[2], 3_000, "3 ms is in the 5 ms bucket");
        assert_eq!(s.latency_sum_us(), 9_000_000);
    }
}
