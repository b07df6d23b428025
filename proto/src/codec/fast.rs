//! The four bodies every streamed message crosses the socket in — a `Send` and a `Recv`
//! request, a `Sent` and a `Message` (or `Messages`) reply — laid out and read here by
//! hand, in postcard's layout: byte for byte what serde's derived code writes and reads.
//!
//! Through serde, decoding a 64-byte send cost about 1,100 instructions and a receive
//! 750, most of it in moving the 200-byte `Request` up through each layer of visitors;
//! the reply and the client's side cost as much again. Here each field is read or written
//! once, in place.
//!
//! serde stays the definition. Decoding takes only what it is sure of and returns `None`
//! for anything else — another request, a header it does not read (a topic), any
//! irregularity — so that serde decodes that body and reports whatever is wrong with it
//! in its usual words. The tests check, on random values and on random bytes, that the
//! two agree: the same value from the same bytes, the same bytes from the same value.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::{
    Credentials, Delivered, HeaderBox, Headers, Lease, Message, MessageRef, RecvRequest, Request,
    Response, Selector, SendRequest, Timestamp, Wait,
};
use crate::name::MailboxName;

/// The places of the variants read and written here among their enum's variants, as the
/// format numbers them (declaration order; a test checks them against serde).
const REQUEST_SEND: u32 = 1;
const REQUEST_RECV: u32 = 2;
const RESPONSE_SENT: u32 = 2;
const RESPONSE_MESSAGE: u32 = 3;
const RESPONSE_MESSAGES: u32 = 10;

/// `body` as a `Send` or `Recv` request, or `None` for serde to decode. A payload of at
/// most `share_up_to` bytes is a slice of `body`, a larger one a copy, as
/// [`super::decode_body_sharing`] makes them; the slice is `body` itself, taken and
/// advanced to the payload (its last field), not a new count on the buffer it shares
/// with the frames read with it (two atomic operations per message fewer).
#[inline]
pub(super) fn decode_request(body: &mut Bytes, share_up_to: usize) -> Option<Request> {
    let mut r = Reader { rest: body };
    let request = match r.u32()? {
        REQUEST_SEND => {
            let mailbox = r.name()?;
            let mtype = r.i64()?;
            let headers = r.headers()?;
            let wait = r.wait()?;
            let ttl_ms = r.option(Reader::u64)?;
            let delay_ms = r.option(Reader::u64)?;
            let payload = r.bytes()?;
            if !r.rest.is_empty() {
                return None;
            }
            let payload = if payload.len() <= share_up_to {
                let start = body.len() - payload.len();
                let mut payload = std::mem::take(body);
                payload.advance(start);
                payload
            } else {
                Bytes::copy_from_slice(payload)
            };
            return Some(Request::Send(SendRequest {
                mailbox,
                mtype,
                headers,
                wait,
                ttl_ms,
                delay_ms,
                payload,
            }));
        }
        REQUEST_RECV => Request::Recv(RecvRequest {
            mailbox: r.name()?,
            selector: r.selector()?,
            wait: r.wait()?,
            peek: r.bool()?,
            lease: r.option(|r| {
                Some(Lease {
                    timeout_ms: r.u64()?,
                    detached: r.bool()?,
                })
            })?,
            max_size: r.option(Reader::u64)?,
        }),
        _ => return None,
    };
    r.rest.is_empty().then_some(request)
}

/// `body` as a `Sent`, `Message` or `Messages` reply, or `None` for serde to decode.
#[inline]
pub(super) fn decode_response(body: &[u8]) -> Option<Response> {
    let mut r = Reader { rest: body };
    let response = match r.u32()? {
        RESPONSE_SENT => Response::Sent { id: r.u64()? },
        RESPONSE_MESSAGE => Response::Message(r.message()?),
        RESPONSE_MESSAGES => {
            let count = usize::try_from(r.u64()?).ok()?;
            // Each message takes more than one byte: a count past that is a lie.
            let mut messages = Vec::with_capacity(count.min(r.rest.len()));
            for _ in 0..count {
                messages.push(r.message()?);
            }
            Response::Messages(messages)
        }
        _ => return None,
    };
    r.rest.is_empty().then_some(response)
}

