//! Waiting receivers indexed by their selector, so that handing a new message over finds
//! the oldest waiter whose selector matches its type in `O(log n)`, however many others
//! wait with selectors that do not match.
//!
//! A waiter is known by its key, which the mailbox hands out in arrival order, so "oldest"
//! is "smallest key". Each selector kind keeps what answers "the smallest key whose
//! selector matches type `m`" quickly:
//! - `Any`: one ordered set — its first key.
//! - `Type(t)`: a set per `t` — the first key of the set of `m`.
//! - `Except(t)`: a set per `t`, plus the sets' first keys in one ordered set. The answer
//!   is the first head whose `t` is not `m`: at most the first two heads.
//! - `AtMost(t)`: a set per bound `t`, plus a treap over the bounds whose nodes carry the
//!   smallest head key in their subtree: the smallest head among bounds `>= m` is one
//!   walk down the tree.
//!
//! Removing a waiter (handed a message, timed out, cancelled) is `O(log n)` too.
//!
//! This module also owns the rest of waiting: the waiting receivers and senders
//! themselves, the [`Waiter`] future a blocked request awaits (whose `Drop` deregisters
//! it and puts back anything handed to it meanwhile), its [`Canceller`], and [`Side`],
//! how each kind of request undoes a hand-over its waiter did not live to see.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use std::sync::Arc;
use std::time::Duration;

use ipc_proto::Selector;
use tokio::sync::oneshot;

use super::error::{Cancelled, Closed, Empty, Full, Interrupted, RecvError, SendError};
use super::parked::Completions;
use super::{Envelope, Incoming, Mailbox, SentId, State, Taker};

/// Waiters of type `W`, each under a unique key given in increasing arrival order.
#[derive(Debug)]
pub struct WaiterIndex<W> {
    waiters: HashMap<u64, (Selector, W), BuildHasherDefault<KeyHasher>>,
    any: BTreeSet<u64>,
    exact: HashMap<i64, BTreeSet<u64>>,
    except: HashMap<i64, BTreeSet<u64>>,
    /// `(first key, t)` of every non-empty `except` set.
    except_heads: BTreeSet<(u64, i64)>,
    at_most: HashMap<i64, BTreeSet<u64>>,
    /// Bound → first key of that bound's `at_most` set, with subtree minima.
    at_most_heads: Treap,
}

impl<W> Default for WaiterIndex<W> {
    fn default() -> Self {
        Self {
            waiters: HashMap::default(),
            any: BTreeSet::new(),
            exact: HashMap::new(),
            except: HashMap::new(),
            except_heads: BTreeSet::new(),
            at_most: HashMap::new(),
            at_most_heads: Treap::default(),
        }
    }
}

impl<W> WaiterIndex<W> {
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Adds a waiter; `key` must be unused.
    pub fn insert(&mut self, key: u64, selector: Selector, waiter: W) {
        let old = self.waiters.insert(key, (selector, waiter));
        debug_assert!(old.is_none(), "waiter key {key} reused");
        match selector {
            Selector::Any => {
                self.any.insert(key);
            }
            Selector::Type(t) => {
                self.exact.entry(t).or_default().insert(key);
            }
            Selector::Except(t) => {
                let set = self.except.entry(t).or_default();
                let before = set.first().copied();
                set.insert(key);
                let after = set.first().copied();
                reseat(&mut self.except_heads, t, before, after);
            }
            Selector::AtMost(t) => {
                let set = self.at_most.entry(t).or_default();
                let before = set.first().copied();
                set.insert(key);
                if before != set.first().copied() {
                    self.at_most_heads
                        .set(t, *set.first().expect("just inserted"));
                }
            }
        }
    }

