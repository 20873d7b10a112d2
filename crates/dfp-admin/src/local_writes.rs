//! The guard that keeps a store follower from undoing this replica's own writes.
//!
//! A follower (routes, certificates) asks Consul KV for a listing without holding its owner's
//! lock, and applies the answer later under it. A reconfigure or upload that writes the store
//! in between is not in that listing, or is only in one answered before the write: applied
//! as it is, the listing would briefly unpublish (or bring back) what was just written, on
//! this replica, until the next change of the prefix. So every local write is numbered, the
//! follower notes the number before it asks ([`LocalWrites::mark`]), and a key written since
//! is left as it is and the store read again ([`LocalWrites::newer_than`]).
//!
//! One type for both stores, so the rule is written once (a step toward one store mirror).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Local writes to a store, numbered, and the last one that touched each key.
#[derive(Debug, Default)]
pub(crate) struct LocalWrites {
    /// Local writes so far.
    seq: AtomicU64,
    /// For each key, the number of the local write that last stored or deleted it.
    touched: Mutex<HashMap<String, u64>>,
}

impl LocalWrites {
    /// The number of local writes so far: take it before asking for a listing.
    pub(crate) fn mark(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Records a local write (store or delete) of `key`, once the store has taken it. Call it
    /// under the owner's lock, so that no listing is applied between the write and this.
    pub(crate) fn record(&self, key: &str) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut touched) = self.touched.lock() {
            touched.insert(key.to_owned(), seq);
        }
    }

    /// Whether `key` was written here after `mark` was taken: a listing asked for at `mark`
    /// may predate that write and must not decide `key`.
    pub(crate) fn newer_than(&self, key: &str, mark: u64) -> bool {
        self.touched.lock().is_ok_and(|touched| touched.get(key).is_some_and(|&seq| seq > mark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_after_the_mark_is_newer_for_its_key_only() {
        let writes = LocalWrites::default();
        writes.record("a");
        let mark = writes.mark();
        assert!(!writes.newer_than("a", mark), "written before the listing was asked for");
        writes.record("b");
        assert!(writes.newer_than("b", mark));
        assert!(!writes.newer_than("a", mark) && !writes.newer_than("c", mark));
        writes.record("a");
        assert!(writes.newer_than("a", mark), "written again since");
        assert!(!writes.newer_than("a", writes.mark()));
    }
}
