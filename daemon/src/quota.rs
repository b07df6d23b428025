//! Per-uid accounting (SPEC §7), after dbus-broker: every resource is charged to the uid
//! that allocated it — a connection to the uid at the other end, a mailbox to its owner,
//! a queued message to its sender, a reply waiting to be written to the uid that asked —
//! and checked against that uid's [`Quota`].
//!
//! A charge is a [`Charge`] guard that gives back what it took when dropped, so whatever
//! path drops the thing holding it (a message leaving its queue, a mailbox removed, a
//! connection closing, a waiting send cancelled) releases it; no path has to remember to.
//! Over quota, only the request that asked fails: nothing else is disconnected.
//!
//! The counters are atomics in one [`UidAccount`] per uid, which the connection holds, so
//! charging on the hot path (every send) takes no shared lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::Quota;

/// How often one uid's quota refusals of one kind are logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connections = 0,
    Mailboxes = 1,
    QueuedBytes = 2,
    /// Connections not yet past their hello: bounded apart from `Connections`, so that
    /// connections that never speak cannot fill the daemon's descriptors.
    Handshakes = 3,
}

/// How many resources are counted.
const RESOURCES: usize = 4;

impl Resource {
    /// The quota's name, as in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Mailboxes => "mailboxes",
            Resource::QueuedBytes => "queued_bytes",
            Resource::Handshakes => "handshakes",
        }
    }

    pub fn limit(self, quota: &Quota) -> u64 {
        match self {
            Resource::Connections => quota.connections,
            Resource::Mailboxes => quota.mailboxes,
            Resource::QueuedBytes => quota.queued_bytes,
            Resource::Handshakes => quota.handshakes,
        }
    }
}

/// A charge refused: `uid` holds `used` of `resource`, and `amount` more would take it
/// past `limit`. `dispatch` answers it as `QuotaExceeded`; its `Display` names the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{}", describe_refusal(self))]
pub struct QuotaError {
    pub uid: u32,
    pub resource: Resource,
    pub used: u64,
    pub amount: u64,
    pub limit: u64,
}

fn describe_refusal(e: &QuotaError) -> String {
    let QuotaError {
        uid,
        used,
        amount,
        limit,
        ..
    } = *e;
    match e.resource {
        Resource::QueuedBytes => format!(
            "quota exceeded: uid {uid} has {used} bytes queued; {amount} more would pass its \
             queued_bytes quota of {limit}"
        ),
        Resource::Connections => format!(
            "quota exceeded: uid {uid} has {used} connections open, its connections quota of \
             {limit}; close one first"
        ),
        Resource::Mailboxes => format!(
            "quota exceeded: uid {uid} owns {used} mailboxes, its mailboxes quota of {limit}; \
             remove one first"
        ),
        Resource::Handshakes => format!(
            "quota exceeded: uid {uid} has {used} connections that have not sent their hello, \
             its handshakes quota of {limit}"
        ),
    }
}

/// What one uid holds now.
#[derive(Debug)]
pub struct UidAccount {
    uid: u32,
    used: [AtomicU64; RESOURCES],
    /// The most of each resource held since [`Accounts::take_peak`] last looked: a burst
    /// that comes and goes between two looks is still seen.
    peak: [AtomicU64; RESOURCES],
    /// Where this account's peaks go when it leaves the table, shared by the table.
    departed: Arc<[AtomicU64; RESOURCES]>,
    /// When a refusal of each kind was last logged, for rate limiting.
    logged: Mutex<[Option<Instant>; RESOURCES]>,
}

