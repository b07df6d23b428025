//! `ipcctl` end to end: the real binary against a real daemon, checked the way scripts
//! use it — by stdout bytes, `--json` keys and exit codes (SPEC §9). Exit code 77 across
//! users is in `users.rs`; usage errors and an unreachable daemon in `cli/tests/binary.rs`.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Child, Output, Stdio};

use ipcd_tests::{TestDaemon, ipcctl, uid};
use serde_json::Value;

/// `ipcctl ARGS…` to completion, with `stdin` as its input if given.
fn run(daemon: &TestDaemon, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = ipcctl(daemon.socket());
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Some(input) = stdin else {
        return command.output().expect("run ipcctl");
    };
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("start ipcctl");
    let mut pipe = child.stdin.take().expect("stdin pipe");
    let input = input.to_vec();
    // A separate writer, so a large input cannot deadlock against unread output.
    let writer = std::thread::spawn(move || pipe.write_all(&input));
    let out = child.wait_with_output().expect("wait for ipcctl");
    writer.join().unwrap().expect("write ipcctl's stdin");
    out
}

/// `ipcctl ARGS…` in the background, its output captured.
fn spawn(daemon: &TestDaemon, args: &[&str]) -> Child {
    ipcctl(daemon.socket())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ipcctl")
}

/// Runs and asserts exit 0; returns stdout.
fn ok(daemon: &TestDaemon, args: &[&str]) -> Vec<u8> {
    let out = run(daemon, args, None);
    assert_eq!(code(&out), 0, "ipcctl {args:?}: {out:?}");
    out.stdout
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("ipcctl exited normally")
}

/// Asserts `out` failed with `expected` and one line on stderr containing `says`.
fn fails(out: &Output, expected: i32, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out), expected, "{out:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(says), "{stderr:?} should say {says:?}");
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 output")
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("one JSON object")
}

/// A mailbox holding, in this order: (type, payload).
fn filled(daemon: &TestDaemon, name: &str, messages: &[(i64, &str)]) {
    ok(daemon, &["create", name]);
    for (kind, payload) in messages {
        ok(
            daemon,
            &["send", name, payload, "--type", &kind.to_string()],
        );
    }
}

#[test]
fn every_selection_rule_through_the_cli() {
    let daemon = TestDaemon::start();
    let queue = [(3, "a3"), (1, "b1"), (2, "c2"), (1, "d1"), (5, "e5")];
    filled(&daemon, "sel", &queue);
    let recv = |extra: &[&str]| {
        let mut args = vec!["recv", "sel", "--nowait"];
        args.extend_from_slice(extra);
        run(&daemon, &args, None)
    };
    let took = |extra: &[&str]| {
        let out = recv(extra);
        assert_eq!(code(&out), 0, "recv {extra:?}: {out:?}");
        text(&out.stdout).to_owned()
    };

    // Peek copies the oldest and leaves it.
    assert_eq!(took(&["--peek"]), "a3\n");
    assert_eq!(took(&["--peek"]), "a3\n");
    // Type N: the oldest of type N, FIFO within the type.
    assert_eq!(took(&["--type", "1"]), "b1\n");
    // Type N with except: the oldest of any other type.
    assert_eq!(took(&["--type", "3", "--except"]), "c2\n");
    // Type -N: the oldest of the lowest type ≤ N.
    assert_eq!(took(&["--type", "-5"]), "d1\n");
    // Nothing of type ≤ 2 is left: a non-blocking receive says so with 75.
    fails(&recv(&["--type", "-2"]), 75, "no message of a type up to 2");
    fails(&recv(&["--type", "4"]), 75, "no message of type 4");
    // Type 0: the oldest of all.
    assert_eq!(took(&[]), "a3\n");
    assert_eq!(took(&["--type", "0"]), "e5\n");
    fails(&recv(&[]), 75, "mailbox sel is empty");
}

