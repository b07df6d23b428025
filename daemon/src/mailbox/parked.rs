//! Receives parked in their mailbox and answered by their connection's own task: what
//! most receives of a stream are, each waiting for the next message.
//!
//! A receive that waits as a future costs its connection a task in its
//! `FuturesUnordered`, a boxed future and a channel, and two polls (counted: about 1,600
//! instructions a wait, more than the rest of the receive). A parked receive is an entry
//! in the mailbox's waiter index like any other, so a message is handed to it under the
//! mailbox's lock, in the same order; the hand-over puts the message among its
//! connection's [`Completions`] and wakes the connection, which answers it.
//!
//! Only a plain receive that waits for as long as it takes parks (`Wait::Forever`, not a
//! peek): one with a timeout keeps its future, which owns its timer. Nothing is lost
//! when a parked receive is dropped instead of answered — refused for the connection's
//! `in_flight` quota, or because its connection closed: it is taken out of its mailbox
//! under the mailbox's lock, and a message handed to it before that is taken back out of
//! the completions and put back, as a waiter's `Drop` puts one back. A closing
//! connection then closes its completions, so that a hand-over can never reach a
//! connection that is gone (it would fail, and the mailbox keep its message).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use super::error::{Cancelled, Interrupted, RecvError};
use super::{Envelope, Mailbox, Pending, Side};

/// A parked receive's result, under its slot.
pub(crate) type Completed = (u64, Result<Envelope, RecvError>);

/// The results handed to one connection's parked receives, each under the slot it was
/// parked with, until the connection takes them.
#[derive(Debug, Default)]
pub struct Completions {
    done: Mutex<Done>,
    waker: AtomicWaker,
    next_slot: AtomicU64,
}

#[derive(Debug, Default)]
struct Done {
    ready: VecDeque<Completed>,
    /// The connection is closing: nothing more is taken.
    closed: bool,
}

impl Completions {
    fn lock(&self) -> MutexGuard<'_, Done> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a receive about to park.
    pub(super) fn slot(&self) -> u64 {
        self.next_slot.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands `result` to the receive parked under `slot` and wakes its connection;
    /// `Err` gives the result back if the connection is closing.
    pub(super) fn complete(
        &self,
        slot: u64,
        result: Result<Envelope, RecvError>,
    ) -> Result<(), Result<Envelope, RecvError>> {
        let mut done = self.lock();
        if done.closed {
            return Err(result);
        }
        done.ready.push_back((slot, result));
        drop(done);
        self.waker.wake();
        Ok(())
    }

    /// The next result handed over; `Pending` until one is, the task woken then.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Completed> {
        if let Some(completed) = self.try_next() {
            return Poll::Ready(completed);
        }
        self.waker.register(cx.waker());
        // Looked at again: one handed over before the waker was registered woke nobody.
        self.try_next().map_or(Poll::Pending, Poll::Ready)
    }

    /// The next result handed over, if there is one.
    pub(crate) fn try_next(&self) -> Option<Completed> {
        self.lock().ready.pop_front()
    }

    /// Takes no more results (a later hand-over fails, and its mailbox keeps what it
    /// would have handed), and returns those handed over and not yet taken.
    pub(crate) fn close(&self) -> VecDeque<Completed> {
        let mut done = self.lock();
        done.closed = true;
        std::mem::take(&mut done.ready)
    }

    /// Takes out the result handed to `slot`, if there is one.
    fn take(&self, slot: u64) -> Option<Result<Envelope, RecvError>> {
        let mut done = self.lock();
        let at = done.ready.iter().position(|(s, _)| *s == slot)?;
        done.ready.remove(at).map(|(_, result)| result)
    }
}

/// A receive that may park: answered or waiting as any request, or parked.
#[derive(Debug)]
pub(crate) enum Received {
    Pending(Pending<Envelope>),
    Parked(Parked),
}

impl From<Pending<Envelope>> for Received {
    fn from(pending: Pending<Envelope>) -> Self {
        Received::Pending(pending)
    }
}

/// Where a receive is parked: its mailbox, its key there, and its slot among its
/// connection's completions.
#[derive(Debug)]
pub(crate) struct Parked {
    pub mailbox: Arc<Mailbox>,
    pub key: u64,
    pub slot: u64,
}

impl Parked {
    /// Ends the wait at once with [`Interrupted::Cancelled`], which comes to the
    /// connection as the receive's result; if a message was handed to it first, that
    /// stands.
    pub(crate) fn cancel(&self, reason: Cancelled) {
        let mut state = self.mailbox.lock();
        if let Some(handoff) = Envelope::deregister(&mut state, self.key) {
            let _ = handoff.send(Err(Interrupted::Cancelled(reason).into()));
        }
    }

    /// Drops the receive before it is answered (refused for the `in_flight` quota): it
    /// leaves its mailbox, and a message handed to it meanwhile goes back.
    pub(crate) fn withdraw(self, completions: &Completions) {
        let mut state = self.mailbox.lock();
        if Envelope::deregister(&mut state, self.key).is_none() {
            // Handed over under this lock, so the result is among the completions now.
            if let Some(Ok(envelope)) = completions.take(self.slot) {
                Envelope::reclaim(&mut state, envelope);
            }
        }
    }

    /// Takes the receive out of its mailbox as its connection closes, if it is still
    /// there; a message handed to it before is among the completions, which the
    /// connection then closes ([`Completions::close`]) and gives back
    /// ([`Parked::give_back`]).
    pub(crate) fn leave(&self) {
        let mut state = self.mailbox.lock();
        let _ = Envelope::deregister(&mut state, self.key);
    }

    /// Puts back a message handed to this receive that its connection will not answer.
    pub(crate) fn give_back(&self, envelope: Envelope) {
        Envelope::reclaim(&mut self.mailbox.lock(), envelope);
    }
}
