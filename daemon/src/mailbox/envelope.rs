//! A message as a mailbox keeps it (`Envelope`), as a sender offers it (`Incoming`),
//! who sent and pays for it (`Origin`), and what its size counts: payload and headers.
//!
//! An envelope is one allocation, as the kernel's `msg_msg` is: a 40-byte head (id,
//! type, time, deliveries, flags, and a shared [`Origin`] in place of the sender's
//! credentials and the charge), the payload right after it, and — only for a message
//! that has headers, a TTL, a delay, a large or memfd payload or a durable removal
//! record — a [`Rare`] part after the payload. The envelope itself is one pointer, so a
//! queue's entry is 8 bytes. A plain 64-byte message costs the daemon 48 bytes beside
//! its payload (a 112-byte block in glibc's malloc), plus its queue entry.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error, realloc};
use std::fmt;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipc_proto::{Credentials, Headers, Timestamp};
use tokio::time::Instant;

use crate::quota::{Charge, GaugeSlot, Resource, UidAccount};

use super::durable::Removal;

/// Who sent a message and who pays for keeping it, shared by every message a
/// connection sends under the same terms: one pointer in each message where the
/// sender's credentials and a charge would take 28 bytes.
#[derive(Debug)]
pub struct Origin {
    pub creds: Credentials,
    /// The account a message's charge is given back to; `None` for one charged to
    /// nobody.
    payer: Option<Arc<UidAccount>>,
    /// What keeping a message costs besides its size (`message_overhead`), as it was
    /// when its charge was taken: a charge is given back exactly as taken, whatever a
    /// reload changed since.
    overhead: u64,
}

impl Origin {
    pub fn new(creds: Credentials, payer: Option<Arc<UidAccount>>, overhead: u64) -> Self {
        Self {
            creds,
            payer,
            overhead,
        }
    }

    /// Whether a message of `size` charged `charge` can hold its charge as this origin.
    fn holds(&self, charge: &Charge, size: u64) -> bool {
        self.payer
            .as_ref()
            .is_some_and(|payer| Arc::ptr_eq(payer, charge.account()))
            && charge.amount() == size + self.overhead
            && charge.resource() == Resource::QueuedBytes
    }

    /// Whether this origin is `creds` paid by `payer` at `overhead`.
    pub fn is(&self, creds: Credentials, payer: &Arc<UidAccount>, overhead: u64) -> bool {
        self.creds == creds
            && self.overhead == overhead
            && self.payer.as_ref().is_some_and(|p| Arc::ptr_eq(p, payer))
    }
}

/// A message as the daemon keeps it: a pointer to one block holding a [`Head`], the
/// payload, and a [`Rare`] when it has one.
pub struct Envelope(NonNull<Head>);

/// What every message has.
#[repr(C)]
struct Head {
    id: u64,
    mtype: i64,
    sent_at: Timestamp,
    /// `None` only for a [hole](Envelope::hole).
    origin: Option<Arc<Origin>>,
    /// Times it has been taken by a receiver.
    deliveries: u32,
    /// Bytes of payload held in the block; 0 when the payload is [`Rare::shared`].
    len: u16,
    flags: u8,
}

/// The message holds a charge: its size and its origin's overhead, owed to its payer
/// and given back when it is dropped. A copy made for a peek holds none.
const CHARGED: u8 = 1;
/// A [`Rare`] follows the payload.
const RARE: u8 = 2;
/// No message: the place of one taken from inside a queue ([`Envelope::hole`]).
const HOLE: u8 = 4;

/// Where the payload starts in the block.
const PAYLOAD_AT: usize = size_of::<Head>();

// The envelope owns its head and rare part, which are both `Send` and `Sync`: so is it.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Head>();
    shareable::<Rare>();
    assert!(size_of::<Head>() == 40);
};
// SAFETY: an `Envelope` owns its block outright, like a `Box<(Head, [u8], Rare)>`, and
// everything in it is `Send + Sync` (checked above).
unsafe impl Send for Envelope {}
// SAFETY: as above; `&Envelope` gives only shared access to the block.
unsafe impl Sync for Envelope {}

