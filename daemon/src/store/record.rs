//! The records of the durable log and their bytes on disk. This is the storage format,
//! separate from the wire format on purpose: it must stay readable across releases, so
//! it is spelled out field by field here rather than derived.
//!
//! A record on disk is `len: u32 LE | crc32: u32 LE | body[len]`, where the CRC (IEEE,
//! `crc32fast`) covers the body. The body starts with a kind byte. All integers are
//! little-endian; strings and byte strings are length-prefixed: a string by a `u16`, the
//! payload by a `u32`.
//!
//! Every length is checked when encoding ([`Record::encoded_len`]): a value that does
//! not fit its prefix is refused with [`EncodeError`], never written as a wrapped number
//! that would make the record unreadable — and, since its checksum would still hold,
//! look like a valid record to recovery.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ipc_proto::{Credentials, Fsync, Headers, MailboxName, Timestamp, Topic};

use crate::config::Limits;

/// Bytes before a record's body.
pub const RECORD_HEADER: usize = 8;

/// Longest string (mailbox name, `reply_to`, `content_type`) a record holds: its `u16`
/// length prefix.
pub const MAX_STRING: usize = u16::MAX as usize;

/// Longest payload a record holds: its `u32` length prefix.
pub const MAX_PAYLOAD: usize = u32::MAX as usize;

/// Longest record body: the `u32` length in the record header.
pub const MAX_BODY: usize = u32::MAX as usize;

/// Who owns a stored mailbox, and its mode, as plain ids: the store keeps them and
/// checks nothing with them (the mailbox converts to and from its permission type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub creator_uid: u32,
    pub creator_gid: u32,
    pub mode: u32,
}

/// A durable mailbox as stored: everything needed to recreate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxDef {
    /// The store's name for this mailbox: unique for the life of the state directory, so
    /// records of a removed mailbox never leak into a new one of the same name.
    pub key: u64,
    pub name: MailboxName,
    pub ownership: Ownership,
    pub limits: Limits,
    pub fsync: Fsync,
    pub max_deliveries: u32,
    pub dead_letter: Option<MailboxName>,
    pub default_ttl: Option<std::time::Duration>,
    pub created_at: Timestamp,
    /// The id the next message will get (ids stay increasing across restarts).
    pub next_id: u64,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub key: u64,
    pub id: u64,
    pub mtype: i64,
    pub sender: Credentials,
    pub sent_at: Timestamp,
    pub headers: Headers,
    /// When it expires, if it has a TTL (wall clock: it must mean the same after a
    /// restart; the daemon turns it back into a monotonic deadline).
    pub expires_at: Option<Timestamp>,
    /// Before this it is invisible (delayed delivery).
    pub not_before: Option<Timestamp>,
    /// Times it was leased before (from `Delivered` records; not part of `Put`).
    pub deliveries: u32,
    pub payload: Bytes,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A mailbox was created or its settings changed (the latest one wins).
    Define(MailboxDef),
    /// A mailbox was removed, with all its messages.
    Drop { key: u64 },
    /// A message was accepted.
    Put(StoredMessage),
    /// A message left the mailbox (received, acknowledged, expired).
    Remove { key: u64, id: u64 },
    /// Every message of the mailbox with an id below `below` left it (purge).
    Purge { key: u64, below: u64 },
    /// A message was leased for the `deliveries`th time, so that after a crash it is
    /// redelivered as such, and `max_deliveries` still counts.
    Delivered { key: u64, id: u64, deliveries: u32 },
}

