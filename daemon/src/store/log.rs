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
//!   has been copied to the head *and synced*. A copy is a second `Put` of the same id;
//!   recovery keeps one.
//! - On recovery a record that fails its checksum or is cut short ends its segment: at
//!   the head that is a torn write, cut off and logged; anywhere else it is damage, also
//!   logged, and the records after it in that segment are lost.

use std::collections::{BTreeMap, HashMap};
use std::io;

use bytes::{Bytes, BytesMut};

use super::disk::Disk;
use super::record::{MailboxDef, Record, StoredMessage};

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"IPCDLOG1";

/// Where a live message's `Put` lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seg: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    len: u64,
    /// Live messages whose newest `Put` is in this segment, and their record bytes.
    live: u64,
    live_bytes: u64,
}

/// Tuning of the log.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// A new segment is started once the head would pass this size.
    pub segment_bytes: u64,
    /// Largest record body accepted when reading.
    pub max_record: u32,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Each durable mailbox, with its live messages in id order.
    pub mailboxes: Vec<(MailboxDef, Vec<StoredMessage>)>,
    /// The next unused mailbox key.
    pub next_key: u64,
    /// One line per damage found and cut, for the log.
    pub damage: Vec<String>,
    pub records: u64,
    pub segments: u64,
}

/// What the log holds, as far as reclaiming space needs to know: the segments, the
/// current definitions and where each live message's `Put` is.
#[derive(Debug, Default)]
struct Index {
    segments: BTreeMap<u64, Segment>,
    defs: HashMap<u64, MailboxDef>,
    live: HashMap<u64, BTreeMap<u64, Loc>>,
}

/// The log itself.
#[derive(Debug)]
pub struct Log<D: Disk> {
    disk: D,
    options: LogOptions,
    index: Index,
    head: u64,
    /// Whether the head holds appends not yet synced.
    dirty: bool,
    buf: BytesMut,
    /// Live messages copied forward so far to reclaim segments.
    copied: u64,
}

impl<D: Disk> Log<D> {
    /// Opens the log on `disk`, replaying what it holds, and starts a fresh head segment.
    pub fn open(mut disk: D, options: LogOptions) -> io::Result<(Self, Recovered)> {
        let mut index = Index::default();
        let mut recovered = Recovered::default();
        let mut payloads: HashMap<u64, BTreeMap<u64, StoredMessage>> = HashMap::new();
        let mut max_key = 0;
        let segs = disk.list()?;
        let last = segs.last().copied();
        for seg in segs {
            let data = Bytes::from(disk.read(seg)?);
            recovered.segments += 1;
            let mut offset = MAGIC.len() + 8;
            let header_ok = data.len() >= offset
                && &data[..MAGIC.len()] == MAGIC
                && data[MAGIC.len()..offset] == seg.to_le_bytes();
            if !header_ok {
                recovered.damage.push(format!(
                    "segment {seg}: missing or bad header ({} bytes); ignored",
                    data.len()
                ));
                if Some(seg) == last {
                    // A head that was being created when the daemon died.
                    disk.remove(seg)?;
                    disk.sync_dir()?;
                } else {
                    index.segments.insert(seg, Segment::default());
                }
                continue;
            }
            while offset < data.len() {
                match Record::decode(&data.slice(offset..), options.max_record) {
                    Ok((record, used)) => {
                        recovered.records += 1;
                        max_key = max_key.max(record.key());
                        let loc = Loc {
                            seg,
                            offset: offset as u64,
                            len: used as u32,
                        };
                        index.apply(&record, loc);
                        match record {
                            Record::Put(m) => {
                                let m = StoredMessage {
                                    // Copied out, so one small message does not pin a
                                    // whole segment's buffer.
                                    payload: Bytes::copy_from_slice(&m.payload),
                                    ..m
                                };
                                payloads.entry(m.key).or_default().insert(m.id, m);
                            }
                            Record::Remove { key, id } => {
                                if let Some(p) = payloads.get_mut(&key) {
                                    p.remove(&id);
                                }
                            }
                            Record::Purge { key, below } => {
                                if let Some(p) = payloads.get_mut(&key) {
                                    *p = p.split_off(&below);
                                }
                            }
                            Record::Drop { key } => {
                                payloads.remove(&key);
                            }
                            Record::Delivered {
                                key,
                                id,
                                deliveries,
                            } => {
                                if let Some(m) = payloads.get_mut(&key).and_then(|p| p.get_mut(&id))
                                {
                                    m.deliveries = m.deliveries.max(deliveries);
                                }
                            }
                            Record::Define(_) => {}
                        }
                        offset += used;
                    }
                    Err(e) => {
                        let lost = data.len() - offset;
                        if Some(seg) == last {
                            recovered.damage.push(format!(
                                "segment {seg}: torn or corrupt tail at offset {offset} ({e}); \
                                 cut {lost} bytes that were never acknowledged as synced"
                            ));
                            disk.truncate(seg, offset as u64)?;
                            disk.sync(seg)?;
                        } else {
                            recovered.damage.push(format!(
                                "segment {seg}: damaged record at offset {offset} ({e}); \
                                 the {lost} bytes after it in this segment are lost"
                            ));
                        }
                        break;
                    }
                }
            }
            index.segments.entry(seg).or_default().len = offset.min(data.len()) as u64;
        }
        recovered.next_key = max_key + 1;
        // Messages of mailboxes that no longer exist are gone with them.
        let mut mailboxes: Vec<_> = index.defs.values().cloned().collect();
        mailboxes.sort_by_key(|d| d.key);
        recovered.mailboxes = mailboxes
            .into_iter()
            .map(|mut def| {
                let messages: Vec<_> = payloads
                    .remove(&def.key)
                    .map(|p| p.into_values().collect())
                    .unwrap_or_default();
                if let Some(last) = messages.last() {
                    def.next_id = def.next_id.max(last.id + 1);
                }
                (def, messages)
            })
            .collect();
        for (def, _) in &recovered.mailboxes {
            index.defs.insert(def.key, def.clone());
        }
        let next = index.segments.keys().next_back().map_or(1, |s| s + 1);
        let mut log = Log {
            disk,
            options,
            index,
            head: 0,
            dirty: false,
            buf: BytesMut::new(),
            copied: 0,
        };
        log.start_segment(next)?;
        Ok((log, recovered))
    }

