//! Per-thread scratch buffers and the connection's lazy timer for upstream deadlines.

use std::future::Future as _;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

use super::READ_CHUNK;

/// One timer per client connection for the upstream deadlines, re-armed only when it fires
/// before the deadline now in force (or when a deadline comes earlier than it): consecutive
/// requests on a busy connection cost no timer operation.
#[derive(Default)]
pub(super) struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    pub(super) fn expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if deadline < sleep.deadline() {
            sleep.as_mut().reset(deadline);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

/// A byte buffer borrowed from this thread's spares for the time of one exchange, so an idle
/// connection holds no buffer beyond its read buffer.
pub(super) struct Scratch(Vec<u8>);

thread_local! {
    static SPARE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Scratch {
    const KEPT: usize = 64;

    pub(super) fn take() -> Self {
        let spare = SPARE_BUFFERS.with(|spares| spares.borrow_mut().pop());
        Scratch(spare.unwrap_or_else(|| Vec::with_capacity(READ_CHUNK)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.capacity() > 4 * READ_CHUNK {
            return;
        }
        let mut buffer = std::mem::take(&mut self.0);
        buffer.clear();
        SPARE_BUFFERS.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < Self::KEPT {
                spares.push(buffer);
            }
        });
    }
}

impl Deref for Scratch {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}
