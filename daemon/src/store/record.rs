//! The records of the durable log and their bytes on disk. This is the storage format,
//! separate from the wire format on purpose: it must stay readable across releases, so
//! it is spelled out field by field here rather than derived.
//!
//! A record on disk is `len: u32 LE | crc32: u32 LE | body[len]`, where the CRC (IEEE,
//! `crc32fast`) covers the body. The body starts with a kind byte. All integers are
//! little-endian; strings and byte strings are length-prefixed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ipc_proto::{Credentials, Fsync, Headers, MailboxName, Timestamp};

use crate::config::Limits;
use crate::perm::Ownership;

/// Bytes before a record's body.
pub const RECORD_HEADER: usize = 8;

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

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated record header")]
    ShortHeader,
    #[error("record length {0} is beyond the largest record")]
    TooLong(u32),
    #[error("record body truncated: {have} of {want} bytes")]
    ShortBody { have: usize, want: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed record body: {0}")]
    Malformed(&'static str),
}

impl Record {
    /// Appends this record, framed and checksummed, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
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
                out.put_u64_le(def.default_ttl.map_or(0, |t| t.as_millis() as u64));
                out.put_u64_le(def.created_at.0);
                out.put_u64_le(def.next_id);
            }
            Record::Drop { key } => {
                out.put_u8(DROP);
                out.put_u64_le(*key);
            }
            Record::Put(m) => {
                out.put_u8(PUT);
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
                out.put_u32_le(m.payload.len() as u32);
                out.put_slice(&m.payload);
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
        let body_len = out.len() - start - RECORD_HEADER;
        let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
        out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads one record from the start of `bytes`; returns it and the bytes it took.
    /// `max_body` bounds the length a header may claim.
    pub fn decode(bytes: &Bytes, max_body: u32) -> Result<(Record, usize), RecordError> {
        if bytes.len() < RECORD_HEADER {
            return Err(RecordError::ShortHeader);
        }
        let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if len > max_body {
            return Err(RecordError::TooLong(len));
        }
        let want = RECORD_HEADER + len as usize;
        if bytes.len() < want {
            return Err(RecordError::ShortBody {
                have: bytes.len() - RECORD_HEADER,
                want: len as usize,
            });
        }
        let body = bytes.slice(RECORD_HEADER..want);
        if crc32fast::hash(&body) != crc {
            return Err(RecordError::Checksum);
        }
        let record = decode_body(body)?;
        Ok((record, want))
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
    out.put_u16_le(s.len() as u16);
    out.put_slice(s.as_bytes());
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

fn decode_body(body: Bytes) -> Result<Record, RecordError> {
    let mut r = Reader(body);
    let record = match r.u8()? {
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
        PUT => {
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
            },
            expires_at: Some(Timestamp(1_000 + id)),
            not_before: None,
            deliveries: 0,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn every_record_round_trips_and_any_damage_is_detected() {
        let records = [
            Record::Define(def(5, "jobs")),
            Record::Drop { key: 5 },
            Record::Put(put(5, 9, b"\x00\xffpayload")),
            Record::Put(put(5, 10, b"")),
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
            record.encode(&mut out);
            let bytes = out.freeze();
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
}
