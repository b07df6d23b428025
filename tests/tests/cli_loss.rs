//! `ipcctl recv` loses nothing it took: a message is acknowledged only once its output is
//! written, so a reader that goes away early, or a SIGINT at any moment, leaves every
//! message that was not printed in the mailbox. Every message sent is either printed or
//! still there afterwards (a printed one may also still be there: at least once).
//!
//! The tests wait only on the output they read and on the daemon's own state.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ipc_client::{BlockingClient, CreateOptions, Error, RecvOptions, SendOptions, Wait};
use ipcd_tests::{TestDaemon, ipcctl};

/// How long a test may wait for the daemon to reach a state before it is called stuck.
const PATIENCE: Duration = Duration::from_secs(60);

/// A pipe whose capacity is one page, for the child's standard output: a message larger
/// than that can only be written in full once its reader has taken most of it.
fn small_pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just made and are owned by nothing else.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor this function owns.
    let rc = unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) };
    assert!(
        rc >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    (read, write)
}

fn create(client: &mut BlockingClient, name: &str, durable: bool) {
    let options = CreateOptions {
        durable,
        ..CreateOptions::default()
    };
    client.create(name, &options).unwrap();
}

/// Sends `payloads` to `mailbox`, one message each.
fn send_all(client: &mut BlockingClient, mailbox: &str, payloads: &[String]) {
    for payload in payloads {
        client
            .send(mailbox, payload.clone(), &SendOptions::default())
            .unwrap();
    }
}

/// Waits until nothing of `mailbox` is leased any more (the receiving connection has
/// closed, which ends its leases), then takes everything left in it.
fn remaining(client: &mut BlockingClient, mailbox: &str) -> Vec<String> {
    let started = Instant::now();
    loop {
        let info = client.stat(mailbox).unwrap();
        if info.unacked == 0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "leases never ended: {info:?}");
        std::thread::yield_now();
    }
    let mut left = Vec::new();
    let nowait = RecvOptions::default().wait(Wait::NoWait);
    loop {
        match client.recv(mailbox, &nowait) {
            Ok(m) => left.push(String::from_utf8(m.payload.to_vec()).unwrap()),
            Err(Error::WouldBlock(_)) => return left,
            Err(e) => panic!("draining {mailbox}: {e}"),
        }
    }
}

/// What names a message in failure reports: its payload up to the first `:`.
fn key(payload: &str) -> &str {
    payload.split(':').next().unwrap_or(payload)
}

/// Messages larger than the pipe, each its own line.
fn large_payloads(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{i:04}:{}", "x".repeat(64 * 1024)))
        .collect()
}

/// `ipcctl recv mailbox ARGS…` writing into a one-page pipe; returns the child and the
/// pipe's reading end.
fn recv_into_small_pipe(daemon: &TestDaemon, mailbox: &str, args: &[&str]) -> (Child, File) {
    let (read, write) = small_pipe();
    let child = {
        let mut command = ipcctl(daemon.socket());
        command
            .args(["recv", mailbox])
            .args(args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped());
        // The command, and with it this process's copy of the writing end, is dropped
        // here: the reader's close must leave the pipe without readers or writers but the
        // child.
        command.spawn().expect("start ipcctl")
    };
    (child, read)
}

/// Reads one line, then closes the pipe, and checks that `ipcctl` ended with success and
/// that every message it did not print is still in the mailbox.
fn a_reader_that_leaves_early_loses_nothing(args: &[&str]) {
    let daemon = TestDaemon::start();
    let mut client = daemon.client();
    create(&mut client, "m", false);
    let sent = large_payloads(8);
    send_all(&mut client, "m", &sent);

    let (child, read) = recv_into_small_pipe(&daemon, "m", args);
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    drop(reader);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "a reader that went away is success: {output:?}"
    );
    let printed = line.trim_end().to_owned();
    assert!(printed == sent[0], "the first message comes first");

    let left = remaining(&mut client, "m");
    let all: BTreeSet<&str> = sent.iter().map(|s| key(s)).collect();
    let mut seen: BTreeSet<&str> = left.iter().map(|s| key(s)).collect();
    assert_eq!(seen.len(), left.len(), "nothing is left twice");
    seen.insert(key(&printed));
    assert_eq!(seen, all, "printed ∪ remaining = sent");
    assert!(
        left.len() >= sent.len() - 1,
        "only what was printed may be gone: {} left of {}",
        left.len(),
        sent.len()
    );
}

#[test]
fn recv_count_into_a_pipe_closed_early_loses_nothing() {
    a_reader_that_leaves_early_loses_nothing(&["--count", "8"]);
}

#[test]
fn recv_follow_into_a_pipe_closed_early_loses_nothing() {
    a_reader_that_leaves_early_loses_nothing(&["--follow"]);
}

