//! The queue of `instanceMaxConn`: exchanges waiting for a place on a full instance.
//!
//! Why it looks like this: a place given back must reach one waiter, the one that waited
//! longest, and cost nothing when nobody waits. So each instance keeps its tickets in arrival
//! order behind a lock that only the queue path takes, and a count beside it that a place
//! given back reads without the lock; a place given back is handed to the first ticket still
//! waiting (the instance's in-flight count never drops, so no newcomer takes it in between),
//! and only that ticket's task is woken. An exchange that may use several instances queues
//! one ticket on each, and the first to hand it a place serves it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use crate::backend::InstanceSlot;

/// An exchange (a request, or a TCP connection) waiting for a place on one of its service's
/// full instances, queued on each instance it may use. The first instance to give a place
/// back hands it over: the ticket holds the place (the instance's count never drops, so no
/// newcomer can take it in between) and its task is woken. Tickets are served in the order
/// they were queued, one per place given back, so a place given back wakes one task however
/// many wait.
#[derive(Debug, Default)]
pub struct Ticket {
    state: Mutex<TicketState>,
}

#[derive(Debug, Default)]
enum TicketState {
    /// Queued; the task to wake when a place is handed over.
    #[default]
    Waiting,
    WaitingFor(Waker),
    /// A place was handed over and not taken yet.
    Granted(InstanceSlot),
    /// Served (by a place handed over or found), or gone (timed out, cancelled): passed over.
    Done,
}

impl Ticket {
    pub fn new() -> Arc<Ticket> {
        Arc::new(Ticket::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TicketState> {
        // Nothing under this lock can panic halfway; a poisoned lock's data is whole.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The place handed to this ticket, which is then done; or, while none is, has `waker`
    /// woken when one is.
    pub fn take_place(&self, waker: &Waker) -> Option<InstanceSlot> {
        let mut state = self.state();
        match std::mem::take(&mut *state) {
            TicketState::Granted(slot) => {
                *state = TicketState::Done;
                Some(slot)
            }
            TicketState::WaitingFor(old) if old.will_wake(waker) => {
                *state = TicketState::WaitingFor(old);
                None
            }
            TicketState::Waiting | TicketState::WaitingFor(_) => {
                *state = TicketState::WaitingFor(waker.clone());
                None
            }
            TicketState::Done => {
                *state = TicketState::Done;
                None
            }
        }
    }

    /// Leaves every queue: nothing more is handed to the ticket. A place handed to it and
    /// not taken is given back (so it goes to the next ticket waiting there).
    pub fn leave(&self) {
        let granted = std::mem::replace(&mut *self.state(), TicketState::Done);
        // Dropped after the lock: giving the place back may hand it to another ticket.
        drop(granted);
    }

    fn is_waiting(&self) -> bool {
        matches!(*self.state(), TicketState::Waiting | TicketState::WaitingFor(_))
    }

    /// Hands `slot` to the ticket if it still waits (its task woken); else gives it back.
    fn grant(&self, slot: InstanceSlot) -> Result<(), InstanceSlot> {
        let mut state = self.state();
        let waker = match std::mem::take(&mut *state) {
            TicketState::Waiting => None,
            TicketState::WaitingFor(waker) => Some(waker),
            other => {
                *state = other;
                return Err(slot);
            }
        };
        *state = TicketState::Granted(slot);
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Wakes the ticket's task without handing it a place (it looks for one itself).
    fn nudge(&self) -> bool {
        match &*self.state() {
            TicketState::WaitingFor(waker) => {
                waker.wake_by_ref();
                true
            }
            TicketState::Waiting => true,
            TicketState::Granted(_) | TicketState::Done => false,
        }
    }
}

/// The tickets queued for a place on one instance, oldest first. Tickets that are done stay
/// until they reach the front (or the queue is compacted as it grows), so leaving a queue
/// takes no lock on it.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    /// How many tickets `queue` holds, read without the lock by every place given back.
    pub(crate) count: AtomicUsize,
    queue: Mutex<VecDeque<Arc<Ticket>>>,
}

impl Waiting {
    pub(crate) fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Ticket>>> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn enqueue(&self, ticket: &Arc<Ticket>) {
        let mut queue = self.queue();
        // Each time the queue doubles past 64, tickets that are done are dropped: a queue
        // whose front never moves cannot grow without bound, at constant cost per ticket.
        if queue.len() >= 64 && queue.len().is_power_of_two() {
            queue.retain(|t| t.is_waiting());
        }
        queue.push_back(ticket.clone());
        self.count.store(queue.len(), Ordering::SeqCst);
    }

    /// Hands the place `slot` holds to the first ticket still waiting; gives it back as
    /// `Err` when none is.
    pub(crate) fn hand_over(&self, mut slot: InstanceSlot) -> Result<(), InstanceSlot> {
        let mut queue = self.queue();
        let handed = loop {
            let Some(ticket) = queue.pop_front() else { break Err(slot) };
            match ticket.grant(slot) {
                Ok(()) => break Ok(()),
                Err(back) => slot = back,
            }
        };
        self.count.store(queue.len(), Ordering::SeqCst);
        handed
    }

    /// Wakes the first ticket still waiting, which stays queued.
    pub(crate) fn nudge_first(&self) {
        let mut queue = self.queue();
        while let Some(ticket) = queue.front() {
            if ticket.nudge() {
                break;
            }
            queue.pop_front();
        }
        self.count.store(queue.len(), Ordering::SeqCst);
    }
}
