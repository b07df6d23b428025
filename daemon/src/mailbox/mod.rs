//! One mailbox: its queued messages (a [`TypeIndex`]), the receivers and senders waiting
//! on it, its settings and counters, and the operations on it — send, receive, peek,
//! purge, update, close, info — all under one lock.
//!
//! All of it sits behind one `std::sync::Mutex`, held only for the few index operations
//! of one request and never across an `.await`. Waiting is done by handing work to the
//! mailbox: a receiver that finds nothing registers a `RecvWaiter` and a sender that
//! finds no room registers its message as a `SendWaiter`; whoever later changes the
//! mailbox completes them under the same lock, in FIFO order. A waiting request is a
//! [`Waiter`] future whose `Drop` deregisters it and puts back anything handed to it in
//! the meantime, so a cancelled or timed-out receive never loses a message.
//!
//! The rest of a mailbox's concerns live in its child modules, which share [`State`]:
//! `envelope` (a message and its size), `waiters` (registration, hand-over and
//! cancellation), `leases` (acknowledged receive), `timers` (deadlines and the
//! timekeeper), `dead_letters` (where undeliverable messages go) and `durable` (the
//! link to the store).

mod dead_letters;
mod durable;
mod envelope;
mod error;
mod leases;
mod parked;
mod timers;
mod waiters;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ipc_proto::{Fsync, LastOp, MailboxInfo, MailboxName, Selector, Timestamp, Wait};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::config::Limits;
use crate::index::{Slot, TypeIndex};
use crate::logging::Throttle;
use crate::perm::Ownership;
use crate::quota::Charge;
use crate::store::{Record, Stored};

pub use self::dead_letters::{DeadLetter, DeadLetters};
pub use self::durable::Link;
pub use self::envelope::{
    Envelope, Incoming, Memfd, OWN_PAYLOAD_UP_TO, Origin, SentId, headers_size,
};
pub use self::error::{
    Cancelled, Closed, Empty, Full, Interrupted, LeaseError, RecvError, SendError, SizeBound,
};
pub use self::leases::LeaseBook;
pub(crate) use self::leases::LeaseTerms;
use self::leases::Leased;
pub use self::parked::Completions;
pub(crate) use self::parked::{Completed, Parked, Received};
use self::timers::Timer;
pub(crate) use self::waiters::{Canceller, KeyMap, Pending, Side, Waiter, WaiterGroup};
use self::waiters::{Handoff, RecvWaiter, SendWaiter, WaiterIndex};

/// How a receive takes its message.
#[derive(Debug, Clone)]
pub(crate) struct Taker {
    /// Copy and leave it.
    pub peek: bool,
    pub pid: u32,
    /// Lease it (acknowledged receive) rather than take it.
    pub lease: Option<LeaseTerms>,
    /// Take no message with a larger payload: it stays, and the receive fails
    /// ([`RecvError::TooBig`], SysV's `E2BIG`).
    pub max_size: Option<u64>,
}

impl Taker {
    /// Why `envelope` is too large for this receive to take, if it is.
    fn refuses(&self, envelope: &Envelope) -> Option<RecvError> {
        let max = self.max_size?;
        let size = envelope.payload().len() as u64;
        (size > max).then_some(RecvError::TooBig {
            id: envelope.id(),
            size,
            max,
        })
    }
}

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
    /// Make room for a new message by dropping the oldest (counted in `dropped`)
    /// instead of refusing it or making its sender wait: a subscription's private
    /// mailbox, whose reader may be slow but must never hold up a publisher. Only for
    /// memory mailboxes.
    pub drop_oldest: bool,
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
    closed: Option<Closed>,
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
    /// The time of the batch being sent or taken under this lock, read once for all of
    /// its messages: they were asked for at once.
    batch_clock: Option<Timestamp>,
}

/// A message given its place in a mailbox, not yet made an [`Envelope`]: a durable
/// mailbox makes it one once it is stored, on the store's thread, so that the messages
/// it keeps are not allocated among the short-lived things of their requests.
#[derive(Debug)]
struct Stamped {
    id: u64,
    sent_at: Timestamp,
    expires_at: Option<Instant>,
    visible_at: Option<Instant>,
    incoming: Incoming,
}

