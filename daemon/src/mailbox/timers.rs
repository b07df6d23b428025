//! Deadlines and the timekeeper: lease ends, delayed messages becoming visible and TTLs
//! passing, all on the monotonic clock, kept in one ordered set per mailbox and done by
//! one task per mailbox that sleeps until the earliest. Only what is stored for a
//! restart is converted to wall-clock time (`wall`, `monotonic`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use ipc_proto::{MailboxName, Timestamp};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::index::Slot;

use super::{Mailbox, State};

/// Something a mailbox must do at a given time (its timekeeper does it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A lease ends, unless it was settled (then there is no lease of that number).
    LeaseEnds { id: u64, lease_no: u64 },
    /// A delayed message becomes visible.
    Visible { id: u64 },
    /// A message's TTL passes; if it is still queued or delayed, it expires.
    Expires { id: u64, mtype: i64 },
}

impl State {
    /// Adds something due at `at`, waking the timekeeper if it is now the earliest.
    pub(super) fn schedule(&mut self, at: Instant, timer: Timer) {
        let earliest = self.deadlines.first().is_none_or(|first| at < first.0);
        self.deadlines.insert((at, timer));
        self.wake_timekeeper(earliest);
    }

    /// Does everything that is due: ends leases, shows delayed messages, expires
    /// messages whose TTL passed.
    pub(super) fn expire_due(&mut self, now: Instant, name: &MailboxName) {
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
                        envelope.show();
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
    pub(super) fn wake_timekeeper(&mut self, earliest_changed: bool) {
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
}

/// A stored wall-clock time as a deadline on the monotonic clock (now, if it has
/// passed).
pub(super) fn monotonic(at: Timestamp) -> Instant {
    let left = at.0.saturating_sub(Timestamp::now().0);
    Instant::now() + Duration::from_nanos(left)
}

/// A monotonic deadline as a wall-clock time, for the store.
pub(super) fn wall(at: Instant) -> Timestamp {
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
pub(super) async fn keep_time(mailbox: Weak<Mailbox>, wake: Arc<Notify>) {
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
