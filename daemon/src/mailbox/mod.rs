//! One mailbox: its queued messages (a [`TypeIndex`]), the receivers and senders waiting
//! on it, its ownership, limits and counters.
//!
//! All of it sits behind one `std::sync::Mutex`, held only for the few index operations
//! of one request and never across an `.await`. Waiting is done by handing work to the
//! mailbox: a receiver that finds nothing registers a [`RecvWaiter`] and a sender that
//! finds no room registers its message as a [`SendWaiter`]; whoever later changes the
//! mailbox completes them under the same lock, in FIFO order. A waiting request is a
//! [`Waiter`] future whose `Drop` deregisters it and puts back anything handed to it in
//! the meantime, so a cancelled or timed-out receive never loses a message.

mod waiters;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use ipc_proto::{
    Credentials, ErrorCode, ErrorReply, Fsync, Headers, LastOp, MailboxInfo, MailboxName, Selector,
    Timestamp, Wait,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::Limits;
use crate::index::{Slot, TypeIndex};
use crate::logging::Throttle;
use crate::perm::{Ownership, RouteOwner};
use crate::quota::Charge;
use crate::store::{MailboxDef, Record, Store, Stored, StoredMessage};

use self::waiters::WaiterIndex;

/// The result of a mailbox operation; errors are already in their wire form.
pub type OpResult<T> = Result<T, ErrorReply>;

/// A message as the daemon keeps it.
#[derive(Debug)]
pub struct Envelope {
    pub id: u64,
    pub mtype: i64,
    pub sender: Credentials,
    pub sent_at: Timestamp,
    pub headers: Headers,
    /// Times it has been taken by a receiver.
    pub deliveries: u32,
    pub payload: Bytes,
    /// Its size and the per-message overhead, charged to the sender's uid while the
    /// mailbox holds it; a copy made for a peek carries none.
    pub _charge: Option<Charge>,
    /// For a message of a durable mailbox: the record of its leaving, written once it is
    /// really delivered ([`Removal::commit`]), not when it is merely handed to a waiter
    /// that may vanish and give it back.
    pub removal: Option<Removal>,
    /// When it expires undelivered (its TTL), and until when it is invisible (its delay),
    /// on the monotonic clock.
    pub expires_at: Option<Instant>,
    pub visible_at: Option<Instant>,
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
    fn record(&self) -> Record {
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
        let (done, stored) = crate::broker::completion();
        self.link
            .store
            .submit(vec![self.record()], self.fsync, done);
        stored
    }
}

/// A message on its way to a dead-letter mailbox (or to be dropped), for the broker to
/// deliver: a mailbox cannot reach another mailbox itself (lock order).
#[derive(Debug)]
pub struct DeadLetter {
    pub from: MailboxName,
    /// The source mailbox, to count the letter there as dropped if it cannot be delivered.
    pub source: Weak<Mailbox>,
    /// Whose authority the route carries: the target must let it write, checked at
    /// delivery, not when the route was set.
    pub route_owner: RouteOwner,
    pub to: MailboxName,
    pub envelope: Envelope,
}

/// Where a mailbox sends its dead letters: bounded (`dead_letter_backlog`). A mailbox
/// offers them under its lock and cannot wait, so past the bound a dead letter is dropped
/// and counted on its source mailbox.
pub type DeadLetters = mpsc::Sender<DeadLetter>;

/// How a receive takes its message.
#[derive(Debug, Clone)]
pub(crate) struct Taker {
    /// Copy and leave it.
    pub peek: bool,
    pub pid: u32,
    /// Lease it (acknowledged receive) rather than take it.
    pub lease: Option<LeaseTerms>,
}

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

type BookEntry = (Weak<Mailbox>, u64);

impl LeaseBook {
    fn key(mailbox: &Weak<Mailbox>, id: u64) -> (usize, u64) {
        (mailbox.as_ptr() as usize, id)
    }

    fn add(&self, mailbox: &Weak<Mailbox>, id: u64, lease_no: u64) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.insert(Self::key(mailbox, id), (mailbox.clone(), lease_no));
    }

    fn forget(&self, mailbox: &Weak<Mailbox>, id: u64) {
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
struct Leased {
    envelope: Envelope,
    uid: u32,
    lease_no: u64,
    deadline: Instant,
    book: Option<Weak<LeaseBook>>,
}

/// Bytes a message's headers take: they count with its payload against the mailbox's
/// `max_bytes` and the sender's quota, so a message with an empty payload is not free.
pub fn headers_size(headers: &Headers) -> u64 {
    let name = headers.reply_to.as_ref().map_or(0, |n| n.as_str().len());
    let content_type = headers.content_type.as_ref().map_or(0, String::len);
    let correlation = if headers.correlation_id.is_some() {
        8
    } else {
        0
    };
    (name + content_type + correlation) as u64
}

impl Envelope {
    /// What the message counts for against the mailbox's `max_bytes`: payload and
    /// headers.
    pub fn size(&self) -> u64 {
        self.payload.len() as u64 + headers_size(&self.headers)
    }

    /// The message as offered to another mailbox (dead-lettering): same sender, type,
    /// headers and payload, still charged to its sender; a new id there.
    pub fn into_incoming(self) -> Incoming {
        Incoming {
            mtype: self.mtype,
            sender: self.sender,
            headers: self.headers,
            payload: self.payload,
            charge: self._charge,
            // What is left of its TTL goes with it; a dead letter is visible at once.
            ttl: self
                .expires_at
                .map(|at| at.saturating_duration_since(Instant::now())),
            delay: None,
        }
    }

    /// A copy for a peek: the same message, charged to nobody.
    fn copy(&self) -> Envelope {
        Envelope {
            id: self.id,
            mtype: self.mtype,
            sender: self.sender,
            sent_at: self.sent_at,
            headers: self.headers.clone(),
            deliveries: self.deliveries,
            payload: self.payload.clone(),
            _charge: None,
            removal: None,
            expires_at: self.expires_at,
            visible_at: self.visible_at,
        }
    }
}

/// A message offered by a sender, before the mailbox has given it an id.
#[derive(Debug)]
pub struct Incoming {
    pub mtype: i64,
    pub sender: Credentials,
    pub headers: Headers,
    pub payload: Bytes,
    /// Its charge to the sender's uid (size and per-message overhead), taken before the
    /// message was offered.
    pub charge: Option<Charge>,
    /// Expire it if undelivered after this long (else the mailbox's default TTL).
    pub ttl: Option<Duration>,
    /// Keep it invisible this long.
    pub delay: Option<Duration>,
}

impl Incoming {
    /// As [`Envelope::size`].
    pub fn size(&self) -> u64 {
        self.payload.len() as u64 + headers_size(&self.headers)
    }
}

/// What a `send` returns: the id the message got in the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentId(pub u64);

/// Settings a creator or owner chooses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ownership: Ownership,
    /// `Some` for a durable mailbox: when its messages reach the disk.
    pub fsync: Option<Fsync>,
    pub limits: Limits,
    /// Deliveries after which an unacknowledged message is dead-lettered; 0 is no limit.
    pub max_deliveries: u32,
    pub dead_letter: Option<MailboxName>,
    /// The TTL of messages sent without one.
    pub default_ttl: Option<Duration>,
}

/// Something a mailbox must do at a given time (its timekeeper does it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A lease ends, unless it was settled (then there is no lease of that number).
    LeaseEnds { id: u64, lease_no: u64 },
    /// A delayed message becomes visible.
    Visible { id: u64 },
    /// A message's TTL passes; if it is still queued or delayed, it expires.
    Expires { id: u64, mtype: i64 },
}