#[test]
fn json_output_has_the_keys_scripts_rely_on() {
    let daemon = TestDaemon::start();
    ok(
        &daemon,
        &["create", "j", "--mode", "640", "--max-msgs", "10"],
    );

    let sent = json(&ok(
        &daemon,
        &[
            "--json",
            "send",
            "j",
            "héllo",
            "--type",
            "7",
            "--reply-to",
            "answers",
            "--correlation-id",
            "42",
            "--content-type",
            "text/plain",
        ],
    ));
    let id = sent["id"].as_u64().expect("send --json gives the id");

    let stat = json(&ok(&daemon, &["stat", "j", "--json"]));
    for key in [
        "name",
        "messages",
        "bytes",
        "max_msgs",
        "max_bytes",
        "max_msg_size",
        "mode",
        "owner_uid",
        "owner_gid",
        "durable",
        "waiting_receivers",
        "unacked",
    ] {
        assert!(stat.get(key).is_some(), "stat --json lacks {key}: {stat}");
    }
    assert_eq!(stat["name"], "j");
    assert_eq!(stat["messages"], 1);
    // Headers count with the payload: reply-to, content type, and 8 for the correlation id.
    assert_eq!(
        stat["bytes"],
        "héllo".len() + "answers".len() + "text/plain".len() + 8
    );
    assert_eq!(stat["max_msgs"], 10);
    assert_eq!(stat["mode"], "0640");
    assert_eq!(stat["owner_uid"], u64::from(uid()));
    assert_eq!(stat["durable"], false);

    ok(&daemon, &["create", "k"]);
    let listing = ok(&daemon, &["ls", "--json"]);
    let rows: Vec<Value> = text(&listing).lines().map(|l| json(l.as_bytes())).collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["j", "k"], "one object per line, by name");
    assert_eq!(rows[0], stat, "ls and stat describe a mailbox alike");

    let got = json(&ok(&daemon, &["recv", "j", "--json", "--nowait"]));
    assert_eq!(got["mailbox"], "j");
    assert_eq!(got["id"], id);
    assert_eq!(got["type"], 7);
    assert_eq!(got["size"], "héllo".len());
    assert_eq!(got["payload"], "héllo");
    assert!(got.get("payload_b64").is_none());
    assert_eq!(got["sender"]["uid"], u64::from(uid()));
    assert!(got["sender"]["pid"].as_u64().unwrap() > 0);
    assert!(got["sender"].get("gid").is_some());
    let sent_at = got["sent_at"].as_str().expect("sent_at is a string");
    assert!(
        sent_at.len() >= 20 && sent_at.as_bytes()[10] == b'T' && sent_at.ends_with('Z'),
        "RFC 3339: {sent_at}"
    );
    assert_eq!(got["reply_to"], "answers");
    assert_eq!(got["correlation_id"], 42);
    assert_eq!(got["content_type"], "text/plain");
    assert_eq!(got["redelivered"], false);
    assert!(got.get("deliveries").is_some());
}

#[test]
fn binary_payloads_round_trip_through_file_stdin_and_raw() {
    let daemon = TestDaemon::start();
    ok(&daemon, &["create", "bin"]);
    let all_bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let file = daemon.dir().join("payload");
    std::fs::write(&file, &all_bytes).unwrap();

    ok(&daemon, &["send", "bin", "--file", file.to_str().unwrap()]);
    let out = run(&daemon, &["send", "bin", "-"], Some(&all_bytes));
    assert_eq!(code(&out), 0, "{out:?}");
    let out = run(&daemon, &["send", "bin"], Some(&all_bytes));
    assert_eq!(code(&out), 0, "{out:?}");

    assert_eq!(ok(&daemon, &["recv", "bin", "--raw"]), all_bytes);
    assert_eq!(ok(&daemon, &["recv", "bin", "--raw"]), all_bytes);
    // Not UTF-8, so JSON carries it as base64.
    let got = json(&ok(&daemon, &["recv", "bin", "--json"]));
    assert!(got.get("payload").is_none(), "{got}");
    let b64 = got["payload_b64"].as_str().expect("payload_b64");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("standard base64");
    assert_eq!(decoded, all_bytes);
    assert_eq!(got["size"], all_bytes.len());

    // An empty message is a message.
    ok(&daemon, &["send", "bin", ""]);
    assert_eq!(ok(&daemon, &["recv", "bin", "--nowait"]), b"\n");
}

