//! Dead letters: where a message goes that expired, or came back from its leases more
//! than `max_deliveries` times — to its mailbox's dead-letter mailbox through the
//! broker, or, without one or past the backlog, dropped and counted.

use std::sync::Weak;

use ipc_proto::MailboxName;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::perm::RouteOwner;

use super::{Envelope, Mailbox, State};

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

impl Mailbox {
    /// A dead letter of this mailbox could not be delivered: it counts as dropped.
    pub fn dead_letter_dropped(&self) {
        let mut state = self.lock();
        state.dead_lettered = state.dead_lettered.saturating_sub(1);
        state.dropped += 1;
    }
}

impl State {
    /// A leased message came back unacknowledged: to its old place (a waiting receiver
    /// may take it at once), or, past `max_deliveries`, to the dead-letter mailbox — or
    /// away, counted, without one.
    pub(super) fn return_message(&mut self, envelope: Envelope, name: &MailboxName) {
        let max = self.settings.max_deliveries;
        if envelope.expires_at().is_some_and(|at| at <= Instant::now()) {
            self.expire(envelope, name);
        } else if max == 0 || envelope.deliveries() < max {
            self.offer_or_queue(envelope);
        } else {
            self.dead_letter(envelope, name);
        }
    }

    /// A message's TTL passed undelivered.
    pub(super) fn expire(&mut self, envelope: Envelope, name: &MailboxName) {
        self.expired += 1;
        self.dead_letter(envelope, name);
    }

    /// Sends `envelope` to the dead-letter mailbox, or, without one, drops it and counts
    /// it. Either way it has left this mailbox for good.
    pub(super) fn dead_letter(&mut self, mut envelope: Envelope, name: &MailboxName) {
        // It leaves for good: the record of that goes with it.
        envelope.set_removal(self.removal(envelope.id()));
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
                    let (mut letter, why) = match refused {
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
                            letter.envelope.id()
                        );
                    }
                    if let Some(removal) = letter.envelope.take_removal() {
                        removal.commit();
                    }
                }
            }
            None => {
                self.dropped += 1;
                if let Some(removal) = envelope.take_removal() {
                    removal.commit();
                }
            }
        }
        self.admit_senders();
    }
}