const DEFINE: u8 = 1;
const DROP: u8 = 2;
const PUT: u8 = 3;
const REMOVE: u8 = 4;
const PURGE: u8 = 5;
const DELIVERED: u8 = 6;
/// A `PUT` of a message published on a topic: the topic follows the payload. A record
/// kind of its own, so that logs written before topics read unchanged.
const PUT_TOPIC: u8 = 7;

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated record header")]
    ShortHeader,
    #[error("record length is zero")]
    ZeroLength,
    #[error("record length {0} is beyond the largest record")]
    TooLong(u32),
    #[error("record body truncated: {have} of {want} bytes")]
    ShortBody { have: usize, want: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed record body: {0}")]
    Malformed(&'static str),
}

/// Why a record cannot be written: a value does not fit the format (or the log's bound).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} is {len} bytes, over the {max}-byte limit of the durable store")]
    TooLong {
        /// The field as users know it (`content_type`, `payload`, …).
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// Checks that `len` bytes of `field` fit `max`.
fn fits(field: &'static str, len: usize, max: usize) -> Result<usize, EncodeError> {
    if len > max {
        Err(EncodeError::TooLong { field, len, max })
    } else {
        Ok(len)
    }
}

/// Bytes a length-prefixed string takes in a body, once checked.
fn string_len(field: &'static str, s: &str) -> Result<usize, EncodeError> {
    Ok(2 + fits(field, s.len(), MAX_STRING)?)
}

impl Record {
    /// Bytes this record takes on disk, header included, after checking that every
    /// length in it fits its prefix. [`encode`](Self::encode) writes exactly this much.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let body = match self {
            Record::Define(def) => {
                let fsync = match def.fsync {
                    Fsync::IntervalMs(_) => 5,
                    Fsync::Always | Fsync::Never => 1,
                };
                let dead_letter = match &def.dead_letter {
                    Some(name) => 1 + string_len("dead_letter", name.as_str())?,
                    None => 1,
                };
                1 + 8
                    + string_len("mailbox name", def.name.as_str())?
                    + 5 * 4
                    + 3 * 8
                    + fsync
                    + 4
                    + dead_letter
                    + 3 * 8
            }
            Record::Put(m) => {
                let reply_to = match &m.headers.reply_to {
                    Some(name) => 1 + string_len("reply_to", name.as_str())?,
                    None => 1,
                };
                let correlation_id = if m.headers.correlation_id.is_some() {
                    9
                } else {
                    1
                };
                let content_type = match &m.headers.content_type {
                    Some(ct) => 1 + string_len("content_type", ct)?,
                    None => 1,
                };
                // A payload that fills its own prefix makes a body past the header's
                // `u32`; the check of the whole body below refuses that.
                let payload = fits("payload", m.payload.len(), MAX_PAYLOAD)?;
                let topic = match &m.headers.topic {
                    Some(topic) => string_len("topic", topic.as_str())?,
                    None => 0,
                };
                (1 + 3 * 8 + 3 * 4 + 8 + reply_to + correlation_id + content_type + 2 * 8 + 4)
                    .checked_add(payload + topic)
                    .ok_or(EncodeError::TooLong {
                        field: "record",
                        len: usize::MAX,
                        max: MAX_BODY,
                    })?
            }
            Record::Drop { .. } => 1 + 8,
            Record::Remove { .. } | Record::Purge { .. } => 1 + 2 * 8,
            Record::Delivered { .. } => 1 + 2 * 8 + 4,
        };
        Ok(RECORD_HEADER + fits("record", body, MAX_BODY)?)
    }

    /// Appends this record, framed and checksummed, to `out`; or, if a length does not
    /// fit the format, appends nothing and says which.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let len = self.encoded_len()?;
        out.reserve(len);
        let start = out.len();
        out.put_u64_le(0); // length and checksum, filled in below
        match self {
            Record::Define(def) => {
                out.put_u8(DEFINE);
                out.put_u64_le(def.key);
                put_str(out, def.name.as_str());
                let o = &def.ownership;
                for v in [
                    o.owner_uid,
                    o.owner_gid,
                    o.creator_uid,
                    o.creator_gid,
                    o.mode,
                ] {
                    out.put_u32_le(v);
                }
                let l = &def.limits;
                for v in [l.max_msgs, l.max_bytes, l.max_msg_size] {
                    out.put_u64_le(v);
                }
                match def.fsync {
                    Fsync::Always => out.put_u8(0),
                    Fsync::IntervalMs(ms) => {
                        out.put_u8(1);
                        out.put_u32_le(ms);
                    }
                    Fsync::Never => out.put_u8(2),
                }
                out.put_u32_le(def.max_deliveries);
                match &def.dead_letter {
                    Some(name) => {
                        out.put_u8(1);
                        put_str(out, name.as_str());
                    }
                    None => out.put_u8(0),
                }
                // A TTL is bounded by the configuration's `max_ttl`, far below this.
                let ttl = def.default_ttl.map_or(0, |t| t.as_millis());
                out.put_u64_le(u64::try_from(ttl).unwrap_or(u64::MAX));
                out.put_u64_le(def.created_at.0);
                out.put_u64_le(def.next_id);
            }
            Record::Drop { key } => {
                out.put_u8(DROP);
                out.put_u64_le(*key);
            }
            Record::Put(m) => {
                out.put_u8(if m.headers.topic.is_some() {
                    PUT_TOPIC
                } else {
                    PUT
                });
                out.put_u64_le(m.key);
                out.put_u64_le(m.id);
                out.put_i64_le(m.mtype);
                for v in [m.sender.pid, m.sender.uid, m.sender.gid] {
                    out.put_u32_le(v);
                }
                out.put_u64_le(m.sent_at.0);
                match &m.headers.reply_to {
                    Some(name) => {
                        out.put_u8(1);
                        put_str(out, name.as_str());
                    }
                    None => out.put_u8(0),
                }
                match m.headers.correlation_id {
                    Some(id) => {
                        out.put_u8(1);
                        out.put_u64_le(id);
                    }
                    None => out.put_u8(0),
                }
                match &m.headers.content_type {
                    Some(ct) => {
                        out.put_u8(1);
                        put_str(out, ct);
                    }
                    None => out.put_u8(0),
                }
                out.put_u64_le(m.expires_at.map_or(0, |t| t.0));
                out.put_u64_le(m.not_before.map_or(0, |t| t.0));
                out.put_u32_le(u32::try_from(m.payload.len()).expect("checked by encoded_len"));
                out.put_slice(&m.payload);
                if let Some(topic) = &m.headers.topic {
                    put_str(out, topic.as_str());
                }
            }
            Record::Remove { key, id } => {
                out.put_u8(REMOVE);
                out.put_u64_le(*key);
                out.put_u64_le(*id);
            }
            Record::Purge { key, below } => {
                out.put_u8(PURGE);
                out.put_u64_le(*key);
                out.put_u64_le(*below);
            }
            Record::Delivered {
                key,
                id,
                deliveries,
            } => {
                out.put_u8(DELIVERED);
                out.put_u64_le(*key);
                out.put_u64_le(*id);
                out.put_u32_le(*deliveries);
            }
        }
        debug_assert_eq!(out.len() - start, len, "encoded_len agrees with encode");
        let body_len = u32::try_from(len - RECORD_HEADER).expect("checked by encoded_len");
        let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
        out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Reads one record from the start of `bytes`; returns it and the bytes it took.
    /// `max_body` bounds the length a header may claim.
    pub fn decode(bytes: &Bytes, max_body: u32) -> Result<(Record, usize), RecordError> {
        if bytes.len() >= RECORD_HEADER {
            let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
            if len > max_body {
                return Err(RecordError::TooLong(len));
            }
        }
        match frame(bytes) {
            Framed::Intact { body, used } => Ok((decode_body(body)?, used)),
            Framed::Corrupt { .. } => Err(RecordError::Checksum),
            Framed::Unframed(e) => Err(e),
        }
    }

    /// The mailbox this record is about.
    pub fn key(&self) -> u64 {
        match self {
            Record::Define(def) => def.key,
            Record::Put(m) => m.key,
            Record::Drop { key }
            | Record::Remove { key, .. }
            | Record::Purge { key, .. }
            | Record::Delivered { key, .. } => *key,
        }
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16_le(u16::try_from(s.len()).expect("checked by encoded_len"));
    out.put_slice(s.as_bytes());
}

/// A record's frame as found at the start of some bytes, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed {
    /// Whole, and its checksum holds; `used` counts the header too.
    Intact { body: Bytes, used: usize },
    /// Whole, but its checksum fails: some bit of it — body, checksum or length — is
    /// wrong.
    Corrupt { body: Bytes, used: usize },
    /// No frame can be read here: the header is cut short, or claims no body or more
    /// bytes than there are.
    Unframed(RecordError),
}