/// A durable mailbox's tie to the store.
#[derive(Debug, Clone)]
pub struct Link {
    pub store: Store,
    pub key: u64,
}

/// An operation that either finished at once or must wait.
#[derive(Debug)]
pub(crate) enum Pending<T: Side> {
    Ready(OpResult<T>),
    Wait(Waiter<T>),
}

pub(crate) type Handoff<T> = oneshot::Sender<OpResult<T>>;

#[derive(Debug)]
struct RecvWaiter {
    taker: Taker,
    tx: Handoff<Envelope>,
}

#[derive(Debug)]
struct SendWaiter {
    incoming: Incoming,
    tx: Handoff<SentId>,
}

#[derive(Debug)]
pub(crate) struct State {
    settings: Settings,
    queue: TypeIndex<Envelope>,
    /// Sum of queued messages' sizes ([`Envelope::size`]).
    bytes: u64,
    next_id: u64,
    /// Receivers waiting for a match that take it, indexed by selector; their keys are
    /// in arrival order.
    receivers: WaiterIndex<RecvWaiter>,
    /// Receivers waiting to peek at a match: each matching one gets a copy.
    peekers: WaiterIndex<RecvWaiter>,
    /// Senders waiting for room, by key (so in arrival order), each holding its message.
    senders: BTreeMap<u64, SendWaiter>,
    next_key: u64,
    /// Set once the mailbox is removed or the daemon stops: every later wait fails so.
    closed: Option<ErrorReply>,
    /// The mailbox counted against its owner's `mailboxes` quota; given back on removal.
    owner_charge: Option<Charge>,
    /// For a durable mailbox, the store and its key there.
    link: Option<Arc<Link>>,
    /// Messages (and their bytes) accepted but still being stored: they count against
    /// the limits, and become visible once stored.
    storing: u64,
    storing_bytes: u64,
    /// Ids below this were purged; a message still being stored then is dropped.
    purged_below: u64,
    /// This mailbox, for the store's completions and the lease books.
    me: Weak<Mailbox>,
    /// Messages out on lease, by id; they still count against the limits.
    leases: HashMap<u64, Leased>,
    next_lease: u64,
    /// What is due when, for the timekeeper.
    deadlines: BTreeSet<(Instant, Timer)>,
    /// Messages sent with a delay, not visible yet; they count against the limits.
    delayed: HashMap<u64, Envelope>,
    delayed_bytes: u64,
    expired: u64,
    /// Wakes the task that ends leases on time, once there is one.
    timekeeper: Option<Arc<Notify>>,
    /// Where that task runs: lease hand-overs also happen on the store's writer thread,
    /// which is not a runtime thread.
    runtime: tokio::runtime::Handle,
    dead_letters: DeadLetters,
    /// Rate-limits the lines about dead letters dropped for want of room.
    drop_log: Throttle,
    dead_lettered: u64,
    dropped: u64,
    created_at: Timestamp,
    changed_at: Timestamp,
    last_send: Option<LastOp>,
    last_recv: Option<LastOp>,
    total_sent: u64,
    total_received: u64,
}

/// One named mailbox.
#[derive(Debug)]
pub struct Mailbox {
    name: MailboxName,
    state: Mutex<State>,
}

fn op_error(code: ErrorCode, message: String) -> ErrorReply {
    ErrorReply::new(code, message)
}

impl Mailbox {
    /// A new, empty mailbox; durable if `link` is given.
    pub fn new(
        name: MailboxName,
        settings: Settings,
        owner_charge: Charge,
        link: Option<Link>,
        dead_letters: DeadLetters,
    ) -> Arc<Self> {
        Self::restore(
            name,
            settings,
            owner_charge,
            link,
            dead_letters,
            Timestamp::now(),
            1,
        )
    }

