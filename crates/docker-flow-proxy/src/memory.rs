//! Giving freed memory back to the OS when a thread goes quiet.
//!
//! mimalloc keeps what a thread freed committed for a while (its purge delay, 1 s) and gives
//! it back only when a later allocation of some thread passes by. The control plane allocates
//! in bursts (the restore of the stored routes, a run of reconfigures, a registration change
//! fanned out to many services) and then goes quiet, so what a burst freed stayed resident
//! until the next one: an idle proxy restored with 1,000 routes held 22.5 MB, 3 MB of it
//! freed memory (BENCHMARKS.md, Memory). A worker thread that goes quiet after traffic kept
//! its freed buffers the same way: 1,000 closed connections left 11 MB behind.
//!
//! So every thread asks mimalloc once a second for the collection it otherwise makes only on
//! its own allocation paths. The control thread, busy in bursts and idle between them,
//! collects in full: its empty and retired pages at once, and every arena's freed memory
//! whether or not it has waited out the purge delay. A worker, which under traffic allocates
//! all the time, collects only what is due (empty pages back to the arena, what has waited
//! out the delay back to the OS), so a buffer it frees and needs again within a second is
//! never given back in between. Either is a walk over one thread's heap once a second; under
//! traffic mimalloc makes the worker's kind of call itself far more often.

use std::time::Duration;

/// How often each thread collects.
const TICK: Duration = Duration::from_secs(1);

/// How much a thread collects each [`TICK`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Collect {
    /// The control thread: everything that can go back, now.
    Full,
    /// A worker: what is due.
    Due,
}

/// Collects on this thread once a [`TICK`], for as long as its runtime runs it.
pub(crate) async fn give_back_freed_memory(how: Collect) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect(how);
    }
}

/// One collection on this thread.
#[allow(unsafe_code)]
fn collect(how: Collect) {
    let force = matches!(how, Collect::Full);
    // SAFETY: `mi_collect` takes no pointer and touches only mimalloc's own state, which it
    // guards for calls from any thread at any time (mimalloc makes the same call itself on its
    // allocation paths). The process's allocator is mimalloc (main.rs), so the heap collected
    // is the one this thread allocates from.
    unsafe { libmimalloc_sys::mi_collect(force) }
}
