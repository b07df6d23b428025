//! The durable log: numbered segments of checksummed [`Record`]s, appended to the newest
//! segment (the head) and reclaimed from the oldest. Synchronous and single-threaded: the
//! store's writer thread owns it, and the crash tests drive it directly on a simulated
//! disk.
//!
//! Rules that make recovery exact:
//! - Records are only appended, in the order the broker issued them, so a message's
//!   `Put` always precedes its `Remove`/`Purge`/`Drop`.
//! - Every segment begins with a header and a `Define` of every mailbox alive when it was
//!   started, so deleting older segments never loses a mailbox's settings.
//! - Segments are deleted oldest first, and only once every message still live in them
//!   has been copied to the head *and synced*. A copy is a second `Put` of the same id,
//!   followed by a `Delivered` record if the message was leased before, so its delivery
//!   count survives; recovery keeps one `Put` and the highest count.
//! - Appends are *staged* until they are synced ([`Log::sync`]) or committed unsynced
//!   ([`Log::commit`], for fsync policies that answer before a sync). If `fdatasync`
//!   fails, the staged appends are cut back off the head and the cut is synced, so that
//!   records whose writers were told "failed" never come back after a restart; if that
//!   fails too, the log refuses every further write until the daemon restarts.
//!
//! Recovery reads each segment record by record:
//! - a record whose checksum holds and whose body reads is applied;
//! - one whose checksum holds but whose body does not read (a kind from a newer release,
//!   or a bug) is reported and skipped by its length, which the checksum vouches for;
//! - one whose checksum fails is reported and skipped by its length when the body's own
//!   fields add up to exactly that length (a flipped bit in the body or checksum);
//! - otherwise the next record cannot be found safely — searching byte by byte could take
//!   a payload, which a client chose, for a record — so the rest of the segment is not
//!   read. At the head, bytes that hold no intact frame at all are a torn write and are
//!   cut off; anything else is reported and left in place.
//!
//! Only a torn tail is ever cut, and every record skipped or left unread is reported,
//! saying what it held.

use std::collections::{BTreeMap, HashMap};
use std::io;

use bytes::{Bytes, BytesMut};

use super::disk::Disk;
use super::record::{
    self, EncodeError, Framed, Glimpse, MailboxDef, RECORD_HEADER, Record, StoredMessage,
};

/// The first bytes of every segment.
pub(crate) const MAGIC: &[u8; 8] = b"IPCDLOG1";

/// Bytes of a segment's header: the magic and the segment's number.
const HEADER_LEN: usize = MAGIC.len() + 8;

/// Most bytes checksummed while looking for intact frames in a damaged stretch; past it
/// the stretch is treated as possibly holding records (left in place, never cut).
const SCAN_BUDGET: usize = 256 << 20;

/// Where a record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seg: u64,
    offset: u64,
    len: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    len: u64,
    /// Live messages whose newest `Put` is in this segment, and their records' bytes
    /// (each rounded up to 8, see [`Messages`]).
    live: u64,
    live_bytes: u64,
}

/// One mailbox's live messages, as reclaiming space needs to know them: which ids are
/// live, how long each one's newest `Put` is, and in which segment it is — about a byte
/// per message, not a record of each, since a mailbox's ids come in order and its
/// messages sit in runs written to one segment.
#[derive(Debug, Default)]
struct Messages {
    /// The live ids, by 64: bit `id % 64` of the word at `id / 64`, with their `Put`s'
    /// lengths.
    chunks: BTreeMap<u64, Chunk>,
    /// The lengths of `Put`s too long for a [`Chunk`] to say, by id.
    long: HashMap<u64, u64>,
    count: u64,
    /// Where the newest `Put`s are: spans of ids, by first id, that do not overlap.
    /// Every live id is in one; an id in no span is not live.
    spans: BTreeMap<u64, Span>,
    /// The highest delivery counts recorded of live messages, where above zero: a copy
    /// must carry them forward.
    deliveries: BTreeMap<u64, u32>,
}

/// 64 ids from a multiple of 64: which are live, and the length of each one's `Put` in
/// units of 8 bytes, rounded up ([`LONG`]: in `Messages::long`). Reclaiming weighs a
/// segment by its live bytes, so they are kept for each message: an estimate from the
/// segment's mean misjudges one whose large messages went and small ones stayed, and
/// never reclaims it.
#[derive(Debug, Clone)]
struct Chunk {
    bits: u64,
    units: Units,
}

/// The lengths of a [`Chunk`]'s messages: one for all of them while they are alike (the
/// usual case: a mailbox's messages are often of one size), else one each.
#[derive(Debug, Clone)]
enum Units {
    Alike(u8),
    Each(Box<[u8; 64]>),
}

impl Chunk {
    fn units(&self, bit: usize) -> u8 {
        match &self.units {
            Units::Alike(units) => *units,
            Units::Each(each) => each[bit],
        }
    }

    /// Sets the length of the message at `bit` (already marked live).
    fn set_units(&mut self, bit: usize, units: u8) {
        match &mut self.units {
            Units::Alike(alike) if *alike == units => {}
            // The only live message: the chunk is alike in its length.
            Units::Alike(alike) if self.bits == 1 << bit => *alike = units,
            Units::Alike(alike) => {
                let mut each = Box::new([*alike; 64]);
                each[bit] = units;
                self.units = Units::Each(each);
            }
            Units::Each(each) => each[bit] = units,
        }
    }
}

/// A length that [`Chunk::units`] cannot hold.
const LONG: u8 = u8::MAX;

/// Ids from a span's first to `last`, whose newest `Put` (of those live) is in `seg`.
#[derive(Debug, Clone, Copy)]
struct Span {
    last: u64,
    seg: u64,
}

/// What a `Put` of `len` bytes counts for in a segment's live bytes: its length rounded up
/// to 8, as a [`Chunk`] keeps it.
fn counted(len: u64) -> u64 {
    len.div_ceil(8) * 8
}

impl Messages {
    fn is_live(&self, id: u64) -> bool {
        self.chunks
            .get(&(id / 64))
            .is_some_and(|chunk| chunk.bits & 1 << (id % 64) != 0)
    }

    /// Marks `id` live, its `Put` `len` bytes long; what its previous `Put` counted for,
    /// if it was live.
    fn set_live(&mut self, id: u64, len: u64) -> Option<u64> {
        let was = self.clear_live_only(id);
        let units = match u8::try_from(len.div_ceil(8)) {
            Ok(units) if units != LONG => units,
            _ => {
                self.long.insert(id, counted(len));
                LONG
            }
        };
        let chunk = self.chunks.entry(id / 64).or_insert(Chunk {
            bits: 0,
            units: Units::Alike(units),
        });
        let bit = (id % 64) as usize;
        chunk.bits |= 1 << bit;
        chunk.set_units(bit, units);
        self.count += 1;
        was
    }

    /// Marks `id` no longer live; the segment its `Put` is in and what that counted for,
    /// if it was live.
    fn clear_live(&mut self, id: u64) -> Option<(u64, u64)> {
        let seg = self.segment_of(id);
        let len = self.clear_live_only(id)?;
        self.deliveries.remove(&id);
        Some((seg.expect("a live message is in a span"), len))
    }

    /// Takes `id` out of the live set (keeping its delivery count); what its `Put`
    /// counted for, if it was live.
    fn clear_live_only(&mut self, id: u64) -> Option<u64> {
        let chunk = self.chunks.get_mut(&(id / 64))?;
        let bit = (id % 64) as usize;
        if chunk.bits & 1 << bit == 0 {
            return None;
        }
        chunk.bits &= !(1 << bit);
        let len = match chunk.units(bit) {
            LONG => self.long.remove(&id).expect("a long length is kept"),
            units => u64::from(units) * 8,
        };
        if chunk.bits == 0 {
            self.chunks.remove(&(id / 64));
        }
        self.count -= 1;
        Some(len)
    }

    /// The live ids from `from` to `to`, in order.
    fn live_in(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        self.chunks
            .range(from / 64..=to / 64)
            .flat_map(|(&at, chunk)| {
                let bits = chunk.bits;
                (0..64)
                    .filter(move |bit| bits & 1 << bit != 0)
                    .map(move |bit| at * 64 + bit)
            })
            .filter(move |id| (from..=to).contains(id))
    }

    fn segment_of(&self, id: u64) -> Option<u64> {
        let (_, span) = self.spans.range(..=id).next_back()?;
        (span.last >= id).then_some(span.seg)
    }