impl Stamped {
    fn into_envelope(self) -> Envelope {
        let Incoming {
            mtype,
            origin,
            headers,
            payload,
            memfd,
            charge,
            ..
        } = self.incoming;
        Envelope::new(
            self.id,
            mtype,
            origin,
            self.sent_at,
            headers.into_inner(),
            payload,
            memfd,
            charge,
            self.expires_at,
            self.visible_at,
        )
    }
}

/// What a mailbox recovered from the store had done before: when it was made, and the
/// id its next message gets.
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub created_at: Timestamp,
    pub next_id: u64,
}

/// One named mailbox.
#[derive(Debug)]
pub struct Mailbox {
    name: MailboxName,
    /// A number no other mailbox gets while the daemon runs (a SysV queue id).
    serial: u64,
    /// Changes whenever its settings may have (ownership among them) and when it closes:
    /// what a connection read of it before is still true while this has not moved.
    version: AtomicU64,
    state: Mutex<State>,
}

impl Mailbox {
    /// A new, empty mailbox; durable if `link` is given.
    pub fn new(
        name: MailboxName,
        serial: u64,
        settings: Settings,
        owner_charge: Charge,
        link: Option<Link>,
        dead_letters: DeadLetters,
    ) -> Arc<Self> {
        let history = History {
            created_at: Timestamp::now(),
            next_id: 1,
        };
        Self::restore(
            name,
            serial,
            settings,
            owner_charge,
            link,
            dead_letters,
            history,
        )
    }