    /// A mailbox as recovered from the store (or new): empty, with ids continuing at
    /// `next_id`; its messages are put back with [`Mailbox::restore_message`].
    pub fn restore(
        name: MailboxName,
        settings: Settings,
        owner_charge: Charge,
        link: Option<Link>,
        dead_letters: DeadLetters,
        created_at: Timestamp,
        next_id: u64,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            name,
            state: Mutex::new(State {
                settings,
                queue: TypeIndex::default(),
                bytes: 0,
                next_id,
                receivers: WaiterIndex::default(),
                peekers: WaiterIndex::default(),
                senders: BTreeMap::new(),
                next_key: 1,
                closed: None,
                owner_charge: Some(owner_charge),
                link: link.map(Arc::new),
                storing: 0,
                storing_bytes: 0,
                purged_below: 0,
                me: me.clone(),
                leases: HashMap::new(),
                next_lease: 0,
                deadlines: BTreeSet::new(),
                delayed: HashMap::new(),
                delayed_bytes: 0,
                expired: 0,
                timekeeper: None,
                runtime: tokio::runtime::Handle::current(),
                dead_letters,
                drop_log: Throttle::default(),
                dead_lettered: 0,
                dropped: 0,
                created_at,
                changed_at: created_at,
                last_send: None,
                last_recv: None,
                total_sent: 0,
                total_received: 0,
            }),
        })
    }

    /// Puts back a message recovered from the store, charged to its sender.
    pub fn restore_message(&self, message: StoredMessage, charge: Charge) {
        let mut state = self.lock();
        let removal = state.removal(message.id);
        let envelope = Envelope {
            id: message.id,
            mtype: message.mtype,
            sender: message.sender,
            sent_at: message.sent_at,
            headers: message.headers,
            deliveries: message.deliveries,
            payload: message.payload,
            _charge: Some(charge),
            removal,
            expires_at: message.expires_at.map(monotonic),
            visible_at: message.not_before.map(monotonic),
        };
        // Delayed or due to expire, it gets its timers like a message just accepted.
        state.offer_or_queue(envelope);
    }

    /// The store's record of this mailbox as it is now.
    pub fn definition(&self) -> Option<(Store, Record)> {
        self.definition_of(&self.lock())
    }

    fn definition_of(&self, state: &State) -> Option<(Store, Record)> {
        let link = state.link.as_ref()?;
        let s = &state.settings;
        let def = MailboxDef {
            key: link.key,
            name: self.name.clone(),
            ownership: s.ownership,
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

    pub fn name(&self) -> &MailboxName {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still consistent enough
        // to keep serving, since every mutation is a few index operations.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> Settings {
        self.lock().settings.clone()
    }

    /// Puts a message in, hands it to a waiting receiver, or waits for room.
    pub(crate) fn send(self: &Arc<Self>, incoming: Incoming, wait: Wait) -> Pending<SentId> {
        let mut state = self.lock();
        if let Some(closed) = &state.closed {
            return Pending::Ready(Err(closed.clone()));
        }
        let len = incoming.payload.len() as u64;
        let size = incoming.size();
        let limits = state.settings.limits;
        if len > limits.max_msg_size {
            return Pending::Ready(Err(op_error(
                ErrorCode::TooLarge,
                format!(
                    "payload of {len} bytes exceeds max_msg_size of {} bytes of mailbox {}",
                    limits.max_msg_size, self.name
                ),
            )));
        }
        if size > limits.max_bytes {
            return Pending::Ready(Err(op_error(
                ErrorCode::TooLarge,
                format!(
                    "message of {size} bytes (payload and headers) exceeds max_bytes of {} \
                     bytes of mailbox {}",
                    limits.max_bytes, self.name
                ),
            )));
        }
        if state.senders.is_empty() && state.can_accept(&incoming) {
            let (tx, mut rx) = oneshot::channel();
            state.accept(incoming, tx);
            if state.link.is_none() {
                let done = rx.try_recv().expect("a memory mailbox answers at once");
                return Pending::Ready(done);
            }
            // Answered once stored; there is nothing to deregister meanwhile.
            let key = state.take_key();
            drop(state);
            return Pending::Wait(Waiter::new(self.clone(), key, rx, None, String::new()));
        }
        let full = || {
            format!(
                "mailbox {} is full ({} of {} messages, {} of {} bytes)",
                self.name,
                state.queue.len(),
                limits.max_msgs,
                state.bytes,
                limits.max_bytes
            )
        };
        let timeout = match wait {
            Wait::NoWait => return Pending::Ready(Err(op_error(ErrorCode::WouldBlock, full()))),
            Wait::Forever => None,
            Wait::TimeoutMs(ms) => Some(Duration::from_millis(ms)),
        };
        let what = full();
        let key = state.take_key();
        let (tx, rx) = oneshot::channel();
        state.senders.insert(key, SendWaiter { incoming, tx });
        drop(state);
        Pending::Wait(Waiter::new(self.clone(), key, rx, timeout, what))
    }

    /// Takes (or, with `peek`, copies) the message `selector` selects, or waits for one.
    pub(crate) fn recv(
        self: &Arc<Self>,
        selector: Selector,
        taker: Taker,
        wait: Wait,
    ) -> Pending<Envelope> {
        let peek = taker.peek;
        let mut state = self.lock();
        if let Some(closed) = &state.closed {
            return Pending::Ready(Err(closed.clone()));
        }
        let now = Instant::now();
        while let Some(slot) = state.queue.find(selector) {
            let expired = state
                .queue
                .get(slot)
                .is_some_and(|e| e.expires_at.is_some_and(|at| at <= now));
            if expired {
                // Due, but the timekeeper has not got to it yet: it is never delivered.
                let envelope = state.dequeue(slot);
                state.expire(envelope, &self.name);
                continue;
            }
            let envelope = if peek {
                state
                    .queue
                    .get(slot)
                    .map(Envelope::copy)
                    .expect("found slot exists")
            } else {
                let envelope = state.dequeue(slot);
                let envelope = state.take(envelope, &taker);
                state.admit_senders();
                envelope
            };
            return Pending::Ready(Ok(envelope));
        }
        if !peek && state.link.is_none() {
            // Nothing queued matches, but a sender blocked on a full mailbox may hold a
            // match: it is then the oldest match, so take it straight from the sender.
            // (A durable mailbox stores a message before anyone may take it; its senders
            // get in through `admit_senders` as room appears.)
            if let Some(key) = state
                .senders
                .iter()
                .find(|(_, w)| selector.matches(w.incoming.mtype))
                .map(|(&key, _)| key)
            {
                let waiter = state.senders.remove(&key).expect("found");
                let envelope = state.stamp(waiter.incoming);
                let _ = waiter.tx.send(Ok(SentId(envelope.id)));
                return Pending::Ready(Ok(state.take(envelope, &taker)));
            }
        }
        let what = match selector {
            Selector::Any => format!("mailbox {} is empty", self.name),
            Selector::Type(t) => format!("no message of type {t} in mailbox {}", self.name),
            Selector::Except(t) => {
                format!(
                    "no message of a type other than {t} in mailbox {}",
                    self.name
                )
            }
            Selector::AtMost(t) => {
                format!("no message of a type up to {t} in mailbox {}", self.name)
            }
        };
        let timeout = match wait {
            Wait::NoWait => return Pending::Ready(Err(op_error(ErrorCode::WouldBlock, what))),
            Wait::Forever => None,
            Wait::TimeoutMs(ms) => Some(Duration::from_millis(ms)),
        };
        let key = state.take_key();
        let (tx, rx) = oneshot::channel();
        let waiters = if peek {
            &mut state.peekers
        } else {
            &mut state.receivers
        };
        waiters.insert(key, selector, RecvWaiter { taker, tx });
        drop(state);
        let mut waiter = Waiter::new(self.clone(), key, rx, timeout, what);
        // What a peek is handed is a copy: if it is not delivered, it is dropped, never
        // put back in place of (or beside) the original.
        waiter.copy = peek;
        Pending::Wait(waiter)
    }

    /// Drops every queued message and lets waiting senders in; returns how many went and,
    /// for a durable mailbox, what completes once the purge is stored (it is answered
    /// then, so purged messages do not come back after a crash).
    pub fn purge(&self) -> (u64, Option<oneshot::Receiver<Stored>>) {
        let mut state = self.lock();
        let dropped = (state.queue.len() + state.leases.len()) as u64;
        state.queue.drain().for_each(drop);
        // Leased and delayed messages are in the mailbox too; acks of the leased ones
        // will find nothing to settle.
        let dropped = dropped + state.delayed.len() as u64;
        state.leases.clear();
        state.delayed.clear();
        state.delayed_bytes = 0;
        state.deadlines.clear();
        state.bytes = 0;
        state.purged_below = state.next_id;
        let stored = state.link.as_ref().map(|link| {
            let record = Record::Purge {
                key: link.key,
                below: state.next_id,
            };
            let (done, stored) = crate::broker::completion();
            link.store.submit(vec![record], state.fsync(), done);
            stored
        });
        state.changed_at = Timestamp::now();
        state.admit_senders();
        (dropped, stored)
    }

    /// Applies new settings (already checked by the caller) and lets senders in if the
    /// limits grew. A durable mailbox's new definition is submitted under the same lock,
    /// so the log has the settings in the order they were made; the answer is then
    /// due once it is stored.
    pub fn update(
        &self,
        change: impl FnOnce(&mut Settings),
    ) -> Option<tokio::sync::oneshot::Receiver<Stored>> {
        let mut state = self.lock();
        change(&mut state.settings);
        state.changed_at = Timestamp::now();
        state.admit_senders();
        let (store, define) = self.definition_of(&state)?;
        let (done, stored) = crate::broker::completion();
        store.submit(vec![define], Fsync::Always, done);
        Some(stored)
    }

    /// Closes the mailbox for good: every waiter, now and later, gets `reason`. With
    /// `drop_messages` the queue is emptied too (removal); without, it stays for a final
    /// flush (shutdown). A durable mailbox's removal returns what completes once it is
    /// stored.
    pub fn close(
        &self,
        reason: ErrorReply,
        drop_messages: bool,
    ) -> Option<oneshot::Receiver<Stored>> {
        let mut state = self.lock();
        let receivers = state.receivers.drain();
        for waiter in receivers.into_iter().chain(state.peekers.drain()) {
            let _ = waiter.tx.send(Err(reason.clone()));
        }
        for (_, waiter) in std::mem::take(&mut state.senders) {
            let _ = waiter.tx.send(Err(reason.clone()));
        }
        let mut stored = None;
        if drop_messages {
            state.queue.drain().for_each(drop);
            state.leases.clear();
            state.delayed.clear();
            state.delayed_bytes = 0;
            state.deadlines.clear();
            state.bytes = 0;
            state.owner_charge = None;
            if let Some(link) = state.link.take() {
                let (done, removed) = crate::broker::completion();
                link.store
                    .submit(vec![Record::Drop { key: link.key }], Fsync::Always, done);
                stored = Some(removed);
            }
        }
        state.closed = Some(reason);
        if let Some(timekeeper) = state.timekeeper.take() {
            timekeeper.notify_one();
        }
        stored
    }

    /// Settles leased message `id` for good. Root or the lease's uid only. For a durable
    /// mailbox, the answer is due once the removal is stored.
    pub fn ack(&self, id: u64, uid: u32) -> OpResult<Option<oneshot::Receiver<Stored>>> {
        let mut state = self.lock();
        self.check_lease(&state, id, uid)?;
        let mut envelope = state.unlease(id).expect("checked");
        state.admit_senders();
        Ok(envelope.removal.take().map(Removal::commit_waiting))
    }

    /// Gives leased message `id` back, to be redelivered (or dead-lettered).
    pub fn nack(&self, id: u64, uid: u32) -> OpResult<()> {
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

    fn check_lease(&self, state: &State, id: u64, uid: u32) -> OpResult<()> {
        let Some(lease) = state.leases.get(&id) else {
            return Err(op_error(
                ErrorCode::NotLeased,
                format!(
                    "message {id} of mailbox {} is not leased: it was settled already, or its \
                     lease ended and it is back in the mailbox",
                    self.name
                ),
            ));
        };
        if uid != 0 && uid != lease.uid {
            return Err(op_error(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: message {id} of mailbox {} is leased to uid {}, not {uid}",
                    self.name, lease.uid
                ),
            ));
        }
        Ok(())
    }

    /// A dead letter of this mailbox could not be delivered: it counts as dropped.
    pub fn dead_letter_dropped(&self) {
        let mut state = self.lock();
        state.dead_lettered = state.dead_lettered.saturating_sub(1);
        state.dropped += 1;
    }

    /// Counts the mailbox against its new owner's quota instead of the old owner's.
    pub fn move_owner_charge(&self, charge: Charge) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.owner_charge = Some(charge);
        }
    }

    /// Messages and bytes queued.
    pub fn usage(&self) -> (u64, u64) {
        let state = self.lock();
        (state.queue.len() as u64, state.bytes)
    }

    pub fn info(&self) -> MailboxInfo {
        let state = self.lock();
        let s = &state.settings;
        MailboxInfo {
            name: self.name.clone(),
            messages: state.queue.len() as u64,
            bytes: state.bytes,
            max_msgs: s.limits.max_msgs,
            max_bytes: s.limits.max_bytes,
            max_msg_size: s.limits.max_msg_size,
            mode: s.ownership.mode,
            owner_uid: s.ownership.owner_uid,
            owner_gid: s.ownership.owner_gid,
            creator_uid: s.ownership.creator_uid,
            creator_gid: s.ownership.creator_gid,
            durable: s.fsync.is_some(),
            fsync: s.fsync,
            created_at: state.created_at,
            changed_at: state.changed_at,
            last_send: state.last_send,
            last_recv: state.last_recv,
            total_sent: state.total_sent,
            total_received: state.total_received,
            waiting_receivers: (state.receivers.len() + state.peekers.len()) as u64,
            waiting_senders: state.senders.len() as u64,
            unacked: state.leases.len() as u64,
            max_deliveries: s.max_deliveries,
            dead_letter: s.dead_letter.clone(),
            dead_lettered: state.dead_lettered,
            dropped: state.dropped,
            default_ttl_ms: s
                .default_ttl
                .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            expired: state.expired,
            delayed: state.delayed.len() as u64,
            timers: state.deadlines.len() as u64,
        }
    }
}