    /// Takes out the waiter `key`, if it is still here.
    pub fn remove(&mut self, key: u64) -> Option<W> {
        let (selector, waiter) = self.waiters.remove(&key)?;
        match selector {
            Selector::Any => {
                self.any.remove(&key);
            }
            Selector::Type(t) => remove_from(&mut self.exact, t, key),
            Selector::Except(t) => {
                let set = self.except.get_mut(&t).expect("indexed");
                let before = set.first().copied();
                set.remove(&key);
                let after = set.first().copied();
                if after.is_none() {
                    self.except.remove(&t);
                }
                reseat(&mut self.except_heads, t, before, after);
            }
            Selector::AtMost(t) => {
                let set = self.at_most.get_mut(&t).expect("indexed");
                let before = set.first().copied();
                set.remove(&key);
                let after = set.first().copied();
                match after {
                    None => {
                        self.at_most.remove(&t);
                        self.at_most_heads.remove(t);
                    }
                    Some(head) if Some(head) != before => self.at_most_heads.set(t, head),
                    Some(_) => {}
                }
            }
        }
        Some(waiter)
    }

    /// The key of the oldest waiter whose selector matches a message of type `mtype`.
    pub fn first_match(&self, mtype: i64) -> Option<u64> {
        let any = self.any.first().copied();
        let exact = self.exact.get(&mtype).and_then(|s| s.first().copied());
        let except = self
            .except_heads
            .iter()
            .take(2)
            .find(|&&(_, t)| t != mtype)
            .map(|&(key, _)| key);
        let at_most = self.at_most_heads.min_from(mtype);
        [any, exact, except, at_most].into_iter().flatten().min()
    }

    /// Removes and returns every waiter, oldest first.
    pub fn drain(&mut self) -> Vec<W> {
        let mut all: Vec<_> = std::mem::take(&mut self.waiters).into_iter().collect();
        all.sort_unstable_by_key(|(key, _)| *key);
        *self = Self::default();
        all.into_iter().map(|(_, (_, w))| w).collect()
    }
}