    /// Records that `id`'s newest `Put` is in `seg`: a new message extends the last
    /// span; a copied one is cut out of its old span and joins its neighbours in `seg`.
    fn place(&mut self, id: u64, seg: u64) {
        if let Some((&first, &span)) = self.spans.range(..=id).next_back()
            && span.last >= id
        {
            if span.seg == seg {
                return;
            }
            self.spans.remove(&first);
            if first < id {
                let before = Span {
                    last: id - 1,
                    ..span
                };
                self.spans.insert(first, before);
            }
            if id < span.last {
                self.spans.insert(id + 1, span);
            }
        }
        // Spans next to each other (no span between) in one segment join: the ids
        // between them are in no span, so none of them is live.
        let mut first = id;
        let mut last = id;
        if let Some((&f, before)) = self.spans.range(..id).next_back()
            && before.seg == seg
        {
            self.spans.remove(&f);
            first = f;
        }
        if let Some((&f, &after)) = self.spans.range(id + 1..).next()
            && after.seg == seg
        {
            self.spans.remove(&f);
            last = after.last;
        }
        self.spans.insert(first, Span { last, seg });
    }

    /// Forgets segment `seg`, which holds none of these messages any more, and joins
    /// the spans it leaves next to each other.
    fn forget_segment(&mut self, seg: u64) {
        let mut joined: BTreeMap<u64, Span> = BTreeMap::new();
        for (first, span) in std::mem::take(&mut self.spans) {
            if span.seg == seg {
                continue;
            }
            match joined.last_entry() {
                Some(mut previous) if previous.get().seg == span.seg => {
                    previous.get_mut().last = span.last;
                }
                _ => {
                    joined.insert(first, span);
                }
            }
        }
        self.spans = joined;
    }
}

/// Tuning of the log.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// A new segment is started once the head would pass this size.
    pub segment_bytes: u64,
    /// Largest record body a write may make; a larger record is refused. Recovery does
    /// not apply it: a log written under a larger bound stays readable.
    pub max_record: u32,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Each durable mailbox, with its live messages in id order.
    pub mailboxes: Vec<(MailboxDef, Vec<StoredMessage>)>,
    /// The next unused mailbox key.
    pub next_key: u64,
    /// One line per damage found, saying what was lost, skipped or cut.
    pub damage: Vec<String>,
    pub records: u64,
    pub segments: u64,
}

/// What a record changes in the [`Index`], without its payload.
#[derive(Debug, Clone)]
enum Change {
    Define(MailboxDef),
    Drop { key: u64 },
    Put { key: u64, id: u64 },
    Remove { key: u64, id: u64 },
    Purge { key: u64, below: u64 },
    Delivered { key: u64, id: u64, deliveries: u32 },
}

impl Change {
    fn of(record: &Record) -> Self {
        match record {
            Record::Define(def) => Change::Define(def.clone()),
            Record::Drop { key } => Change::Drop { key: *key },
            Record::Put(m) => Change::Put {
                key: m.key,
                id: m.id,
            },
            Record::Remove { key, id } => Change::Remove { key: *key, id: *id },
            Record::Purge { key, below } => Change::Purge {
                key: *key,
                below: *below,
            },
            Record::Delivered {
                key,
                id,
                deliveries,
            } => Change::Delivered {
                key: *key,
                id: *id,
                deliveries: *deliveries,
            },
        }
    }
}

/// What the log holds, as far as reclaiming space needs to know: the segments, the
/// current definitions and where each live message's `Put` is.
#[derive(Debug, Default)]
struct Index {
    segments: BTreeMap<u64, Segment>,
    defs: HashMap<u64, MailboxDef>,
    live: HashMap<u64, Messages>,
}

/// The log itself.
#[derive(Debug)]
pub struct Log<D: Disk> {
    disk: D,
    options: LogOptions,
    /// What is committed: staged appends are not in it yet.
    index: Index,
    head: u64,
    /// Whether the head holds appends not yet synced.
    dirty: bool,
    buf: BytesMut,
    /// Appends not yet committed, with where they lie; all in the head.
    staged: Vec<(Change, Loc)>,
    /// Where in the head the first staged append begins: what a failed sync cuts back to.
    staged_from: Option<u64>,
    /// Why the log refuses writes, once a failure could not be undone.
    failed: Option<String>,
    /// Live messages copied forward so far to reclaim segments.
    copied: u64,
}

/// Recovery's state while it reads the segments in order.
#[derive(Default)]
struct Replay {
    index: Index,
    /// Live messages by mailbox key and id, with their payloads.
    messages: HashMap<u64, BTreeMap<u64, StoredMessage>>,
    max_key: u64,
    recovered: Recovered,
}

/// How many intact frames a stretch of bytes holds, as far as was looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    Found(u64),
    /// The search would have cost more than [`SCAN_BUDGET`].
    TooCostly,
}

/// Counts the positions in `bytes` where a whole frame with a holding checksum starts.
/// Only used to tell a torn tail (none) from damage followed by records.
fn scan_frames(bytes: &[u8]) -> Scan {
    let mut budget = SCAN_BUDGET;
    let mut found = 0;
    for at in 0..bytes.len().saturating_sub(RECORD_HEADER) {
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let (len, crc) = (word(at) as usize, word(at + 4));
        let body = at + RECORD_HEADER;
        if len == 0 || len > bytes.len() - body {
            continue;
        }
        let Some(left) = budget.checked_sub(len) else {
            return Scan::TooCostly;
        };
        budget = left;
        if crc32fast::hash(&bytes[body..body + len]) == crc {
            found += 1;
        }
    }
    Scan::Found(found)
}

impl Replay {
    /// Reads segment `seg`; returns how many of its bytes stay on disk, or `None` if the
    /// segment was removed.
    fn segment<D: Disk>(
        &mut self,
        disk: &mut D,
        seg: u64,
        data: &Bytes,
        is_head: bool,
    ) -> io::Result<Option<usize>> {
        let header_ok = data.len() >= HEADER_LEN
            && &data[..MAGIC.len()] == MAGIC
            && data[MAGIC.len()..HEADER_LEN] == seg.to_le_bytes();
        if !header_ok {
            if is_head && scan_frames(data) == Scan::Found(0) {
                self.damage(format!(
                    "segment {seg}: missing or bad header and no intact record in its {} \
                     bytes (a segment being started when ipcd stopped); removed",
                    data.len()
                ));
                disk.remove(seg)?;
                disk.sync_dir()?;
                return Ok(None);
            }
            if data.len() < HEADER_LEN {
                self.damage(format!(
                    "segment {seg}: only {} bytes, too short for a header; ignored",
                    data.len()
                ));
                return Ok(Some(data.len()));
            }
            self.damage(format!(
                "segment {seg}: bad header; its records are read all the same, each checked \
                 by its checksum"
            ));
        }
        let mut offset = HEADER_LEN;
        while offset < data.len() {
            match record::frame(&data.slice(offset..)) {
                Framed::Intact { body, used } => {
                    match record::decode_body(body.clone()) {
                        Ok(record) => {
                            let loc = Loc {
                                seg,
                                offset: offset as u64,
                                len: used as u64,
                            };
                            self.apply(record, loc);
                        }
                        Err(e) => {
                            let what = self.held(record::glimpse(&body), "it held");
                            self.damage(format!(
                                "segment {seg}: record at offset {offset} ({used} bytes) has a \
                                 valid checksum but cannot be read ({e}); skipped, and the \
                                 records after it are kept; {what}"
                            ));
                        }
                    }
                    offset += used;
                }
                Framed::Corrupt { body, used } if record::body_shape(&body) == Some(body.len()) => {
                    let what = self.held(record::glimpse(&body), "it seems to have held");
                    self.damage(format!(
                        "segment {seg}: record at offset {offset} ({used} bytes) fails its \
                         checksum; skipped by its length, which its own fields confirm, and the \
                         records after it are kept; {what}"
                    ));
                    offset += used;
                }
                Framed::Corrupt { .. } => {
                    let why = "checksum mismatch, and its fields do not confirm its length";
                    return self.unreadable_tail(disk, seg, data, offset, why, is_head);
                }
                Framed::Unframed(e) => {
                    let why = e.to_string();
                    return self.unreadable_tail(disk, seg, data, offset, &why, is_head);
                }
            }
        }
        Ok(Some(data.len()))
    }

