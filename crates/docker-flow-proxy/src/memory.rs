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
//! its own allocation paths: empty pages back to the arena, and what has waited out the purge
//! delay there back to the OS. Under traffic mimalloc makes that call itself far more often,
//! and a buffer freed and needed again within a second is never given back in between. While
//! no change is being made (the live table has kept its version for a whole second), the
//! control thread collects in full instead: its retired pages at once (a plain collection
//! frees them only over several calls) and every arena's freed memory whether or not it has
//! waited out the delay. Not during a burst of changes: a full collection walks every page of
//! the thread's heap and gives back pages the next change would take again. On an idle
//! control thread it is a walk over its heap once a second (about a thousand pages at 10,000
//! routes).

use std::time::Duration;

use dfp_routing::TableHandle;

/// How often each thread collects.
const TICK: Duration = Duration::from_secs(1);

/// Which thread collects, and so how.
#[derive(Debug)]
pub(crate) enum Collector {
    /// The control thread, which publishes the tables: in full while no change is made.
    Control(TableHandle),
    /// A worker: what is due, every tick.
    Worker,
}

/// Collects on this thread once a [`TICK`], for as long as its runtime runs it.
pub(crate) async fn give_back_freed_memory(collector: Collector) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The table's version at the last tick.
    let mut seen = None;
    loop {
        tick.tick().await;
        let full = match &collector {
            Collector::Control(table) => {
                let now = Some(table.load().version());
                let quiet = now == seen;
                seen = now;
                quiet
            }
            Collector::Worker => false,
        };
        collect(full);
    }
}

/// One collection on this thread: in `full`, or only what is due.
#[allow(unsafe_code)]
fn collect(full: bool) {
    // SAFETY: `mi_collect` takes no pointer and touches only mimalloc's own state, which it
    // guards for calls from any thread at any time (mimalloc makes the same call itself on its
    // allocation paths). The process's allocator is mimalloc (main.rs), so the heap collected
    // is the one this thread allocates from.
    unsafe { libmimalloc_sys::mi_collect(full) }
}