impl State {
    fn take_key(&mut self) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        key
    }

    fn fits(&self, len: u64) -> bool {
        let limits = &self.settings.limits;
        (self.queue.len() + self.leases.len() + self.delayed.len()) as u64 + self.storing
            < limits.max_msgs
            && self.bytes + self.delayed_bytes + self.storing_bytes + len <= limits.max_bytes
    }

    fn fsync(&self) -> Fsync {
        self.settings.fsync.unwrap_or(Fsync::Always)
    }

    /// The removal record a durable message will owe when delivered.
    fn removal(&self, id: u64) -> Option<Removal> {
        self.link.as_ref().map(|link| Removal {
            link: link.clone(),
            id,
            fsync: self.fsync(),
        })
    }

    /// Whether `incoming` can be accepted now: there is room, or a receiver is waiting
    /// for it (a hand-over takes no room).
    fn can_accept(&self, incoming: &Incoming) -> bool {
        self.fits(incoming.size()) || self.receivers.first_match(incoming.mtype).is_some()
    }

    /// Gives `incoming` its id and send statistics.
    fn stamp(&mut self, incoming: Incoming) -> Envelope {
        let clock = Instant::now();
        let ttl = incoming.ttl.or(self.settings.default_ttl);
        let id = self.next_id;
        self.next_id += 1;
        let now = Timestamp::now();
        self.total_sent += 1;
        self.last_send = Some(LastOp {
            at: now,
            pid: incoming.sender.pid,
        });
        Envelope {
            id,
            mtype: incoming.mtype,
            sender: incoming.sender,
            sent_at: now,
            headers: incoming.headers,
            deliveries: 0,
            payload: incoming.payload,
            _charge: incoming.charge,
            removal: None,
            expires_at: ttl.map(|ttl| clock + ttl),
            visible_at: incoming.delay.map(|delay| clock + delay),
        }
    }

    /// Records that `envelope` left the mailbox for the receiver `pid`.
    fn delivered(&mut self, mut envelope: Envelope, pid: u32) -> Envelope {
        envelope.deliveries += 1;
        self.total_received += 1;
        self.last_recv = Some(LastOp {
            at: Timestamp::now(),
            pid,
        });
        envelope
    }

    /// Accepts a message, answering `done` with its id: in a memory mailbox at once, to
    /// the first waiting receiver it matches or else into the queue; in a durable one
    /// the same, but only once the store has it.
    fn accept(&mut self, incoming: Incoming, done: Handoff<SentId>) {
        let mut envelope = self.stamp(incoming);
        let id = envelope.id;
        let Some(link) = &self.link else {
            self.offer_or_queue(envelope);
            let _ = done.send(Ok(SentId(id)));
            return;
        };
        let len = envelope.size();
        self.storing += 1;
        self.storing_bytes += len;
        let record = Record::Put(StoredMessage {
            key: link.key,
            id,
            mtype: envelope.mtype,
            sender: envelope.sender,
            sent_at: envelope.sent_at,
            headers: envelope.headers.clone(),
            expires_at: envelope.expires_at.map(wall),
            not_before: envelope.visible_at.map(wall),
            deliveries: 0,
            payload: envelope.payload.clone(),
        });
        envelope.removal = self.removal(id);
        let me = self.me.clone();
        let store = link.store.clone();
        store.submit(vec![record], self.fsync(), move |stored: Stored| {
            if let Some(mailbox) = me.upgrade() {
                let mut state = mailbox.lock();
                state.storing -= 1;
                state.storing_bytes -= len;
                if stored.is_ok() && state.closed.is_none() && id >= state.purged_below {
                    state.offer_or_queue(envelope);
                } else {
                    // Not stored, purged or removed meanwhile: it never becomes visible,
                    // and its room goes to whoever waits for it.
                    drop(envelope);
                    state.admit_senders();
                }
            }
            let _ = done.send(stored.map(|()| SentId(id)));
        });
    }

    /// Gives `envelope` (already out of the queue, its bytes no longer counted) to a
    /// receiver: taken outright, or leased — then a copy goes out and the original waits
    /// for its ack, still counted in the mailbox.
    fn take(&mut self, envelope: Envelope, taker: &Taker) -> Envelope {
        let envelope = self.delivered(envelope, taker.pid);
        let Some(terms) = &taker.lease else {
            return envelope;
        };
        let wire = envelope.copy();
        if let Some(link) = &self.link {
            // Written with the next sync, not waited for: it only keeps the count right
            // across a crash.
            let record = Record::Delivered {
                key: link.key,
                id: envelope.id,
                deliveries: envelope.deliveries,
            };
            link.store.record(vec![record], Fsync::Never);
        }
        self.next_lease += 1;
        let lease_no = self.next_lease;
        let id = envelope.id;
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
    fn unlease(&mut self, id: u64) -> Option<Envelope> {
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

    /// A leased message came back unacknowledged: to its old place (a waiting receiver
    /// may take it at once), or, past `max_deliveries`, to the dead-letter mailbox — or
    /// away, counted, without one.
    fn return_message(&mut self, envelope: Envelope, name: &MailboxName) {
        let max = self.settings.max_deliveries;
        if envelope.expires_at.is_some_and(|at| at <= Instant::now()) {
            self.expire(envelope, name);
        } else if max == 0 || envelope.deliveries < max {
            self.offer_or_queue(envelope);
        } else {
            self.dead_letter(envelope, name);
        }
    }

    /// A message's TTL passed undelivered.
    fn expire(&mut self, envelope: Envelope, name: &MailboxName) {
        self.expired += 1;
        self.dead_letter(envelope, name);
    }

    /// Sends `envelope` to the dead-letter mailbox, or, without one, drops it and counts
    /// it. Either way it has left this mailbox for good.
    fn dead_letter(&mut self, mut envelope: Envelope, name: &MailboxName) {
        match &self.settings.dead_letter {
            Some(to) => {
                self.dead_lettered += 1;
                let letter = DeadLetter {
                    from: name.clone(),
                    source: self.me.clone(),
                    route_owner: self.settings.ownership.route_owner(),
                    to: to.clone(),
                    envelope,
                };
                if let Err(refused) = self.dead_letters.try_send(letter) {
                    // No broker to deliver it, or more dead letters waiting for it than
                    // the bound: it is dropped after all, and counted.
                    let (letter, why) = match refused {
                        mpsc::error::TrySendError::Full(letter) => {
                            (letter, "too many dead letters are waiting for delivery")
                        }
                        mpsc::error::TrySendError::Closed(letter) => {
                            (letter, "the daemon is stopping")
                        }
                    };
                    self.dead_lettered -= 1;
                    self.dropped += 1;
                    if let Some(suppressed) = self.drop_log.allow() {
                        tracing::warn!(
                            "dead letter {} of mailbox {name} dropped: {why} \
                             ({suppressed} more dropped since the last such line)",
                            letter.envelope.id
                        );
                    }
                    if let Some(removal) = letter.envelope.removal {
                        removal.commit();
                    }
                }
            }
            None => {
                self.dropped += 1;
                if let Some(removal) = envelope.removal.take() {
                    removal.commit();
                }
            }
        }
        self.admit_senders();
    }

    /// Adds something due at `at`, waking the timekeeper if it is now the earliest.
    fn schedule(&mut self, at: Instant, timer: Timer) {
        let earliest = self.deadlines.first().is_none_or(|first| at < first.0);
        self.deadlines.insert((at, timer));
        self.wake_timekeeper(earliest);
    }

    /// Does everything that is due: ends leases, shows delayed messages, expires
    /// messages whose TTL passed.
    fn expire_due(&mut self, now: Instant, name: &MailboxName) {
        while let Some(&(at, timer)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            match timer {
                Timer::LeaseEnds { id, lease_no } => {
                    if self.leases.get(&id).is_some_and(|l| l.lease_no == lease_no) {
                        let envelope = self.unlease(id).expect("lease exists");
                        self.return_message(envelope, name);
                    }
                }
                Timer::Visible { id } => {
                    if let Some(mut envelope) = self.delayed.remove(&id) {
                        self.delayed_bytes -= envelope.size();
                        envelope.visible_at = None;
                        self.return_message(envelope, name);
                    }
                }
                Timer::Expires { id, mtype } => {
                    // The timer leaves with its message, so the message is queued.
                    let envelope = self.queue.remove(Slot { mtype, id }).inspect(|e| {
                        self.bytes -= e.size();
                    });
                    if let Some(envelope) = envelope {
                        self.expire(envelope, name);
                    }
                }
            }
        }
    }

    /// Makes sure a task ends leases on time: starts it, or wakes it when the earliest
    /// deadline moved closer.
    fn wake_timekeeper(&mut self, earliest_changed: bool) {
        match &self.timekeeper {
            Some(wake) => {
                if earliest_changed {
                    wake.notify_one();
                }
            }
            None => {
                let wake = Arc::new(Notify::new());
                self.timekeeper = Some(wake.clone());
                self.runtime.spawn(keep_time(self.me.clone(), wake));
            }
        }
    }

    /// Hands `envelope` to waiting receivers: a copy to each matching peeker, the message
    /// itself to the first matching receiver (FIFO among those whose selector matches).
    /// Waiters exist only while nothing queued matched them, so the new message is the
    /// oldest match for each. What no receiver takes is queued.
    fn offer_or_queue(&mut self, mut envelope: Envelope) {
        if let Some(at) = envelope.visible_at.filter(|&at| at > Instant::now()) {
            let id = envelope.id;
            self.delayed_bytes += envelope.size();
            self.delayed.insert(id, envelope);
            self.schedule(at, Timer::Visible { id });
            return;
        }
        loop {
            let taker = self.receivers.first_match(envelope.mtype);
            // Peekers that came before the receiver that takes it see it.
            while let Some(key) = self
                .peekers
                .first_match(envelope.mtype)
                .filter(|&key| taker.is_none_or(|taker| key < taker))
            {
                let peeker = self.peekers.remove(key).expect("found");
                let _ = peeker.tx.send(Ok(envelope.copy()));
            }
            let Some(key) = taker else { break };
            let waiter = self.receivers.remove(key).expect("found");
            let id = envelope.id;
            let handed = self.take(envelope, &waiter.taker);
            match waiter.tx.send(Ok(handed)) {
                Ok(()) => return,
                // Unreachable while waiters deregister under this lock before their
                // receiver goes; kept so a message can never be lost that way.
                Err(back) => {
                    let back = back.expect("we sent Ok");
                    envelope = match self.unlease(id) {
                        Some(leased) => leased,
                        None => back,
                    };
                    envelope.deliveries -= 1;
                    self.total_received -= 1;
                }
            }
        }
        self.bytes += envelope.size();
        if let Some(at) = envelope.expires_at {
            let (id, mtype) = (envelope.id, envelope.mtype);
            self.schedule(at, Timer::Expires { id, mtype });
        }
        self.queue.insert(envelope.mtype, envelope.id, envelope);
    }

    /// Takes the message at `slot` out of the queue, with its share of the bytes and its
    /// expiry timer: a timer lives only as long as what it times.
    fn dequeue(&mut self, slot: Slot) -> Envelope {
        let envelope = self.queue.remove(slot).expect("slot is queued");
        self.bytes -= envelope.size();
        if let Some(at) = envelope.expires_at {
            let (id, mtype) = (envelope.id, envelope.mtype);
            self.deadlines.remove(&(at, Timer::Expires { id, mtype }));
        }
        envelope
    }

    /// Lets waiting senders in, oldest first, while their messages can be accepted. A
    /// sender that does not fit keeps later ones waiting too, so none is starved.
    fn admit_senders(&mut self) {
        while let Some((_, front)) = self.senders.first_key_value() {
            if !self.can_accept(&front.incoming) {
                break;
            }
            let (_, waiter) = self.senders.pop_first().expect("first exists");
            self.accept(waiter.incoming, waiter.tx);
        }
    }
}

/// A stored wall-clock time as a deadline on the monotonic clock (now, if it has
/// passed).
fn monotonic(at: Timestamp) -> Instant {
    let left = at.0.saturating_sub(Timestamp::now().0);
    Instant::now() + Duration::from_nanos(left)
}

/// A monotonic deadline as a wall-clock time, for the store.
fn wall(at: Instant) -> Timestamp {
    let left = at.saturating_duration_since(Instant::now());
    Timestamp(
        Timestamp::now()
            .0
            .saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX)),
    )
}

