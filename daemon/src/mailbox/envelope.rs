//! A message as a mailbox keeps it (`Envelope`), as a sender offers it (`Incoming`),
//! and what its size counts: payload and headers.

use std::time::Duration;

use bytes::Bytes;
use ipc_proto::{Credentials, Headers, Timestamp};
use tokio::time::Instant;

use crate::quota::{Charge, GaugeSlot};

use super::durable::Removal;

/// A message as the daemon keeps it: what every message has inline, what few have
/// ([`Rare`]) boxed, so that a plain message costs the daemon little beside its payload.
#[derive(Debug)]
pub struct Envelope {
    pub id: u64,
    pub mtype: i64,
    pub sender: Credentials,
    /// Times it has been taken by a receiver.
    pub deliveries: u32,
    pub sent_at: Timestamp,
    /// A payload of up to [`OWN_PAYLOAD_UP_TO`] bytes, owned: 16 bytes here where a
    /// `Bytes` takes 32. A larger one, or one in a memfd, is shared as it came, in
    /// [`Rare::shared`], and this is empty.
    payload: Box<[u8]>,
    /// Its size and the per-message overhead, charged to the sender's uid while the
    /// mailbox holds it; a copy made for a peek carries none.
    pub _charge: Option<Charge>,
    /// `None` while the message has none of what [`Rare`] holds.
    rare: Option<Box<Rare>>,
}

/// The largest payload an envelope owns itself; a larger one stays the `Bytes` it came
/// as, so that a published message's copies (and a memfd's mapping) share one buffer.
const OWN_PAYLOAD_UP_TO: usize = 1024;

/// A payload kept as the sealed memfd it came in (mapped: the envelope's shared payload
/// is that mapping), to be handed to a receiver as it came; it holds one of the daemon's
/// `max_memfds` places.
#[derive(Debug)]
pub struct Memfd {
    pub fd: std::sync::Arc<std::os::fd::OwnedFd>,
    /// Its size: what a reply that carries it holds until written.
    pub len: u64,
    pub _place: GaugeSlot,
}

/// What most messages do not have.
#[derive(Debug, Default)]
struct Rare {
    headers: Headers,
    /// The payload, when it is larger than [`OWN_PAYLOAD_UP_TO`] or a memfd's mapping
    /// (boxed: one word here, since most messages that have a `Rare` do not need it).
    shared: Option<Box<Shared>>,
    /// For a message of a durable mailbox: the record of its leaving, written once it is
    /// really delivered ([`Removal::commit`]), not when it is merely handed to a waiter
    /// that may vanish and give it back.
    removal: Option<Removal>,
    /// When it expires undelivered (its TTL), and until when it is invisible (its delay),
    /// on the monotonic clock.
    expires_at: Option<Instant>,
    visible_at: Option<Instant>,
}

/// A payload kept as it came, and the memfd it came in if the daemon kept that.
#[derive(Debug)]
struct Shared {
    bytes: Bytes,
    memfd: Option<std::sync::Arc<Memfd>>,
}

/// The headers of a message that has none.
static NO_HEADERS: Headers = Headers {
    reply_to: None,
    correlation_id: None,
    content_type: None,
    topic: None,
};

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
    let topic = headers.topic.as_ref().map_or(0, |t| t.as_str().len());
    (name + content_type + correlation + topic) as u64
}

impl Envelope {
    /// A message as stamped by its mailbox (or recovered from the store).
    #[allow(clippy::too_many_arguments, reason = "every field of a message, once")]
    pub(super) fn new(
        id: u64,
        mtype: i64,
        sender: Credentials,
        sent_at: Timestamp,
        headers: Headers,
        payload: Bytes,
        charge: Option<Charge>,
        expires_at: Option<Instant>,
        visible_at: Option<Instant>,
    ) -> Self {
        let (payload, shared) = if payload.len() > OWN_PAYLOAD_UP_TO {
            (
                Box::default(),
                Some(Box::new(Shared {
                    bytes: payload,
                    memfd: None,
                })),
            )
        } else {
            // The payload as decoded is a buffer of its own: this takes it over.
            (Vec::from(payload).into_boxed_slice(), None)
        };
        let plain = headers == NO_HEADERS
            && shared.is_none()
            && expires_at.is_none()
            && visible_at.is_none();
        let rare = (!plain).then(|| {
            Box::new(Rare {
                headers,
                shared,
                removal: None,
                expires_at,
                visible_at,
            })
        });
        Self {
            id,
            mtype,
            sender,
            sent_at,
            deliveries: 0,
            payload,
            _charge: charge,
            rare,
        }
    }

    pub fn payload(&self) -> &[u8] {
        match self.rare.as_ref().and_then(|r| r.shared.as_ref()) {
            Some(shared) => &shared.bytes[..],
            None => &self.payload,
        }
    }