    /// Appends `records` to the head (not synced). On failure nothing of them counts:
    /// the head is cut back to where it was.
    pub fn write(&mut self, records: &[Record]) -> io::Result<()> {
        self.buf.clear();
        let mut ends = Vec::with_capacity(records.len());
        for record in records {
            record.encode(&mut self.buf);
            ends.push(self.buf.len());
        }
        let head_len = self.index.segments[&self.head].len;
        if head_len + self.buf.len() as u64 > self.options.segment_bytes
            && head_len > self.header_len()
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
            // Best effort: a later recovery would cut a torn tail anyway, but appends
            // after garbage would be unreachable, so the head must end where it did.
            if let Err(cut) = self.disk.truncate(self.head, start) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e}; and cutting the failed write back failed too: {cut}"),
                ));
            }
            return Err(e);
        }
        self.dirty = true;
        let mut begin = 0;
        for (record, end) in records.iter().zip(ends) {
            let loc = Loc {
                seg: self.head,
                offset: start + begin as u64,
                len: (end - begin) as u32,
            };
            self.index.apply(record, loc);
            begin = end;
        }
        self.index
            .segments
            .get_mut(&self.head)
            .expect("head exists")
            .len = start + begin as u64;
        Ok(())
    }

    /// Makes every append so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.disk.sync(self.head)?;
            self.dirty = false;
        }
        Ok(())
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
    /// live, else by copying its live messages to the head when the log holds more than
    /// twice what is live (plus one segment). Returns whether a segment was deleted.
    pub fn compact_step(&mut self) -> io::Result<bool> {
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
            let mut copies = Vec::new();
            for messages in self.index.live.values() {
                for loc in messages.values().filter(|l| l.seg == oldest) {
                    let raw =
                        Bytes::from(self.disk.read_at(oldest, loc.offset, loc.len as usize)?);
                    let (record, _) =
                        Record::decode(&raw, self.options.max_record).map_err(|e| {
                            io::Error::other(format!("re-reading segment {oldest}: {e}"))
                        })?;
                    copies.push(record);
                }
            }
            // Copies go to the head in a fresh segment if need be, never to `oldest`.
            for chunk in copies.chunks(256) {
                self.write(chunk)?;
            }
            self.copied += copies.len() as u64;
            tracing::debug!(
                segment = oldest,
                copied = copies.len(),
                "reclaiming a durable log segment"
            );
        }
        // The copies must be durable before the originals go.
        self.sync()?;
        debug_assert_eq!(self.index.segments[&oldest].live, 0, "copied away");
        self.disk.remove(oldest)?;
        self.disk.sync_dir()?;
        self.index.segments.remove(&oldest);
        Ok(true)
    }

    fn header_len(&self) -> u64 {
        (MAGIC.len() + 8) as u64
    }

    /// Syncs the head and starts a new one.
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
        for def in &defs {
            Record::Define(def.clone()).encode(&mut buf);
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
    /// Updates the in-memory picture for one record at `loc`.
    fn apply(&mut self, record: &Record, loc: Loc) {
        match record {
            Record::Define(def) => {
                self.defs.insert(def.key, def.clone());
            }
            Record::Drop { key } => {
                self.defs.remove(key);
                for (_, old) in self.live.remove(key).unwrap_or_default() {
                    self.forget(old);
                }
            }
            Record::Put(m) => {
                if let Some(def) = self.defs.get_mut(&m.key) {
                    def.next_id = def.next_id.max(m.id + 1);
                }
                if let Some(old) = self.live.entry(m.key).or_default().insert(m.id, loc) {
                    self.forget(old);
                }
                let seg = self.segments.entry(loc.seg).or_default();
                seg.live += 1;
                seg.live_bytes += u64::from(loc.len);
            }
            Record::Remove { key, id } => {
                if let Some(old) = self.live.get_mut(key).and_then(|m| m.remove(id)) {
                    self.forget(old);
                }
            }
            // Changes no message's place or liveness.
            Record::Delivered { .. } => {}
            Record::Purge { key, below } => {
                if let Some(messages) = self.live.get_mut(key) {
                    let kept = messages.split_off(below);
                    let gone = std::mem::replace(messages, kept);
                    for (_, old) in gone {
                        self.forget(old);
                    }
                }
            }
        }
    }

    fn forget(&mut self, loc: Loc) {
        if let Some(seg) = self.segments.get_mut(&loc.seg) {
            seg.live -= 1;
            seg.live_bytes -= u64::from(loc.len);
        }
    }
}

