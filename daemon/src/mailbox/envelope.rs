//! A message as a mailbox keeps it (`Envelope`), as a sender offers it (`Incoming`),
//! who sent and pays for it (`Origin`), and what its size counts: payload and headers.
//!
//! An envelope is one allocation, as the kernel's `msg_msg` is: a 40-byte head (id,
//! type, time, deliveries, flags, and a shared [`Origin`] in place of the sender's
//! credentials and the charge), the payload right after it, and after that only the
//! parts the message has — its times (a TTL or delay), its headers, a large or memfd
//! payload, a durable removal record — each laid out only if its flag says so. The
//! envelope itself is one pointer, so a queue's entry is 8 bytes. A plain 64-byte
//! message costs the daemon 48 bytes beside its payload (a 112-byte block in glibc's
//! malloc), plus its queue entry.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error, realloc};
use std::fmt;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipc_proto::{Credentials, HeaderBox, Headers, Timestamp};
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
/// payload, and after it only the parts the message has (see [`Parts`]).
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
    /// Bytes of payload held in the block; 0 when the payload is shared (`SHARED`).
    len: u16,
    flags: u8,
}

/// The message holds a charge: its size and its origin's overhead, owed to its payer
/// and given back when it is dropped. A copy made for a peek holds none.
const CHARGED: u8 = 1;
/// No message: the place of one taken from inside a queue ([`Envelope::hole`]).
const HOLE: u8 = 2;
// The parts that follow the payload when a message has them, in this order. Each is laid
// out only if its flag is set, so a message with a TTL pays for its times, not for
// headers it does not have.
/// Its size as it came (`u64`), where that is not the payload's length: with headers or
/// a shared payload.
const SIZE: u8 = 4;
/// When it expires and until when it is invisible ([`Times`]).
const TIMES: u8 = 8;
/// Its headers ([`Headers`]).
const HEADERS: u8 = 16;
/// A payload kept as it came (`Option<Box<Shared>>`): larger than
/// [`OWN_PAYLOAD_UP_TO`], or a memfd's mapping.
const SHARED: u8 = 32;
/// The record of its leaving a durable mailbox (`Option<Removal>`), added when it leaves
/// the queue, to be written once it is really delivered ([`Removal::commit`]), not when
/// it is merely handed to a waiter that may vanish and give it back. Last, so that
/// adding it moves nothing.
const REMOVAL: u8 = 64;

/// Where the payload starts in the block.
const PAYLOAD_AT: usize = size_of::<Head>();

// The envelope owns its head and parts, which are all `Send` and `Sync`: so is it.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Head>();
    shareable::<Times>();
    shareable::<Headers>();
    shareable::<Option<Box<Shared>>>();
    shareable::<Option<Removal>>();
    assert!(size_of::<Head>() == 40);
};
// SAFETY: an `Envelope` owns its block outright, like a `Box` of its head, payload and
// parts, and everything in it is `Send + Sync` (checked above).
unsafe impl Send for Envelope {}
// SAFETY: as above; `&Envelope` gives only shared access to the block.
unsafe impl Sync for Envelope {}

/// The largest payload an envelope holds in its block; a larger one stays the `Bytes` it
/// came as, so that a published message's copies (and a memfd's mapping) share one
/// buffer.
pub const OWN_PAYLOAD_UP_TO: usize = 1024;
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

