//! Leases (acknowledged receive): a leased message stays in its mailbox, counted, until
//! it is acked, nacked, or its lease ends — on time, or when the connection whose
//! `LeaseBook` holds it closes — and then it is redelivered or dead-lettered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ipc_proto::Fsync;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::store::{Record, Stored};

use super::durable::Removal;
use super::error::LeaseError;
use super::timers::Timer;
use super::{Envelope, Mailbox, State, Taker};

/// The terms of a lease.
#[derive(Debug, Clone)]
pub(crate) struct LeaseTerms {
    pub timeout: Duration,
    /// Who may settle it (besides root).
    pub uid: u32,
    /// The connection's book, for a lease that ends with the connection; `None` for a
    /// detached lease.
    pub book: Option<Arc<LeaseBook>>,
}

/// The leases one connection holds that end when it closes.
#[derive(Debug, Default)]
pub struct LeaseBook {
    /// `(mailbox address, message id)` → `(mailbox, lease number)`.
    leases: Mutex<HashMap<(usize, u64), BookEntry>>,
}

pub(super) type BookEntry = (Weak<Mailbox>, u64);

impl LeaseBook {
    pub(super) fn key(mailbox: &Weak<Mailbox>, id: u64) -> (usize, u64) {
        (mailbox.as_ptr() as usize, id)
    }

    pub(super) fn add(&self, mailbox: &Weak<Mailbox>, id: u64, lease_no: u64) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.insert(Self::key(mailbox, id), (mailbox.clone(), lease_no));
    }

    pub(super) fn forget(&self, mailbox: &Weak<Mailbox>, id: u64) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.remove(&Self::key(mailbox, id));
    }

    /// Ends every lease still held: the connection is gone, so its messages are
    /// redelivered.
    pub fn release_all(&self) {
        let leases = std::mem::take(&mut *self.leases.lock().unwrap_or_else(|e| e.into_inner()));
        for ((_, id), (mailbox, lease_no)) in leases {
            if let Some(mailbox) = mailbox.upgrade() {
                mailbox.end_lease(id, lease_no);
            }
        }
    }
}

/// A message out on lease.
#[derive(Debug)]
pub(super) struct Leased {
    pub(super) envelope: Envelope,
    pub(super) uid: u32,
    pub(super) lease_no: u64,
    pub(super) deadline: Instant,
    pub(super) book: Option<Weak<LeaseBook>>,
}

impl Mailbox {
    /// Settles leased message `id` for good. Root or the lease's uid only. For a durable
    /// mailbox, the answer is due once the removal is stored.
    pub fn ack(&self, id: u64, uid: u32) -> Result<Option<oneshot::Receiver<Stored>>, LeaseError> {
        let mut state = self.lock();
        self.check_lease(&state, id, uid)?;
        let envelope = state.unlease(id).expect("checked");
        let removal = state.removal(envelope.id());
        drop(envelope);
        state.admit_senders();
        Ok(removal.map(Removal::commit_waiting))
    }

    /// Gives leased message `id` back, to be redelivered (or dead-lettered).
    pub fn nack(&self, id: u64, uid: u32) -> Result<(), LeaseError> {
        let mut state = self.lock();
        self.check_lease(&state, id, uid)?;
        let envelope = state.unlease(id).expect("checked");
        state.return_message(envelope, &self.name);
        Ok(())
    }

    /// Ends lease `lease_no` of message `id` if it is still that lease: its connection
    /// closed.
    pub fn end_lease(&self, id: u64, lease_no: u64) {
        let mut state = self.lock();
        if state
            .leases
            .get(&id)
            .is_some_and(|l| l.lease_no == lease_no)
        {
            let envelope = state.unlease(id).expect("lease exists");
            state.return_message(envelope, &self.name);
        }
    }

    pub(super) fn check_lease(&self, state: &State, id: u64, uid: u32) -> Result<(), LeaseError> {
        let Some(lease) = state.leases.get(&id) else {
            return Err(LeaseError::NotLeased {
                mailbox: self.name.clone(),
                id,
            });
        };
        if uid != 0 && uid != lease.uid {
            return Err(LeaseError::NotYours {
                mailbox: self.name.clone(),
                id,
                holder: lease.uid,
                uid,
            });
        }
        Ok(())
    }
}

impl State {
    /// Gives `envelope` (already out of the queue, its bytes no longer counted) to a
    /// receiver: taken outright, or leased — then a copy goes out and the original waits
    /// for its ack, still counted in the mailbox.
    pub(super) fn take(&mut self, envelope: Envelope, taker: &Taker) -> Envelope {
        let mut envelope = self.delivered(envelope, taker.pid);
        let Some(terms) = &taker.lease else {
            // Out of the mailbox now, it carries the record of its leaving, to be
            // written once it reaches its receiver (a queued message does not: the
            // mailbox knows it is durable).
            envelope.set_removal(self.removal(envelope.id()));
            return envelope;
        };
        let wire = envelope.copy();
        if let Some(link) = &self.link {
            // Written with the next sync, not waited for: it only keeps the count right
            // across a crash.
            let record = Record::Delivered {
                key: link.key,
                id: envelope.id(),
                deliveries: envelope.deliveries(),
            };
            link.store.record(vec![record], Fsync::Never);
        }
        self.next_lease += 1;
        let lease_no = self.next_lease;
        let id = envelope.id();
        let deadline = Instant::now() + terms.timeout;
        if let Some(book) = &terms.book {
            book.add(&self.me, id, lease_no);
        }
        self.bytes += envelope.size();
        self.leases.insert(
            id,
            Leased {
                envelope,
                uid: terms.uid,
                lease_no,
                deadline,
                book: terms.book.as_ref().map(Arc::downgrade),
            },
        );
        self.schedule(deadline, Timer::LeaseEnds { id, lease_no });
        wire
    }

    /// Ends the lease of `id` and returns the leased message, no longer counted.
    pub(super) fn unlease(&mut self, id: u64) -> Option<Envelope> {
        let leased = self.leases.remove(&id)?;
        let lease_no = leased.lease_no;
        self.deadlines
            .remove(&(leased.deadline, Timer::LeaseEnds { id, lease_no }));
        if let Some(book) = leased.book.as_ref().and_then(Weak::upgrade) {
            book.forget(&self.me, id);
        }
        self.bytes -= leased.envelope.size();
        Some(leased.envelope)
    }
}