#[test]
fn recv_json_into_a_pipe_closed_early_loses_nothing() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client();
    create(&mut client, "m", true);
    let sent = large_payloads(4);
    send_all(&mut client, "m", &sent);
    let (child, read) = recv_into_small_pipe(&daemon, "m", &["--count", "4", "--json"]);
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    drop(reader);
    assert!(child.wait_with_output().unwrap().status.success());
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    let printed = json["payload"].as_str().unwrap().to_owned();
    let left = remaining(&mut client, "m");
    let mut seen: BTreeSet<&str> = left.iter().map(|s| key(s)).collect();
    seen.insert(key(&printed));
    let all: BTreeSet<&str> = sent.iter().map(|s| key(s)).collect();
    assert_eq!(seen, all, "printed ∪ remaining = sent");
}

/// A small deterministic generator (xorshift), seeded from the clock and reported, so
/// that a failing run can be repeated by setting `CLI_LOSS_SEED`.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = std::env::var("CLI_LOSS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("CLI_LOSS_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn sigint(child: &Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet, so
    // the pid is still its own.
    let rc = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// The payload of one output line of `recv`, plain or `--json`.
fn payload_of(line: &str, json: bool) -> String {
    if json {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        value["payload"].as_str().unwrap().to_owned()
    } else {
        line.to_owned()
    }
}

#[test]
fn sigint_at_any_moment_loses_nothing() {
    const TRIES: usize = 50;
    const MESSAGES: usize = 120;
    let daemon = TestDaemon::start();
    let mut client = daemon.client();
    let mut random = Random::new();
    for attempt in 0..TRIES {
        let mailbox = format!("m{attempt}");
        // Some durable mailboxes, whose acks are answered only once stored.
        create(&mut client, &mailbox, attempt % 5 == 4);
        // Larger than a line, so that the output fills the pipe and the command is
        // caught writing, taking and acknowledging.
        let sent: Vec<String> = (0..MESSAGES)
            .map(|i| format!("{attempt}-{i}:{}", "y".repeat(2000)))
            .collect();
        send_all(&mut client, &mailbox, &sent);
        let follow = attempt % 2 == 1;
        let json = attempt % 3 == 2;
        let count = MESSAGES.to_string();
        let mut args = vec!["recv", mailbox.as_str()];
        if follow {
            args.push("--follow");
        } else {
            args.extend(["--count", count.as_str()]);
        }
        if json {
            args.insert(0, "--json");
        }
        let mut child = ipcctl(daemon.socket())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ipcctl");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let k = random.below(MESSAGES as u64 + 1);
        let mut output = Vec::new();
        let mut line = Vec::new();
        for _ in 0..k {
            line.clear();
            if out.read_until(b'\n', &mut line).unwrap() == 0 {
                break;
            }
            output.extend_from_slice(&line);
        }
        sigint(&child);
        // Everything the command wrote before it died is printed too…
        out.read_to_end(&mut output).unwrap();
        child.wait().unwrap();
        // …but a line cut short by its death is not: that message was not written.
        let output = String::from_utf8(output).unwrap();
        let printed: BTreeSet<String> = output
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| payload_of(l.trim_end(), json))
            .collect();
        let left = remaining(&mut client, &mailbox);
        let mut seen = printed.clone();
        seen.extend(left);
        let lost: Vec<&str> = sent
            .iter()
            .filter(|s| !seen.contains(*s))
            .map(|s| key(s))
            .collect();
        assert!(
            lost.is_empty(),
            "attempt {attempt} ({args:?}, SIGINT after {k} lines, {} printed): lost {lost:?}",
            printed.len(),
        );
    }
}

#[test]
fn a_message_written_after_its_lease_ran_out_is_not_written_twice() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client();
    create(&mut client, "m", false);
    let first = large_payloads(1).remove(0);
    send_all(&mut client, "m", std::slice::from_ref(&first));
    let (mut child, read) = recv_into_small_pipe(&daemon, "m", &["--follow", "--lease", "100ms"]);
    // Nothing is read until the first message has been taken (it has a last receive),
    // its lease has run out while it was stuck in the full pipe, and it is back.
    let started = Instant::now();
    loop {
        let info = client.stat("m").unwrap();
        if info.last_recv.is_some() && info.messages == 1 && info.unacked == 0 {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the lease never ran out: {info:?}"
        );
        std::thread::yield_now();
    }
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.trim_end() == first, "the first message, whole");
    // The same message comes back to the command, which acknowledges it without
    // writing it again: the next line is the next message.
    client.send("m", "second", &SendOptions::default()).unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "second\n");
    // Both settled: the copy that came back and "second", acknowledged once written.
    let started = Instant::now();
    loop {
        let info = client.stat("m").unwrap();
        if info.messages == 0 && info.unacked == 0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "never settled: {info:?}");
        std::thread::yield_now();
    }
    sigint(&child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child.wait().unwrap();
    assert!(
        stderr.contains("lease ran out") && stderr.contains("--lease"),
        "one note says why the message may come again: {stderr:?}"
    );
    assert_eq!(remaining(&mut client, "m"), Vec::<String>::new());
}
