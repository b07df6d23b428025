//! Fuzz target `store_recovery`: recovery of the durable log (`ipcd::fuzzing::recover`,
//! on the simulated disk) from segment bytes. Two kinds of input:
//!
//! - *raw*: arbitrary bytes as one to three segments (optionally behind a correct
//!   header, to get past it quickly). Nothing may panic; every message delivered must
//!   be intact — its `Put` record appears, byte for byte, in the input — and a second
//!   recovery from what the first left must deliver the same.
//! - *damaged*: a log of valid records (definitions, messages, removals, purges, drops,
//!   delivery counts) generated from the input, recovered clean, then damaged by up to
//!   three flipped bits and perhaps a cut tail, and recovered again. Every message
//!   delivered must be one that was written, intact; and nothing may go missing
//!   silently: unless damage is reported or the tail was cut, the damaged log delivers
//!   exactly what the clean one did.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use ipc_proto::{Credentials, Fsync, Headers, MailboxName, Timestamp};
use ipcd::fuzzing::{self, Limits, MailboxDef, Ownership, Record, Recovered, StoredMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut u = Unstructured::new(input);
    let Ok(damaged) = u.arbitrary::<bool>() else {
        return;
    };
    if damaged {
        let _ = check_damaged(&mut u);
    } else {
        let _ = check_raw(&mut u);
    }
});

/// Messages recovered, by mailbox key and id.
type Messages = BTreeMap<(u64, u64), StoredMessage>;

fn messages(recovered: &Recovered) -> Messages {
    let mut found = Messages::new();
    for (def, list) in &recovered.mailboxes {
        for m in list {
            assert_eq!(m.key, def.key, "a message under another mailbox");
            assert!(
                found.insert((m.key, m.id), m.clone()).is_none(),
                "delivered twice"
            );
        }
    }
    found
}

/// The `Put` record `m` was read from.
fn put_bytes(m: &StoredMessage) -> Vec<u8> {
    let m = StoredMessage {
        deliveries: 0,
        ..m.clone()
    };
    fuzzing::encode(&Record::Put(m)).expect("a recovered message encodes")
}

fn check_raw(u: &mut Unstructured<'_>) -> Result<()> {
    let count = u.int_in_range(1..=3)?;
    let mut segments = Vec::new();
    for seg in 1..=count {
        let with_header = u.arbitrary::<bool>()?;
        let mut bytes = if with_header {
            fuzzing::segment_header(seg)
        } else {
            Vec::new()
        };
        let len = u.int_in_range(0..=4096)?;
        bytes.extend_from_slice(u.bytes(len.min(u.len()))?);
        segments.push((seg, bytes));
    }
    let (first, second) = fuzzing::recover(segments.clone()).expect("recovery");
    let found = messages(&first);
    for m in found.values() {
        let written = put_bytes(m);
        assert!(
            segments
                .iter()
                .any(|(_, bytes)| bytes.windows(written.len()).any(|w| w == written)),
            "message {:?} was not in the input as delivered",
            (m.key, m.id)
        );
    }
    assert_eq!(messages(&second), found, "a second recovery differs");
    Ok(())
}

fn def(u: &mut Unstructured<'_>, key: u64, name: &str) -> Result<MailboxDef> {
    Ok(MailboxDef {
        key,
        name: MailboxName::new(name).expect("a valid name"),
        ownership: Ownership {
            owner_uid: u.arbitrary()?,
            owner_gid: u.arbitrary()?,
            creator_uid: u.arbitrary()?,
            creator_gid: u.arbitrary()?,
            mode: u.int_in_range(0..=0o777)?,
        },
        limits: Limits {
            max_msgs: u.arbitrary()?,
            max_bytes: u.arbitrary()?,
            max_msg_size: u.arbitrary()?,
        },
        fsync: match u.int_in_range(0..=2)? {
            0 => Fsync::Always,
            1 => Fsync::IntervalMs(u.arbitrary()?),
            _ => Fsync::Never,
        },
        max_deliveries: u.arbitrary()?,
        dead_letter: None,
        default_ttl: None,
        created_at: Timestamp(u.arbitrary()?),
        next_id: 1,
    })
}