    /// Handles the bytes of `seg` from `offset` on, where no next record can be found
    /// safely: cut if they are a torn tail of the head, else reported and left in place.
    fn unreadable_tail<D: Disk>(
        &mut self,
        disk: &mut D,
        seg: u64,
        data: &Bytes,
        offset: usize,
        why: &str,
        is_head: bool,
    ) -> io::Result<Option<usize>> {
        let rest = data.len() - offset;
        let scan = scan_frames(&data[offset + 1..]);
        if is_head && scan == Scan::Found(0) {
            disk.truncate(seg, offset as u64)?;
            disk.sync(seg)?;
            self.damage(format!(
                "segment {seg}: torn tail at offset {offset} ({why}); cut {rest} bytes that hold \
                 no intact record (the end of a write that a crash cut short, or damage to the \
                 last record)"
            ));
            return Ok(Some(offset));
        }
        let inside = match scan {
            Scan::Found(0) => "no intact record".to_string(),
            Scan::Found(n) => format!(
                "{n} stretches with a valid checksum, which cannot be told apart from message \
                 contents"
            ),
            Scan::TooCostly => "too much to search".to_string(),
        };
        self.damage(format!(
            "segment {seg}: damaged record at offset {offset} ({why}) and the next record cannot \
             be found safely; the {rest} bytes from there ({inside}) are left in place unread: \
             acknowledged messages in them are missing and removals in them undone"
        ));
        Ok(Some(data.len()))
    }

    /// Applies one record read at `loc`.
    fn apply(&mut self, record: Record, loc: Loc) {
        self.recovered.records += 1;
        self.max_key = self.max_key.max(record.key());
        self.index.apply(&Change::of(&record), loc);
        match record {
            Record::Put(m) => {
                let messages = self.messages.entry(m.key).or_default();
                // A second `Put` of an id is a copy made to reclaim space: the count of
                // deliveries recorded before it still holds.
                let deliveries = messages.get(&m.id).map_or(0, |old| old.deliveries);
                let m = StoredMessage {
                    // Copied out, so one small message does not pin a whole segment's
                    // buffer.
                    payload: Bytes::copy_from_slice(&m.payload),
                    deliveries: deliveries.max(m.deliveries),
                    ..m
                };
                messages.insert(m.id, m);
            }
            Record::Remove { key, id } => {
                if let Some(p) = self.messages.get_mut(&key) {
                    p.remove(&id);
                }
            }
            Record::Purge { key, below } => {
                if let Some(p) = self.messages.get_mut(&key) {
                    *p = p.split_off(&below);
                }
            }
            Record::Drop { key } => {
                self.messages.remove(&key);
            }
            Record::Delivered {
                key,
                id,
                deliveries,
            } => {
                if let Some(m) = self.messages.get_mut(&key).and_then(|p| p.get_mut(&id)) {
                    m.deliveries = m.deliveries.max(deliveries);
                }
            }
            Record::Define(_) => {}
        }
    }

    fn damage(&mut self, line: String) {
        self.recovered.damage.push(line);
    }

    /// Names mailbox `key` as well as the definitions read so far allow.
    fn mailbox(&self, key: u64) -> String {
        match self.index.defs.get(&key) {
            Some(def) => format!("mailbox {}", def.name),
            None => format!("mailbox #{key}"),
        }
    }

    /// Says what a skipped record held and what its loss means.
    fn held(&self, glimpse: Glimpse, held: &str) -> String {
        match glimpse {
            Glimpse::Put { key, id } => {
                format!(
                    "{held} message {id} of {}, which is lost",
                    self.mailbox(key)
                )
            }
            Glimpse::Remove { key, id } => format!(
                "{held} the removal of message {id} of {}, which may be delivered again",
                self.mailbox(key)
            ),
            Glimpse::Purge { key, below } => format!(
                "{held} a purge of {} (ids below {below}), whose messages may be delivered again",
                self.mailbox(key)
            ),
            Glimpse::Drop { key } => format!(
                "{held} the removal of {}, which may come back",
                self.mailbox(key)
            ),
            Glimpse::Define { key } => format!(
                "{held} settings of {}; its earlier settings stand, and without any it is dropped",
                self.mailbox(key)
            ),
            Glimpse::Delivered { key, id } => format!(
                "{held} a delivery count of message {id} of {}, which may now count fewer \
                 deliveries",
                self.mailbox(key)
            ),
            Glimpse::Unknown { kind: Some(kind) } => format!(
                "{held} a record of unknown kind {kind} (written by a newer ipcd?), which is \
                 ignored"
            ),
            Glimpse::Unknown { kind: None } => format!("{held} nothing"),
        }
    }

    /// Turns what was read into the mailboxes to restore. Damage can leave a mailbox's
    /// messages without any definition, or one name on two mailboxes (when the removal of
    /// the older was lost); those are reported, and returned as `Drop`s to write, so that
    /// the log says what the daemon now holds.
    fn finish(&mut self) -> Vec<Record> {
        let mut settle = Vec::new();
        let mut defs: Vec<_> = self.index.defs.values().cloned().collect();
        // Newest first: keys only grow, so of two mailboxes of one name the later wins.
        defs.sort_by_key(|d| std::cmp::Reverse(d.key));
        let mut names = HashMap::new();
        let mut mailboxes = Vec::new();
        for mut def in defs {
            let messages: Vec<_> = self
                .messages
                .remove(&def.key)
                .map(|p| p.into_values().collect())
                .unwrap_or_default();
            if let Some(newer) = names.get(&def.name) {
                self.damage(format!(
                    "mailbox {} (#{}) is defined again later as #{newer}, so the record of its \
                     removal was lost; the older one and its {} messages are dropped",
                    def.name,
                    def.key,
                    messages.len()
                ));
                settle.push(Record::Drop { key: def.key });
                continue;
            }
            names.insert(def.name.clone(), def.key);
            if let Some(last) = messages.last() {
                def.next_id = def.next_id.max(last.id + 1);
            }
            mailboxes.push((def, messages));
        }
        let mut orphans: Vec<_> = self
            .index
            .live
            .iter()
            .filter(|(key, live)| live.count > 0 && !self.index.defs.contains_key(key))
            .map(|(&key, live)| (key, live.count))
            .collect();
        orphans.sort_unstable();
        for (key, count) in orphans {
            self.damage(format!(
                "mailbox #{key}: no definition of it survived, so its {count} messages are \
                 dropped"
            ));
            settle.push(Record::Drop { key });
        }
        mailboxes.sort_by_key(|(d, _)| d.key);
        for (def, _) in &mailboxes {
            self.index.defs.insert(def.key, def.clone());
        }
        self.recovered.mailboxes = mailboxes;
        self.recovered.next_key = self.max_key + 1;
        settle
    }
}

impl<D: Disk> Log<D> {
    /// Opens the log on `disk`, replaying what it holds, and starts a fresh head segment.
    pub fn open(mut disk: D, options: LogOptions) -> io::Result<(Self, Recovered)> {
        let mut replay = Replay::default();
        let segs = disk.list()?;
        let last = segs.last().copied();
        for seg in segs {
            let data = Bytes::from(disk.read(seg)?);
            replay.recovered.segments += 1;
            if let Some(kept) = replay.segment(&mut disk, seg, &data, Some(seg) == last)? {
                replay.index.segments.entry(seg).or_default().len = kept as u64;
            }
        }
        let settle = replay.finish();
        let Replay {
            index, recovered, ..
        } = replay;
        let next = index.segments.keys().next_back().map_or(1, |s| s + 1);
        let mut log = Log {
            disk,
            options,
            index,
            head: 0,
            dirty: false,
            buf: BytesMut::new(),
            staged: Vec::new(),
            staged_from: None,
            failed: None,
            copied: 0,
        };
        log.start_segment(next)?;
        if !settle.is_empty() {
            log.write(&settle)?;
            log.sync()?;
        }
        Ok((log, recovered))
    }

    /// Checks that `record` can be written: every length fits the format, and the whole
    /// fits [`LogOptions::max_record`].
    pub fn admit(&self, record: &Record) -> Result<(), EncodeError> {
        let body = record.encoded_len()? - RECORD_HEADER;
        let max = self.options.max_record as usize;
        if body > max {
            return Err(EncodeError::TooLong {
                field: "record",
                len: body,
                max,
            });
        }
        Ok(())
    }

    /// Appends `records` to the head, staged: neither synced nor committed. On failure
    /// nothing of them counts: the head is cut back to where it was (and if even that
    /// fails, the log refuses further writes).
    pub fn write(&mut self, records: &[Record]) -> io::Result<()> {
        self.usable()?;
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let mut ends = Vec::with_capacity(records.len());
        for record in records {
            // Checked whole before anything reaches the disk.
            self.admit(record)
                .and_then(|()| record.encode(&mut self.buf))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            ends.push(self.buf.len());
        }
        let head_len = self.index.segments[&self.head].len;
        if head_len + self.buf.len() as u64 > self.options.segment_bytes
            && head_len > HEADER_LEN as u64
        {
            self.roll()?;
            // The snapshot of definitions went to the new head; encode again after it.
            return self.write(records);
        }
        let start = self.index.segments[&self.head].len;
        let buf = std::mem::take(&mut self.buf);
        let written = self.disk.append(self.head, &buf);
        self.buf = buf;
        if let Err(e) = written {
            // Appends after garbage would be unreachable, so the head must end where it
            // did; what was staged before stays staged.
            if let Err(cut) = self.disk.truncate(self.head, start) {
                let why = format!("a write failed ({e}) and cutting it back failed too ({cut})");
                self.failed = Some(why.clone());
                return Err(io::Error::new(e.kind(), why));
            }
            return Err(e);
        }
        self.dirty = true;
        self.staged_from.get_or_insert(start);
        let mut begin = 0;
        for (record, end) in records.iter().zip(ends) {
            let loc = Loc {
                seg: self.head,
                offset: start + begin as u64,
                len: (end - begin) as u64,
            };
            self.staged.push((Change::of(record), loc));
            begin = end;
        }
        self.index
            .segments
            .get_mut(&self.head)
            .expect("head exists")
            .len = start + begin as u64;
        Ok(())
    }