#[cfg(test)]
mod crash_tests {
    //! Crash-point testing of the log on a simulated disk: run a workload, let the disk
    //! die at operation N, apply what a crash does to unsynced data (lose it, tear it,
    //! or flip a bit in it), recover, and check what survived against what was
    //! acknowledged. Every operation of every workload is a crash point.

    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::store::disk::sim::{Crash, SimDisk};
    use crate::store::record::tests::{def, put};

    const OPTIONS: LogOptions = LogOptions {
        segment_bytes: 2048,
        max_record: 1 << 20,
    };

    /// A small deterministic generator (xorshift64*), so every run is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// What the workload did and what the log acknowledged.
    #[derive(Default)]
    struct Model {
        attempted: HashMap<(u64, u64), Bytes>,
        acked: HashSet<(u64, u64)>,
        removal_attempted: HashSet<(u64, u64)>,
        removal_acked: HashSet<(u64, u64)>,
        /// Written since the last successful sync: puts and removals.
        unsynced_puts: Vec<(u64, u64)>,
        unsynced_removals: Vec<(u64, u64)>,
        /// Believed live (for choosing what to remove).
        live: Vec<(u64, u64)>,
        dropped: HashSet<u64>,
        unsynced_drops: Vec<u64>,
        drop_acked: HashSet<u64>,
        reclaimed: u64,
        copied: u64,
    }

    impl Model {
        fn synced(&mut self) {
            self.acked.extend(self.unsynced_puts.drain(..));
            self.removal_acked.extend(self.unsynced_removals.drain(..));
            self.drop_acked.extend(self.unsynced_drops.drain(..));
        }
    }

