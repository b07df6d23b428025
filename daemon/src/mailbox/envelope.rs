//! A message as a mailbox keeps it (`Envelope`), as a sender offers it (`Incoming`),
//! and what its size counts: payload and headers.

use std::time::Duration;

use bytes::Bytes;
use ipc_proto::{Credentials, Headers, Timestamp};
use tokio::time::Instant;

use crate::quota::Charge;

use super::durable::Removal;

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
    pub(super) fn copy(&self) -> Envelope {
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