/// Reads the frame at the start of `bytes`, bounded only by the bytes there (which the
/// caller already holds, so no length can make it allocate).
pub fn frame(bytes: &Bytes) -> Framed {
    if bytes.len() < RECORD_HEADER {
        return Framed::Unframed(RecordError::ShortHeader);
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    // Every body holds at least its kind byte; a zero length is what a zero-filled
    // stretch (a file extended but never written) reads as, and its checksum would hold.
    if len == 0 {
        return Framed::Unframed(RecordError::ZeroLength);
    }
    let have = bytes.len() - RECORD_HEADER;
    let Some(used) = usize::try_from(len)
        .ok()
        .filter(|&len| len <= have)
        .map(|len| RECORD_HEADER + len)
    else {
        return Framed::Unframed(RecordError::ShortBody {
            have,
            want: len as usize,
        });
    };
    let body = bytes.slice(RECORD_HEADER..used);
    if crc32fast::hash(&body) == crc {
        Framed::Intact { body, used }
    } else {
        Framed::Corrupt { body, used }
    }
}

/// The length a body's own fields give it — its kind, the fixed fields of that kind and
/// its length-prefixed strings and payload — without checking their contents; `None`
/// if they cannot be followed. A body whose checksum fails but whose structure spans
/// exactly its framed length has that length confirmed by a second, independent count,
/// so the record after it can be found without trusting the damaged header alone.
pub fn body_shape(body: &[u8]) -> Option<usize> {
    let mut rest = body;
    let mut skip = |n: usize| -> Option<&[u8]> {
        let (taken, left) = rest.split_at_checked(n)?;
        rest = left;
        Some(taken)
    };
    fn le(b: &[u8]) -> usize {
        b.iter()
            .rev()
            .fold(0, |n, &byte| n << 8 | usize::from(byte))
    }
    let kind = skip(1)?[0];
    match kind {
        DEFINE => {
            skip(8)?;
            let name = le(skip(2)?);
            skip(name + 5 * 4 + 3 * 8)?;
            match skip(1)?[0] {
                0 | 2 => {}
                1 => {
                    skip(4)?;
                }
                _ => return None,
            }
            skip(4)?;
            match skip(1)?[0] {
                0 => {}
                1 => {
                    let dead_letter = le(skip(2)?);
                    skip(dead_letter)?;
                }
                _ => return None,
            }
            skip(3 * 8)?;
        }
        DROP => {
            skip(8)?;
        }
        PUT | PUT_TOPIC => {
            skip(3 * 8 + 3 * 4 + 8)?;
            match skip(1)?[0] {
                0 => {}
                1 => {
                    let reply_to = le(skip(2)?);
                    skip(reply_to)?;
                }
                _ => return None,
            }
            match skip(1)?[0] {
                0 => {}
                1 => {
                    skip(8)?;
                }
                _ => return None,
            }
            match skip(1)?[0] {
                0 => {}
                1 => {
                    let content_type = le(skip(2)?);
                    skip(content_type)?;
                }
                _ => return None,
            }
            skip(2 * 8)?;
            let payload = le(skip(4)?);
            skip(payload)?;
            if kind == PUT_TOPIC {
                let topic = le(skip(2)?);
                skip(topic)?;
            }
        }
        REMOVE | PURGE => {
            skip(2 * 8)?;
        }
        DELIVERED => {
            skip(2 * 8 + 4)?;
        }
        _ => return None,
    }
    Some(body.len() - rest.len())
}

/// What a record that cannot be used seems to have been, read from its first fields
/// alone, for the line that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glimpse {
    Define {
        key: u64,
    },
    Drop {
        key: u64,
    },
    Put {
        key: u64,
        id: u64,
    },
    Remove {
        key: u64,
        id: u64,
    },
    Purge {
        key: u64,
        below: u64,
    },
    Delivered {
        key: u64,
        id: u64,
    },
    /// Too short to say, or of a kind this build does not know.
    Unknown {
        kind: Option<u8>,
    },
}