    /// Runs the workload for `seed` until it ends or the disk dies; returns the model.
    fn workload(disk: SimDisk, seed: u64, steps: usize) -> Model {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut m = Model::default();
        let Ok((mut log, _)) = Log::open(disk, OPTIONS) else {
            return m;
        };
        let mut next_key = 1;
        let mut next_id: HashMap<u64, u64> = HashMap::new();
        let mut keys: Vec<u64> = Vec::new();
        macro_rules! io {
            ($e:expr) => {
                if $e.is_err() {
                    return m;
                }
            };
        }
        for _ in 0..steps {
            if keys.len() < 2 {
                let key = next_key;
                next_key += 1;
                io!(log.write(&[Record::Define(def(key, &format!("box{key}")))]));
                keys.push(key);
                continue;
            }
            // Odd seeds churn: new messages are removed first, so old ones stay live in
            // old segments and reclaiming them means copying (the dangerous path).
            let churn = seed % 2 == 1;
            let (puts_below, most_per_put) = if churn { (6, 1) } else { (10, 4) };
            match rng.below(20) {
                roll if roll < puts_below => {
                    let key = keys[rng.below(keys.len() as u64) as usize];
                    let mut batch = Vec::new();
                    for _ in 0..=rng.below(most_per_put) {
                        let id = next_id.entry(key).or_insert(1);
                        let len = rng.below(300) as usize;
                        let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                        batch.push(Record::Put(put(key, *id, &payload)));
                        m.attempted.insert((key, *id), Bytes::from(payload));
                        *id += 1;
                    }
                    io!(log.write(&batch));
                    for r in &batch {
                        if let Record::Put(p) = r {
                            m.unsynced_puts.push((p.key, p.id));
                            m.live.push((p.key, p.id));
                        }
                    }
                }
                roll if roll < 14 && !m.live.is_empty() => {
                    let (key, id) = if churn {
                        m.live.pop().expect("not empty")
                    } else {
                        m.live.swap_remove(rng.below(m.live.len() as u64) as usize)
                    };
                    io!(log.write(&[Record::Remove { key, id }]));
                    m.removal_attempted.insert((key, id));
                    m.unsynced_removals.push((key, id));
                }
                14 => {
                    let key = keys[rng.below(keys.len() as u64) as usize];
                    let below = *next_id.get(&key).unwrap_or(&1);
                    io!(log.write(&[Record::Purge { key, below }]));
                    let gone: Vec<_> = m.live.iter().copied().filter(|&(k, _)| k == key).collect();
                    m.live.retain(|&(k, _)| k != key);
                    for g in gone {
                        m.removal_attempted.insert(g);
                        m.unsynced_removals.push(g);
                    }
                }
                15 => {
                    let i = rng.below(keys.len() as u64) as usize;
                    let key = keys.swap_remove(i);
                    io!(log.write(&[Record::Drop { key }]));
                    m.dropped.insert(key);
                    m.unsynced_drops.push(key);
                    let gone: Vec<_> = m
                        .attempted
                        .keys()
                        .copied()
                        .filter(|&(k, _)| k == key)
                        .collect();
                    m.live.retain(|&(k, _)| k != key);
                    for g in gone {
                        m.removal_attempted.insert(g);
                        m.unsynced_removals.push(g);
                    }
                }
                16 | 17 => match log.compact_step() {
                    Ok(true) => m.reclaimed += 1,
                    Ok(false) => {}
                    Err(_) => return m,
                },
                _ => {}
            }
            if rng.below(3) == 0 {
                io!(log.sync());
                m.synced();
            }
        }
        io!(log.sync());
        m.synced();
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

    /// Recovers `disk` and checks it against `m`; returns how many messages survived.
    fn check(disk: SimDisk, m: &Model, what: &str) -> usize {
        let (mut log, recovered) = Log::open(disk.clone(), OPTIONS)
            .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
        let mut found = HashSet::new();
        for (def, messages) in &recovered.mailboxes {
            assert!(
                !m.drop_acked.contains(&def.key),
                "{what}: mailbox {} is back after its removal was acknowledged",
                def.key
            );
            for msg in messages {
                let id = (msg.key, msg.id);
                assert_eq!(msg.key, def.key);
                let sent = m
                    .attempted
                    .get(&id)
                    .unwrap_or_else(|| panic!("{what}: unknown message {id:?} appeared"));
                assert_eq!(&msg.payload, sent, "{what}: payload of {id:?} corrupted");
                assert!(found.insert(id), "{what}: {id:?} twice");
                assert!(
                    !m.removal_acked.contains(&id),
                    "{what}: {id:?} came back after its removal was acknowledged"
                );
            }
        }
        for id in &m.acked {
            if !m.removal_attempted.contains(id) {
                assert!(found.contains(id), "{what}: acknowledged {id:?} was lost");
            }
        }
        // The recovered log takes new writes, and a second recovery agrees with the first.
        let key = recovered.next_key;
        log.write(&[
            Record::Define(def(key, "after")),
            Record::Put(put(key, 1, b"new")),
        ])
        .unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, again) = Log::open(disk, OPTIONS).unwrap();
        let count = |r: &Recovered| r.mailboxes.iter().map(|(_, v)| v.len()).sum::<usize>();
        assert_eq!(
            count(&again),
            found.len() + 1,
            "{what}: second recovery differs"
        );
        found.len()
    }