/// A map by keys the daemon hands out in order (waiter keys, parked receives' slots),
/// hashed by [`KeyHasher`].
pub(crate) type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// Hashes a waiter's key, which the mailbox hands out in order (a client chooses none):
/// one multiplication rather than SipHash, whose resistance to chosen keys it does not
/// need (SipHash was a third of the cost of taking a waiter out of the index).
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by a `u64` key; each byte is mixed into the state as a word would be.
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, key: u64) {
        // Fibonacci hashing: the table takes its buckets from the low bits and its tags
        // from the high ones, and both are spread.
        self.0 = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn remove_from(sets: &mut HashMap<i64, BTreeSet<u64>>, t: i64, key: u64) {
    if let Some(set) = sets.get_mut(&t) {
        set.remove(&key);
        if set.is_empty() {
            sets.remove(&t);
        }
    }
}

/// Keeps `(head, t)` in `heads` in step with the first key of `t`'s set.
fn reseat(heads: &mut BTreeSet<(u64, i64)>, t: i64, before: Option<u64>, after: Option<u64>) {
    if before == after {
        return;
    }
    if let Some(old) = before {
        heads.remove(&(old, t));
    }
    if let Some(new) = after {
        heads.insert((new, t));
    }
}

/// A treap keyed by `i64` whose values are `u64` and whose nodes know the smallest value
/// in their subtree: "the smallest value among keys `>= k`" in one walk down.
#[derive(Debug)]
struct Treap {
    root: Link,
    /// For node priorities (xorshift64): a treap needs them random only with respect to
    /// the keys, which a client chooses.
    seed: u64,
}

type Link = Option<Box<Node>>;

#[derive(Debug)]
struct Node {
    key: i64,
    value: u64,
    priority: u64,
    /// Smallest value in this subtree.
    min: u64,
    left: Link,
    right: Link,
}

impl Default for Treap {
    fn default() -> Self {
        // Seeded from the address space layout and the clock: nothing a client sees.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        let seed = clock ^ (&raw const local as u64).rotate_left(32) | 1;
        Self { root: None, seed }
    }
}

impl Node {
    fn update(&mut self) {
        self.min = [
            Some(self.value),
            self.left.as_ref().map(|n| n.min),
            self.right.as_ref().map(|n| n.min),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("a node has a value");
    }
}

/// Splits `link` into keys `< key` and keys `>= key`.
fn split(link: Link, key: i64) -> (Link, Link) {
    let Some(mut node) = link else {
        return (None, None);
    };
    if node.key < key {
        let (mid, right) = split(node.right.take(), key);
        node.right = mid;
        node.update();
        (Some(node), right)
    } else {
        let (left, mid) = split(node.left.take(), key);
        node.left = mid;
        node.update();
        (left, Some(node))
    }
}

/// Joins two treaps, every key of `left` below every key of `right`.
fn merge(left: Link, right: Link) -> Link {
    match (left, right) {
        (None, r) => r,
        (l, None) => l,
        (Some(mut l), Some(mut r)) => {
            if l.priority > r.priority {
                l.right = merge(l.right.take(), Some(r));
                l.update();
                Some(l)
            } else {
                r.left = merge(Some(l), r.left.take());
                r.update();
                Some(r)
            }
        }
    }
}

impl Treap {
    fn next_priority(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// Sets `key`'s value, inserting it if absent.
    fn set(&mut self, key: i64, value: u64) {
        if set_in(&mut self.root, key, value) {
            return;
        }
        let node = Box::new(Node {
            key,
            value,
            priority: self.next_priority(),
            min: value,
            left: None,
            right: None,
        });
        let (below, rest) = split(self.root.take(), key);
        self.root = merge(merge(below, Some(node)), rest);
    }

    fn remove(&mut self, key: i64) {
        let (below, rest) = split(self.root.take(), key);
        let (_, above) = split(rest, key.saturating_add(1));
        let above = if key == i64::MAX { None } else { above };
        self.root = merge(below, above);
    }

    /// The smallest value among keys `>= key`.
    fn min_from(&self, key: i64) -> Option<u64> {
        let mut best: Option<u64> = None;
        let mut link = &self.root;
        while let Some(node) = link {
            if node.key < key {
                link = &node.right;
            } else {
                let right = node.right.as_ref().map(|n| n.min);
                best = [best, Some(node.value), right].into_iter().flatten().min();
                link = &node.left;
            }
        }
        best
    }
}

/// Updates `key`'s value where it already is, fixing the minima on the way back up;
/// returns whether it was there.
fn set_in(link: &mut Link, key: i64, value: u64) -> bool {
    let Some(node) = link else { return false };
    let found = match key.cmp(&node.key) {
        std::cmp::Ordering::Equal => {
            node.value = value;
            true
        }
        std::cmp::Ordering::Less => set_in(&mut node.left, key, value),
        std::cmp::Ordering::Greater => set_in(&mut node.right, key, value),
    };
    if found {
        node.update();
    }
    found
}

/// An operation that either finished at once or must wait.
#[derive(Debug)]
pub(crate) enum Pending<T: Side> {
    Ready(Result<T, T::Error>),
    Wait(Waiter<T>),
}

/// Where a waiter's result is handed to it: the channel its request's future awaits,
/// or (a parked receive) its slot among its connection's [`Completions`].
pub(crate) enum Handoff<T: Side> {
    Channel(oneshot::Sender<Result<T, T::Error>>),
    Parked(Arc<Completions>, u64),
}

impl<T: Side> Handoff<T> {
    /// Hands `result` over; `Err` gives it back if nobody will take it.
    pub fn send(self, result: Result<T, T::Error>) -> Result<(), Result<T, T::Error>> {
        match self {
            Handoff::Channel(tx) => tx.send(result),
            Handoff::Parked(to, slot) => T::park_result(&to, slot, result),
        }
    }
}

impl<T: Side> std::fmt::Debug for Handoff<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handoff::Channel(_) => f.write_str("Channel"),
            Handoff::Parked(_, slot) => f.debug_tuple("Parked").field(slot).finish(),
        }
    }
}

#[derive(Debug)]
pub(super) struct RecvWaiter {
    pub(super) taker: Taker,
    pub(super) tx: Handoff<Envelope>,
}

#[derive(Debug)]
pub(super) struct SendWaiter {
    pub(super) incoming: Incoming,
    pub(super) tx: Handoff<SentId>,
}