/// Ends a mailbox's leases on time: sleeps until the earliest deadline (or until woken
/// because an earlier one appeared), ends what is due, and stops when the mailbox is
/// closed or gone.
async fn keep_time(mailbox: Weak<Mailbox>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(mailbox) = mailbox.upgrade() else {
                return;
            };
            let mut state = mailbox.lock();
            if state.closed.is_some() {
                return;
            }
            state.expire_due(Instant::now(), &mailbox.name);
            state.deadlines.first().map(|d| d.0)
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // Lets the timekeeper see the mailbox is gone instead of waiting for ever.
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(wake) = state.timekeeper.take() {
            wake.notify_one();
        }
    }
}

/// The two kinds of waiting request, and how each undoes a hand-over its waiter did not
/// live to see.
pub(crate) trait Side: Sized + Send + 'static {
    /// Removes the waiter `key`, returning its hand-off channel; `None` if it has
    /// already been completed.
    fn deregister(state: &mut State, key: u64) -> Option<Handoff<Self>>;
    fn reclaim(state: &mut State, value: Self);
}

impl Side for Envelope {
    fn deregister(state: &mut State, key: u64) -> Option<Handoff<Self>> {
        let waiter = state
            .receivers
            .remove(key)
            .or_else(|| state.peekers.remove(key))?;
        Some(waiter.tx)
    }