/// Reads what a damaged or unreadable body seems to be.
pub fn glimpse(body: &[u8]) -> Glimpse {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
    };
    let kind = body.first().copied();
    let seen = match kind {
        Some(DEFINE) => word(1).map(|key| Glimpse::Define { key }),
        Some(DROP) => word(1).map(|key| Glimpse::Drop { key }),
        Some(PUT | PUT_TOPIC) => word(1)
            .zip(word(9))
            .map(|(key, id)| Glimpse::Put { key, id }),
        Some(REMOVE) => word(1)
            .zip(word(9))
            .map(|(key, id)| Glimpse::Remove { key, id }),
        Some(PURGE) => word(1)
            .zip(word(9))
            .map(|(key, below)| Glimpse::Purge { key, below }),
        Some(DELIVERED) => word(1)
            .zip(word(9))
            .map(|(key, id)| Glimpse::Delivered { key, id }),
        _ => None,
    };
    seen.unwrap_or(Glimpse::Unknown { kind })
}

/// A cursor over a record body that reports a short body instead of panicking.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), RecordError> {
        if self.0.remaining() < n {
            Err(RecordError::Malformed("body ends early"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        self.need(8)?;
        Ok(self.0.get_i64_le())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, RecordError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self) -> Result<String, RecordError> {
        self.need(2)?;
        let n = self.0.get_u16_le() as usize;
        let raw = self.bytes(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| RecordError::Malformed("string is not UTF-8"))
    }
    fn name(&mut self) -> Result<MailboxName, RecordError> {
        MailboxName::new(self.string()?).map_err(|_| RecordError::Malformed("bad mailbox name"))
    }
    fn flag(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Malformed("option flag is not 0 or 1")),
        }
    }
}