    /// Commits the staged appends without syncing them: for writers whose fsync policy
    /// answers once the data is written. A later failed sync no longer takes them back.
    pub fn commit(&mut self) {
        self.staged_from = None;
        for (change, loc) in std::mem::take(&mut self.staged) {
            self.index.apply(&change, loc);
        }
    }

    /// Makes every append so far durable, and commits the staged ones. If `fdatasync`
    /// fails, the staged appends are cut back off and the cut synced, so they never come
    /// back; if that fails too, the log refuses every further write.
    pub fn sync(&mut self) -> io::Result<()> {
        self.usable()?;
        if self.dirty {
            if let Err(e) = self.disk.sync(self.head) {
                return Err(self.undo(&format!("fdatasync failed: {e}"), e.kind()));
            }
            self.dirty = false;
        }
        self.commit();
        Ok(())
    }

    /// Takes the staged appends back off the head after `what` went wrong, and syncs the
    /// cut; returns the error for their writers.
    fn undo(&mut self, what: &str, kind: io::ErrorKind) -> io::Error {
        self.staged.clear();
        let Some(from) = self.staged_from.take() else {
            // Nothing staged: what was written before was answered already.
            return io::Error::new(kind, what.to_string());
        };
        let cut = self
            .disk
            .truncate(self.head, from)
            .and_then(|()| self.disk.sync(self.head));
        match cut {
            Ok(()) => {
                self.index
                    .segments
                    .get_mut(&self.head)
                    .expect("head exists")
                    .len = from;
                self.dirty = false;
                io::Error::new(
                    kind,
                    format!("{what}; the unsynced records were cut back off the log"),
                )
            }
            Err(cut) => {
                let why =
                    format!("{what}, and cutting the unsynced records back off failed too ({cut})");
                self.failed = Some(why.clone());
                io::Error::new(kind, why)
            }
        }
    }