#[test]
fn exit_codes_say_what_went_wrong() {
    let daemon = TestDaemon::start();

    // 65: bad data.
    fails(&run(&daemon, &["create", "bad name"], None), 65, "name");
    fails(&run(&daemon, &["create", ""], None), 65, "name");
    fails(&run(&daemon, &["send", "tab\there", "x"], None), 65, "name");
    ok(
        &daemon,
        &["create", "small", "--max-msg-size", "4", "--max-msgs", "1"],
    );
    fails(&run(&daemon, &["send", "small", "12345"], None), 65, "4");
    ok(&daemon, &["send", "small", "1234"]);

    // 75: would block or timed out, both ways.
    fails(
        &run(&daemon, &["send", "small", "x", "--nowait"], None),
        75,
        "full",
    );
    fails(
        &run(&daemon, &["send", "small", "x", "--timeout", "50ms"], None),
        75,
        "",
    );
    ok(&daemon, &["purge", "small"]);
    fails(&run(&daemon, &["recv", "small", "--nowait"], None), 75, "");
    fails(
        &run(&daemon, &["recv", "small", "--timeout", "50ms"], None),
        75,
        "",
    );

    // 66: no such mailbox, for every command that names one.
    for args in [
        &["send", "ghost", "x"][..],
        &["recv", "ghost"],
        &["stat", "ghost"],
        &["set", "ghost", "--mode", "644"],
        &["purge", "ghost"],
        &["rm", "ghost"],
    ] {
        fails(&run(&daemon, args, None), 66, "ghost");
    }

    // Creating twice is an error unless asked not to be.
    let again = run(&daemon, &["create", "small"], None);
    assert_ne!(code(&again), 0, "{again:?}");
    ok(&daemon, &["create", "small", "--exist-ok"]);

    // A failed command loses nothing: the mailbox still works.
    ok(&daemon, &["send", "small", "ok"]);
    assert_eq!(ok(&daemon, &["recv", "small"]), b"ok\n");
}