/// When a message expires undelivered (its TTL), and until when it is invisible (its
/// delay), on the monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
struct Times {
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

/// The layout of a block with `len` bytes of payload and the parts `flags` name, and
/// where each part starts (0 for one it does not have: the head is at 0).
#[derive(Debug, Clone, Copy)]
struct Parts {
    layout: Layout,
    size: usize,
    times: usize,
    headers: usize,
    shared: usize,
    removal: usize,
}

impl Parts {
    fn of(len: usize, flags: u8) -> Self {
        let payload = Layout::array::<u8>(len).expect("a payload up to 1 KiB");
        let (mut block, at) = Layout::new::<Head>()
            .extend(payload)
            .expect("a small block");
        debug_assert_eq!(at, PAYLOAD_AT);
        let mut part = |flag: u8, part: Layout| {
            if flags & flag == 0 {
                return 0;
            }
            let (grown, at) = block.extend(part).expect("a small block");
            block = grown;
            at
        };
        let size = part(SIZE, Layout::new::<u64>());
        let times = part(TIMES, Layout::new::<Times>());
        let headers = part(HEADERS, Layout::new::<Headers>());
        let shared = part(SHARED, Layout::new::<Option<Box<Shared>>>());
        let removal = part(REMOVAL, Layout::new::<Option<Removal>>());
        Self {
            layout: block.pad_to_align(),
            size,
            times,
            headers,
            shared,
            removal,
        }
    }
}

impl Envelope {
    /// A message as stamped by its mailbox (or recovered from the store). Its `charge`,
    /// if any, is held from now on as the envelope's origin — `origin` itself when that
    /// pays as the charge was taken (the usual case), else a new origin for it. A
    /// `memfd` is the one `payload` is a mapping of, kept to be handed on.
    #[allow(clippy::too_many_arguments, reason = "every field of a message, once")]
    pub(super) fn new(
        id: u64,
        mtype: i64,
        origin: Arc<Origin>,
        sent_at: Timestamp,
        headers: Headers,
        payload: Bytes,
        memfd: Option<std::sync::Arc<Memfd>>,
        charge: Option<Charge>,
        expires_at: Option<Instant>,
        visible_at: Option<Instant>,
    ) -> Self {
        let size = payload.len() as u64 + headers_size(&headers);
        let (origin, mut flags) = match charge {
            None => (origin, 0),
            Some(charge) => {
                let origin = if origin.holds(&charge, size) {
                    origin
                } else {
                    // Every message's charge is its size and an overhead, in queued
                    // bytes: what this envelope gives back is exactly that.
                    debug_assert_eq!(charge.resource(), Resource::QueuedBytes);
                    debug_assert!(charge.amount() >= size, "a charge covers its message");
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
        let (inline, shared) = if payload.len() > OWN_PAYLOAD_UP_TO || memfd.is_some() {
            (
                Bytes::new(),
                Some(Box::new(Shared {
                    bytes: payload,
                    memfd,
                })),
            )
        } else {
            (payload, None)
        };
        let times = Times {
            expires_at,
            visible_at,
        };
        let headers = (headers != NO_HEADERS).then_some(headers);
        if times.expires_at.is_some() || times.visible_at.is_some() {
            flags |= TIMES;
        }
        if headers.is_some() {
            flags |= HEADERS | SIZE;
        }
        if shared.is_some() {
            flags |= SHARED | SIZE;
        }
        let head = Head {
            id,
            mtype,
            sent_at,
            origin: Some(origin),
            deliveries: 0,
            len: inline.len() as u16,
            flags,
        };
        let parts = Parts::of(inline.len(), flags);
        let block = Self::allocate(head, &inline, parts.layout);
        // SAFETY: the block was laid out by `parts` for the parts `flags` names; each is
        // written once, at its offset, before anything reads it.
        unsafe {
            let base = block.0.cast::<u8>();
            if flags & SIZE != 0 {
                base.add(parts.size).cast::<u64>().write(size);
            }
            if flags & TIMES != 0 {
                base.add(parts.times).cast::<Times>().write(times);
            }
            if let Some(headers) = headers {
                base.add(parts.headers).cast::<Headers>().write(headers);
            }
            if flags & SHARED != 0 {
                base.add(parts.shared)
                    .cast::<Option<Box<Shared>>>()
                    .write(shared);
            }
        }
        block
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
        Self::allocate(head, &[], Parts::of(0, HOLE).layout)
    }

    pub fn is_hole(&self) -> bool {
        self.head().flags & HOLE != 0
    }

    /// A block of `layout` holding `head` and `payload`; the caller writes the parts
    /// `head.flags` names before anything reads them.
    fn allocate(head: Head, payload: &[u8], layout: Layout) -> Self {
        debug_assert_eq!(head.len as usize, payload.len());
        debug_assert_eq!(layout, Parts::of(payload.len(), head.flags).layout);
        // SAFETY: the layout is not zero-sized (it holds a `Head`).
        let Some(block) = NonNull::new(unsafe { alloc(layout) }) else {
            handle_alloc_error(layout)
        };
        // SAFETY: the block is fresh, sized and aligned by `layout` for a `Head` at 0 and
        // `payload.len()` bytes at `PAYLOAD_AT`.
        unsafe {
            block.cast::<Head>().write(head);
            let at = block.add(PAYLOAD_AT).as_ptr();
            ptr::copy_nonoverlapping(payload.as_ptr(), at, payload.len());
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

    fn parts(&self) -> Parts {
        let head = self.head();
        Parts::of(head.len as usize, head.flags)
    }

    /// The part `flag` names, of type `T`, if the message has it.
    ///
    /// # Safety
    /// `T` must be the type of that part (see the flags).
    unsafe fn part<T>(&self, flag: u8, at: impl FnOnce(&Parts) -> usize) -> Option<NonNull<T>> {
        if self.head().flags & flag == 0 {
            return None;
        }
        let at = at(&self.parts());
        // SAFETY: a block flagged so holds the part at the offset its `Parts` gives.
        Some(unsafe { self.0.cast::<u8>().add(at).cast() })
    }

    fn times(&self) -> Option<&Times> {
        // SAFETY: the `TIMES` part is a `Times`, living as long as the block.
        unsafe { self.part::<Times>(TIMES, |p| p.times).map(|p| p.as_ref()) }
    }

    fn times_mut(&mut self) -> Option<&mut Times> {
        // SAFETY: as `times`; `&mut self` is the only access.
        unsafe {
            self.part::<Times>(TIMES, |p| p.times)
                .map(|mut p| p.as_mut())
        }
    }

    fn headers_mut(&mut self) -> Option<&mut Headers> {
        // SAFETY: the `HEADERS` part is a `Headers`; `&mut self` is the only access.
        unsafe {
            self.part::<Headers>(HEADERS, |p| p.headers)
                .map(|mut p| p.as_mut())
        }
    }

    fn shared(&self) -> Option<&Shared> {
        // SAFETY: the `SHARED` part is an `Option<Box<Shared>>`, living as long as the
        // block.
        let part = unsafe { self.part::<Option<Box<Shared>>>(SHARED, |p| p.shared) };
        part.and_then(|p| unsafe { p.as_ref() }.as_deref())
    }

    fn shared_mut(&mut self) -> Option<&mut Option<Box<Shared>>> {
        // SAFETY: as `shared`; `&mut self` is the only access.
        unsafe {
            self.part::<Option<Box<Shared>>>(SHARED, |p| p.shared)
                .map(|mut p| p.as_mut())
        }
    }

    fn removal_mut(&mut self) -> Option<&mut Option<Removal>> {
        // SAFETY: the `REMOVAL` part is an `Option<Removal>`; `&mut self` is the only
        // access.
        unsafe {
            self.part::<Option<Removal>>(REMOVAL, |p| p.removal)
                .map(|mut p| p.as_mut())
        }
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
        // SAFETY: `len` bytes of payload follow the head, written by `allocate`.
        unsafe { std::slice::from_raw_parts(self.0.cast::<u8>().add(PAYLOAD_AT).as_ptr(), len) }
    }

    pub fn payload(&self) -> &[u8] {
        match self.shared() {
            Some(shared) => &shared.bytes[..],
            None => self.inline(),
        }
    }

    /// The payload as `Bytes`: shared if it is, else a copy.
    pub fn payload_bytes(&self) -> Bytes {
        match self.shared() {
            Some(shared) => shared.bytes.clone(),
            None => Bytes::copy_from_slice(self.inline()),
        }
    }

    /// The payload, leaving none behind if it is shared (for the wire form of a
    /// delivered message, or when it goes as a memfd instead).
    pub fn take_payload(&mut self) -> Bytes {
        match self.shared_mut().and_then(Option::take) {
            Some(shared) => shared.bytes,
            None => Bytes::copy_from_slice(self.inline()),
        }
    }

    /// The message as its receiver gets it, borrowed: written into the reply as is.
    pub fn wire(&self) -> ipc_proto::MessageRef<'_> {
        ipc_proto::MessageRef {
            id: self.id(),
            mtype: self.mtype(),
            sender: self.sender(),
            sent_at: self.sent_at(),
            headers: self.headers(),
            redelivered: self.deliveries() > 1,
            deliveries: self.deliveries(),
            payload: self.payload(),
        }
    }

    pub fn headers(&self) -> &Headers {
        // SAFETY: the `HEADERS` part is a `Headers`, living as long as the block.
        let part = unsafe { self.part::<Headers>(HEADERS, |p| p.headers) };
        part.map_or(&NO_HEADERS, |p| unsafe { p.as_ref() })
    }

    /// The headers, leaving none behind (for the wire form of a delivered message).
    pub fn take_headers(&mut self) -> Headers {
        self.headers_mut().map(std::mem::take).unwrap_or_default()
    }

    /// When it expires undelivered, if it has a TTL.
    pub fn expires_at(&self) -> Option<Instant> {
        self.times().and_then(|t| t.expires_at)
    }

    /// Until when it is invisible, if it was sent with a delay.
    pub fn visible_at(&self) -> Option<Instant> {
        self.times().and_then(|t| t.visible_at)
    }

    /// It is visible from now on.
    pub(super) fn show(&mut self) {
        if let Some(times) = self.times_mut() {
            times.visible_at = None;
        }
    }

    pub fn has_removal(&self) -> bool {
        // SAFETY: the `REMOVAL` part is an `Option<Removal>`, living as long as the block.
        let part = unsafe { self.part::<Option<Removal>>(REMOVAL, |p| p.removal) };
        part.is_some_and(|p| unsafe { p.as_ref() }.is_some())
    }

    /// The record of its leaving, taken to be committed (or dropped).
    pub fn take_removal(&mut self) -> Option<Removal> {
        self.removal_mut().and_then(Option::take)
    }

    /// The memfd the payload came in, if the daemon kept it.
    pub fn memfd(&self) -> Option<&std::sync::Arc<Memfd>> {
        self.shared()?.memfd.as_ref()
    }

    /// The memfd the payload came in, taken (the payload stays).
    fn take_memfd(&mut self) -> Option<std::sync::Arc<Memfd>> {
        self.shared_mut()?.as_mut()?.memfd.take()
    }

    /// Gives it the record of its leaving a durable mailbox (`None`: it has none). The
    /// block grows by that part the first time: it is the last part, so nothing moves.
    pub(super) fn set_removal(&mut self, removal: Option<Removal>) {
        if let Some(part) = self.removal_mut() {
            *part = removal;
            return;
        }
        let Some(removal) = removal else { return };
        let head = self.head();
        let (len, flags) = (head.len as usize, head.flags);
        let old = Parts::of(len, flags).layout;
        let new = Parts::of(len, flags | REMOVAL);
        // SAFETY: the block was allocated with `old`; `new` has the same alignment (the
        // head's) and is larger. The head, payload and other parts keep their offsets,
        // and the removal part is written into the new room before the flag says it is
        // there.
        unsafe {
            debug_assert_eq!(old.align(), new.layout.align());
            let block = realloc(self.0.cast::<u8>().as_ptr(), old, new.layout.size());
            let Some(block) = NonNull::new(block) else {
                handle_alloc_error(new.layout)
            };
            block
                .add(new.removal)
                .cast::<Option<Removal>>()
                .write(Some(removal));
            self.0 = block.cast();
        }
        self.head_mut().flags |= REMOVAL;
    }

    /// What the message counts for against the mailbox's `max_bytes`, and was charged
    /// for besides its overhead: payload and headers, as it came.
    pub fn size(&self) -> u64 {
        // SAFETY: the `SIZE` part is a `u64`, living as long as the block.
        let part = unsafe { self.part::<u64>(SIZE, |p| p.size) };
        match part {
            Some(size) => unsafe { size.read() },
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

    /// Gives back its charge now (it holds none from now on): a message delivered is
    /// charged as the reply it is written into instead.
    pub fn give_back_charge(&mut self) {
        drop(self.take_charge());
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
            headers: self.take_headers().into(),
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
            self.memfd().cloned(),
            None,
            self.expires_at(),
            self.visible_at(),
        );
        *copy.deliveries_mut() = self.deliveries();
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
        let flags = self.head().flags;
        let parts = self.parts();
        let base = self.0.cast::<u8>();
        // SAFETY: the block holds a live `Head` and the live parts its flags name, each
        // dropped once here; then the block is freed with the layout it has now.
        unsafe {
            if flags & HEADERS != 0 {
                ptr::drop_in_place(base.add(parts.headers).cast::<Headers>().as_ptr());
            }
            if flags & SHARED != 0 {
                let shared = base.add(parts.shared).cast::<Option<Box<Shared>>>();
                ptr::drop_in_place(shared.as_ptr());
            }
            if flags & REMOVAL != 0 {
                let removal = base.add(parts.removal).cast::<Option<Removal>>();
                ptr::drop_in_place(removal.as_ptr());
            }
            ptr::drop_in_place(self.0.as_ptr());
            dealloc(base.as_ptr(), parts.layout);
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
            .field("times", &self.times())
            .field("headers", &self.headers())
            .field("shared", &self.shared())
            .field("has_removal", &self.has_removal())
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
    pub headers: HeaderBox,
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

    /// Makes a payload an envelope would hold in its block one of its own: such a payload
    /// may be a slice of the buffer its request was read into (see
    /// `codec::decode_body_sharing`), which a message kept waiting — for room, or for the
    /// store — must not hold. A larger one, or a memfd's mapping, is its own already.
    pub fn detach(&mut self) {
        if self.memfd.is_none() && self.payload.len() <= OWN_PAYLOAD_UP_TO {
            self.payload = Bytes::copy_from_slice(&self.payload);
        }
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

    /// The block's first two cache lines: its head and, for a small message, its payload.
    fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let block = self.0.as_ptr().cast::<i8>();
            // SAFETY: a prefetch is only a hint: it reads nothing the program sees and
            // cannot fault, whatever the address; `wrapping_add` makes no claim on it.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(block);
                _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(64));
            }
        }
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

    /// A message of `payload` and `headers` charged to `account` at `overhead`; with a
    /// TTL when it has a correlation id, and `memfd` kept.
    fn charged(
        account: &Arc<UidAccount>,
        origin: &Arc<Origin>,
        headers: Headers,
        payload: &[u8],
        memfd: Option<Arc<Memfd>>,
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
            memfd,
            Some(charge),
            ttl,
            None,
        )
    }

    /// A plain 64-byte message is one block of 104 bytes (a 112-byte chunk in glibc's
    /// malloc): 48 bytes beside its payload, and an 8-byte queue entry. A TTL adds its
    /// times, 32 bytes, and nothing else.
    #[test]
    fn a_plain_message_is_one_small_block() {
        assert_eq!(size_of::<Envelope>(), 8);
        assert_eq!(size_of::<Option<Envelope>>(), 8);
        assert_eq!(Parts::of(64, CHARGED).layout.size(), 104);
        assert_eq!(Parts::of(64, CHARGED | TIMES).layout.size(), 136);
        let accounts = Accounts::default();
        let account = accounts.account(CREDS.uid);
        let origin = Arc::new(Origin::new(CREDS, Some(account.clone()), 384));
        let e = charged(&account, &origin, Headers::default(), &[9; 64], None, 384);
        assert_eq!(e.head().flags, CHARGED);
        assert!(Arc::ptr_eq(e.head().origin.as_ref().unwrap(), &origin));
        assert_eq!((e.id(), e.mtype(), e.sent_at()), (1, 3, Timestamp(5)));
        assert_eq!(e.sender(), CREDS);
        assert_eq!(e.payload(), &[9; 64]);
        assert_eq!(e.size(), 64);
        assert_eq!((e.expires_at(), e.visible_at()), (None, None));
        assert_eq!(e.headers(), &Headers::default());
    }

    /// Whatever is done to a message — its headers and payload taken for the wire, its
    /// times changed, handed on as an `Incoming`, copied — the charge it was sent with is
    /// given back once, exactly, and copies hold none.
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
        let mut e = charged(&account, &origin, headers.clone(), b"hello", None, 100);
        assert_eq!(used(), 5 + 18 + 100);
        assert!(e.expires_at().is_some());
        e.show();
        assert!(e.expires_at().is_some() && e.visible_at().is_none());
        assert_eq!(e.headers(), &headers);
        assert_eq!(e.take_headers(), headers);
        assert_eq!(&e.take_payload()[..], b"hello");
        assert_eq!(e.size(), 23, "its size stays what it came as");
        drop(e);
        assert_eq!(used(), 0);

        // A copy holds no charge; the message holds its own.
        let e = charged(&account, &origin, headers.clone(), b"plain", None, 100);
        let copy = e.copy();
        assert_eq!((copy.payload(), copy.sender()), (&b"plain"[..], CREDS));
        assert_eq!(
            (copy.headers(), copy.expires_at()),
            (&headers, e.expires_at())
        );
        drop(e);
        assert_eq!(used(), 0);
        drop(copy);
        assert_eq!(used(), 0);

        // A small payload that came in a memfd kept: shared as it came, then handed on.
        let memfd = std::fs::File::open("/dev/null").unwrap();
        let gauge = Gauge::default();
        let memfd = Arc::new(Memfd {
            fd: Arc::new(memfd.into()),
            len: 64,
            _place: gauge.enter(1).unwrap(),
        });
        let e = charged(
            &account,
            &origin,
            Headers::default(),
            &[1; 64],
            Some(memfd),
            100,
        );
        assert!(e.memfd().is_some());
        assert_eq!(e.payload(), &[1; 64]);
        assert_eq!(e.copy().memfd().map(|m| m.len), Some(64));
        let incoming = e.into_incoming();
        assert_eq!(used(), 164, "the charge went with it");
        assert_eq!(incoming.charge.as_ref().map(Charge::amount), Some(164));
        assert_eq!(&incoming.payload[..], &[1; 64]);
        assert!(incoming.memfd.is_some());
        drop(incoming);
        assert_eq!(used(), 0);

        // Charged at another overhead than its origin's (a reload came between): the
        // message gets an origin that gives back what was taken.
        let e = charged(&account, &origin, Headers::default(), b"x", None, 500);
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
            None,
        );
        assert_eq!(e.head().len, 0);
        assert_eq!(e.payload().as_ptr(), payload.as_ptr());
        assert_eq!(e.size(), payload.len() as u64);
        assert_eq!(e.take_payload().as_ptr(), payload.as_ptr());
        assert_eq!(e.size(), payload.len() as u64);
    }

    /// A small payload that is a slice of a larger buffer (a request's frame) is made
    /// its own when the message is kept waiting; a large one is its own already.
    #[test]
    fn a_detached_payload_holds_no_more_than_itself() {
        let buffer = Bytes::from(vec![3u8; 64 * 1024]);
        let incoming = |payload: Bytes| Incoming {
            mtype: 1,
            origin: Arc::new(Origin::new(CREDS, None, 0)),
            headers: HeaderBox::default(),
            payload,
            memfd: None,
            charge: None,
            ttl: None,
            delay: None,
        };
        let mut small = incoming(buffer.slice(100..164));
        small.detach();
        assert_eq!(&small.payload[..], &[3u8; 64][..]);
        let range = buffer.as_ptr_range();
        assert!(
            !range.contains(&small.payload.as_ptr()),
            "a copy of its own"
        );
        let large = Bytes::from(vec![4u8; OWN_PAYLOAD_UP_TO + 1]);
        let mut kept = incoming(large.clone());
        kept.detach();
        assert_eq!(kept.payload.as_ptr(), large.as_ptr(), "not copied again");
    }

    /// Every combination of the parts a message can have, with and without a charge
    /// and a removal record added later: what went in reads back, taking parts leaves
    /// the rest, copies hold no charge, and the charge comes back exactly, whether the
    /// message is dropped or handed on. (Run under valgrind, this checks the block's
    /// layout and every part's drop.)
    #[test]
    fn every_combination_of_parts_reads_back_and_gives_back_its_charge() {
        use std::path::PathBuf;

        use crate::store::Store;
        use crate::store::disk::sim::SimDisk;
        use crate::store::log::LogOptions;

        let options = LogOptions {
            segment_bytes: 1 << 16,
            max_record: 1 << 20,
        };
        let (store, writer, _) = Store::open_on(SimDisk::default(), PathBuf::from("sim"), options)
            .expect("a simulated store");
        let link = Arc::new(super::super::Link { store, key: 1 });
        let accounts = Accounts::default();
        let account = accounts.account(CREDS.uid);
        let used = || account.used(Resource::QueuedBytes);
        let origin = Arc::new(Origin::new(CREDS, Some(account.clone()), 10));
        let gauge = Gauge::default();
        for combination in 0..1u32 << 8 {
            let has = |bit: u32| combination & 1 << bit != 0;
            let headers = if has(0) {
                Headers {
                    content_type: Some("application/json".into()),
                    correlation_id: Some(7),
                    ..Headers::default()
                }
            } else {
                Headers::default()
            };
            let payload = Bytes::from(vec![combination as u8; if has(1) { 5000 } else { 63 }]);
            let memfd = has(2).then(|| {
                Arc::new(Memfd {
                    fd: Arc::new(std::fs::File::open("/dev/null").unwrap().into()),
                    len: payload.len() as u64,
                    _place: gauge.enter(u64::MAX).unwrap(),
                })
            });
            let now = Instant::now();
            let expires_at = has(3).then(|| now + Duration::from_secs(60));
            let visible_at = has(4).then(|| now + Duration::from_secs(1));
            let size = payload.len() as u64 + headers_size(&headers);
            let charge = has(5).then(|| {
                account
                    .try_charge(Resource::QueuedBytes, size + 10, u64::MAX)
                    .unwrap()
            });
            let mut e = Envelope::new(
                combination.into(),
                -3,
                origin.clone(),
                Timestamp(9),
                headers.clone(),
                payload.clone(),
                memfd,
                charge,
                expires_at,
                visible_at,
            );
            let what = format!("combination {combination:08b}");
            assert_eq!(e.payload(), &payload[..], "{what}");
            assert_eq!(e.headers(), &headers, "{what}");
            assert_eq!((e.expires_at(), e.visible_at()), (expires_at, visible_at));
            assert_eq!(e.memfd().is_some(), has(2), "{what}");
            assert_eq!(e.size(), size, "{what}");
            if has(6) {
                e.set_removal(Some(Removal::of(link.clone(), e.id())));
                assert!(e.has_removal(), "{what}");
            }
            // Adding the removal moved nothing.
            assert_eq!(e.payload(), &payload[..], "{what}");
            assert_eq!(e.headers(), &headers, "{what}");
            assert_eq!((e.expires_at(), e.visible_at()), (expires_at, visible_at));
            assert_eq!(
                (e.id(), e.mtype(), e.sender()),
                (combination.into(), -3, CREDS)
            );
            let copy = e.copy();
            assert!(!copy.has_removal(), "{what}: a copy owes no removal");
            assert_eq!(copy.payload(), &payload[..], "{what}");
            drop(copy);
            e.show();
            assert_eq!(e.visible_at(), None, "{what}");
            assert_eq!(used(), if has(5) { size + 10 } else { 0 }, "{what}");
            if has(7) {
                let incoming = e.into_incoming();
                assert_eq!(&incoming.payload[..], &payload[..], "{what}");
                assert_eq!(incoming.headers, headers.into(), "{what}");
                assert_eq!(incoming.charge.is_some(), has(5), "{what}");
                drop(incoming);
            } else {
                assert_eq!(e.take_removal().is_some(), has(6), "{what}");
                assert_eq!(e.take_headers(), headers, "{what}");
                assert_eq!(&e.take_payload()[..], &payload[..], "{what}");
                assert_eq!(e.size(), size, "{what}");
                drop(e);
            }
            assert_eq!(used(), 0, "{what}");
        }
        link.store.stop();
        drop(link);
        writer.join();
    }

    #[test]
    fn a_hole_keeps_its_id() {
        let hole = Envelope::hole(42);
        assert!(hole.is_hole());
        assert_eq!(hole.id(), 42);
        assert_eq!(hole.size(), 0);
    }
}