impl Drop for UidAccount {
    fn drop(&mut self) {
        for (departed, peak) in self.departed.iter().zip(&self.peak) {
            departed.fetch_add(peak.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Every uid that holds something. Accounts live while anything charged to them does.
#[derive(Debug, Default)]
pub struct Accounts {
    by_uid: Mutex<HashMap<u32, Weak<UidAccount>>>,
    /// The peaks of accounts that left since [`Self::take_peak`] last looked.
    departed: Arc<[AtomicU64; RESOURCES]>,
}

impl Accounts {
    /// The account of `uid`, created empty if it holds nothing now.
    pub fn account(&self, uid: u32) -> Arc<UidAccount> {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(account) = by_uid.get(&uid).and_then(Weak::upgrade) {
            return account;
        }
        // Forget accounts that hold nothing any more, so the table stays as small as the
        // set of uids that hold something.
        by_uid.retain(|_, account| account.strong_count() > 0);
        let account = Arc::new(UidAccount {
            uid,
            used: Default::default(),
            peak: Default::default(),
            departed: self.departed.clone(),
            logged: Mutex::new([None; RESOURCES]),
        });
        by_uid.insert(uid, Arc::downgrade(&account));
        account
    }

    /// The most of `resource` held since the last call, summed over the uids (each at
    /// its own peak, so at least the most held at any one time), counting uids that
    /// have since left the table. Starts a new period from what is held now.
    pub fn take_peak(&self, resource: Resource) -> u64 {
        let i = resource as usize;
        let live: u64 = (self.all().iter())
            .map(|a| {
                // The peak is at least what is held now, whatever a charge made between
                // the two reads.
                let now = a.used[i].load(Ordering::Relaxed);
                a.peak[i].swap(now, Ordering::Relaxed).max(now)
            })
            .sum();
        live + self.departed[i].swap(0, Ordering::Relaxed)
    }

    /// Every live account, by uid.
    pub fn all(&self) -> Vec<Arc<UidAccount>> {
        let by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = by_uid.values().filter_map(Weak::upgrade).collect();
        all.sort_by_key(|a| a.uid);
        all
    }
}

impl UidAccount {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn used(&self, resource: Resource) -> u64 {
        self.used[resource as usize].load(Ordering::Relaxed)
    }

    /// Takes `amount` of `resource` if that keeps the uid within `limit`.
    pub fn charge(
        self: &Arc<Self>,
        resource: Resource,
        amount: u64,
        limit: u64,
    ) -> Result<Charge, QuotaError> {
        self.try_charge(resource, amount, limit)
            .map_err(|used| self.refuse(resource, used, amount, limit))
    }

    /// As [`charge`](Self::charge), but a refusal is neither logged nor worded: it
    /// returns what the uid holds, for a caller that reports the refusal its own way.
    pub fn try_charge(
        self: &Arc<Self>,
        resource: Resource,
        amount: u64,
        limit: u64,
    ) -> Result<Charge, u64> {
        self.try_hold(resource, amount, limit)?;
        Ok(Charge::new(self.clone(), resource, amount))
    }

    /// As [`try_charge`](Self::try_charge), for a holder that keeps its own count of
    /// what it holds and gives it back with [`give_back`](Self::give_back) (a
    /// connection's waiting replies, one count for all of them).
    pub fn try_hold(&self, resource: Resource, amount: u64, limit: u64) -> Result<(), u64> {
        let counter = &self.used[resource as usize];
        let mut now = counter.load(Ordering::Relaxed);
        if amount > MAX_AMOUNT {
            return Err(now);
        }
        loop {
            let Some(next) = now.checked_add(amount).filter(|&next| next <= limit) else {
                return Err(now);
            };
            match counter.compare_exchange_weak(now, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.note_peak(resource, next);
                    return Ok(());
                }
                Err(actual) => now = actual,
            }
        }
    }

    /// Takes `amount` without a check: for what root imposes (giving a mailbox away).
    pub fn force(self: &Arc<Self>, resource: Resource, amount: u64) -> Charge {
        let amount = amount.min(MAX_AMOUNT);
        self.hold(resource, amount);
        Charge::new(self.clone(), resource, amount)
    }

    /// As [`force`](Self::force), for a holder that keeps its own count (see
    /// [`try_hold`](Self::try_hold)).
    pub fn hold(&self, resource: Resource, amount: u64) {
        let before = self.used[resource as usize].fetch_add(amount, Ordering::AcqRel);
        self.note_peak(resource, before.saturating_add(amount));
    }

    /// Gives back `amount` of `resource` that a [`Charge::dissolve`]d charge left held.
    pub fn give_back(&self, resource: Resource, amount: u64) {
        self.used[resource as usize].fetch_sub(amount, Ordering::AcqRel);
    }

    /// Raises the peak of `resource` to `held` if it is below: a read, and a write only
    /// while what is held grows past its peak.
    fn note_peak(&self, resource: Resource, held: u64) {
        let peak = &self.peak[resource as usize];
        if held > peak.load(Ordering::Relaxed) {
            peak.fetch_max(held, Ordering::Relaxed);
        }
    }

    /// The refusal of a charge, logged at most once per [`LOG_EVERY`] per resource.
    pub fn refuse(&self, resource: Resource, used: u64, amount: u64, limit: u64) -> QuotaError {
        let error = QuotaError {
            uid: self.uid,
            resource,
            used,
            amount,
            limit,
        };
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let last = &mut logged[resource as usize];
        if last.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::info!(uid = self.uid, quota = resource.name(), limit, "{error}");
        }
        error
    }
}

/// An amount of one resource charged to one uid, given back on drop. Every queued
/// message holds one, so it is two words: the resource rides in the amount's top bits.
pub struct Charge {
    account: Arc<UidAccount>,
    /// `amount | resource << RESOURCE_SHIFT`.
    packed: u64,
}

/// Where a [`Charge`] keeps its resource; amounts stay below `1 << RESOURCE_SHIFT`.
const RESOURCE_SHIFT: u32 = 62;

/// The largest amount one charge takes: 4 EiB, past any size the daemon accepts.
const MAX_AMOUNT: u64 = (1 << RESOURCE_SHIFT) - 1;

impl Charge {
    fn new(account: Arc<UidAccount>, resource: Resource, amount: u64) -> Self {
        debug_assert!(amount <= MAX_AMOUNT);
        Self {
            account,
            packed: amount | (resource as u64) << RESOURCE_SHIFT,
        }
    }

    pub fn uid(&self) -> u32 {
        self.account.uid
    }

    pub fn account(&self) -> &Arc<UidAccount> {
        &self.account
    }

    /// What a message's envelope holds instead of its charge: the amount still held,
    /// its giving back now the caller's duty — which [`adopt`](Self::adopt) hands back
    /// to a `Charge`.
    pub fn dissolve(self) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again; its account is dropped once.
        drop(unsafe { std::ptr::read(&this.account) });
    }

    /// The charge of `amount` of `resource` that `account` holds already (one
    /// [`dissolve`](Self::dissolve)d), given back when this is dropped.
    pub fn adopt(account: &Arc<UidAccount>, resource: Resource, amount: u64) -> Self {
        Self::new(account.clone(), resource, amount)
    }

    pub fn resource(&self) -> Resource {
        match self.packed >> RESOURCE_SHIFT {
            0 => Resource::Connections,
            1 => Resource::Mailboxes,
            2 => Resource::QueuedBytes,
            _ => Resource::Handshakes,
        }
    }

    pub fn amount(&self) -> u64 {
        self.packed & MAX_AMOUNT
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Charge({} {} to uid {})",
            self.amount(),
            self.resource().name(),
            self.account.uid
        )
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.account.give_back(self.resource(), self.amount());
    }
}