    /// A message was handed to a receiver that is gone: it goes back to where it was
    /// (or to the next waiting receiver), as if it had never left.
    fn reclaim(state: &mut State, mut envelope: Envelope) {
        if envelope.removal.is_none() {
            // A copy sent for a lease: the leased original is what goes back.
            if let Some(leased) = state.unlease(envelope.id) {
                envelope = leased;
            }
        }
        envelope.deliveries = envelope.deliveries.saturating_sub(1);
        state.total_received = state.total_received.saturating_sub(1);
        state.offer_or_queue(envelope);
    }
}

impl Side for SentId {
    fn deregister(state: &mut State, key: u64) -> Option<Handoff<Self>> {
        state.senders.remove(&key).map(|w| w.tx)
    }

    /// The message was accepted; its sender just will not hear of it.
    fn reclaim(_: &mut State, _: SentId) {}
}

/// Cancels a wait synchronously: under the mailbox lock the waiter is deregistered and
/// completed with the given error, so nothing can be handed to it afterwards. If it was
/// completed first, nothing happens and its normal result stands.
pub(crate) type Canceller = Box<dyn FnOnce(ErrorReply) + Send + Sync>;

/// A request waiting on a mailbox. Await [`Waiter::wait`]; dropping it at any point
/// deregisters it without losing a message.
#[derive(Debug)]
pub(crate) struct Waiter<T: Side> {
    mailbox: Arc<Mailbox>,
    key: u64,
    rx: oneshot::Receiver<OpResult<T>>,
    timeout: Option<Duration>,
    /// What is being waited for, for the timeout message.
    what: String,
    finished: bool,
    /// What this waiter is handed is a copy (a peek): undelivered, it is dropped.
    copy: bool,
}

