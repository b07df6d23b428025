//! A small public surface for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off
//! in every normal build): the durable store's record codec, and recovery of a log from
//! given segment bytes on the simulated disk. Nothing else of the store is public.

use std::io;

use bytes::{Bytes, BytesMut};

use super::disk::sim::SimDisk;
pub use super::log::Recovered;
use super::log::{Log, LogOptions, MAGIC};
pub use super::record::{
    EncodeError, Framed, MailboxDef, Ownership, RECORD_HEADER, Record, RecordError, StoredMessage,
    body_shape, frame,
};
pub use crate::config::Limits;

/// The log's tuning while fuzzing: segments and records of a size fuzz inputs reach.
const OPTIONS: LogOptions = LogOptions {
    segment_bytes: 1 << 16,
    max_record: 1 << 20,
};

/// `record`, framed and checksummed as the log writes it.
pub fn encode(record: &Record) -> Result<Vec<u8>, EncodeError> {
    let mut out = BytesMut::new();
    record.encode(&mut out)?;
    Ok(out.to_vec())
}

/// Reads the record at the start of `bytes`, as the log does.
pub fn decode(bytes: &[u8], max_body: u32) -> Result<(Record, usize), RecordError> {
    Record::decode(&Bytes::copy_from_slice(bytes), max_body)
}

/// The header segment `seg` starts with.
pub fn segment_header(seg: u64) -> Vec<u8> {
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&seg.to_le_bytes());
    header
}

/// Recovers a log made of `segments` (number and bytes, all durable), then recovers
/// again from what the first recovery left on the disk; returns both.
pub fn recover(segments: Vec<(u64, Vec<u8>)>) -> io::Result<(Recovered, Recovered)> {
    let disk = SimDisk::with_segments(segments);
    let (log, first) = Log::open(disk.clone(), OPTIONS)?;
    drop(log);
    let (_, second) = Log::open(disk, OPTIONS)?;
    Ok((first, second))
}