    #[test]
    fn the_workload_without_a_crash_keeps_everything_acknowledged() {
        for seed in 0..20 {
            let disk = SimDisk::default();
            let m = workload(disk.clone(), seed, 300);
            assert!(!disk.is_dead());
            let total: usize = disk.segments().iter().map(|(_, len)| len).sum();
            let first = disk.segments()[0].0;
            let survivors = check(
                disk.after_crash(Crash::DropUnsynced),
                &m,
                &format!("seed {seed}"),
            );
            let expected = m
                .attempted
                .keys()
                .filter(|id| !m.removal_attempted.contains(id));
            assert_eq!(
                survivors,
                expected.count(),
                "seed {seed}: exactly the live ones"
            );
            // Reclaiming worked: old segments are gone, and the log holds at most about
            // twice what is live.
            assert!(first > 1, "seed {seed}: nothing was reclaimed");
            let live: usize = m
                .attempted
                .iter()
                .filter(|(id, _)| !m.removal_attempted.contains(id))
                .map(|(_, p)| p.len() + 100)
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
    #[test]
    fn every_crash_point_keeps_every_acknowledged_write() {
        let seeds: u64 = std::env::var("IPCD_CRASH_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4);
        let modes = [
            Crash::DropUnsynced,
            Crash::Tear {
                keep_per_mille: 500,
            },
            Crash::Tear {
                keep_per_mille: 999,
            },
            Crash::FlipBit { at_per_mille: 300 },
        ];
        let (mut points, mut copied) = (0, 0);
        for seed in 0..seeds {
            let probe = SimDisk::default();
            copied += workload(probe.clone(), seed, 120).copied;
            let total_ops = probe.ops();
            for n in 1..=total_ops {
                let disk = SimDisk::default();
                disk.crash_at(n);
                let m = workload(disk.clone(), seed, 120);
                for crash in modes {
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
        assert!(points >= 1000, "only {points} crash points");
    }

    #[test]
    fn a_full_disk_fails_the_write_and_harms_nothing_stored() {
        let disk = SimDisk::default();
        let (mut log, _) = Log::open(disk.clone(), OPTIONS).unwrap();
        log.write(&[
            Record::Define(def(1, "jobs")),
            Record::Put(put(1, 1, b"kept")),
        ])
        .unwrap();
        log.sync().unwrap();
        let used: usize = disk.segments().iter().map(|(_, len)| len).sum();
        disk.fill_at(used + 40);
        let big = Record::Put(put(1, 2, &[7; 200]));
        let err = log.write(std::slice::from_ref(&big)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        // The partial write was cut back; a smaller one still fits and is readable.
        log.write(&[Record::Remove { key: 1, id: 99 }]).unwrap();
        log.sync().unwrap();
        let (_, recovered) = Log::open(disk.after_crash(Crash::DropUnsynced), OPTIONS).unwrap();
        assert!(recovered.damage.is_empty(), "{:?}", recovered.damage);
        let (_, messages) = &recovered.mailboxes[0];
        assert_eq!(messages.len(), 1);
        assert_eq!(&messages[0].payload[..], b"kept");
    }

    #[test]
    fn damage_inside_an_old_segment_is_reported_and_never_delivered() {
        let disk = SimDisk::default();
        let (mut log, _) = Log::open(disk.clone(), OPTIONS).unwrap();
        log.write(&[Record::Define(def(1, "jobs"))]).unwrap();
        for id in 1..=40 {
            log.write(&[Record::Put(put(1, id, &[id as u8; 100]))])
                .unwrap();
        }
        log.sync().unwrap();
        let (first, len) = disk.segments()[0];
        disk.corrupt(first, len - 50);
        let (_, recovered) = Log::open(disk.after_crash(Crash::DropUnsynced), OPTIONS).unwrap();
        assert_eq!(recovered.damage.len(), 1, "{:?}", recovered.damage);
        assert!(
            recovered.damage[0].contains("damaged record"),
            "{:?}",
            recovered.damage
        );
        let (_, messages) = &recovered.mailboxes[0];
        assert!(messages.len() < 40);
        for m in messages {
            assert_eq!(&m.payload[..], &[m.id as u8; 100][..], "intact or absent");
        }
    }
}