/// The two kinds of waiting request, and how each undoes a hand-over its waiter did not
/// live to see.
pub(crate) trait Side: Sized + Send + 'static {
    /// How this kind of request fails.
    type Error: From<Closed> + From<Interrupted> + std::fmt::Debug + Send + 'static;
    /// What a waiter of this kind waits for, kept to say so if its time runs out.
    type Blocked: Clone + std::fmt::Debug + Send + 'static;

    /// The error of a wait that ran out after `after`.
    fn timed_out(after: Duration, blocked: Self::Blocked) -> Self::Error;
    /// Removes the waiter `key`, returning its hand-off channel; `None` if it has
    /// already been completed.
    fn deregister(state: &mut State, key: u64) -> Option<Handoff<Self>>;
    fn reclaim(state: &mut State, value: Self);
    /// Hands `result` to the parked request of `slot` (only a receive parks).
    fn park_result(
        to: &Completions,
        slot: u64,
        result: Result<Self, Self::Error>,
    ) -> Result<(), Result<Self, Self::Error>>;
}

impl Side for Envelope {
    type Error = RecvError;
    type Blocked = Empty;

    fn timed_out(after: Duration, empty: Empty) -> RecvError {
        RecvError::TimedOut {
            after_ms: after.as_millis(),
            empty,
        }
    }

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
        if !envelope.has_removal() {
            // A copy sent for a lease: the leased original is what goes back.
            if let Some(leased) = state.unlease(envelope.id()) {
                envelope = leased;
            }
        }
        *envelope.deliveries_mut() = envelope.deliveries().saturating_sub(1);
        state.total_received = state.total_received.saturating_sub(1);
        state.offer_or_queue(envelope);
    }

    fn park_result(
        to: &Completions,
        slot: u64,
        result: Result<Self, RecvError>,
    ) -> Result<(), Result<Self, RecvError>> {
        to.complete(slot, result)
    }
}

impl Side for SentId {
    type Error = SendError;
    type Blocked = Full;

    fn timed_out(after: Duration, full: Full) -> SendError {
        SendError::TimedOut {
            after_ms: after.as_millis(),
            full,
        }
    }

    fn deregister(state: &mut State, key: u64) -> Option<Handoff<Self>> {
        state.senders.remove(&key).map(|w| w.tx)
    }

    /// The message was accepted; its sender just will not hear of it.
    fn reclaim(_: &mut State, _: SentId) {}

    /// A send never parks: nobody takes a result there.
    fn park_result(
        _: &Completions,
        _: u64,
        result: Result<Self, SendError>,
    ) -> Result<(), Result<Self, SendError>> {
        Err(result)
    }
}

/// Cancels a wait synchronously: under the mailbox lock the waiter is deregistered and
/// completed with [`Interrupted::Cancelled`], so nothing can be handed to it afterwards.
/// If it was completed first, nothing happens and its normal result stands.
pub(crate) type Canceller = Box<dyn FnOnce(Cancelled) + Send + Sync>;

/// A request waiting on a mailbox. Await [`Waiter::wait`]; dropping it at any point
/// deregisters it without losing a message.
#[derive(Debug)]
pub(crate) struct Waiter<T: Side> {
    mailbox: Arc<Mailbox>,
    key: u64,
    rx: oneshot::Receiver<Result<T, T::Error>>,
    /// How long it waits, and what for (to say so if the time runs out).
    timeout: Option<(Duration, T::Blocked)>,
    finished: bool,
    /// What this waiter is handed is a copy (a peek): undelivered, it is dropped.
    pub(super) copy: bool,
    /// It waits for the store, its message accepted already: dropping it does not undo
    /// the send.
    pub(super) storing: bool,
}

impl<T: Side> Waiter<T> {
    pub(super) fn new(
        mailbox: Arc<Mailbox>,
        key: u64,
        rx: oneshot::Receiver<Result<T, T::Error>>,
        timeout: Option<(Duration, T::Blocked)>,
    ) -> Self {
        Self {
            mailbox,
            key,
            rx,
            timeout,
            finished: false,
            copy: false,
            storing: false,
        }
    }

    /// Whether dropping it undoes its request, which then did nothing: true of a wait
    /// for a message or for room, false of a send waiting only to be stored.
    pub fn undoable(&self) -> bool {
        !self.storing
    }