/// The largest payload an envelope holds in its block; a larger one stays the `Bytes` it
/// came as, so that a published message's copies (and a memfd's mapping) share one
/// buffer.
const OWN_PAYLOAD_UP_TO: usize = 1024;
const _: () = assert!(OWN_PAYLOAD_UP_TO <= u16::MAX as usize);

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
    /// The message's size as it came ([`Envelope::size`]): what it counts for and was
    /// charged for, even once its headers or shared payload are taken.
    size: u64,
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

/// The sender of a hole, which has none.
const NOBODY: Credentials = Credentials {
    pid: 0,
    uid: u32::MAX,
    gid: u32::MAX,
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

/// The block of an envelope with `len` bytes of payload, with a [`Rare`] or not, and
/// where that starts.
fn layout(len: usize, rare: bool) -> (Layout, usize) {
    let head = Layout::new::<Head>();
    let payload = Layout::array::<u8>(len).expect("a payload up to 1 KiB");
    let (block, at) = head.extend(payload).expect("a small block");
    debug_assert_eq!(at, PAYLOAD_AT);
    if !rare {
        return (block.pad_to_align(), 0);
    }
    let (block, rare_at) = block.extend(Layout::new::<Rare>()).expect("a small block");
    (block.pad_to_align(), rare_at)
}

impl Envelope {
    /// A message as stamped by its mailbox (or recovered from the store). Its `charge`,
    /// if any, is held from now on as the envelope's origin — `origin` itself when that
    /// pays as the charge was taken (the usual case), else a new origin for it.
    #[allow(clippy::too_many_arguments, reason = "every field of a message, once")]
    pub(super) fn new(
        id: u64,
        mtype: i64,
        origin: Arc<Origin>,
        sent_at: Timestamp,
        headers: Headers,
        payload: Bytes,
        charge: Option<Charge>,
        expires_at: Option<Instant>,
        visible_at: Option<Instant>,
    ) -> Self {
        let size = payload.len() as u64 + headers_size(&headers);
        let (origin, flags) = match charge {
            None => (origin, 0),
            Some(charge) => {
                let origin = if origin.holds(&charge, size) {
                    origin
                } else {
                    debug_assert_eq!(charge.resource(), Resource::QueuedBytes);
                    Arc::new(Origin::new(
                        origin.creds,
                        Some(charge.account().clone()),
                        charge.amount().saturating_sub(size),
                    ))
                };
                // Given back by this envelope's drop, or taken again as a `Charge`.
                charge.dissolve();
                (origin, CHARGED)
            }
        };
        let (inline, shared) = if payload.len() > OWN_PAYLOAD_UP_TO {
            (Bytes::new(), Some(payload))
        } else {
            (payload, None)
        };
        let plain = headers == NO_HEADERS
            && shared.is_none()
            && expires_at.is_none()
            && visible_at.is_none();
        let rare = (!plain).then(|| Rare {
            size,
            headers,
            shared: shared.map(|bytes| Box::new(Shared { bytes, memfd: None })),
            removal: None,
            expires_at,
            visible_at,
        });
        let head = Head {
            id,
            mtype,
            sent_at,
            origin: Some(origin),
            deliveries: 0,
            len: inline.len() as u16,
            flags: flags | if rare.is_some() { RARE } else { 0 },
        };
        Self::build(head, &inline, rare)
    }

    /// The place of a message taken from inside a queue: a hole with its id, for a
    /// queue that finds its messages by id (`index`). Holes are few and short-lived.
    pub fn hole(id: u64) -> Self {
        let head = Head {
            id,
            mtype: 0,
            sent_at: Timestamp(0),
            origin: None,
            deliveries: 0,
            len: 0,
            flags: HOLE,
        };
        Self::build(head, &[], None)
    }

    pub fn is_hole(&self) -> bool {
        self.head().flags & HOLE != 0
    }

    /// A block holding `head`, `payload` and `rare`; `head` says how long the payload is
    /// and whether there is a rare part.
    fn build(head: Head, payload: &[u8], rare: Option<Rare>) -> Self {
        debug_assert_eq!(head.len as usize, payload.len());
        debug_assert_eq!(head.flags & RARE != 0, rare.is_some());
        let (layout, rare_at) = layout(payload.len(), rare.is_some());
        // SAFETY: the layout is not zero-sized (it holds a `Head`).
        let Some(block) = NonNull::new(unsafe { alloc(layout) }) else {
            handle_alloc_error(layout)
        };
        // SAFETY: the block is fresh, sized and aligned by `layout` for a `Head` at 0,
        // `payload.len()` bytes at `PAYLOAD_AT` and, if asked, a `Rare` at `rare_at`.
        unsafe {
            block.cast::<Head>().write(head);
            ptr::copy_nonoverlapping(
                payload.as_ptr(),
                block.add(PAYLOAD_AT).as_ptr(),
                payload.len(),
            );
            if let Some(rare) = rare {
                block.add(rare_at).cast::<Rare>().write(rare);
            }
        }
        Self(block.cast())
    }

    fn head(&self) -> &Head {
        // SAFETY: the block holds a `Head` at its start for as long as `self` lives.
        unsafe { self.0.as_ref() }
    }

    fn head_mut(&mut self) -> &mut Head {
        // SAFETY: as `head`; `&mut self` is the only access.
        unsafe { self.0.as_mut() }
    }

    pub fn id(&self) -> u64 {
        self.head().id
    }

    pub fn mtype(&self) -> i64 {
        self.head().mtype
    }

    pub fn sent_at(&self) -> Timestamp {
        self.head().sent_at
    }

    pub fn sender(&self) -> Credentials {
        self.head().origin.as_ref().map_or(NOBODY, |o| o.creds)
    }

    /// Times it has been taken by a receiver.
    pub fn deliveries(&self) -> u32 {
        self.head().deliveries
    }

    pub fn deliveries_mut(&mut self) -> &mut u32 {
        &mut self.head_mut().deliveries
    }

    fn inline(&self) -> &[u8] {
        let len = self.head().len as usize;
        // SAFETY: `len` bytes of payload follow the head, written by `build`.
        unsafe { std::slice::from_raw_parts(self.0.cast::<u8>().add(PAYLOAD_AT).as_ptr(), len) }
    }

    /// Where the rare part is, if there is one.
    fn rare_ptr(&self) -> Option<NonNull<Rare>> {
        let head = self.head();
        if head.flags & RARE == 0 {
            return None;
        }
        let (_, at) = layout(head.len as usize, true);
        // SAFETY: a block flagged `RARE` holds one at `at` (`build`, `rare_mut`).
        Some(unsafe { self.0.cast::<u8>().add(at).cast() })
    }

    fn rare(&self) -> Option<&Rare> {
        // SAFETY: the rare part lives as long as the block, and `&self` shares it.
        self.rare_ptr().map(|p| unsafe { p.as_ref() })
    }

    fn rare_if_any_mut(&mut self) -> Option<&mut Rare> {
        // SAFETY: as `rare`; `&mut self` is the only access.
        self.rare_ptr().map(|mut p| unsafe { p.as_mut() })
    }

    /// The rare part, added to the block (which grows in place or moves) if it has none.
    fn rare_mut(&mut self) -> &mut Rare {
        if self.rare_ptr().is_none() {
            let size = self.size();
            let len = self.head().len as usize;
            let (old, _) = layout(len, false);
            let (new, rare_at) = layout(len, true);
            // SAFETY: the block was allocated with `old`; `new` has the same alignment
            // and is larger. The head and payload keep their offsets, and the rare part
            // is written into the new room before the flag says it is there.
            unsafe {
                let block = realloc(self.0.cast::<u8>().as_ptr(), old, new.size());
                let Some(block) = NonNull::new(block) else {
                    handle_alloc_error(new)
                };
                block.add(rare_at).cast::<Rare>().write(Rare {
                    size,
                    ..Rare::default()
                });
                self.0 = block.cast();
            }
            self.head_mut().flags |= RARE;
        }
        self.rare_if_any_mut().expect("just added")
    }

    pub fn payload(&self) -> &[u8] {
        match self.rare().and_then(|r| r.shared.as_ref()) {
            Some(shared) => &shared.bytes[..],
            None => self.inline(),
        }
    }

    /// The payload as `Bytes`: shared if it is, else a copy.
    pub fn payload_bytes(&self) -> Bytes {
        match self.rare().and_then(|r| r.shared.as_ref()) {
            Some(shared) => shared.bytes.clone(),
            None => Bytes::copy_from_slice(self.inline()),
        }
    }

    /// The payload, leaving none behind if it is shared (for the wire form of a
    /// delivered message, or when it goes as a memfd instead).
    pub fn take_payload(&mut self) -> Bytes {
        match self.rare_if_any_mut().and_then(|r| r.shared.take()) {
            Some(shared) => shared.bytes,
            None => Bytes::copy_from_slice(self.inline()),
        }
    }

    pub fn headers(&self) -> &Headers {
        self.rare().map_or(&NO_HEADERS, |r| &r.headers)
    }

    /// The headers, leaving none behind (for the wire form of a delivered message).
    pub fn take_headers(&mut self) -> Headers {
        self.rare_if_any_mut()
            .map(|r| std::mem::take(&mut r.headers))
            .unwrap_or_default()
    }

    /// When it expires undelivered, if it has a TTL.
    pub fn expires_at(&self) -> Option<Instant> {
        self.rare().and_then(|r| r.expires_at)
    }

    /// Until when it is invisible, if it was sent with a delay.
    pub fn visible_at(&self) -> Option<Instant> {
        self.rare().and_then(|r| r.visible_at)
    }

    /// It is visible from now on.
    pub(super) fn show(&mut self) {
        if let Some(rare) = self.rare_if_any_mut() {
            rare.visible_at = None;
        }
    }

    pub fn has_removal(&self) -> bool {
        self.rare().is_some_and(|r| r.removal.is_some())
    }

    /// The record of its leaving, taken to be committed (or dropped).
    pub fn take_removal(&mut self) -> Option<Removal> {
        self.rare_if_any_mut().and_then(|r| r.removal.take())
    }

    /// The memfd the payload came in, if the daemon kept it.
    pub fn memfd(&self) -> Option<&std::sync::Arc<Memfd>> {
        self.rare()?.shared.as_ref()?.memfd.as_ref()
    }

    pub(super) fn set_memfd(&mut self, memfd: Option<std::sync::Arc<Memfd>>) {
        let Some(memfd) = memfd else {
            if let Some(shared) = self.rare_if_any_mut().and_then(|r| r.shared.as_mut()) {
                shared.memfd = None;
            }
            return;
        };
        // A kept memfd's payload is far past what an envelope holds, so it is shared
        // already; a small one is shared as a copy all the same.
        let inline = Bytes::copy_from_slice(self.inline());
        let shared = self.rare_mut().shared.get_or_insert_with(|| {
            Box::new(Shared {
                bytes: inline,
                memfd: None,
            })
        });
        shared.memfd = Some(memfd);
    }

    /// The memfd the payload came in, taken (the payload stays).
    fn take_memfd(&mut self) -> Option<std::sync::Arc<Memfd>> {
        self.rare_if_any_mut()?.shared.as_mut()?.memfd.take()
    }

    pub(super) fn set_removal(&mut self, removal: Option<Removal>) {
        if removal.is_some() || self.rare_ptr().is_some() {
            self.rare_mut().removal = removal;
        }
    }

    /// What the message counts for against the mailbox's `max_bytes`, and was charged
    /// for besides its overhead: payload and headers, as it came.
    pub fn size(&self) -> u64 {
        match self.rare() {
            Some(rare) => rare.size,
            None => u64::from(self.head().len),
        }
    }

    /// Its charge, taken out as a `Charge` (it holds none from now on).
    fn take_charge(&mut self) -> Option<Charge> {
        let head = self.head();
        if head.flags & CHARGED == 0 {
            return None;
        }
        let origin = head.origin.as_ref().expect("a message has an origin");
        let payer = origin
            .payer
            .as_ref()
            .expect("a charged message has a payer");
        let charge = Charge::adopt(payer, Resource::QueuedBytes, self.size() + origin.overhead);
        self.head_mut().flags &= !CHARGED;
        Some(charge)
    }

    /// The message as offered to another mailbox (dead-lettering): same sender, type,
    /// headers and payload, still charged to its payer; a new id there.
    pub fn into_incoming(mut self) -> Incoming {
        // What is left of its TTL goes with it; a dead letter is visible at once.
        let ttl = self
            .expires_at()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let charge = self.take_charge();
        let memfd = self.take_memfd();
        Incoming {
            memfd,
            mtype: self.mtype(),
            origin: self.head().origin.clone().expect("a message has an origin"),
            headers: self.take_headers(),
            payload: self.take_payload(),
            charge,
            ttl,
            delay: None,
        }
    }

    /// A copy for a peek: the same message, charged to nobody.
    pub(super) fn copy(&self) -> Envelope {
        let mut copy = Envelope::new(
            self.id(),
            self.mtype(),
            self.head().origin.clone().expect("a message has an origin"),
            self.sent_at(),
            self.headers().clone(),
            self.payload_bytes(),
            None,
            self.expires_at(),
            self.visible_at(),
        );
        *copy.deliveries_mut() = self.deliveries();
        copy.set_memfd(self.memfd().cloned());
        copy
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        let head = self.head();
        if head.flags & CHARGED != 0 {
            let origin = head.origin.as_ref().expect("a message has an origin");
            let payer = origin
                .payer
                .as_ref()
                .expect("a charged message has a payer");
            payer.give_back(Resource::QueuedBytes, self.size() + origin.overhead);
        }
        let rare = self.rare_ptr();
        let (layout, _) = layout(self.head().len as usize, rare.is_some());
        // SAFETY: the block holds a live `Head` and, if flagged, a live `Rare`; each is
        // dropped once, then the block is freed with the layout it has now.
        unsafe {
            if let Some(rare) = rare {
                ptr::drop_in_place(rare.as_ptr());
            }
            ptr::drop_in_place(self.0.as_ptr());
            dealloc(self.0.cast::<u8>().as_ptr(), layout);
        }
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_hole() {
            return write!(f, "Hole({})", self.id());
        }
        f.debug_struct("Envelope")
            .field("id", &self.id())
            .field("mtype", &self.mtype())
            .field("sender", &self.sender())
            .field("sent_at", &self.sent_at())
            .field("deliveries", &self.deliveries())
            .field("size", &self.size())
            .field("charged", &(self.head().flags & CHARGED != 0))
            .field("rare", &self.rare())
            .finish()
    }
}

/// A message offered by a sender, before the mailbox has given it an id.
#[derive(Debug)]
pub struct Incoming {
    pub mtype: i64,
    /// Its sender, and who pays as `charge` was taken (shared by a connection's
    /// messages; see [`Origin`]).
    pub origin: Arc<Origin>,
    pub headers: Headers,
    pub payload: Bytes,
    /// The memfd `payload` is a mapping of, when it came as one and is kept.
    pub memfd: Option<std::sync::Arc<Memfd>>,
    /// Its charge to the payer's uid (size and per-message overhead), taken before the
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

    pub fn sender(&self) -> Credentials {
        self.origin.creds
    }
}

/// What a `send` returns: the id the message got in the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentId(pub u64);

impl crate::index::Queued for Envelope {
    fn id(&self) -> u64 {
        Envelope::id(self)
    }

    fn hole(id: u64) -> Self {
        Envelope::hole(id)
    }

    fn is_hole(&self) -> bool {
        Envelope::is_hole(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Accounts, Gauge};

    const CREDS: Credentials = Credentials {
        pid: 7,
        uid: 1000,
        gid: 100,
    };

    fn charged(
        account: &Arc<UidAccount>,
        origin: &Arc<Origin>,
        headers: Headers,
        payload: &[u8],
        overhead: u64,
    ) -> Envelope {
        let size = payload.len() as u64 + headers_size(&headers);
        let charge = account
            .try_charge(Resource::QueuedBytes, size + overhead, u64::MAX)
            .unwrap();
        let ttl = headers.correlation_id.map(|_| Instant::now());
        Envelope::new(
            1,
            3,
            origin.clone(),
            Timestamp(5),
            headers,
            Bytes::copy_from_slice(payload),
            Some(charge),
            ttl,
            None,
        )
    }

    /// A plain 64-byte message is one block of 104 bytes (a 112-byte chunk in glibc's
    /// malloc): 48 bytes beside its payload, and an 8-byte queue entry.
    #[test]
    fn a_plain_message_is_one_small_block() {
        assert_eq!(size_of::<Envelope>(), 8);
        assert_eq!(size_of::<Option<Envelope>>(), 8);
        assert_eq!(layout(64, false).0.size(), 104);
        let accounts = Accounts::default();
        let account = accounts.account(CREDS.uid);
        let origin = Arc::new(Origin::new(CREDS, Some(account.clone()), 384));
        let e = charged(&account, &origin, Headers::default(), &[9; 64], 384);
        assert!(e.rare().is_none());
        assert!(Arc::ptr_eq(e.head().origin.as_ref().unwrap(), &origin));
        assert_eq!((e.id(), e.mtype(), e.sent_at()), (1, 3, Timestamp(5)));
        assert_eq!(e.sender(), CREDS);
        assert_eq!(e.payload(), &[9; 64]);
        assert_eq!(e.size(), 64);
    }

    /// Whatever is done to a message — its headers and payload taken for the wire, a
    /// rare part added later, handed on as an `Incoming`, copied — the charge it was
    /// sent with is given back once, exactly, and copies hold none.
    #[test]
    fn a_message_gives_back_exactly_its_charge() {
        let accounts = Accounts::default();
        let account = accounts.account(CREDS.uid);
        let used = || account.used(Resource::QueuedBytes);
        let origin = Arc::new(Origin::new(CREDS, Some(account.clone()), 100));
        let headers = Headers {
            content_type: Some("text/plain".into()),
            correlation_id: Some(4),
            ..Headers::default()
        };

        // Taken apart for the wire.
        let mut e = charged(&account, &origin, headers.clone(), b"hello", 100);
        assert_eq!(used(), 5 + 18 + 100);
        assert_eq!(e.take_headers(), headers);
        assert_eq!(&e.take_payload()[..], b"hello");
        assert_eq!(e.size(), 23, "its size stays what it came as");
        drop(e);
        assert_eq!(used(), 0);

        // A copy holds no charge; the message holds its own.
        let e = charged(&account, &origin, Headers::default(), b"plain", 100);
        let copy = e.copy();
        assert_eq!((copy.payload(), copy.sender()), (&b"plain"[..], CREDS));
        drop(e);
        assert_eq!(used(), 0);
        drop(copy);
        assert_eq!(used(), 0);

        // A rare part added to a plain message (a memfd kept), then handed on.
        let mut e = charged(&account, &origin, Headers::default(), &[1; 64], 100);
        let memfd = std::fs::File::open("/dev/null").unwrap();
        let gauge = Gauge::default();
        e.set_memfd(Some(Arc::new(Memfd {
            fd: Arc::new(memfd.into()),
            len: 64,
            _place: gauge.enter(1).unwrap(),
        })));
        assert!(e.memfd().is_some());
        assert_eq!(e.payload(), &[1; 64]);
        let incoming = e.into_incoming();
        assert_eq!(used(), 164, "the charge went with it");
        assert_eq!(incoming.charge.as_ref().map(Charge::amount), Some(164));
        assert_eq!(&incoming.payload[..], &[1; 64]);
        drop(incoming);
        assert_eq!(used(), 0);

        // Charged at another overhead than its origin's (a reload came between): the
        // message gets an origin that gives back what was taken.
        let e = charged(&account, &origin, Headers::default(), b"x", 500);
        assert_eq!(used(), 501);
        assert!(!Arc::ptr_eq(e.head().origin.as_ref().unwrap(), &origin));
        drop(e);
        assert_eq!(used(), 0);
    }

    /// A large payload is shared as it came, not copied into the block.
    #[test]
    fn a_large_payload_is_shared() {
        let origin = Arc::new(Origin::new(CREDS, None, 0));
        let payload = Bytes::from(vec![2u8; OWN_PAYLOAD_UP_TO + 1]);
        let mut e = Envelope::new(
            9,
            1,
            origin,
            Timestamp(0),
            Headers::default(),
            payload.clone(),
            None,
            None,
            None,
        );
        assert_eq!(e.head().len, 0);
        assert_eq!(e.payload().as_ptr(), payload.as_ptr());
        assert_eq!(e.size(), payload.len() as u64);
        assert_eq!(e.take_payload().as_ptr(), payload.as_ptr());
    }

    #[test]
    fn a_hole_keeps_its_id() {
        let hole = Envelope::hole(42);
        assert!(hole.is_hole());
        assert_eq!(hole.id(), 42);
        assert_eq!(hole.size(), 0);
    }
}