/// Appends `request`'s body to `out` if it is a `Send` or `Recv`; `false` (and nothing
/// written) for serde to encode any other.
pub(super) fn encode_request(request: &Request, out: &mut BytesMut) -> bool {
    match request {
        Request::Send(send) => {
            varint(out, u64::from(REQUEST_SEND));
            string(out, send.mailbox.as_str().as_bytes());
            signed(out, send.mtype);
            headers(out, &send.headers);
            wait(out, send.wait);
            option(out, send.ttl_ms, varint);
            option(out, send.delay_ms, varint);
            string(out, &send.payload);
        }
        Request::Recv(recv) => {
            varint(out, u64::from(REQUEST_RECV));
            string(out, recv.mailbox.as_str().as_bytes());
            let (tag, t) = match recv.selector {
                Selector::Any => (0, None),
                Selector::Type(t) => (1, Some(t)),
                Selector::Except(t) => (2, Some(t)),
                Selector::AtMost(t) => (3, Some(t)),
            };
            varint(out, tag);
            if let Some(t) = t {
                signed(out, t);
            }
            wait(out, recv.wait);
            out.put_u8(u8::from(recv.peek));
            option(out, recv.lease, |out, lease| {
                varint(out, lease.timeout_ms);
                out.put_u8(u8::from(lease.detached));
            });
            option(out, recv.max_size, varint);
        }
        _ => return false,
    }
    true
}

/// Appends `response`'s body to `out` if it is a `Sent`, `Message` or `Messages`;
/// `false` (and nothing written) for serde to encode any other.
pub(super) fn encode_response(response: &Response, out: &mut BytesMut) -> bool {
    match response {
        Response::Sent { id } => {
            varint(out, u64::from(RESPONSE_SENT));
            varint(out, *id);
        }
        Response::Message(m) => {
            varint(out, u64::from(RESPONSE_MESSAGE));
            message(out, &MessageRef::from(m));
        }
        Response::Messages(ms) => {
            varint(out, u64::from(RESPONSE_MESSAGES));
            varint(out, ms.len() as u64);
            for m in ms {
                message(out, &MessageRef::from(m));
            }
        }
        _ => return false,
    }
    true
}

/// Appends the body of delivered messages (the same bytes as the `Response` they make).
pub(super) fn encode_delivered(delivered: &Delivered<'_>, out: &mut BytesMut) {
    match delivered {
        Delivered::One(m) => {
            varint(out, u64::from(RESPONSE_MESSAGE));
            message(out, m);
        }
        Delivered::Many(ms) => {
            varint(out, u64::from(RESPONSE_MESSAGES));
            varint(out, ms.len() as u64);
            for m in ms {
                message(out, m);
            }
        }
    }
}