    /// The payload as `Bytes`: shared if it is, else a copy.
    pub fn payload_bytes(&self) -> Bytes {
        match self.rare.as_ref().and_then(|r| r.shared.as_ref()) {
            Some(shared) => shared.bytes.clone(),
            None => Bytes::copy_from_slice(&self.payload),
        }
    }

    /// The payload, leaving none behind (for the wire form of a delivered message, or
    /// when it goes as a memfd instead).
    pub fn take_payload(&mut self) -> Bytes {
        match self.rare.as_mut().and_then(|r| r.shared.take()) {
            Some(shared) => shared.bytes,
            None => Bytes::from(std::mem::take(&mut self.payload)),
        }
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    pub fn headers(&self) -> &Headers {
        self.rare.as_ref().map_or(&NO_HEADERS, |r| &r.headers)
    }

    /// The headers, leaving none behind (for the wire form of a delivered message).
    pub fn take_headers(&mut self) -> Headers {
        self.rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.headers))
            .unwrap_or_default()
    }

    /// When it expires undelivered, if it has a TTL.
    pub fn expires_at(&self) -> Option<Instant> {
        self.rare.as_ref().and_then(|r| r.expires_at)
    }

    /// Until when it is invisible, if it was sent with a delay.
    pub fn visible_at(&self) -> Option<Instant> {
        self.rare.as_ref().and_then(|r| r.visible_at)
    }

    /// It is visible from now on.
    pub(super) fn show(&mut self) {
        if let Some(rare) = &mut self.rare {
            rare.visible_at = None;
        }
    }

    pub fn has_removal(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.removal.is_some())
    }

    /// The record of its leaving, taken to be committed (or dropped).
    pub fn take_removal(&mut self) -> Option<Removal> {
        self.rare.as_mut().and_then(|r| r.removal.take())
    }

    /// The memfd the payload came in, if the daemon kept it.
    pub fn memfd(&self) -> Option<&std::sync::Arc<Memfd>> {
        let shared = self.rare.as_ref()?.shared.as_ref()?;
        shared.memfd.as_ref()
    }

    pub(super) fn set_memfd(&mut self, memfd: Option<std::sync::Arc<Memfd>>) {
        let Some(memfd) = memfd else {
            if let Some(shared) = self.rare.as_mut().and_then(|r| r.shared.as_mut()) {
                shared.memfd = None;
            }
            return;
        };
        // A kept memfd's payload is far past what an envelope owns, so it is shared
        // already; a small one is moved there all the same.
        let payload = std::mem::take(&mut self.payload);
        let shared = self.rare_mut().shared.get_or_insert_with(|| {
            Box::new(Shared {
                bytes: Bytes::from(payload),
                memfd: None,
            })
        });
        shared.memfd = Some(memfd);
    }

    /// The memfd the payload came in, taken (the payload stays).
    fn take_memfd(&mut self) -> Option<std::sync::Arc<Memfd>> {
        let shared = self.rare.as_mut()?.shared.as_mut()?;
        shared.memfd.take()
    }

    pub(super) fn set_removal(&mut self, removal: Option<Removal>) {
        if removal.is_some() || self.rare.is_some() {
            self.rare_mut().removal = removal;
        }
    }

    /// What the message counts for against the mailbox's `max_bytes`: payload and
    /// headers.
    pub fn size(&self) -> u64 {
        self.payload().len() as u64 + headers_size(self.headers())
    }

    /// The message as offered to another mailbox (dead-lettering): same sender, type,
    /// headers and payload, still charged to its sender; a new id there.
    pub fn into_incoming(mut self) -> Incoming {
        // What is left of its TTL goes with it; a dead letter is visible at once.
        let ttl = self
            .expires_at()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let memfd = self.take_memfd();
        Incoming {
            memfd,
            mtype: self.mtype,
            sender: self.sender,
            headers: self.take_headers(),
            payload: self.take_payload(),
            charge: self._charge,
            ttl,
            delay: None,
        }
    }

    /// A copy for a peek: the same message, charged to nobody.
    pub(super) fn copy(&self) -> Envelope {
        let mut copy = Envelope::new(
            self.id,
            self.mtype,
            self.sender,
            self.sent_at,
            self.headers().clone(),
            self.payload_bytes(),
            None,
            self.expires_at(),
            self.visible_at(),
        );
        copy.deliveries = self.deliveries;
        copy.set_memfd(self.memfd().cloned());
        copy
    }
}

/// A message offered by a sender, before the mailbox has given it an id.
#[derive(Debug)]
pub struct Incoming {
    pub mtype: i64,
    pub sender: Credentials,
    pub headers: Headers,
    pub payload: Bytes,
    /// The memfd `payload` is a mapping of, when it came as one and is kept.
    pub memfd: Option<std::sync::Arc<Memfd>>,
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