    /// A mailbox as recovered from the store (or new): empty, with ids continuing at
    /// `history.next_id`; its messages are put back with [`Mailbox::restore_message`].
    pub fn restore(
        name: MailboxName,
        serial: u64,
        settings: Settings,
        owner_charge: Charge,
        link: Option<Link>,
        dead_letters: DeadLetters,
        history: History,
    ) -> Arc<Self> {
        let History {
            created_at,
            next_id,
        } = history;
        Arc::new_cyclic(|me| Self {
            name,
            serial,
            version: AtomicU64::new(0),
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
                batch_clock: None,
            }),
        })
    }

    pub fn name(&self) -> &MailboxName {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still consistent enough
        // to keep serving, since every mutation is a few index operations.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A batch sets it under the lock and clears it before letting go; a panic in
        // between must not leave every later message stamped with that batch's time.
        state.batch_clock = None;
        state
    }

    pub fn settings(&self) -> Settings {
        self.lock().settings.clone()
    }

    /// Who owns it and its mode: what a permission check reads, without a copy of the
    /// rest (a dead-letter name is an allocation).
    pub fn ownership(&self) -> Ownership {
        self.lock().settings.ownership
    }

    /// Its ownership, and the [`version`](Self::version) that ownership is of, unless it
    /// is closed (a closed mailbox's version never moves again).
    pub fn versioned_ownership(&self) -> (Ownership, Option<u64>) {
        let state = self.lock();
        let version = state
            .closed
            .is_none()
            .then(|| self.version.load(Ordering::Acquire));
        (state.settings.ownership, version)
    }

    /// A number that moves whenever the settings may have changed, or the mailbox
    /// closed: while it has not moved, its ownership as read with it still holds.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Puts a message in, hands it to a waiting receiver, or waits for room.
    pub(crate) fn send(self: &Arc<Self>, incoming: Incoming, wait: Wait) -> Pending<SentId> {
        // The clock is read before the lock is taken, not under it: the lock is what the
        // mailbox's senders and receivers wait for, and a message's time is when it was
        // asked to be sent as well as when it got in (`stamp` keeps the times in order).
        let now = Timestamp::now();
        let mut state = self.lock();
        state.batch_clock = Some(now);
        let sent = self.offer(&mut state, incoming, wait);
        state.batch_clock = None;
        sent
    }

    /// Sends, in order and under one lock, each message `next` gives until it gives none,
    /// gives an error, or a message is refused at once: each outcome goes to `outcome` as
    /// it is known, and what stopped them is returned. The messages of a batch take the
    /// lock once, not once each, and their outcomes are not gathered here first: the
    /// caller keeps them in the shape it answers with.
    pub(crate) fn send_each<E: From<SendError>>(
        self: &Arc<Self>,
        wait: Wait,
        mut next: impl FnMut() -> Option<Result<Incoming, E>>,
        mut outcome: impl FnMut(Pending<SentId>),
    ) -> Option<E> {
        let now = Timestamp::now();
        let mut state = self.lock();
        state.batch_clock = Some(now);
        let stopped = loop {
            let Some(incoming) = next() else { break None };
            let pending = match incoming {
                Ok(incoming) => self.offer(&mut state, incoming, wait),
                Err(e) => break Some(e),
            };
            match pending {
                Pending::Ready(Err(e)) => break Some(e.into()),
                pending => outcome(pending),
            }
        };
        state.batch_clock = None;
        stopped
    }

    /// [`Self::send`] with the lock held.
    fn offer(
        self: &Arc<Self>,
        state: &mut State,
        incoming: Incoming,
        wait: Wait,
    ) -> Pending<SentId> {
        if let Some(closed) = &state.closed {
            return Pending::Ready(Err(closed.clone().into()));
        }
        let len = incoming.payload.len() as u64;
        let size = incoming.size();
        let limits = state.settings.limits;
        if len > limits.max_msg_size {
            return Pending::Ready(Err(SendError::TooLarge {
                size: len,
                max: limits.max_msg_size,
                bound: SizeBound::MaxMsgSize,
                mailbox: self.name.clone(),
            }));
        }
        if size > limits.max_bytes {
            return Pending::Ready(Err(SendError::TooLarge {
                size,
                max: limits.max_bytes,
                bound: SizeBound::MaxBytes,
                mailbox: self.name.clone(),
            }));
        }
        if state.settings.drop_oldest && state.link.is_none() {
            state.make_room(&incoming);
        }
        if state.senders.is_empty() && state.can_accept(&incoming) {
            if state.link.is_none() {
                // Answered at once: no hand-off to make (or allocate).
                return Pending::Ready(Ok(state.accept_now(incoming)));
            }
            let (tx, rx) = oneshot::channel();
            state.accept(incoming, Handoff::Channel(tx));
            // Answered once stored; there is nothing to deregister meanwhile.
            let key = state.take_key();
            let mut waiter = Waiter::new(self.clone(), key, rx, None);
            waiter.storing = true;
            return Pending::Wait(waiter);
        }
        let full = Full {
            mailbox: self.name.clone(),
            messages: state.queue.len() as u64,
            max_msgs: limits.max_msgs,
            bytes: state.bytes,
            max_bytes: limits.max_bytes,
        };
        let timeout = match wait {
            Wait::NoWait => return Pending::Ready(Err(SendError::Full(full))),
            Wait::Forever => None,
            Wait::TimeoutMs(ms) => Some((Duration::from_millis(ms), full)),
        };
        let key = state.take_key();
        let (tx, rx) = oneshot::channel();
        let mut incoming = incoming;
        incoming.detach();
        let tx = Handoff::Channel(tx);
        state.senders.insert(key, SendWaiter { incoming, tx });
        Pending::Wait(Waiter::new(self.clone(), key, rx, timeout))
    }

    /// Takes (or, with `peek`, copies) the message `selector` selects, or waits for one.
    pub(crate) fn recv(
        self: &Arc<Self>,
        selector: Selector,
        taker: Taker,
        wait: Wait,
    ) -> Pending<Envelope> {
        match self.recv_or_park(selector, taker, wait, None) {
            Received::Pending(pending) => pending,
            Received::Parked(_) => unreachable!("a receive parks only where it may"),
        }
    }

    /// As [`Mailbox::recv`]; a receive that would wait for as long as it takes (not a
    /// peek) parks instead, its result to come to `completions`.
    pub(crate) fn recv_or_park(
        self: &Arc<Self>,
        selector: Selector,
        taker: Taker,
        wait: Wait,
        completions: Option<&Arc<Completions>>,
    ) -> Received {
        let peek = taker.peek;
        let mut state = self.lock();
        if let Some(closed) = &state.closed {
            return Pending::Ready(Err(closed.clone().into())).into();
        }
        while let Some(slot) = state.queue.find(selector) {
            // The clock is read only for a message that can expire.
            let expired = (state.queue.get(slot))
                .and_then(Envelope::expires_at)
                .is_some_and(|at| at <= Instant::now());
            if expired {
                // Due, but the timekeeper has not got to it yet: it is never delivered.
                let envelope = state.dequeue(slot);
                state.expire(envelope, &self.name);
                continue;
            }
            let refused = (state.queue.get(slot)).and_then(|e| taker.refuses(e));
            if let Some(refused) = refused {
                // Not taken: it stays where it is for a receiver with room for it.
                return Pending::Ready(Err(refused)).into();
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
            return Pending::Ready(Ok(envelope)).into();
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
                let too_big = taker
                    .max_size
                    .is_some_and(|max| state.senders[&key].incoming.payload.len() as u64 > max);
                if too_big {
                    // Admitted and queued, it is then refused as any queued message
                    // would be; it stays in the mailbox.
                    let waiter = state.senders.remove(&key).expect("found");
                    let envelope = state.stamp(waiter.incoming).into_envelope();
                    let _ = waiter.tx.send(Ok(SentId(envelope.id())));
                    let refused = taker.refuses(&envelope);
                    state.offer_or_queue(envelope);
                    return Pending::Ready(Err(refused.expect("too big"))).into();
                }
                let waiter = state.senders.remove(&key).expect("found");
                let envelope = state.stamp(waiter.incoming).into_envelope();
                let _ = waiter.tx.send(Ok(SentId(envelope.id())));
                return Pending::Ready(Ok(state.take(envelope, &taker))).into();
            }
        }
        let empty = Empty {
            mailbox: self.name.clone(),
            selector,
        };
        let timeout = match wait {
            Wait::NoWait => return Pending::Ready(Err(RecvError::Empty(empty))).into(),
            Wait::Forever => None,
            Wait::TimeoutMs(ms) => Some((Duration::from_millis(ms), empty)),
        };
        let key = state.take_key();
        if let Some(completions) = completions.filter(|_| !peek && timeout.is_none()) {
            let slot = completions.slot();
            let tx = Handoff::Parked(completions.clone(), slot);
            state
                .receivers
                .insert(key, selector, RecvWaiter { taker, tx });
            return Received::Parked(Parked {
                mailbox: self.clone(),
                key,
                slot,
            });
        }
        let (tx, rx) = oneshot::channel();
        let tx = Handoff::Channel(tx);
        let waiters = if peek {
            &mut state.peekers
        } else {
            &mut state.receivers
        };
        waiters.insert(key, selector, RecvWaiter { taker, tx });
        drop(state);
        let mut waiter = Waiter::new(self.clone(), key, rx, timeout);
        // What a peek is handed is a copy: if it is not delivered, it is dropped, never
        // put back in place of (or beside) the original.
        waiter.copy = peek;
        Pending::Wait(waiter).into()
    }

    /// Receivers (and peekers) waiting now.
    pub fn waiting_receivers(&self) -> usize {
        let state = self.lock();
        state.receivers.len() + state.peekers.len()
    }

    /// A copy of the message at position `index` of the queue, oldest first (SysV's
    /// `MSG_COPY`): it stays where it is. A walk of `index` steps (see
    /// [`TypeIndex::nth`]), the one operation that costs more than `O(log n)`, paid by
    /// whoever asks for a far position.
    pub(crate) fn peek_at(&self, index: u64) -> Result<Envelope, RecvError> {
        let state = self.lock();
        if let Some(closed) = &state.closed {
            return Err(closed.clone().into());
        }
        usize::try_from(index)
            .ok()
            .and_then(|n| state.queue.nth(n))
            .map(Envelope::copy)
            .ok_or_else(|| RecvError::NoSuchPosition {
                mailbox: self.name.clone(),
                index,
                messages: state.queue.len() as u64,
            })
    }

    /// Takes up to `max` more messages that `selector` selects and that are queued now,
    /// oldest first, while their sizes together stay within `room` bytes: the rest of a
    /// batched receive whose first message came through [`Self::recv`], under one lock.
    pub(crate) fn take_more(
        &self,
        selector: Selector,
        taker: &Taker,
        max: usize,
        mut room: u64,
    ) -> Vec<Envelope> {
        debug_assert!(!taker.peek, "a batch takes, it never peeks");
        let mut taken = Vec::new();
        let mut state = self.lock();
        if state.closed.is_some() {
            return taken;
        }
        let now = Instant::now();
        state.batch_clock = Some(Timestamp::now());
        while taken.len() < max {
            let Some(slot) = state.queue.find(selector) else {
                break;
            };
            let Some(envelope) = state.queue.get(slot) else {
                break;
            };
            if envelope.expires_at().is_some_and(|at| at <= now) {
                let envelope = state.dequeue(slot);
                state.expire(envelope, &self.name);
                continue;
            }
            let Some(left) = room.checked_sub(envelope.size()) else {
                break;
            };
            room = left;
            let envelope = state.dequeue(slot);
            taken.push(state.take(envelope, taker));
            state.admit_senders();
        }
        state.batch_clock = None;
        taken
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
            link.store.submit_waiting(vec![record], state.fsync())
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
        self.version.fetch_add(1, Ordering::AcqRel);
        state.changed_at = Timestamp::now();
        state.admit_senders();
        let (store, define) = self.definition_of(&state)?;
        Some(store.submit_waiting(vec![define], Fsync::Always))
    }

    /// Closes the mailbox for good: every waiter, now and later, gets `reason`. With
    /// `drop_messages` the queue is emptied too (removal); without, it stays for a final
    /// flush (shutdown). A durable mailbox's removal returns what completes once it is
    /// stored.
    pub fn close(&self, reason: Closed, drop_messages: bool) -> Option<oneshot::Receiver<Stored>> {
        let mut state = self.lock();
        self.version.fetch_add(1, Ordering::AcqRel);
        let receivers = state.receivers.drain();
        for waiter in receivers.into_iter().chain(state.peekers.drain()) {
            let _ = waiter.tx.send(Err(reason.clone().into()));
        }
        for (_, waiter) in std::mem::take(&mut state.senders) {
            let _ = waiter.tx.send(Err(reason.clone().into()));
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
                stored = Some(
                    link.store
                        .submit_waiting(vec![Record::Drop { key: link.key }], Fsync::Always),
                );
            }
        }
        state.closed = Some(reason);
        if let Some(timekeeper) = state.timekeeper.take() {
            timekeeper.notify_one();
        }
        stored
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
            // The broker knows the bindings; it fills them in (`Broker::info`).
            bindings: Vec::new(),
            serial: self.serial,
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

    /// Whether `incoming` can be accepted now: there is room, or a receiver is waiting
    /// for it (a hand-over takes no room).
    fn can_accept(&self, incoming: &Incoming) -> bool {
        self.fits(incoming.size()) || self.receivers.first_match(incoming.mtype).is_some()
    }

    /// Drops the oldest queued messages, counting them, until `incoming` fits (or nothing
    /// queued is left to drop: what is leased or delayed stays).
    fn make_room(&mut self, incoming: &Incoming) {
        while !self.can_accept(incoming) {
            let Some(slot) = self.queue.find(Selector::Any) else {
                return;
            };
            drop(self.dequeue(slot));
            self.dropped += 1;
        }
    }

    /// Gives `incoming` its id, time and deadlines, and counts it sent.
    fn stamp(&mut self, incoming: Incoming) -> Stamped {
        let ttl = incoming.ttl.or(self.settings.default_ttl);
        let clock = (ttl.is_some() || incoming.delay.is_some()).then(Instant::now);
        let id = self.next_id;
        self.next_id += 1;
        // A clock read before the lock was taken can be a little behind the last message
        // stamped (its sender read it later and got in first).
        let sent_at = not_before(self.clock(), self.last_send.map(|op| op.at));
        self.total_sent += 1;
        self.last_send = Some(LastOp {
            at: sent_at,
            pid: incoming.sender().pid,
        });
        Stamped {
            id,
            sent_at,
            expires_at: ttl.zip(clock).map(|(ttl, clock)| clock + ttl),
            visible_at: (incoming.delay)
                .zip(clock)
                .map(|(delay, clock)| clock + delay),
            incoming,
        }
    }

    /// The time now, or the time of the batch under way (a message's `sent_at`).
    fn clock(&self) -> Timestamp {
        self.batch_clock.unwrap_or_else(Timestamp::now)
    }

    /// Records that `envelope` left the mailbox for the receiver `pid`.
    fn delivered(&mut self, mut envelope: Envelope, pid: u32) -> Envelope {
        *envelope.deliveries_mut() += 1;
        self.total_received += 1;
        self.last_recv = Some(LastOp {
            at: self.receive_time(envelope.sent_at()),
            pid,
        });
        envelope
    }

    /// When a message sent at `sent_at` is received, as `stat` shows it: read from the
    /// coarse clock, never before that send nor before the last receive. `stat` keeps
    /// the time of the last receive as `msgrcv` keeps `msg_rtime` (to the second); the
    /// coarse clock is a tick behind at most (1–4 ms) and is read from memory, where the
    /// precise one reads the TSC — as precise, it was 2% of a streamed message's time
    /// (`perf record`), for a figure only `stat` shows.
    fn receive_time(&self, sent_at: Timestamp) -> Timestamp {
        let now = self.batch_clock.unwrap_or_else(coarse_now);
        let last = self.last_recv.map_or(sent_at, |op| op.at.max(sent_at));
        not_before(now, Some(last))
    }

    /// Accepts a message, answering `done` with its id: in a memory mailbox at once, to
    /// the first waiting receiver it matches or else into the queue; in a durable one
    /// the same, but only once the store has it.
    fn accept(&mut self, mut incoming: Incoming, done: Handoff<SentId>) {
        if self.link.is_none() {
            let _ = done.send(Ok(self.accept_now(incoming)));
            return;
        }
        // Kept until stored, and the store's record shares it.
        incoming.detach();
        let stamped = self.stamp(incoming);
        self.store_then_offer(stamped, done);
    }

    /// Accepts a message into a memory mailbox, which answers at once.
    fn accept_now(&mut self, incoming: Incoming) -> SentId {
        debug_assert!(self.link.is_none(), "a durable mailbox answers once stored");
        let envelope = self.stamp(incoming).into_envelope();
        let id = envelope.id();
        self.offer_or_queue(envelope);
        SentId(id)
    }

    /// Hands `envelope` to waiting receivers: a copy to each matching peeker, the message
    /// itself to the first matching receiver (FIFO among those whose selector matches).
    /// Waiters exist only while nothing queued matched them, so the new message is the
    /// oldest match for each. What no receiver takes is queued.
    fn offer_or_queue(&mut self, mut envelope: Envelope) {
        if let Some(at) = envelope.visible_at().filter(|&at| at > Instant::now()) {
            let id = envelope.id();
            self.delayed_bytes += envelope.size();
            self.delayed.insert(id, envelope);
            self.schedule(at, Timer::Visible { id });
            return;
        }
        loop {
            let taker = self.receivers.first_match(envelope.mtype());
            // Peekers that came before the receiver that takes it see it.
            while let Some(key) = self
                .peekers
                .first_match(envelope.mtype())
                .filter(|&key| taker.is_none_or(|taker| key < taker))
            {
                let peeker = self.peekers.remove(key).expect("found");
                let _ = peeker.tx.send(Ok(envelope.copy()));
            }
            let Some(key) = taker else { break };
            let waiter = self.receivers.remove(key).expect("found");
            if let Some(refused) = waiter.taker.refuses(&envelope) {
                // As the kernel wakes a receiver too small for the message with E2BIG
                // and offers the message on: the next matching receiver, or the queue.
                let _ = waiter.tx.send(Err(refused));
                continue;
            }
            let id = envelope.id();
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
                    *envelope.deliveries_mut() -= 1;
                    self.total_received -= 1;
                }
            }
        }
        self.bytes += envelope.size();
        if let Some(at) = envelope.expires_at() {
            let (id, mtype) = (envelope.id(), envelope.mtype());
            self.schedule(at, Timer::Expires { id, mtype });
        }
        self.queue.insert(envelope.mtype(), envelope);
    }

    /// Takes the message at `slot` out of the queue, with its share of the bytes and its
    /// expiry timer: a timer lives only as long as what it times.
    fn dequeue(&mut self, slot: Slot) -> Envelope {
        let envelope = self.queue.remove(slot).expect("slot is queued");
        self.bytes -= envelope.size();
        if let Some(at) = envelope.expires_at() {
            let (id, mtype) = (envelope.id(), envelope.mtype());
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

/// How far behind an earlier time a clock reading can plausibly be for a reason other
/// than the clock being set back: read before a lock that another got first, or a
/// coarse clock's tick.
const CLOCK_RACE: Duration = Duration::from_secs(1);

/// `now`, or `earlier` if `now` is a little behind it ([`CLOCK_RACE`]): times that follow
/// each other stay in order, and a clock set back further is followed.
fn not_before(now: Timestamp, earlier: Option<Timestamp>) -> Timestamp {
    match earlier {
        Some(earlier) if now < earlier && earlier.0 - now.0 < CLOCK_RACE.as_nanos() as u64 => {
            earlier
        }
        _ => now,
    }
}

/// The wall-clock time as of the last timer tick (`CLOCK_REALTIME_COARSE`).
fn coarse_now() -> Timestamp {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return Timestamp::now();
    }
    let nanos = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64);
    Timestamp(nanos)
}

#[cfg(test)]
mod tests;