impl<T: Side> Waiter<T> {
    fn new(
        mailbox: Arc<Mailbox>,
        key: u64,
        rx: oneshot::Receiver<OpResult<T>>,
        timeout: Option<Duration>,
        what: String,
    ) -> Self {
        Self {
            mailbox,
            key,
            rx,
            timeout,
            what,
            finished: false,
            copy: false,
        }
    }

    /// A handle that cancels this wait at once, from outside the task awaiting it.
    pub fn canceller(&self) -> Canceller {
        let (mailbox, key) = (self.mailbox.clone(), self.key);
        Box::new(move |reason| {
            let mut state = mailbox.lock();
            if let Some(tx) = T::deregister(&mut state, key) {
                let _ = tx.send(Err(reason));
            }
        })
    }

    /// Waits until the mailbox completes the request, it is closed, or the timeout ends.
    pub async fn wait(mut self) -> OpResult<T> {
        let handed = match self.timeout {
            None => (&mut self.rx).await.ok(),
            Some(limit) => match tokio::time::timeout(limit, &mut self.rx).await {
                Ok(handed) => handed.ok(),
                Err(_) => {
                    let withdrawn = T::deregister(&mut self.mailbox.lock(), self.key).is_some();
                    if withdrawn {
                        self.finished = true;
                        return Err(op_error(
                            ErrorCode::TimedOut,
                            format!("timed out after {} ms: {}", limit.as_millis(), self.what),
                        ));
                    }
                    // Completed just as the time ran out, or handed over and being stored
                    // (a durable send): the result is here or on its way.
                    (&mut self.rx).await.ok()
                }
            },
        };
        self.finished = true;
        handed.unwrap_or_else(|| Err(op_error(ErrorCode::Internal, "waiter abandoned".into())))
    }
}

