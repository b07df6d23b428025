//! A durable mailbox's link to the store: the records its changes owe the log (a
//! message's `Put` before it is visible, its `Remove` once it is really delivered), and
//! putting a mailbox and its messages back from what the store recovered.

use std::sync::Arc;

use ipc_proto::Fsync;
use tokio::sync::oneshot;

use crate::perm::Ownership;
use crate::quota::Charge;
use crate::store::{MailboxDef, Record, Store, Stored, StoredMessage, StoredOwnership};

use super::timers::{monotonic, wall};
use super::waiters::Handoff;
use super::{Envelope, Mailbox, Origin, SendError, SentId, Stamped, State};

/// A durable mailbox's tie to the store.
#[derive(Debug, Clone)]
pub struct Link {
    pub store: Store,
    pub key: u64,
}

/// The `Remove` record a durable message's delivery owes the log.
#[derive(Debug)]
pub struct Removal {
    /// Shared by the mailbox and all its messages: one reference count per message, not
    /// a store handle each.
    link: Arc<Link>,
    id: u64,
    fsync: Fsync,
}

impl Removal {
    /// A removal record of message `id` of the durable mailbox `link` names.
    #[cfg(test)]
    pub(super) fn of(link: Arc<Link>, id: u64) -> Self {
        Self {
            link,
            id,
            fsync: Fsync::Never,
        }
    }

    pub(super) fn record(&self) -> Record {
        Record::Remove {
            key: self.link.key,
            id: self.id,
        }
    }

    /// Records that the message has left its mailbox for good.
    pub fn commit(self) {
        self.link.store.record(vec![self.record()], self.fsync);
    }

    /// As [`commit`](Self::commit), with a receiver that completes once it is stored
    /// per the mailbox's policy (an ack is answered then: an acked message must not
    /// come back after a crash).
    pub fn commit_waiting(self) -> oneshot::Receiver<Stored> {
        self.link
            .store
            .submit_waiting(vec![self.record()], self.fsync)
    }
}

impl Mailbox {
    /// Puts back a message recovered from the store, charged to its sender (`origin`
    /// says who that is and how it was charged).
    pub fn restore_message(&self, message: StoredMessage, origin: Arc<Origin>, charge: Charge) {
        let mut state = self.lock();
        let mut envelope = Envelope::new(
            message.id,
            message.mtype,
            origin,
            message.sent_at,
            message.headers,
            message.payload,
            None,
            Some(charge),
            message.expires_at.map(monotonic),
            message.not_before.map(monotonic),
        );
        *envelope.deliveries_mut() = message.deliveries;
        // Delayed or due to expire, it gets its timers like a message just accepted.
        state.offer_or_queue(envelope);
    }

    /// The store's record of this mailbox as it is now.
    pub fn definition(&self) -> Option<(Store, Record)> {
        self.definition_of(&self.lock())
    }

    pub(super) fn definition_of(&self, state: &State) -> Option<(Store, Record)> {
        let link = state.link.as_ref()?;
        let s = &state.settings;
        let def = MailboxDef {
            key: link.key,
            name: self.name.clone(),
            ownership: s.ownership.into(),
            limits: s.limits,
            fsync: s.fsync.unwrap_or(Fsync::Always),
            max_deliveries: s.max_deliveries,
            dead_letter: s.dead_letter.clone(),
            default_ttl: s.default_ttl,
            created_at: state.created_at,
            next_id: state.next_id,
        };
        Some((link.store.clone(), Record::Define(def)))
    }
}

impl State {
    pub(super) fn fsync(&self) -> Fsync {
        self.settings.fsync.unwrap_or(Fsync::Always)
    }

    /// The removal record a durable message will owe when delivered.
    pub(super) fn removal(&self, id: u64) -> Option<Removal> {
        self.link.as_ref().map(|link| Removal {
            link: link.clone(),
            id,
            fsync: self.fsync(),
        })
    }

    /// Stores a message just accepted by a durable mailbox, and makes it visible (hands
    /// it over or queues it) only once the store has it, answering `done` then. Until
    /// then it counts against the limits as "storing". Its envelope is made then, on
    /// the store's thread: the messages a mailbox keeps are allocated together there,
    /// not among the requests' short-lived allocations, which would leave the heap
    /// full of holes too small for them (measured: 27 bytes a message more).
    pub(super) fn store_then_offer(&mut self, stamped: Stamped, done: Handoff<SentId>) {
        let link = self.link.clone().expect("a durable mailbox has a link");
        let id = stamped.id;
        let len = stamped.incoming.size();
        self.storing += 1;
        self.storing_bytes += len;
        let incoming = &stamped.incoming;
        let record = Record::Put(StoredMessage {
            key: link.key,
            id,
            mtype: incoming.mtype,
            sender: incoming.sender(),
            sent_at: stamped.sent_at,
            headers: (*incoming.headers).clone(),
            expires_at: stamped.expires_at.map(wall),
            not_before: stamped.visible_at.map(wall),
            deliveries: 0,
            // Shared with the envelope to be, not copied.
            payload: incoming.payload.clone(),
        });
        let me = self.me.clone();
        let store = link.store.clone();
        store.submit(vec![record], self.fsync(), move |stored: Stored| {
            if let Some(mailbox) = me.upgrade() {
                let mut state = mailbox.lock();
                state.storing -= 1;
                state.storing_bytes -= len;
                if stored.is_ok() && state.closed.is_none() && id >= state.purged_below {
                    state.offer_or_queue(stamped.into_envelope());
                } else {
                    // Not stored, purged or removed meanwhile: it never becomes visible,
                    // and its room goes to whoever waits for it.
                    drop(stamped);
                    state.admit_senders();
                }
            }
            let _ = done.send(stored.map(|()| SentId(id)).map_err(SendError::Storage));
        });
    }
}

/// The store keeps its own plain copy of a mailbox's ownership; these convert at the
/// edge between the two, so that the store never names a permission type.
impl From<Ownership> for StoredOwnership {
    fn from(o: Ownership) -> Self {
        Self {
            owner_uid: o.owner_uid,
            owner_gid: o.owner_gid,
            creator_uid: o.creator_uid,
            creator_gid: o.creator_gid,
            mode: o.mode,
        }
    }
}

impl From<StoredOwnership> for Ownership {
    fn from(o: StoredOwnership) -> Self {
        Self {
            owner_uid: o.owner_uid,
            owner_gid: o.owner_gid,
            creator_uid: o.creator_uid,
            creator_gid: o.creator_gid,
            mode: o.mode,
        }
    }
}