fn put(u: &mut Unstructured<'_>, key: u64, id: u64) -> Result<StoredMessage> {
    let content_type = if u.arbitrary()? {
        let len = u.int_in_range(0..=40)?;
        Some(String::from_utf8_lossy(u.bytes(len.min(u.len()))?).into_owned())
    } else {
        None
    };
    let len = u.int_in_range(0..=200)?;
    Ok(StoredMessage {
        key,
        id,
        mtype: u.arbitrary()?,
        sender: Credentials {
            pid: u.arbitrary()?,
            uid: u.arbitrary()?,
            gid: u.arbitrary()?,
        },
        sent_at: Timestamp(u.arbitrary()?),
        headers: Headers {
            reply_to: if u.arbitrary()? {
                Some(MailboxName::new("answers").expect("a valid name"))
            } else {
                None
            },
            correlation_id: u.arbitrary()?,
            content_type,
            // Both kinds of put record: a message sent, and one published on a topic.
            topic: if u.arbitrary()? {
                Some(ipc_proto::Topic::new("sensors.kitchen").expect("a valid topic"))
            } else {
                None
            },
        },
        expires_at: None,
        not_before: None,
        deliveries: 0,
        payload: bytes::Bytes::copy_from_slice(u.bytes(len.min(u.len()))?),
    })
}

fn check_damaged(u: &mut Unstructured<'_>) -> Result<()> {
    // A log of valid records, split into up to three segments.
    let mut records = Vec::new();
    let mut written = BTreeMap::new();
    let mut next_key = 1;
    let mut next_id = BTreeMap::new();
    // Mailboxes alive, by key, with their names. Names come from a small pool, reused
    // only once their mailbox was dropped, as the daemon does; so a flipped bit in a
    // `Drop` can leave one name on two mailboxes, which recovery must settle.
    let mut alive: BTreeMap<u64, &str> = BTreeMap::new();
    for _ in 0..u.int_in_range(1..=40)? {
        let op = u.int_in_range(0..=9)?;
        if op == 0 || alive.is_empty() {
            let free = ["jobs", "mail", "work"]
                .into_iter()
                .find(|n| !alive.values().any(|a| a == n));
            let Some(name) = free else { continue };
            alive.insert(next_key, name);
            records.push(Record::Define(def(u, next_key, name)?));
            next_key += 1;
            continue;
        }
        let keys: Vec<u64> = alive.keys().copied().collect();
        let key = keys[u.choose_index(keys.len())?];
        let last = *next_id.get(&key).unwrap_or(&1u64);
        let record = match op {
            1..=5 => {
                let m = put(u, key, last)?;
                next_id.insert(key, last + 1);
                written.insert((key, m.id), m.clone());
                Record::Put(m)
            }
            6 => Record::Remove {
                key,
                id: u.int_in_range(1..=last)?,
            },
            7 => Record::Delivered {
                key,
                id: u.int_in_range(1..=last)?,
                deliveries: u.int_in_range(1..=9)?,
            },
            8 => Record::Purge {
                key,
                below: u.int_in_range(1..=last)?,
            },
            _ => {
                alive.remove(&key);
                Record::Drop { key }
            }
        };
        records.push(record);
    }
    let mut segments: Vec<(u64, Vec<u8>)> = vec![(1, fuzzing::segment_header(1))];
    for record in &records {
        if u.ratio(1, 16)? && segments.len() < 3 {
            let seg = segments.len() as u64 + 1;
            segments.push((seg, fuzzing::segment_header(seg)));
        }
        let bytes = fuzzing::encode(record).expect("a generated record encodes");
        segments
            .last_mut()
            .expect("a segment")
            .1
            .extend_from_slice(&bytes);
    }
    let (clean, _) = fuzzing::recover(segments.clone()).expect("recovery of a clean log");
    assert!(
        clean.damage.is_empty(),
        "a clean log has damage: {:?}",
        clean.damage
    );
    let clean = messages(&clean);

    // Up to three flipped bits anywhere, and perhaps a cut tail.
    for _ in 0..u.int_in_range(0..=3)? {
        let which = u.choose_index(segments.len())?;
        let bytes = &mut segments[which].1;
        let at = u.choose_index(bytes.len())?;
        bytes[at] ^= 1 << u.int_in_range(0..=7)?;
    }
    let cut = u.arbitrary::<bool>()?;
    if cut {
        let last = &mut segments.last_mut().expect("a segment").1;
        let keep = u.int_in_range(0..=last.len())?;
        last.truncate(keep);
    }
    let (first, second) = fuzzing::recover(segments).expect("recovery of a damaged log");
    let found = messages(&first);
    for (id, m) in &found {
        let sent = written
            .get(id)
            .expect("only written messages are delivered");
        let as_found = StoredMessage {
            deliveries: 0,
            ..m.clone()
        };
        assert_eq!(&as_found, sent, "{id:?} delivered damaged");
    }
    if first.damage.is_empty() && !cut {
        assert_eq!(found, clean, "damage went unreported");
    }
    if first.damage.is_empty() {
        for id in clean.keys() {
            assert!(
                found.contains_key(id) || cut,
                "{id:?} went missing silently"
            );
        }
    }
    assert_eq!(messages(&second), found, "a second recovery differs");
    Ok(())
}