    /// A handle that cancels this wait at once, from outside the task awaiting it.
    pub fn canceller(&self) -> Canceller {
        let (mailbox, key) = (self.mailbox.clone(), self.key);
        Box::new(move |reason| {
            let mut state = mailbox.lock();
            if let Some(tx) = T::deregister(&mut state, key) {
                let _ = tx.send(Err(Interrupted::Cancelled(reason).into()));
            }
        })
    }

    /// Waits until the mailbox completes the request, it is closed, or the timeout ends.
    pub async fn wait(mut self) -> Result<T, T::Error> {
        let handed = match self.timeout.take() {
            None => (&mut self.rx).await.ok(),
            Some((limit, blocked)) => match tokio::time::timeout(limit, &mut self.rx).await {
                Ok(handed) => handed.ok(),
                Err(_) => {
                    let withdrawn = T::deregister(&mut self.mailbox.lock(), self.key).is_some();
                    if withdrawn {
                        self.finished = true;
                        return Err(T::timed_out(limit, blocked));
                    }
                    // Completed just as the time ran out, or handed over and being stored
                    // (a durable send): the result is here or on its way.
                    (&mut self.rx).await.ok()
                }
            },
        };
        self.finished = true;
        handed.unwrap_or_else(|| Err(Interrupted::Abandoned.into()))
    }
}

/// The waiters of one request that stand or fall together: the messages of a batched
/// send that wait for room, in order. They share one deadline, and withdrawing them —
/// at that deadline, on a cancel, or when the request is dropped with its connection —
/// takes every one still waiting out under one lock. Withdrawn one by one, a later
/// message could be let in between two withdrawals, after an earlier one was refused,
/// and the batch would lose its order.
#[derive(Debug)]
pub(crate) struct WaiterGroup<T: Side> {
    mailbox: Arc<Mailbox>,
    waiters: Vec<Waiter<T>>,
    /// The group's time limit (the first limit among its waiters, which were all made
    /// at once), and what to say when it runs out.
    timeout: Option<(Duration, T::Blocked)>,
}

impl<T: Side> WaiterGroup<T> {
    /// Groups `waiters` (non-empty), all of `mailbox`, in their order.
    pub fn new(mailbox: Arc<Mailbox>, mut waiters: Vec<Waiter<T>>) -> Self {
        let timeout = waiters.iter_mut().find_map(|w| w.timeout.take());
        for waiter in &mut waiters {
            waiter.timeout = None;
        }
        Self {
            mailbox,
            waiters,
            timeout,
        }
    }

    fn keys(&self) -> Vec<u64> {
        self.waiters.iter().map(|w| w.key).collect()
    }

    /// A handle that cancels every wait of the group at once.
    pub fn canceller(&self) -> Canceller {
        let (mailbox, keys) = (self.mailbox.clone(), self.keys());
        Box::new(move |reason| {
            withdraw::<T>(&mailbox, &keys, || Interrupted::Cancelled(reason).into());
        })
    }

    /// The outcome of each waiter, in order, once all are known.
    pub async fn wait(self) -> Vec<Result<T, T::Error>> {
        let keys = self.keys();
        // Dropped with the request: every waiter still waiting goes, under one lock,
        // before any of them is dropped on its own.
        let mut guard = WithdrawOnDrop::<T> {
            mailbox: self.mailbox.clone(),
            keys: keys.clone(),
            armed: true,
            _side: std::marker::PhantomData,
        };
        let deadline = self
            .timeout
            .map(|(limit, blocked)| (tokio::time::Instant::now() + limit, limit, blocked));
        let mut timed_out = false;
        let mut waiters = self.waiters;
        let mut results = Vec::with_capacity(waiters.len());
        for waiter in &mut waiters {
            let handed = match &deadline {
                Some((at, limit, blocked)) if !timed_out => {
                    match tokio::time::timeout_at(*at, &mut waiter.rx).await {
                        Ok(handed) => handed,
                        Err(_) => {
                            // Every one still waiting is refused at once; those completed
                            // meanwhile (or being stored) keep their outcome.
                            timed_out = true;
                            withdraw::<T>(&self.mailbox, &keys, || {
                                T::timed_out(*limit, blocked.clone())
                            });
                            (&mut waiter.rx).await
                        }
                    }
                }
                _ => (&mut waiter.rx).await,
            };
            waiter.finished = true;
            results.push(handed.unwrap_or_else(|_| Err(Interrupted::Abandoned.into())));
        }
        guard.armed = false;
        results
    }
}

