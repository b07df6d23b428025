//! The durable store against bad input and damaged segments, with the real `ipcd` binary
//! killed with SIGKILL (SPEC §6): a send too long for the store's format fails alone and
//! harms nothing stored before or after it; a record planted or damaged in the middle of
//! a segment costs only itself, and the daemon's log names it.

use std::path::{Path, PathBuf};
use std::process::Output;

use ipcd_tests::{DaemonProcess, ipcctl};

/// Runs `ipcctl` against `daemon`.
fn run(daemon: &DaemonProcess, args: &[&str]) -> Output {
    ipcctl(&daemon.socket)
        .args(args)
        .output()
        .expect("run ipcctl")
}

/// Runs `ipcctl` against `daemon` and insists that it succeeds.
fn ok(daemon: &DaemonProcess, args: &[&str]) -> String {
    let out = run(daemon, args);
    assert!(
        out.status.success(),
        "ipcctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Every message of `mailbox`, taken without waiting, one payload a line.
fn drain(daemon: &DaemonProcess, mailbox: &str) -> Vec<String> {
    let out = run(daemon, &["recv", mailbox, "--count", "100", "--nowait"]);
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The head segment (the newest) of the log in `dir`.
fn head_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("state/log"))
        .expect("the log directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

/// The records of a segment: `(offset, length)` of each, after the 16-byte header of
/// magic and segment number; each is `len: u32 LE | crc32: u32 LE | body[len]`.
fn records(segment: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&segment[..8], b"IPCDLOG1");
    let mut at = 16;
    let mut found = Vec::new();
    while at < segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        found.push((at, 8 + len));
        at += 8 + len;
    }
    assert_eq!(at, segment.len(), "the segment ends on a record boundary");
    found
}

/// CRC-32 (IEEE), as the store checksums record bodies.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A daemon in `dir` with durable mailbox `dur` holding `m1` … `m{count}`, then killed.
fn filled_then_killed(dir: &Path, count: usize) {
    let mut daemon = DaemonProcess::spawn_in(dir, &[]);
    ok(&daemon, &["create", "dur", "--durable"]);
    for i in 1..=count {
        ok(&daemon, &["send", "dur", &format!("m{i}")]);
    }
    daemon.kill();
}

/// Where the `Put` of the message with `payload` lies in `segment` (a `Put` body ends
/// with its payload).
fn put_of(segment: &[u8], payload: &[u8]) -> (usize, usize) {
    records(segment)
        .into_iter()
        .find(|&(at, len)| segment[at..at + len].ends_with(payload))
        .expect("the message's record")
}

#[test]
fn an_overlong_content_type_fails_alone_and_everything_around_it_survives_kill_9() {
    let dir = ipcd_tests::tempdir();
    let mut daemon = DaemonProcess::spawn_in(dir.path(), &[]);
    ok(&daemon, &["create", "dur", "--durable"]);
    ok(&daemon, &["create", "doomed", "--durable"]);
    ok(&daemon, &["send", "dur", "before"]);
    let content_type = "a".repeat(70_000);
    let evil = run(
        &daemon,
        &["send", "dur", "evil", "--content-type", &content_type],
    );
    let stderr = String::from_utf8_lossy(&evil.stderr);
    assert!(!evil.status.success(), "the overlong send succeeded");
    assert!(
        stderr.contains("content_type"),
        "the error does not name content_type: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for i in 1..=3 {
        ok(&daemon, &["send", "dur", &format!("after{i}")]);
    }
    ok(&daemon, &["create", "later", "--durable"]);
    ok(&daemon, &["rm", "doomed"]);
    daemon.kill();

    let daemon = DaemonProcess::spawn_in(dir.path(), &[]);
    assert_eq!(
        drain(&daemon, "dur"),
        ["before", "after1", "after2", "after3"]
    );
    ok(&daemon, &["stat", "later"]);
    let gone = run(&daemon, &["stat", "doomed"]);
    assert_eq!(gone.status.code(), Some(66), "a removed mailbox came back");
    let damage = daemon.log_lines("durable log:");
    assert!(damage.is_empty(), "recovery found damage: {damage:?}");
}

#[test]
fn a_checksummed_record_that_does_not_read_costs_nothing_around_it() {
    let dir = ipcd_tests::tempdir();
    filled_then_killed(dir.path(), 6);
    // Plant, between m3 and m4, a record whose checksum holds but whose kind no ipcd
    // knows.
    let path = head_segment(dir.path());
    let mut segment = std::fs::read(&path).unwrap();
    let (at, _) = put_of(&segment, b"m4");
    let body = [0xee, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut planted = (body.len() as u32).to_le_bytes().to_vec();
    planted.extend_from_slice(&crc32(&body).to_le_bytes());
    planted.extend_from_slice(&body);
    segment.splice(at..at, planted);
    std::fs::write(&path, &segment).unwrap();

    let daemon = DaemonProcess::spawn_in(dir.path(), &[]);
    assert_eq!(drain(&daemon, "dur"), ["m1", "m2", "m3", "m4", "m5", "m6"]);
    let damage = daemon.log_lines("durable log:");
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(
        damage[0].contains(&format!("offset {at}"))
            && damage[0].contains("valid checksum but cannot be read")
            && damage[0].contains("unknown kind 238"),
        "{damage:?}"
    );
}

#[test]
fn a_flipped_bit_in_synced_data_loses_only_the_message_it_hit() {
    let dir = ipcd_tests::tempdir();
    filled_then_killed(dir.path(), 6);
    let path = head_segment(dir.path());
    let mut segment = std::fs::read(&path).unwrap();
    let (at, len) = put_of(&segment, b"m3");
    // The last payload byte: "m3" becomes "m2", which only the checksum can tell.
    segment[at + len - 1] ^= 0x01;
    std::fs::write(&path, &segment).unwrap();

    let daemon = DaemonProcess::spawn_in(dir.path(), &[]);
    assert_eq!(drain(&daemon, "dur"), ["m1", "m2", "m4", "m5", "m6"]);
    let damage = daemon.log_lines("durable log:");
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(
        damage[0].contains("fails its checksum")
            && damage[0].contains("message 3 of mailbox dur, which is lost"),
        "{damage:?}"
    );
}