/// postcard's unsigned integers: LEB128, least significant group first.
fn varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8(v as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// postcard's signed integers: zigzag, then as unsigned.
fn signed(out: &mut BytesMut, v: i64) {
    varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A string or byte string: its length, then its bytes.
fn string(out: &mut BytesMut, bytes: &[u8]) {
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn option<T>(out: &mut BytesMut, value: Option<T>, write: impl FnOnce(&mut BytesMut, T)) {
    match value {
        None => out.put_u8(0),
        Some(v) => {
            out.put_u8(1);
            write(out, v);
        }
    }
}

fn wait(out: &mut BytesMut, wait: Wait) {
    match wait {
        Wait::Forever => varint(out, 0),
        Wait::NoWait => varint(out, 1),
        Wait::TimeoutMs(ms) => {
            varint(out, 2);
            varint(out, ms);
        }
    }
}

fn headers(out: &mut BytesMut, h: &Headers) {
    option(out, h.reply_to.as_ref(), |out, name| {
        string(out, name.as_str().as_bytes());
    });
    option(out, h.correlation_id, varint);
    option(out, h.content_type.as_deref(), |out, t| {
        string(out, t.as_bytes())
    });
    option(out, h.topic.as_ref(), |out, t| {
        string(out, t.as_str().as_bytes())
    });
}

fn message(out: &mut BytesMut, m: &MessageRef<'_>) {
    varint(out, m.id);
    signed(out, m.mtype);
    varint(out, u64::from(m.sender.pid));
    varint(out, u64::from(m.sender.uid));
    varint(out, u64::from(m.sender.gid));
    varint(out, m.sent_at.0);
    headers(out, m.headers);
    out.put_u8(u8::from(m.redelivered));
    varint(out, u64::from(m.deliveries));
    string(out, m.payload);
}

/// What is left of a body being read. Every read is `None` where postcard's would fail.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    /// An unsigned integer of at most `groups` 7-bit groups, the last of which may be at
    /// most `last`: postcard's rule, which also takes groups with nothing in them.
    #[inline]
    fn varint(&mut self, groups: u32, last: u8) -> Option<u64> {
        // Most are one byte: a variant, a length, a flag, a small number.
        if let Some((&b, rest)) = self.rest.split_first()
            && b < 0x80
        {
            self.rest = rest;
            return Some(u64::from(b));
        }
        self.long_varint(groups, last)
    }

    fn long_varint(&mut self, groups: u32, last: u8) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..groups {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (i + 1 < groups || b <= last).then_some(out);
            }
        }
        None
    }

    fn u64(&mut self) -> Option<u64> {
        self.varint(10, 1)
    }

    fn u32(&mut self) -> Option<u32> {
        self.varint(5, 0x0f).map(|v| v as u32)
    }

    fn i64(&mut self) -> Option<i64> {
        let v = self.u64()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        if len > self.rest.len() {
            return None;
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(bytes)
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.byte()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }

    /// A valid name; serde's path says what is wrong with an invalid one.
    fn name(&mut self) -> Option<MailboxName> {
        MailboxName::from_wire(self.bytes()?).ok()
    }

    fn wait(&mut self) -> Option<Wait> {
        match self.u32()? {
            0 => Some(Wait::Forever),
            1 => Some(Wait::NoWait),
            2 => Some(Wait::TimeoutMs(self.u64()?)),
            _ => None,
        }
    }

    fn selector(&mut self) -> Option<Selector> {
        match self.u32()? {
            0 => Some(Selector::Any),
            1 => Some(Selector::Type(self.i64()?)),
            2 => Some(Selector::Except(self.i64()?)),
            3 => Some(Selector::AtMost(self.i64()?)),
            _ => None,
        }
    }

    fn headers(&mut self) -> Option<HeaderBox> {
        // Most messages carry none: four absent fields.
        if let Some(rest) = self.rest.strip_prefix(&[0; 4]) {
            self.rest = rest;
            return Some(HeaderBox::default());
        }
        let reply_to = self.option(Self::name)?;
        let correlation_id = self.option(Self::u64)?;
        let content_type = self.option(|r| {
            let bytes = r.bytes()?;
            std::str::from_utf8(bytes).ok().map(str::to_owned)
        })?;
        // A topic is checked where it is made, in its own decoding: a message that
        // carries one (a copy of a publish) takes serde's path.
        if self.byte()? != 0 {
            return None;
        }
        Some(HeaderBox::from(Headers {
            reply_to,
            correlation_id,
            content_type,
            topic: None,
        }))
    }

    fn message(&mut self) -> Option<Message> {
        Some(Message {
            id: self.u64()?,
            mtype: self.i64()?,
            sender: Credentials {
                pid: self.u32()?,
                uid: self.u32()?,
                gid: self.u32()?,
            },
            sent_at: Timestamp(self.u64()?),
            headers: self.headers()?,
            redelivered: self.bool()?,
            deliveries: self.u32()?,
            payload: Bytes::copy_from_slice(self.bytes()?),
        })
    }
}