/// Reads a record's body (its frame already checked).
pub fn decode_body(body: Bytes) -> Result<Record, RecordError> {
    let mut r = Reader(body);
    let kind = r.u8()?;
    let record = match kind {
        DEFINE => {
            let key = r.u64()?;
            let name = r.name()?;
            let ownership = Ownership {
                owner_uid: r.u32()?,
                owner_gid: r.u32()?,
                creator_uid: r.u32()?,
                creator_gid: r.u32()?,
                mode: r.u32()?,
            };
            let limits = Limits {
                max_msgs: r.u64()?,
                max_bytes: r.u64()?,
                max_msg_size: r.u64()?,
            };
            let fsync = match r.u8()? {
                0 => Fsync::Always,
                1 => Fsync::IntervalMs(r.u32()?),
                2 => Fsync::Never,
                _ => return Err(RecordError::Malformed("unknown fsync policy")),
            };
            let max_deliveries = r.u32()?;
            let dead_letter = if r.flag()? { Some(r.name()?) } else { None };
            let default_ttl = Some(r.u64()?)
                .filter(|&ms| ms != 0)
                .map(std::time::Duration::from_millis);
            Record::Define(MailboxDef {
                key,
                name,
                ownership,
                limits,
                fsync,
                max_deliveries,
                dead_letter,
                default_ttl,
                created_at: Timestamp(r.u64()?),
                next_id: r.u64()?,
            })
        }
        DROP => Record::Drop { key: r.u64()? },
        PUT | PUT_TOPIC => {
            let key = r.u64()?;
            let id = r.u64()?;
            let mtype = r.i64()?;
            let sender = Credentials {
                pid: r.u32()?,
                uid: r.u32()?,
                gid: r.u32()?,
            };
            let sent_at = Timestamp(r.u64()?);
            let reply_to = if r.flag()? { Some(r.name()?) } else { None };
            let correlation_id = if r.flag()? { Some(r.u64()?) } else { None };
            let content_type = if r.flag()? { Some(r.string()?) } else { None };
            let expires_at = Some(Timestamp(r.u64()?)).filter(|t| t.0 != 0);
            let not_before = Some(Timestamp(r.u64()?)).filter(|t| t.0 != 0);
            let len = r.u32()? as usize;
            let payload = r.bytes(len)?;
            let topic = if kind == PUT_TOPIC {
                let topic = r.string()?;
                Some(Topic::new(topic).map_err(|_| RecordError::Malformed("bad topic"))?)
            } else {
                None
            };
            Record::Put(StoredMessage {
                key,
                id,
                mtype,
                sender,
                sent_at,
                headers: Headers {
                    reply_to,
                    correlation_id,
                    content_type,
                    topic,
                },
                expires_at,
                not_before,
                deliveries: 0,
                payload,
            })
        }
        REMOVE => Record::Remove {
            key: r.u64()?,
            id: r.u64()?,
        },
        PURGE => Record::Purge {
            key: r.u64()?,
            below: r.u64()?,
        },
        DELIVERED => Record::Delivered {
            key: r.u64()?,
            id: r.u64()?,
            deliveries: r.u32()?,
        },
        _ => return Err(RecordError::Malformed("unknown record kind")),
    };
    if r.0.has_remaining() {
        return Err(RecordError::Malformed("bytes after the record"));
    }
    Ok(record)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn def(key: u64, name: &str) -> MailboxDef {
        MailboxDef {
            key,
            name: MailboxName::new(name).unwrap(),
            ownership: Ownership {
                owner_uid: 1000,
                owner_gid: 100,
                creator_uid: 1000,
                creator_gid: 100,
                mode: 0o640,
            },
            limits: Limits {
                max_msgs: 10,
                max_bytes: 1000,
                max_msg_size: 100,
            },
            fsync: Fsync::IntervalMs(200),
            max_deliveries: 5,
            dead_letter: Some(MailboxName::new("dead").unwrap()),
            default_ttl: Some(std::time::Duration::from_secs(9)),
            created_at: Timestamp(42),
            next_id: 7,
        }
    }

    pub(crate) fn put(key: u64, id: u64, payload: &[u8]) -> StoredMessage {
        StoredMessage {
            key,
            id,
            mtype: -3,
            sender: Credentials {
                pid: 1,
                uid: 2,
                gid: 3,
            },
            sent_at: Timestamp(99),
            headers: Headers {
                reply_to: Some(MailboxName::new("answers").unwrap()),
                correlation_id: None,
                content_type: Some("text/plain".into()),
                topic: None,
            },
            expires_at: Some(Timestamp(1_000 + id)),
            not_before: None,
            deliveries: 0,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn every_record_round_trips_and_any_damage_is_detected() {
        // Both kinds of put: a message sent, and one published on a topic (`PUT_TOPIC`).
        let records = [
            Record::Define(def(5, "jobs")),
            Record::Drop { key: 5 },
            Record::Put(put(5, 9, b"\x00\xffpayload")),
            Record::Put(put(5, 10, b"")),
            Record::Put(StoredMessage {
                headers: Headers {
                    topic: Some(Topic::new("sensors.kitchen").unwrap()),
                    ..put(5, 11, b"21.5").headers
                },
                ..put(5, 11, b"21.5")
            }),
            Record::Remove { key: 5, id: 9 },
            Record::Purge { key: 5, below: 11 },
            Record::Delivered {
                key: 5,
                id: 10,
                deliveries: 3,
            },
        ];
        for record in records {
            let mut out = BytesMut::new();
            record.encode(&mut out).unwrap();
            let bytes = out.freeze();
            assert_eq!(record.encoded_len(), Ok(bytes.len()));
            assert_eq!(
                body_shape(&bytes[RECORD_HEADER..]),
                Some(bytes.len() - RECORD_HEADER)
            );
            let (back, used) = Record::decode(&bytes, u32::MAX).unwrap();
            assert_eq!(back, record);
            assert_eq!(used, bytes.len());
            // Any single flipped bit, and any truncation, is refused.
            for bit in 0..bytes.len() * 8 {
                let mut bad = bytes.to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                let bad = Bytes::from(bad);
                assert!(
                    Record::decode(&bad, u32::MAX).map(|(r, _)| r) != Ok(record.clone()),
                    "bit {bit} went unnoticed"
                );
            }
            for cut in 0..bytes.len() {
                assert!(Record::decode(&bytes.slice(..cut), u32::MAX).is_err());
            }
        }
    }

    #[test]
    fn a_lying_length_is_refused_before_reading() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0; 32]);
        assert_eq!(
            Record::decode(&Bytes::from(bytes), 1 << 20),
            Err(RecordError::TooLong(0x7fff_ffff))
        );
    }

    use proptest::prelude::*;

    /// A mailbox name of `len` bytes (1..=255).
    fn name_of(len: usize) -> MailboxName {
        MailboxName::new("n".repeat(len)).unwrap()
    }

    /// Encodes `record`, checking that a refusal leaves `out` as it was; decodes what was
    /// written and checks it is `record`.
    fn round_trip(record: &Record) -> Result<(), EncodeError> {
        let mut out = BytesMut::from(&b"before"[..]);
        let result = record.encode(&mut out);
        if result.is_err() {
            assert_eq!(&out[..], b"before", "a refused record wrote nothing");
            return result;
        }
        let bytes = out.freeze().slice(6..);
        let (back, used) = Record::decode(&bytes, u32::MAX).expect("what was written reads");
        assert_eq!(&back, record);
        assert_eq!(used, bytes.len());
        assert_eq!(record.encoded_len(), Ok(used));
        assert_eq!(
            body_shape(&bytes[RECORD_HEADER..]),
            Some(used - RECORD_HEADER)
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every string field at its smallest, at the most its `u16` prefix can say and
        /// one more: each round-trips or is refused naming the field and the bound — never
        /// written with a wrapped length.
        #[test]
        fn every_string_field_round_trips_or_is_refused(
            ct_len in prop::sample::select(vec![0, MAX_STRING, MAX_STRING + 1]),
            reply_len in prop::option::of(prop::sample::select(vec![1usize, 255])),
            name_len in prop::sample::select(vec![1usize, 255]),
            dead_len in prop::option::of(prop::sample::select(vec![1usize, 255])),
            payload in prop::collection::vec(any::<u8>(), 0..64),
            id in any::<u64>(),
            correlation_id in any::<Option<u64>>(),
        ) {
            let mut message = put(7, id, &payload);
            message.headers.content_type = Some("c".repeat(ct_len));
            message.headers.reply_to = reply_len.map(name_of);
            message.headers.correlation_id = correlation_id;
            let result = round_trip(&Record::Put(message));
            if ct_len > MAX_STRING {
                prop_assert_eq!(
                    result,
                    Err(EncodeError::TooLong { field: "content_type", len: ct_len, max: MAX_STRING })
                );
            } else {
                prop_assert_eq!(result, Ok(()));
            }
            let mut mailbox = def(7, "x");
            mailbox.name = name_of(name_len);
            mailbox.dead_letter = dead_len.map(name_of);
            prop_assert_eq!(round_trip(&Record::Define(mailbox)), Ok(()));
        }
    }

    #[test]
    fn a_refused_content_type_says_which_field_and_what_bound() {
        let mut message = put(1, 1, b"x");
        message.headers.content_type = Some("a".repeat(70_000));
        let e = Record::Put(message)
            .encode(&mut BytesMut::new())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "content_type is 70000 bytes, over the 65535-byte limit of the durable store"
        );
    }

    /// A payload of `len` zero bytes that costs no memory: an untouched, unreserved
    /// read-only mapping.
    fn huge_payload(len: usize) -> Bytes {
        struct Mapping(*mut libc::c_void, usize);
        // SAFETY: the mapping is read-only and owned by this value alone.
        unsafe impl Send for Mapping {}
        impl AsRef<[u8]> for Mapping {
            fn as_ref(&self) -> &[u8] {
                // SAFETY: `self.0` maps `self.1` readable bytes for as long as self lives.
                unsafe { std::slice::from_raw_parts(self.0.cast::<u8>(), self.1) }
            }
        }
        impl Drop for Mapping {
            fn drop(&mut self) {
                // SAFETY: unmapping what `huge_payload` mapped, once.
                unsafe { libc::munmap(self.0, self.1) };
            }
        }
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED, "mmap of {len} bytes");
        Bytes::from_owner(Mapping(at, len))
    }

    #[test]
    fn the_payload_fits_its_u32_prefix_and_the_record_its_u32_length_or_is_refused() {
        let overhead = Record::Put(put(1, 1, b"")).encoded_len().unwrap() - RECORD_HEADER;
        let largest = MAX_BODY - overhead;
        let sized = |len: usize| {
            Record::Put(StoredMessage {
                payload: huge_payload(len),
                ..put(1, 1, b"")
            })
        };
        // The largest payload whose record still fits is accepted (not written: 4 GiB).
        assert_eq!(sized(largest).encoded_len(), Ok(RECORD_HEADER + MAX_BODY));
        assert_eq!(
            sized(largest + 1).encoded_len(),
            Err(EncodeError::TooLong {
                field: "record",
                len: MAX_BODY + 1,
                max: MAX_BODY
            })
        );
        // At its prefix's maximum the payload fits its own prefix, not the record.
        assert!(matches!(
            sized(MAX_PAYLOAD).encoded_len(),
            Err(EncodeError::TooLong {
                field: "record",
                ..
            })
        ));
        assert_eq!(
            sized(MAX_PAYLOAD + 1).encoded_len(),
            Err(EncodeError::TooLong {
                field: "payload",
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        let mut out = BytesMut::new();
        assert!(sized(MAX_PAYLOAD + 1).encode(&mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn a_zero_length_is_no_frame_and_a_damaged_body_keeps_its_shape() {
        assert_eq!(
            frame(&Bytes::from_static(&[0; 64])),
            Framed::Unframed(RecordError::ZeroLength)
        );
        let mut out = BytesMut::new();
        Record::Put(put(3, 4, b"payload")).encode(&mut out).unwrap();
        let mut bytes = out.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let Framed::Corrupt { body, used } = frame(&Bytes::from(bytes)) else {
            panic!("a flipped payload bit fails the checksum");
        };
        assert_eq!(used, last + 1);
        assert_eq!(body_shape(&body), Some(body.len()));
        assert_eq!(glimpse(&body), Glimpse::Put { key: 3, id: 4 });
    }
}