impl<T: Side> Drop for Waiter<T> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.mailbox.lock();
        if T::deregister(&mut state, self.key).is_none() {
            // Already completed: undo the hand-over this waiter will never report.
            if let Ok(Ok(value)) = self.rx.try_recv()
                && !self.copy
            {
                T::reclaim(&mut state, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Timers on tokio's paused clock: delays, TTLs and leases end exactly when due,
    //! with no real waiting.

    use super::*;
    use crate::quota::Accounts;

    fn mailbox(
        default_ttl: Option<Duration>,
        dead_letter: Option<&str>,
    ) -> (Arc<Mailbox>, mpsc::Receiver<DeadLetter>) {
        let (tx, rx) = mpsc::channel(16);
        let settings = Settings {
            ownership: Ownership {
                owner_uid: 1,
                owner_gid: 1,
                creator_uid: 1,
                creator_gid: 1,
                mode: 0o600,
            },
            fsync: None,
            limits: Limits {
                max_msgs: 10,
                max_bytes: 1000,
                max_msg_size: 100,
            },
            max_deliveries: 0,
            dead_letter: dead_letter.map(|n| MailboxName::new(n).unwrap()),
            default_ttl,
        };
        let charge = Accounts::default()
            .account(1)
            .force(crate::quota::Resource::Mailboxes, 1);
        let name = MailboxName::new("timed").unwrap();
        (Mailbox::new(name, settings, charge, None, tx), rx)
    }

    fn send(m: &Arc<Mailbox>, payload: &str, ttl: Option<u64>, delay: Option<u64>) -> u64 {
        let incoming = Incoming {
            mtype: 1,
            sender: Credentials {
                pid: 1,
                uid: 1,
                gid: 1,
            },
            headers: Headers::default(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            charge: None,
            ttl: ttl.map(Duration::from_secs),
            delay: delay.map(Duration::from_secs),
        };
        match m.send(incoming, Wait::NoWait) {
            Pending::Ready(Ok(SentId(id))) => id,
            other => panic!("{other:?}"),
        }
    }

    fn take(m: &Arc<Mailbox>) -> Option<Envelope> {
        let taker = Taker {
            peek: false,
            pid: 1,
            lease: None,
        };
        match m.recv(Selector::Any, taker, Wait::NoWait) {
            Pending::Ready(Ok(e)) => Some(e),
            Pending::Ready(Err(e)) if e.code == ErrorCode::WouldBlock => None,
            other => panic!("{other:?}"),
        }
    }

    /// Lets the timekeeper run after the clock moved.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_message_is_invisible_until_its_time() {
        let (m, _) = mailbox(None, None);
        send(&m, "later", None, Some(10));
        send(&m, "now", None, None);
        assert_eq!(&take(&m).unwrap().payload[..], b"now");
        assert!(take(&m).is_none());
        assert_eq!(m.info().delayed, 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        settle().await;
        assert!(take(&m).is_none(), "one second early");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(&take(&m).unwrap().payload[..], b"later");
        assert_eq!(m.info().delayed, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_receiver_gets_a_delayed_message_when_it_shows() {
        let (m, _) = mailbox(None, None);
        let taker = Taker {
            peek: false,
            pid: 1,
            lease: None,
        };
        let Pending::Wait(waiter) = m.recv(Selector::Any, taker, Wait::Forever) else {
            panic!("nothing to take yet");
        };
        send(&m, "later", None, Some(60));
        // The paused clock jumps to the next timer once everything is idle.
        let got = waiter.wait().await.unwrap();
        assert_eq!(&got.payload[..], b"later");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_messages_are_never_delivered_and_go_to_the_dead_letter_mailbox() {
        let (m, mut dead) = mailbox(None, Some("dead"));
        send(&m, "short", Some(5), None);
        send(&m, "long", Some(50), None);
        tokio::time::advance(Duration::from_secs(6)).await;
        settle().await;
        let letter = dead.try_recv().expect("the expired one was dead-lettered");
        assert_eq!(&letter.envelope.payload[..], b"short");
        assert_eq!(letter.to.as_str(), "dead");
        // What is left of its TTL goes along: none.
        assert_eq!(letter.envelope.into_incoming().ttl, Some(Duration::ZERO));
        assert_eq!(&take(&m).unwrap().payload[..], b"long");
        let info = m.info();
        assert_eq!((info.expired, info.dead_lettered, info.messages), (1, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_receive_never_takes_an_expired_message_even_before_the_timekeeper_runs() {
        let (m, _) = mailbox(None, None);
        send(&m, "stale", Some(5), None);
        send(&m, "fresh", None, None);
        // Stop the timekeeper from running: the receive below comes first.
        m.lock().deadlines.clear();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(&take(&m).unwrap().payload[..], b"fresh");
        assert_eq!(m.info().expired, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_ttl_applies_and_expiry_without_a_dead_letter_mailbox_drops() {
        let (m, _) = mailbox(Some(Duration::from_secs(3)), None);
        send(&m, "a", None, None);
        send(&m, "b", Some(100), None);
        tokio::time::advance(Duration::from_secs(4)).await;
        settle().await;
        assert_eq!(&take(&m).unwrap().payload[..], b"b");
        let info = m.info();
        assert_eq!(
            (info.expired, info.dropped, info.default_ttl_ms),
            (1, 1, 3000)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leased_message_that_expires_meanwhile_is_not_redelivered() {
        let (m, _) = mailbox(None, None);
        let id = send(&m, "job", Some(10), None);
        let taker = Taker {
            peek: false,
            pid: 1,
            lease: Some(LeaseTerms {
                timeout: Duration::from_secs(60),
                uid: 1,
                book: None,
            }),
        };
        let Pending::Ready(Ok(_)) = m.recv(Selector::Any, taker, Wait::NoWait) else {
            panic!("leased");
        };
        tokio::time::advance(Duration::from_secs(20)).await;
        settle().await;
        assert_eq!(m.info().unacked, 1, "a lease keeps it while it runs");
        m.nack(id, 1).unwrap();
        assert!(take(&m).is_none());
        assert_eq!(m.info().expired, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_received_message_takes_its_ttl_timer_with_it() {
        let (m, _) = mailbox(None, None);
        for i in 0..5 {
            send(&m, &format!("m{i}"), Some(3600), None);
        }
        assert_eq!(m.info().timers, 5);
        for _ in 0..5 {
            take(&m).expect("queued");
        }
        assert_eq!(m.info().timers, 0, "no timer outlives its message");
        // Leased, it has a lease timer only; back in the queue, its TTL timer again.
        let id = send(&m, "leased", Some(3600), None);
        let taker = Taker {
            peek: false,
            pid: 1,
            lease: Some(LeaseTerms {
                timeout: Duration::from_secs(60),
                uid: 1,
                book: None,
            }),
        };
        let Pending::Ready(Ok(_)) = m.recv(Selector::Any, taker, Wait::NoWait) else {
            panic!("leased");
        };
        assert_eq!(m.info().timers, 1);
        m.nack(id, 1).unwrap();
        assert_eq!(m.info().timers, 1);
        m.purge();
        assert_eq!(m.info().timers, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peek_copy_whose_waiter_is_gone_is_dropped_not_put_back() {
        let (m, _) = mailbox(None, None);
        let peeker = Taker {
            peek: true,
            pid: 1,
            lease: None,
        };
        let Pending::Wait(waiter) = m.recv(Selector::Any, peeker, Wait::Forever) else {
            panic!("nothing to peek at yet");
        };
        send(&m, "only", None, None);
        // The peeker was handed a copy, but goes away without reading it.
        drop(waiter);
        assert_eq!(m.info().messages, 1, "the original stays, and only it");
        assert_eq!(&take(&m).unwrap().payload[..], b"only");
        assert!(take(&m).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn headers_count_against_max_bytes() {
        let (m, _) = mailbox(None, None);
        let incoming = |content_type: usize| Incoming {
            mtype: 1,
            sender: Credentials {
                pid: 1,
                uid: 1,
                gid: 1,
            },
            headers: Headers {
                content_type: Some("x".repeat(content_type)),
                ..Headers::default()
            },
            payload: Bytes::new(),
            charge: None,
            ttl: None,
            delay: None,
        };
        // max_bytes is 1000: two 400-byte header sets fit, a third does not.
        for _ in 0..2 {
            assert!(matches!(
                m.send(incoming(400), Wait::NoWait),
                Pending::Ready(Ok(_))
            ));
        }
        assert_eq!(m.info().bytes, 800);
        let Pending::Ready(Err(full)) = m.send(incoming(400), Wait::NoWait) else {
            panic!("over max_bytes");
        };
        assert_eq!(full.code, ErrorCode::WouldBlock);
        let Pending::Ready(Err(large)) = m.send(incoming(1001), Wait::NoWait) else {
            panic!("larger than max_bytes");
        };
        assert_eq!(large.code, ErrorCode::TooLarge);
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_goes_to_the_oldest_matching_receiver_past_any_number_that_never_match() {
        let (m, _) = mailbox(None, None);
        let taker = || Taker {
            peek: false,
            pid: 1,
            lease: None,
        };
        let mut parked = Vec::new();
        for t in 2..1000 {
            let Pending::Wait(w) = m.recv(Selector::Type(t), taker(), Wait::Forever) else {
                panic!("waits");
            };
            parked.push(w);
        }
        let Pending::Wait(first) = m.recv(Selector::AtMost(1), taker(), Wait::Forever) else {
            panic!("waits");
        };
        let Pending::Wait(second) = m.recv(Selector::Any, taker(), Wait::Forever) else {
            panic!("waits");
        };
        assert_eq!(m.info().waiting_receivers, 1000);
        send(&m, "one", None, None);
        send(&m, "two", None, None);
        assert_eq!(&first.wait().await.unwrap().payload[..], b"one");
        assert_eq!(&second.wait().await.unwrap().payload[..], b"two");
        drop(parked);
        assert_eq!(m.info().waiting_receivers, 0);
        assert_eq!(m.info().messages, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_past_the_backlog_are_dropped_and_counted() {
        // The test mailbox's dead-letter channel holds 16, and nothing delivers them.
        let (m, mut dead) = mailbox(None, Some("dead"));
        m.update(|s| s.limits.max_msgs = 100);
        for i in 0..20 {
            send(&m, &format!("m{i}"), Some(1), None);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        let info = m.info();
        assert_eq!(
            (info.expired, info.dead_lettered, info.dropped),
            (20, 16, 4)
        );
        let mut waiting = 0;
        while dead.try_recv().is_ok() {
            waiting += 1;
        }
        assert_eq!(waiting, 16);
    }
}