#[test]
fn send_lines_and_recv_count_keep_order() {
    let daemon = TestDaemon::start();
    ok(&daemon, &["create", "lines"]);
    let input: String = (0..5000).map(|i| format!("line {i:05}\n")).collect();
    let out = run(
        &daemon,
        &["send", "lines", "--lines"],
        Some(input.as_bytes()),
    );
    assert_eq!(code(&out), 0, "{out:?}");
    let stat = json(&ok(&daemon, &["stat", "lines", "--json"]));
    assert_eq!(stat["messages"], 5000);

    let got = ok(&daemon, &["recv", "lines", "--count", "5000"]);
    assert_eq!(text(&got), input);
    fails(&run(&daemon, &["recv", "lines", "--nowait"], None), 75, "");

    // With --json, one object per line and ids in increasing order.
    let out = run(
        &daemon,
        &["--json", "send", "lines", "--lines"],
        Some(b"x\ny\nz\n"),
    );
    let ids: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| json(l.as_bytes())["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let got = ok(&daemon, &["recv", "lines", "--count", "3", "--json"]);
    let payloads: Vec<String> = text(&got)
        .lines()
        .map(|l| json(l.as_bytes())["payload"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(payloads, ["x", "y", "z"]);
}

#[test]
fn competing_consumers_get_each_message_exactly_once() {
    let daemon = TestDaemon::start();
    ok(&daemon, &["create", "work"]);
    const CONSUMERS: usize = 4;
    const EACH: usize = 250;
    let consumers: Vec<Child> = (0..CONSUMERS)
        .map(|_| spawn(&daemon, &["recv", "work", "--count", &EACH.to_string()]))
        .collect();
    // Each consumer pipelines its receives; whether or not all are waiting by the time
    // the messages arrive, every message must go to exactly one of them.

    let input: String = (0..CONSUMERS * EACH)
        .map(|i| format!("job {i}\n"))
        .collect();
    let out = run(
        &daemon,
        &["send", "work", "--lines"],
        Some(input.as_bytes()),
    );
    assert_eq!(code(&out), 0, "{out:?}");

    let mut seen = HashSet::new();
    for consumer in consumers {
        let out = consumer.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{out:?}");
        let lines: Vec<&str> = text(&out.stdout).lines().collect();
        assert_eq!(lines.len(), EACH);
        for line in lines {
            assert!(seen.insert(line.to_owned()), "{line} delivered twice");
        }
    }
    let expected: HashSet<String> = input.lines().map(str::to_owned).collect();
    assert_eq!(seen, expected, "every message delivered once");
}

#[test]
fn remove_wakes_a_waiting_receiver_and_a_receive_wakes_a_waiting_sender() {
    let daemon = TestDaemon::start();
    ok(&daemon, &["create", "one", "--max-msgs", "1"]);
    ok(&daemon, &["send", "one", "first"]);

    // A sender blocked on the full mailbox completes once a receive makes room.
    let sender = spawn(&daemon, &["send", "one", "second"]);
    daemon.wait_for_senders("one", 1);
    assert_eq!(ok(&daemon, &["recv", "one"]), b"first\n");
    let out = sender.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    assert_eq!(ok(&daemon, &["recv", "one"]), b"second\n");

    // A receiver blocked on the empty mailbox is woken by its removal, with 66.
    let receiver = spawn(&daemon, &["recv", "one"]);
    daemon.wait_for_receivers("one", 1);
    ok(&daemon, &["rm", "one"]);
    let out = receiver.wait_with_output().unwrap();
    fails(&out, 66, "one");
    fails(&run(&daemon, &["stat", "one"], None), 66, "one");
}

#[test]
fn set_purge_and_status_report_what_they_did() {
    let daemon = TestDaemon::start();
    ok(&daemon, &["create", "adm"]);
    ok(&daemon, &["set", "adm", "--mode", "660", "--max-msgs", "3"]);
    let stat = json(&ok(&daemon, &["stat", "adm", "--json"]));
    assert_eq!(stat["mode"], "0660");
    assert_eq!(stat["max_msgs"], 3);

    let input = b"1\n2\n3\n";
    assert_eq!(
        code(&run(&daemon, &["send", "adm", "--lines"], Some(input))),
        0
    );
    let status = json(&ok(&daemon, &["status", "--json"]));
    assert_eq!(status["mailboxes"], 1, "{status}");
    assert_eq!(status["messages"], 3, "{status}");

    let purged = json(&ok(&daemon, &["purge", "adm", "--json"]));
    assert_eq!(purged["purged"], 3, "{purged}");
    let stat = json(&ok(&daemon, &["stat", "adm", "--json"]));
    assert_eq!(stat["messages"], 0);
    assert_eq!(stat["bytes"], 0);

    ok(&daemon, &["rm", "adm"]);
    assert_eq!(ok(&daemon, &["ls", "--json"]), b"");
}

#[test]
fn send_lines_and_recv_count_across_many_batches_keep_every_line_in_order() {
    let daemon = TestDaemon::start();
    assert!(
        run(&daemon, &["create", "many", "--max-msg-size", "1000"], None)
            .status
            .success()
    );
    // Past a batch's 1,024 lines and its 256 KiB, with a line too large at 4,000: the
    // lines before it are sent and reported by number, none after it.
    let mut input = String::new();
    for n in 1..=5000 {
        let len = if n == 4000 { 2000 } else { 100 + n % 200 };
        input.push_str(&format!("{n:0len$}\n"));
    }
    // From a file: the command stops reading at the failure, which would break a pipe.
    let file = daemon.dir().join("lines");
    std::fs::write(&file, &input).unwrap();
    let file = file.to_str().unwrap();
    let out = run(
        &daemon,
        &["--json", "send", "many", "--lines", "--file", file],
        None,
    );
    assert_eq!(code(&out), 65, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 4000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reported: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(reported, (1..4000).collect::<Vec<u64>>());
    let out = run(&daemon, &["recv", "many", "--count", "3999"], None);
    assert!(out.status.success());
    let expected: Vec<&str> = input.lines().take(3999).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        expected
    );
    let out = run(&daemon, &["--json", "stat", "many"], None);
    let stat: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (stat["messages"].as_u64(), stat["unacked"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn send_lines_batches_fit_a_daemon_with_small_frames() {
    // A daemon whose largest message, and so its largest frame, is small: a batch of
    // lines must still fit in one frame, headers and all.
    let mut config = ipcd::Config::default();
    config.ceilings.max_msg_size = 64 * 1024;
    config.default_limits.max_msg_size = 64 * 1024;
    let daemon = TestDaemon::start_with(config);
    assert!(run(&daemon, &["create", "small"], None).status.success());
    let mut input = String::new();
    for n in 0..10 {
        input.push_str(&format!("short {n}\n"));
    }
    input.push_str(&"x".repeat(65_000));
    input.push('\n');
    for n in 0..1500 {
        input.push_str(&format!("{n:064}\n"));
    }
    let out = run(
        &daemon,
        &["send", "small", "--lines", "--content-type", "text/plain"],
        Some(input.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&daemon, &["--json", "stat", "small"], None);
    let stat: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stat["messages"].as_u64(), Some(1511));
}