/// A count of something across every uid (connections not yet past their hello), with
/// a guard that gives its place back when dropped.
#[derive(Debug, Default)]
pub struct Gauge(Arc<AtomicU64>);

/// A place taken in a [`Gauge`].
#[derive(Debug)]
pub struct GaugeSlot(Arc<AtomicU64>);

impl Gauge {
    /// Takes a place if fewer than `limit` are taken.
    pub fn enter(&self, limit: u64) -> Option<GaugeSlot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(GaugeSlot(self.0.clone()))
    }
}

impl Drop for GaugeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What `account` holds of the resources `status` shows: connections, mailboxes, queued
/// bytes.
pub fn snapshot(account: &UidAccount) -> [u64; 3] {
    [
        Resource::Connections,
        Resource::Mailboxes,
        Resource::QueuedBytes,
    ]
    .map(|r| account.used(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peak is the most held since the last look, for uids still in the table and
    /// for uids that have left it, and a look starts the next period from what is held.
    #[test]
    fn the_peak_remembers_what_was_held_between_looks() {
        let accounts = Accounts::default();
        let queued = Resource::QueuedBytes;
        let a = accounts.account(1000);
        let b = accounts.account(1001);
        let held = a.charge(queued, 100, u64::MAX).unwrap();
        drop(a.charge(queued, 400, u64::MAX).unwrap());
        drop(a.force(queued, 50));
        assert_eq!(a.used(queued), 100);
        drop(b.charge(queued, 30, u64::MAX).unwrap());
        assert_eq!(accounts.take_peak(queued), 500 + 30);
        assert_eq!(accounts.take_peak(queued), 100, "from what is held now");
        // A uid that held something and left before the look still counts, once.
        drop(b.charge(queued, 70, u64::MAX).unwrap());
        drop(b);
        assert_eq!(accounts.take_peak(queued), 100 + 70);
        drop(held);
        assert_eq!(accounts.take_peak(queued), 100);
        assert_eq!(accounts.take_peak(queued), 0);
        assert_eq!(accounts.take_peak(Resource::Connections), 0);
    }

    /// A charge is two words, and gives back to the resource it took from.
    #[test]
    fn a_charge_packs_its_resource_and_gives_back_to_it() {
        assert_eq!(std::mem::size_of::<Option<Charge>>(), 16);
        let accounts = Accounts::default();
        let account = accounts.account(1000);
        let resources = [
            Resource::Connections,
            Resource::Mailboxes,
            Resource::QueuedBytes,
            Resource::Handshakes,
        ];
        let charges: Vec<_> = resources
            .iter()
            .enumerate()
            .map(|(i, &r)| account.charge(r, 10 + i as u64, u64::MAX).unwrap())
            .collect();
        for (i, &r) in resources.iter().enumerate() {
            assert_eq!(account.used(r), 10 + i as u64);
        }
        assert!(
            account
                .try_charge(Resource::QueuedBytes, u64::MAX, u64::MAX)
                .is_err()
        );
        drop(charges);
        for r in resources {
            assert_eq!(account.used(r), 0, "{}", r.name());
        }
    }

    #[test]
    fn charges_are_bounded_and_given_back_on_drop() {
        let accounts = Accounts::default();
        let account = accounts.account(1000);
        let a = account.charge(Resource::QueuedBytes, 60, 100).unwrap();
        let refused = account
            .charge(Resource::QueuedBytes, 41, 100)
            .expect_err("over the quota");
        assert_eq!(
            (
                refused.resource,
                refused.used,
                refused.amount,
                refused.limit
            ),
            (Resource::QueuedBytes, 60, 41, 100)
        );
        assert_eq!(
            refused.to_string(),
            "quota exceeded: uid 1000 has 60 bytes queued; 41 more would pass its \
             queued_bytes quota of 100"
        );
        let b = account.charge(Resource::QueuedBytes, 40, 100).unwrap();
        assert_eq!(account.used(Resource::QueuedBytes), 100);
        drop(a);
        assert_eq!(account.used(Resource::QueuedBytes), 40);
        drop(b);
        assert_eq!(snapshot(&account), [0, 0, 0]);
    }

    #[test]
    fn an_account_lives_while_something_is_charged_to_it() {
        let accounts = Accounts::default();
        let charge = accounts.account(7).force(Resource::Mailboxes, 1);
        // The connection that charged it is gone; the mailbox keeps the account.
        let again = accounts.account(7);
        assert_eq!(again.used(Resource::Mailboxes), 1);
        assert_eq!(accounts.all().len(), 1);
        drop((charge, again));
        assert!(accounts.all().is_empty());
    }

    #[test]
    fn concurrent_charges_never_pass_the_limit() {
        let accounts = Accounts::default();
        let account = accounts.account(1);
        let granted: Vec<Vec<Charge>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..1000)
                            .filter_map(|_| account.charge(Resource::Connections, 1, 1500).ok())
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let total: usize = granted.iter().map(Vec::len).sum();
        assert_eq!(total, 1500);
        assert_eq!(account.used(Resource::Connections), 1500);
        drop(granted);
        assert_eq!(account.used(Resource::Connections), 0);
    }
}