    /// Fails if the log refuses writes.
    fn usable(&self) -> io::Result<()> {
        match &self.failed {
            Some(why) => Err(io::Error::other(format!(
                "durable writes are refused until ipcd restarts: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// Why the log refuses writes, if it does.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Live messages copied forward so far to reclaim old segments.
    #[cfg(test)]
    pub fn copied(&self) -> u64 {
        self.copied
    }

    /// Bytes of all segments, and of the live messages in them.
    pub fn sizes(&self) -> (u64, u64) {
        let total = self.index.segments.values().map(|s| s.len).sum();
        let live = self.index.segments.values().map(|s| s.live_bytes).sum();
        (total, live)
    }

    /// Reclaims the oldest segment if that is worth it: at once when nothing in it is
    /// live, else by copying its live messages (with their delivery counts) to the head
    /// when the log holds more than twice what is live (plus one segment). Returns
    /// whether a segment was deleted. Call it with nothing staged.
    pub fn compact_step(&mut self) -> io::Result<bool> {
        if self.failed.is_some() {
            return Ok(false);
        }
        let Some((&oldest, seg)) = self.index.segments.iter().next() else {
            return Ok(false);
        };
        if oldest == self.head {
            return Ok(false);
        }
        if seg.live > 0 {
            let (total, live) = self.sizes();
            if total <= 2 * live + self.options.segment_bytes {
                return Ok(false);
            }
            let copies = self.live_records_of(oldest, seg.len)?;
            let count = copies
                .iter()
                .filter(|r| matches!(r, Record::Put(_)))
                .count() as u64;
            // Copies go to the head in a fresh segment if need be, never to `oldest`.
            for chunk in copies.chunks(256) {
                if let Err(e) = self.write(chunk) {
                    // Earlier chunks are staged; none of them may linger half-done.
                    return Err(self.undo(&format!("copying live messages failed: {e}"), e.kind()));
                }
            }
            self.copied += count;
            tracing::debug!(
                segment = oldest,
                copied = count,
                "reclaiming a durable log segment"
            );
        }
        // The copies must be durable before the originals go.
        self.sync()?;
        debug_assert_eq!(self.index.segments[&oldest].live, 0, "copied away");
        self.disk.remove(oldest)?;
        // Gone from the index even if the directory sync fails: should the file come
        // back after a crash, its records are older than their copies, which win.
        self.index.remove_segment(oldest);
        self.disk.sync_dir()?;
        Ok(true)
    }

    /// The records that carry segment `seg`'s live messages forward: each one's newest
    /// `Put`, and its count of deliveries if above zero. The index knows which messages
    /// those are but not where their records lie, so the segment (its first `len`
    /// bytes) is read through, as recovery read it: a record whose checksum fails is
    /// skipped by its length when its fields confirm it, and the reading stops where no
    /// next record can be found. Every live message must be found, or nothing is copied.
    fn live_records_of(&mut self, seg: u64, len: u64) -> io::Result<Vec<Record>> {
        let data = Bytes::from(self.disk.read_at(seg, 0, len as usize)?);
        let mut found: BTreeMap<(u64, u64), StoredMessage> = BTreeMap::new();
        let mut offset = HEADER_LEN.min(data.len());
        while offset < data.len() {
            match record::frame(&data.slice(offset..)) {
                Framed::Intact { body, used } => {
                    if let Ok(Record::Put(m)) = record::decode_body(body) {
                        let newest_here = self.index.live.get(&m.key).is_some_and(|messages| {
                            messages.is_live(m.id) && messages.segment_of(m.id) == Some(seg)
                        });
                        if newest_here {
                            found.insert((m.key, m.id), m);
                        }
                    }
                    offset += used;
                }
                Framed::Corrupt { body, used } if record::body_shape(&body) == Some(body.len()) => {
                    offset += used;
                }
                Framed::Corrupt { .. } | Framed::Unframed(_) => break,
            }
        }
        let live = self.index.segments.get(&seg).map_or(0, |s| s.live);
        if found.len() as u64 != live {
            return Err(io::Error::other(format!(
                "re-reading segment {seg}: found {} of its {live} live messages",
                found.len()
            )));
        }
        let mut records = Vec::with_capacity(found.len());
        for ((key, id), m) in found {
            let deliveries = self
                .index
                .live
                .get(&key)
                .and_then(|m| m.deliveries.get(&id));
            let deliveries = deliveries.copied().unwrap_or(0);
            records.push(Record::Put(StoredMessage {
                // Copied out, so that the copy does not hold the whole segment's bytes.
                payload: Bytes::copy_from_slice(&m.payload),
                ..m
            }));
            if deliveries > 0 {
                records.push(Record::Delivered {
                    key,
                    id,
                    deliveries,
                });
            }
        }
        Ok(records)
    }

    /// Syncs the head (committing what is staged) and starts a new one.
    fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        self.start_segment(self.head + 1)
    }

    /// Creates segment `seg` with its header and a snapshot of every definition, synced
    /// and linked into the directory durably, and makes it the head.
    fn start_segment(&mut self, seg: u64) -> io::Result<()> {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&seg.to_le_bytes());
        let mut defs: Vec<_> = self.index.defs.values().cloned().collect();
        defs.sort_by_key(|d| d.key);
        for def in defs {
            Record::Define(def)
                .encode(&mut buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        self.disk.create(seg)?;
        let written = self
            .disk
            .append(seg, &buf)
            .and_then(|()| self.disk.sync(seg))
            .and_then(|()| self.disk.sync_dir());
        if let Err(e) = written {
            // Half made (a full disk): take it away, so a later attempt can make it anew
            // and recovery never meets a headless segment in the middle of the log.
            let _ = self.disk.remove(seg);
            return Err(e);
        }
        self.index.segments.insert(
            seg,
            Segment {
                len: buf.len() as u64,
                ..Segment::default()
            },
        );
        self.head = seg;
        self.dirty = false;
        Ok(())
    }
}

impl Index {
    /// Updates the committed picture for one record at `loc`.
    fn apply(&mut self, change: &Change, loc: Loc) {
        match change {
            Change::Define(def) => {
                self.defs.insert(def.key, def.clone());
            }
            Change::Drop { key } => {
                self.defs.remove(key);
                if let Some(mut messages) = self.live.remove(key) {
                    let ids: Vec<u64> = messages.live_in(0, u64::MAX).collect();
                    for id in ids {
                        let (seg, len) = messages.clear_live(id).expect("live");
                        self.forget(seg, len);
                    }
                }
            }
            Change::Put { key, id } => {
                if let Some(def) = self.defs.get_mut(key) {
                    def.next_id = def.next_id.max(id + 1);
                }
                let messages = self.live.entry(*key).or_default();
                // A second `Put` of a live id is its copy: it moves, with its count of
                // deliveries.
                let old_seg = messages.segment_of(*id);
                let moved = messages.set_live(*id, loc.len);
                messages.place(*id, loc.seg);
                if let Some(old_len) = moved {
                    self.forget(old_seg.expect("a live message is in a span"), old_len);
                }
                let seg = self.segments.entry(loc.seg).or_default();
                seg.live += 1;
                seg.live_bytes += counted(loc.len);
            }
            Change::Remove { key, id } => {
                if let Some((seg, len)) = self.live.get_mut(key).and_then(|m| m.clear_live(*id)) {
                    self.forget(seg, len);
                }
            }
            Change::Delivered {
                key,
                id,
                deliveries,
            } => {
                if let Some(messages) = self.live.get_mut(key).filter(|m| m.is_live(*id)) {
                    let count = messages.deliveries.entry(*id).or_default();
                    *count = (*count).max(*deliveries);
                }
            }
            Change::Purge { key, below } => {
                let Some(messages) = self.live.get_mut(key) else {
                    return;
                };
                let gone: Vec<u64> = match below.checked_sub(1) {
                    Some(last) => messages.live_in(0, last).collect(),
                    None => Vec::new(),
                };
                let left: Vec<(u64, u64)> = gone
                    .into_iter()
                    .map(|id| messages.clear_live(id).expect("live"))
                    .collect();
                for (seg, len) in left {
                    self.forget(seg, len);
                }
            }
        }
    }

    /// A live message whose newest `Put` is in `seg`, counting `len` bytes there, is
    /// gone (or moved).
    fn forget(&mut self, seg: u64, len: u64) {
        if let Some(seg) = self.segments.get_mut(&seg) {
            seg.live -= 1;
            seg.live_bytes -= len;
        }
    }

    /// Segment `seg` is deleted: it holds no live message.
    fn remove_segment(&mut self, seg: u64) {
        self.segments.remove(&seg);
        for messages in self.live.values_mut() {
            messages.forget_segment(seg);
        }
    }
}

#[cfg(test)]
mod index_tests {
    use std::collections::HashMap;

    use super::*;

    /// Messages taken in the order sent, as most mailboxes are, with the segments
    /// reclaimed as they go: one span per segment at most, whatever was copied.
    #[test]
    fn messages_taken_in_order_keep_a_span_per_segment() {
        let mut index = Index::default();
        let at = |seg| Loc {
            seg,
            offset: 0,
            len: 100,
        };
        let (mut oldest, mut head) = (1, 1);
        for id in 0..100_000u64 {
            index.apply(&Change::Put { key: 1, id }, at(head));
            // Every tenth message stays a while longer (a slow receiver), the rest go.
            if id % 10 != 0 {
                index.apply(&Change::Remove { key: 1, id }, at(head));
            }
            if id >= 5_000 && id % 10 == 5 {
                index.apply(
                    &Change::Remove {
                        key: 1,
                        id: id - 5_005,
                    },
                    at(head),
                );
            }
            if id % 1_000 == 999 {
                head += 1;
                let messages = &index.live[&1];
                let copied: Vec<u64> = messages
                    .live_in(0, u64::MAX)
                    .filter(|&id| messages.segment_of(id) == Some(oldest))
                    .collect();
                for id in copied {
                    index.apply(&Change::Put { key: 1, id }, at(head));
                }
                index.remove_segment(oldest);
                oldest += 1;
                let spans = index.live[&1].spans.len() as u64;
                assert!(spans <= head - oldest + 1, "{spans} spans at message {id}");
            }
        }
    }

    /// Random `Put`s (new ids mostly, copies of live ones to newer segments),
    /// removals, purges and deleted segments, against a plain map of every live id to
    /// its segment: the spans and bits agree with it after every step, each segment's
    /// live count and bytes are right, and the spans stay few.
    #[test]
    fn the_live_set_agrees_with_a_map_of_every_message() {
        let mut rng = super::crash_tests::Rng(0x9e37_79b9_7f4a_7c15);
        let mut random = move |n: u64| rng.below(n);
        let mut index = Index::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let (mut next_id, mut head, mut oldest) = (0u64, 1u64, 1u64);
        // Records of many lengths, some too long for a chunk's byte.
        let len = |id: u64| 40 + id * 7919 % 3000;
        let at = |seg, id| Loc {
            seg,
            offset: 0,
            len: len(id),
        };
        for step in 0..20_000 {
            match random(20) {
                0..=8 => {
                    index.apply(
                        &Change::Put {
                            key: 1,
                            id: next_id,
                        },
                        at(head, next_id),
                    );
                    model.insert(next_id, head);
                    next_id += 1;
                }
                9..=13 if !model.is_empty() => {
                    let id = *model
                        .keys()
                        .nth(random(model.len() as u64) as usize)
                        .unwrap();
                    index.apply(&Change::Remove { key: 1, id }, at(head, 0));
                    model.remove(&id);
                }
                14 => head += 1,
                15 if head > oldest => {
                    // Reclaim the oldest segment: copy its live messages to the head.
                    let mut ids: Vec<u64> = (model.iter())
                        .filter(|&(_, &seg)| seg == oldest)
                        .map(|(&id, _)| id)
                        .collect();
                    ids.sort_unstable();
                    for id in ids {
                        index.apply(&Change::Put { key: 1, id }, at(head, id));
                        model.insert(id, head);
                    }
                    let left = index.segments.get(&oldest).map_or(0, |s| s.live);
                    assert_eq!(left, 0, "step {step}");
                    index.remove_segment(oldest);
                    oldest += 1;
                }
                16 if random(20) == 0 => {
                    let below = random(next_id + 1);
                    index.apply(&Change::Purge { key: 1, below }, at(head, 0));
                    model.retain(|&id, _| id >= below);
                }
                _ => {}
            }
            let Some(messages) = index.live.get(&1) else {
                assert!(model.is_empty());
                continue;
            };
            assert_eq!(messages.count, model.len() as u64, "step {step}");
            if step % 101 == 0 {
                let mut live: Vec<u64> = model.keys().copied().collect();
                live.sort_unstable();
                let found: Vec<u64> = messages.live_in(0, u64::MAX).collect();
                assert_eq!(found, live, "step {step}");
                for (&id, &seg) in &model {
                    assert_eq!(messages.segment_of(id), Some(seg), "step {step}, id {id}");
                }
                for (&seg, s) in &index.segments {
                    let live = model.values().filter(|&&m| m == seg).count() as u64;
                    assert_eq!(s.live, live, "step {step}, segment {seg}");
                    let bytes: u64 = (model.iter())
                        .filter(|&(_, &m)| m == seg)
                        .map(|(&id, _)| counted(len(id)))
                        .sum();
                    assert_eq!(s.live_bytes, bytes, "step {step}, segment {seg}");
                }
                // Spans do not pile up: at most a few per segment (7.7 was the most
                // seen here, where messages are taken from anywhere), never one per
                // message written.
                assert!(
                    messages.spans.len() as u64 <= 10 * (head - oldest + 1),
                    "step {step}: {} spans for segments {oldest}..={head}",
                    messages.spans.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod crash_tests {
    //! Crash-point testing of the log on a simulated disk: run a workload, let the disk
    //! die at operation N — or fail the `fdatasync` at operation N and carry on, or both —
    //! apply what a crash does to unsynced data (lose it, tear it, or flip a bit in it),
    //! recover, and check what survived against what the log answered. Every operation of
    //! every workload is a crash point, and every sync a failure point.

    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::store::disk::sim::{Crash, SimDisk};
    use crate::store::record::tests::{def, put};

    const OPTIONS: LogOptions = LogOptions {
        segment_bytes: 2048,
        max_record: 1 << 20,
    };

    type Id = (u64, u64);

    /// A small deterministic generator (xorshift64*), so every run is reproducible.
    /// A small seeded generator (xorshift*), so that every run tests the same cases.
    pub(super) struct Rng(pub(super) u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(super) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// How the log answered one write, as the store's writer would pass it on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        /// Written and synced: a send would be answered with its id.
        Acked,
        /// Written and committed without a sync (fsync `never`): answered, but a crash
        /// may lose it.
        Written,
        /// Refused or taken back: answered "failed", so it must never come back.
        Failed,
        /// Failed and the log could not undo it: the writer was told it may come back.
        Unknown,
    }

    /// Writes `records` and syncs or commits them as the store's writer does.
    fn exec(log: &mut Log<SimDisk>, records: &[Record], sync: bool) -> Outcome {
        let failed = |log: &Log<SimDisk>| {
            if log.failure().is_some() {
                Outcome::Unknown
            } else {
                Outcome::Failed
            }
        };
        if log.write(records).is_err() {
            return failed(log);
        }
        if !sync {
            log.commit();
            return Outcome::Written;
        }
        match log.sync() {
            Ok(()) => Outcome::Acked,
            Err(_) => failed(log),
        }
    }

    /// What the workload did and what the log answered.
    #[derive(Default)]
    struct Model {
        /// Every `Put` written or attempted, as it was.
        sent: HashMap<Id, StoredMessage>,
        acked: HashSet<Id>,
        /// Answered "failed": must never be delivered.
        failed: HashSet<Id>,
        /// Removals answered as synced: must never be delivered again.
        removal_acked: HashSet<Id>,
        /// Removals that may have happened (written, whatever the answer but "failed").
        removal_maybe: HashSet<Id>,
        /// Believed live (for choosing what to remove or lease).
        live: Vec<Id>,
        defs_acked: HashSet<u64>,
        defs_failed: HashSet<u64>,
        drop_acked: HashSet<u64>,
        drop_maybe: HashSet<u64>,
        /// Delivery counts: synced (recovery reports at least this) and written (at most).
        deliveries_acked: HashMap<Id, u32>,
        deliveries_max: HashMap<Id, u32>,
        failed_writes: u64,
        reclaimed: u64,
        copied: u64,
    }

    /// Runs the workload for `seed` until it ends or the disk dies; returns the model.
    fn workload(disk: SimDisk, seed: u64, steps: usize) -> Model {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut m = Model::default();
        let Ok((mut log, _)) = Log::open(disk.clone(), OPTIONS) else {
            return m;
        };
        let mut next_key = 1;
        let mut next_id: HashMap<u64, u64> = HashMap::new();
        let mut keys: Vec<u64> = Vec::new();
        // Odd seeds churn: new messages are removed first, so old ones stay live in old
        // segments and reclaiming them means copying (the dangerous path).
        let churn = seed % 2 == 1;
        let (puts_below, most_per_put) = if churn { (6, 1) } else { (10, 4) };
        for _ in 0..steps {
            if disk.is_dead() || log.failure().is_some() {
                return m;
            }
            let sync = rng.below(3) == 0;
            if keys.len() < 2 {
                let key = next_key;
                next_key += 1;
                match exec(
                    &mut log,
                    &[Record::Define(def(key, &format!("box{key}")))],
                    sync,
                ) {
                    Outcome::Failed => {
                        m.defs_failed.insert(key);
                    }
                    outcome => {
                        if outcome == Outcome::Acked {
                            m.defs_acked.insert(key);
                        }
                        keys.push(key);
                    }
                }
                continue;
            }
            match rng.below(22) {
                roll if roll < puts_below => {
                    let key = keys[rng.below(keys.len() as u64) as usize];
                    let mut batch = Vec::new();
                    for _ in 0..=rng.below(most_per_put) {
                        let id = next_id.entry(key).or_insert(1);
                        let len = rng.below(300) as usize;
                        let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                        let message = put(key, *id, &payload);
                        m.sent.insert((key, *id), message.clone());
                        batch.push(Record::Put(message));
                        *id += 1;
                    }
                    let ids = batch.iter().map(|r| match r {
                        Record::Put(p) => (p.key, p.id),
                        _ => unreachable!(),
                    });
                    match exec(&mut log, &batch, sync) {
                        Outcome::Acked => {
                            for id in ids {
                                m.acked.insert(id);
                                m.live.push(id);
                            }
                        }
                        Outcome::Written => m.live.extend(ids),
                        Outcome::Failed => m.failed.extend(ids),
                        Outcome::Unknown => {}
                    }
                }
                roll if roll < 14 && !m.live.is_empty() => {
                    let (key, id) = if churn {
                        m.live.pop().expect("not empty")
                    } else {
                        m.live.swap_remove(rng.below(m.live.len() as u64) as usize)
                    };
                    match exec(&mut log, &[Record::Remove { key, id }], sync) {
                        Outcome::Failed => m.live.push((key, id)),
                        outcome => {
                            m.removal_maybe.insert((key, id));
                            if outcome == Outcome::Acked {
                                m.removal_acked.insert((key, id));
                            }
                        }
                    }
                }
                14 => {
                    let key = keys[rng.below(keys.len() as u64) as usize];
                    let below = *next_id.get(&key).unwrap_or(&1);
                    let outcome = exec(&mut log, &[Record::Purge { key, below }], sync);
                    if outcome != Outcome::Failed {
                        m.live.retain(|&(k, _)| k != key);
                        for &id in m.sent.keys().filter(|&&(k, i)| k == key && i < below) {
                            m.removal_maybe.insert(id);
                            if outcome == Outcome::Acked {
                                m.removal_acked.insert(id);
                            }
                        }
                    }
                }
                15 => {
                    let i = rng.below(keys.len() as u64) as usize;
                    let key = keys[i];
                    let outcome = exec(&mut log, &[Record::Drop { key }], sync);
                    if outcome != Outcome::Failed {
                        keys.swap_remove(i);
                        m.live.retain(|&(k, _)| k != key);
                        m.drop_maybe.insert(key);
                        if outcome == Outcome::Acked {
                            m.drop_acked.insert(key);
                        }
                    }
                }
                16 | 17 if !m.live.is_empty() => {
                    // A lease: its delivery count must survive crashes and copies.
                    let id = m.live[rng.below(m.live.len() as u64) as usize];
                    let deliveries = m.deliveries_max.get(&id).copied().unwrap_or(0) + 1;
                    let record = Record::Delivered {
                        key: id.0,
                        id: id.1,
                        deliveries,
                    };
                    match exec(&mut log, &[record], sync) {
                        Outcome::Failed => {}
                        outcome => {
                            m.deliveries_max.insert(id, deliveries);
                            if outcome == Outcome::Acked {
                                m.deliveries_acked.insert(id, deliveries);
                            }
                        }
                    }
                }
                18 | 19 => match log.compact_step() {
                    Ok(true) => m.reclaimed += 1,
                    Ok(false) => {}
                    Err(_) => m.failed_writes += 1,
                },
                _ => {}
            }
        }
        if exec(&mut log, &[], true) != Outcome::Acked {
            return m;
        }
        loop {
            match log.compact_step() {
                Ok(true) => m.reclaimed += 1,
                Ok(false) => break,
                Err(_) => return m,
            }
        }
        m.copied = log.copied();
        m
    }

    /// Every message recovery found, by id.
    fn messages(recovered: &Recovered) -> HashMap<Id, StoredMessage> {
        let mut found = HashMap::new();
        for (def, messages) in &recovered.mailboxes {
            for msg in messages {
                assert_eq!(msg.key, def.key, "a message under another mailbox");
                let twice = found.insert((msg.key, msg.id), msg.clone());
                assert!(twice.is_none(), "{:?} delivered twice", (msg.key, msg.id));
            }
        }
        found
    }

    /// Recovers `disk` and checks it against `m`; returns how many messages survived.
    fn check(disk: SimDisk, m: &Model, what: &str) -> usize {
        let (mut log, recovered) = Log::open(disk.clone(), OPTIONS)
            .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
        let found = messages(&recovered);
        let keys: HashSet<u64> = recovered.mailboxes.iter().map(|(d, _)| d.key).collect();
        for key in &keys {
            assert!(
                !m.drop_acked.contains(key),
                "{what}: mailbox {key} is back after its removal was acknowledged"
            );
            assert!(
                !m.defs_failed.contains(key),
                "{what}: mailbox {key} exists though its creation was answered failed"
            );
        }
        for key in &m.defs_acked {
            assert!(
                keys.contains(key) || m.drop_maybe.contains(key),
                "{what}: acknowledged mailbox {key} was lost"
            );
        }
        for (id, msg) in &found {
            let sent = m
                .sent
                .get(id)
                .unwrap_or_else(|| panic!("{what}: unknown message {id:?} appeared"));
            let as_found = StoredMessage {
                deliveries: 0,
                ..msg.clone()
            };
            assert_eq!(&as_found, sent, "{what}: {id:?} corrupted");
            assert!(
                !m.failed.contains(id),
                "{what}: {id:?} came back though its write was answered failed"
            );
            assert!(
                !m.removal_acked.contains(id),
                "{what}: {id:?} came back after its removal was acknowledged"
            );
            let least = m.deliveries_acked.get(id).copied().unwrap_or(0);
            let most = m.deliveries_max.get(id).copied().unwrap_or(0);
            assert!(
                (least..=most).contains(&msg.deliveries),
                "{what}: {id:?} counts {} deliveries, not within {least}..={most}",
                msg.deliveries
            );
        }
        for id in &m.acked {
            if !m.removal_maybe.contains(id) && !m.drop_maybe.contains(&id.0) {
                assert!(
                    found.contains_key(id),
                    "{what}: acknowledged {id:?} was lost"
                );
            }
        }
        // The recovered log takes new writes, and a second recovery agrees with the first.
        let key = recovered.next_key;
        let new = put(key, 1, b"new");
        log.write(&[Record::Define(def(key, "after")), Record::Put(new.clone())])
            .unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, again) = Log::open(disk, OPTIONS).unwrap();
        let mut expected = found.clone();
        expected.insert((key, 1), new);
        assert_eq!(
            messages(&again),
            expected,
            "{what}: second recovery differs"
        );
        found.len()
    }

    const MODES: [Crash; 4] = [
        Crash::DropUnsynced,
        Crash::Tear {
            keep_per_mille: 500,
        },
        Crash::Tear {
            keep_per_mille: 999,
        },
        Crash::FlipBit { at_per_mille: 300 },
    ];

    #[test]
    fn the_workload_without_a_crash_keeps_everything_acknowledged() {
        for seed in 0..20 {
            let disk = SimDisk::default();
            let m = workload(disk.clone(), seed, 300);
            assert!(!disk.is_dead());
            let total: usize = disk.segments().iter().map(|(_, len)| len).sum();
            let first = disk.segments()[0].0;
            let found = check(
                disk.after_crash(Crash::DropUnsynced),
                &m,
                &format!("seed {seed}"),
            );
            let expected = m
                .sent
                .keys()
                .filter(|id| !m.removal_maybe.contains(id) && !m.drop_maybe.contains(&id.0));
            assert_eq!(
                found,
                expected.count(),
                "seed {seed}: exactly the live ones"
            );
            // Reclaiming worked: old segments are gone, and the log holds at most about
            // twice what is live.
            assert!(first > 1, "seed {seed}: nothing was reclaimed");
            let live: usize = m
                .sent
                .iter()
                .filter(|(id, _)| !m.removal_maybe.contains(id) && !m.drop_maybe.contains(&id.0))
                .map(|(_, p)| p.payload.len() + 130)
                .sum();
            let bound = 2 * live + 3 * OPTIONS.segment_bytes as usize;
            assert!(
                total <= bound,
                "seed {seed}: {total} bytes on disk for {live} live"
            );
        }
    }

    /// Crash points checked in the normal test run; `IPCD_CRASH_SEEDS` raises the
    /// number of workloads for a longer offline run.
    fn seeds() -> u64 {
        std::env::var("IPCD_CRASH_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4)
    }

    #[test]
    fn every_crash_point_keeps_every_acknowledged_write() {
        let (mut points, mut copied, mut delivered) = (0, 0, 0);
        for seed in 0..seeds() {
            let probe = SimDisk::default();
            let m = workload(probe.clone(), seed, 120);
            copied += m.copied;
            delivered += m.deliveries_acked.len();
            let total_ops = probe.ops();
            for n in 1..=total_ops {
                let disk = SimDisk::default();
                disk.crash_at(n);
                let m = workload(disk.clone(), seed, 120);
                for crash in MODES {
                    check(
                        disk.after_crash(crash),
                        &m,
                        &format!("seed {seed}, crash at op {n}/{total_ops}, {crash:?}"),
                    );
                    points += 1;
                }
            }
        }
        eprintln!("{points} crash points checked; the full runs copied {copied} live messages");
        assert!(copied > 0, "no run exercised copying live messages forward");
        assert!(delivered > 0, "no run recorded a delivery count");
        assert!(points >= 1000, "only {points} crash points");
    }

    #[test]
    fn every_failed_sync_takes_back_what_it_failed_and_nothing_else() {
        let (mut points, mut failed) = (0, 0);
        for seed in 0..seeds() {
            let probe = SimDisk::default();
            workload(probe.clone(), seed, 120);
            for n in probe.sync_ops() {
                // The sync at op n fails; the workload goes on to its end, or the disk
                // dies one, two or three operations later (during the undoing).
                for crash_after in [None, Some(1), Some(2), Some(3)] {
                    let disk = SimDisk::default();
                    disk.fail_at(n);
                    if let Some(k) = crash_after {
                        disk.crash_at(n + k);
                    }
                    let m = workload(disk.clone(), seed, 120);
                    failed += m.failed.len();
                    for crash in MODES {
                        check(
                            disk.after_crash(crash),
                            &m,
                            &format!(
                                "seed {seed}, sync at op {n} failed, crash {crash_after:?} \
                                 later, {crash:?}"
                            ),
                        );
                        points += 1;
                    }
                }
            }
        }
        eprintln!("{points} failed-sync points checked; {failed} writes answered failed");
        assert!(failed > 0, "no write was ever answered failed");
        assert!(points >= 1000, "only {points} failed-sync points");
    }

    /// A log of one mailbox with `n` messages, all synced, on a disk of its own.
    fn log_of(n: u64, payload: usize) -> (SimDisk, Log<SimDisk>) {
        let disk = SimDisk::default();
        let (mut log, _) = Log::open(disk.clone(), OPTIONS).unwrap();
        log.write(&[Record::Define(def(1, "jobs"))]).unwrap();
        for id in 1..=n {
            log.write(&[Record::Put(put(1, id, &vec![id as u8; payload]))])
                .unwrap();
        }
        log.sync().unwrap();
        (disk, log)
    }

    /// Where each record of segment `seg` begins, and its length.
    fn records_of(disk: &SimDisk, seg: u64) -> Vec<(usize, usize)> {
        let data = disk.bytes(seg).unwrap();
        let mut at = HEADER_LEN;
        let mut found = Vec::new();
        while at < data.len() {
            let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            found.push((at, RECORD_HEADER + len));
            at += RECORD_HEADER + len;
        }
        found
    }

    /// A frame around `body` with a valid checksum.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Ids of the messages recovered from `disk`, and its damage lines.
    fn recover(disk: &SimDisk) -> (Vec<u64>, Vec<String>) {
        let (_, recovered) = Log::open(disk.after_crash(Crash::DropUnsynced), OPTIONS).unwrap();
        let ids = recovered
            .mailboxes
            .iter()
            .flat_map(|(_, m)| m.iter())
            .map(|m| {
                assert_eq!(&m.payload[..], &vec![m.id as u8; m.payload.len()][..]);
                m.id
            })
            .collect();
        (ids, recovered.damage)
    }

    #[test]
    fn a_full_disk_fails_the_write_and_harms_nothing_stored() {
        let (disk, mut log) = log_of(1, 4);
        let used: usize = disk.segments().iter().map(|(_, len)| len).sum();
        disk.fill_at(used + 40);
        let big = Record::Put(put(1, 2, &[7; 200]));
        let err = log.write(std::slice::from_ref(&big)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        // The partial write was cut back; a smaller one still fits and is readable.
        log.write(&[Record::Remove { key: 1, id: 99 }]).unwrap();
        log.sync().unwrap();
        let (ids, damage) = recover(&disk);
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(ids, [1]);
    }

    #[test]
    fn a_flipped_bit_in_synced_data_loses_only_its_own_record() {
        for in_head in [false, true] {
            let (disk, log) = log_of(40, 100);
            drop(log);
            let segs = disk.segments();
            let seg = if in_head {
                segs.last().unwrap().0
            } else {
                segs[0].0
            };
            let records = records_of(&disk, seg);
            // A record in the middle, hit in its payload.
            let (at, len) = records[records.len() / 2];
            disk.corrupt(seg, at + len - 10);
            let victim = disk.bytes(seg).unwrap()[at + len - 10] ^ 1;
            let (ids, damage) = recover(&disk);
            assert_eq!(ids.len(), 39, "in head {in_head}: {damage:?}");
            assert!(!ids.contains(&u64::from(victim)));
            assert_eq!(damage.len(), 1, "{damage:?}");
            assert!(
                damage[0].contains("fails its checksum")
                    && damage[0].contains(&format!("message {victim} of mailbox jobs"))
                    && damage[0].contains("which is lost"),
                "{damage:?}"
            );
        }
    }

    #[test]
    fn a_flipped_length_leaves_the_rest_unread_but_never_delivers_it_wrong() {
        for in_head in [false, true] {
            let (disk, log) = log_of(40, 100);
            drop(log);
            let segs = disk.segments();
            let seg = if in_head {
                segs.last().unwrap().0
            } else {
                segs[0].0
            };
            let before = disk.bytes(seg).unwrap().len();
            let records = records_of(&disk, seg);
            let (at, _) = records[records.len() / 2];
            disk.corrupt(seg, at + 1);
            let (ids, damage) = recover(&disk);
            let after = records.len() - records.len() / 2;
            assert_eq!(ids.len(), 40 - after, "in head {in_head}: {damage:?}");
            assert_eq!(damage.len(), 1, "{damage:?}");
            assert!(
                damage[0].contains("cannot be found safely") && damage[0].contains("left in place"),
                "{damage:?}"
            );
            // Not cut: what follows may be acknowledged data.
            assert_eq!(disk.bytes(seg).unwrap().len(), before);
        }
    }

    #[test]
    fn a_record_that_does_not_read_is_skipped_and_everything_after_it_kept() {
        for (in_head, body) in [
            (false, vec![99, 1, 2, 3]),
            (true, vec![99]),
            // A `Put` whose content_type claims more than there is, as a wrapped length
            // once made: the checksum holds, the body does not read.
            (true, {
                let mut body = vec![3];
                body.extend_from_slice(&1u64.to_le_bytes());
                body.extend_from_slice(&[0; 40]);
                body
            }),
        ] {
            let (disk, log) = log_of(40, 100);
            drop(log);
            let segs = disk.segments();
            let seg = if in_head {
                segs.last().unwrap().0
            } else {
                segs[0].0
            };
            let records = records_of(&disk, seg);
            let (at, _) = records[records.len() / 2];
            let mut data = disk.bytes(seg).unwrap();
            data.splice(at..at, framed(&body));
            let segments = segs.iter().map(|&(s, _)| {
                let bytes = if s == seg {
                    data.clone()
                } else {
                    disk.bytes(s).unwrap()
                };
                (s, bytes)
            });
            let planted = SimDisk::with_segments(segments);
            let (ids, damage) = recover(&planted);
            assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "{damage:?}");
            assert_eq!(damage.len(), 1, "{damage:?}");
            assert!(
                damage[0].contains("valid checksum but cannot be read")
                    && damage[0].contains("records after it are kept"),
                "{damage:?}"
            );
            // A second recovery finds the same.
            assert_eq!(recover(&planted).0.len(), 40);
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_said_to_hold_no_record() {
        let (disk, mut log) = log_of(3, 10);
        log.write(&[Record::Put(put(1, 4, &[4; 100]))]).unwrap();
        let (ids, damage) = recover(&disk.after_crash(Crash::Tear {
            keep_per_mille: 600,
        }));
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert!(
            damage[0].contains("torn tail") && damage[0].contains("no intact record"),
            "{damage:?}"
        );
    }

    #[test]
    fn a_failed_sync_takes_its_batch_back_and_the_log_goes_on() {
        let (disk, mut log) = log_of(2, 10);
        log.write(&[Record::Put(put(1, 3, &[3; 10]))]).unwrap();
        disk.fail_next_sync();
        let err = log.sync().unwrap_err();
        assert!(err.to_string().contains("cut back off"), "{err}");
        assert!(log.failure().is_none());
        // The failed sync made the bytes durable (at its worst); the cut took them away.
        let (ids, _) = recover(&disk);
        assert_eq!(ids, [1, 2]);
        log.write(&[Record::Put(put(1, 4, &[4; 10]))]).unwrap();
        log.sync().unwrap();
        let (ids, damage) = recover(&disk);
        assert_eq!(ids, [1, 2, 4]);
        assert!(damage.is_empty(), "{damage:?}");
    }

    #[test]
    fn a_failed_sync_that_cannot_be_undone_stops_every_later_write() {
        let (disk, mut log) = log_of(2, 10);
        log.write(&[Record::Put(put(1, 3, &[3; 10]))]).unwrap();
        let n = disk.ops();
        // The sync fails, and so does the truncate that would undo it.
        disk.fail_at(n + 1);
        disk.fail_at(n + 2);
        let err = log.sync().unwrap_err();
        assert!(err.to_string().contains("failed too"), "{err}");
        assert!(log.failure().is_some());
        let refused = log.write(&[Record::Remove { key: 1, id: 1 }]).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("durable writes are refused until ipcd restarts: fdatasync failed"),
            "{refused}"
        );
        assert!(log.sync().is_err());
        assert!(!log.compact_step().unwrap());
    }

    /// A segment whose large messages went and small ones stayed is reclaimed all the
    /// same: live bytes are counted per message, not reckoned from the segment's mean
    /// `Put`, which kept every such segment for good.
    #[test]
    fn segments_whose_large_messages_went_are_reclaimed() {
        let disk = SimDisk::default();
        let options = LogOptions {
            segment_bytes: 64 << 10,
            max_record: 1 << 20,
        };
        let (mut log, _) = Log::open(disk.clone(), options).unwrap();
        log.write(&[Record::Define(def(1, "jobs"))]).unwrap();
        let mut id = 0;
        let mut kept = 0;
        for _ in 0..400 {
            id += 1;
            log.write(&[Record::Put(put(1, id, &[7; 20_000]))]).unwrap();
            log.write(&[Record::Remove { key: 1, id }]).unwrap();
            for _ in 0..2 {
                id += 1;
                log.write(&[Record::Put(put(1, id, &[1; 10]))]).unwrap();
                kept += 1;
            }
            log.sync().unwrap();
            while log.compact_step().unwrap() {}
        }
        let (total, counted_live) = log.sizes();
        // What is really live: the small messages' records.
        let small = Record::Put(put(1, 1, &[1; 10])).encoded_len().unwrap() as u64;
        let live = kept as u64 * small;
        assert!(counted_live >= live && counted_live <= live + 8 * kept as u64);
        let segments = disk.segments().len();
        assert!(
            total <= 2 * live + 2 * options.segment_bytes,
            "{total} bytes in {segments} segments for {live} live bytes ({kept} messages)"
        );
        let (_, recovered) = Log::open(disk.after_crash(Crash::DropUnsynced), options).unwrap();
        assert_eq!(recovered.mailboxes[0].1.len(), kept);
    }

    #[test]
    fn delivery_counts_survive_the_copy_that_reclaims_their_segment() {
        let (disk, mut log) = log_of(1, 10);
        log.write(&[Record::Delivered {
            key: 1,
            id: 1,
            deliveries: 3,
        }])
        .unwrap();
        log.sync().unwrap();
        // Churn until the segment holding message 1 and its count has been reclaimed.
        let first = disk.segments()[0].0;
        let mut id = 2;
        while disk.segments()[0].0 == first {
            log.write(&[Record::Put(put(1, id, &[0; 200]))]).unwrap();
            log.write(&[Record::Remove { key: 1, id }]).unwrap();
            log.sync().unwrap();
            log.compact_step().unwrap();
            id += 1;
        }
        assert!(log.copied() > 0);
        let (_, recovered) = Log::open(disk.after_crash(Crash::DropUnsynced), OPTIONS).unwrap();
        let (_, messages) = &recovered.mailboxes[0];
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].deliveries, 3);
    }

    #[test]
    fn a_lost_mailbox_removal_leaves_one_mailbox_of_a_name() {
        let (disk, mut log) = log_of(1, 10);
        let mut encoded = BytesMut::new();
        Record::Drop { key: 1 }.encode(&mut encoded).unwrap();
        log.write(&[Record::Drop { key: 1 }]).unwrap();
        log.write(&[
            Record::Define(def(2, "jobs")),
            Record::Put(put(2, 1, &[1; 10])),
        ])
        .unwrap();
        log.sync().unwrap();
        drop(log);
        // Damage the `Drop`'s body: its fields still add up, so it is skipped alone.
        let seg = disk.segments().last().unwrap().0;
        let data = disk.bytes(seg).unwrap();
        let at = data
            .windows(encoded.len())
            .position(|w| w == &encoded[..])
            .unwrap();
        disk.corrupt(seg, at + RECORD_HEADER + 3);
        let disk = disk.after_crash(Crash::DropUnsynced);
        let (_, recovered) = Log::open(disk.clone(), OPTIONS).unwrap();
        assert_eq!(recovered.mailboxes.len(), 1);
        assert_eq!(recovered.mailboxes[0].0.key, 2);
        assert_eq!(recovered.damage.len(), 2, "{:?}", recovered.damage);
        assert!(recovered.damage[1].contains("defined again later"));
        // The older one was dropped for good: a second recovery reports nothing new.
        let (_, again) = Log::open(disk, OPTIONS).unwrap();
        assert_eq!(again.mailboxes.len(), 1);
        assert_eq!(again.damage.len(), 1, "{:?}", again.damage);
        assert!(again.damage[0].contains("fails its checksum"));
    }
}