/// Withdraws the group's waiters still waiting when dropped armed.
struct WithdrawOnDrop<T: Side> {
    mailbox: Arc<Mailbox>,
    keys: Vec<u64>,
    armed: bool,
    _side: std::marker::PhantomData<fn() -> T>,
}

impl<T: Side> Drop for WithdrawOnDrop<T> {
    fn drop(&mut self) {
        if self.armed {
            withdraw::<T>(&self.mailbox, &self.keys, || Interrupted::Abandoned.into());
        }
    }
}

/// Completes every waiter of `keys` still registered with `error`, under one lock.
fn withdraw<T: Side>(mailbox: &Mailbox, keys: &[u64], error: impl Fn() -> T::Error) {
    let mut state = mailbox.lock();
    for &key in keys {
        if let Some(tx) = T::deregister(&mut state, key) {
            let _ = tx.send(Err(error()));
        }
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
    use super::*;
    use proptest::prelude::*;

    fn selector() -> impl Strategy<Value = Selector> {
        // Few distinct types, so that selectors collide and match often.
        prop_oneof![
            Just(Selector::Any),
            (1i64..6).prop_map(Selector::Type),
            (1i64..6).prop_map(Selector::Except),
            (1i64..6).prop_map(Selector::AtMost),
            Just(Selector::AtMost(i64::MAX)),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(Selector),
        Remove(usize),
        Offer(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => selector().prop_map(Op::Add),
            1 => any::<usize>().prop_map(Op::Remove),
            2 => (1i64..7).prop_map(Op::Offer),
        ]
    }

    proptest! {
        /// The index answers exactly what a scan of the waiters in arrival order would.
        #[test]
        fn the_index_agrees_with_a_fifo_scan(ops in proptest::collection::vec(op(), 1..200)) {
            let mut index = WaiterIndex::default();
            let mut model: Vec<(u64, Selector)> = Vec::new();
            let mut next = 1;
            for op in ops {
                match op {
                    Op::Add(selector) => {
                        index.insert(next, selector, next);
                        model.push((next, selector));
                        next += 1;
                    }
                    Op::Remove(i) if !model.is_empty() => {
                        let (key, _) = model.remove(i % model.len());
                        prop_assert_eq!(index.remove(key), Some(key));
                        prop_assert_eq!(index.remove(key), None);
                    }
                    Op::Remove(_) => {}
                    Op::Offer(mtype) => {
                        let want = model.iter().find(|(_, s)| s.matches(mtype)).map(|w| w.0);
                        prop_assert_eq!(index.first_match(mtype), want);
                        if let Some(key) = want {
                            index.remove(key);
                            model.retain(|w| w.0 != key);
                        }
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            let drained = index.drain();
            prop_assert_eq!(drained, model.iter().map(|w| w.0).collect::<Vec<_>>());
        }
    }

    #[test]
    fn many_waiters_that_never_match_are_passed_over() {
        let mut index = WaiterIndex::default();
        let mut key = 0;
        for t in 1..=10_000 {
            key += 1;
            index.insert(key, Selector::Type(t), ());
            key += 1;
            index.insert(key, Selector::AtMost(t), ());
            key += 1;
            index.insert(key, Selector::Except(7), ());
        }
        // Type 7: Type(7) has key 19; AtMost(7) (key 20) is younger, AtMost(1..6) are too
        // low and every Except waiter excludes 7.
        assert_eq!(index.first_match(7), Some(3 * 6 + 1));
        assert_eq!(index.first_match(1), Some(1));
        assert_eq!(index.first_match(20_000), Some(3));
        assert_eq!(index.first_match(i64::MAX), Some(3));
    }
}
