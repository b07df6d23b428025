//! Hostile local users: what one unprivileged uid (bob) can try against another (alice)
//! and against the daemon, each as real uids through `setpriv`, each asserting the
//! refusal or bound while the victim's own operations keep succeeding. Needs root; without
//! it the tests say so and pass without checking.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Output;

use ipc_proto::{FrameKind, Hello, PROTOCOL_VERSION, Request, codec};
use ipcd_tests::{DaemonProcess, Principal, TestDaemon, connect_as, ipcctl, ipcctl_as, is_root};
use serde_json::Value;

const ALICE: Principal<'static> = Principal::new(63001, 63001);
const BOB: Principal<'static> = Principal::new(63002, 63002);
/// A group alice is in (as a supplementary group) and bob is not.
const ALICE_TEAM: u32 = 63100;
const ALICE_IN_TEAM: Principal<'static> = Principal {
    uid: 63001,
    gid: 63001,
    groups: &[ALICE_TEAM],
};

fn skip() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root to run commands as other uids");
        return true;
    }
    false
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn ok(out: Output) -> String {
    assert_eq!(code(&out), 0, "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: &Output, exit: i32, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(out), exit, "{out:?}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

fn stat(daemon: &TestDaemon, name: &str) -> Value {
    let out = ipcctl(daemon.socket())
        .args(["--json", "stat", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Row 1: a dead-letter route set before its target existed (or before the target's
/// mode changed) delivers only if the route's owner may write to the target now.
#[test]
fn a_dead_letter_route_cannot_write_where_its_owner_may_not() {
    if skip() {
        return;
    }
    let daemon = TestDaemon::start();
    // Bob routes his dead letters to a name alice has not created yet.
    ok(ipcctl_as(
        &daemon,
        BOB,
        &[
            "create",
            "bob.src",
            "--dead-letter",
            "alice.private",
            "--max-deliveries",
            "1",
        ],
    ));
    ok(ipcctl_as(
        &daemon,
        ALICE,
        &["create", "alice.private", "--mode", "600"],
    ));
    // Directly, bob may not send there.
    refused(
        &ipcctl_as(&daemon, BOB, &["send", "alice.private", "direct"]),
        77,
        "permission denied",
    );
    dead_letter_one(&daemon, "sneaky");
    // The route is checked when the letter is delivered: it is dropped and counted.
    let src = wait_for(&daemon, "bob.src", |v| v["dropped"] == 1);
    assert_eq!(src["dead_lettered"], 0, "{src}");
    assert_eq!(stat(&daemon, "alice.private")["messages"], 0);
    // Alice's own work goes on.
    ok(ipcctl_as(
        &daemon,
        ALICE,
        &["send", "alice.private", "mine"],
    ));
    assert_eq!(
        ok(ipcctl_as(
            &daemon,
            ALICE,
            &["recv", "alice.private", "--raw", "--nowait"]
        )),
        "mine"
    );

    // A target that lets the route's owner write receives the letter.
    ok(ipcctl_as(
        &daemon,
        ALICE,
        &["set", "alice.private", "--mode", "622"],
    ));
    dead_letter_one(&daemon, "allowed");
    wait_for(&daemon, "alice.private", |v| v["messages"] == 1);
    // And once alice closes it again, the next one is dropped.
    ok(ipcctl_as(
        &daemon,
        ALICE,
        &["set", "alice.private", "--mode", "600"],
    ));
    dead_letter_one(&daemon, "after chmod");
    wait_for(&daemon, "bob.src", |v| v["dropped"] == 2);
    assert_eq!(stat(&daemon, "alice.private")["messages"], 1);
}

/// Bob sends `payload` to bob.src, receives it under a lease and nacks it: past its
/// max_deliveries of 1, it goes to bob.src's dead-letter mailbox by the route.
fn dead_letter_one(daemon: &TestDaemon, payload: &str) {
    ok(ipcctl_as(daemon, BOB, &["send", "bob.src", payload]));
    let leased: Value = serde_json::from_str(&ok(ipcctl_as(
        daemon,
        BOB,
        &["--json", "recv", "bob.src", "--ack"],
    )))
    .unwrap();
    let id = leased["id"].as_u64().unwrap().to_string();
    ok(ipcctl_as(daemon, BOB, &["nack", "bob.src", &id]));
}

/// Polls `stat` (a round trip each, no sleeping) until `done` holds.
fn wait_for(daemon: &TestDaemon, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100_000 {
        let v = stat(daemon, name);
        if done(&v) {
            return v;
        }
        std::thread::yield_now();
    }
    panic!(
        "{name} never reached the expected state: {}",
        stat(daemon, name)
    );
}

/// Row 7 and item 6: `create --exist-ok` succeeds only on the caller's own mailbox of the
/// asked kind, and says whether it created it.
#[test]
fn create_exist_ok_is_honest_about_whose_mailbox_it_is() {
    if skip() {
        return;
    }
    let daemon = TestDaemon::start();
    ok(ipcctl_as(
        &daemon,
        BOB,
        &["create", "jobs", "--mode", "666"],
    ));
    let out = ipcctl_as(
        &daemon,
        ALICE,
        &["create", "jobs", "--mode", "600", "--exist-ok"],
    );
    let stderr = refused(&out, 1, "owned by uid 63002");
    assert!(stderr.contains("mode is 0666, not 0600"), "{stderr}");
    // Bob's own, asked as it is: fine, and not created anew.
    let again: Value = serde_json::from_str(&ok(ipcctl_as(
        &daemon,
        BOB,
        &["--json", "create", "jobs", "--mode", "666", "--exist-ok"],
    )))
    .unwrap();
    assert_eq!(again["created"], false, "{again}");
    // Of another kind or other limits: refused, naming what differs.
    refused(
        &ipcctl_as(&daemon, BOB, &["create", "jobs", "--durable", "--exist-ok"]),
        1,
        "memory mailbox, not durable",
    );
    refused(
        &ipcctl_as(
            &daemon,
            BOB,
            &["create", "jobs", "--max-msgs", "5", "--exist-ok"],
        ),
        1,
        "max_msgs is 100000, not 5",
    );
    let fresh: Value = serde_json::from_str(&ok(ipcctl_as(
        &daemon,
        ALICE,
        &["--json", "create", "alice.jobs", "--exist-ok"],
    )))
    .unwrap();
    assert_eq!(fresh["created"], true, "{fresh}");
}

/// Row 8 and item 7: an owner may give the group only to a group it is in; the uid stays
/// root's to give.
#[test]
fn set_owner_gives_the_group_only_to_a_group_the_caller_is_in() {
    if skip() {
        return;
    }
    let daemon = TestDaemon::start();
    ok(ipcctl_as(
        &daemon,
        ALICE,
        &["create", "shared", "--mode", "660"],
    ));
    refused(
        &ipcctl_as(&daemon, ALICE, &["set", "shared", "--owner", ":1002"]),
        77,
        "only to a group it is in, not gid 1002",
    );
    assert_eq!(stat(&daemon, "shared")["owner_gid"], ALICE.gid);
    // A group she is in, as a supplementary group: allowed.
    ok(ipcctl_as(
        &daemon,
        ALICE_IN_TEAM,
        &["set", "shared", "--owner", &format!(":{ALICE_TEAM}")],
    ));
    assert_eq!(stat(&daemon, "shared")["owner_gid"], ALICE_TEAM);
    refused(
        &ipcctl_as(&daemon, ALICE, &["set", "shared", "--owner", "63002"]),
        77,
        "give away",
    );
    // Root may do either.
    ok(ipcctl(daemon.socket())
        .args(["set", "shared", "--owner", "63002:1002"])
        .output()
        .unwrap());
    assert_eq!(stat(&daemon, "shared")["owner_uid"], BOB.uid);
}

/// Item 8: requests that could never be satisfied are refused with exit 65 instead of
/// waiting for ever or being read as something else.
#[test]
fn receives_that_can_never_match_are_refused_at_once() {
    let daemon = TestDaemon::start();
    let run = |args: &[&str]| ipcctl(daemon.socket()).args(args).output().unwrap();
    assert!(run(&["create", "q"]).status.success());
    for (args, needle) in [
        (
            &["recv", "q", "--type", "0", "--except"][..],
            "--except needs a positive type, not 0",
        ),
        (
            &["recv", "q", "--type", "-3", "--except"][..],
            "--except needs a positive type, not -3",
        ),
    ] {
        refused(&run(args), 65, needle);
    }
    // Through the library, the selectors the CLI cannot spell.
    let mut c = daemon.client();
    for selector in [
        ipc_client::Selector::Type(0),
        ipc_client::Selector::Type(-1),
        ipc_client::Selector::AtMost(0),
        ipc_client::Selector::Except(0),
    ] {
        let options = ipc_client::RecvOptions {
            selector,
            ..ipc_client::RecvOptions::default()
        };
        let e = c.recv("q", &options).expect_err("refused");
        assert_eq!(e.exit_code(), 65u8, "{selector:?}: {e}");
    }
}

/// Item 8: a request body with bytes after it, and a raw request with a bad mailbox name,
/// are refused with what is wrong; the connection stays usable.
#[test]
fn malformed_request_bodies_are_refused_with_the_reason() {
    use ipc_proto::{FrameDecoder, Response};

    let daemon = TestDaemon::start();
    let mut s = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
    let mut out = bytes::BytesMut::new();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client_name: "raw".into(),
    };
    codec::encode_frame(FrameKind::Hello, 0, &hello, u32::MAX, &mut out).unwrap();
    // A Stat request with three stray bytes after its body.
    let stat = Request::Stat {
        mailbox: "q".parse().unwrap(),
    };
    let mut body = bytes::BytesMut::new();
    codec::encode_frame(FrameKind::Request, 1, &stat, u32::MAX, &mut body).unwrap();
    let mut frame = body.to_vec();
    frame.extend_from_slice(b"xyz");
    let len = u32::from_le_bytes(frame[0..4].try_into().unwrap()) + 3;
    frame[0..4].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame);
    // A Stat of "../etc": the name is checked as it is decoded.
    let mut bad = bytes::BytesMut::new();
    codec::encode_frame(FrameKind::Request, 2, &(3u8, "../etc"), u32::MAX, &mut bad).unwrap();
    out.extend_from_slice(&bad);
    s.write_all(&out).unwrap();

    let mut decoder = FrameDecoder::new(u32::MAX);
    let mut buf = bytes::BytesMut::new();
    let mut replies = Vec::new();
    while replies.len() < 3 {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            replies.push(frame);
        }
    }
    let answer =
        |i: usize| -> Response { codec::decode_body(&replies[i], FrameKind::Response).unwrap() };
    let Response::Error(trailing) = answer(1) else {
        panic!("{:?}", answer(1))
    };
    assert_eq!(trailing.code, ipc_proto::ErrorCode::BadRequest);
    assert!(
        trailing.message.contains("3 bytes after its end"),
        "{trailing:?}"
    );
    let Response::Error(name) = answer(2) else {
        panic!("{:?}", answer(2))
    };
    assert_eq!(name.code, ipc_proto::ErrorCode::InvalidName, "{name:?}");
    assert!(name.message.contains("may not start with"), "{name:?}");
}

/// Bob's connections that never send their hello, past his `handshakes` quota, are closed
/// at once with the reason; a partial hello cannot make the daemon buffer more than a
/// hello's worth; alice's commands keep working; the daemon stays small.
#[test]
fn row_3_silent_connections_are_bounded_before_their_hello() {
    if skip() {
        return;
    }
    // A handshake timeout longer than the test, so that no place frees up meanwhile.
    let dir = ipcd_tests::tempdir();
    let daemon =
        DaemonProcess::spawn_with_config(dir.path(), "[connections]\nhandshake_timeout = \"1h\"\n");
    let idle_kib = daemon.peak_rss_kib();
    // Partial hellos: a header that promises 60 MiB is refused from the header alone.
    let socket = daemon.socket.clone();
    let partial: Vec<UnixStream> = connect_as(BOB, move || {
        (0..8)
            .map(|_| UnixStream::connect(&socket).expect("connect"))
            .collect()
    });
    for mut stream in partial {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&(60u32 << 20).to_le_bytes());
        header[4] = FrameKind::Hello as u8;
        let _ = stream.write_all(&header);
        let reply = read_to_end(&stream);
        assert!(
            String::from_utf8_lossy(&reply).contains("4096"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    let socket = daemon.socket.clone();
    let silent: Vec<UnixStream> = connect_as(BOB, move || {
        (0..2_000)
            .map(|_| UnixStream::connect(&socket).expect("connect"))
            .collect()
    });
    // Connections are accepted in order: the first 64 hold bob's places, every later one
    // is told why and closed at once, without waiting for any timeout.
    for stream in &silent[64..] {
        let reply = read_to_end(stream);
        assert!(
            String::from_utf8_lossy(&reply).contains("handshakes quota of 64"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    // Meanwhile alice works as usual.
    ok(ipcctl_as(&daemon, ALICE, &["create", "alice.q"]));
    ok(ipcctl_as(&daemon, ALICE, &["send", "alice.q", "hi"]));
    assert_eq!(
        ok(ipcctl_as(&daemon, ALICE, &["recv", "alice.q", "--raw"])),
        "hi"
    );
    ok(ipcctl_as(&daemon, ALICE, &["status"]));
    let peak = daemon.peak_rss_kib();
    assert!(
        peak < idle_kib + 64 * 1024,
        "peak RSS {peak} KiB from {idle_kib} KiB idle"
    );
}

/// Every connection above the daemon's `max_handshakes`, of any uid (root's included),
/// is closed at once.
#[test]
fn connections_past_max_handshakes_are_closed_at_once() {
    let dir = ipcd_tests::tempdir();
    let daemon = DaemonProcess::spawn_with_config(
        dir.path(),
        "[connections]\nmax_handshakes = 32\nhandshake_timeout = \"1h\"\n",
    );
    let silent: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&daemon.socket).expect("connect"))
        .collect();
    for stream in &silent[32..] {
        let reply = read_to_end(stream);
        assert!(
            String::from_utf8_lossy(&reply).contains("max_handshakes"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    drop(silent);
    // Once the daemon has seen the silent ones go, everyone connects again. Each try is
    // a real connection: refused ones say why, and the closes are seen in order.
    let mut c = (0..100_000)
        .find_map(
            |_| match ipc_client::BlockingClient::connect_to(&daemon.socket) {
                Ok(c) => Some(c),
                Err(ipc_client::Error::QuotaExceeded(_)) => None,
                Err(e) => panic!("{e}"),
            },
        )
        .expect("the places free up");
    c.status().unwrap();
}

/// Reads until the daemon closes the connection; a read timeout is only a safety net
/// against a hang, not a measurement.
fn read_to_end(stream: &UnixStream) -> Vec<u8> {
    let mut stream = stream.try_clone().unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading until the daemon closed: {e}"),
    }
    all
}

/// A hello whose client_name is 40 MiB is refused from its header; one of 65 bytes is
/// refused naming the bound; 64 is fine.
#[test]
fn row_4_client_names_are_bounded() {
    let daemon = DaemonProcess::spawn();
    let idle_kib = daemon.peak_rss_kib();
    for _ in 0..5 {
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client_name: "n".repeat(40 << 20),
        };
        let mut frame = bytes::BytesMut::new();
        codec::encode_frame(FrameKind::Hello, 0, &hello, u32::MAX, &mut frame).unwrap();
        // The daemon closes after the header; what it did not read is its to drop.
        let _ = stream.write_all(&frame);
        let reply = read_to_end(&stream);
        assert!(
            String::from_utf8_lossy(&reply).contains("4096"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    let peak = daemon.peak_rss_kib();
    assert!(
        peak < idle_kib + 32 * 1024,
        "peak RSS {peak} KiB from {idle_kib} KiB idle"
    );
    let e = ipc_client::BlockingClient::connect_named(&daemon.socket, &"x".repeat(65))
        .expect_err("a 65-byte name is refused");
    assert!(
        e.to_string()
            .contains("client_name is 65 bytes long; at most 64"),
        "{e}"
    );
    ipc_client::BlockingClient::connect_named(&daemon.socket, &"x".repeat(64))
        .expect("64 bytes is fine");
    others_keep_working(&daemon);
}

/// Another uid's commands (alice's, when there are other uids to be) still succeed.
fn others_keep_working(daemon: &DaemonProcess) {
    if is_root() {
        ok(ipcctl_as(daemon, ALICE, &["status"]));
    } else {
        daemon.client().status().expect("status");
    }
}

/// A client_name with a newline, a forged timestamp and an escape sequence reaches the
/// log escaped, on one line.
#[test]
fn row_5_client_names_cannot_forge_log_lines() {
    let daemon = DaemonProcess::spawn();
    let name = "evil\n2026-01-01T00:00:00Z INFO forged\x1b[31m";
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    let mut frames = bytes::BytesMut::new();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client_name: name.into(),
    };
    codec::encode_frame(FrameKind::Hello, 0, &hello, u32::MAX, &mut frames).unwrap();
    // Request id 0 is a protocol violation: the close is logged with the client's name.
    codec::encode_frame(
        FrameKind::Request,
        0,
        &Request::Status,
        u32::MAX,
        &mut frames,
    )
    .unwrap();
    stream.write_all(&frames).unwrap();
    read_to_end(&stream);
    let line = daemon
        .wait_for_log(
            "request id 0 is reserved",
            std::time::Duration::from_secs(60),
        )
        .expect("the close is logged");
    assert!(
        line.contains(r"evil\n2026-01-01T00:00:00Z INFO forged\u{1b}[31m"),
        "{line}"
    );
    assert!(
        daemon
            .log_lines("forged")
            .iter()
            .all(|l| !l.contains("\x1b[31m")),
        "no raw escape sequence"
    );
    assert!(
        daemon
            .log_lines("")
            .iter()
            .all(|l| !l.starts_with("2026-01-01")),
        "no forged line"
    );
    others_keep_working(&daemon);
}

/// 50,000 messages expiring into a dead-letter mailbox that does not exist, and 200
/// connections ending on bad frames, make a handful of log lines, not thousands.
#[test]
fn row_6_the_log_cannot_be_flooded() {
    let daemon = DaemonProcess::spawn();
    let socket = daemon.socket.to_str().unwrap().to_owned();
    let run = |args: &[&str], input: &[u8]| {
        let mut child = ipcctl(std::path::Path::new(&socket))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    run(&["create", "spam", "--dead-letter", "nowhere"], b"");
    let lines: String = (0..50_000).map(|i| format!("{i}\n")).collect();
    run(
        &["send", "spam", "--lines", "--ttl", "1ms"],
        lines.as_bytes(),
    );
    let mut c = daemon.client();
    loop {
        let info = c.stat("spam").unwrap();
        if info.dropped == 50_000 {
            break;
        }
        assert!(info.expired <= 50_000);
        std::thread::yield_now();
    }
    daemon
        .wait_for_log("dead letter", std::time::Duration::from_secs(60))
        .expect("the first is logged");
    let dead = daemon.log_lines("dead letter");
    assert!(dead.len() <= 3, "{} lines: {dead:?}", dead.len());
    for _ in 0..200 {
        let mut s = UnixStream::connect(&daemon.socket).unwrap();
        // A frame of an unknown kind: the stream cannot be read further.
        let _ = s.write_all(&[0, 0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        read_to_end(&s);
    }
    daemon
        .wait_for_log("bad frame", std::time::Duration::from_secs(60))
        .expect("the first is logged");
    let bad = daemon.log_lines("bad frame");
    assert!((1..=3).contains(&bad.len()), "{} lines: {bad:?}", bad.len());
    others_keep_working(&daemon);
}
