//! Publishing a table: the one `ArcSwap` readers load wait-free and writers swap whole.

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::RouteTable;

/// The one place the live table is published. Cloning the handle shares the same table.
///
/// Readers call [`TableHandle::load`] on every request: wait-free, no lock. Writers build a
/// whole new table and [`TableHandle::publish`] it; in-flight requests keep the table they
/// loaded until they drop it.
#[derive(Clone)]
pub struct TableHandle {
    live: Arc<ArcSwap<RouteTable>>,
}

impl TableHandle {
    pub fn new(table: RouteTable) -> Self {
        TableHandle { live: Arc::new(ArcSwap::from_pointee(table)) }
    }

    /// The live table. Hold the guard briefly: never across an `.await`.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.live.load()
    }

    /// The live table as an owned `Arc`, for callers that keep it a while (reporting).
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.live.load_full()
    }

    /// Makes `table` the live table, at once, for every reader.
    pub fn publish(&self, table: RouteTable) {
        self.live.store(Arc::new(table));
    }
}

impl Default for TableHandle {
    fn default() -> Self {
        TableHandle::new(RouteTable::empty())
    }
}

impl fmt::Debug for TableHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableHandle").field("version", &self.load().version()).finish()
    }
}
